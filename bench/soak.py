"""Soak: a mixed flood and chatty legitimate clients against one guarded-ws, for a bounded time.

What it proves, in its report (JSON on stdout, or ``--out``) and its exit status:

- the server never crashes and logs no internal error;
- nothing grows: RSS and open descriptors in the last quarter of the run stay within a
  tolerance of the second quarter (the first is warm-up: allocator pools, caches), and
  once every client has left, descriptors are back where they started and nothing is
  pending;
- nothing is lost: every legitimate client sends numbered messages and checks that each
  comes back, in order; a missing, reordered or altered echo fails the run;
- legitimate success rate and connect+auth latency while the flood runs.

The flood, all at once, from its own loopback sources: ``bench/flood.py`` holding idle,
upgraded-silent and slowloris connections with churn (``--reconnect --hold``), and, in
this process, bad tokens (each failure kind), oversize first messages, ping floods before
auth and connect/close churn. Every loop is bounded by ``--duration`` and a count.

    python bench/soak.py --duration 1800           # the benchmark (30 minutes)
    python bench/soak.py --duration 60 --flood 1500   # what tests/test_soak.py runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wire  # noqa: E402
import run  # noqa: E402
from run import GWS, Sampler, Target, Tool  # noqa: E402

SOAK_BASE = 3  # sources 127.3.x.y: apart from flood.py's (127.0) and the legit clients' (127.1)
LEGIT_BASE = wire.LEGIT_BASE
# Short deadlines make the flood churn through every phase many times in a short run.
SETTINGS = {"limits.handshake_timeout": 2, "limits.auth_timeout": 2, "limits.ping_interval": 5}
# Growth allowed between the second and the last quarter: a fraction, plus a floor for
# the noise of a small heap.
RSS_GROWTH, RSS_FLOOR = 0.10, 4 << 20
FD_GROWTH, FD_FLOOR = 0.10, 64


class Legit:
    """Chatty legitimate sessions: authenticate, then numbered messages, each echo checked in order."""

    def __init__(self, port: int, messages: int, timeout: float) -> None:
        self.addr = ("127.0.0.1", port)
        self.request = wire.upgrade_request("127.0.0.1", port)
        self.sources = wire.sources(20, LEGIT_BASE)
        self.tokens = wire.Tokens(wire.secret())
        self.messages = messages
        self.timeout = timeout
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.sent = self.echoed = 0
        self.lost: list[str] = []

    async def session(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        stage = "connect"
        sock = wire.bound_socket(self.sources[i % len(self.sources)])
        try:
            async with asyncio.timeout(self.timeout):
                await loop.sock_connect(sock, self.addr)
                stage = "upgrade"
                await loop.sock_sendall(sock, self.request)
                buf = bytearray()
                status = await wire.read_head(loop, sock, buf)
                if status != 101:
                    raise _Failed(f"http:{status}")
                stage = "auth"
                await loop.sock_sendall(sock, self.tokens.frame(f"soak-{i % 97}"))
                opcode, payload = await wire.next_frame(loop, sock, buf)
                if opcode != wire.OP_TEXT:
                    raise _Failed(f"ws:{wire.close_code(payload)}")
                self.latencies.append(time.monotonic() - t0)
                stage = "chat"
                await self._chat(loop, sock, buf, i)
                await loop.sock_sendall(sock, wire.close_frame())
                while (await wire.next_frame(loop, sock, buf))[0] != wire.OP_CLOSE:
                    pass
        except (_Failed, TimeoutError, OSError) as exc:
            label = str(exc) if isinstance(exc, _Failed) else f"{_label(exc)}:{stage}"
            self.failures[label] += 1
            if stage == "chat" and label != "lost":  # the burst in flight never came back
                self.lost.append(f"session {i}: {label}")
        else:
            self.ok += 1
        finally:
            sock.close()

    async def _chat(self, loop: asyncio.AbstractEventLoop, sock: Any, buf: bytearray, i: int) -> None:
        """Messages in small bursts (up to 4 unanswered), so echoes are checked under pipelining."""
        expected: list[bytes] = []
        for n in range(self.messages):
            message = f"{i}:{n}:{'x' * (n % 64)}".encode()
            await loop.sock_sendall(sock, wire.client_frame(wire.OP_TEXT, message))
            self.sent += 1
            expected.append(message)
            if len(expected) == 4 or n == self.messages - 1:
                for want in expected:
                    opcode, payload = await wire.next_frame(loop, sock, buf)
                    if opcode != wire.OP_TEXT or payload != want:
                        self.lost.append(f"session {i}: wanted {want[:20]!r}, got opcode {opcode} {payload[:20]!r}")
                        raise _Failed("lost")
                    self.echoed += 1
                expected.clear()


class _Failed(Exception):
    pass


def _label(exc: BaseException) -> str:
    return "timeout" if isinstance(exc, TimeoutError) else wire.errname(exc)


class Attacks:
    """The flood kinds that flood.py does not hold: each connection is one attempt, answered and gone."""

    KINDS = ("bad_token", "oversize", "ping_flood", "churn")

    def __init__(self, port: int) -> None:
        self.addr = ("127.0.0.1", port)
        self.request = wire.upgrade_request("127.0.0.1", port)
        self.sources = wire.sources(100, SOAK_BASE)
        self.tokens = wire.Tokens(wire.secret())
        self.outcomes: Counter[str] = Counter()
        bad = self.tokens.frame("x")
        self.payloads = {
            "bad_token": [wire.client_frame(wire.OP_TEXT, b"not.a.token"), bad[:-3] + b"AAA"],
            "oversize": [wire.client_frame(wire.OP_TEXT, b"A" * 70000)],
            "ping_flood": [wire.client_frame(wire.OP_PING, b"p" * 100) * 200],
        }

    async def attempt(self, kind: str, i: int) -> None:
        loop = asyncio.get_running_loop()
        sock = wire.bound_socket(self.sources[i % len(self.sources)])
        try:
            async with asyncio.timeout(10):
                await loop.sock_connect(sock, self.addr)
                if kind == "churn":
                    self.outcomes["churn:closed"] += 1
                    return
                await loop.sock_sendall(sock, self.request)
                buf = bytearray()
                status = await wire.read_head(loop, sock, buf)
                if status != 101:
                    self.outcomes[f"{kind}:http:{status}"] += 1
                    return
                payloads = self.payloads[kind]
                await loop.sock_sendall(sock, payloads[i % len(payloads)])
                while True:
                    frame = wire.pop_frame(buf)
                    if frame is None:
                        await wire.recv_into(loop, sock, buf)
                    elif frame[0] == wire.OP_CLOSE:
                        self.outcomes[f"{kind}:ws:{wire.close_code(frame[1])}"] += 1
                        return
        except (TimeoutError, OSError) as exc:
            self.outcomes[f"{kind}:{_label(exc)}"] += 1
        finally:
            sock.close()


async def _loop_until(end: float, budget: int, concurrency: int, step: Any) -> None:
    """``concurrency`` workers calling ``step(i)`` until ``end`` or ``budget`` calls."""
    counter = iter(range(budget))

    async def worker() -> None:
        for i in counter:
            if time.monotonic() >= end:
                return
            await step(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _clients(args: argparse.Namespace, port: int) -> tuple[Legit, Attacks]:
    end = time.monotonic() + args.duration
    legit = Legit(port, args.messages, args.timeout)
    attacks = Attacks(port)
    budget = int(args.duration * 2000) + 1000
    loops = [_loop_until(end, budget, args.legit, legit.session)]
    for kind in Attacks.KINDS:
        loops.append(_loop_until(end, budget, args.attackers, lambda i, kind=kind: attacks.attempt(kind, i)))
    await asyncio.gather(*loops)
    return legit, attacks


def _quarter_medians(samples: list[dict[str, Any]], key: str, duration: float) -> tuple[float, float]:
    def median_between(a: float, b: float) -> float:
        return wire.median(s[key] for s in samples if a * duration <= s["t"] < b * duration and key in s)

    return median_between(0.25, 0.5), median_between(0.75, 1.0)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soak(args: argparse.Namespace) -> dict[str, Any]:
    run.PIN.update(enabled=False, priority=False)  # a correctness run: no CPU placement or priority
    wire.raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="guarded-ws-soak-"))
    target = Target(GWS, work, SETTINGS)
    try:
        idle = (target.rss(), _fds(target.pid))
        t0 = time.monotonic()
        sampler = Sampler(target, t0)
        flood = Tool("flood", [
            "--port", str(target.port), "--mode", "tcp,upgrade,slowloris", "--count", str(args.flood),
            "--sources", "200", "--duration", str(args.duration), "--reconnect", "--hold", "3",
            "--trickle-interval", "0.5", "--max-attempts", str(int(args.duration * 5000)),
        ], work)  # fmt: skip
        fd_samples: list[dict[str, float]] = []
        legit, attacks = wire.run(_with_fd_samples(_clients(args, target.port), target.pid, t0, fd_samples))
        flood_report = flood.result(args.duration + 60)
        samples = sampler.stop()
        settled = _settle(target)
        crashed = target.proc.poll() is not None
        log = target.log.read_text(errors="replace")
    finally:
        target.stop()
    rss_q2, rss_q4 = _quarter_medians(samples, "rss", args.duration)
    fd_q2, fd_q4 = _quarter_medians(fd_samples, "fds", args.duration)
    checks = {
        "no crash": not crashed,
        "no internal error logged": "internal error" not in log and "Traceback" not in log,
        "RSS flat (last quarter vs second)": rss_q4 <= rss_q2 * (1 + RSS_GROWTH) + RSS_FLOOR,
        "descriptors flat (last quarter vs second)": fd_q4 <= fd_q2 * (1 + FD_GROWTH) + FD_FLOOR,
        "descriptors back after the run": settled["fds"] <= idle[1] + 8,
        "nothing pending after the run": settled["pending"] == 0,
        "no message lost": not legit.lost and legit.echoed == legit.sent,
        "legitimate success >= 99%": legit.ok >= 0.99 * (legit.ok + sum(legit.failures.values())),
    }
    sessions = legit.ok + sum(legit.failures.values())
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "duration_s": args.duration,
        "legit": {
            "sessions": sessions,
            "success_rate": legit.ok / sessions if sessions else 0.0,
            "failures": dict(legit.failures),
            "connect_auth_p50_ms": wire.percentile(legit.latencies, 0.50) * 1000,
            "connect_auth_p99_ms": wire.percentile(legit.latencies, 0.99) * 1000,
            "messages_sent": legit.sent,
            "messages_echoed": legit.echoed,
            "lost": legit.lost[:10],
        },
        "attacks": dict(attacks.outcomes),
        "flood": {key: flood_report.get(key) for key in ("attempts", "peak_held", "outcomes") if key in flood_report},
        "server": {
            "rss_idle_mib": idle[0] / 2**20,
            "rss_q2_mib": rss_q2 / 2**20,
            "rss_q4_mib": rss_q4 / 2**20,
            "rss_after_mib": settled["rss"] / 2**20,
            "fds_idle": idle[1],
            "fds_q2": fd_q2,
            "fds_q4": fd_q4,
            "fds_after": settled["fds"],
            "accepted": samples[-1].get("metrics", {}).get("accepted") if samples else None,
        },
    }


async def _with_fd_samples(coro: Any, pid: int, t0: float, out: list[dict[str, float]]) -> Any:
    async def sample() -> None:
        while True:
            out.append({"t": time.monotonic() - t0, "fds": _fds(pid)})
            await asyncio.sleep(1.0)

    sampler = asyncio.ensure_future(sample())
    try:
        return await coro
    finally:
        sampler.cancel()


def _settle(target: Target, timeout: float = 15.0) -> dict[str, float]:
    """Wait (bounded) until nothing is pending and every client descriptor is gone; report where it ended."""
    deadline = time.monotonic() + timeout
    state: dict[str, float] = {}
    while time.monotonic() < deadline:
        metrics = target.scrape() or {}
        pending = metrics.get("pending:handshake", 0) + metrics.get("pending:auth", 0) + metrics.get("pending:tls", 0)
        state = {"pending": pending, "fds": _fds(target.pid), "rss": target.rss()}
        if pending == 0 and metrics.get("authenticated", 0) == 0:
            break
        time.sleep(0.25)
    return state


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of load")
    p.add_argument("--flood", type=int, default=4000, help="connections flood.py holds (idle, upgraded, slowloris)")
    p.add_argument("--legit", type=int, default=8, help="legitimate sessions at once")
    p.add_argument("--messages", type=int, default=50, help="messages per legitimate session")
    p.add_argument("--attackers", type=int, default=4, help="connections at once per in-process attack kind")
    p.add_argument("--timeout", type=float, default=10.0, help="a legitimate session's bound, seconds")
    p.add_argument("--out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    report = soak(args)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
