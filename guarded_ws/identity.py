"""The signed identity the relay app hands to the upstream, and its check.

guarded-ws verifies the client's credential; the upstream (an app in any
language behind the relay) must be able to trust what guarded-ws says about
who is connected without seeing that credential. The relay adds four headers
to its upgrade request, signed with HMAC-SHA256 under a secret shared with the
upstream only (never the token secret: an upstream holding that could mint
client tokens). docs/relay.md specifies the format for other languages.

This module uses the standard library only, so an upstream written in Python can
import it (``from guarded_ws.identity import verify_identity``) or copy the file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

SUBJECT = "X-Guarded-WS-Subject"
SOURCE = "X-Guarded-WS-Source"
CLAIMS = "X-Guarded-WS-Claims"
TIMESTAMP = "X-Guarded-WS-Timestamp"
SIGNATURE = "X-Guarded-WS-Signature"
HEADERS = (SUBJECT, SOURCE, CLAIMS, TIMESTAMP, SIGNATURE)
VERSION = "v1"
# The relay signs just before it connects; a minute covers clock skew between hosts.
DEFAULT_MAX_AGE = 60.0


class IdentityError(ValueError):
    """The identity headers are missing, malformed, stale or not signed with the shared secret."""


@dataclass(frozen=True, slots=True)
class VerifiedIdentity:
    subject: str
    source: str
    claims: Mapping[str, Any]
    signed_at: int


def sign_identity(
    secret: str | bytes, subject: str, claims: Mapping[str, Any], source: str, *, now: float
) -> dict[str, str]:
    """The headers that carry ``subject``, ``source`` and ``claims``, signed at ``now``."""
    fields = (
        str(int(now)),
        quote(subject, safe=""),
        quote(source, safe=""),
        _b64(json.dumps(dict(claims), separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode()),
    )
    timestamp, subject_field, source_field, claims_field = fields
    return {
        SUBJECT: subject_field,
        SOURCE: source_field,
        CLAIMS: claims_field,
        TIMESTAMP: timestamp,
        SIGNATURE: f"{VERSION}={_mac(secret, fields)}",
    }


def verify_identity(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    secret: str | bytes,
    *,
    now: float,
    max_age: float = DEFAULT_MAX_AGE,
) -> VerifiedIdentity:
    """Check the identity headers of an upgrade request; raises :class:`IdentityError`.

    ``headers`` is any mapping (case-insensitive or not) or a list of (name, value)
    pairs, such as ``websockets``' ``request.headers.raw_items()``. A header that
    appears twice is refused: which copy a framework returns is not something to
    bet authentication on.
    """
    found = _collect(headers)
    timestamp, subject_field, source_field, claims_field, signature = (
        found[name.lower()] for name in (TIMESTAMP, SUBJECT, SOURCE, CLAIMS, SIGNATURE)
    )
    version, _, mac = signature.partition("=")
    if version != VERSION:
        raise IdentityError(f"{SIGNATURE}: unknown version")
    expected = _mac(secret, (timestamp, subject_field, source_field, claims_field))
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        raise IdentityError(f"{SIGNATURE}: does not match (wrong secret, or altered headers)")
    if not timestamp.isdigit():
        raise IdentityError(f"{TIMESTAMP}: not an integer")
    signed_at = int(timestamp)
    if not math.isfinite(now) or abs(now - signed_at) > max_age:
        raise IdentityError(f"{TIMESTAMP}: outside the accepted window of {max_age:g} s")
    try:
        claims = json.loads(base64.urlsafe_b64decode(claims_field + "=" * (-len(claims_field) % 4)))
        subject, source = unquote(subject_field, errors="strict"), unquote(source_field, errors="strict")
    except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise IdentityError(f"malformed identity ({type(exc).__name__})") from None
    if not isinstance(claims, dict) or claims.get("sub") != subject:
        raise IdentityError(f"{CLAIMS}: not an object whose sub is the subject")
    return VerifiedIdentity(subject, source, claims, signed_at)


def _collect(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    pairs: Iterable[tuple[str, str]]
    raw_items = getattr(headers, "raw_items", None)
    if raw_items is not None:
        pairs = raw_items()
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    else:
        pairs = headers
    wanted = {name.lower() for name in HEADERS}
    found: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        if key in wanted:
            if key in found:
                raise IdentityError(f"{name}: appears more than once")
            found[key] = value
    missing = [name for name in HEADERS if name.lower() not in found]
    if missing:
        raise IdentityError(f"missing {', '.join(missing)}")
    return found


def _mac(secret: str | bytes, fields: tuple[str, str, str, str]) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    message = ":".join((VERSION, *fields)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
