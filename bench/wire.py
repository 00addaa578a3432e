"""What the bench tools share: many loopback sources, raw WebSocket bytes, tokens, numbers.

The clients here speak WebSocket with plain sockets instead of a library, so that a
client costs as little CPU as possible (the machine is shared with the server under
test) and both servers are measured with exactly the same bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import socket
import struct
import time
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from guarded_ws.config import raise_nofile_limit as raise_nofile  # noqa: F401  (used by the tools)

T = TypeVar("T")

IP_BIND_ADDRESS_NO_PORT = 24  # Linux: the port is picked at connect(), per 4-tuple
SECRET_ENV = "GUARDED_WS_SECRET"
DEFAULT_SECRET = "bench-secret-for-guarded-ws-0123456789abcdef"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def source(n: int, base: int = 0) -> str:
    """The n-th source address (n >= 0) of a /16 block of 127/8: 127.<base>.<n // 250>.<n % 250 + 2>.

    Host parts run 2..251, so 127.0.0.1 (the usual listen address) is never a source.
    """
    if not 0 <= n < 250 * 256:
        raise ValueError(f"source index out of range: {n}")
    return f"127.{base}.{n // 250}.{n % 250 + 2}"


def sources(count: int, base: int = 0) -> list[str]:
    return [source(n, base) for n in range(count)]


# Attackers use 127.0.x.y, legitimate clients 127.1.x.y: per-source caps never mix them up.
ATTACK_BASE, LEGIT_BASE, PROBE_BASE = 0, 1, 2


def bound_socket(src: str) -> socket.socket:
    """A non-blocking TCP socket bound to ``src``, the port left to connect()."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((src, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def upgrade_request(host: str, port: int, path: str = "/ws", extra: Sequence[str] = ()) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(head: bytes) -> int | None:
    """The status code of an HTTP/1.1 response head, None if it is not one."""
    if head.startswith(b"HTTP/1.") and len(head) >= 12 and head[9:12].isdigit():
        return int(head[9:12])
    return None


_MASK = b"\x00\x00\x00\x00"  # a zero mask: valid (RFC 6455 only asks for a mask), and no XOR to compute


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A masked, final client frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _MASK + payload


def close_frame(code: int = 1000) -> bytes:
    return client_frame(OP_CLOSE, struct.pack("!H", code))


def pop_frame(buf: bytearray) -> tuple[int, bytes] | None:
    """Pop the first complete server (unmasked) frame from ``buf``: (opcode, payload), or None."""
    if len(buf) < 2:
        return None
    b1 = buf[1]
    n = b1 & 0x7F
    offset = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack_from("!H", buf, 2)[0]
        offset = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack_from("!Q", buf, 2)[0]
        offset = 10
    if b1 & 0x80:  # masked (not from a server, but be lenient)
        offset += 4
    if len(buf) < offset + n:
        return None
    frame = (buf[0] & 0x0F, bytes(buf[offset : offset + n]))
    del buf[: offset + n]
    return frame


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Pop every complete server frame from ``buf``."""
    frames = []
    while (frame := pop_frame(buf)) is not None:
        frames.append(frame)
    return frames


async def recv_into(loop: asyncio.AbstractEventLoop, sock: socket.socket, buf: bytearray) -> None:
    data = await loop.sock_recv(sock, 65536)
    if not data:
        raise ConnectionResetError(0, "eof")
    buf += data


async def read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket, buf: bytearray) -> int | None:
    """Read the server's HTTP response head into ``buf``, take it out, and return its status."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        await recv_into(loop, sock, buf)
    status = status_of(bytes(buf[:16]))
    del buf[: end + 4]
    return status


async def next_frame(loop: asyncio.AbstractEventLoop, sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """The next frame that is not a ping; pings are answered on the way, as a client must."""
    while True:
        while (frame := pop_frame(buf)) is not None:
            opcode, payload = frame
            if opcode != OP_PING:
                return frame
            await loop.sock_sendall(sock, client_frame(OP_PONG, payload))
        await recv_into(loop, sock, buf)


def close_code(payload: bytes) -> int:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def secret() -> str:
    return os.environ.get(SECRET_ENV) or DEFAULT_SECRET


class Tokens:
    """HS256 tokens by subject, signed once each (signing is not what is being measured)."""

    def __init__(self, key: str, ttl: float = 3600.0) -> None:
        from guarded_ws.tokens import issue_token

        self._issue = issue_token
        self.key = key
        self.ttl = ttl
        self._cache: dict[str, bytes] = {}

    def frame(self, subject: str) -> bytes:
        """The credential as a ready client text frame."""
        frame = self._cache.get(subject)
        if frame is None:
            token = self._issue(self.key, subject, now=time.time(), ttl=self.ttl)
            frame = self._cache[subject] = client_frame(OP_TEXT, token.encode())
        return frame


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Iterable[float]) -> float:
    finite = sorted(v for v in values if v is not None and not math.isnan(v))
    if not finite:
        return math.nan
    mid = len(finite) // 2
    return finite[mid] if len(finite) % 2 else (finite[mid - 1] + finite[mid]) / 2


def errname(exc: BaseException) -> str:
    import errno

    code = getattr(exc, "errno", None)
    if code is not None and code in errno.errorcode:
        return errno.errorcode[code]
    return type(exc).__name__


def emit(report: dict[str, Any], out: str | None) -> None:
    """A tool's JSON report, to ``out`` or else stdout: where the runner reads it."""
    text = json.dumps(report)
    if out:
        with open(out, "w") as f:
            f.write(text)
    else:
        print(text)


def run(coro: Coroutine[Any, Any, T], loop: str = "uvloop") -> T:
    """Run a coroutine on uvloop (when asked and installed) or asyncio's own loop."""
    import asyncio

    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            return asyncio.run(coro)
        return uvloop.run(coro)
    return asyncio.run(coro)
