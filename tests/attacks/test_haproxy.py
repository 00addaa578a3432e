"""Behind a real HAProxy, with the shipped deploy/haproxy.cfg: caps count the clients, not the proxy.

Two guarded-ws instances behind Debian's haproxy (installed by ``make test``), which
sends them a PROXY protocol v2 header; clients connect to HAProxy from 127.0.0.2,
127.0.0.3, ... so every instance sees HAProxy's address (127.0.0.1) as its peer. Without
the header, every client would be one source and the first few would lock out the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

import pki
from support import ServerThread, read_response_head, source, status_of, tcp, token, upgrade_request, wait_for

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
CAP = 3


def _haproxy() -> str:
    path = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(path).exists():
        raise AssertionError("haproxy is not installed: `make test` installs Debian's haproxy package")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Cluster = tuple[int, list[ServerThread]]  # HAProxy's port, the instances behind it


@pytest.fixture
def haproxy(serve, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Starts HAProxy on a loopback port in front of two guarded-ws instances with these settings."""
    started: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(**settings: Any) -> Cluster:
        instances = [
            serve(
                server__proxy_protocol="required",
                server__trusted_proxies=["127.0.0.1/32"],
                limits__max_pending_per_source=CAP,
                **settings,
            )
            for _ in range(2)
        ]
        port, proc, log = _start_haproxy(instances, tmp_path)
        started.append((proc, log))
        return port, instances

    yield start
    for proc, log in started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _start_haproxy(instances: list[ServerThread], tmp_path: Path) -> tuple[int, subprocess.Popen[bytes], Any]:
    port = _free_port()
    env = {
        **os.environ,
        "GWS_BIND": f"127.0.0.1:{port}",
        "GWS_SERVER1": f"127.0.0.1:{instances[0].port}",
        "GWS_SERVER2": f"127.0.0.1:{instances[1].port}",
        "GWS_CHECK_PORT1": str(instances[0].metrics_port),
        "GWS_CHECK_PORT2": str(instances[1].metrics_port),
        "GWS_MAXCONN": "1000",  # the test process's descriptor limit, not a production machine's
    }
    log = (tmp_path / "haproxy.log").open("w+")
    proc = subprocess.Popen([_haproxy(), "-db", "-f", str(CONFIG)], env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: _accepts(port) or proc.poll() is not None, timeout=10, what="haproxy to listen")
    if proc.poll() is not None:
        log.close()
        raise AssertionError("haproxy exited:\n" + Path(log.name).read_text())
    return port, proc, log


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _pending(instances: list[ServerThread], host: str) -> int:
    return sum(s.call(lambda s=s: s.server.admission.pending(s.server.source_key(host))) for s in instances)


def test_per_source_caps_apply_to_the_clients_behind_haproxy(haproxy) -> None:
    port, instances = haproxy()
    attacker, neighbour = source(2), source(3)
    held = []
    for _ in range(CAP):
        sock = tcp(port, attacker)
        sock.sendall(upgrade_request())
        assert status_of(read_response_head(sock)) == 101
        held.append(sock)
    # The attacker's next connection is refused at its cap: guarded-ws's 429, relayed by HAProxy.
    refused = tcp(port, attacker)
    head = read_response_head(refused)
    assert status_of(head) == 429 and b"Retry-After: 1" in head
    assert sum(s.metric("guarded_ws_connections_rejected_total", reason="per_source_cap") for s in instances) == 1
    assert _pending(instances, attacker) == CAP
    assert _pending(instances, "127.0.0.1") == 0  # HAProxy's own address holds nothing
    # A legitimate client from another source, through the same HAProxy, authenticates and is served.
    served(f"ws://127.0.0.1:{port}/ws", tcp(port, neighbour))
    leave(held, instances)


def test_tls_through_haproxy_keeps_the_caps_on_the_clients(haproxy, tmp_path: Path) -> None:
    """wss:// passed through in TCP mode: each instance reads HAProxy's PROXY header in clear,
    then the client's TLS handshake, which counts against that client's cap while it runs."""
    ca = pki.CA()
    cert_file, key_file = ca.server().write(tmp_path, "server")
    port, instances = haproxy(tls__cert_file=cert_file, tls__key_file=key_file)
    attacker, neighbour = source(2), source(3)
    stalled = [tcp(port, attacker) for _ in range(CAP)]
    for sock in stalled:
        sock.sendall(pki.PARTIAL_CLIENT_HELLO)
    wait_for(lambda: _pending(instances, attacker) == CAP, what="the attacker's handshakes pending")
    refused = tcp(port, attacker)
    assert status_of(read_response_head(refused)) == 429  # at its cap: answered in clear, before TLS
    assert _pending(instances, "127.0.0.1") == 0
    context = pki.client_context(ca, None, tmp_path)
    served(f"wss://localhost:{port}/ws", tcp(port, neighbour), ssl=context, server_hostname="localhost")
    leave(stalled, instances)


def served(url: str, sock: socket.socket, **tls: Any) -> None:
    """A legitimate client through HAProxy authenticates and gets its echo."""
    with connect(url, sock=sock, compression=None, open_timeout=10, **tls) as ws:
        ws.send(token("alice"))
        assert json.loads(ws.recv(timeout=5)) == {"type": "authenticated", "subject": "alice"}
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"


def leave(socks: list[socket.socket], instances: list[ServerThread]) -> None:
    for sock in socks:
        sock.close()
    for server in instances:
        wait_for(server.idle_state, what="pending state released")
