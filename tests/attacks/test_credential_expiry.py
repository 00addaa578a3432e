"""A connection never outlives its credential: tokens that expire while connected, and renewal."""

from __future__ import annotations

import json
import time

import pytest
from websockets.sync.client import ClientConnection, connect

from support import tcp, token


def opened(port: int, credential: str, sub: str = "alice") -> ClientConnection:
    ws = connect(f"ws://127.0.0.1:{port}/ws", sock=tcp(port), compression=None, open_timeout=10, legacy=True)
    ws.send(credential)
    assert json.loads(ws.recv(timeout=5)) == {"type": "authenticated", "subject": sub}
    return ws


def closed_at(ws: ClientConnection, within: float = 8.0) -> float:
    with pytest.raises(Exception):
        while True:
            ws.recv(timeout=within)
    return time.time()


def test_token_expiry_closes_the_connection_with_4401(serve):
    server = serve()
    now = time.time()
    ws = opened(server.port, token("alice", ttl=2.0, now=now))
    ws.send("hello")
    assert ws.recv(timeout=5) == "hello"
    when = closed_at(ws)
    assert ws.close_code == 4401 and ws.close_reason == "credential expired"
    expires = int(now + 2.0)
    assert expires - 0.2 <= when < expires + 2.0
    assert server.metric("guarded_ws_deadline_expired_total", phase="credential") == 1
    assert server.metric("guarded_ws_authenticated_connections") == 0
    ws.close()


def test_a_fresh_token_for_the_same_subject_keeps_the_connection_open(serve):
    server = serve(server__app="sample_apps:refreshing")
    now = time.time()
    ws = opened(server.port, token("alice", ttl=2.0, now=now))
    fresh = token("alice", ttl=300.0)
    ws.send("token " + fresh)
    assert ws.recv(timeout=5).startswith("renewed until ")
    deadline = int(now + 2.0) + 1.5
    while time.time() < deadline:
        ws.send("ping")
        assert ws.recv(timeout=5) == "ping"
    assert server.metric("guarded_ws_deadline_expired_total", phase="credential") == 0
    ws.close()


def test_renewal_with_another_subject_or_a_bad_token_is_refused_and_the_expiry_stands(serve):
    server = serve(server__app="sample_apps:refreshing")
    now = time.time()
    ws = opened(server.port, token("alice", ttl=2.0, now=now))
    ws.send("token " + token("mallory", ttl=300.0))
    assert ws.recv(timeout=5) == "refused: invalid"
    ws.send("token " + token("alice", ttl=300.0, key="a-different-secret-0123456789-abcdef"))
    assert ws.recv(timeout=5) == "refused: invalid"
    when = closed_at(ws)
    assert ws.close_code == 4401
    assert when < int(now + 2.0) + 2.0
    assert server.metric("guarded_ws_auth_attempts_total", method="token", result="invalid") == 2
    ws.close()
