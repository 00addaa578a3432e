"""After authentication: slow readers, silent peers, oversize messages, and the app API."""

from __future__ import annotations

import json
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode

from support import (
    authenticated_raw,
    frame,
    legit,
    open_legit,
    read_close,
    read_frame,
    source,
    wait_for,
)


def test_a_peer_that_never_reads_is_dropped_after_the_write_stall_timeout(serve):
    server = serve(server__app="sample_apps:firehose", limits__write_stall_timeout=1.0)
    sink = authenticated_raw(server.port, source(2))  # never read again
    wait_for(lambda: server.call(lambda: len(server.server.stalled)) == 1, what="the writer to stall")
    started = time.monotonic()
    buffered = server.call(lambda: [c.transport.get_write_buffer_size() for c in server.server.authenticated])
    assert max(buffered) <= 256 * 1024, "the app kept writing into a peer that does not read"
    wait_for(lambda: server.call(lambda: len(server.server.authenticated)) == 0, timeout=5, what="the drop")
    assert time.monotonic() - started < 3.0
    with open_legit(server.port, source(3)) as ws:  # a reading client gets the stream
        assert ws.recv(timeout=5) == b"x" * 65536
    sink.close()


def test_a_peer_that_ignores_pings_is_closed(serve):
    server = serve(limits__ping_interval=0.5, limits__ping_timeout=0.5)
    silent = authenticated_raw(server.port, source(2))  # a raw socket never answers pings
    started = time.monotonic()
    assert read_close(silent) == 1011
    assert time.monotonic() - started < 3.0
    with open_legit(server.port, source(3)) as ws:  # a real client answers them
        with pytest.raises(TimeoutError):
            ws.recv(timeout=2.0)
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"


def test_message_over_max_message_bytes_closes_with_1009(serve):
    server = serve(limits__max_message_bytes=1024)
    with open_legit(server.port, source(2)) as ws:
        ws.send("x" * 2000)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert legit(server.port, source(3)) == "hello"


def test_fragmented_messages_are_reassembled_after_auth(serve):
    server = serve()
    sock = authenticated_raw(server.port, source(2))
    sock.sendall(frame(Opcode.TEXT, b"hel", fin=False) + frame(Opcode.CONT, b"lo ", fin=False) + frame(Opcode.CONT, b"world"))
    assert read_frame(sock) == (Opcode.TEXT, b"hello world")


def test_invalid_utf8_after_auth_closes_with_1007(serve):
    server = serve()
    sock = authenticated_raw(server.port, source(2))
    sock.sendall(frame(Opcode.TEXT, b"\xff\xfe"))
    assert read_close(sock) == 1007


def test_the_app_sees_subject_claims_and_source(serve):
    server = serve(server__app="sample_apps:whoami")
    with open_legit(server.port, source(7), sub="grace") as ws:
        assert json.loads(ws.recv(timeout=5)) == {"subject": "grace", "source": "127.0.0.7", "sub_claim": "grace"}
        ws.send("shout")
        assert ws.recv(timeout=5) == "SHOUT"
    wait_for(lambda: server.metric("guarded_ws_authenticated_connections") == 0, what="the session to end")


def test_an_app_that_fails_closes_with_1011_and_the_server_goes_on(serve):
    server = serve(server__app="sample_apps:crash")
    with open_legit(server.port, source(2)) as ws:
        ws.send("boom")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    with open_legit(server.port, source(3)) as ws:
        ws.send("again")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)


def test_the_app_closes_with_its_own_code(serve):
    server = serve(server__app="sample_apps:closer")
    with open_legit(server.port, source(2)) as ws:
        assert ws.recv(timeout=5) == "bye"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "done")
    wait_for(lambda: server.metric("guarded_ws_authenticated_connections") == 0, what="the session to end")
