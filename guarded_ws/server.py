"""The server: its own accept loop, admission, the deadline sweep, and graceful shutdown.

guarded-ws owns ``accept()`` because neither asyncio nor uvloop lets a server
refuse a connection before building a protocol for it, or survive running
out of file descriptors: refusal here costs one small write and a close, and
EMFILE means backing off and freeing descriptors, not a storm of log lines.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from .admission import Admission, Verdict, source_keyer
from .apps import App
from .codes import Close, http_refusal
from .config import Config
from .connection import Connection, Phase
from .cookie_auth import CookieAuth
from .deadlines import DeadlineQueue, ExpiryQueue, next_sweep
from .demo import own_origins
from .logs import RateLimitedLogger
from .metrics import Metrics, accept_errno_label
from .preauth import Preauth
from .proxies import TrustedProxies
from .proxy_protocol import V1_MAX
from .rate import AcceptRate
from .replay_store import SharedReplayStore
from .session import ConnectionClosed, Session
from .tls import ServerTLS, failure_reason
from .tokens import HookVerifier, TokenVerifier

Verifier = TokenVerifier | HookVerifier

log = logging.getLogger("guarded_ws")

# The sweep runs when the soonest deadline falls due, but at least every TICK (loop-lag
# resolution) and at most every SWEEP_GAP (deadlines that close expire in one sweep).
TICK = 0.05
SWEEP_GAP = 0.005
# Back-off while accept() fails for lack of descriptors or memory.
ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX = 0.01, 1.0
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Server:
    def __init__(
        self,
        config: Config,
        *,
        app: App,
        verifier: Verifier,
        max_pending_total: int,
        max_connections_total: int,
        metrics: Metrics | None = None,
        replay_store: SharedReplayStore | None = None,
        tls: ServerTLS | None = None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        preauth: Preauth | None = None,
        cookie_auth: CookieAuth | None = None,
    ) -> None:
        limits = config.limits
        self.config = config
        self.app = app
        self.verifier = verifier
        self.replay_store = replay_store  # single-use credentials consumed cluster-wide, if configured
        self.tls = tls
        self.metrics = metrics if metrics is not None else Metrics()
        self.clock = clock
        self.wallclock = wallclock

        # Read by every connection on its hot path: plain attributes.
        self.path = config.server.path
        self.allowed_origins = frozenset(config.server.allowed_origins)
        self.max_request_bytes = limits.max_request_bytes
        self.max_preauth_bytes = limits.max_preauth_bytes
        self.max_message_bytes = limits.max_message_bytes
        self.accept_batch = config.server.accept_batch
        self.preauth = preauth  # the browser path (guarded_ws.preauth, guarded_ws.cookie_auth)
        self.cookie_auth = cookie_auth
        self.demo_page = preauth.demo_page if preauth is not None else None

        self.admission = Admission(
            max_per_source=limits.max_pending_per_source,
            max_total=max_pending_total,
            evict_oldest=limits.overload_policy == "evict-oldest",
        )
        self.source_key = source_keyer(limits.ipv4_prefix, limits.ipv6_prefix)
        self.accept_rate = (
            AcceptRate(limits.accept_rate_per_source, limits.accept_burst_per_source)
            if limits.accept_rate_per_source > 0
            else None
        )
        self.max_connections_total = max_connections_total
        # Trusted proxies name the source, in a PROXY header or a forwarded header; nobody else does.
        front = config.server
        self.proxy_protocol = front.proxy_protocol != "off"
        self.proxy_required = front.proxy_protocol == "required"
        self.forwarded = front.forwarded_header if front.forwarded_header != "off" else None
        self.forwarded_hops = front.forwarded_hops
        self.proxies = TrustedProxies(front.trusted_proxies) if self.proxy_protocol or self.forwarded else None

        Queue = DeadlineQueue[Connection]
        self.handshaking = Queue("handshake", limits.handshake_timeout)
        self.authenticating = Queue("auth", limits.auth_timeout)
        self.idle = Queue("keepalive", limits.ping_interval) if limits.ping_interval > 0 else None
        self.awaiting_pong = Queue("pong", limits.ping_timeout)
        self.stalled = Queue("stalled", limits.write_stall_timeout)
        self.closing = Queue("closing", limits.close_timeout)
        # Authenticated connections whose credential expires: closed with 4401 at that time.
        self.expiring = ExpiryQueue[Connection]()
        self._queues = [self.handshaking, self.authenticating, self.awaiting_pong, self.stalled, self.closing]
        if self.idle is not None:
            self._queues.append(self.idle)

        self.authenticated: set[Connection] = set()
        self._per_source: dict[object, int] = {}
        self._per_subject: dict[str, int] = {}

        retry = limits.retry_after
        self.too_many = http_refusal(HTTPStatus.TOO_MANY_REQUESTS, retry)
        self.unavailable = http_refusal(HTTPStatus.SERVICE_UNAVAILABLE, retry)
        self._refusals = {
            Verdict.REJECT_SOURCE: (self.too_many, "per_source_cap"),
            Verdict.REJECT_GLOBAL: (self.unavailable, "global_cap"),
            Verdict.EVICT: (self.unavailable, "global_cap"),
        }

        self.listeners: list[socket.socket] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.draining = False
        self._accepting = False
        self._backoff = 0.0
        self._next_tick = 0.0
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.events = RateLimitedLogger(log, clock=clock)

        self.metrics.set_limits(
            {
                "max_pending_total": max_pending_total,
                "max_pending_per_source": limits.max_pending_per_source,
                "max_connections_total": max_connections_total,
                "handshake_timeout": limits.handshake_timeout,
                "auth_timeout": limits.auth_timeout,
            }
        )
        self.metrics.observe(
            pending=lambda phase: len(self.handshaking if phase == "handshake" else self.authenticating),
            authenticated=lambda: len(self.authenticated),
            tracked_sources=lambda: self.admission.sources,
        )

    # Lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._drained = asyncio.Event()
        server = self.config.server
        self.listeners = _listen(server.host, server.port, server.backlog, reuse_port=server.workers > 1)
        if self.demo_page is not None:  # the demo page may call us from wherever we listen
            scheme = "https" if self.tls is not None else "http"
            self.allowed_origins |= own_origins(self.addresses, self.config.server.host, scheme)
        self._resume_accepting()
        self._next_tick = self.clock() + TICK
        self._sweeper = self.loop.call_at(self._loop_time_of(self._next_tick), self._sweep)

    @property
    def port(self) -> int:
        return int(self.listeners[0].getsockname()[1])

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for sock in self.listeners]

    async def shutdown(self) -> None:
        """Stop accepting, refuse pending peers, close authenticated ones with 1001 within drain_timeout."""
        if self.draining:
            return
        self.draining = True
        self._pause_accepting()
        for sock in self.listeners:
            sock.close()
        for queue in (self.handshaking, self.authenticating):
            for conn in list(queue.pop_expired(float("inf"))):
                conn.evict(Close.GOING_AWAY)
        for conn in list(self.authenticated):
            conn.start_close(Close.GOING_AWAY, "server shutting down")
        assert self._drained is not None
        if self.authenticated:
            try:
                await asyncio.wait_for(self._drained.wait(), self.config.limits.drain_timeout)
            except TimeoutError:
                for conn in list(self.authenticated):
                    conn.abort()
        # Apps whose connections are gone get close_timeout to finish (a relay closes its
        # upstream), then whatever still runs is cancelled.
        close_timeout = self.config.limits.close_timeout
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=close_timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=close_timeout)
        if self._sweeper is not None:
            self._sweeper.cancel()

    # Accept loop

    def _resume_accepting(self) -> None:
        if self.draining or self._accepting:
            return
        assert self.loop is not None
        for sock in self.listeners:
            self.loop.add_reader(sock.fileno(), self._accept, sock)
        self._accepting = True

    def _pause_accepting(self) -> None:
        if self._accepting and self.loop is not None:
            for sock in self.listeners:
                self.loop.remove_reader(sock.fileno())
        self._accepting = False

    def _accept(self, listener: socket.socket) -> None:
        metrics = self.metrics
        admission = self.admission
        now = self.clock()
        for _ in range(self.accept_batch):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    self._accept_exhausted(exc)
                    return
                metrics.accept_errors["other"].inc()
                continue
            metrics.accepted.inc()
            host = address[0]
            # A trusted proxy's connection has no source until its header names the client.
            source = None if self.proxies is not None and host in self.proxies else self.source_key(host)
            if source is not None and self.proxy_required:
                self._refuse(sock, b"", "proxy_untrusted", host)
                continue
            if source is not None and self.accept_rate is not None and not self.accept_rate.allow(source, now):
                self._refuse(sock, self.too_many, "per_source_rate", host)
                continue
            verdict = admission.check(source)
            if verdict is not Verdict.ADMIT and not (verdict is Verdict.EVICT and self._evict_oldest()):
                self._refuse(sock, *self._refusals[verdict], host)
                continue
            admission.take(source)
            conn = Connection(self, source, host, now)
            if self.tls is not None:
                conn.tls_sock = sock  # until the handshake ends: the sweep shuts it down at the deadline
            self.handshaking.push(conn, now)
            self._spawn(self._attach(conn, sock))
        self._backoff = 0.0

    async def _attach(self, conn: Connection, sock: socket.socket) -> None:
        assert self.loop is not None
        tls = self.tls
        if tls is not None and conn.source is None and self.proxy_protocol:
            if not await self._proxy_header_before_tls(conn, sock):
                sock.close()
                conn.connection_lost(None)
                return
        try:
            if tls is None:
                await self.loop.connect_accepted_socket(conn, sock)
            else:
                await self.loop.connect_accepted_socket(
                    conn, sock, ssl=tls.context, ssl_handshake_timeout=tls.handshake_backstop
                )
        except Exception as exc:  # OSError; ssl.SSLError and TimeoutError are OSErrors too
            if tls is not None and conn.phase is Phase.HANDSHAKE:  # not our own deadline, eviction or shutdown
                self.tls_failed(conn, failure_reason(exc))
            sock.close()
            conn.connection_lost(None)

    async def _proxy_header_before_tls(self, conn: Connection, sock: socket.socket) -> bool:
        """The PROXY header comes first, in clear: take it off the raw socket, leave TLS the rest.

        Peeks, so that bytes behind the header stay in the socket for the TLS handshake;
        while the header is incomplete every byte is part of it, so those are consumed and
        kept. The handshake deadline ends a stall (it shuts the socket down: EOF here).
        """
        limit = max(self.max_request_bytes, V1_MAX)
        while conn.phase is Phase.HANDSHAKE:
            try:
                peeked = sock.recv(limit, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                await self._readable(sock)
                continue
            except OSError:
                return False
            if not peeked:
                return False
            had = len(conn.head)
            used = conn.read_proxy_header(conn.head + peeked)
            if used >= 0:
                if used > had:
                    sock.recv(used - had, socket.MSG_DONTWAIT)  # peeked: it is there
                return True
            if conn.phase is not Phase.HANDSHAKE:
                return False
            sock.recv(len(peeked), socket.MSG_DONTWAIT)
        return False

    async def _readable(self, sock: socket.socket) -> None:
        assert self.loop is not None
        ready = self.loop.create_future()
        fd = sock.fileno()
        self.loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            self.loop.remove_reader(fd)

    def _refuse(self, sock: socket.socket, response: bytes, reason: str, host: str) -> None:
        try:
            sock.send(response, socket.MSG_DONTWAIT)
        except OSError:
            pass
        sock.close()
        self._count_refused(reason, host)

    def _count_refused(self, reason: str, host: str) -> None:
        self.metrics.rejected[reason].inc()
        self.events.log(logging.INFO, reason, "refused %s: %s", host, reason)

    def _evict_oldest(self) -> bool:
        oldest = [conn for conn in (self.handshaking.oldest(), self.authenticating.oldest()) if conn is not None]
        if not oldest:
            return False
        victim = min(oldest, key=lambda conn: conn.accepted_at)
        self.metrics.evicted["handshake" if victim.phase is Phase.HANDSHAKE else "auth"].inc()
        victim.evict(Close.TRY_AGAIN_LATER)
        return True

    def _accept_exhausted(self, exc: OSError) -> None:
        """Out of descriptors or memory: back off, and free descriptors if the policy allows."""
        label = accept_errno_label(exc.errno or 0)
        self.metrics.accept_errors[label].inc()
        self.events.log(logging.WARNING, "accept_" + label, "accept() failed (%s); backing off", label)
        if self.admission.evict:
            for _ in range(self.accept_batch):
                if not self._evict_oldest():
                    break
        self._pause_accepting()
        self._backoff = min(max(self._backoff * 2, ACCEPT_BACKOFF_MIN), ACCEPT_BACKOFF_MAX)
        assert self.loop is not None
        self.loop.call_later(self._backoff, self._resume_accepting)

    # Called by connections

    def admit_client(self, conn: Connection, host: str) -> str | None:
        """A trusted proxy named the client (or did not): the per-source checks that waited run now.

        Returns the refusal reason (the connection answers 429), or None once the
        connection counts under the client's source.
        """
        source = self.source_key(host)
        if self.accept_rate is not None and not self.accept_rate.allow(source, self.clock()):
            reason = "per_source_rate"
        elif not self.admission.assign(source):
            reason = "per_source_cap"
        else:
            conn.source, conn.host = source, host
            return None
        self._count_refused(reason, host)
        return reason

    def leave_pending(self, conn: Connection) -> None:
        if conn.pending:
            conn.pending = False
            self.admission.release(conn.source)
            if conn.queue is self.handshaking or conn.queue is self.authenticating:
                conn.queue.discard(conn)

    def upgraded(self, conn: Connection, now: float) -> None:
        self.authenticating.push(conn, now)
        self.metrics.handshake_duration.observe(now - conn.accepted_at)

    def authenticated_cap(self, source: object, subject: str) -> str | None:
        """The refusal reason if one more authenticated connection would pass a cap."""
        limits = self.config.limits
        if self.draining:
            return "shutting_down"
        if len(self.authenticated) >= self.max_connections_total:
            return "connections_cap"
        if self._per_source.get(source, 0) >= limits.max_connections_per_source:
            return "source_connections_cap"
        if self._per_subject.get(subject, 0) >= limits.max_connections_per_subject:
            return "subject_connections_cap"
        return None

    def start_session(self, conn: Connection, now: float, expires_at: float) -> None:
        """``expires_at`` is the credential's expiry, wall-clock seconds (math.inf: none)."""
        session = conn.session
        assert session is not None
        self.authenticated.add(conn)
        self._per_source[conn.source] = self._per_source.get(conn.source, 0) + 1
        self._per_subject[session.subject] = self._per_subject.get(session.subject, 0) + 1
        self.keep_alive(conn)
        self.credential_expires(conn, expires_at)
        self._spawn(self._run_app(session))

    def credential_expires(self, conn: Connection, expires_at: float) -> None:
        """Close ``conn`` with 4401 at ``expires_at`` (wall-clock seconds; math.inf: never)."""
        if expires_at == math.inf:
            self.expiring.discard(conn)
        else:
            self.expiring.push(conn, self.clock() + (expires_at - self.wallclock()))

    def leave_authenticated(self, conn: Connection) -> None:
        if conn not in self.authenticated:
            return
        self.authenticated.discard(conn)
        self.expiring.discard(conn)
        _decrement(self._per_source, conn.source)
        _decrement(self._per_subject, conn.session.subject)  # type: ignore[union-attr]
        if self.draining and not self.authenticated and self._drained is not None:
            self._drained.set()

    def keep_alive(self, conn: Connection) -> None:
        if self.idle is not None:
            self.idle.push(conn, self.clock())
        elif conn.queue is not None:
            conn.queue.discard(conn)

    def count_refusal(self, reason: str) -> None:
        self.metrics.rejected[reason].inc()

    def count_auth(self, method: str, result: str) -> None:
        self.metrics.auth_attempts[(method, result)].inc()

    def tls_failed(self, conn: Connection, reason: str) -> None:
        self.metrics.tls_failures[reason].inc()
        self.events.log(logging.INFO, "tls_" + reason, "TLS handshake failed from %s: %s", conn.host, reason)

    def log_auth_failure(self, conn: Connection, result: str, why: str) -> None:
        self.events.log(logging.INFO, "auth_" + result, "auth failed from %s: %s (%s)", conn.host, result, why)

    # The sweep: every deadline, one timer for the whole server.

    def _sweep(self) -> None:
        now = self.clock()
        self.metrics.loop_lag.set(max(0.0, now - self._next_tick))
        metrics = self.metrics
        for conn in self.handshaking.pop_expired(now):
            metrics.deadline_expired["tls" if conn.tls_sock is not None else "handshake"].inc()
            conn.expire()
        for conn in self.authenticating.pop_expired(now):
            metrics.deadline_expired["auth"].inc()
            conn.expire()
        if self.idle is not None:
            for conn in self.idle.pop_expired(now):
                self.awaiting_pong.push(conn, now)
                conn.ping()
        for conn in self.awaiting_pong.pop_expired(now):
            conn.fail(Close.INTERNAL_ERROR, "keepalive ping timeout")
        for conn in self.expiring.pop_expired(now):
            metrics.deadline_expired["credential"].inc()
            conn.start_close(Close.INVALID_CREDENTIAL, "credential expired")
        for queue in (self.stalled, self.closing):
            for conn in queue.pop_expired(now):
                conn.abort()
        self._next_tick = next_sweep(self._queues, self.clock(), TICK, SWEEP_GAP)
        assert self.loop is not None
        self._sweeper = self.loop.call_at(self._loop_time_of(self._next_tick), self._sweep)

    def _loop_time_of(self, when: float) -> float:
        """Translate our clock to the loop's (they are both monotonic, but may differ in origin)."""
        assert self.loop is not None
        return self.loop.time() + (when - self.clock())

    # Applications

    async def _run_app(self, session: Session) -> None:
        try:
            await self.app(session)
        except ConnectionClosed:
            return
        except Exception:
            self.events.log(logging.ERROR, "app_error", "application failed", exc_info=True)
            await session.close(Close.INTERNAL_ERROR, "internal error")
            return
        if not session.closed:
            await session.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        assert self.loop is not None
        task = self.loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _decrement(counts: dict[object, int], key: object) -> None:
    count = counts[key] - 1
    if count:
        counts[key] = count
    else:
        del counts[key]


def _listen(host: str, port: int, backlog: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """Non-blocking listening sockets for every address ``host`` resolves to."""
    return bind(host, port, reuse_port=reuse_port, backlog=backlog)


def bind(host: str, port: int, *, reuse_port: bool = False, backlog: int | None = None) -> list[socket.socket]:
    """Sockets bound to every address ``host`` resolves to; listening, non-blocking, if ``backlog`` is given.

    ``reuse_port``: workers share the port, and the kernel spreads connections over them by
    hash; the supervisor binds it too without listening, to hold the port for them.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if port == 0:
        infos = infos[:1]  # a free port is free on one address only
    sockets = []
    try:
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            if backlog is not None:
                sock.listen(backlog)
                sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
