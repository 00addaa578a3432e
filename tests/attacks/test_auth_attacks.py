"""Attacks after the upgrade, before authentication."""

from __future__ import annotations

import base64
import json
import socket
import time

import pytest
from websockets.frames import Opcode

from support import (
    frame,
    legit,
    read_close,
    read_frame,
    read_response_head,
    source,
    status_of,
    tcp,
    token,
    upgrade_request,
    upgraded,
    wait_for,
)


def test_idle_after_upgrade_is_closed_with_4408(serve):
    server = serve(limits__auth_timeout=1.0)
    attacker = upgraded(server.port, source(2))
    started = time.monotonic()
    assert legit(server.port, source(3)) == "hello"
    assert read_close(attacker) == 4408
    assert time.monotonic() - started < 3.0
    assert server.metric("guarded_ws_deadline_expired_total", phase="auth") == 1
    assert server.metric("guarded_ws_auth_attempts_total", method="token", result="timeout") == 1
    wait_for(server.idle_state, what="pending state released")


def test_trickled_credential_does_not_extend_the_deadline(serve):
    server = serve(limits__auth_timeout=1.0)
    attacker = upgraded(server.port, source(2))
    credential = frame(Opcode.TEXT, token().encode())
    started = time.monotonic()
    try:
        for i in range(len(credential) - 1):
            attacker.send(credential[i : i + 1])
            if time.monotonic() - started > 4:
                break
            time.sleep(0.05)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert read_close(attacker) == 4408
    assert time.monotonic() - started < 3.0


def test_oversize_first_message_is_closed_with_1009(serve):
    server = serve(limits__max_preauth_bytes=1024)
    attacker = upgraded(server.port, source(2))
    attacker.sendall(frame(Opcode.TEXT, b"x" * 5000))
    assert read_close(attacker) == 1009
    assert legit(server.port, source(3)) == "hello"
    assert server.metric("guarded_ws_auth_attempts_total", method="token", result="too_large") == 1
    wait_for(server.idle_state, what="pending state released")


def test_ping_flood_before_auth_spends_the_budget(serve):
    server = serve(limits__max_preauth_bytes=1024)
    attacker = upgraded(server.port, source(2))
    pings = frame(Opcode.PING, b"p" * 64) * 100  # 7 KiB of pings, never reading the pongs
    try:
        attacker.sendall(pings)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert read_close(attacker) == 1009
    assert legit(server.port, source(3)) == "hello"
    wait_for(server.idle_state, what="pending state released")


def test_binary_credential_is_closed_with_1008(serve):
    server = serve()
    attacker = upgraded(server.port, source(2))
    attacker.sendall(frame(Opcode.BINARY, token().encode()))
    assert read_close(attacker) == 1008
    assert legit(server.port, source(3)) == "hello"


def test_fragmented_credential_is_closed_with_1008(serve):
    server = serve()
    attacker = upgraded(server.port, source(2))
    credential = token().encode()
    attacker.sendall(frame(Opcode.TEXT, credential[:10], fin=False) + frame(Opcode.CONT, credential[10:]))
    assert read_close(attacker) == 1008
    assert server.metric("guarded_ws_auth_attempts_total", method="token", result="protocol") == 1


def _alg_none() -> str:
    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': 'mallory', 'exp': int(time.time()) + 300})}."


BAD_TOKENS = {
    "wrong_key": lambda: token(key="not-the-secret-but-long-enough-0123456789"),
    "expired": lambda: token(now=time.time() - 7200, ttl=60),
    "alg_none": _alg_none,
    "missing_sub": lambda: token(sub=""),
    "garbage": lambda: "this is not a token",
    "not_utf8": lambda: b"\xff\xfe\xfd",
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_credential_is_closed_with_4401(serve, kind):
    server = serve()
    attacker = upgraded(server.port, source(2))
    credential = BAD_TOKENS[kind]()
    payload = credential if isinstance(credential, bytes) else credential.encode()
    attacker.sendall(frame(Opcode.TEXT, payload))
    assert read_close(attacker) == 4401
    assert legit(server.port, source(3)) == "hello"
    failed = sum(
        server.metric("guarded_ws_auth_attempts_total", method="token", result=result)
        for result in ("invalid", "expired")
    )
    assert failed == 1
    wait_for(server.idle_state, what="pending state released")


@pytest.mark.parametrize("split", [None, 1, 2, 3, 4, 30])
def test_upgrade_token_and_messages_together_lose_nothing(serve, split):
    """However the request's end and the frames behind it fall into TCP segments."""
    server = serve()
    client = tcp(server.port)
    request = upgrade_request()
    stream = request + frame(Opcode.TEXT, token("bob").encode()) + frame(Opcode.TEXT, b"first")
    stream += frame(Opcode.TEXT, b"second")
    if split is None:
        client.sendall(stream)
    else:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cut = len(request) - split if split < 30 else len(request) + split
        client.sendall(stream[:cut])
        time.sleep(0.05)  # two segments, so the server reads the stream in two pieces
        client.sendall(stream[cut:])
    assert status_of(read_response_head(client)) == 101
    assert read_frame(client) == (Opcode.TEXT, b'{"type": "authenticated", "subject": "bob"}')
    assert read_frame(client) == (Opcode.TEXT, b"first")
    assert read_frame(client) == (Opcode.TEXT, b"second")



def test_token_and_close_in_one_read_ends_quietly(serve):
    server = serve()
    attacker = upgraded(server.port, source(2))
    attacker.sendall(frame(Opcode.TEXT, token().encode()) + frame(Opcode.CLOSE, (1000).to_bytes(2, "big")))
    assert read_close(attacker) == 1000  # the server completes the closing handshake
    assert server.metric("guarded_ws_authenticated_connections") == 0
    wait_for(server.idle_state, what="pending state released")


def test_a_large_message_right_behind_the_token_is_the_apps(serve):
    server = serve(limits__max_preauth_bytes=1024)
    client = upgraded(server.port, source(2))
    client.sendall(frame(Opcode.TEXT, token("kim").encode()) + frame(Opcode.TEXT, b"m" * 5000))
    assert read_frame(client) == (Opcode.TEXT, b'{"type": "authenticated", "subject": "kim"}')
    assert read_frame(client) == (Opcode.TEXT, b"m" * 5000)
