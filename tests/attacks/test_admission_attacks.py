"""Floods of pending connections against the per-source and global caps."""

from __future__ import annotations

from websockets.frames import Opcode

from support import (
    closed_by_peer,
    frame,
    legit,
    open_legit,
    read_close,
    read_response_head,
    source,
    status_of,
    tcp,
    token,
    upgrade_request,
    upgraded,
    wait_for,
)


def test_per_source_cap_refuses_the_attacker_not_its_neighbours(serve):
    server = serve(limits__max_pending_per_source=4)
    held = [upgraded(server.port, source(2)) for _ in range(4)]
    refused = tcp(server.port, source(2))
    head = read_response_head(refused)
    assert status_of(head) == 429
    assert b"Retry-After: 1" in head
    assert legit(server.port, source(3)) == "hello"
    assert server.metric("guarded_ws_connections_rejected_total", reason="per_source_cap") == 1
    assert server.metric("guarded_ws_tracked_sources") == 1
    for sock in held:
        sock.close()
    wait_for(server.idle_state, what="the per-source table to empty")


def test_ipv4_prefix_groups_a_subnet_into_one_source(serve):
    server = serve(limits__max_pending_per_source=2, limits__ipv4_prefix=24)
    held = [upgraded(server.port, source(n)) for n in (2, 3)]
    assert status_of(read_response_head(tcp(server.port, source(4)))) == 429
    assert legit(server.port, "127.0.9.1") == "hello"
    for sock in held:
        sock.close()


def test_global_cap_evicts_the_oldest_pending(serve):
    server = serve(limits__max_pending_total=8, limits__max_pending_per_source=2)
    attackers = [upgraded(server.port, source(2 + i // 2)) for i in range(8)]
    assert server.call(lambda: server.server.admission.total) == 8
    # A legitimate client arrives at a full server: the oldest attacker makes room.
    assert legit(server.port, source(100)) == "hello"
    assert read_close(attackers[0]) == 1013
    assert server.metric("guarded_ws_connections_evicted_total", phase="auth") >= 1
    assert server.call(lambda: server.server.admission.total) <= 8
    for sock in attackers:
        sock.close()
    wait_for(server.idle_state, what="pending state released")


def test_global_cap_evicts_in_age_order(serve):
    server = serve(limits__max_pending_total=4, limits__max_pending_per_source=4)
    first = [tcp(server.port, source(2)) for _ in range(4)]  # still in the handshake phase
    wait_for(lambda: server.call(lambda: server.server.admission.total) == 4, what="four pending")
    newer = [tcp(server.port, source(3)) for _ in range(2)]
    for sock in first[:2]:
        assert status_of(read_response_head(sock)) == 503
    assert server.metric("guarded_ws_connections_evicted_total", phase="handshake") == 2
    for sock in first[2:] + newer:
        sock.settimeout(0.3)
        try:
            assert sock.recv(1) != b"", "a younger connection was evicted"
        except TimeoutError:
            pass
        sock.close()


def test_reject_policy_refuses_the_newcomer_with_503(serve):
    server = serve(limits__max_pending_total=4, limits__max_pending_per_source=4, limits__overload_policy="reject")
    held = [upgraded(server.port, source(2)) for _ in range(4)]
    refused = tcp(server.port, source(3))
    head = read_response_head(refused)
    assert status_of(head) == 503
    assert b"Retry-After" in head
    assert closed_by_peer(refused)
    assert server.metric("guarded_ws_connections_rejected_total", reason="global_cap") == 1
    for sock in held:
        sock.close()
    wait_for(server.idle_state, what="pending state released")
    assert legit(server.port, source(3)) == "hello"


def test_subject_cap_after_auth_closes_with_1013(serve):
    server = serve(limits__max_connections_per_subject=2)
    kept = [open_legit(server.port, source(2), sub="carol") for _ in range(2)]
    third = tcp(server.port, source(3))
    third.sendall(upgrade_request() + frame(Opcode.TEXT, token("carol").encode()))
    assert status_of(read_response_head(third)) == 101
    assert read_close(third) == 1013
    assert legit(server.port, source(4), sub="dave") == "hello"
    assert server.metric("guarded_ws_connections_rejected_total", reason="subject_connections_cap") == 1
    for ws in kept:
        ws.close()


def test_per_source_accept_rate_refuses_a_connect_storm(serve):
    server = serve(limits__accept_rate_per_source=1.0, limits__accept_burst_per_source=3)
    statuses = []
    for _ in range(6):  # closed at once: only the rate can refuse them
        sock = tcp(server.port, source(2))
        sock.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        statuses.append(status_of(read_response_head(sock)))
        sock.close()
    assert statuses[:3] == [404] * 3
    assert 429 in statuses[3:]
    assert server.metric("guarded_ws_connections_rejected_total", reason="per_source_rate") >= 1
    assert legit(server.port, source(3)) == "hello"
