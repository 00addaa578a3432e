"""Running out of file descriptors: a server process with RLIMIT_NOFILE 256, flooded past it."""

from __future__ import annotations

import resource
import socket
import urllib.request

import pytest

from support import ServerProcess, legit, source, tcp

pytestmark = pytest.mark.slow

NOFILE = 256
FLOOD = 600  # idle connections, well past the server's descriptors
SOURCES = 60


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


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
        assert _metric(server.metrics_port, "guarded_ws_connections_evicted_total") > 0
        assert _metric(server.metrics_port, 'guarded_ws_accept_errors_total{errno="EMFILE"}') == 0
    finally:
        server.proc.terminate()
        assert server.wait(15) == 0
    assert len(server.lines) < 60, server.output


def test_emfile_backs_off_and_recovers(flood):
    server = ServerProcess(
        "--set",
        "limits.max_pending_total=2000",
        "--set",
        "limits.max_connections_total=50",
        "--set",
        "limits.max_connections_per_source=50",
        preexec=_limit_fds,
    )
    try:
        held = flood(server.port)
        assert len(held) >= NOFILE
        assert legit(server.port, source(200), timeout=10) == "hello"
        for sock in held:
            sock.close()
        held.clear()
        assert legit(server.port, source(201), timeout=10) == "hello"
        assert _metric(server.metrics_port, 'guarded_ws_accept_errors_total{errno="EMFILE"}') > 0
        assert server.proc.poll() is None
    finally:
        server.proc.terminate()
        assert server.wait(15) == 0
    assert len(server.lines) < 60, server.output
