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
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

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


@pytest.fixture
def cluster(serve, tmp_path: Path) -> Iterator[tuple[int, list[ServerThread]]]:
    """HAProxy on a loopback port in front of two guarded-ws instances; yields (HAProxy's port, instances)."""
    instances = [
        serve(
            server__proxy_protocol="required",
            server__trusted_proxies=["127.0.0.1/32"],
            limits__max_pending_per_source=CAP,
        )
        for _ in range(2)
    ]
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
    try:
        wait_for(lambda: _accepts(port) or proc.poll() is not None, timeout=10, what="haproxy to listen")
        assert proc.poll() is None, "haproxy exited:\n" + Path(log.name).read_text()
        yield port, instances
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _pending(instances: list[ServerThread], host: str) -> int:
    return sum(s.call(lambda s=s: s.server.admission.pending(s.server.source_key(host))) for s in instances)


def test_per_source_caps_apply_to_the_clients_behind_haproxy(cluster) -> None:
    port, instances = cluster
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
    with connect(f"ws://127.0.0.1:{port}/ws", sock=tcp(port, neighbour), compression=None, open_timeout=5) as ws:
        ws.send(token("alice"))
        assert json.loads(ws.recv(timeout=5)) == {"type": "authenticated", "subject": "alice"}
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
    for sock in held:
        sock.close()
    for server in instances:
        wait_for(server.idle_state, what="pending state released")
