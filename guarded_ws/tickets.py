"""WebSocket tickets: the signed, expiring cookie of the browser path, and its CSRF token.

A ticket names a subject, its own expiry (it only has to last until the upgrade) and
the end of the credential it was issued for (the connection is closed then), and is signed with HMAC-SHA256 under a key
derived from the shared secret. Its CSRF token is a second MAC of the same signed
text under a second derived key: it is bound to that one ticket, nothing about it is
stored, and a token from another ticket never matches. The browser keeps the ticket
in an HttpOnly cookie that a page's script cannot read, and sends the CSRF token in
the upgrade's query string, which a foreign page cannot know.

Pure: the caller passes the time. :func:`issue` is the same thing for a web app that
would rather issue tickets itself than send its users to the preauth endpoint.
"""

from __future__ import annotations

import base64
import hmac
import math
import os
import time
from dataclasses import dataclass
from types import MappingProxyType

from .tokens import AuthError, Identity, ReplayCache

VERSION = "v1"
DEFAULT_NAME = "guarded_ws_ticket"
MIN_SECRET_BYTES = 32  # as for HS256: no shorter than the digest
MAX_SUBJECT_BYTES = 256
# A ticket is about 110 bytes plus the subject; anything much longer is not one of ours.
MAX_TICKET_CHARS = 160 + (MAX_SUBJECT_BYTES * 4 + 2) // 3
_NONCE_BYTES = 16


@dataclass(frozen=True, slots=True)
class Ticket:
    value: str  # the cookie's value
    csrf: str
    expires_at: float


class Tickets:
    """Issues and verifies tickets with one secret; ``ttl`` bounds every ticket it accepts."""

    __slots__ = ("_ticket_key", "_csrf_key", "ttl", "leeway", "replay_cache", "shared_single_use")

    def __init__(
        self,
        secret: str | bytes,
        *,
        ttl: float,
        leeway: float = 5.0,
        replay_cache: ReplayCache | None = None,
        shared_single_use: bool = False,
    ) -> None:
        """``shared_single_use``: the caller consumes each ticket in a shared store (``Identity.single_use``)."""
        key = secret.encode() if isinstance(secret, str) else secret
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"ticket secret: at least {MIN_SECRET_BYTES} bytes, got {len(key)}")
        if not ttl > 0 or not leeway >= 0:
            raise ValueError(f"ttl must be > 0 and leeway >= 0, got {ttl} and {leeway}")
        # Keys of their own, so that no MAC made here can stand for a JWT signature or for each other.
        self._ticket_key = hmac.digest(key, b"guarded-ws ticket " + VERSION.encode(), "sha256")
        self._csrf_key = hmac.digest(key, b"guarded-ws csrf " + VERSION.encode(), "sha256")
        self.ttl = ttl
        self.leeway = leeway
        self.replay_cache = replay_cache
        self.shared_single_use = shared_single_use

    def issue(self, subject: str, now: float, *, ttl: float | None = None, until: float = math.inf) -> Ticket:
        """``until``: when the credential behind the ticket ends, and so the connection it opens."""
        lifetime = self.ttl if ttl is None else ttl
        if not 0 < lifetime <= self.ttl:
            raise ValueError(f"ttl must be in (0, {self.ttl}], got {lifetime}")
        encoded = subject.encode() if isinstance(subject, str) else b""
        if not encoded or len(encoded) > MAX_SUBJECT_BYTES:
            raise ValueError(f"subject: a non-empty string of at most {MAX_SUBJECT_BYTES} bytes in UTF-8")
        expires_at = math.ceil(now + lifetime)
        bound = 0 if until == math.inf else max(1, math.floor(until))  # 0: none
        signed = f"{VERSION}.{expires_at}.{bound}.{_b64(os.urandom(_NONCE_BYTES))}.{_b64(encoded)}"
        return Ticket(f"{signed}.{self._mac(signed)}", self._csrf(signed), float(expires_at))

    def verify(self, value: str, csrf: str | None, now: float) -> Identity:
        """The ticket's identity, or :class:`AuthError`; a failed check never burns a single-use ticket."""
        if len(value) > MAX_TICKET_CHARS or not value.isascii():
            raise AuthError("invalid", "ticket malformed")
        signed, _, mac = value.rpartition(".")
        parts = signed.split(".")
        if len(parts) != 5 or parts[0] != VERSION:
            raise AuthError("invalid", "ticket malformed")
        if not hmac.compare_digest(self._mac(signed), mac):
            raise AuthError("invalid", "ticket signature does not match")
        _, expiry, bound, nonce, encoded = parts
        expires_at = float(expiry)  # digits only: we signed it
        if expires_at + self.leeway <= now:
            raise AuthError("expired", "ticket expired")
        if expires_at - now > self.ttl + self.leeway:
            raise AuthError("invalid", "ticket lifetime too long")
        if not csrf:
            raise AuthError("missing", "no CSRF token")
        if not hmac.compare_digest(self._csrf(signed).encode(), csrf.encode("utf-8", "replace")):
            raise AuthError("csrf", "CSRF token does not match the ticket")
        if self.replay_cache is not None and not self.replay_cache.consume(nonce, expires_at + self.leeway, now):
            raise AuthError("replayed", "ticket already used (or replay cache full)")
        subject = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        until = float(bound) or math.inf
        claims = MappingProxyType({"sub": subject} if until == math.inf else {"sub": subject, "exp": until})
        if self.shared_single_use:  # remembered until the ticket stops being accepted, leeway included
            return Identity(subject, claims, until, ("ticket:" + nonce, expires_at + self.leeway))
        return Identity(subject, claims, until)

    def _mac(self, signed: str) -> str:
        return _b64(hmac.digest(self._ticket_key, signed.encode(), "sha256"))

    def _csrf(self, signed: str) -> str:
        return _b64(hmac.digest(self._csrf_key, signed.encode(), "sha256"))


def cookie_name(base: str, *, secure: bool, domain: str | None = None) -> str:
    """``__Host-`` (``__Secure-`` with a Domain) over TLS: no sibling subdomain or plain-HTTP page can set it."""
    if not secure:
        return base
    return ("__Secure-" if domain else "__Host-") + base


def set_cookie(name: str, value: str, *, max_age: float, secure: bool, domain: str | None = None) -> str:
    """The ``Set-Cookie`` header value: HttpOnly (no script reads it), SameSite=Strict (no other site sends it)."""
    attributes = [f"{name}={value}", f"Max-Age={max(1, math.ceil(max_age))}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if secure:
        attributes.append("Secure")
    if domain:
        attributes.append(f"Domain={domain}")
    return "; ".join(attributes)


def issue(
    subject: str,
    *,
    secret: str | bytes,
    secure: bool,
    ttl: float = 30.0,
    name: str = DEFAULT_NAME,
    domain: str | None = None,
    until: float | None = None,
    now: float | None = None,
) -> tuple[str, str]:
    """``(csrf, set_cookie_header)`` for a web app that issues tickets itself, with guarded-ws's secret.

    Give the page ``csrf`` (it opens ``/ws?csrf=...``) and send the header as ``Set-Cookie``.
    ``secure``, ``name`` and ``domain`` must match the server's ``[cookie]`` settings, and
    ``ttl`` must not exceed its ``cookie.ttl``. ``until`` is when the user's session ends
    (wall-clock seconds): the connection is closed then, with 4401; None, it lives until closed.
    """
    ticket = Tickets(secret, ttl=ttl).issue(
        subject, time.time() if now is None else now, until=math.inf if until is None else until
    )
    cookie = cookie_name(name, secure=secure, domain=domain)
    return ticket.csrf, set_cookie(cookie, ticket.value, max_age=ttl, secure=secure, domain=domain)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

