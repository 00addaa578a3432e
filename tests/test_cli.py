"""The command line, as an operator runs it: real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode

from support import (
    SECRET,
    ServerProcess,
    frame,
    legit,
    open_legit,
    read_close,
    source,
    tcp,
    token,
    upgrade_request,
    upgraded,
)

pytestmark = pytest.mark.slow


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guarded_ws", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_sigterm_drains_authenticated_connections_with_1001():
    server = ServerProcess("--set", "limits.drain_timeout=5")
    ws = open_legit(server.port, source(2))
    pending = upgraded(server.port, source(3))
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert read_close(pending) == 1001
    assert server.wait(10) == 0
    assert time.monotonic() - started < 8
    assert "stopped" in server.output


def test_no_credential_reaches_the_log():
    server = ServerProcess("--log-level", "debug")
    good = token("erin")
    bad = token("mallory", key="a-different-secret-0123456789-abcdef")
    expired = token("old", now=time.time() - 7200, ttl=60)
    assert legit(server.port, source(2), sub="erin") == "hello"
    for credential in (bad, expired, "garbage-credential-value-1234"):
        sock = upgraded(server.port, source(3))
        sock.sendall(frame(Opcode.TEXT, credential.encode()))
        assert read_close(sock) == 4401
    leaky = tcp(server.port, source(4))
    leaky.sendall(upgrade_request("/ws?token=query-secret-value-5678"))
    leaky.recv(4096)
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait(10) == 0
    log = server.output
    assert "auth failed" in log  # the failures were logged...
    for secret in (good, bad, expired, "garbage-credential-value-1234", "query-secret-value-5678", SECRET):
        assert secret not in log  # ...without the credential
        for part in secret.split(".") if "." in secret else []:
            assert part not in log


def test_token_issue_prints_a_token_the_server_accepts():
    issued = _cli("token", "issue", "--sub", "frank", "--ttl", "60", env={"GUARDED_WS_SECRET": SECRET})
    assert issued.returncode == 0, issued.stderr
    server = ServerProcess()
    try:
        client = _cli(
            "client", f"ws://127.0.0.1:{server.port}/ws", "--token", issued.stdout.strip(), "--message", "hi"
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout.splitlines() == ["authenticated as frank", "echo: hi"]
    finally:
        server.proc.terminate()
        server.wait(10)


def test_token_issue_without_a_secret_is_a_clear_error():
    env = {key: value for key, value in os.environ.items() if not key.startswith("GUARDED_WS_")}
    result = subprocess.run(
        [sys.executable, "-m", "guarded_ws", "token", "issue", "--sub", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 2
    assert "auth.secret" in result.stderr


def test_bad_configuration_stops_start_up_naming_the_key():
    result = _cli("serve", "--set", "limits.auth_timeout=-1")
    assert result.returncode == 2
    assert "limits.auth_timeout" in result.stderr


def test_without_a_secret_serve_prints_a_working_development_token():
    server = ServerProcess(secret=None)
    try:
        command = server.wait_line(" client ws://").split()
        assert "DEVELOPMENT secret" in server.output
        client = _cli(*command[command.index("client") :])
        assert client.returncode == 0, client.stderr
        assert client.stdout.splitlines() == ["authenticated as dev-user", "echo: hello"]
    finally:
        server.proc.terminate()
        server.wait(10)


def test_cert_fingerprint_prints_the_pins_the_config_takes_and_the_client_uses_them(tmp_path):
    import pki

    ca = pki.CA()
    alice, bob = ca.client("alice"), ca.client("bob")
    bundle = tmp_path / "clients.pem"
    bundle.write_bytes(alice.cert_pem + bob.cert_pem)
    printed = _cli("cert", "fingerprint", str(bundle))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.split() == [alice.fingerprint, bob.fingerprint]
    assert _cli("cert", "fingerprint", str(tmp_path / "missing.pem")).returncode == 1

    cert_file, key_file = ca.server().write(tmp_path, "server")
    server = ServerProcess(
        "--set", f"tls.cert_file={cert_file}",
        "--set", f"tls.key_file={key_file}",
        "--set", "tls.client_auth=required",
        "--set", f"tls.client_ca_file={ca.write(tmp_path)}",
        "--set", f"tls.client_cert_fingerprints={printed.stdout.split()[0]}",
    )  # fmt: skip
    try:
        url = f"wss://localhost:{server.port}/ws"
        ca_file = str(tmp_path / "ca.pem")
        alice_cert, alice_key = alice.write(tmp_path, "alice")
        ok = _cli("client", url, "--cafile", ca_file, "--cert", alice_cert, "--key", alice_key, "--message", "hi")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.splitlines() == ["authenticated as alice", "echo: hi"]
        bob_cert, bob_key = bob.write(tmp_path, "bob")
        refused = _cli("client", url, "--cafile", ca_file, "--cert", bob_cert, "--key", bob_key)
        assert refused.returncode != 0
        assert "listening on wss://" in server.output
    finally:
        server.kill()


def test_serve_demo_serves_the_demo_page_with_a_development_secret():
    server = ServerProcess("--demo", secret=None)
    try:
        line = server.wait_line("demo page on ")
        assert line.rstrip().endswith(f"http://127.0.0.1:{server.port}/demo")
        sock = tcp(server.port)
        sock.sendall(b"GET /demo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        page = b""
        while chunk := sock.recv(65536):
            page += chunk
        assert page.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"<title>guarded-ws: browser auth demo</title>" in page
    finally:
        server.proc.terminate()
        server.wait(10)

