"""Faults of the network and of the peer: resets, half-closes, peers that stop reading or
vanish, a wall clock that jumps. Each runs a real server on loopback, and checks what the
faulty peer got, that the server forgot it, and that a legitimate client still works.

Descriptors running out while clients are authenticated: tests/attacks/test_fd_exhaustion.py.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pytest
from websockets.frames import Opcode

from support import (
    ServerProcess,
    authenticated_raw,
    frame,
    legit,
    open_legit,
    read_close,
    read_frame,
    read_response_head,
    reset,
    source,
    status_of,
    tcp,
    token,
    upgrade_request,
    upgraded,
    wait_for,
)

PHASES = ("handshake", "auth", "open")


def half_way(port: int, phase: str, src: str) -> socket.socket:
    """A socket in ``phase`` that has sent half of what that phase reads: request head, credential, message."""
    if phase == "handshake":
        sock, whole = tcp(port, src), upgrade_request()
    elif phase == "auth":
        sock, whole = upgraded(port, src), frame(Opcode.TEXT, token().encode())
    else:
        sock, whole = authenticated_raw(port, src), frame(Opcode.TEXT, b"m" * 200)
    sock.sendall(whole[: len(whole) // 2])
    return sock


def received(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the server sent until it closed, and how it closed: "eof" or "reset"."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return data, "reset"
    return data, "eof"


def gauges_at_zero(server) -> bool:
    return (
        server.metric("guarded_ws_pending_connections", phase="handshake") == 0
        and server.metric("guarded_ws_pending_connections", phase="auth") == 0
        and server.metric("guarded_ws_authenticated_connections") == 0
        and server.metric("guarded_ws_tracked_sources") == 0
    )


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize("phase", PHASES)
def test_peers_that_reset_mid_frame_are_forgotten(serve, caplog, phase):
    server = serve()
    peers = [half_way(server.port, phase, source(n)) for n in range(2, 7)]
    if phase != "open":
        wait_for(lambda: server.metric("guarded_ws_pending_connections", phase=phase) == 5, what="5 pending")
    for sock in peers:
        reset(sock)
    wait_for(lambda: gauges_at_zero(server), what="the gauges back to 0")
    wait_for(server.released, what="every table and queue empty")
    # Nothing was counted against them: half a frame is neither a credential nor a refusal.
    refused = server.metric("guarded_ws_connections_rejected_total") + server.metric(
        "guarded_ws_auth_attempts_total", result="invalid"
    )
    assert refused == 0
    assert legit(server.port, source(8)) == "hello"
    no_traceback(caplog)


@pytest.mark.parametrize("phase", PHASES)
def test_a_half_close_ends_the_connection_without_an_answer(serve, caplog, phase):
    """TCP half-close (FIN, no close frame) in any phase: the server closes its side at once,
    with no HTTP status or close frame (the peer's library reports 1006), long before a deadline."""
    server = serve(limits__handshake_timeout=30, limits__auth_timeout=30)
    sock = half_way(server.port, phase, source(2))
    started = time.monotonic()
    sock.shutdown(socket.SHUT_WR)
    data, how = received(sock)
    assert time.monotonic() - started < 3.0
    assert (data, how) == (b"", "eof")
    wait_for(lambda: gauges_at_zero(server), what="the gauges back to 0")
    wait_for(server.released, what="every table and queue empty")
    assert server.metric("guarded_ws_connections_rejected_total") == 0
    assert server.metric("guarded_ws_deadline_expired_total") == 0
    assert legit(server.port, source(3)) == "hello"
    no_traceback(caplog)


def test_a_complete_request_then_half_close_gets_its_101_then_the_close(serve):
    server = serve()
    sock = tcp(server.port, source(2))
    sock.sendall(upgrade_request())
    sock.shutdown(socket.SHUT_WR)
    head = read_response_head(sock)
    assert status_of(head) == 101
    assert received(sock) == (b"", "eof")
    wait_for(server.released, what="every table and queue empty")
    assert legit(server.port, source(3)) == "hello"


@pytest.mark.slow
def test_peers_that_never_read_cost_bounded_memory_and_are_dropped(monkeypatch):
    """Twenty peers authenticate to an app that writes 64 KiB messages without end, and never
    read. Unbounded, each would buffer gigabytes within the stall timeout."""
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    stall = 2.0
    server = ServerProcess("--app", "sample_apps:firehose", "--set", f"limits.write_stall_timeout={stall}")
    try:
        reader = open_legit(server.port, source(2))  # a reading client beside the sinks
        reader.close_timeout = 0.5  # its close frame would wait behind the stream: do not wait for the answer
        with reader:
            for _ in range(20):  # warm-up: the app's path is paid for before the first reading
                assert reader.recv(timeout=5) == b"x" * 65536
            before, fds = server.rss(), server.open_fds()
            sinks, started = [], time.monotonic()
            for n in range(3, 23):
                sock = authenticated_raw(server.port, source(n), sub=f"sink{n}")  # subjects have a cap of 16
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sinks.append(sock)
            peak = before
            while server.metric("guarded_ws_authenticated_connections") > 1:
                peak = max(peak, server.rss())
                assert reader.recv(timeout=5) == b"x" * 65536
                assert time.monotonic() - started < stall + 15.0, "the sinks were never dropped"
            assert time.monotonic() - started >= stall
            wait_for(lambda: server.open_fds() <= fds, what="the sinks' descriptors to close")
            assert reader.recv(timeout=5) == b"x" * 65536
        growth = peak - before
        print(f"RSS {before / 2**20:.1f} MiB before the sinks, peak {growth / 2**20:+.1f} MiB while 20 stalled")
        assert growth < 32 * 2**20
        for sink in sinks:  # what a sink got before the drop: the app's stream
            assert sink.recv(2) == bytes([0x80 | Opcode.BINARY, 127])
    finally:
        server.kill()


def test_a_peer_that_vanishes_is_closed_after_ping_interval_plus_ping_timeout(serve, caplog):
    """The peer neither reads nor sends (as if its host were gone, no FIN): only the missing
    pong tells, so the close comes at ping_interval + ping_timeout."""
    server = serve(limits__ping_interval=0.5, limits__ping_timeout=0.5)
    with open_legit(server.port, source(3)) as alive:  # answers pings from its background thread
        gone = authenticated_raw(server.port, source(2))
        started = time.monotonic()
        wait_for(lambda: server.metric("guarded_ws_authenticated_connections") == 1, timeout=5, what="the close")
        assert 0.9 <= time.monotonic() - started < 4.0
        alive.send("still here")
        assert alive.recv(timeout=5) == "still here"
    assert read_frame(gone) == (Opcode.PING, b"")  # what it would have seen, had it been there
    assert read_close(gone) == 1011
    wait_for(server.released, what="every table and queue empty")
    no_traceback(caplog)


class JumpingClock:
    """A wall clock an operator (or NTP) steps: time.time() plus an offset the test sets."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def jumping(server) -> JumpingClock:
    clock = JumpingClock()
    server.call(lambda: setattr(server.server, "wallclock", clock))
    return clock


@pytest.mark.parametrize("jump", [3 * 3600.0, -3 * 3600.0])
def test_a_wall_clock_jump_does_not_move_pending_deadlines(serve, jump):
    server = serve(limits__handshake_timeout=1.5, limits__auth_timeout=1.5)
    clock = jumping(server)
    idle, silent = tcp(server.port, source(2)), upgraded(server.port, source(3))
    started = time.monotonic()
    clock.offset = jump
    assert legit(server.port, source(4), credential=token(now=clock())) == "hello"  # checked on the jumped clock
    assert status_of(read_response_head(idle)) == 408
    assert read_close(silent) == 4408
    assert 1.2 <= time.monotonic() - started < 4.5


def test_a_wall_clock_jump_forward_neither_closes_open_connections_nor_admits_old_tokens(serve):
    """A credential's remaining life is taken from the wall clock when it is checked, then counted
    on the monotonic clock: stepping the wall clock later does not close connections at once.
    New credentials are checked against the wall clock as it is then."""
    server = serve()
    clock = jumping(server)
    with open_legit(server.port, source(2)) as ws:  # a 300 s token
        clock.offset = 3 * 3600.0
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1.0)  # twenty sweeps, and no 4401
        ws.send("after the jump")
        assert ws.recv(timeout=5) == "after the jump"
    late = upgraded(server.port, source(3))
    late.sendall(frame(Opcode.TEXT, token().encode()))  # 300 s on the real clock: expired on the server's
    assert read_close(late) == 4401
    assert server.metric("guarded_ws_auth_attempts_total", method="token", result="expired") == 1
    assert legit(server.port, source(4), credential=token(now=clock())) == "hello"
    assert server.metric("guarded_ws_deadline_expired_total", phase="credential") == 0


def test_a_wall_clock_jump_backward_does_not_extend_a_credential(serve):
    server = serve()
    clock = jumping(server)
    sock = upgraded(server.port, source(2))
    sock.sendall(frame(Opcode.TEXT, token(ttl=2.0).encode()))
    assert read_frame(sock) == (Opcode.TEXT, b'{"type": "authenticated", "subject": "alice"}')
    started = time.monotonic()
    clock.offset = -3 * 3600.0  # by the wall clock the token now has three hours left
    assert read_close(sock) == 4401
    assert 0.5 <= time.monotonic() - started < 5.0  # exp is whole seconds: 1 to 2 s were left
    assert server.metric("guarded_ws_deadline_expired_total", phase="credential") == 1
    assert legit(server.port, source(3), credential=token(now=clock())) == "hello"
