"""Legitimate clients: connect, upgrade, authenticate, one echo, close; every step timed.

The same raw-socket client for guarded-ws and the naive baseline (no library between
the clock and the wire, and little CPU taken from the server under test). Two ways:

- ``--rate R``: open loop, a session started every 1/R s whatever happens to the others
  (what users do), each recorded: when it started, whether it succeeded, its
  connect+auth latency (connect() to the ``authenticated`` reply), how it failed;
- ``--concurrency C``: closed loop, C sessions back to back, for throughput
  (sessions per second); ``--procs`` runs that in several processes.

Bounded by ``--duration`` and ``--max-sessions``. The report is JSON on stdout or ``--out``.

    python bench/legit.py --port 8765 --rate 40 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wire  # noqa: E402

ECHO = b"hello, echo"


class Failed(Exception):
    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.label = label


class Client:
    def __init__(self, args: argparse.Namespace, salt: int = 0) -> None:
        self.args = args
        self.addr = (args.host, args.port)
        self.request = wire.upgrade_request(args.host, args.port, args.path)
        self.sources = wire.sources(args.sources, args.source_base)
        self.tokens = wire.Tokens(wire.secret())
        self.echo = wire.client_frame(wire.OP_TEXT, ECHO)
        self.close = wire.close_frame(1000)
        self.salt = salt

    async def session(self, i: int) -> tuple[bool, float, float, str, float, float]:
        """(ok, connect+auth seconds, total seconds, failure label or "", connect seconds, to-101 seconds)."""
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        t_auth = t_conn = t_up = t0
        stage = "connect"
        sock = None
        try:
            async with asyncio.timeout(self.args.timeout):
                sock = wire.bound_socket(self.sources[(i + self.salt) % len(self.sources)])
                await loop.sock_connect(sock, self.addr)
                t_conn = time.monotonic()
                stage = "upgrade"
                await loop.sock_sendall(sock, self.request)
                buf = bytearray()
                status = await wire.read_head(loop, sock, buf)
                if status != 101:
                    raise Failed(f"http:{status}")
                t_up = time.monotonic()
                stage = "auth"
                await loop.sock_sendall(sock, self.tokens.frame(f"legit-{(i + self.salt) % 997}"))
                opcode, payload = await wire.next_frame(loop, sock, buf)
                if opcode != wire.OP_TEXT or not payload.startswith(b'{"type": "authenticated"'):
                    raise Failed(f"ws:{wire.close_code(payload)}" if opcode == wire.OP_CLOSE else "auth:unexpected")
                t_auth = time.monotonic()
                stage = "echo"
                await loop.sock_sendall(sock, self.echo)
                opcode, payload = await wire.next_frame(loop, sock, buf)
                if opcode != wire.OP_TEXT or payload != ECHO:
                    raise Failed(f"ws:{wire.close_code(payload)}" if opcode == wire.OP_CLOSE else "echo:unexpected")
                stage = "close"
                await loop.sock_sendall(sock, self.close)
                while True:  # the server's close frame, then its EOF
                    opcode, payload = await wire.next_frame(loop, sock, buf)
                    if opcode == wire.OP_CLOSE:
                        break
        except Failed as exc:
            label = exc.label
        except TimeoutError:
            label = f"timeout:{stage}"
        except OSError as exc:
            label = f"{wire.errname(exc)}:{stage}"
        else:
            label = ""
        finally:
            if sock is not None:
                sock.close()
        t_end = time.monotonic()
        if label and stage != "close":
            return False, 0.0, t_end - t0, label, t_conn - t0, t_up - t0
        return True, t_auth - t0, t_end - t0, "", t_conn - t0, t_up - t0


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def open_loop(args: argparse.Namespace, t0: float) -> dict[str, Any]:
    """A session every 1/rate seconds; each one recorded."""
    client = Client(args)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    records: list[list[Any]] = []
    tasks: set[asyncio.Task[None]] = set()
    skipped = 0

    async def one(i: int, started: float) -> None:
        ok, auth, total, label, conn, up = await client.session(i)
        records.append([round(started - t0, 4), ok, round(auth, 6), round(total, 6), label, round(conn, 6),
                        round(up, 6)])

    total = min(int(args.rate * args.duration), args.max_sessions or 1 << 62)
    for i in range(total):
        due = t0 + i / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except TimeoutError:
                pass
        if stop.is_set():
            break
        if len(tasks) >= args.max_in_flight:
            skipped += 1
            records.append([round(time.monotonic() - t0, 4), False, 0.0, 0.0, "client:in_flight_cap", 0.0, 0.0])
            continue
        task = asyncio.ensure_future(one(i, time.monotonic()))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout + 1)
    records.sort(key=lambda r: r[0])
    return {"mode": "rate", "records": records, "skipped": skipped, "elapsed": time.monotonic() - t0}


async def closed_loop(args: argparse.Namespace, t0: float, salt: int) -> dict[str, Any]:
    """``concurrency`` sessions back to back until the duration or the session budget runs out."""
    client = Client(args, salt)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    end = t0 + args.duration
    budget = args.max_sessions or 1 << 62
    counter = {"started": 0}
    done: list[float] = []  # completion times, relative to t0
    latencies: list[float] = []
    failures: Counter[str] = Counter()

    async def worker() -> None:
        while not stop.is_set() and time.monotonic() < end and counter["started"] < budget:
            i = counter["started"]
            counter["started"] += 1
            ok, auth, _, label, _, _ = await client.session(i)
            if ok:
                done.append(time.monotonic() - t0)
                latencies.append(auth)
            else:
                failures[label] += 1

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return {
        "mode": "concurrency",
        "done": done,
        "latencies": latencies,
        "failures": dict(failures),
        "elapsed": time.monotonic() - t0,
    }


def _closed_worker(args: argparse.Namespace, t0: float, salt: int, queue: Any) -> None:
    wire.raise_nofile()
    try:
        queue.put(wire.run(closed_loop(args, t0, salt), args.loop))
    except BaseException as exc:
        queue.put({"error": repr(exc)})


def run(args: argparse.Namespace) -> dict[str, Any]:
    wire.raise_nofile()
    t0 = time.monotonic() + args.delay
    started = time.time() + args.delay
    if args.rate:
        report = wire.run(open_loop(args, t0), args.loop)
        report["summary"] = summarize_records(report["records"])
    else:
        procs = max(1, args.procs)
        if procs == 1:
            parts = [wire.run(closed_loop(args, t0, 0), args.loop)]
        else:
            ctx = multiprocessing.get_context("fork")
            queue = ctx.Queue()
            share = argparse.Namespace(**vars(args))
            share.max_sessions = args.max_sessions // procs if args.max_sessions else 0
            workers = [
                ctx.Process(target=_closed_worker, args=(share, t0, p * 100003, queue), daemon=True)
                for p in range(procs)
            ]
            for w in workers:
                w.start()
            parts = [queue.get(timeout=args.duration + args.timeout + 30) for _ in workers]
            for w in workers:
                w.join(5)
        errors = [p["error"] for p in parts if "error" in p]
        parts = [p for p in parts if "error" not in p]
        done = sorted(t for p in parts for t in p["done"])
        latencies = [x for p in parts for x in p["latencies"]]
        failures: Counter[str] = Counter()
        for p in parts:
            failures.update(p["failures"])
        elapsed = max((p["elapsed"] for p in parts), default=0.0)
        report = {
            "mode": "concurrency",
            "errors": errors,
            "elapsed": elapsed,
            "sessions": len(done),
            "failures": dict(failures),
            "sessions_per_s": len(done) / elapsed if elapsed else 0.0,
            "latency": {"p50": wire.percentile(latencies, 50), "p99": wire.percentile(latencies, 99)},
            "per_second": _per_second(done),
        }
    report["t0_monotonic"] = t0
    report["started"] = started
    report["args"] = {key: value for key, value in vars(args).items() if key != "out"}
    return report


def _per_second(times: list[float]) -> list[int]:
    counts: Counter[int] = Counter(int(t) for t in times if t >= 0)
    return [counts.get(s, 0) for s in range(max(counts, default=-1) + 1)]


def summarize_records(records: list[list[Any]]) -> dict[str, Any]:
    ok = [r for r in records if r[1]]
    latencies = [r[2] for r in ok]
    return {
        "attempts": len(records),
        "ok": len(ok),
        "success": len(ok) / len(records) if records else float("nan"),
        "p50": wire.percentile(latencies, 50),
        "p99": wire.percentile(latencies, 99),
        "max": max(latencies, default=float("nan")),
        "failures": dict(Counter(r[4] for r in records if not r[1]).most_common()),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--path", default="/ws")
    p.add_argument("--rate", type=float, default=0.0, help="open loop: sessions started per second")
    p.add_argument("--concurrency", type=int, default=32, help="closed loop: sessions at once")
    p.add_argument("--procs", type=int, default=1, help="closed loop: processes")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--delay", type=float, default=0.0, help="seconds before the first session")
    p.add_argument("--max-sessions", type=int, default=0, help="bound on sessions (0: rate x duration)")
    p.add_argument("--max-in-flight", type=int, default=2000, help="open loop: sessions at once at most")
    p.add_argument("--timeout", type=float, default=10.0, help="a whole session, seconds")
    p.add_argument("--sources", type=int, default=50)
    p.add_argument("--source-base", type=int, default=wire.LEGIT_BASE)
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.rate and not args.max_sessions and args.duration <= 0:
        parser().error("give a bound: --duration or --max-sessions")
    report = run(args)
    wire.emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
