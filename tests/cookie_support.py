"""Clients of the browser path for tests: the preauth POST and the upgrade with cookie and CSRF token."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from support import ServerThread, status_of, read_response_head, tcp, token, upgrade_request

ORIGIN = "https://app.example.com"
NAME = "guarded_ws_ticket"


def cookie_server(serve: Callable[..., ServerThread], **overrides: Any) -> ServerThread:
    return serve(cookie__enabled=True, server__allowed_origins=[ORIGIN], **overrides)


def post(
    port: int,
    path: str = "/ws/preauth",
    *,
    origin: str | None = ORIGIN,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    method: str = "POST",
    src: str = "127.0.0.1",
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request on its own connection; (status, headers, body) of the answer."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"Origin: {origin}"] if origin is not None else []
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock = tcp(port, src)
    if context is not None:  # wss://: the same request inside TLS
        sock = context.wrap_socket(sock, server_hostname="localhost")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    head, _, content = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split(" ")[1]), fields, content


def preauth(
    port: int, sub: str = "alice", src: str = "127.0.0.1", context: ssl.SSLContext | None = None
) -> tuple[str, str]:
    """A legitimate preauth: (csrf, the ticket cookie's value)."""
    status, headers, body = post(port, headers={"Authorization": f"Bearer {token(sub)}"}, src=src, context=context)
    assert status == 200, body
    csrf = json.loads(body)["csrf"]
    cookie = headers["Set-Cookie"].partition(";")[0]
    name, _, value = cookie.partition("=")
    assert name == (NAME if context is None else "__Host-" + NAME)  # over TLS the cookie is host-bound
    return csrf, value


def open_socket(
    port: int,
    *,
    cookie: str | None = None,
    csrf: str | None = None,
    origin: str | None = ORIGIN,
    src: str = "127.0.0.1",
    extra: bytes = b"",
    name: str = NAME,
) -> tuple[socket.socket, int | None]:
    """An upgrade on the browser path; the socket and the status it got."""
    headers = {}
    if origin is not None:
        headers["Origin"] = origin
    if cookie is not None:
        headers["Cookie"] = f"theme=dark; {name}={cookie}"
    path = "/ws" if csrf is None else f"/ws?csrf={quote(csrf)}"
    sock = tcp(port, src)
    sock.sendall(upgrade_request(path, headers=headers) + extra)
    return sock, status_of(read_response_head(sock))
