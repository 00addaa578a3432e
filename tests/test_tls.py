"""The server's TLS context and the failure labels, without a network."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

import pki
from guarded_ws.config import ConfigError, TlsConfig
from guarded_ws.tls import BACKSTOP_MARGIN, FAILURES, ServerTLS, build_context, failure_reason


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    ca = pki.CA()
    cert, key = ca.server().write(tmp_path, "server")
    return {"cert_file": cert, "key_file": key, "client_ca_file": ca.write(tmp_path)}


def test_server_only_context(files):
    context = build_context(TlsConfig(cert_file=files["cert_file"], key_file=files["key_file"]))
    assert context.verify_mode == ssl.CERT_NONE
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.cert_store_stats()["x509_ca"] == 0  # no system CA is trusted for anything


@pytest.mark.parametrize(("mode", "verify"), [("optional", ssl.CERT_OPTIONAL), ("required", ssl.CERT_REQUIRED)])
def test_client_certificate_context_trusts_only_the_configured_anchors(files, mode, verify):
    context = build_context(TlsConfig(**files, client_auth=mode, min_version="TLSv1.3"))
    assert context.verify_mode == verify
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN  # a known leaf anchors itself
    assert context.cert_store_stats()["x509_ca"] == 1


def test_crl_turns_on_leaf_revocation_checks(files, tmp_path):
    crl = tmp_path / "crl.pem"
    crl.write_bytes(pki.CA().crl([]))
    context = build_context(TlsConfig(**files, client_auth="required", crl_file=str(crl)))
    assert context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF


@pytest.mark.parametrize(
    ("broken", "key"),
    [("cert_file", "tls.cert_file"), ("key_file", "tls.cert_file"), ("client_ca_file", "tls.client_ca_file")],
)
def test_unloadable_files_are_config_errors_naming_the_key(files, tmp_path, broken, key):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM at all")
    with pytest.raises(ConfigError) as error:
        build_context(TlsConfig(**{**files, broken: str(garbage)}, client_auth="required"))
    assert error.value.key == key
    with pytest.raises(ConfigError) as error:
        build_context(TlsConfig(**{**files, broken: str(tmp_path / "missing.pem")}, client_auth="required"))
    assert error.value.key == key


def test_a_key_that_does_not_match_the_certificate_is_refused(files, tmp_path):
    _, other_key = pki.CA().server().write(tmp_path, "other")
    with pytest.raises(ConfigError) as error:
        build_context(TlsConfig(cert_file=files["cert_file"], key_file=other_key))
    assert error.value.key == "tls.cert_file"


def test_reload_swaps_the_context_and_a_failed_one_keeps_the_old(files, tmp_path):
    tls = ServerTLS(TlsConfig(cert_file=files["cert_file"], key_file=files["key_file"]), handshake_timeout=5.0)
    assert tls.handshake_backstop == 5.0 + BACKSTOP_MARGIN
    first = tls.context
    tls.reload()
    assert tls.context is not first
    second = tls.context
    Path(files["cert_file"]).write_text("broken")
    with pytest.raises(ConfigError):
        tls.reload()
    assert tls.context is second


def _ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}]")
    exc.reason = reason  # type: ignore[misc]
    return exc


def _verify_error(code: int) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = code
    exc.reason = "CERTIFICATE_VERIFY_FAILED"  # type: ignore[misc]
    return exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (_ssl_error("HTTP_REQUEST"), "not_tls"),
        (_ssl_error("WRONG_VERSION_NUMBER"), "not_tls"),
        (_ssl_error("UNSUPPORTED_PROTOCOL"), "protocol"),
        (_ssl_error("NO_SHARED_CIPHER"), "protocol"),
        (_ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no_certificate"),
        (_ssl_error("TLSV1_ALERT_UNKNOWN_CA"), "peer_alert"),
        (_ssl_error("SSLV3_ALERT_BAD_CERTIFICATE"), "peer_alert"),
        (_ssl_error("UNEXPECTED_EOF_WHILE_READING"), "closed"),
        (_ssl_error("SOMETHING_NEW"), "other"),
        (_verify_error(20), "unknown_ca"),
        (_verify_error(18), "unknown_ca"),
        (_verify_error(10), "expired"),
        (_verify_error(23), "revoked"),
        (_verify_error(3), "bad_certificate"),
        (ssl.SSLEOFError(8, "EOF"), "closed"),
        (ConnectionResetError(), "closed"),
        (TimeoutError(), "timeout"),
        (ValueError(), "other"),
    ],
)
def test_every_failure_gets_a_label_from_the_fixed_set(exc, reason):
    assert failure_reason(exc) == reason
    assert reason in FAILURES
