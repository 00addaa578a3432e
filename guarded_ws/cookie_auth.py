"""The browser path at the upgrade: an approved Origin, the ticket cookie, its CSRF token.

A browser attaches cookies to a WebSocket upgrade whatever page opens it, so the
cookie alone proves nothing: the Origin header (which a page cannot forge) must be
one of ours, and the CSRF token (which a foreign page cannot read) must be the one
bound to that cookie. Every check happens before the 101, and a failure is a 403.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Request

from .tickets import Tickets
from .tokens import AuthError, Identity

CSRF_PARAM = "csrf"
# More ticket cookies than this in one request is not a browser (a sibling subdomain may toss one).
MAX_CANDIDATES = 4


class CookieRefused(Exception):
    """``reason`` labels the refusal metric; ``result`` the auth attempt (None: no credential was looked at)."""

    def __init__(self, reason: str, result: str | None, why: str) -> None:
        super().__init__(why)
        self.reason = reason
        self.result = result


class CookieAuth:
    __slots__ = ("tickets", "name")

    def __init__(self, tickets: Tickets, name: str) -> None:
        self.tickets = tickets
        self.name = name

    def wants(self, request: Request) -> bool:
        """A request with the ticket cookie or a CSRF token takes this path; others the first-message one."""
        return bool(csrf_tokens(request.path)) or bool(cookie_values(request.headers, self.name))

    def check(self, request: Request, allowed_origins: Collection[str], now: float) -> Identity:
        origins = request.headers.get_all("Origin")
        if not origins:
            raise CookieRefused("origin", None, "no Origin on the cookie path")
        if len(origins) > 1 or origins[0] not in allowed_origins:
            raise CookieRefused("origin", None, "Origin not allowed")
        try:
            return self._verify(request, now)
        except AuthError as exc:
            raise CookieRefused("csrf", exc.result, str(exc)) from None

    def _verify(self, request: Request, now: float) -> Identity:
        tickets = cookie_values(request.headers, self.name)
        if not tickets:
            raise AuthError("missing", "no ticket cookie")
        if len(tickets) > MAX_CANDIDATES:
            raise AuthError("invalid", "too many ticket cookies")
        csrf = csrf_tokens(request.path)
        if len(csrf) > 1:
            raise AuthError("invalid", "repeated CSRF token")
        token = csrf[0] if csrf else None
        first: AuthError | None = None
        for ticket in tickets:
            try:
                return self.tickets.verify(ticket, token, now)
            except AuthError as exc:
                first = first or exc
        assert first is not None
        raise first


def cookie_values(headers: Headers, name: str) -> list[str]:
    """Every value of cookie ``name`` (RFC 6265 5.4: ``a=b; c=d``), in the order sent."""
    return [
        value
        for header in headers.get_all("Cookie")
        for name_, value in cookie_pairs(header)
        if name_ == name
    ]


def csrf_tokens(target: str) -> list[str]:
    _, question, query = target.partition("?")
    if not question:
        return []
    found = []
    for field in query.split("&"):
        key, _, value = field.partition("=")
        if key == CSRF_PARAM:
            found.append(unquote(value))
    return found


def cookie_pairs(header: str) -> Iterable[tuple[str, str]]:
    for item in header.split(";"):
        name, equals, value = item.strip().partition("=")
        if equals:
            yield name, value.strip().strip('"')
