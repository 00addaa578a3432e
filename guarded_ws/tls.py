"""TLS (``wss://``): the server context, its reload, and why handshakes fail.

The handshake runs in the event loop's own TLS layer (``connect_accepted_socket(...,
ssl=context)``), not in a ``MemoryBIO`` of ours: that layer is the loop's tested
code for records, flow control, close_notify and both loops (uvloop ports CPython's),
and writing our own would put a second TLS state machine inside ``connection.py``.
Its one cost against our rules is a timer per handshake (``ssl_handshake_timeout``,
which cannot be switched off): it is only a backstop here, set well past
``handshake_timeout``, and cancelled when the handshake ends. The deadline that
counts is the server's: the connection sits in the ``handshaking`` FIFO from
accept, holding the raw socket while TLS is in progress, and the sweep shuts that
socket down when the deadline passes, so the handshake fails and the accept path
cleans up. A TLS session (tens of KiB in OpenSSL) dwarfs that timer handle anyway.

Client certificates and the standard library: ``ssl`` has no verify callback, so
a certificate OpenSSL cannot verify always fails the handshake, and a certificate
cannot be requested without being verified. Pins alone ("the list of known
certificates") are therefore not enough: ``client_ca_file`` holds the trust
anchors, which may be CA certificates or the known client certificates
themselves (``VERIFY_X509_PARTIAL_CHAIN`` lets a listed certificate anchor its own
chain, so no PKI is needed), and ``client_cert_fingerprints`` restricts, after the
handshake, which of the certificates those anchors accept may authenticate.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from . import certs
from .config import ConfigError, TlsConfig
from .tokens import Identity

# Label values of guarded_ws_tls_handshake_failures_total.
FAILURES = (
    "not_tls",
    "protocol",
    "no_certificate",
    "unknown_ca",
    "expired",
    "revoked",
    "bad_certificate",
    "pin_mismatch",
    "no_subject",
    "peer_alert",
    "closed",
    "timeout",
    "other",
)

# The loop's own handshake timer, past which our deadline has long closed the socket.
BACKSTOP_MARGIN = 10.0

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}

# X509_V_ERR_* codes (OpenSSL's x509_vfy.h), as SSLCertVerificationError.verify_code.
_UNKNOWN_CA = frozenset({2, 18, 19, 20, 21})  # no issuer found, self-signed and not listed
_EXPIRED, _REVOKED = 10, 23
_NOT_TLS = frozenset({"HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL",
                      "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"})
_PROTOCOL = frozenset({"UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE", "NO_SHARED_CIPHER", "VERSION_TOO_LOW",
                       "TLSV1_ALERT_PROTOCOL_VERSION", "NO_APPLICATION_PROTOCOL", "INAPPROPRIATE_FALLBACK"})


def build_context(config: TlsConfig) -> ssl.SSLContext:
    """A server context from ``[tls]``; unreadable or unfit files are a :class:`ConfigError`.

    ``PROTOCOL_TLS_SERVER`` keeps OpenSSL's cipher defaults and loads no system CA:
    ``create_default_context`` would let any public CA vouch for a client.
    """
    assert config.cert_file is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.min_version]
    context.options |= ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation costs us CPU, not the peer
    context.set_alpn_protocols(["http/1.1"])
    _load("tls.cert_file", lambda: context.load_cert_chain(config.cert_file, config.key_file))  # type: ignore[arg-type]
    if config.client_auth != "none":
        _load("tls.client_ca_file", lambda: context.load_verify_locations(cafile=config.client_ca_file))
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        if config.crl_file is not None:
            _load("tls.crl_file", lambda: context.load_verify_locations(cafile=config.crl_file))
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        context.verify_mode = _CLIENT_AUTH[config.client_auth]
    return context


def _load(key: str, load: Any) -> None:
    try:
        load()
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(key, f"cannot load: {getattr(exc, 'strerror', None) or exc}") from None


class ServerTLS:
    """The context new connections get (swapped whole on reload) and the certificate policy."""

    def __init__(self, config: TlsConfig, handshake_timeout: float) -> None:
        self.config = config
        self.context = build_context(config)
        self.pins = certs.pin_set(config.client_cert_fingerprints)
        self.subject_field = config.client_subject
        self.handshake_backstop = handshake_timeout + BACKSTOP_MARGIN

    def reload(self) -> None:
        """Re-read the certificate, key, CA and CRL files; on failure the old context stays."""
        self.context = build_context(self.config)

    def identify(self, transport: Any, now: float) -> Identity | None:
        """The client certificate's identity, None without one; raises certs.CertificateRefused."""
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(True) if ssl_object is not None else None
        if der is None:
            return None
        return certs.identify(ssl_object.getpeercert(), der, field=self.subject_field, pins=self.pins, now=now)


def failure_reason(exc: BaseException) -> str:
    """Why a handshake failed, as one of FAILURES."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _UNKNOWN_CA:
            return "unknown_ca"
        return "expired" if code == _EXPIRED else "revoked" if code == _REVOKED else "bad_certificate"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)):
        return "closed"
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or ""
        if reason in _NOT_TLS:
            return "not_tls"
        if reason in _PROTOCOL:
            return "protocol"
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no_certificate"
        if reason.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_")):
            return "peer_alert"  # the client gave up, often because it does not trust our certificate
        if reason == "UNEXPECTED_EOF_WHILE_READING":
            return "closed"
        return "other"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    return "other"
