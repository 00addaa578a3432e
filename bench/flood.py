"""An asyncio flooder: hold many pending connections from many loopback sources.

Each connection is one small protocol object on uvloop; connections are spread round
robin over S sources (127.0.x.y, bound with IP_BIND_ADDRESS_NO_PORT) and, with
``--procs``, over several processes (a process has at most RLIMIT_NOFILE sockets).

Modes (a comma list is cycled over the connections, e.g. ``tcp,upgrade``):

- ``tcp``        connect and send nothing;
- ``upgrade``    send the upgrade request, get the 101, then stay silent (pings answered);
- ``slowloris``  trickle an upgrade request that never ends, ``--trickle-bytes`` every
                 ``--trickle-interval`` seconds;
- ``auth``       upgrade, authenticate with a valid token, then stay idle (pings answered):
                 what an authenticated idle client costs.

Bounded twice: ``--duration`` seconds and ``--max-attempts`` connects, whichever comes
first; ``--count`` is how many it tries to hold at once. ``--reconnect`` replaces each
connection the server closes (churn), ``--hold`` makes the flooder close its own after
a random 0.5x..1.5x that many seconds and reconnect. Progress goes to stderr as
``PROGRESS {json}`` lines every ``--interval`` seconds; the report is JSON on stdout (or
``--out``): how many it held over time, and how each connection ended (``http:429``,
``ws:4408``, ``reset``, ``eof`` without an answer, ``client`` when it closed it itself,
``connect:ECONNREFUSED``...), with how long after connect (or after the 101) each came.

    python bench/flood.py --port 8765 --mode upgrade --count 20000 --sources 800 \\
        --procs 2 --duration 30 --reconnect
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import sys
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wire  # noqa: E402

MODES = ("tcp", "upgrade", "slowloris", "auth")
MAX_SAMPLES = 200_000  # closing times kept per outcome and process
PROGRESS = "PROGRESS "

_TCP, _UPGRADE, _SLOW, _AUTH = range(4)
# Connection states
_WAIT_HEAD, _UPGRADED, _AUTHED = 0, 1, 2


class Flood:
    """One process's share of the flood."""

    def __init__(self, args: argparse.Namespace, worker: int, workers: int, t0: float, report: Any) -> None:
        self.args = args
        self.worker = worker
        self.t0 = t0
        self.report_progress = report
        all_sources = wire.sources(args.sources, args.source_base)
        mine = all_sources[worker::workers]
        self.sources = mine or all_sources
        share = lambda total: total // workers + (1 if worker < total % workers else 0)  # noqa: E731
        self.target = share(args.count)
        self.max_attempts = share(args.max_attempts) if args.max_attempts else self.target * (
            50 if (args.reconnect or args.hold) else 1
        )
        self.rate = args.rate / workers if args.rate else 0.0
        self.modes = [MODES.index(m) for m in args.mode.split(",")]
        self.request = wire.upgrade_request(args.host, args.port, args.path)
        # A request that never ends: the head without its blank line, then header after header.
        self.slow_script = self.request[:-2] + b"".join(b"X-Pad-%d: x\r\n" % i for i in range(20000))
        self.tokens = wire.Tokens(wire.secret()) if _AUTH in self.modes else None
        self.addr = (args.host, args.port)
        self.conns: set[Conn] = set()
        self.slow: set[Conn] = set()
        self.connecting = 0
        self.attempts = 0
        self.connected = 0
        self.closed = 0
        self.upgraded = 0  # open and past the 101
        self.authed = 0  # open and authenticated
        self.peak = Counter[str]()
        self.outcomes = Counter[str]()
        self.after: dict[str, list[float]] = {}
        self.connect_times: list[float] = []
        self.series: list[dict[str, float]] = []
        self.wake = asyncio.Event()  # the spawner's: a slot may be free
        self.stopped = asyncio.Event()
        self.stopping = False
        self.rng = random.Random(worker)

    # Bookkeeping

    def ended(self, conn: Conn, outcome: str) -> None:
        self.conns.discard(conn)
        self.slow.discard(conn)
        self.closed += 1
        self.outcomes[outcome] += 1
        start = conn.t_up or conn.t_conn
        samples = self.after.setdefault(outcome, [])
        if len(samples) < MAX_SAMPLES:
            samples.append(time.monotonic() - start)
        if conn.state >= _UPGRADED:
            self.upgraded -= 1
        if conn.state == _AUTHED:
            self.authed -= 1
        self.wake.set()

    def snapshot(self) -> dict[str, float]:
        snap = {
            "t": round(time.monotonic() - self.t0, 3),
            "open": len(self.conns),
            "upgraded": self.upgraded,
            "authed": self.authed,
            "attempts": self.attempts,
            "connected": self.connected,
            "closed": self.closed,
        }
        for key in ("open", "upgraded", "authed"):
            self.peak[key] = max(self.peak[key], int(snap[key]))
        return snap

    # Opening

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        args = self.args
        deadline = self.t0 + args.duration
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.call_at(loop.time() + max(0.0, deadline - time.monotonic()), self.stop)
        ticker = asyncio.ensure_future(self._tick())
        trickler = asyncio.ensure_future(self._trickle()) if _SLOW in self.modes else None
        began = time.monotonic()
        await self._spawn()
        # Hold what we have until the deadline (or a signal).
        await self.stopped.wait()
        for task in (ticker, trickler):
            if task is not None:
                task.cancel()
        for conn in list(self.conns):
            conn.finish("client")
        for _ in range(100):  # connection_lost comes a loop iteration later
            if not self.conns:
                break
            await asyncio.sleep(0.01)
        self.series.append(self.snapshot())
        return self._report(time.monotonic() - began)

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.stopped.set()

    async def _spawn(self) -> None:
        args = self.args
        started = time.monotonic()
        replace = args.reconnect or bool(args.hold)
        idx = self.worker
        while not self.stopping and self.attempts < self.max_attempts:
            if not replace and self.attempts >= self.target:
                return
            if len(self.conns) + self.connecting >= self.target or self.connecting >= args.concurrency:
                self.wake.clear()
                await self.wake.wait()
                continue
            if self.rate:
                due = started + self.attempts / self.rate
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
            self.attempts += 1
            self.connecting += 1
            asyncio.ensure_future(self._open(idx))
            idx += 1
            if self.attempts % 64 == 0:
                await asyncio.sleep(0)  # let connects complete and the ticker run

    async def _open(self, idx: int) -> None:
        loop = asyncio.get_running_loop()
        t_start = time.monotonic()
        conn: Conn | None = None
        try:
            sock = wire.bound_socket(self.sources[idx % len(self.sources)])
        except OSError as exc:
            self.connecting -= 1
            self.outcomes["connect:" + wire.errname(exc)] += 1
            self.wake.set()
            return
        try:
            async with asyncio.timeout(self.args.connect_timeout):
                await loop.sock_connect(sock, self.addr)
            conn = Conn(self, self.modes[idx % len(self.modes)], idx)
            await loop.create_connection(lambda: conn, sock=sock)
        except (OSError, TimeoutError) as exc:
            sock.close()
            self.connecting -= 1
            label = "connect:timeout" if isinstance(exc, TimeoutError) else "connect:" + wire.errname(exc)
            if conn is not None and conn.transport is not None:
                return  # connection_lost accounts for it
            self.outcomes[label] += 1
            self.wake.set()
            return
        self.connecting -= 1
        self.wake.set()  # the spawner may be waiting for a free connect slot
        if len(self.connect_times) < MAX_SAMPLES:
            self.connect_times.append(conn.t_conn - t_start)

    async def _tick(self) -> None:
        interval = self.args.interval
        next_at = self.t0
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            snap = self.snapshot()
            self.series.append(snap)
            self.report_progress(self.worker, snap)

    async def _trickle(self) -> None:
        args = self.args
        script = self.slow_script
        while True:
            await asyncio.sleep(args.trickle_interval)
            for conn in list(self.slow):
                if conn.transport is None or conn.transport.is_closing():
                    continue
                chunk = script[conn.pos : conn.pos + args.trickle_bytes]
                conn.pos += len(chunk)
                if chunk:
                    conn.transport.write(chunk)

    def _report(self, elapsed: float) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "elapsed": elapsed,
            "attempts": self.attempts,
            "connected": self.connected,
            "closed": self.closed,
            "peak": dict(self.peak),
            "outcomes": dict(self.outcomes),
            "after": self.after,
            "connect_times": self.connect_times,
            "series": self.series,
        }


class Conn(asyncio.Protocol):
    __slots__ = ("flood", "mode", "idx", "t_conn", "t_up", "transport", "buf", "state", "outcome", "pos", "timer")

    def __init__(self, flood: Flood, mode: int, idx: int) -> None:
        self.flood = flood
        self.mode = mode
        self.idx = idx
        self.t_conn = 0.0
        self.t_up = 0.0
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = _WAIT_HEAD
        self.outcome: str | None = None
        self.pos = 0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        flood = self.flood
        self.transport = transport  # type: ignore[assignment]
        self.t_conn = time.monotonic()
        flood.connected += 1
        flood.conns.add(self)
        mode = self.mode
        if mode == _UPGRADE or mode == _AUTH:
            transport.write(flood.request)  # type: ignore[attr-defined]
        elif mode == _SLOW:
            flood.slow.add(self)
        hold = flood.args.hold
        if hold:
            self.timer = asyncio.get_running_loop().call_later(
                hold * (0.5 + flood.rng.random()), self.finish, "client"
            )

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.state == _WAIT_HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > 65536:
                    self.finish("garbage")
                return
            status = wire.status_of(bytes(buf[:16]))
            if status != 101 or self.mode in (_TCP, _SLOW):
                self.finish(f"http:{status}")
                return
            del buf[: end + 4]
            self.state = _UPGRADED
            self.t_up = time.monotonic()
            self.flood.upgraded += 1
            if self.mode == _AUTH:
                assert self.flood.tokens is not None
                self.transport.write(self.flood.tokens.frame(f"flood-{self.idx % 4096}"))  # type: ignore[union-attr]
        for opcode, payload in wire.parse_frames(buf):
            if opcode == wire.OP_CLOSE:
                self.transport.write(wire.client_frame(wire.OP_CLOSE, payload[:2]))  # type: ignore[union-attr]
                self.finish(f"ws:{wire.close_code(payload)}")
                return
            if opcode == wire.OP_PING and self.flood.args.pong:
                self.transport.write(wire.client_frame(wire.OP_PONG, payload))  # type: ignore[union-attr]
            elif opcode == wire.OP_TEXT and self.state == _UPGRADED and self.mode == _AUTH:
                self.state = _AUTHED
                self.flood.authed += 1

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.outcome is None:
            self.outcome = "reset" if isinstance(exc, ConnectionResetError) else "eof"
        self.flood.ended(self, self.outcome)

    def finish(self, outcome: str) -> None:
        """We are done with it: note how it ended, and close."""
        if self.outcome is None:
            self.outcome = outcome
        if self.transport is not None:
            if outcome == "client":
                self.transport.abort()  # a flood does not linger
            else:
                self.transport.close()


# Several processes

def _worker(args: argparse.Namespace, worker: int, workers: int, t0: float, queue: Any) -> None:
    wire.raise_nofile()

    def progress(w: int, snap: dict[str, float]) -> None:
        queue.put(("progress", w, snap))

    async def main() -> dict[str, Any]:
        return await Flood(args, worker, workers, t0, progress).run()

    try:
        report = wire.run(main(), args.loop)
    except BaseException as exc:  # report, do not hang the parent
        report = {"worker": worker, "error": repr(exc)}
    queue.put(("report", worker, report))


def flood(args: argparse.Namespace) -> dict[str, Any]:
    wire.raise_nofile()
    t0 = time.monotonic()
    started = time.time()
    workers = max(1, args.procs)
    if workers == 1:
        def progress(_: int, snap: dict[str, float]) -> None:
            print(PROGRESS + json.dumps(snap), file=sys.stderr, flush=True)

        async def main() -> dict[str, Any]:
            return await Flood(args, 0, 1, t0, progress).run()

        reports = [wire.run(main(), args.loop)]
    else:
        reports = _flood_processes(args, workers, t0)
    merged = merge(reports)
    merged.update(
        {
            "t0_monotonic": t0,
            "started": started,
            "args": {key: value for key, value in vars(args).items() if key != "out"},
        }
    )
    return merged


def _flood_processes(args: argparse.Namespace, workers: int, t0: float) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("fork")  # before any event loop exists in this process
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(args, w, workers, t0, queue), daemon=True) for w in range(workers)]
    stop = {"asked": False}

    def forward(signum: int, _frame: Any) -> None:
        stop["asked"] = True
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    for proc in procs:
        proc.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    reports: dict[int, dict[str, Any]] = {}
    ticks: dict[float, dict[int, dict[str, float]]] = {}
    give_up = time.monotonic() + args.duration + 60
    while len(reports) < workers and time.monotonic() < give_up:
        try:
            kind, worker, payload = queue.get(timeout=1.0)
        except Exception:
            if not any(proc.is_alive() for proc in procs) and queue.empty():
                break
            continue
        if kind == "report":
            reports[worker] = payload
            continue
        key = round(payload["t"] / args.interval)
        tick = ticks.setdefault(key, {})
        tick[worker] = payload
        if len(tick) == workers:
            snap = _sum_snapshots(list(tick.values()))
            print(PROGRESS + json.dumps(snap), file=sys.stderr, flush=True)
            del ticks[key]
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    return [reports.get(w, {"worker": w, "error": "no report"}) for w in range(workers)]


def _sum_snapshots(snaps: list[dict[str, float]]) -> dict[str, float]:
    total = {key: sum(s.get(key, 0) for s in snaps) for key in snaps[0] if key != "t"}
    total["t"] = max(s["t"] for s in snaps)
    return total


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["error"] for r in reports if "error" in r]
    good = [r for r in reports if "error" not in r]
    outcomes: Counter[str] = Counter()
    after: dict[str, list[float]] = {}
    connect_times: list[float] = []
    for r in good:
        outcomes.update(r["outcomes"])
        for key, values in r["after"].items():
            after.setdefault(key, []).extend(values)
        connect_times.extend(r["connect_times"])
    # Series: sum the processes' samples tick by tick.
    by_tick: dict[int, list[dict[str, float]]] = {}
    for r in good:
        for i, snap in enumerate(r["series"]):
            by_tick.setdefault(i, []).append(snap)
    series = [_sum_snapshots(snaps) for _, snaps in sorted(by_tick.items()) if len(snaps) == len(good)]
    peak = {key: max((s[key] for s in series), default=0) for key in ("open", "upgraded", "authed")}
    elapsed = max((r["elapsed"] for r in good), default=0.0)
    attempts = sum(r["attempts"] for r in good)
    return {
        "workers": len(reports),
        "errors": errors,
        "elapsed": elapsed,
        "attempts": attempts,
        "connected": sum(r["connected"] for r in good),
        "closed": sum(r["closed"] for r in good),
        "attempts_per_s": attempts / elapsed if elapsed else 0.0,
        "peak": peak,
        "outcomes": dict(outcomes.most_common()),
        "closed_after": {key: _summary(values) for key, values in after.items()},
        "connect_time": _summary(connect_times),
        "series": series,
    }


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "p50": wire.percentile(values, 50),
        "p90": wire.percentile(values, 90),
        "p99": wire.percentile(values, 99),
        "p999": wire.percentile(values, 99.9),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--path", default="/ws")
    p.add_argument("--mode", default="upgrade", help=f"one of {', '.join(MODES)}, or a comma list cycled")
    p.add_argument("--count", type=int, default=1000, help="connections to hold at once")
    p.add_argument("--sources", type=int, default=200, help="source addresses (127.<base>.x.y)")
    p.add_argument("--source-base", type=int, default=wire.ATTACK_BASE, help="second octet of the sources")
    p.add_argument("--duration", type=float, default=30.0, help="seconds, then close everything and report")
    p.add_argument("--max-attempts", type=int, default=0, help="connects in all (0: count, x50 with churn)")
    p.add_argument("--reconnect", action="store_true", help="replace connections the server closes")
    p.add_argument("--hold", type=float, default=0.0, help="close our own after ~this many seconds, reconnect")
    p.add_argument("--rate", type=float, default=0.0, help="new connections per second at most (0: no cap)")
    p.add_argument("--concurrency", type=int, default=512, help="connects in flight per process")
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--trickle-bytes", type=int, default=1)
    p.add_argument("--trickle-interval", type=float, default=1.0)
    p.add_argument("--no-pong", dest="pong", action="store_false", help="do not answer keepalive pings")
    p.add_argument("--procs", type=int, default=1, help="processes (each holds up to RLIMIT_NOFILE sockets)")
    p.add_argument("--interval", type=float, default=0.5, help="progress period, seconds")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--out", help="write the JSON report here instead of stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for mode in args.mode.split(","):
        if mode not in MODES:
            parser().error(f"--mode: unknown mode {mode!r}")
    if args.count < 1 or args.duration <= 0:
        parser().error("--count and --duration must be positive")
    report = flood(args)
    wire.emit(report, args.out)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
