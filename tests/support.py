"""Real clients for tests: raw sockets for attackers, websockets' client for legitimate users.

Every client binds its source address first (127.0.0.N), so one machine can be
many sources. Reads block on the socket with a timeout: tests wait for what the
server does, never for a fixed sleep.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection, connect

from guarded_ws.config import Config, load_config
from guarded_ws.runner import Running, start
from guarded_ws.tokens import issue_token

SECRET = "test-secret-for-guarded-ws-0123456789"
IP_BIND_ADDRESS_NO_PORT = 24  # Linux: defer the port choice to connect(), so sources do not run out early
T = TypeVar("T")


def token(sub: str = "alice", *, ttl: float = 300.0, key: str = SECRET, now: float | None = None, **kw: Any) -> str:
    return issue_token(key, sub, now=time.time() if now is None else now, ttl=ttl, **kw)


def source(n: int) -> str:
    """The n-th loopback source address, n >= 1: 127.0.0.1, 127.0.0.2, ..."""
    return f"127.0.{n // 250}.{n % 250 + 1}" if n >= 250 else f"127.0.0.{n}"


def tcp(port: int, src: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((src, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def proxy_v1(src: tuple[str, int], dst: tuple[str, int] = ("127.0.0.1", 8765)) -> bytes:
    """A PROXY protocol v1 header, as a load balancer sends it in front of the client's bytes."""
    family = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {family} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def proxy_v2(
    src: tuple[str, int] | None,
    dst: tuple[str, int] = ("127.0.0.1", 8765),
    *,
    tlvs: bytes = b"",
) -> bytes:
    """A PROXY protocol v2 header; ``src=None`` makes a LOCAL one (a health check's)."""
    from guarded_ws.proxy_protocol import V2_SIGNATURE

    if src is None:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    family = socket.AF_INET6 if ":" in src[0] else socket.AF_INET
    block = (
        socket.inet_pton(family, src[0]) + socket.inet_pton(family, dst[0]) + struct.pack("!HH", src[1], dst[1])
    )
    fam = 0x21 if family == socket.AF_INET6 else 0x11
    return V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(block) + len(tlvs)) + block + tlvs


def upgrade_request(path: str = "/ws", *, headers: dict[str, str] | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response_head(sock: socket.socket) -> bytes:
    """The HTTP response head, or b'' if the server closed without one.

    Reads a byte at a time so that frames sent right behind the head stay in the socket.
    """
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        try:
            chunk = sock.recv(1)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    return data


def status_of(head: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    return int(match.group(1)) if match else None


def upgraded(port: int, src: str = "127.0.0.1", path: str = "/ws", timeout: float = 5.0) -> socket.socket:
    """A raw socket past the 101, ready to send frames."""
    sock = tcp(port, src, timeout)
    sock.sendall(upgrade_request(path))
    head = read_response_head(sock)
    assert status_of(head) == 101, head
    return sock


def authenticated_raw(port: int, src: str, sub: str = "alice") -> socket.socket:
    """A raw socket past authentication: for clients that misbehave after it (never read, never pong)."""
    sock = tcp(port, src)
    sock.sendall(upgrade_request() + frame(Opcode.TEXT, token(sub).encode()))
    assert status_of(read_response_head(sock)) == 101
    assert read_frame(sock) == (Opcode.TEXT, json.dumps({"type": "authenticated", "subject": sub}).encode())
    return sock


def frame(opcode: Opcode, payload: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin).serialize(mask=True, extensions=[])


def read_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    """(opcode, payload) of the next server frame, or None at EOF."""
    head = _read_exact(sock, 2)
    if head is None:
        return None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", _read_exact(sock, 2) or b"\0\0")[0]
    elif length == 127:
        length = struct.unpack("!Q", _read_exact(sock, 8) or b"\0" * 8)[0]
    payload = _read_exact(sock, length) if length else b""
    return (opcode, payload) if payload is not None else None


def read_close(sock: socket.socket) -> int | None:
    """Skip frames until a close frame; its code, or None if the stream ended without one."""
    while True:
        try:
            got = read_frame(sock)
        except ConnectionResetError:
            return None
        if got is None:
            return None
        opcode, payload = got
        if opcode == Opcode.CLOSE:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN: linger on, timeout zero."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed: EOF or reset, after discarding whatever it sent."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def legit(
    port: int,
    src: str = "127.0.0.1",
    sub: str = "alice",
    message: str = "hello",
    timeout: float = 5.0,
    *,
    credential: str | None = None,
) -> str:
    """A legitimate client's whole session: connect, authenticate, one echo. Returns the echo."""
    with open_legit(port, src, sub, timeout, credential=credential) as ws:
        ws.send(message)
        return str(ws.recv(timeout=timeout))


def open_legit(
    port: int, src: str = "127.0.0.1", sub: str = "alice", timeout: float = 5.0, *, credential: str | None = None
) -> ClientConnection:
    """An authenticated client; ``credential`` replaces a fresh token for ``sub``."""
    ws = connect(
        f"ws://127.0.0.1:{port}/ws",
        sock=tcp(port, src, timeout),
        compression=None,
        open_timeout=timeout,
        close_timeout=timeout,
        legacy=True,  # the caller closes it; not a context manager
    )
    ws.send(credential if credential is not None else token(sub))
    reply = json.loads(ws.recv(timeout=timeout))
    assert reply == {"type": "authenticated", "subject": sub}, reply
    return ws


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll a condition the server exposes no event for (its internal counters), within a bound."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def make_config(**overrides: Any) -> Config:
    values = {"server.port": 0, "metrics.port": 0, "server.loop": "uvloop"}
    values.update({key.replace("__", "."): value for key, value in overrides.items()})
    return load_config(None, environ={"GUARDED_WS_SECRET": SECRET}, overrides=values)


class ServerThread:
    """A real guarded-ws on loopback, running its own event loop in a thread of the test process."""

    def __init__(self, config: Config, nofile: int = 4096) -> None:
        self.config = config
        self.loop: asyncio.AbstractEventLoop
        if config.server.loop == "uvloop":
            import uvloop

            self.loop = uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: Running = self.run(start(config, nofile=nofile))

    @property
    def server(self) -> Any:
        return self.running.server

    @property
    def port(self) -> int:
        return int(self.server.port)

    @property
    def metrics_port(self) -> int:
        assert self.running.admin is not None
        return self.running.admin.port

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        """Run fn on the server's loop: reads its state between two events."""
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def metric(self, name: str, **labels: str) -> float:
        value = self.call(lambda: self.server.metrics.registry.get_sample_value(name, labels))
        return float(value or 0.0)

    def idle_state(self) -> bool:
        """No pending connection anywhere: admission, per-source table and both phase queues are empty."""
        server = self.server
        return self.call(
            lambda: server.admission.total == 0
            and server.admission.sources == 0
            and len(server.handshaking) == 0
            and len(server.authenticating) == 0
        )

    def released(self) -> bool:
        """Nothing held for any connection: admission and its per-source table, every deadline
        queue, credential expiries, authenticated connections and their per-source and
        per-subject counts, app tasks."""
        server = self.server
        queues = (server.handshaking, server.authenticating, server.idle, server.awaiting_pong, server.stalled, server.closing)
        return self.call(
            lambda: server.admission.total == 0
            and server.admission.sources == 0
            and all(queue is None or len(queue) == 0 for queue in queues)
            and len(server.expiring) == 0
            and not server.authenticated
            and not server._per_source
            and not server._per_subject
            and not server._tasks
        )

    def stop(self) -> None:
        try:
            self.run(self.running.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class ServerProcess:
    """guarded-ws as a child process: for what needs a process of its own (signals, fd limits, logs)."""

    def __init__(self, *args: str, secret: str | None = SECRET, preexec: Callable[[], None] | None = None):
        env = {key: value for key, value in os.environ.items() if not key.startswith("GUARDED_WS_")}
        env["PYTHONUNBUFFERED"] = "1"
        if secret is not None:
            env["GUARDED_WS_SECRET"] = secret
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "guarded_ws", "serve", "--port", "0", "--metrics-port", "0", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=preexec,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self.port = 0
        self.metrics_port = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(20):
            self.kill()
            raise AssertionError("server did not start:\n" + self.output)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
            if match := re.search(r"listening on wss?://[^:]+:(\d+)/", line):
                self.port = int(match.group(1))
            if match := re.search(r"metrics on http://[^:]+:(\d+)/", line):
                self.metrics_port = int(match.group(1))
                self._ready.set()

    def wait_line(self, text: str, timeout: float = 10.0) -> str:
        """The first output line containing ``text``, waiting for it if need be."""
        with self._changed:
            found = self._changed.wait_for(lambda: next((l for l in self.lines if text in l), None), timeout)
        if found is None:
            raise AssertionError(f"no line with {text!r} in:\n{self.output}")
        return found

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS)."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def metric(self, name: str, **labels: str) -> float:
        return scraped(self.metrics_port, name, **labels)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)


def scraped(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``, scraped from /metrics."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def sources(count: int, first: int = 2) -> Iterator[str]:
    return (source(n) for n in range(first, first + count))
