"""PROXY protocol: spoofed headers, missing ones, stalls inside them, and caps on the clients they name.

The test plays the load balancer itself: a socket from 127.0.0.1 (the trusted proxy)
that writes a PROXY header, then the client's bytes. Attackers connect from other
loopback sources. tests/attacks/test_haproxy.py does the same behind a real HAProxy.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

import pki
from support import (
    closed_by_peer,
    proxy_v1,
    proxy_v2,
    read_response_head,
    source,
    status_of,
    tcp,
    token,
    upgrade_request,
    wait_for,
)

PROXY = "127.0.0.1"
TRUSTED = {"server__trusted_proxies": ["127.0.0.1/32"]}


def proxied(port: int, header: bytes) -> socket.socket:
    """A connection from the trusted proxy that has sent its header."""
    sock = tcp(port, PROXY)
    sock.sendall(header)
    return sock


def legit_through(port: int, header: bytes, sub: str = "alice") -> ClientConnection:
    """A legitimate client behind the proxy: header, upgrade, token, authenticated."""
    ws = connect(f"ws://127.0.0.1:{port}/ws", sock=proxied(port, header), compression=None, open_timeout=5, legacy=True)
    ws.send(token(sub))
    assert json.loads(ws.recv(timeout=5)) == {"type": "authenticated", "subject": sub}
    return ws


def echo(ws: ClientConnection) -> str:
    ws.send("hello")
    reply = str(ws.recv(timeout=5))
    ws.close()
    return reply


def pending_of(server, host: str) -> int:
    core = server.server
    return server.call(lambda: core.admission.pending(core.source_key(host)))


def test_required_refuses_untrusted_peers_at_accept(serve):
    server = serve(server__proxy_protocol="required", **TRUSTED)
    # The attacker connects directly and claims to be someone else.
    spoof = tcp(server.port, source(2))
    try:
        spoof.sendall(proxy_v1(("10.9.9.9", 1000)) + upgrade_request())
    except OSError:
        pass  # refused before the write: that is the point
    assert read_response_head(spoof) == b""  # closed, nothing said
    assert server.metric("guarded_ws_connections_rejected_total", reason="proxy_untrusted") == 1
    # Direct clients cannot use a required listener at all; clients behind the proxy can.
    assert echo(legit_through(server.port, proxy_v2((source(3), 40000)))) == "hello"
    wait_for(server.idle_state, what="pending state released")


def test_required_closes_a_trusted_peer_that_sends_no_header(serve):
    server = serve(server__proxy_protocol="required", **TRUSTED)
    bare = proxied(server.port, upgrade_request())
    assert read_response_head(bare) == b""
    assert server.metric("guarded_ws_connections_rejected_total", reason="proxy_missing") == 1
    garbled = proxied(server.port, b"PROXY TCP4 10.0.0.1 10.0.0.2 99999 1\r\n" + upgrade_request())
    assert read_response_head(garbled) == b""
    assert server.metric("guarded_ws_connections_rejected_total", reason="proxy_malformed") == 1
    assert echo(legit_through(server.port, proxy_v1((source(3), 40000)))) == "hello"


def test_optional_serves_direct_clients_but_refuses_their_spoofed_headers(serve):
    server = serve(server__proxy_protocol="optional", **TRUSTED)
    spoof = tcp(server.port, source(2))
    spoof.sendall(proxy_v2(("10.9.9.9", 1000)) + upgrade_request())
    assert read_response_head(spoof) == b""
    assert server.metric("guarded_ws_connections_rejected_total", reason="proxy_untrusted") == 1
    # A client behind the trusted proxy that sends its own header after the proxy's is refused too.
    nested = proxied(server.port, proxy_v2((source(4), 40000)) + proxy_v1(("10.9.9.9", 1000)) + upgrade_request())
    assert read_response_head(nested) == b""
    assert server.metric("guarded_ws_connections_rejected_total", reason="proxy_untrusted") == 2
    # Direct clients without a header, and the proxy without one, are served as themselves.
    direct = connect(f"ws://127.0.0.1:{server.port}/ws", sock=tcp(server.port, source(3)), compression=None, legacy=True)
    direct.send(token("bob"))
    assert json.loads(direct.recv(timeout=5))["subject"] == "bob"
    direct.close()
    headerless = proxied(server.port, upgrade_request())
    assert status_of(read_response_head(headerless)) == 101
    assert pending_of(server, PROXY) == 1
    headerless.close()
    wait_for(server.idle_state, what="pending state released")


def test_a_stall_inside_the_header_is_closed_at_the_handshake_deadline(serve):
    server = serve(server__proxy_protocol="required", limits__handshake_timeout=1, **TRUSTED)
    header = proxy_v2((source(2), 40000))
    stalled = [proxied(server.port, header[:n]) for n in (1, 12, 17)]
    v1 = proxied(server.port, proxy_v1((source(2), 40000))[:20])
    started = time.monotonic()
    for sock in [*stalled, v1]:
        sock.settimeout(5)
        head = read_response_head(sock)
        assert head == b"" or status_of(head) == 408
    assert time.monotonic() - started < 3
    assert server.metric("guarded_ws_deadline_expired_total", phase="handshake") == 4
    assert echo(legit_through(server.port, header)) == "hello"
    wait_for(server.idle_state, what="pending state released")


def test_per_source_caps_count_the_client_the_header_names_not_the_proxy(serve):
    server = serve(server__proxy_protocol="required", limits__max_pending_per_source=3, **TRUSTED)
    attacker = ("10.66.0.1", 5555)
    held = [proxied(server.port, proxy_v2(attacker) + upgrade_request()) for _ in range(3)]
    for sock in held:
        assert status_of(read_response_head(sock)) == 101
    refused = proxied(server.port, proxy_v1(attacker))
    head = read_response_head(refused)
    assert status_of(head) == 429 and b"Retry-After: 1" in head
    assert server.metric("guarded_ws_connections_rejected_total", reason="per_source_cap") == 1
    assert pending_of(server, attacker[0]) == 3
    assert pending_of(server, PROXY) == 0
    # Another client behind the same proxy is untouched, v1 or v2, IPv4 or IPv6.
    assert echo(legit_through(server.port, proxy_v1(("10.66.0.2", 40000)))) == "hello"
    assert echo(legit_through(server.port, proxy_v2(("2001:db8::5", 40000), ("::1", 8765)))) == "hello"
    for sock in held:
        sock.close()
    wait_for(server.idle_state, what="pending state released")


def test_the_client_address_reaches_the_app_and_the_logs(serve, caplog):
    caplog.set_level(logging.INFO, logger="guarded_ws")
    server = serve(server__proxy_protocol="required", server__app="sample_apps:whoami", **TRUSTED)
    ws = legit_through(server.port, proxy_v2(("10.77.0.9", 40000)))
    ws.send("who")
    assert json.loads(ws.recv(timeout=5))["source"] == "10.77.0.9"
    ws.close()
    bad = proxied(server.port, proxy_v1(("10.77.0.10", 40000)) + upgrade_request())
    assert status_of(read_response_head(bad)) == 101
    bad.sendall(b"\x81\x85\0\0\0\0wrong")
    assert closed_by_peer(bad)
    wait_for(lambda: any("10.77.0.10" in r.getMessage() for r in caplog.records), what="the auth failure logged")


def test_a_local_header_keeps_the_proxy_address(serve):
    """Health checks: a v2 LOCAL header names no client; the connection is the proxy's own."""
    server = serve(server__proxy_protocol="required", **TRUSTED)
    check = proxied(server.port, proxy_v2(None) + upgrade_request())
    assert status_of(read_response_head(check)) == 101
    assert pending_of(server, PROXY) == 1
    check.close()
    wait_for(server.idle_state, what="pending state released")


def test_forwarded_header_names_the_client_only_from_a_trusted_proxy(serve):
    server = serve(server__forwarded_header="x-forwarded-for", limits__max_pending_per_source=2, **TRUSTED)
    attacker = "10.66.0.1"
    # The trusted proxy appends the address it saw; "6.6.6.6" is what the attacker wrote itself.
    spoofing = {"X-Forwarded-For": f"6.6.6.6, {attacker}"}
    held = [proxied(server.port, upgrade_request(headers=spoofing)) for _ in range(2)]
    for sock in held:
        assert status_of(read_response_head(sock)) == 101
    head = read_response_head(proxied(server.port, upgrade_request(headers=spoofing)))
    assert status_of(head) == 429 and b"Retry-After: 1" in head
    assert pending_of(server, attacker) == 2 and pending_of(server, "6.6.6.6") == 0 and pending_of(server, PROXY) == 0
    # A direct peer's header proves nothing: it is counted as itself, not as the address it names.
    direct = tcp(server.port, source(2))
    direct.sendall(upgrade_request(headers={"X-Forwarded-For": attacker}))
    assert status_of(read_response_head(direct)) == 101
    assert pending_of(server, source(2)) == 1 and pending_of(server, attacker) == 2
    # A legitimate client behind the proxy, from another address, is served.
    sock = tcp(server.port, PROXY)
    with connect(f"ws://127.0.0.1:{server.port}/ws", sock=sock, compression=None,
                 additional_headers={"X-Forwarded-For": "10.66.0.2"}) as ws:
        ws.send(token("alice"))
        assert json.loads(ws.recv(timeout=5))["subject"] == "alice"
    for sock in [*held, direct]:
        sock.close()
    wait_for(server.idle_state, what="pending state released")


def test_forwarded_hops_skip_what_the_client_wrote(serve):
    server = serve(server__forwarded_header="forwarded", server__forwarded_hops=2, **TRUSTED)
    chain = {"Forwarded": 'for=6.6.6.6, for="10.70.0.1:4711";proto=https, for=10.0.0.2'}
    sock = proxied(server.port, upgrade_request(headers=chain))
    assert status_of(read_response_head(sock)) == 101
    assert pending_of(server, "10.70.0.1") == 1
    sock.close()
    wait_for(server.idle_state, what="pending state released")


# With TLS, the PROXY header comes first, in clear, then the TLS handshake.


@pytest.fixture
def tls_settings(tmp_path: Path) -> tuple[dict[str, Any], ssl.SSLContext]:
    ca = pki.CA()
    cert_file, key_file = ca.server().write(tmp_path, "server")
    return {"tls__cert_file": cert_file, "tls__key_file": key_file}, pki.client_context(ca, None, tmp_path)


def wss_through(port: int, header: bytes, context: ssl.SSLContext) -> ClientConnection:
    sock = proxied(port, header)
    return connect(f"wss://localhost:{port}/ws", sock=sock, ssl=context, server_hostname="localhost",
                   compression=None, open_timeout=10, legacy=True)  # fmt: skip


def test_with_tls_the_header_comes_first_and_names_the_client(serve, tls_settings):
    settings, context = tls_settings
    server = serve(server__proxy_protocol="required", server__app="sample_apps:whoami", **settings, **TRUSTED)
    for header in (proxy_v2(("10.88.0.1", 40000)), proxy_v1(("10.88.0.2", 40000))):
        ws = wss_through(server.port, header, context)
        ws.send(token("alice"))
        assert json.loads(ws.recv(timeout=5))["type"] == "authenticated"
        assert json.loads(ws.recv(timeout=5))["source"] == ("10.88.0.1" if header[0] != ord("P") else "10.88.0.2")
        ws.close()
    # Without the header the TLS handshake is where a header should be: closed, counted.
    bare = tcp(server.port, PROXY)
    with pytest.raises((OSError, EOFError)):
        context.wrap_socket(bare, server_hostname="localhost")
    assert server.metric("guarded_ws_connections_rejected_total", reason="proxy_missing") == 1
    wait_for(server.idle_state, what="pending state released")


def test_with_tls_a_stall_inside_the_header_is_closed_at_the_deadline(serve, tls_settings):
    settings, context = tls_settings
    server = serve(server__proxy_protocol="required", limits__handshake_timeout=1, **settings, **TRUSTED)
    header = proxy_v2(("10.88.0.3", 40000))
    stalled = proxied(server.port, header[:10])
    stalled.settimeout(5)
    started = time.monotonic()
    assert closed_by_peer(stalled)
    assert time.monotonic() - started < 3
    assert server.metric("guarded_ws_deadline_expired_total", phase="tls") == 1
    # A header in two segments (the proxy's write cut in the middle) is read whole, then TLS.
    sock = proxied(server.port, header[:10])
    sock.sendall(header[10:])
    ws = connect(f"wss://localhost:{server.port}/ws", sock=sock, ssl=context, server_hostname="localhost",
                 compression=None, open_timeout=10, legacy=True)  # fmt: skip
    ws.send(token("alice"))
    assert json.loads(ws.recv(timeout=5))["subject"] == "alice"
    assert pending_of(server, "10.88.0.3") == 0  # authenticated: no longer pending
    ws.close()
    wait_for(server.idle_state, what="pending state released")
