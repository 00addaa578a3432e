"""Attacks on the upgrade request: each against a real server, each with a legitimate client beside it."""

from __future__ import annotations

import time

import pytest

from support import (
    closed_by_peer,
    legit,
    read_response_head,
    source,
    status_of,
    tcp,
    upgrade_request,
    wait_for,
)


def test_slowloris_upgrade_is_closed_at_the_total_deadline(serve):
    server = serve(limits__handshake_timeout=1.0)
    attacker = tcp(server.port, source(2), timeout=5)
    request = upgrade_request()
    started = time.monotonic()
    sent = 0
    # Trickle a byte every 50 ms: traffic must not extend a total deadline.
    try:
        while sent < len(request) - 1 and time.monotonic() - started < 4:
            attacker.send(request[sent : sent + 1])
            sent += 1
            if sent == 5:
                assert legit(server.port, source(3)) == "hello"
            time.sleep(0.05)
    except (BrokenPipeError, ConnectionResetError):
        pass
    head = read_response_head(attacker)
    elapsed = time.monotonic() - started
    assert status_of(head) in (408, None)
    assert elapsed < 3.0
    assert sent < len(request) - 1, "the server waited for the whole trickled request"
    assert server.metric("guarded_ws_deadline_expired_total", phase="handshake") == 1
    wait_for(server.idle_state, what="pending state released")


def test_request_over_the_byte_budget_gets_431(serve):
    server = serve(limits__max_request_bytes=1024)
    attacker = tcp(server.port, source(2))
    attacker.sendall(upgrade_request(headers={"X-Padding": "a" * 2000}))
    assert status_of(read_response_head(attacker)) == 431
    assert closed_by_peer(attacker)
    assert legit(server.port, source(3)) == "hello"
    assert server.metric("guarded_ws_connections_rejected_total", reason="headers_too_large") == 1
    wait_for(server.idle_state, what="pending state released")


def test_endless_headers_never_complete_the_request(serve):
    server = serve(limits__max_request_bytes=2048)
    attacker = tcp(server.port, source(2))
    attacker.sendall(upgrade_request()[:-2])  # the head never ends
    try:
        for _ in range(100):
            attacker.sendall(b"X-More: " + b"b" * 100 + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert status_of(read_response_head(attacker)) in (431, None)
    assert legit(server.port, source(3)) == "hello"
    wait_for(server.idle_state, what="pending state released")


def test_too_many_headers_gets_431(serve):
    server = serve()
    attacker = tcp(server.port, source(2))
    attacker.sendall(upgrade_request(headers={f"X-H{i}": "v" for i in range(200)}))
    assert status_of(read_response_head(attacker)) == 431
    assert legit(server.port, source(3)) == "hello"


@pytest.mark.parametrize(
    ("attack", "status", "reason"),
    [
        (upgrade_request("/admin"), 404, "path"),
        (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 426, "not_websocket"),  # websockets' answer
        (b"\x16\x03\x01\x02\x00garbage that is not HTTP\r\n\r\n", 400, "malformed"),
        # A raw LF smuggled into the target must reach neither the app nor a log line as a path.
        (upgrade_request("/ws?a\nInjected: header"), 400, "malformed"),
    ],
    ids=["wrong_path", "plain_get", "garbage", "bare_newline_in_target"],
)
def test_a_refused_request_gets_its_status_and_is_counted(serve, attack: bytes, status: int, reason: str):
    server = serve()
    attacker = tcp(server.port, source(2))
    attacker.sendall(attack)
    assert status_of(read_response_head(attacker)) == status
    assert server.metric("guarded_ws_connections_rejected_total", reason=reason) == 1
    wait_for(server.idle_state, what="pending state released")
    assert legit(server.port, source(3)) == "hello"


def test_forged_origin_gets_403_when_origins_are_configured(serve):
    server = serve(server__allowed_origins=["https://app.example"])
    attacker = tcp(server.port)
    attacker.sendall(upgrade_request(headers={"Origin": "https://app.example.evil.test"}))
    assert status_of(read_response_head(attacker)) == 403
    good = tcp(server.port)
    good.sendall(upgrade_request(headers={"Origin": "https://app.example"}))
    assert status_of(read_response_head(good)) == 101
    assert server.metric("guarded_ws_connections_rejected_total", reason="origin") == 1


def test_a_second_origin_header_cannot_sneak_past_the_check(serve):
    server = serve(server__allowed_origins=["https://app.example"])
    attacker = tcp(server.port)
    request = upgrade_request(headers={"Origin": "https://app.example"})
    attacker.sendall(request[:-2] + b"Origin: https://evil.test\r\n\r\n")
    assert status_of(read_response_head(attacker)) == 403
    assert legit(server.port, "127.0.0.3") == "hello"
