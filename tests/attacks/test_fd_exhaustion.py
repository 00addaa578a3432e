"""Running out of file descriptors: a server process with RLIMIT_NOFILE 256, flooded past it,
with authenticated clients connected."""

from __future__ import annotations

import resource
import socket

import pytest

from support import ServerProcess, legit, open_legit, source, tcp

pytestmark = pytest.mark.slow

NOFILE = 256
FLOOD = 600  # idle connections, well past the server's descriptors
SOURCES = 60


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.fixture
def flood():
    held: list[socket.socket] = []

    def start(port: int) -> list[socket.socket]:
        for i in range(FLOOD):
            try:
                held.append(tcp(port, source(2 + i % SOURCES), timeout=5))
            except OSError:
                break
        return held

    yield start
    for sock in held:
        sock.close()


def test_derived_pending_cap_keeps_descriptors_for_legitimate_clients(flood):
    server = ServerProcess(preexec=_limit_fds)
    try:
        held = flood(server.port)
        assert len(held) >= NOFILE, "the flood did not get past the descriptor limit"
        # During the flood: the derived cap left descriptors free, eviction made room.
        assert legit(server.port, source(200), timeout=10) == "hello"
        assert server.metric("guarded_ws_connections_evicted_total") > 0
        assert server.metric("guarded_ws_accept_errors_total", errno="EMFILE") == 0
    finally:
        server.proc.terminate()
        assert server.wait(15) == 0
    assert len(server.lines) < 60, server.output


def test_emfile_backs_off_recovers_and_authenticated_clients_keep_working(flood):
    server = ServerProcess(
        "--set",
        "limits.max_pending_total=2000",
        "--set",
        "limits.max_connections_total=50",
        "--set",
        "limits.max_connections_per_source=50",
        preexec=_limit_fds,
    )
    clients = [open_legit(server.port, source(210 + n), sub=f"user{n}", timeout=10) for n in range(5)]
    try:
        held = flood(server.port)
        assert len(held) >= NOFILE
        for n, ws in enumerate(clients):  # while accept() fails, the authenticated are served
            ws.send(f"during {n}")
            assert ws.recv(timeout=10) == f"during {n}"
        assert legit(server.port, source(200), timeout=10) == "hello"
        for sock in held:
            sock.close()
        held.clear()
        assert legit(server.port, source(201), timeout=10) == "hello"
        for n, ws in enumerate(clients):
            ws.send(f"after {n}")
            assert ws.recv(timeout=10) == f"after {n}"
        # Scraped only now: the metrics port too runs out of descriptors during the flood.
        assert server.metric("guarded_ws_accept_errors_total", errno="EMFILE") > 0
        assert server.metric("guarded_ws_authenticated_connections") == len(clients)
        assert server.proc.poll() is None
    finally:
        for ws in clients:
            ws.close()
        server.proc.terminate()
        assert server.wait(15) == 0
    assert len(server.lines) < 60, server.output
