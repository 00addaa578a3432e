"""wss:// and client certificates: attacks on the TLS handshake, and who a certificate lets in."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

import pki
from cookie_support import NAME as TICKET
from cookie_support import ORIGIN, preauth
from support import (
    ServerProcess,
    closed_by_peer,
    read_response_head,
    source,
    status_of,
    tcp,
    token,
    upgrade_request,
    wait_for,
)

class Pki:
    """A CA, the server's certificate, and the [tls] overrides that serve it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = pki.CA()
        self.cert_file, self.key_file = self.ca.server().write(directory, "server")
        self.ca_file = self.ca.write(directory)

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {"tls__cert_file": self.cert_file, "tls__key_file": self.key_file, **extra}

    def mtls(self, client_auth: str = "required", **extra: Any) -> dict[str, Any]:
        return self.settings(tls__client_auth=client_auth, tls__client_ca_file=self.ca_file, **extra)

    def context(self, cert: pki.Issued | None = None) -> ssl.SSLContext:
        return pki.client_context(self.ca, cert, self.dir)


@pytest.fixture
def tls(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def wss(port: int, context: ssl.SSLContext, src: str = "127.0.0.1", path: str = "/ws", **kw: Any) -> ClientConnection:
    return connect(
        f"wss://localhost:{port}{path}",
        sock=tcp(port, src),
        ssl=context,
        server_hostname="localhost",
        compression=None,
        open_timeout=10,  # a noisy machine; the deadlines under test are the server's
        close_timeout=5,
        legacy=True,  # the caller closes it
        **kw,
    )


def authenticated_by_token(ws: ClientConnection, sub: str = "alice", **kw: Any) -> None:
    ws.send(token(sub, **kw))
    assert json.loads(ws.recv(timeout=5)) == {"type": "authenticated", "subject": sub}


def echo(ws: ClientConnection, message: str = "hello") -> str:
    ws.send(message)
    return str(ws.recv(timeout=5))


def refused(port: int, context: ssl.SSLContext) -> Exception:
    """The error a client gets when the server refuses it during or right after the handshake."""
    try:
        ws = wss(port, context)
    except (OSError, WebSocketException, EOFError) as exc:  # ssl.SSLError is an OSError
        return exc
    try:
        ws.recv(timeout=5)
    except Exception as exc:  # TLS 1.3: the client learns of the refusal on its first read
        return exc
    finally:
        ws.close()
    raise AssertionError("the server accepted the connection")


def tls_failures(server: Any, reason: str) -> float:
    return server.metric("guarded_ws_tls_handshake_failures_total", reason=reason)


# wss:// with tokens


def test_first_message_token_flow_over_wss(serve, tls):
    server = serve(**tls.settings())
    with wss(server.port, tls.context()) as ws:
        authenticated_by_token(ws)
        assert echo(ws) == "hello"
    assert server.metric("guarded_ws_auth_attempts_total", method="token", result="ok") == 1
    assert sum(tls_failures(server, reason) for reason in ("other", "closed", "not_tls")) == 0


def test_plain_http_on_the_tls_port_is_closed_not_served(serve, tls):
    server = serve(limits__handshake_timeout=30.0, **tls.settings())
    attacker = tcp(server.port, source(2))
    started = time.monotonic()
    attacker.sendall(upgrade_request())
    reply = b""
    try:
        while chunk := attacker.recv(4096):
            reply += chunk
    except ConnectionResetError:
        pass
    assert b"HTTP/" not in reply and b"101" not in reply
    assert time.monotonic() - started < 3.0  # closed at once, not at the 30 s deadline
    wait_for(lambda: tls_failures(server, "not_tls") == 1, what="not_tls counted")
    assert server.metric("guarded_ws_handshake_duration_seconds_count") == 0
    with wss(server.port, tls.context(), source(3)) as ws:
        authenticated_by_token(ws)
    wait_for(server.idle_state, what="pending state released")


def test_tls_stall_mid_client_hello_is_closed_at_the_deadline(serve, tls):
    server = serve(limits__handshake_timeout=1.0, **tls.settings())
    attacker = tcp(server.port, source(2))
    attacker.sendall(pki.PARTIAL_CLIENT_HELLO)
    started = time.monotonic()
    with wss(server.port, tls.context(), source(3)) as ws:  # meanwhile, a legitimate client
        authenticated_by_token(ws)
        assert echo(ws) == "hello"
    assert closed_by_peer(attacker)
    assert time.monotonic() - started < 3.0
    assert server.metric("guarded_ws_deadline_expired_total", phase="tls") == 1
    assert server.metric("guarded_ws_deadline_expired_total", phase="handshake") == 0
    wait_for(server.idle_state, what="pending state released")


def test_silent_tcp_on_the_tls_port_expires_in_the_tls_phase(serve, tls):
    server = serve(limits__handshake_timeout=1.0, **tls.settings())
    attacker = tcp(server.port, source(2))
    started = time.monotonic()
    assert closed_by_peer(attacker)
    assert time.monotonic() - started < 3.0
    assert server.metric("guarded_ws_deadline_expired_total", phase="tls") == 1
    wait_for(server.idle_state, what="pending state released")


def test_tls_handshakes_count_against_the_per_source_pending_cap(serve, tls):
    server = serve(limits__max_pending_per_source=2, limits__handshake_timeout=30.0, **tls.settings())
    stalled = [tcp(server.port, source(2)) for _ in range(2)]
    for sock in stalled:
        sock.sendall(pki.PARTIAL_CLIENT_HELLO)
    wait_for(lambda: server.call(lambda: server.server.admission.total) == 2, what="two pending")
    third = tcp(server.port, source(2))
    assert status_of(read_response_head(third)) == 429  # refused before TLS: a plain answer, then close
    with wss(server.port, tls.context(), source(3)) as ws:
        authenticated_by_token(ws)
    assert server.metric("guarded_ws_connections_rejected_total", reason="per_source_cap") == 1


def test_tls_handshakes_in_progress_are_evicted_oldest_first(serve, tls):
    server = serve(limits__max_pending_total=2, limits__max_pending_per_source=2, limits__handshake_timeout=30.0, **tls.settings())
    oldest = tcp(server.port, source(2))
    oldest.sendall(pki.PARTIAL_CLIENT_HELLO)
    wait_for(lambda: server.call(lambda: server.server.admission.total) == 1, what="one pending")
    newer = tcp(server.port, source(3))
    newer.sendall(pki.PARTIAL_CLIENT_HELLO)
    wait_for(lambda: server.call(lambda: server.server.admission.total) == 2, what="two pending")
    with wss(server.port, tls.context(), source(4)) as ws:  # needs a slot: the oldest handshake goes
        authenticated_by_token(ws)
    assert closed_by_peer(oldest)
    assert server.metric("guarded_ws_connections_evicted_total", phase="handshake") == 1
    newer.settimeout(0.3)
    with pytest.raises(TimeoutError):
        newer.recv(1)  # still waiting in its handshake


# Client certificates


def test_valid_client_certificate_authenticates_at_the_upgrade_subject_mapped(serve, tls):
    alice = tls.ca.client("Alice Example", email="alice@example.org")
    server = serve(server__app="sample_apps:claims", tls__client_subject="san_email", **tls.mtls())
    with wss(server.port, tls.context(alice)) as ws:
        assert json.loads(ws.recv(timeout=5)) == {"type": "authenticated", "subject": "alice@example.org"}
        sent = json.loads(ws.recv(timeout=5))  # the app's first message: what it was told
        assert sent["subject"] == "alice@example.org"
        claims = sent["claims"]
        assert claims["fingerprint"] == alice.fingerprint
        assert int(claims["serial"], 16) == alice.cert.serial_number
        assert claims["exp"] == int(alice.cert.not_valid_after_utc.timestamp())
        assert echo(ws) == "hello"
    assert server.metric("guarded_ws_auth_attempts_total", method="certificate", result="ok") == 1


def test_common_name_is_the_default_subject(serve, tls):
    server = serve(**tls.mtls())
    with wss(server.port, tls.context(tls.ca.client("bob"))) as ws:
        assert json.loads(ws.recv(timeout=5)) == {"type": "authenticated", "subject": "bob"}


def test_client_certificate_from_an_unknown_ca_is_refused(serve, tls):
    server = serve(**tls.mtls())
    mallory = pki.CA("mallory's CA").client("alice")  # the right name, from the wrong CA
    refused(server.port, tls.context(mallory))
    wait_for(lambda: tls_failures(server, "unknown_ca") == 1, what="unknown_ca counted")
    assert server.metric("guarded_ws_auth_attempts_total", method="certificate", result="ok") == 0
    with wss(server.port, tls.context(tls.ca.client("alice"))) as ws:
        assert json.loads(ws.recv(timeout=5))["subject"] == "alice"
    wait_for(server.idle_state, what="pending state released")


def test_expired_client_certificate_is_refused(serve, tls):
    server = serve(**tls.mtls())
    old = tls.ca.client("alice", not_before=pki.ago(86400 * 2), not_after=pki.ago(3600))
    refused(server.port, tls.context(old))
    wait_for(lambda: tls_failures(server, "expired") == 1, what="expired counted")
    assert server.metric("guarded_ws_authenticated_connections") == 0


def test_revoked_client_certificate_is_refused(serve, tls):
    alice, mallory = tls.ca.client("alice"), tls.ca.client("mallory")
    crl = tls.dir / "crl.pem"
    crl.write_bytes(tls.ca.crl([mallory]))
    server = serve(**tls.mtls(tls__crl_file=str(crl)))
    refused(server.port, tls.context(mallory))
    wait_for(lambda: tls_failures(server, "revoked") == 1, what="revoked counted")
    with wss(server.port, tls.context(alice)) as ws:
        assert json.loads(ws.recv(timeout=5))["subject"] == "alice"


def test_pinned_fingerprint_is_accepted_and_another_from_the_same_ca_refused(serve, tls):
    alice, bob = tls.ca.client("alice"), tls.ca.client("bob")
    server = serve(**tls.mtls(tls__client_cert_fingerprints=(alice.fingerprint,)))
    with wss(server.port, tls.context(alice)) as ws:
        assert json.loads(ws.recv(timeout=5))["subject"] == "alice"
    refused(server.port, tls.context(bob))
    wait_for(lambda: tls_failures(server, "pin_mismatch") == 1, what="pin_mismatch counted")
    assert server.metric("guarded_ws_auth_attempts_total", method="certificate", result="ok") == 1


def test_known_self_signed_certificates_need_no_ca(serve, tls):
    known, stranger = pki.self_signed("device-7"), pki.self_signed("device-7")
    known_file = tls.dir / "known.pem"
    known_file.write_bytes(known.cert_pem)
    server = serve(
        **tls.settings(
            tls__client_auth="required",
            tls__client_ca_file=str(known_file),
            tls__client_cert_fingerprints=(known.fingerprint,),
        )
    )
    with wss(server.port, tls.context(known)) as ws:
        assert json.loads(ws.recv(timeout=5))["subject"] == "device-7"
    refused(server.port, tls.context(stranger))  # same name, another key: not the known certificate
    wait_for(lambda: tls_failures(server, "unknown_ca") == 1, what="unknown_ca counted")


def test_required_mode_refuses_a_client_without_a_certificate(serve, tls):
    server = serve(**tls.mtls("required"))
    refused(server.port, tls.context())
    wait_for(lambda: tls_failures(server, "no_certificate") == 1, what="no_certificate counted")
    assert server.metric("guarded_ws_auth_attempts_total", method="token", result="ok") == 0


def test_optional_mode_falls_back_to_the_first_message_token(serve, tls):
    server = serve(**tls.mtls("optional"))
    with wss(server.port, tls.context()) as ws:  # no certificate: the token flow
        authenticated_by_token(ws, "carol")
        assert echo(ws) == "hello"
    with wss(server.port, tls.context(tls.ca.client("alice"))) as ws:  # a certificate: no token needed
        assert json.loads(ws.recv(timeout=5)) == {"type": "authenticated", "subject": "alice"}
    assert server.metric("guarded_ws_auth_attempts_total", method="token", result="ok") == 1
    assert server.metric("guarded_ws_auth_attempts_total", method="certificate", result="ok") == 1
    refused(server.port, tls.context(pki.CA("other").client("alice")))  # a bad one is refused, not ignored
    wait_for(lambda: tls_failures(server, "unknown_ca") == 1, what="unknown_ca counted")


def test_optional_mode_falls_back_to_the_cookie_flow(serve, tls):
    server = serve(cookie__enabled=True, server__allowed_origins=(ORIGIN,), **tls.mtls("optional"))
    csrf, ticket = preauth(server.port, "dave", context=tls.context())  # a browser without a certificate
    cookie = f"__Host-{TICKET}={ticket}"
    upgrade = {"origin": ORIGIN, "additional_headers": {"Cookie": cookie}, "path": f"/ws?csrf={quote(csrf)}"}
    with wss(server.port, tls.context(), **upgrade) as ws:
        assert json.loads(ws.recv(timeout=5)) == {"type": "authenticated", "subject": "dave"}
        assert echo(ws) == "hello"
    with wss(server.port, tls.context(tls.ca.client("alice")), origin=ORIGIN) as ws:  # one with a certificate
        assert json.loads(ws.recv(timeout=5)) == {"type": "authenticated", "subject": "alice"}
    assert server.metric("guarded_ws_auth_attempts_total", method="cookie", result="ok") == 1
    assert server.metric("guarded_ws_auth_attempts_total", method="certificate", result="ok") == 1


def test_optional_mode_without_certificate_still_has_the_auth_deadline(serve, tls):
    server = serve(limits__auth_timeout=1.0, **tls.mtls("optional"))
    with wss(server.port, tls.context()) as ws:
        started = time.monotonic()
        with pytest.raises(Exception):
            ws.recv(timeout=5)
        assert ws.close_code == 4408
        assert time.monotonic() - started < 3.0


def test_a_foreign_page_cannot_ride_on_a_browsers_client_certificate(serve, tls):
    alice = tls.ca.client("alice")
    server = serve(**tls.mtls())
    with pytest.raises(InvalidStatus) as refusal:
        wss(server.port, tls.context(alice), origin="https://evil.example")
    assert refusal.value.response.status_code == 403
    assert server.metric("guarded_ws_connections_rejected_total", reason="origin") == 1
    approved = serve(server__allowed_origins=("https://app.example",), **tls.mtls())
    with wss(approved.port, tls.context(alice), origin="https://app.example") as ws:
        assert json.loads(ws.recv(timeout=5))["subject"] == "alice"


# Credentials that expire while connected


def test_client_certificate_expiry_closes_the_connection_with_4401(serve, tls):
    server = serve(**tls.mtls())
    short = tls.ca.client("alice", not_after=pki.ahead(3))
    expires = short.cert.not_valid_after_utc.timestamp()
    with wss(server.port, tls.context(short)) as ws:
        assert json.loads(ws.recv(timeout=5))["subject"] == "alice"
        assert echo(ws) == "hello"
        with pytest.raises(Exception):
            ws.recv(timeout=8)
        closed_at = time.time()
        assert ws.close_code == 4401 and ws.close_reason == "credential expired"
    assert expires - 0.2 <= closed_at < expires + 2.0
    assert server.metric("guarded_ws_deadline_expired_total", phase="credential") == 1


# Reload


def test_reload_serves_a_new_certificate_and_keeps_open_connections(serve, tls):
    server = serve(**tls.settings())
    old = wss(server.port, tls.context(), source(2))
    authenticated_by_token(old)
    new_ca = pki.CA("the next CA")
    new_ca.server().write(tls.dir, "server")  # the same paths, new contents
    server.call(server.server.tls.reload)
    with wss(server.port, pki.client_context(new_ca), source(3)) as ws:
        authenticated_by_token(ws, "bob")
    with pytest.raises(ssl.SSLCertVerificationError):
        wss(server.port, tls.context(), source(4))  # the old chain is no longer served
    assert echo(old, "still here") == "still here"
    old.close()


@pytest.mark.slow
def test_sighup_reloads_certificates_without_dropping_connections(tls):
    config = tls.dir / "guarded-ws.toml"
    config.write_text(f'[tls]\ncert_file = "{tls.cert_file}"\nkey_file = "{tls.key_file}"\n')
    proc = ServerProcess("--config", str(config))
    try:
        old = wss(proc.port, tls.context(), source(2))
        authenticated_by_token(old)
        Path(tls.cert_file).write_text("not a certificate")  # a botched deploy: the old context stays
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_line("TLS reload failed")
        with wss(proc.port, tls.context(), source(3)) as ws:
            authenticated_by_token(ws)
        new_ca = pki.CA("the next CA")
        new_ca.server().write(tls.dir, "server")
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_line("TLS certificates reloaded")
        with wss(proc.port, pki.client_context(new_ca), source(4)) as ws:
            authenticated_by_token(ws, "bob")
        assert echo(old, "still here") == "still here"
        old.close()
        assert proc.proc.poll() is None
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_tls_defences_hold_on_each_loop(serve, tls, loop):
    server = serve(server__loop=loop, limits__handshake_timeout=1.0, **tls.mtls("optional"))
    staller = tcp(server.port, source(2))
    staller.sendall(pki.PARTIAL_CLIENT_HELLO)
    started = time.monotonic()
    with wss(server.port, tls.context(tls.ca.client("alice")), source(3)) as ws:
        assert json.loads(ws.recv(timeout=5))["subject"] == "alice"
    refused(server.port, tls.context(pki.CA("other").client("alice")))
    assert closed_by_peer(staller)
    assert time.monotonic() - started < 3.0
    assert server.metric("guarded_ws_deadline_expired_total", phase="tls") == 1
    wait_for(lambda: tls_failures(server, "unknown_ca") == 1, what="unknown_ca counted")
    wait_for(server.idle_state, what="pending state released")
