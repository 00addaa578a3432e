"""The preauth endpoint: ``POST /ws/preauth`` trades the site's own auth for a ticket cookie.

websockets' request parser reads GET only, so this module reads the POST itself, inside
the handshake phase and under its rules: the connection is admitted and counted like any
other, the handshake deadline runs, the whole request fits ``limits.max_request_bytes``
and its body ``cookie.max_body_bytes``. Every request is answered and the connection
closed: nothing about a caller outlives its connection but the signed cookie, and the
per-source rate's bounded table. No CORS header is ever sent, so a page of another
origin can neither preflight nor read the answer; its Origin is refused anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType

from websockets.datastructures import Headers

from .cookie_auth import cookie_pairs
from .metrics import Metrics
from .rate import AcceptRate
from .tickets import Tickets, set_cookie
from .tokens import AuthError, Identity

MAX_HEADERS = 128  # as websockets' parser
METHOD = "preauth"  # the auth-attempt label of this endpoint
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (/[\x21-\x7e]*) HTTP/1\.1")
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(rb"[\t\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class PreauthRequest:
    """What an authenticator sees: the request as the browser sent it, and its source address."""

    method: str
    target: str
    headers: Headers
    body: bytes
    source: str
    cookies: Mapping[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


Authenticator = Callable[[PreauthRequest, float], Identity]


class Refusal(Exception):
    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestReader:
    """One request read incrementally: the head until its empty line, then Content-Length bytes of body."""

    __slots__ = ("buffer", "head", "body_length", "max_bytes", "max_body", "host")

    def __init__(self, max_bytes: int, max_body: int) -> None:
        self.host = ""  # the client's address, when a trusted proxy names it
        self.buffer = bytearray()
        self.head: tuple[str, str, Headers] | None = None
        self.body_length = 0
        self.max_bytes = max_bytes
        self.max_body = max_body

    def feed(self, data: bytes) -> tuple[str, str, Headers] | None:
        """The request head once complete (then :meth:`body` tells when the body is); raises :class:`Refusal`."""
        room = self.max_bytes - len(self.buffer)
        self.buffer += data[:room]
        if self.head is not None:
            return self.head
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > room or len(self.buffer) >= self.max_bytes:
                raise Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large")
            return None
        self.head = _parse_head(bytes(self.buffer[:end]))
        del self.buffer[: end + 4]
        self.body_length = _content_length(self.head[2])
        if self.body_length > self.max_body or end + 4 + self.body_length > self.max_bytes:
            raise Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body_too_large")
        return self.head

    def body(self) -> bytes | None:
        """The body once all of it arrived; bytes past it are ignored (one request per connection)."""
        if self.head is None or len(self.buffer) < self.body_length:
            return None
        return bytes(self.buffer[: self.body_length])


class Preauth:
    """Routes the POSTs of the browser path and answers them; counts every refusal."""

    def __init__(
        self,
        *,
        path: str,
        tickets: Tickets,
        cookie_name: str,
        secure: bool,
        domain: str | None,
        authenticate: Authenticator,
        rate: AcceptRate,
        metrics: Metrics,
        max_request_bytes: int,
        max_body_bytes: int,
        retry_after: int = 1,
        routes: Mapping[str, Callable[[PreauthRequest, float], bytes]] | None = None,
        demo_page: bytes | None = None,
    ) -> None:
        self.path = path
        self.tickets = tickets
        self.cookie_name = cookie_name
        self.secure = secure
        self.domain = domain
        self.authenticate = authenticate
        self.rate = rate
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.max_body_bytes = max_body_bytes
        self.retry_after = (("Retry-After", str(retry_after)),)
        self.routes = dict(routes or {})  # other POST paths (the demo's login)
        self.demo_page = demo_page

    def reader(self) -> RequestReader:
        return RequestReader(self.max_request_bytes, self.max_body_bytes)

    def receive(
        self,
        reader: RequestReader,
        data: bytes,
        *,
        source: object,
        host: str,
        allowed_origins: Collection[str],
        now: float,
        wallclock: float,
        admit: Callable[[Headers], tuple[object, str] | None] | None = None,
    ) -> bytes | None:
        """The complete response once the request is in (or refused); None while more is needed.

        ``admit``: for a connection whose source is not known until its headers are (behind a
        trusted HTTP proxy), admits the client they name and returns its (source, host); None
        means admission refused it and answered already.
        """
        try:
            already = reader.head is not None
            head = reader.feed(data)
            if head is None:
                return None
            method, target, headers = head
            if not already:
                if admit is not None:
                    client = admit(headers)
                    if client is None:
                        return None
                    source, reader.host = client
                self._route(method, target, headers, source, allowed_origins, now)
            body = reader.body()
            if body is None:
                return None
        except Refusal as refusal:
            self.metrics.rejected[refusal.reason].inc()
            too_many = refusal.status is HTTPStatus.TOO_MANY_REQUESTS
            return _refusal(refusal.status, *(self.retry_after if too_many else ()))
        request = PreauthRequest(method, target, headers, body, reader.host or host, _cookies(headers))
        handler = self.routes.get(request.path, self._issue)
        return handler(request, wallclock)

    def _route(
        self, method: str, target: str, headers: Headers, source: object, origins: Collection[str], now: float
    ) -> None:
        path = target.partition("?")[0]
        if path != self.path and path not in self.routes:
            raise Refusal(HTTPStatus.NOT_FOUND, "path")
        if method != "POST":  # OPTIONS included: no preflight can succeed, so no cross-origin call can
            raise Refusal(HTTPStatus.METHOD_NOT_ALLOWED, "method")
        if not self.rate.allow(source, now):
            raise Refusal(HTTPStatus.TOO_MANY_REQUESTS, "preauth_rate")
        found = headers.get_all("Origin")
        if len(found) != 1 or found[0] not in origins:
            raise Refusal(HTTPStatus.FORBIDDEN, "origin")

    def _issue(self, request: PreauthRequest, now: float) -> bytes:
        attempts = self.metrics.auth_attempts
        try:
            identity = self.authenticate(request, now)
            lifetime = min(self.tickets.ttl, identity.expires_at - now)
            ticket = self.tickets.issue(identity.subject, now, ttl=lifetime, until=identity.expires_at)
        except AuthError as exc:
            attempts[(METHOD, exc.result)].inc()
            return _refusal(HTTPStatus.UNAUTHORIZED, ("WWW-Authenticate", "Bearer"))
        except ValueError:  # a subject no cookie can carry, or a credential about to expire
            attempts[(METHOD, "invalid")].inc()
            return _refusal(HTTPStatus.UNAUTHORIZED, ("WWW-Authenticate", "Bearer"))
        attempts[(METHOD, "ok")].inc()
        expires_in = max(1, int(ticket.expires_at - now))
        cookie = set_cookie(self.cookie_name, ticket.value, max_age=expires_in, secure=self.secure, domain=self.domain)
        body = json.dumps({"csrf": ticket.csrf, "expires_in": expires_in}).encode()
        return response(HTTPStatus.OK, body, "application/json", ("Set-Cookie", cookie))


def bearer(verify: Callable[[str, float], Identity]) -> Authenticator:
    """The built-in authenticator: ``Authorization: Bearer <token>``, checked like a first-message token."""

    def authenticate(request: PreauthRequest, now: float) -> Identity:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("missing", "no bearer token")
        return verify(token.strip(), now)

    return authenticate


def hook(func: Callable[[PreauthRequest], str | None]) -> Authenticator:
    """An operator's ``function(request) -> subject or None``: say who the caller is by the site's own auth.

    It runs on the event loop: it must be quick (check a signed session cookie, not call a database).
    Whatever it raises or returns other than a non-empty string refuses the caller.
    """

    def authenticate(request: PreauthRequest, now: float) -> Identity:
        try:
            subject = func(request)
        except Exception as exc:
            # Its message may echo a cookie or a header: the class only.
            raise AuthError("invalid", f"authenticator raised {type(exc).__name__}") from None
        if subject is None:
            raise AuthError("invalid", "authenticator refused")
        if not isinstance(subject, str) or not subject:
            raise AuthError("invalid", f"authenticator returned {type(subject).__name__}, not a subject")
        return Identity(subject, MappingProxyType({"sub": subject}), float("inf"))

    return authenticate


def response(status: HTTPStatus, body: bytes, content_type: str, *headers: tuple[str, str]) -> bytes:
    """A complete response; never a CORS header, never cached, and the connection closes behind it."""
    lines = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _refusal(status: HTTPStatus, *headers: tuple[str, str]) -> bytes:
    if status is HTTPStatus.METHOD_NOT_ALLOWED:
        headers += (("Allow", "POST"),)
    return response(status, f"{status.value} {status.phrase}\n".encode(), "text/plain; charset=utf-8", *headers)


def _parse_head(head: bytes) -> tuple[str, str, Headers]:
    lines = head.split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None or len(lines) - 1 > MAX_HEADERS:
        raise Refusal(HTTPStatus.BAD_REQUEST, "malformed")
    headers = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or _HEADER_NAME.fullmatch(name) is None or _HEADER_VALUE.fullmatch(value) is None:
            raise Refusal(HTTPStatus.BAD_REQUEST, "malformed")  # obs-fold and bare CR or LF included
        headers[name.decode()] = value.strip(b" \t").decode()
    return match[1].decode(), match[2].decode(), headers


def _content_length(headers: Headers) -> int:
    if "Transfer-Encoding" in headers:  # chunked bodies have no length to check up front
        raise Refusal(HTTPStatus.BAD_REQUEST, "malformed")
    lengths = headers.get_all("Content-Length")
    if not lengths:
        return 0
    if len(lengths) > 1 or not lengths[0].isdigit() or len(lengths[0]) > 9:
        raise Refusal(HTTPStatus.BAD_REQUEST, "malformed")
    return int(lengths[0])


def _cookies(headers: Headers) -> Mapping[str, str]:
    cookies: dict[str, str] = {}
    for header in headers.get_all("Cookie"):
        for name, value in cookie_pairs(header):
            cookies.setdefault(name, value)
    return MappingProxyType(cookies)
