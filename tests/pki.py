"""Certificates made at test time: a CA, server and client certificates, CRLs.

Made with ``cryptography`` (a dev dependency) in a few milliseconds each with P-256
keys, so every test gets fresh ones: an expired certificate is really expired, a
revoked one is really on a CRL, and no key material is checked in.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_PEM = serialization.Encoding.PEM

# The first bytes of a TLS ClientHello: a handshake record (0x16), TLS 1.0 record version,
# a length promising 512 bytes, then the start of the message. The rest never comes.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(16)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(_PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def write(self, directory: Path, name: str) -> tuple[str, str]:
        """(certificate path, key path)."""
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return str(cert), str(key)


def _build(
    subject_key: ec.EllipticCurvePrivateKey,
    cn: str | None,
    *,
    issuer: Issued | None = None,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _now() - dt.timedelta(hours=1))
        .not_valid_after(not_after or _now() + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer.key if issuer else subject_key, hashes.SHA256())


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def self_signed(
    cn: str = "known-client", *, not_before: dt.datetime | None = None, not_after: dt.datetime | None = None
) -> Issued:
    """A client certificate with no CA: "a known certificate"."""
    key = _key()
    return Issued(_build(key, cn, not_before=not_before, not_after=not_after), key)


class CA:
    def __init__(self, name: str = "guarded-ws test CA") -> None:
        key = _key()
        self.issued = Issued(_build(key, name, ca=True), key)

    @property
    def cert_pem(self) -> bytes:
        return self.issued.cert_pem

    def write(self, directory: Path, name: str = "ca") -> str:
        path = directory / f"{name}.pem"
        path.write_bytes(self.cert_pem)
        return str(path)

    def server(self) -> Issued:
        """For 127.0.0.1 and localhost."""
        key = _key()
        san: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        return Issued(_build(key, "localhost", issuer=self.issued, san=san), key)

    def client(
        self,
        cn: str | None = "alice",
        *,
        email: str | None = None,
        dns: str | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        key = _key()
        san: list[x509.GeneralName] = []
        if email:
            san.append(x509.RFC822Name(email))
        if dns:
            san.append(x509.DNSName(dns))
        cert = _build(key, cn, issuer=self.issued, san=san, not_before=not_before, not_after=not_after)
        return Issued(cert, key)

    def crl(self, revoked: list[Issued]) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issued.cert.subject)
            .last_update(_now() - dt.timedelta(hours=1))
            .next_update(_now() + dt.timedelta(days=1))
        )
        for issued in revoked:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(issued.cert.serial_number)
                .revocation_date(_now() - dt.timedelta(minutes=5))
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self.issued.key, hashes.SHA256()).public_bytes(_PEM)


def client_context(trust: CA, cert: Issued | None = None, directory: Path | None = None) -> ssl.SSLContext:
    """What a client uses: trusts ``trust`` for the server, presents ``cert`` if given."""
    context = ssl.create_default_context(cadata=trust.cert_pem.decode())
    if cert is not None:
        assert directory is not None
        certfile, keyfile = cert.write(directory, f"client-{cert.cert.serial_number}")
        context.load_cert_chain(certfile, keyfile)
    return context


def ago(seconds: float) -> dt.datetime:
    return _now() - dt.timedelta(seconds=seconds)


def ahead(seconds: float) -> dt.datetime:
    return _now() + dt.timedelta(seconds=seconds)
