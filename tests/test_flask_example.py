"""examples/flask_app.py: a Flask app issues the ticket, a real guarded-ws accepts it."""

from __future__ import annotations

import sys
from pathlib import Path

from websockets.frames import Opcode

from support import SECRET, read_frame, source
from cookie_support import cookie_server, open_socket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from flask_app import create_app  # noqa: E402


def _ticket(client) -> tuple[str, str]:
    reply = client.post("/ws-ticket")
    assert reply.status_code == 200
    cookie = reply.headers["Set-Cookie"]
    assert cookie.endswith("; Path=/; HttpOnly; SameSite=Strict")
    return reply.get_json()["csrf"], cookie.partition(";")[0].partition("=")[2]


def test_a_flask_session_becomes_a_guarded_ws_connection(serve):
    server = cookie_server(serve)
    client = create_app(SECRET, secure=False).test_client()
    assert client.post("/ws-ticket").status_code == 401  # no session: no ticket
    client.post("/login", data={"user": "dora"})
    csrf, cookie = _ticket(client)
    sock, status = open_socket(server.port, cookie=cookie, csrf=csrf)
    assert status == 101
    assert read_frame(sock) == (Opcode.TEXT, b'{"type": "authenticated", "subject": "dora"}')
    other_csrf, _ = _ticket(client)
    _, status = open_socket(server.port, cookie=cookie, csrf=other_csrf, src=source(2))
    assert status == 403


def test_with_tls_the_cookie_is_host_prefixed_and_secure(serve):
    server = cookie_server(serve, cookie__secure=True)
    client = create_app(SECRET, secure=True).test_client()
    client.post("/login", data={"user": "dora"})
    reply = client.post("/ws-ticket")
    header = reply.headers["Set-Cookie"]
    assert header.startswith("__Host-guarded_ws_ticket=") and header.endswith("; Secure")
    value = header.partition(";")[0].partition("=")[2]
    csrf = reply.get_json()["csrf"]
    sock, status = open_socket(server.port, cookie=value, csrf=csrf, name="__Host-guarded_ws_ticket")
    assert status == 101
    assert read_frame(sock) == (Opcode.TEXT, b'{"type": "authenticated", "subject": "dora"}')
