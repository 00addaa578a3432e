"""Client certificates as credentials: fingerprints, pins, the subject, the expiry.

Pure: the certificate comes in as the TLS layer decoded it (``SSLObject.getpeercert()``
and its DER bytes, both standard library), the time as a parameter. OpenSSL has
already checked the chain, the validity period and the CRL when a certificate gets
here; this module adds what OpenSSL cannot express: the SHA-256 pins and which field
names the subject.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from .tokens import Identity

# Where the subject comes from: the subject's commonName, or the first subjectAltName of a type.
SUBJECT_FIELDS = ("cn", "san_dns", "san_email", "san_uri")
_SAN_TYPES = {"san_dns": "DNS", "san_email": "email", "san_uri": "URI"}

_HEX64 = re.compile(r"[0-9a-f]{64}")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL)


class CertificateRefused(Exception):
    """A certificate that passed OpenSSL's checks and fails ours; ``reason`` is a metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def fingerprint(der: bytes) -> str:
    """SHA-256 of the DER certificate, 64 lower-case hex digits: the form the configuration takes."""
    return hashlib.sha256(der).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Accept what tools print (``AB:CD:...``, ``sha256:...``, any case); return the canonical form."""
    value = text.strip().lower()
    value = value.removeprefix("sha256:").removeprefix("sha256 fingerprint=").replace(":", "")
    if not _HEX64.fullmatch(value):
        raise ValueError("expected a SHA-256 fingerprint: 64 hex digits, colons allowed")
    return value


def pem_certificates(data: bytes) -> list[bytes]:
    """The DER form of every certificate in a PEM file, or of the file itself if it is DER."""
    blocks = _PEM_CERT.findall(data)
    if blocks:
        return [ssl.PEM_cert_to_DER_cert(block.decode("ascii")) for block in blocks]
    if data[:1] == b"\x30":  # an ASN.1 SEQUENCE: a DER certificate
        return [data]
    raise ValueError("no certificate found (expected PEM or DER)")


def subject_of(cert: Mapping[str, Any], field: str) -> str | None:
    """The subject named by ``field``, or None when the certificate has no single such value."""
    if field == "cn":
        names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
        return names[0] if len(names) == 1 and names[0] else None  # two CNs: which one is meant?
    kind = _SAN_TYPES[field]
    return next((value for key, value in cert.get("subjectAltName", ()) if key == kind and value), None)


def identify(
    cert: Mapping[str, Any], der: bytes, *, field: str, pins: frozenset[str], now: float
) -> Identity:
    """The identity a verified client certificate carries, or :class:`CertificateRefused`."""
    digest = fingerprint(der)
    if pins and digest not in pins:
        raise CertificateRefused("pin_mismatch")
    subject = subject_of(cert, field)
    if subject is None:
        raise CertificateRefused("no_subject")
    expires_at = float(ssl.cert_time_to_seconds(cert["notAfter"]))
    if expires_at <= now:
        raise CertificateRefused("expired")
    claims = {
        "sub": subject,
        "exp": int(expires_at),
        "fingerprint": digest,
        "serial": str(cert.get("serialNumber", "")).lower(),
    }
    return Identity(subject, MappingProxyType(claims), expires_at)


def pin_set(fingerprints: Iterable[str]) -> frozenset[str]:
    return frozenset(normalize_fingerprint(text) for text in fingerprints)
