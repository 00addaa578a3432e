"""guarded-ws attack lab: legitimate WebSocket users and attackers for Locust.

    GUARDED_WS_SECRET=... locust -f bench/locustfile.py --host ws://127.0.0.1:8765/ws \\
        --headless -u 20 -r 20 -t 30s --csv out/run --html out/run.html [UserClass ...]

Every user speaks plain WebSocket through websocket-client (gevent-friendly) on a TCP
socket it binds itself, to a source address taken round-robin from a loopback range, so
one machine is many sources and per-source caps are exercised as in the wild.

Two kinds of rows:

- ``WS`` rows (``connect``, ``upgrade``, ``auth``, ``echo``) measure a legitimate user.
- ``ATTACK`` rows: one per attack attempt. **Success means the server defended
  itself**: it closed with the expected code or HTTP status within the expected time
  (the configured timeout plus ``--gws-margin``). A failure names what the server did
  instead. A server that does not defend fails the run.

``CHURN`` rows count the connect-and-close connections of ConnectCloseChurn (their
rate is the churn rate). The flood shape (phases baseline, flood ramp, steady flood,
recovery) is on only with ``GWS_SHAPE=flood`` in the environment. See bench/locust.md.
"""

from __future__ import annotations

import base64
import ipaddress
import itertools
import json
import math
import os
import random
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import gevent
import jwt  # PyJWT: a guarded-ws dependency
import websocket  # websocket-client
from gevent import select as gselect
from locust import LoadTestShape, User, between, events, task

from guarded_ws.config import raise_nofile_limit
from guarded_ws.tokens import issue_token

IP_BIND_ADDRESS_NO_PORT = 24  # Linux: the port is chosen at connect(), so sources do not run out early
SECRET_ENV = "GUARDED_WS_SECRET"
WS, ATTACK, CHURN = "WS", "ATTACK", "CHURN"
BAD_TOKEN_KINDS = ("wrong_key", "expired", "alg_none", "garbage", "missing_sub", "not_utf8")
SHAPE_ON = os.environ.get("GWS_SHAPE", "").strip().lower() in ("flood", "on", "1", "true", "yes")
MAX_FRAMES = 10_000  # bound on frames read while waiting for a close
MAX_HEAD = 65_536  # bound on an HTTP response head
REFUSALS = (429, 503)  # an upgrade refused by a per-source or global cap: a defence too


raise_nofile_limit()  # every attacker holds a socket


# Settings: custom Locust arguments, each with an environment variable (and locust.conf key).

_OPTIONS: list[tuple[str, str, type, Any, str]] = [
    ("--gws-auth-timeout", "GWS_AUTH_TIMEOUT", float, 5.0, "the server's limits.auth_timeout (s)"),
    ("--gws-handshake-timeout", "GWS_HANDSHAKE_TIMEOUT", float, 5.0, "the server's limits.handshake_timeout (s)"),
    ("--gws-write-stall-timeout", "GWS_WRITE_STALL_TIMEOUT", float, 10.0, "the server's write_stall_timeout (s)"),
    ("--gws-max-preauth-bytes", "GWS_MAX_PREAUTH_BYTES", int, 4096, "the server's limits.max_preauth_bytes"),
    ("--gws-margin", "GWS_MARGIN", float, 1.0, "slack on every expected deadline; bound for prompt answers (s)"),
    ("--gws-io-timeout", "GWS_IO_TIMEOUT", float, 10.0, "socket timeout of legitimate steps (s)"),
    ("--gws-attack-sources", "GWS_ATTACK_SOURCES", str, "127.20.0.0/24", "attackers' source CIDRs, comma-separated"),
    ("--gws-legit-sources", "GWS_LEGIT_SOURCES", str, "127.21.0.0/24", "legitimate users' source CIDRs ('' = no bind)"),
    ("--gws-origin", "GWS_ORIGIN", str, "", "Origin legitimate users send ('' = none, like a non-browser client)"),
    ("--gws-forged-origin", "GWS_FORGED_ORIGIN", str, "https://evil.example", "Origin that ForgedOrigin sends"),
    ("--gws-echo-count", "GWS_ECHO_COUNT", int, 3, "echoes per legitimate session"),
    ("--gws-message-bytes", "GWS_MESSAGE_BYTES", int, 32, "size of a legitimate echo message"),
    ("--gws-token-ttl", "GWS_TOKEN_TTL", float, 300.0, "lifetime of the tokens legitimate users mint (s)"),
    ("--gws-churn-burst", "GWS_CHURN_BURST", int, 20, "connect+close connections per ConnectCloseChurn burst"),
    ("--gws-probe-timeout", "GWS_PROBE_TIMEOUT", float, 2.0, "bound on a legitimate session after a churn burst (s)"),
    ("--gws-shape-legit", "GWS_SHAPE_LEGIT", int, 10, "shape: legitimate users in every phase"),
    ("--gws-shape-attackers", "GWS_SHAPE_ATTACKERS", int, 100, "shape: attackers at the flood's peak"),
    ("--gws-shape-phases", "GWS_SHAPE_PHASES", str, "30,30,60,30", "shape: seconds of baseline, ramp, flood, recovery"),
    (
        "--gws-shape-attack-classes",
        "GWS_SHAPE_ATTACK_CLASSES",
        str,
        "IdleFlood,AuthStaller,Slowloris,BadTokenSpam,PingFlood,ConnectCloseChurn",
        "shape: attacker classes of the flood (mixed by their weights)",
    ),
]


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    for flag, env, kind, default, help_text in _OPTIONS:
        parser.add_argument(flag, type=kind, default=default, env_var=env, help=f"{help_text} [env {env}]")


@dataclass(frozen=True)
class Settings:
    auth_timeout: float
    handshake_timeout: float
    write_stall_timeout: float
    max_preauth_bytes: int
    margin: float
    io_timeout: float
    attack_sources: str
    legit_sources: str
    origin: str
    forged_origin: str
    echo_count: int
    message_bytes: int
    token_ttl: float
    churn_burst: int
    probe_timeout: float
    shape_legit: int
    shape_attackers: int
    shape_phases: str
    shape_attack_classes: str


def settings(environment: Any) -> Settings:
    """From the parsed options (sent by the master to workers), else from the environment."""
    parsed = environment.parsed_options
    values = {}
    for flag, env, kind, default, _ in _OPTIONS:
        attr = flag[2:].replace("-", "_")
        value = getattr(parsed, attr, None) if parsed is not None else None
        if value is None:
            value = os.environ.get(env, default)
        values[attr.removeprefix("gws_")] = kind(value)
    return Settings(**values)


def secret() -> str:
    value = os.environ.get(SECRET_ENV, "")
    if not value:
        raise RuntimeError(f"{SECRET_ENV} is not set: legitimate users need the server's secret to mint tokens")
    return value


# Targets and sources.


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    hostname: str
    port: int
    path: str
    family: int
    address: tuple[Any, ...]


_targets: dict[str, Target] = {}


def target(url: str | None) -> Target:
    if not url:
        raise RuntimeError("no target: pass --host ws://HOST:PORT/ws")
    if url not in _targets:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise RuntimeError(f"--host must be a ws:// or wss:// URL, got {url!r}")
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        family, _, _, _, address = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)[0]
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        _targets[url] = Target(url, parts.scheme, parts.hostname, port, path, family, address)
    return _targets[url]


class SourcePool:
    """Source addresses from CIDR ranges, handed out round-robin (no list is built: a /8 is fine)."""

    def __init__(self, spec: str) -> None:
        self.networks = [ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()]
        # Skip the network and broadcast addresses of ranges that have them.
        self.spans = [
            (net, 1, net.num_addresses - 2) if net.num_addresses > 2 else (net, 0, net.num_addresses)
            for net in self.networks
        ]
        self.size = sum(count for _, _, count in self.spans)
        # Processes of one run start at different places, so they do not move in lockstep.
        self.counter = itertools.count(random.randrange(self.size) if self.size else 0)

    def next(self) -> str | None:
        if not self.size:
            return None
        index = next(self.counter) % self.size
        for net, first, count in self.spans:
            if index < count:
                return str(net.network_address + first + index)
            index -= count
        raise AssertionError("unreachable")


_pools: dict[str, SourcePool] = {}


def pool(spec: str) -> SourcePool:
    if spec not in _pools:
        _pools[spec] = SourcePool(spec)
    return _pools[spec]


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    if os.environ.get("GWS_TLS_VERIFY", "1") == "0":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def open_tcp(where: Target, source: str | None, timeout: float, rcvbuf: int | None = None) -> socket.socket:
    """A connected socket from ``source`` (TLS-wrapped for wss://); gevent makes it cooperative."""
    sock = socket.socket(where.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            if where.family == socket.AF_INET:
                try:
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                except OSError:
                    pass  # not Linux: the port is picked at bind()
            sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.connect(where.address)
        if where.scheme == "wss":
            sock = _tls_context().wrap_socket(sock, server_hostname=where.hostname)
    except BaseException:
        sock.close()
        raise
    return sock


def upgrade(where: Target, sock: socket.socket, **options: Any) -> websocket.WebSocket:
    """The HTTP upgrade on an already connected socket; raises WebSocketBadStatusException on a refusal."""
    if "origin" not in options:
        options["suppress_origin"] = True  # websocket-client would invent an Origin
    return websocket.create_connection(
        where.url, socket=sock, skip_utf8_validation=True, enable_multithread=False, **options
    )


def drop(ws: websocket.WebSocket | None = None, sock: socket.socket | None = None) -> None:
    """Let go of a connection without ceremony (attackers do not say goodbye)."""
    for thing in (ws, sock):
        if thing is not None:
            try:
                (thing.shutdown if isinstance(thing, websocket.WebSocket) else thing.close)()
            except OSError:
                pass


# Waiting for the server's verdict, always bounded in time and in count.


@dataclass(frozen=True)
class Outcome:
    kind: str  # "close" (a close frame), "http" (a status line), "eof", "reset", "timeout", "frame"
    code: int | None = None
    at: float = 0.0

    def describe(self) -> str:
        return {
            "close": f"closed with {self.code}",
            "http": f"HTTP {self.code}",
            "eof": "connection closed without a close frame",
            "reset": "connection reset",
            "timeout": "still open",
            "frames": f"{MAX_FRAMES} frames and no close",
        }.get(self.kind, self.kind)


def wait_close(ws: websocket.WebSocket, deadline: float, *, grace: bool = True) -> Outcome:
    """Read frames until the server's close frame, EOF, or the deadline; other frames are skipped.

    If our timer fires with the answer already waiting (a client starved of CPU cannot tell
    when it arrived), it is read and counted as arriving at the deadline: the client's
    lateness is not the server's.
    """
    for _ in range(MAX_FRAMES):
        remaining = deadline - time.perf_counter()
        try:
            if remaining <= 0:
                raise websocket.WebSocketTimeoutException("deadline")
            ws.sock.settimeout(remaining)
            frame = ws.recv_frame()
        except websocket.WebSocketTimeoutException:
            if not grace or not _waiting(ws.sock):
                return Outcome("timeout", at=time.perf_counter())
            late = wait_close(ws, time.perf_counter() + 0.1, grace=False)
            return late if late.kind == "timeout" else Outcome(late.kind, late.code, min(late.at, deadline))
        except (websocket.WebSocketConnectionClosedException, AttributeError):
            return Outcome("eof", at=time.perf_counter())
        except OSError:  # reset, broken pipe
            return Outcome("reset", at=time.perf_counter())
        if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            data = frame.data or b""
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
            return Outcome("close", code, time.perf_counter())
    return Outcome("frames", at=time.perf_counter())


def _waiting(sock: socket.socket | None) -> bool:
    """Something arrived that we have not read yet (checked when our timer fires)."""
    return sock is not None and readable(sock, 0)


def readable(sock: socket.socket, timeout: float) -> bool:
    ready, _, _ = gselect.select([sock], [], [], max(0.0, timeout))
    return bool(ready)


def read_head(sock: socket.socket, deadline: float) -> Outcome:
    """The server's HTTP answer (its status), EOF/reset, or a timeout."""
    data = b""
    limit, late = deadline, False
    while len(data) < MAX_HEAD and b"\r\n\r\n" not in data:
        remaining = limit - time.perf_counter()
        try:
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
        except (TimeoutError, socket.timeout):
            if late or not _waiting(sock):
                return Outcome("timeout", at=time.perf_counter())
            limit, late = time.perf_counter() + 0.1, True  # answered while we were starved: see wait_close
            continue
        except OSError:
            chunk = b""
            if not data:
                return Outcome("reset", at=min(time.perf_counter(), deadline) if late else time.perf_counter())
        if not chunk:
            break
        data += chunk
    at = min(time.perf_counter(), deadline) if late else time.perf_counter()
    if data.startswith(b"HTTP/"):
        return Outcome("http", _status(data), at)
    return Outcome("eof", at=at)


def _status(head: bytes) -> int | None:
    try:
        return int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def raw_upgrade_request(where: Target, extra: dict[str, str] | None = None) -> bytes:
    lines = [
        f"GET {where.path} HTTP/1.1",
        f"Host: {where.hostname}:{where.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
        "User-Agent: guarded-ws-attack-lab/slowloris",
    ]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# Tokens.

_subjects = itertools.count(1)


def subject(prefix: str) -> str:
    """Unique per user instance: per-subject caps must not mix users up."""
    return f"{prefix}-{os.getpid()}-{next(_subjects)}"


def good_token(sub: str, ttl: float) -> str:
    return issue_token(secret(), sub, now=time.time(), ttl=ttl)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def bad_token(kind: str) -> str | bytes:
    now = time.time()
    if kind == "wrong_key":
        return issue_token("not-the-server-secret-but-long-enough-0123456789", "mallory", now=now, ttl=300)
    if kind == "expired":
        return issue_token(secret(), "mallory", now=now - 7200, ttl=60)
    if kind == "alg_none":
        header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        claims = _b64(json.dumps({"sub": "mallory", "exp": int(now) + 300}).encode())
        return f"{header}.{claims}."
    if kind == "garbage":
        return "this is not a token " + os.urandom(8).hex()
    if kind == "missing_sub":
        return jwt.encode({"iat": int(now), "exp": int(now) + 300}, secret(), algorithm="HS256")
    if kind == "not_utf8":
        return b"\xff\xfe\xfd" + os.urandom(8)
    raise ValueError(kind)


# The flood shape's current phase, so that legitimate rows can be split by phase.

_phase = {"name": ""}


def _phase_suffix() -> str:
    return f" @{_phase['name']}" if _phase["name"] else ""


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if runner is not None and SHAPE_ON:

        def on_phase(environment: Any, msg: Any, **_: Any) -> None:
            _phase["name"] = str(msg.data or "")

        runner.register_message("gws_phase", on_phase)


# Users.


class NotDefended(Exception):
    """The server did not defend itself the way the protocol says (an ATTACK failure)."""


class StepFailed(Exception):
    """A legitimate step got a wrong answer."""


class WebSocketUser(User):
    abstract = True
    request_type = ATTACK
    source_kind = "attack"  # or "legit"

    def on_start(self) -> None:
        self.s = settings(self.environment)
        self.where = target(self.host)
        self.sources = pool(self.s.attack_sources if self.source_kind == "attack" else self.s.legit_sources)

    def fire(
        self,
        name: str,
        started: float,
        exc: BaseException | None = None,
        length: int = 0,
        request_type: str | None = None,
        ended: float | None = None,
        **context: Any,
    ) -> None:
        ended = time.perf_counter() if ended is None else ended
        self.environment.events.request.fire(
            request_type=request_type or self.request_type,
            name=name,
            response_time=(ended - started) * 1000.0,
            response_length=length,
            exception=exc,
            context=context,
        )

    def connect(self, source: str | None = None, rcvbuf: int | None = None) -> socket.socket:
        return open_tcp(self.where, source or self.sources.next(), self.s.io_timeout, rcvbuf)


class LegitUser(WebSocketUser):
    """Connect, upgrade, authenticate, echo a few messages, close; each step is a WS row."""

    request_type = WS
    source_kind = "legit"
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        super().on_start()
        self.sub = subject("legit")

    @task
    def visit(self) -> None:
        legit_session(self, self.sub, self.sources.next(), echoes=self.s.echo_count, suffix=_phase_suffix())


def legit_session(
    user: WebSocketUser, sub: str, source: str | None, *, echoes: int, suffix: str = "", report: bool = True
) -> None:
    """One legitimate session; raises StepFailed/OSError on the first failing step when ``report`` is False."""
    s = user.s

    def step(name: str, started: float, exc: BaseException | None = None, length: int = 0) -> None:
        if report:
            user.fire(name + suffix, started, exc, length, request_type=WS)
        elif exc is not None:
            raise exc

    started = time.perf_counter()
    try:
        sock = open_tcp(user.where, source, s.io_timeout)
    except Exception as exc:
        step("connect", started, exc)
        return
    step("connect", started)
    ws = None
    try:
        started = time.perf_counter()
        try:
            options = {"origin": s.origin} if s.origin else {}
            ws = upgrade(user.where, sock, **options)
        except websocket.WebSocketBadStatusException as exc:
            step("upgrade", started, StepFailed(f"HTTP {exc.status_code}"))
            return
        except Exception as exc:
            step("upgrade", started, exc)
            return
        step("upgrade", started)

        started = time.perf_counter()
        try:
            ws.send(good_token(sub, s.token_ttl))
            reply = recv_message(ws, s.io_timeout)
            if not isinstance(reply, str) or json.loads(reply) != {"type": "authenticated", "subject": sub}:
                raise StepFailed(f"unexpected reply to the credential: {reply[:80]!r}")
        except Exception as exc:
            step("auth", started, exc)
            return
        step("auth", started, length=len(reply))

        for _ in range(max(0, echoes)):
            message = os.urandom(max(1, s.message_bytes) // 2 + 1).hex()[: max(1, s.message_bytes)]
            started = time.perf_counter()
            try:
                ws.send(message)
                got = recv_message(ws, s.io_timeout)
                if got != message:
                    raise StepFailed("echo differs from the message sent")
            except Exception as exc:
                step("echo", started, exc)
                return
            step("echo", started, length=len(got))
    finally:
        if ws is not None:
            close_gracefully(ws, min(2.0, s.io_timeout))
        else:
            drop(sock=sock)


def close_gracefully(ws: websocket.WebSocket, timeout: float) -> None:
    """The closing handshake, bounded; then the socket goes.

    Not websocket-client's WebSocket.close(): its bare ``except:`` swallows gevent's
    GreenletExit, so a user killed while closing would keep running and Locust's
    shutdown would hang waiting for it.
    """
    try:
        ws.send_close()
        deadline = time.perf_counter() + timeout
        for _ in range(100):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            ws.sock.settimeout(remaining)
            if ws.recv_frame().opcode == websocket.ABNF.OPCODE_CLOSE:
                break
    except Exception:
        pass
    finally:
        drop(ws)


def recv_message(ws: websocket.WebSocket, timeout: float = 10.0, max_frames: int = 1000) -> str | bytes:
    """The next data message; answers pings, and turns a close frame into StepFailed naming its code.

    (websocket-client's recv() returns "" for a close frame, which would hide the code.)
    """
    parts: list[bytes] = []
    opcode = None
    deadline = time.perf_counter() + timeout
    for _ in range(max_frames):
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise websocket.WebSocketTimeoutException(f"no message within {timeout:.1f} s")
        ws.sock.settimeout(remaining)
        frame = ws.recv_frame()
        op = frame.opcode
        if op == websocket.ABNF.OPCODE_CLOSE:
            data = frame.data or b""
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
            raise StepFailed(f"server closed with {code}")
        if op == websocket.ABNF.OPCODE_PING:
            ws.pong(frame.data)
            continue
        if op == websocket.ABNF.OPCODE_PONG:
            continue
        if opcode is None:
            opcode = op
        parts.append(frame.data)
        if frame.fin:
            data = b"".join(parts)
            return data.decode("utf-8", "replace") if opcode == websocket.ABNF.OPCODE_TEXT else data
    raise StepFailed(f"no complete message in {max_frames} frames")


class Attacker(WebSocketUser):
    """Base of the attackers: each attempt is one ATTACK row named after the scenario."""

    abstract = True
    wait_time = between(0.05, 0.25)
    name = "attack"

    def verdict(
        self,
        started: float,
        outcome: Outcome,
        deadline: float,
        *,
        closes: tuple[int, ...] = (),
        statuses: tuple[int, ...] = (),
        drops: bool = False,
        name: str | None = None,
        what: str = "",
    ) -> None:
        """Fire the ATTACK row: success iff the server answered as expected before ``deadline``."""
        bound = f"{deadline - started:.1f} s"
        expected = ", ".join(
            [f"close {c}" for c in closes]
            + [f"HTTP {s}" for s in statuses]
            + (["a dropped connection"] if drops else [])
        )
        ok = (
            (outcome.kind == "close" and outcome.code in closes)
            or (outcome.kind == "http" and outcome.code in statuses)
            or (drops and outcome.kind in ("eof", "reset"))
        )
        exc: Exception | None = None
        if outcome.kind == "timeout":
            exc = NotDefended(f"{what or 'connection'} still open after {bound}; expected {expected}")
        elif not ok:
            exc = NotDefended(f"{outcome.describe()}; expected {expected}")
        elif outcome.at > deadline:
            exc = NotDefended(f"{outcome.describe()} too late (bound {bound})")
        self.fire(name or self.name, started, exc, ended=outcome.at, outcome=outcome.describe())

    def could_not_start(self, started: float, exc: BaseException, name: str | None = None) -> None:
        self.fire(name or self.name, started, NotDefended(f"attack could not start: {type(exc).__name__}: {exc}"))

    def upgraded(self, started: float, name: str | None = None, **options: Any) -> websocket.WebSocket | None:
        """An upgraded attacker connection, or None after firing the row (a 429/503 refusal is a defence)."""
        sock = None
        try:
            sock = self.connect()
            return upgrade(self.where, sock, **options)
        except websocket.WebSocketBadStatusException as exc:
            drop(sock=sock)
            now = time.perf_counter()
            self.verdict(started, Outcome("http", exc.status_code, now), now, statuses=REFUSALS, name=name)
        except Exception as exc:
            drop(sock=sock)
            self.could_not_start(started, exc, name)
        return None

    def after_upgrade(
        self,
        act: Callable[[websocket.WebSocket, float], None],
        grace: float,
        closes: tuple[int, ...],
        name: str | None = None,
    ) -> None:
        """One attempt on an upgraded connection: ``act(ws, deadline)``, then one of ``closes``
        expected within ``grace`` of when it began; the connection goes either way."""
        ws = self.upgraded(time.perf_counter(), name)
        if ws is None:
            return
        try:
            began = time.perf_counter()
            deadline = began + grace
            act(ws, deadline)
            self.verdict(began, wait_close(ws, deadline), deadline, closes=closes, name=name)
        finally:
            drop(ws)


def trickle(sock: socket.socket, data: bytes, began: float, deadline: float) -> None:
    """All of ``data`` but its last byte, a byte at a time over twice the deadline (so a server
    that extended it would be caught), until the server answers or the deadline passes."""
    interval = min(0.5, max(0.005, 2 * (deadline - began) / len(data)))
    for i in range(len(data) - 1):
        if readable(sock, interval) or time.perf_counter() > deadline:
            break
        try:
            sock.send(data[i : i + 1])
        except OSError:
            break


def _silent(ws: websocket.WebSocket, deadline: float) -> None:
    pass


# Pending-phase floods: the server must close them at its deadline, or evict them under overload (1013).
PENDING_CLOSES = (4408, 1013)


class IdleFlood(Attacker):
    """Upgrade, never authenticate: expect 4408 within auth_timeout + margin (1013 if evicted)."""

    name = "idle_flood"

    @task
    def attack(self) -> None:
        self.after_upgrade(_silent, self.s.auth_timeout + self.s.margin, PENDING_CLOSES)


class AuthStaller(Attacker):
    """Trickle a valid credential frame a byte at a time: expect 4408 at the auth deadline all the same."""

    name = "auth_staller"

    @task
    def attack(self) -> None:
        grace = self.s.auth_timeout + self.s.margin

        def stall(ws: websocket.WebSocket, deadline: float) -> None:
            try:
                credential = good_token(subject("staller"), 300)
            except RuntimeError:
                credential = "x" * 160  # no secret: stall with something token-sized
            frame = websocket.ABNF.create_frame(credential, websocket.ABNF.OPCODE_TEXT).format()
            trickle(ws.sock, frame, deadline - grace, deadline)

        self.after_upgrade(stall, grace, PENDING_CLOSES)


class Slowloris(Attacker):
    """Trickle the upgrade request: expect HTTP 408 or a close within handshake_timeout + margin."""

    name = "slowloris"

    @task
    def attack(self) -> None:
        started = time.perf_counter()
        try:
            sock = self.connect()
        except Exception as exc:
            self.could_not_start(started, exc)
            return
        try:
            connected = time.perf_counter()
            deadline = connected + self.s.handshake_timeout + self.s.margin
            trickle(sock, raw_upgrade_request(self.where), connected, deadline)
            outcome = read_head(sock, deadline)
            self.verdict(
                connected, outcome, deadline, statuses=(408, *REFUSALS), drops=True, what="the half-sent upgrade"
            )
        finally:
            drop(sock=sock)


class BadTokenSpam(Attacker):
    """Each failure kind in turn (wrong key, expired, alg none, garbage, missing sub, not UTF-8): expect 4401."""

    name = "bad_token"
    _kinds = itertools.cycle(BAD_TOKEN_KINDS)  # shared: every kind gets its turn across users

    @task
    def attack(self) -> None:
        kind = next(self._kinds)
        name = f"bad_token:{kind}"
        started = time.perf_counter()
        try:
            credential = bad_token(kind)
        except RuntimeError as exc:
            self.could_not_start(started, exc, name)
            return

        def send(ws: websocket.WebSocket, deadline: float) -> None:
            try:
                ws.send(credential, websocket.ABNF.OPCODE_TEXT)
            except OSError:
                pass  # read what the server said anyway

        self.after_upgrade(send, self.s.margin, (4401,), name)


class OversizeFirstMessage(Attacker):
    """A first message twice the pre-auth budget: expect 1009."""

    name = "oversize_first_message"

    @task
    def attack(self) -> None:
        def send(ws: websocket.WebSocket, deadline: float) -> None:
            try:
                ws.send("x" * (2 * self.s.max_preauth_bytes + 1))
            except OSError:
                pass

        self.after_upgrade(send, self.s.margin, (1009,))


class PingFlood(Attacker):
    """Pings before authenticating, twice the pre-auth budget, pongs unread: expect 1009."""

    name = "ping_flood"

    @task
    def attack(self) -> None:
        ping = websocket.ABNF.create_frame(b"p" * 64, websocket.ABNF.OPCODE_PING).format()
        count = min(10_000, 2 * self.s.max_preauth_bytes // len(ping) + 2)

        def send(ws: websocket.WebSocket, deadline: float) -> None:
            try:
                ws.sock.sendall(ping * count)
            except OSError:
                pass

        self.after_upgrade(send, self.s.margin, (1009,))  # wait_close skips the pongs


class ForgedOrigin(Attacker):
    """Cross-Site WebSocket Hijacking: an upgrade with a foreign Origin. Expect HTTP 403.

    The server must run with server.allowed_origins set (without it there is no Origin
    check on the token path, by design, and this row fails).
    """

    name = "forged_origin"

    @task
    def attack(self) -> None:
        started = time.perf_counter()
        sock = None
        try:
            sock = self.connect()
            ws = upgrade(self.where, sock, origin=self.s.forged_origin)
        except websocket.WebSocketBadStatusException as exc:
            now = time.perf_counter()
            outcome = Outcome("http", exc.status_code, now)
            self.verdict(started, outcome, started + self.s.margin, statuses=(403, *REFUSALS))
            return
        except Exception as exc:
            self.could_not_start(started, exc)
            return
        finally:
            drop(sock=sock)
        now = time.perf_counter()
        drop(ws)
        self.verdict(started, Outcome("http", 101, now), started + self.s.margin, statuses=(403, *REFUSALS))


class ConnectCloseChurn(Attacker):
    """Bursts of connect + immediate close (half with RST); each connection is a CHURN row (their
    rate is the churn rate). After each burst a legitimate session from the legitimate range
    must complete within --gws-probe-timeout: that is the ATTACK row."""

    name = "connect_close_churn"

    @task
    def attack(self) -> None:
        burst = max(1, self.s.churn_burst)
        burst_started = time.perf_counter()
        made = 0
        for i in range(burst):
            started = time.perf_counter()
            try:
                sock = self.connect()
            except Exception as exc:
                self.fire("connect_close", started, exc, request_type=CHURN)
                continue
            if i % 2:
                # SO_LINGER 0: close() sends RST, the rudest way to leave.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            made += 1
            self.fire("connect_close", started, request_type=CHURN)
        rate = made / max(1e-6, time.perf_counter() - burst_started)

        legit_sources = pool(self.s.legit_sources)
        started = time.perf_counter()
        try:
            legit_session(self, subject("probe"), legit_sources.next(), echoes=1, report=False)
        except Exception as exc:
            failed = NotDefended(f"legitimate session failed after churn: {type(exc).__name__}: {exc}")
            self.fire(self.name, started, failed, burst, churn_rate=rate)
            return
        elapsed = time.perf_counter() - started
        slow = NotDefended(f"legitimate session slower than {self.s.probe_timeout:.1f} s after churn")
        exc = None if elapsed <= self.s.probe_timeout else slow
        self.fire(self.name, started, exc, burst, churn_rate=rate)


class NeverReads(Attacker):
    """Authenticate, then send and never read: expect the connection dropped within
    write_stall_timeout + margin of the server pushing back.

    Against the default echo app, the echoes of our own sends fill the server's write
    buffer; against an app that writes by itself our sends are filler. Either way the
    server's buffers fill, it stops reading, and our send blocks: the server's stall
    clock started before that moment, so the deadline runs from our first blocked send
    (time spent filling buffers is the client's, not the server's). A server that never
    pushes back within --gws-io-timeout (it buffers without bound) fails too.
    """

    name = "never_reads"
    chunk_bytes = 16_384
    probe_send = 0.2  # a send that waits this long means the server pushed back

    @task
    def attack(self) -> None:
        started = time.perf_counter()
        sock = None
        ws = None
        try:
            try:
                credential = good_token(subject("sink"), 300)
                # A small receive buffer: the server's writes back up sooner.
                sock = self.connect(rcvbuf=4096)
                ws = upgrade(self.where, sock)
                ws.send(credential)
                reply = recv_message(ws, self.s.io_timeout)
                if not isinstance(reply, str) or json.loads(reply).get("type") != "authenticated":
                    raise StepFailed("not authenticated")
            except Exception as exc:
                self.could_not_start(started, exc)
                return
            self.flood(ws.sock)
        finally:
            drop(ws, sock)

    def flood(self, sock: socket.socket) -> None:
        # Whole frames, written with plain send() so a partial write never corrupts the stream.
        frame = websocket.ABNF.create_frame("x" * self.chunk_bytes, websocket.ABNF.OPCODE_TEXT).format()
        authed = time.perf_counter()
        fill_deadline = authed + self.s.io_timeout
        blocked_at: float | None = None
        deadline = fill_deadline
        pending = memoryview(frame)
        for _ in range(1_000_000):
            attempt = time.perf_counter()
            if attempt > deadline:
                break
            try:
                sock.settimeout(self.probe_send if blocked_at is None else deadline - attempt)
                sent = sock.send(pending)
            except (TimeoutError, socket.timeout):
                if blocked_at is None:
                    blocked_at = attempt
                    deadline = blocked_at + self.s.write_stall_timeout + self.s.margin
                    continue
                break
            except OSError:
                self.verdict(blocked_at or authed, Outcome("reset", at=time.perf_counter()), deadline, drops=True)
                return
            pending = pending[sent:] or memoryview(frame)
            gevent.sleep(0)  # let other users run between sends
        if blocked_at is None:
            exc = NotDefended(f"the server kept reading for {self.s.io_timeout:.1f} s without pushing back or dropping")
            self.fire(self.name, authed, exc)
        else:
            outcome = Outcome("timeout", at=time.perf_counter())
            self.verdict(blocked_at, outcome, deadline, drops=True, what="a connection that never reads")


# The flood shape (GWS_SHAPE=flood): baseline, flood ramp, steady flood, recovery.


class FloodShape(LoadTestShape):
    """Legitimate users throughout; attackers ramp up, hold, and leave.

    Phases come from --gws-shape-phases. The tick returns user classes with their
    weights (fixed_count users would not be re-spawned): legitimate users are started
    in the baseline; the flood adds attackers only (the dispatcher adds users of the
    classes returned, and removes the most recently started first), so in recovery
    returning the legitimate count removes exactly the attackers.
    """

    abstract = not SHAPE_ON

    def tick(self) -> tuple[int, float, list[type[User]]] | None:
        runner = self.runner
        s = settings(runner.environment)
        by_name = {cls.__name__: cls for cls in runner.user_classes}
        legit = [by_name[name] for name in ("LegitUser",) if name in by_name]
        attackers = [by_name[n.strip()] for n in s.shape_attack_classes.split(",") if n.strip() in by_name]
        if not attackers:
            attackers = [cls for cls in runner.user_classes if cls is not LegitUser] or legit
        baseline, ramp, steady, recovery = (float(x) for x in s.shape_phases.split(","))
        n_legit = s.shape_legit if legit else 0
        n_attack = s.shape_attackers
        t = self.get_run_time()
        if t < baseline:
            return self._phase("baseline", (n_legit, max(1.0, n_legit), legit or attackers))
        t -= baseline
        if t < ramp:
            step = math.ceil(n_attack * min(1.0, (t + 1.0) / ramp))
            return self._phase("flood-ramp", (n_legit + step, max(1.0, 2.0 * n_attack / ramp), attackers))
        t -= ramp
        if t < steady:
            return self._phase("flood", (n_legit + n_attack, max(1.0, float(n_attack)), attackers))
        t -= steady
        if t < recovery:
            return self._phase("recovery", (n_legit, max(1.0, float(n_attack)), legit or attackers))
        return None

    def _phase(self, name: str, tick: tuple[int, float, list[type[User]]]) -> tuple[int, float, list[type[User]]]:
        if _phase["name"] != name:
            _phase["name"] = name
            try:
                self.runner.send_message("gws_phase", name)
            except Exception:
                pass  # no worker to tell yet: the next phase change reaches them
        return tick
