"""Attacks on the browser path (cookie + CSRF token + Origin), against a real server on loopback.

Each attack test also runs a legitimate browser-path client beside the attacker: the
defence must refuse the one and keep serving the other.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from websockets.frames import Opcode

from cookie_support import ORIGIN, cookie_server, open_socket, post, preauth
from support import (
    SECRET,
    ServerProcess,
    frame,
    read_close,
    read_frame,
    read_response_head,
    source,
    status_of,
    tcp,
    token,
    wait_for,
)
from guarded_ws.tickets import issue

AUTHENTICATED = b'{"type": "authenticated", "subject": "alice"}'


def _legit_browser_client(port: int, src: str = "127.0.0.1") -> None:
    csrf, cookie = preauth(port, src=src)
    sock, status = open_socket(port, cookie=cookie, csrf=csrf, src=src)
    assert status == 101
    assert read_frame(sock) == (Opcode.TEXT, AUTHENTICATED)  # no first message was sent
    sock.sendall(frame(Opcode.TEXT, b"hello"))
    assert read_frame(sock) == (Opcode.TEXT, b"hello")
    sock.close()


def _rejected(server, reason: str) -> float:
    return server.metric("guarded_ws_connections_rejected_total", reason=reason)


def _cookie_auth(server, result: str) -> float:
    return server.metric("guarded_ws_auth_attempts_total", method="cookie", result=result)


def test_the_browser_path_authenticates_at_the_upgrade(serve):
    server = cookie_server(serve)
    _legit_browser_client(server.port)
    assert _cookie_auth(server, "ok") == 1
    assert server.metric("guarded_ws_auth_attempts_total", method="preauth", result="ok") == 1
    wait_for(server.idle_state, what="nothing pending")


def test_frames_sent_behind_the_upgrade_reach_the_app(serve):
    server = cookie_server(serve)
    csrf, cookie = preauth(server.port)
    sock, status = open_socket(server.port, cookie=cookie, csrf=csrf, extra=frame(Opcode.TEXT, b"eager"))
    assert status == 101
    assert read_frame(sock) == (Opcode.TEXT, AUTHENTICATED)
    assert read_frame(sock) == (Opcode.TEXT, b"eager")


def test_a_hostile_origin_with_the_victims_cookie_and_csrf_token_gets_403(serve):
    """The worst case of Cross-Site WebSocket Hijacking: even with both credentials, a foreign Origin is refused."""
    server = cookie_server(serve)
    csrf, cookie = preauth(server.port)
    for origin in ("http://127.0.0.2:8000", "https://app.example.com.evil.example", "null"):
        sock, status = open_socket(server.port, cookie=cookie, csrf=csrf, origin=origin, src=source(2))
        assert status == 403
    assert _rejected(server, "origin") == 3
    assert _cookie_auth(server, "ok") == 0
    sock, status = open_socket(server.port, cookie=cookie, csrf=csrf)  # the victim's own page still works
    assert status == 101 and read_frame(sock) == (Opcode.TEXT, AUTHENTICATED)


def _expired_cookie(port: int) -> tuple[str, str]:
    csrf, header = issue("alice", secret=SECRET, secure=False, ttl=30, now=time.time() - 120)
    return csrf, header.partition(";")[0].partition("=")[2]


def _tampered_cookie(port: int) -> tuple[str, str]:
    csrf, cookie = preauth(port)
    version, expiry, until, nonce, subject, mac = cookie.split(".")
    return csrf, ".".join([version, expiry, until, nonce, "cm9vdA", mac])  # "root"


def _csrf_of_another_cookie(port: int) -> tuple[str, str]:
    _, cookie = preauth(port)
    other_csrf, _ = preauth(port)
    return other_csrf, cookie


@pytest.mark.parametrize(
    ("attack", "reason", "result"),
    [
        (_expired_cookie, "csrf", "expired"),
        (_tampered_cookie, "csrf", "invalid"),
        (_csrf_of_another_cookie, "csrf", "csrf"),
        (lambda port: (None, preauth(port)[1]), "csrf", "missing"),  # no CSRF token
        (lambda port: (preauth(port)[0], None), "csrf", "missing"),  # no cookie (SameSite kept it home)
        (lambda port: ("forged", "v1.forged"), "csrf", "invalid"),
    ],
    ids=["expired", "tampered", "csrf-of-another-cookie", "missing-csrf", "missing-cookie", "forged"],
)
def test_a_bad_ticket_or_csrf_token_gets_403_counted_by_reason(serve, attack, reason, result):
    server = cookie_server(serve)
    csrf, cookie = attack(server.port)
    sock, status = open_socket(server.port, cookie=cookie, csrf=csrf, src=source(2))
    assert status == 403
    assert _rejected(server, reason) == 1
    assert _cookie_auth(server, result) == 1
    assert _cookie_auth(server, "ok") == 0
    _legit_browser_client(server.port)
    assert _cookie_auth(server, "ok") == 1


def test_a_missing_origin_is_refused_on_the_cookie_path_only(serve):
    server = cookie_server(serve)
    csrf, cookie = preauth(server.port)
    sock, status = open_socket(server.port, cookie=cookie, csrf=csrf, origin=None, src=source(2))
    assert status == 403
    assert _rejected(server, "origin") == 1
    sock, status = open_socket(server.port, origin=None)  # no cookie, no CSRF token: the first-message path
    assert status == 101
    sock.sendall(frame(Opcode.TEXT, token("alice").encode()))
    assert read_frame(sock) == (Opcode.TEXT, AUTHENTICATED)


def test_a_single_use_ticket_is_refused_the_second_time(serve):
    server = cookie_server(serve, cookie__single_use=True)
    csrf, cookie = preauth(server.port)
    sock, status = open_socket(server.port, cookie=cookie, csrf=csrf)
    assert status == 101 and read_frame(sock) == (Opcode.TEXT, AUTHENTICATED)
    _, status = open_socket(server.port, cookie=cookie, csrf=csrf, src=source(2))
    assert status == 403
    assert _rejected(server, "csrf") == 1
    assert _cookie_auth(server, "replayed") == 1
    _legit_browser_client(server.port)  # a fresh preauth, a fresh ticket


def test_preauth_refuses_foreign_origins_preflights_and_bad_credentials(serve):
    server = cookie_server(serve)
    bearer = {"Authorization": f"Bearer {token()}"}
    status, headers, _ = post(server.port, origin="https://evil.example", headers=bearer)
    assert status == 403 and "Set-Cookie" not in headers
    status, headers, _ = post(server.port, origin=None, headers=bearer)
    assert status == 403 and "Set-Cookie" not in headers
    status, headers, _ = post(
        server.port,
        method="OPTIONS",
        origin="https://evil.example",
        headers={"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
    )
    assert status == 405 and not any(name.lower().startswith("access-control") for name in headers)
    assert _rejected(server, "origin") == 2 and _rejected(server, "method") == 1
    wrong_key = token(key="another-secret-0123456789-abcdefgh")
    for credential, result in ((wrong_key, "invalid"), (token(ttl=-60), "expired")):
        status, headers, _ = post(server.port, headers={"Authorization": f"Bearer {credential}"})
        assert status == 401 and "Set-Cookie" not in headers
        assert server.metric("guarded_ws_auth_attempts_total", method="preauth", result=result) == 1
    status, _, _ = post(server.port)
    assert status == 401
    assert server.metric("guarded_ws_auth_attempts_total", method="preauth", result="missing") == 1
    _legit_browser_client(server.port)


def test_preauth_bodies_are_bounded(serve):
    server = cookie_server(serve, cookie__max_body_bytes=64)
    status, _, _ = post(server.port, headers={"Authorization": f"Bearer {token()}"}, body=b"x" * 65)
    assert status == 413
    assert _rejected(server, "body_too_large") == 1
    _legit_browser_client(server.port)


def test_preauth_has_its_own_per_source_rate(serve):
    server = cookie_server(serve, cookie__preauth_rate=0.01, cookie__preauth_burst=2)
    bearer = {"Authorization": f"Bearer {token()}"}
    answers = [post(server.port, headers=bearer, src=source(2)) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 429]
    assert answers[2][1]["Retry-After"] == "1" and "Set-Cookie" not in answers[2][1]
    assert _rejected(server, "preauth_rate") == 1
    _legit_browser_client(server.port, src=source(3))  # another source is not slowed down


def test_a_trickled_preauth_is_closed_at_the_handshake_deadline(serve):
    server = cookie_server(serve, limits__handshake_timeout=1)
    sock = tcp(server.port, source(2))
    sock.sendall(b"POST /ws/preauth HTTP/1.1\r\nHost: x\r\n")
    sock.settimeout(0.1)
    started, answer = time.monotonic(), b""
    try:
        while not answer and time.monotonic() - started < 3:
            sock.sendall(b"X-Slow: 1\r\n")  # a header line every 0.1 s does not extend the deadline
            try:
                answer = sock.recv(4096)
            except TimeoutError:
                continue
    except OSError:  # closed under our feet: the metric tells why
        pass
    assert answer.startswith(b"HTTP/1.1 408") or answer == b""
    assert time.monotonic() - started < 3
    assert server.metric("guarded_ws_deadline_expired_total", phase="handshake") == 1
    _legit_browser_client(server.port)


def test_preauth_connections_are_admitted_like_any_other(serve):
    server = cookie_server(serve, limits__max_pending_per_source=2)
    held = [tcp(server.port, source(2)) for _ in range(2)]
    for sock in held:
        sock.sendall(b"POST /ws/preauth HTTP/1.1\r\n")  # an unfinished preauth holds a pending slot
    wait_for(lambda: server.call(lambda: server.server.admission.total) == 2, what="two pending")
    refused = tcp(server.port, source(2))  # refused on accept, before it could send its request
    assert status_of(read_response_head(refused)) == 429
    assert _rejected(server, "per_source_cap") == 1
    _legit_browser_client(server.port, src=source(3))


def test_an_operator_authenticator_issues_tickets_from_the_sites_own_session(serve):
    hook = "sample_apps:session_authenticator"
    server = cookie_server(serve, cookie__authenticator=hook, server__app="sample_apps:whoami")
    status, _, _ = post(server.port, headers={"Cookie": "session=nobody"})
    assert status == 401
    status, headers, body = post(server.port, headers={"Cookie": "session=s3cret-session-of-bob"})
    assert status == 200
    csrf = json.loads(body)["csrf"]
    cookie = headers["Set-Cookie"].partition(";")[0].partition("=")[2]
    sock, status = open_socket(server.port, cookie=cookie, csrf=csrf)
    assert status == 101
    assert read_frame(sock) == (Opcode.TEXT, b'{"type": "authenticated", "subject": "bob"}')
    assert read_frame(sock) == (Opcode.TEXT, b'{"subject": "bob", "source": "127.0.0.1", "sub_claim": "bob"}')


def test_no_csrf_token_or_cookie_reaches_the_log():
    server = ServerProcess(
        "--log-level", "debug", "--set", "cookie.enabled=true", "--set", f"server.allowed_origins={ORIGIN}"
    )
    try:
        _legit_browser_client(server.port)
        csrf, cookie = preauth(server.port)
        other_csrf, other_cookie = preauth(server.port)
        for attempt in (
            {"cookie": cookie, "csrf": other_csrf},
            {"cookie": cookie[:-1] + ("B" if cookie.endswith("A") else "A"), "csrf": csrf},
            {"cookie": cookie, "csrf": csrf, "origin": "https://evil.example"},
            {"cookie": other_cookie, "csrf": None},
        ):
            _, status = open_socket(server.port, src=source(2), **attempt)
            assert status == 403
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait(10) == 0
    finally:
        server.kill()
    log = server.output
    assert "auth failed" in log  # the failures were logged...
    for secret in (csrf, cookie, other_csrf, other_cookie, SECRET):
        for part in {secret, *secret.split(".")} - {"v1"}:
            assert part not in log  # ...without the credential


def test_a_cookie_connection_ends_with_the_token_preauth_was_given(serve):
    """A ticket lasts until the upgrade; the connection it opens lasts as long as the credential behind it."""
    server = cookie_server(serve)
    status, headers, body = post(server.port, headers={"Authorization": f"Bearer {token(ttl=2)}"})
    assert status == 200 and json.loads(body)["expires_in"] <= 2
    cookie = headers["Set-Cookie"].partition(";")[0].partition("=")[2]
    sock, status = open_socket(server.port, cookie=cookie, csrf=json.loads(body)["csrf"])
    assert status == 101 and read_frame(sock) == (Opcode.TEXT, AUTHENTICATED)
    started = time.monotonic()
    assert read_close(sock) == 4401  # credential expired
    assert time.monotonic() - started < 5
    assert server.metric("guarded_ws_deadline_expired_total", phase="credential") == 1


def test_over_tls_the_cookie_is_host_prefixed_and_secure(serve, tmp_path):
    """With [tls] the browser path needs no cookie.secure: the server knows browsers reach it over TLS."""
    import pki
    from websockets.sync.client import connect

    ca = pki.CA()
    cert_file, key_file = ca.server().write(tmp_path, "server")
    server = cookie_server(serve, tls__cert_file=cert_file, tls__key_file=key_file)
    context = pki.client_context(ca, None, tmp_path)
    sock = context.wrap_socket(tcp(server.port), server_hostname="localhost")
    lines = ["POST /ws/preauth HTTP/1.1", "Host: localhost", f"Origin: {ORIGIN}", f"Authorization: Bearer {token()}"]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    (set_cookie,) = [line for line in head.decode().split("\r\n") if line.startswith("Set-Cookie: ")]
    assert set_cookie.startswith("Set-Cookie: __Host-guarded_ws_ticket=v1.")
    assert set_cookie.endswith("; Path=/; HttpOnly; SameSite=Strict; Secure")
    cookie = set_cookie.removeprefix("Set-Cookie: ").partition(";")[0]
    with connect(
        f"wss://localhost:{server.port}/ws?csrf={json.loads(body)['csrf']}",
        sock=tcp(server.port),
        ssl=context,
        server_hostname="localhost",
        origin=ORIGIN,
        additional_headers={"Cookie": cookie},
        compression=None,
        open_timeout=10,
    ) as ws:
        assert json.loads(ws.recv(timeout=10)) == {"type": "authenticated", "subject": "alice"}


def test_with_a_shared_replay_store_a_single_use_ticket_opens_one_socket_across_instances(serve):
    """Two instances, one Redis: the ticket is consumed there before the 101, and a store that is down fails closed."""
    from test_replay_store import RedisServer

    redis = RedisServer()
    try:
        one, two = (cookie_server(serve, cookie__single_use=True, auth__replay_store=redis.url) for _ in range(2))
        csrf, cookie = preauth(one.port)
        sock, status = open_socket(one.port, cookie=cookie, csrf=csrf, extra=frame(Opcode.TEXT, b"eager"))
        assert status == 101
        assert read_frame(sock) == (Opcode.TEXT, AUTHENTICATED)
        assert read_frame(sock) == (Opcode.TEXT, b"eager")  # frames behind the request wait for the store
        _, status = open_socket(two.port, cookie=cookie, csrf=csrf, src=source(2))
        assert status == 403
        assert _cookie_auth(two, "replayed") == 1 and _rejected(two, "csrf") == 1
        fresh_csrf, fresh_cookie = preauth(two.port)
        redis.stop()
        _, status = open_socket(two.port, cookie=fresh_cookie, csrf=fresh_csrf)
        assert status == 503  # not accepted unchecked
        assert _cookie_auth(two, "unavailable") == 1
        assert _cookie_auth(one, "ok") + _cookie_auth(two, "ok") == 1
    finally:
        if redis.proc.poll() is None:
            redis.stop()


def test_behind_a_trusted_http_proxy_preauth_counts_the_client_its_header_names(serve):
    """The rate and the pending caps apply per client, not to the proxy as one source."""
    server = cookie_server(
        serve,
        server__forwarded_header="x-forwarded-for",
        server__trusted_proxies=["127.0.0.1/32"],
        cookie__preauth_rate=0.01,
        cookie__preauth_burst=1,
        cookie__authenticator="sample_apps:session_authenticator",
        server__app="sample_apps:whoami",
    )
    session = {"Cookie": "session=s3cret-session-of-bob"}
    first = post(server.port, headers={**session, "X-Forwarded-For": "10.66.0.1"})
    again = post(server.port, headers={**session, "X-Forwarded-For": "10.66.0.1"})
    other = post(server.port, headers={**session, "X-Forwarded-For": "10.66.0.2"})
    assert [first[0], again[0], other[0]] == [200, 429, 200]
    assert _rejected(server, "preauth_rate") == 1
    csrf, cookie = json.loads(other[2])["csrf"], other[1]["Set-Cookie"].partition(";")[0].partition("=")[2]
    sock, status = open_socket(server.port, cookie=cookie, csrf=csrf)
    assert status == 101 and read_frame(sock)[1] == b'{"type": "authenticated", "subject": "bob"}'
    wait_for(lambda: server.call(lambda: server.server.admission.total) == 0, what="nothing pending")
