"""Several worker processes on one port: ``--workers N`` (``server.workers``).

Each worker is a whole guarded-ws (its own accept loop, caps and deadlines) with a
listener bound with ``SO_REUSEPORT``: the kernel spreads new connections over the
workers by a hash of the connection's addresses and ports, so no process hands
sockets to another and no lock sits on the accept path. The supervisor accepts
nothing; it

- reserves the port (a bound socket that never listens), so a port given as 0 is
  the same for every worker and a restarted worker finds its port free;
- restarts a worker that dies, after a back-off that doubles while it keeps dying
  young (:class:`Backoff`), and kills one that hangs (its admin socket silent for
  ``HUNG_AFTER`` seconds), since the kernel would keep handing it connections;
- forwards SIGTERM/SIGINT so every worker drains (1001 to authenticated clients);
- serves one ``/metrics`` that combines the workers' pages (:mod:`guarded_ws.aggregate`),
  which each worker serves on a unix socket in a private directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.metrics_core import Metric

from .admin import AdminServer
from .aggregate import Aggregator, parse
from .config import Config, with_overrides
from .metrics import PREFIX
from .runner import bracket
from .server import bind

log = logging.getLogger("guarded_ws.supervisor")

REFRESH_INTERVAL = 5.0  # s: at most this much of a killed worker's counting is lost
SCRAPE_TIMEOUT = 2.0
START_TIMEOUT = 30.0  # for every worker to answer /readyz at start-up
STOP_GRACE = 5.0  # s beyond drain_timeout + close_timeout before a worker is killed
# A worker whose loop has not answered for this long is hung (its admin port runs on that loop):
# it still holds its share of the port, so the kernel keeps handing it connections. Kill it.
HUNG_AFTER = 20.0


class Backoff:
    """Delays before restarting one worker slot: pure, the caller passes the times."""

    def __init__(self, *, first: float = 0.5, most: float = 30.0, healthy_after: float = 60.0) -> None:
        self.first = first
        self.most = most
        self.healthy_after = healthy_after
        self.current = 0.0

    def delay(self, started_at: float, died_at: float) -> float:
        """A worker that lived ``healthy_after`` seconds starts over at ``first``; else the delay doubles."""
        if died_at - started_at >= self.healthy_after or self.current == 0.0:
            self.current = self.first
        else:
            self.current = min(self.current * 2, self.most)
        return self.current


@dataclass
class Worker:
    index: int
    admin_path: str
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    families: list[Metric] = field(default_factory=list)  # from its last /metrics page
    answered_at: float = 0.0  # when its admin port last answered (or it started)
    backoff: Backoff = field(default_factory=Backoff)


class Supervisor:
    def __init__(self, config: Config, *, secret: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.secret = secret
        self.clock = clock
        self.stopping = False
        self.rundir = ""
        self.workers: list[Worker] = []
        self.aggregator = Aggregator()
        self.addresses: list[tuple[str, int]] = []
        self._reserved: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = asyncio.Event()
        self._failed: str | None = None
        self._own_process = ProcessCollector(registry=None)
        self.restarts = Counter(PREFIX + "worker_restarts", "Workers restarted after they died.", registry=None)
        self._live = Gauge(PREFIX + "workers", "Worker processes running now.", registry=None)
        self._live.set_function(lambda: sum(worker.process is not None for worker in self.workers))
        self.registry = CollectorRegistry()
        self.registry.register(self)  # type: ignore[arg-type]  # a collector: it has collect()

    # Lifecycle

    async def run(self, on_started: Callable[[Supervisor], None] | None = None) -> int:
        # Bound, never listening: a port given as 0 is the same for every worker, and a busy one fails now.
        self._reserved = bind(self.config.server.host, self.config.server.port, reuse_port=True)
        port = int(self._reserved[0].getsockname()[1])
        self.config = with_overrides(self.config, {"server.port": port})
        self.rundir = tempfile.mkdtemp(prefix="guarded-ws-")  # mode 0700: the workers' admin sockets
        self.workers = [
            Worker(index, os.path.join(self.rundir, f"worker-{index}.sock"))
            for index in range(self.config.server.workers)
        ]
        admin: AdminServer | None = None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._signal_workers, signal.SIGHUP)  # TLS reload, in each
        try:
            for worker in self.workers:
                await self._spawn(worker)
            if not await self._all_ready(stop):
                log.error("workers did not start: %s", self._failed or "timed out, or stopped")
                return 1
            self._started.set()
            self.addresses = [sock.getsockname()[:2] for sock in self._reserved]
            for host, bound in self.addresses:
                log.info(
                    "listening on %s://%s:%d%s (%d workers)",
                    "wss" if self.config.tls.enabled else "ws",
                    bracket(host),
                    bound,
                    self.config.server.path,
                    len(self.workers),
                )
            if self.config.metrics.enabled:
                admin = AdminServer(self.registry, ready=self._ready, refresh=self.refresh)
                await admin.start(self.config.metrics.host, self.config.metrics.port)
                log.info("metrics on http://%s:%d/metrics", bracket(self.config.metrics.host), admin.port)
            if on_started is not None:
                on_started(self)
            self._keep(self._refresh_periodically())
            await stop.wait()
            log.info("shutting down: draining every worker")
            return 0
        finally:
            await self._stop_workers()
            if admin is not None:
                await admin.close()
            for sock in self._reserved:
                sock.close()
            shutil.rmtree(self.rundir, ignore_errors=True)
            log.info("stopped")

    def _ready(self) -> bool:
        return not self.stopping and any(worker.process is not None for worker in self.workers)

    async def _spawn(self, worker: Worker) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.admin_path)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "guarded_ws.worker",
            str(worker.index),
            worker.admin_path,
            stdin=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None
        process.stdin.write(pickle.dumps((self.config, self.secret, os.getpid())))
        await process.stdin.drain()
        process.stdin.close()
        worker.process = process
        worker.started_at = worker.answered_at = self.clock()
        self._keep(self._watch(worker, process))

    async def _watch(self, worker: Worker, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        died_at = self.clock()
        self.aggregator.retire(worker.families)
        worker.families = []
        worker.process = None
        if self.stopping:
            return
        if not self._started.is_set():
            self._failed = f"worker {worker.index} exited during start-up with status {code}"
            return
        delay = worker.backoff.delay(worker.started_at, died_at)
        log.warning(
            "worker %d (pid %d) exited with status %s; restarting in %.1f s", worker.index, process.pid, code, delay
        )
        self.restarts.inc()
        await asyncio.sleep(delay)
        if not self.stopping:
            await self._spawn(worker)

    async def _all_ready(self, stop: asyncio.Event) -> bool:
        deadline = self.clock() + START_TIMEOUT
        waiting = list(self.workers)
        while waiting:
            if self._failed is not None or stop.is_set() or self.clock() > deadline:
                return False
            answers = await asyncio.gather(*(_get(worker.admin_path, b"/readyz") for worker in waiting))
            waiting = [worker for worker, answer in zip(waiting, answers) if answer is None or answer[0] != 200]
            if waiting:
                await asyncio.sleep(0.05)
        return True

    def _signal_workers(self, sig: int) -> None:
        for worker in self.workers:
            if worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    async def _stop_workers(self) -> None:
        """SIGTERM to every worker (each drains), then wait; kill what outlives the drain."""
        self.stopping = True
        running = [worker.process for worker in self.workers if worker.process is not None]
        self._signal_workers(signal.SIGTERM)
        limits = self.config.limits
        if running:
            grace = limits.drain_timeout + limits.close_timeout + STOP_GRACE
            _, late = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in running], timeout=grace)
            if late:
                log.warning("%d workers did not drain in %.0f s: killing them", len(late), grace)
                for process in running:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                await asyncio.wait(late, timeout=STOP_GRACE)
        for task in list(self._tasks):
            task.cancel()

    def _keep(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Metrics

    async def refresh(self) -> None:
        """Scrape every live worker; one that does not answer keeps its last page, and is killed once hung."""
        live = [(worker, worker.process) for worker in self.workers if worker.process is not None]
        pages = await asyncio.gather(*(_get(worker.admin_path, b"/metrics") for worker, _ in live))
        now = self.clock()
        for (worker, process), answer in zip(live, pages):
            if worker.process is not process:
                continue  # it died meanwhile
            if answer is not None and answer[0] == 200:
                worker.families = parse(answer[1].decode())
                worker.answered_at = now
            elif now - worker.answered_at > HUNG_AFTER and not self.stopping:
                silent = now - worker.answered_at
                log.warning(
                    "worker %d (pid %d) has not answered for %.0f s: killing it", worker.index, process.pid, silent
                )
                with contextlib.suppress(ProcessLookupError):
                    process.kill()  # _watch restarts it

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            await self.refresh()

    def collect(self) -> Iterator[Metric]:
        pages = {str(worker.index): worker.families for worker in self.workers if worker.process is not None}
        pages["supervisor"] = list(self._own_process.collect())
        yield from self.aggregator.combine(pages)
        yield from self._live.collect()
        yield from self.restarts.collect()


def run(config: Config, *, secret: str | None = None, on_started: Callable[[Supervisor], None] | None = None) -> int:
    async def main() -> int:
        return await Supervisor(config, secret=secret).run(on_started)

    return asyncio.run(main())


async def _get(path: str, target: bytes) -> tuple[int, bytes] | None:
    """One request to a worker's admin socket: (status, body), or None if it did not answer."""
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: worker\r\n\r\n")
                data = await reader.read()  # the admin port answers once, then closes
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    return int(parts[1]), body
