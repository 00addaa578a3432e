"""The benchmark runner: guarded-ws against the naive baseline, same machine, same run, same clients.

    python bench/run.py SCENARIO [--runs 3] [--out DIR] [scenario options]

Scenarios (the figures of bench/RESULTS.md):

  ceiling     accept-and-close rate of a bare socket server (no WebSocket): the ceiling
  shed        over-cap connections refused per second by guarded-ws (one source at its
              per-source cap, hammering), against the bare server's rate, same client
  flood       legitimate success rate and connect+auth latency while 20,000 pending
              connections from 800 sources churn (guarded-ws vs naive)
  memory      RSS delta / N for N idle TCP, upgraded-silent and authenticated connections
  throughput  handshake + auth + one echo + close per second, no attack (guarded-ws vs naive)
  deadline    how late past auth_timeout idle upgraded connections are closed, with ~20,000 pending

Each target runs as a subprocess (guarded-ws's CLI, bench/naive_server.py or
bench/bare_server.py); attackers are bench/flood.py, legitimate users bench/legit.py,
each a subprocess too. Along the way the runner samples the target's RSS and CPU time
(/proc) and scrapes guarded-ws's /metrics. Every run writes DIR/report.md, PNG plots and
DIR/results.json; with --runs N the report gives the median of the N runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wire  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
GWS, NAIVE, BARE = "guarded-ws", "naive", "bare"
SAMPLE_INTERVAL = 0.5


# Processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PIN = {"enabled": True, "priority": True}
EXTRA_SETTINGS: dict[str, str] = {}  # --gws-set: configuration keys for guarded-ws in every scenario


def _placement(role: str) -> Callable[[], None] | None:
    """CPU placement and priority for a child: the server alone on CPU 0, load generators on the others.

    On a 2-core machine the attackers would otherwise take CPU from the server they attack (an
    artefact: real attackers bring their own CPUs). Everything the runner starts gets a higher
    priority than unrelated jobs on this shared machine (nice -5), and legitimate clients and
    probes a higher one still (nice -10), so that their clocks measure the server, not the run queue.
    """
    cpus = sorted(os.sched_getaffinity(0))
    pin = PIN["enabled"] and len(cpus) >= 2
    mine = set(cpus[:1]) if role == "server" else set(cpus[1:])
    boost = -10 if role == "probe" else -5

    def place() -> None:
        if pin:
            os.sched_setaffinity(0, mine)
        if PIN["priority"]:
            try:
                os.nice(boost)
            except OSError:
                pass  # not allowed here: run at the normal priority

    return place


def _raise_session_priority() -> None:
    """With autogroup scheduling (Linux's default), nice values only rank tasks inside one session:
    each session shares a contended CPU equally with every other. The benchmark's session asks for
    a larger share, so that another session's job cannot take half the CPU from the server under test."""
    try:
        Path("/proc/self/autogroup").write_text("-10")
    except OSError:
        pass


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDED_WS_")}
    env[wire.SECRET_ENV] = wire.secret()
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Target:
    """A server under test, as a subprocess; its log goes to a file, not a pipe that could fill."""

    def __init__(self, kind: str, workdir: Path, settings: dict[str, Any] | None = None, loop: str = "uvloop"):
        self.kind = kind
        self.settings = {**EXTRA_SETTINGS, **(settings or {})}
        self.log = workdir / f"{kind}-{time.monotonic_ns()}.log"
        self.port = 0
        self.metrics_port = 0
        if kind == GWS:
            cmd = [PY, "-m", "guarded_ws", "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
                   "--loop", loop, "--log-level", "info"]
            for key, value in self.settings.items():
                cmd += ["--set", f"{key}={value}"]
        elif kind == NAIVE:
            cmd = [PY, str(BENCH / "naive_server.py"), "--port", "0", "--loop", loop]
        elif kind == BARE:
            cmd = [PY, str(BENCH / "bare_server.py"), "--port", "0", "--loop", loop]
        else:
            raise ValueError(kind)
        self.command = cmd
        self._file = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._file, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT,
                                     preexec_fn=_placement("server"))
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if m := re.search(r"listening on \w+://[^:\s]+:(\d+)", text):
                self.port = int(m.group(1))
            if m := re.search(r"metrics on http://[^:\s]+:(\d+)/", text):
                self.metrics_port = int(m.group(1))
            if self.port and (self.kind != GWS or self.metrics_port):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        """Resident set size in bytes."""
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            return 0

    def cpu(self) -> float:
        """User + system CPU seconds so far."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            return 0.0

    def scrape(self, timeout: float = 2.0) -> dict[str, float] | None:
        if not self.metrics_port:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout) as r:
                return parse_metrics(r.read().decode())
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._file.close()


_KEEP = {
    "guarded_ws_pending_connections": "pending",
    "guarded_ws_authenticated_connections": "authenticated",
    "guarded_ws_connections_rejected_total": "rejected",
    "guarded_ws_connections_evicted_total": "evicted",
    "guarded_ws_deadline_expired_total": "expired",
    "guarded_ws_connections_accepted_total": "accepted",
    "guarded_ws_auth_attempts_total": "auth",
    "guarded_ws_limit": "limit",
    "guarded_ws_event_loop_lag_seconds": "loop_lag",
    "guarded_ws_accept_errors_total": "accept_errors",
    "process_resident_memory_bytes": "rss",
    "process_cpu_seconds_total": "cpu",
    "process_open_fds": "fds",
}


def parse_metrics(text: str) -> dict[str, float]:
    """The samples the report uses, flattened: ``rejected:per_source_cap``, ``pending:auth``, ``auth:ok``..."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            short = _KEEP.get(sample.name)
            if short is None:
                continue
            labels = sample.labels
            label = labels.get("reason") or labels.get("phase") or labels.get("result") or labels.get("name") \
                or labels.get("errno")
            key = f"{short}:{label}" if label else short
            out[key] = out.get(key, 0.0) + sample.value
    return out


class Sampler:
    """RSS, CPU time and (guarded-ws) metrics of a target, every SAMPLE_INTERVAL seconds, in a thread."""

    def __init__(self, target: Target, t0: float) -> None:
        self.target = target
        self.t0 = t0
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_INTERVAL)

    def sample(self) -> dict[str, Any]:
        t = time.monotonic()
        snap: dict[str, Any] = {"t": t - self.t0, "rss": self.target.rss(), "cpu": self.target.cpu()}
        metrics = self.target.scrape()
        if metrics is not None:
            snap["metrics"] = metrics
            snap["scrape_s"] = time.monotonic() - t
            snap["t"] = (t + time.monotonic()) / 2 - self.t0  # the loop answers when it can
        self.samples.append(snap)
        return snap

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


class Tool:
    """bench/flood.py or bench/legit.py as a subprocess: JSON report to a file, progress lines followed."""

    def __init__(self, script: str, args: list[str], workdir: Path, role: str = "tool") -> None:
        self.out = workdir / f"{Path(script).stem}-{time.monotonic_ns()}.json"
        self.progress: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        if script.endswith(".py") or "/" not in script:
            self.command = [PY, str(BENCH / f"{script}.py"), *args, "--out", str(self.out)]
            stdout: Any = subprocess.DEVNULL
        else:  # a compiled tool: its report on stdout
            self.command = [script, *args]
            stdout = open(self.out, "w")
        self.proc = subprocess.Popen(self.command, stderr=subprocess.PIPE, stdout=stdout, text=True,
                                     env=_env(), cwd=ROOT, preexec_fn=_placement(role))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("PROGRESS "):
                self.progress.append(json.loads(line[9:]))
            elif len(self.stderr) < 200:
                self.stderr.append(line)

    def latest(self) -> dict[str, Any]:
        return self.progress[-1] if self.progress else {}

    def wait_until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.progress and predicate(self.progress[-1]):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        try:
            return json.loads(self.out.read_text())
        except (OSError, ValueError):
            raise RuntimeError(f"{self.command[1]} gave no report:\n{''.join(self.stderr)[-3000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


def hammer_binary(workdir: Path) -> str | None:
    """bench/hammer.c compiled (once per report directory), or None without a C compiler."""
    binary = workdir / "hammer"
    if binary.exists():
        return str(binary)
    for cc in ("cc", "gcc", "clang"):
        try:
            subprocess.run([cc, "-O2", "-o", str(binary), str(BENCH / "hammer.c")], check=True, capture_output=True,
                           timeout=60)
            return str(binary)
        except (OSError, subprocess.SubprocessError):
            continue
    return None


def flood_args(port: int, **kw: Any) -> list[str]:
    args = ["--port", str(port)]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    return args


def warm_up(target: Target, workdir: Path, sessions: int = 200) -> None:
    """A few legitimate sessions first: imports, caches and allocator pools are in place before measuring."""
    Tool("legit", flood_args(target.port, concurrency=8, max_sessions=sessions, duration=10), workdir).result(20)


def delta(samples: list[dict[str, Any]], key: str, start: float = -math.inf, end: float = math.inf) -> float:
    """Increase of a counter metric between the first and last samples inside [start, end]."""
    inside = [s["metrics"][key] for s in samples if "metrics" in s and key in s["metrics"] and start <= s["t"] <= end]
    return inside[-1] - inside[0] if len(inside) >= 2 else 0.0


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listener's accept queue was full (all listeners)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table.get("ListenOverflows", 0))
    return 0


def _cpu_share(samples: list[dict[str, Any]], start: float, end: float) -> float:
    inside = [x for x in samples if start <= x["t"] <= end]
    if len(inside) < 2:
        return math.nan
    return (inside[-1]["cpu"] - inside[0]["cpu"]) / (inside[-1]["t"] - inside[0]["t"])


def steady_rss(target: Target, n: int = 5, pause: float = 0.2) -> int:
    values = []
    for _ in range(n):
        values.append(target.rss())
        time.sleep(pause)
    return int(wire.median(values))


# Scenarios. Each runs one measurement (both targets where there is a baseline) and
# returns {"metrics": {target: {name: value}}, "series": {target: {...}}}.

class Scenario:
    name = ""
    title = ""
    targets: tuple[str, ...] = ()
    goal = ""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        if args.targets:
            wanted = args.targets.split(",")
            self.targets = tuple(t for t in type(self).targets if t in wanted)

    def run_once(self) -> dict[str, Any]:
        """One run against each target in turn (``one``), with ``ratio`` between them when both ran."""
        out: dict[str, Any] = {"metrics": {}, "series": {}}
        for kind in self.targets:
            out["metrics"][kind], out["series"][kind] = self.one(kind)
        if len(out["metrics"]) == 2:
            ratio = self.ratio(out["metrics"][GWS], out["metrics"][NAIVE])
            if ratio:
                out["metrics"]["ratio"] = ratio
        return out

    def one(self, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
        raise NotImplementedError

    def ratio(self, g: dict[str, float], n: dict[str, float]) -> dict[str, float]:
        return {}

    def setup(self) -> list[str]:
        return []

    def headline(self, summary: dict[str, dict[str, float]]) -> list[str]:
        return []


class Ceiling(Scenario):
    name = "ceiling"
    title = "1. Ceiling: accept-and-close rate of a bare socket server"
    targets = (BARE,)

    def hammer(self, target: Target, sources: int = 1) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        a = self.args
        t0 = time.monotonic()
        sampler = Sampler(target, t0)
        self.before = target.scrape() or {}
        cpu0 = target.cpu()
        binary = hammer_binary(self.workdir) if a.client == "c" else None
        if binary:
            flood = Tool(binary, flood_args(target.port, in_flight=a.concurrency, sources=sources,
                                            duration=a.duration, max=a.max_attempts), self.workdir)
        else:
            flood = Tool("flood", flood_args(
                target.port, mode="tcp", count=a.concurrency, sources=sources, procs=a.procs, duration=a.duration,
                reconnect=True, max_attempts=a.max_attempts, concurrency=a.concurrency), self.workdir)
        self.client_used = "bench/hammer.c" if binary else "bench/flood.py"
        report = flood.result(a.duration + 30)
        report["_offset"] = report["t0_monotonic"] - t0
        cpu = target.cpu() - cpu0
        self.after = target.scrape() or {}
        samples = sampler.stop()
        done = sum(v for k, v in report["outcomes"].items() if not k.startswith("connect:") and k != "client")
        elapsed = report["elapsed"] or 1.0
        metrics = {
            "conns_per_s": done / elapsed,
            "server_cpu_s": cpu,
            "server_cpu_share": cpu / elapsed,
            "per_server_cpu_s": done / cpu if cpu else math.nan,
            "connect_errors": sum(v for k, v in report["outcomes"].items() if k.startswith("connect:")),
        }
        return metrics, report, samples

    def run_once(self) -> dict[str, Any]:
        target = Target(BARE, self.workdir)
        try:
            metrics, report, samples = self.hammer(target)
        finally:
            target.stop()
        return {"metrics": {BARE: metrics}, "series": {BARE: {"flood": report, "samples": samples}}}

    def setup(self) -> list[str]:
        a = self.args
        return [
            f"Client: {_client_text(a)}, {a.concurrency} connections in flight from one source (127.0.0.2), "
            f"{a.duration:g} s: connect, wait for the server's answer or close, close, reconnect. "
            "Server and client on different CPUs.",
            "Server: `bench/bare_server.py` (uvloop, non-blocking listener, accept() in batches of 64, close).",
            "conns_per_s is what the client completed per second (client-bound on 2 cores); "
            "per_server_cpu_s is connections per CPU-second of the server process, the figure that does not "
            "depend on how fast the client is.",
        ]


def _client_text(a: argparse.Namespace) -> str:
    if a.client == "c":
        return "`bench/hammer.c` (epoll, non-blocking connects; a Python client tops out near 12,000/s here)"
    return f"`bench/flood.py --mode tcp --reconnect` ({a.procs} processes)"


class Shed(Ceiling):
    name = "shed"
    title = "2. Shed rate: over-cap connections refused per second"
    targets = (BARE, GWS)
    goal = "guarded-ws sheds at >= 50% of the ceiling"

    def run_once(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metrics": {}, "series": {}}
        for kind in self.targets:
            target = Target(kind, self.workdir)
            try:
                if kind == GWS:
                    warm_up(target, self.workdir, 50)
                metrics, report, samples = self.hammer(target)
                if kind == GWS:
                    key = "rejected:per_source_cap"
                    refused = self.after.get(key, 0.0) - self.before.get(key, 0.0)
                    elapsed = report["elapsed"] or 1.0
                    metrics["refused_per_s"] = refused / elapsed
                    metrics["refused_per_server_cpu_s"] = refused / metrics["server_cpu_s"] if metrics["server_cpu_s"] else math.nan
                    metrics["http_429_seen_per_s"] = report["outcomes"].get("http:429", 0) / elapsed
            finally:
                target.stop()
            out["metrics"][kind] = metrics
            out["series"][kind] = {"flood": report, "samples": samples}
        if len(out["metrics"]) < 2:
            return out
        b, g = out["metrics"][BARE], out["metrics"][GWS]
        out["metrics"]["ratio"] = {
            "refused_per_s / ceiling conns_per_s": g["refused_per_s"] / b["conns_per_s"] if b["conns_per_s"] else math.nan,
            "refused per server CPU-s / ceiling per server CPU-s": (
                g["refused_per_server_cpu_s"] / b["per_server_cpu_s"] if b["per_server_cpu_s"] else math.nan
            ),
        }
        return out

    def setup(self) -> list[str]:
        a = self.args
        return [
            f"Same client as the ceiling, against each server in turn: {_client_text(a)}, "
            f"{a.concurrency} connections in flight, all from ONE source (127.0.0.2), {a.duration:g} s. "
            "Server and client on different CPUs.",
            "guarded-ws (default configuration: 32 pending per source): the first 32 are admitted and stay silent "
            "(until the 5 s handshake deadline, then a newcomer takes the slot); every other connection is over "
            "the per-source cap and gets `429` + close right after accept(). refused_per_s counts "
            "`guarded_ws_connections_rejected_total{reason=\"per_source_cap\"}`.",
            "The bare server (ceiling) only accepts and closes.",
        ]

    def headline(self, summary: dict[str, dict[str, float]]) -> list[str]:
        r = summary.get("ratio", {})
        return [
            f"guarded-ws refuses {summary[GWS]['refused_per_s']:,.0f} over-cap connections/s, "
            f"{r.get('refused_per_s / ceiling conns_per_s', math.nan):.0%} of the bare server's "
            f"{summary[BARE]['conns_per_s']:,.0f}/s with the same client; per server CPU-second "
            f"{summary[GWS]['refused_per_server_cpu_s']:,.0f} vs {summary[BARE]['per_server_cpu_s']:,.0f} "
            f"({r.get('refused per server CPU-s / ceiling per server CPU-s', math.nan):.0%})."
        ]


class Flood(Scenario):
    name = "flood"
    title = "3. Legitimate users while 20,000 pending connections churn"
    targets = (GWS, NAIVE)
    goal = "legitimate success >= 99.9% and p99 connect+auth <= 100 ms"

    def ratio(self, g: dict[str, float], n: dict[str, float]) -> dict[str, float]:
        return {
            "success (guarded-ws - naive, points)": 100 * (g["legit_success"] - n["legit_success"]),
            "p99 naive / guarded-ws": n["p99_ms"] / g["p99_ms"] if g["p99_ms"] else math.nan,
        }

    def one(self, kind: str) -> tuple[dict[str, float], dict[str, Any]]:
        a = self.args
        target = Target(kind, self.workdir)
        try:
            warm_up(target, self.workdir, 50)
            t0 = time.monotonic()
            sampler = Sampler(target, t0)
            total = a.before + a.duration + a.after
            legit = Tool("legit", flood_args(target.port, rate=a.legit_rate, duration=total, timeout=a.legit_timeout,
                                             sources=50), self.workdir, role="probe")
            time.sleep(a.before)
            flood_start = time.monotonic() - t0
            overflows0 = listen_overflows()
            flood = Tool("flood", flood_args(
                target.port, mode=a.mode, count=a.count, sources=a.sources, procs=a.procs, duration=a.duration,
                reconnect=True, hold=a.hold, concurrency=a.concurrency, rate=a.flood_rate), self.workdir)
            f = flood.result(a.duration + 60)
            overflows = listen_overflows() - overflows0
            f["_offset"] = f["t0_monotonic"] - t0
            flood_end = time.monotonic() - t0
            lg = legit.result(a.after + a.legit_timeout + 30)
            samples = sampler.stop()
        finally:
            target.stop()
        shift = lg["t0_monotonic"] - t0
        records = [[r[0] + shift, *r[1:]] for r in lg["records"]]
        under = [r for r in records if flood_start <= r[0] <= flood_end]
        s = _legit_summary(under)
        # The same without the last 2 s, when the flooder drops all its sockets at once (a stall of its own).
        steady = _legit_summary([r for r in under if r[0] <= flood_start + a.duration - 2])
        calm = _legit_summary([r for r in records if r[0] < flood_start])
        metrics = {
            "legit_attempts": s["attempts"],
            "legit_success": s["success"],
            "p50_ms": s["p50"] * 1000,
            "p99_ms": s["p99"] * 1000,
            "steady_success": steady["success"],
            "steady_p99_ms": steady["p99"] * 1000,
            "calm_p50_ms": calm["p50"] * 1000,
            "connect_p50_ms": s["connect_p50"] * 1000,
            "connect_p99_ms": s["connect_p99"] * 1000,
            "upgrade_p99_ms": s["upgrade_p99"] * 1000,
            "auth_p99_ms": s["auth_p99"] * 1000,
            "flood_peak_open": f["peak"]["open"],
            "flood_connects_per_s": f["attempts_per_s"],
            "server_peak_rss_mb": max((x["rss"] for x in samples), default=0) / 2**20,
            "server_cpu_share": _cpu_share(samples, flood_start, flood_end),
            "listen_overflows": overflows,
        }
        if kind == GWS:
            for key in ("evicted:auth", "evicted:handshake", "expired:auth", "expired:handshake",
                        "rejected:per_source_cap", "rejected:global_cap"):
                metrics[key] = delta(samples, key)
            metrics["peak_pending"] = max((x["metrics"].get("pending:handshake", 0) + x["metrics"].get("pending:auth", 0)
                                           for x in samples if "metrics" in x), default=0)
            metrics["peak_loop_lag_ms"] = 1000 * max((x["metrics"].get("loop_lag", 0) for x in samples if "metrics" in x),
                                                     default=0)
        series = {"legit": records, "flood": f, "flood_window": [flood_start, flood_end], "samples": samples,
                  "failures": s["failures"], "command": flood.command}
        return metrics, series

    def setup(self) -> list[str]:
        a = self.args
        return [
            f"Attack: `bench/flood.py --mode {a.mode} --count {a.count} --sources {a.sources} --procs {a.procs} "
            f"--reconnect --hold {a.hold:g} --duration {a.duration:g}`: tries to hold {a.count:,} pending "
            f"connections (half idle TCP, half upgraded and silent) from {a.sources} sources (127.0.x.y), replacing "
            f"every one the server closes and closing its own after {a.hold * 0.5:g}..{a.hold * 1.5:g} s (churn).",
            f"Legitimate users: `bench/legit.py --rate {a.legit_rate:g}` from 50 other sources (127.1.0.x): connect, "
            f"upgrade, token, `authenticated` reply, one echo, close; timeout {a.legit_timeout:g} s. "
            f"{a.before:g} s calm, {a.duration:g} s of flood, {a.after:g} s of recovery; figures are over the "
            "sessions started while the flood ran; steady_* leave out the last 2 s, when the flooder drops "
            "all its sockets at once.",
            "guarded-ws runs its default configuration: with RLIMIT_NOFILE 20,000 (the hard limit here) that is "
            "9,968 pending (32 per source), evict-oldest, 5 s deadlines. The naive server: stock websockets serve(), "
            "no caps, no authentication deadline.",
        ]

    def headline(self, summary: dict[str, dict[str, float]]) -> list[str]:
        g, n = summary[GWS], summary[NAIVE]
        return [
            f"Under the flood, legitimate success: guarded-ws {g['legit_success']:.2%} "
            f"(p50 {g['p50_ms']:.1f} ms, p99 {g['p99_ms']:.1f} ms) vs naive {n['legit_success']:.2%} "
            f"(p50 {n['p50_ms']:.1f} ms, p99 {n['p99_ms']:.1f} ms)."
        ]


class Memory(Scenario):
    name = "memory"
    title = "4. Memory per pending and per authenticated connection"
    targets = (GWS, NAIVE)
    goal = "<= 4 KiB per pending connection"

    def one(self, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
        metrics: dict[str, Any] = {}
        series: dict[str, Any] = {}
        for mode in self.args.kinds.split(","):
            m, series[mode] = self.one_kind(kind, mode)
            metrics.update({f"{mode}_{key}": value for key, value in m.items()})
        return metrics, series

    def ratio(self, g: dict[str, float], n: dict[str, float]) -> dict[str, float]:
        return {
            f"{mode} KiB naive / guarded-ws": n[f"{mode}_kib_per_conn"] / g[f"{mode}_kib_per_conn"]
            for mode in self.args.kinds.split(",")
            if g.get(f"{mode}_kib_per_conn")
        }

    def one_kind(self, kind: str, mode: str) -> tuple[dict[str, float], dict[str, Any]]:
        a = self.args
        n = a.auth_count if mode == "auth" else a.count
        settings: dict[str, Any] = {}
        if kind == GWS:
            # Deadlines out of the way while measuring; caps that fit N in 20,000 descriptors.
            settings = {"limits.handshake_timeout": 120, "limits.auth_timeout": 120}
            if mode == "auth":
                settings.update({"limits.max_pending_total": 2000, "limits.max_connections_total": n + 500,
                                 "limits.max_connections_per_subject": 64})
            else:
                settings.update({"limits.max_pending_total": n + 500, "limits.max_connections_total": 400})
        target = Target(kind, self.workdir, settings)
        key = {"tcp": "open", "slowloris": "open", "upgrade": "upgraded", "auth": "authed"}[mode]
        try:
            warm_up(target, self.workdir, 200)
            time.sleep(0.5)
            rss0 = steady_rss(target)
            t0 = time.monotonic()
            sampler = Sampler(target, t0)
            flood = Tool("flood", flood_args(target.port, mode=mode, count=n, sources=a.sources, procs=a.procs,
                                             duration=a.duration, concurrency=256), self.workdir)
            full = flood.wait_until(lambda p: p.get(key, 0) >= n, a.duration - 3)
            time.sleep(0.6)  # one more progress tick, and the server's last allocations
            rss1 = steady_rss(target)
            held = flood.latest().get(key, 0)
            t_measured = time.monotonic() - t0
            flood.stop()
            f = flood.result(30)
            f["_offset"] = f["t0_monotonic"] - t0
            samples = sampler.stop()
        finally:
            target.stop()
        metrics = {
            "held": held,
            "rss_delta_mb": (rss1 - rss0) / 2**20,
            # Below 90% of N the server closed part of the flood before the reading (naive's 10 s open
            # timeout): what it has not given back would be charged to too few connections.
            "kib_per_conn": (rss1 - rss0) / 1024 / held if held >= 0.9 * n else math.nan,
            "reached_n": 1.0 if full else 0.0,
        }
        return metrics, {"flood": f, "samples": samples, "rss0": rss0, "rss1": rss1, "t_measured": t_measured}

    def setup(self) -> list[str]:
        a = self.args
        return [
            f"For each target and kind, a fresh server: 200 legitimate sessions to warm it up, RSS (median of 5 "
            f"reads of /proc/PID/statm), then `bench/flood.py --mode KIND --count N --sources {a.sources} --procs "
            f"{a.procs}` opens N connections and holds them; once the flood holds N, RSS again; figure = RSS delta / "
            f"connections held. N = {a.count:,} for tcp (idle TCP, nothing sent), upgrade (101 received, then "
            f"silent) and slowloris (1 byte/s of a request that never ends); N = {a.auth_count:,} for auth "
            "(authenticated, then idle; keepalive pings answered).",
            "N is below 20,000 because RLIMIT_NOFILE's hard limit here is 20,000 descriptors per process, the "
            "server's listener and admin port included.",
            "guarded-ws: deadlines raised to 120 s for the measurement, caps set so that N fits (max_pending_total "
            "N+500 for pending kinds; max_connections_total N+500 for auth). The naive server keeps its defaults; "
            "its 10 s open timeout closes idle TCP connections after 10 s, so they are measured before that.",
        ]

    def headline(self, summary: dict[str, dict[str, float]]) -> list[str]:
        g, n = summary[GWS], summary[NAIVE]
        parts = []
        for mode in self.args.kinds.split(","):
            if f"{mode}_kib_per_conn" in g:
                parts.append(f"{mode}: guarded-ws {g[f'{mode}_kib_per_conn']:.2f} KiB vs naive "
                             f"{n[f'{mode}_kib_per_conn']:.2f} KiB")
        return ["Per connection: " + "; ".join(parts) + "."]


class Throughput(Scenario):
    name = "throughput"
    title = "5. Handshake + auth + one echo + close per second, no attack"
    targets = (GWS, NAIVE)
    goal = "guarded-ws >= 1.5x the naive server"

    def run_once(self) -> dict[str, Any]:
        a = self.args
        out: dict[str, Any] = {"metrics": {}, "series": {}}
        for kind in self.targets:
            target = Target(kind, self.workdir)
            try:
                warm_up(target, self.workdir, 200)
                t0 = time.monotonic()
                sampler = Sampler(target, t0)
                cpu0 = target.cpu()
                legit = Tool("legit", flood_args(target.port, concurrency=a.concurrency, procs=a.procs,
                                                 duration=a.duration, sources=50), self.workdir)
                r = legit.result(a.duration + 40)
                cpu = target.cpu() - cpu0
                samples = sampler.stop()
            finally:
                target.stop()
            out["metrics"][kind] = {
                "sessions_per_s": r["sessions_per_s"],
                "server_cpu_s": cpu,
                "server_cpu_share": cpu / r["elapsed"] if r["elapsed"] else math.nan,
                "sessions_per_server_cpu_s": r["sessions"] / cpu if cpu else math.nan,
                "p50_ms": r["latency"]["p50"] * 1000,
                "p99_ms": r["latency"]["p99"] * 1000,
                "failures": sum(r["failures"].values()),
            }
            out["series"][kind] = {"legit": r, "samples": samples}
        if len(out["metrics"]) < 2:
            return out
        g, n = out["metrics"][GWS], out["metrics"][NAIVE]
        out["metrics"]["ratio"] = {
            "sessions/s guarded-ws / naive": g["sessions_per_s"] / n["sessions_per_s"] if n["sessions_per_s"] else math.nan,
            "sessions per server CPU-s guarded-ws / naive": (
                g["sessions_per_server_cpu_s"] / n["sessions_per_server_cpu_s"]
                if n["sessions_per_server_cpu_s"] else math.nan
            ),
        }
        return out

    def setup(self) -> list[str]:
        a = self.args
        return [
            f"Client: `bench/legit.py --concurrency {a.concurrency} --procs {a.procs} --duration {a.duration:g}`, "
            "50 sources: each session connects, upgrades, sends its token, waits for `authenticated`, sends one "
            "message, waits for the echo, sends a close frame and waits for the server's. Same client, same "
            "machine, one server after the other.",
            "sessions_per_s is what the client completed per second (the client shares the 2 cores with the "
            "server); sessions_per_server_cpu_s divides by the CPU time the server process used, which does not "
            "depend on the client's speed.",
        ]

    def headline(self, summary: dict[str, dict[str, float]]) -> list[str]:
        r = summary.get("ratio", {})
        return [
            f"guarded-ws {summary[GWS]['sessions_per_s']:,.0f} sessions/s vs naive "
            f"{summary[NAIVE]['sessions_per_s']:,.0f} ({r.get('sessions/s guarded-ws / naive', math.nan):.2f}x); "
            f"per server CPU-second {summary[GWS]['sessions_per_server_cpu_s']:,.0f} vs "
            f"{summary[NAIVE]['sessions_per_server_cpu_s']:,.0f} "
            f"({r.get('sessions per server CPU-s guarded-ws / naive', math.nan):.2f}x)."
        ]


class Deadline(Scenario):
    name = "deadline"
    title = "6. Deadline precision: lateness past auth_timeout with ~20,000 pending"
    targets = (GWS, NAIVE)
    goal = "p99 lateness <= 100 ms"

    def one(self, kind: str) -> tuple[dict[str, float], dict[str, Any]]:
        a = self.args
        settings = {"limits.max_pending_total": a.count + 500, "limits.max_connections_total": 400,
                    "limits.auth_timeout": a.auth_timeout} if kind == GWS else {}
        target = Target(kind, self.workdir, settings)
        try:
            warm_up(target, self.workdir, 50)
            t0 = time.monotonic()
            sampler = Sampler(target, t0)
            flood = Tool("flood", flood_args(target.port, mode="upgrade", count=a.count, sources=a.sources,
                                             procs=a.procs, duration=a.duration, reconnect=True, concurrency=256),
                         self.workdir)
            flood.wait_until(lambda p: p.get("upgraded", 0) >= 0.95 * a.count, 10)
            probe = Tool("flood", flood_args(target.port, mode="upgrade", count=a.probes, sources=10,
                                             source_base=wire.PROBE_BASE, duration=a.duration - 3,
                                             reconnect=True, rate=a.probes / a.auth_timeout), self.workdir,
                         role="probe")
            f = flood.result(a.duration + 60)
            p = probe.result(a.duration + 30)
            f["_offset"] = f["t0_monotonic"] - t0
            p["_offset"] = p["t0_monotonic"] - t0
            samples = sampler.stop()
        finally:
            target.stop()
        timeout = a.auth_timeout if kind == GWS else math.nan
        metrics: dict[str, float] = {}
        for name, report in (("probe", p), ("flood", f)):
            closed = report["closed_after"].get("ws:4408", {"n": 0})
            metrics[f"{name}_closed_4408"] = closed["n"]
            for q in ("p50", "p99", "max"):
                metrics[f"{name}_late_{q}_ms"] = (closed[q] - timeout) * 1000 if closed["n"] else math.nan
            metrics[f"{name}_early_min_ms"] = (closed["min"] - timeout) * 1000 if closed["n"] else math.nan
        metrics["flood_peak_upgraded"] = f["peak"]["upgraded"]
        metrics["server_cpu_share"] = _cpu_share(samples, 0.0, math.inf)
        metrics["server_closed_any"] = float(sum(v for k, v in f["outcomes"].items() if k not in ("client",)))
        if kind == GWS:
            metrics["peak_pending"] = max((x["metrics"].get("pending:auth", 0) + x["metrics"].get("pending:handshake", 0)
                                           for x in samples if "metrics" in x), default=0)
            metrics["peak_loop_lag_ms"] = 1000 * max((x["metrics"].get("loop_lag", 0) for x in samples
                                                      if "metrics" in x), default=0)
        return metrics, {"flood": f, "probe": p, "samples": samples}

    def setup(self) -> list[str]:
        a = self.args
        return [
            f"`bench/flood.py --mode upgrade --count {a.count} --sources {a.sources} --procs {a.procs} --reconnect "
            f"--duration {a.duration:g}`: {a.count:,} upgraded, silent connections, each replaced as soon as the "
            f"server closes it, so ~{a.count:,} stay pending and ~{a.count / a.auth_timeout:,.0f} reach their "
            "deadline every second.",
            f"Probes: a second, lightly loaded flooder keeps {a.probes} more such connections from 10 other sources; "
            "lateness = (close frame received - 101 received) - auth_timeout, client clocks. The probe figure is "
            "the headline (its event loop is idle, so it measures the server); the flood's own figure includes its "
            f"loop's lag with ~{a.count // max(1, a.procs):,} sockets per process.",
            f"guarded-ws: auth_timeout {a.auth_timeout:g} s, max_pending_total {a.count + 500:,} (so the flood fits "
            "and nothing is evicted). The naive server has no authentication deadline.",
        ]

    def headline(self, summary: dict[str, dict[str, float]]) -> list[str]:
        g, n = summary[GWS], summary[NAIVE]
        return [
            f"guarded-ws closes idle connections {g['probe_late_p50_ms']:.0f} ms (p50) / {g['probe_late_p99_ms']:.0f} ms "
            f"(p99) / {g['probe_late_max_ms']:.0f} ms (max) after auth_timeout (probes; the flood's own view: p99 "
            f"{g['flood_late_p99_ms']:.0f} ms). The naive server closed {n['server_closed_any']:.0f} of them: it has "
            "no deadline."
        ]


SCENARIOS: dict[str, type[Scenario]] = {
    cls.name: cls for cls in (Ceiling, Shed, Flood, Memory, Throughput, Deadline)
}


def _legit_summary(records: list[list[Any]]) -> dict[str, Any]:
    ok = [r for r in records if r[1]]
    lat = [r[2] for r in ok]
    return {
        "attempts": len(records),
        "success": len(ok) / len(records) if records else math.nan,
        "p50": wire.percentile(lat, 50),
        "p99": wire.percentile(lat, 99),
        # Where the time goes: TCP connect (accept queue), then to the 101, then to `authenticated`.
        "connect_p50": wire.percentile([r[5] for r in ok], 50),
        "connect_p99": wire.percentile([r[5] for r in ok], 99),
        "upgrade_p99": wire.percentile([r[6] - r[5] for r in ok], 99),
        "auth_p99": wire.percentile([r[2] - r[6] for r in ok], 99),
        "failures": dict(Counter(r[4] for r in records if not r[1]).most_common()),
    }


# Report

def machine() -> dict[str, str]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    return {
        "date": sh("date"),
        "nproc": sh("nproc"),
        "free": sh("free -h"),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
        "kernel": sh("uname -r"),
        "python": sys.version.split()[0],
        "nofile": "%d/%d" % resource.getrlimit(resource.RLIMIT_NOFILE),
        "loadavg": sh("cat /proc/loadavg"),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median over runs of every number, target by target."""
    summary: dict[str, dict[str, float]] = {}
    for target in runs[0]["metrics"]:
        names = runs[0]["metrics"][target].keys()
        summary[target] = {name: wire.median(r["metrics"][target].get(name, math.nan) for r in runs) for name in names}
    return summary


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and not value.is_integer():
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.4f}"
    return f"{int(value):,}"


def write_report(scenario: Scenario, runs: list[dict[str, Any]], out: Path, command: str,
                 info: dict[str, str]) -> Path:
    summary = summarize(runs)
    plots = make_plots(scenario, runs[-1], out)
    lines = [f"# {scenario.title}", ""]
    lines += ["## Summary", ""]
    try:
        lines += [f"- {line}" for line in scenario.headline(summary)]
    except (KeyError, ValueError, TypeError):
        lines.append("- (a partial run: see the tables)")
    if scenario.goal:
        lines.append(f"- Goal (issue 4): {scenario.goal}.")
    lines += ["", f"## Results (median of {len(runs)} run{'s' if len(runs) > 1 else ''})", ""]
    targets = [t for t in summary if t != "ratio"]
    names = sorted({name for t in targets for name in summary[t]}, key=lambda n: list(summary[targets[0]]).index(n)
                   if n in summary[targets[0]] else 1000)
    lines.append("| figure | " + " | ".join(targets) + " |")
    lines.append("| --- | " + " | ".join("---:" for _ in targets) + " |")
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_fmt(summary[t].get(name, math.nan)) for t in targets) + " |")
    if "ratio" in summary:
        lines += ["", "| ratio | value |", "| --- | ---: |"]
        lines += [f"| {name} | {_fmt(value)} |" for name, value in summary["ratio"].items()]
    lines += ["", "## Runs", ""]
    lines.append("| run | target | " + " | ".join(names) + " |")
    lines.append("| --- | --- | " + " | ".join("---:" for _ in names) + " |")
    for i, run in enumerate(runs, 1):
        for t in targets:
            lines.append(f"| {i} | {t} | " + " | ".join(_fmt(run["metrics"][t].get(n, math.nan)) for n in names) + " |")
    lines += ["", "## Setup", ""]
    lines += [f"- {line}" for line in scenario.setup()]
    lines += ["", "## Plots", "", f"From the last run ({len(runs)}).", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Command", "", "```", command, "```", "", "## Machine", ""]
    lines += [f"- date: {info['date']}", f"- nproc: {info['nproc']} ({info['cpu']})", f"- kernel: {info['kernel']}, "
              f"Python {info['python']}, RLIMIT_NOFILE {info['nofile']}", f"- load average at start: {info['loadavg']}",
              "- free -h:", "", "```", info["free"], "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# Plots

COLORS = {GWS: "tab:blue", NAIVE: "tab:red", BARE: "tab:gray"}


def make_plots(scenario: Scenario, run: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    series = run["series"]
    paths = []
    legit = {t: s for t, s in series.items() if isinstance(s, dict) and "legit" in s and isinstance(s["legit"], list)}
    if legit:
        paths.append(_plot_legit(legit, out / f"{scenario.name}-legit.png"))
    paths.append(_plot_pending(scenario, series, out / f"{scenario.name}-pending.png"))
    paths.append(_plot_rejections(scenario, series, out / f"{scenario.name}-rejections.png"))
    if scenario.name == "throughput":
        paths.append(_plot_throughput(series, out / "throughput-sessions.png"))
    if scenario.name == "memory":
        paths.append(_plot_memory(series, out / "memory-rss.png"))
    return paths


def _plot_legit(legit: dict[str, dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for target, s in legit.items():
        buckets: dict[int, list[list[Any]]] = {}
        for r in s["legit"]:
            buckets.setdefault(int(r[0]), []).append(r)
        xs = sorted(buckets)
        ax1.plot(xs, [100 * sum(1 for r in buckets[x] if r[1]) / len(buckets[x]) for x in xs],
                 color=COLORS.get(target), label=target)
        for q, style in ((50, "-"), (99, "--")):
            ys = [1000 * wire.percentile([r[2] for r in buckets[x] if r[1]], q) for x in xs]
            ax2.plot(xs, ys, style, color=COLORS.get(target), label=f"{target} p{q}")
        if "flood_window" in s:
            a, b = s["flood_window"]
            ax1.axvspan(a, b, color=COLORS.get(target), alpha=0.06)
            ax2.axvspan(a, b, color=COLORS.get(target), alpha=0.06)
    ax1.set_ylabel("legitimate success (%)")
    ax1.set_ylim(-2, 102)
    ax1.legend(loc="lower left")
    ax1.set_title("Legitimate sessions per 1 s (shaded: flood running)")
    ax2.set_yscale("log")
    ax2.set_ylabel("connect+auth latency (ms)")
    ax2.set_xlabel("seconds since start")
    ax2.axhline(100, color="black", linewidth=0.6, linestyle=":")
    ax2.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _groups(target: str, s: Any) -> list[tuple[str, dict[str, Any]]]:
    """(label, {"samples", "flood", "probe"...}) of one target: one group, or one per kind (memory)."""
    if not isinstance(s, dict):
        return []
    if "samples" in s:
        return [(target, s)]
    return [(f"{target} {key}", value) for key, value in s.items() if isinstance(value, dict) and "samples" in value]


def _flood_reports(group: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(key, group[key]) for key in ("flood", "probe") if isinstance(group.get(key), dict)
            and "series" in group[key]]


def _plot_pending(scenario: Scenario, series: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    drew = False
    for target, s in series.items():
        for label, group in _groups(target, s):
            samples = group["samples"]
            with_metrics = [x for x in samples if "metrics" in x]
            if with_metrics:
                t = [x["t"] for x in with_metrics]
                hs = [x["metrics"].get("pending:handshake", 0) for x in with_metrics]
                au = [x["metrics"].get("pending:auth", 0) for x in with_metrics]
                ax.stackplot(t, hs, au, labels=[f"{label} pending: handshake", f"{label} pending: auth"],
                             colors=["#9ecae1", "#3182bd"], alpha=0.5)
                cap = with_metrics[-1]["metrics"].get("limit:max_pending_total")
                if cap:
                    ax.axhline(cap, color="black", linestyle="--", linewidth=1,
                               label=f"{label} max_pending_total ({cap:,.0f})")
                per = with_metrics[-1]["metrics"].get("limit:max_pending_per_source")
                sources = getattr(scenario.args, "sources", 0)
                if per and sources and cap and per * sources < 3 * cap and scenario.name == "flood":
                    ax.axhline(per * sources, color="gray", linestyle=":", linewidth=1,
                               label=f"per-source cap x {sources} sources ({per * sources:,.0f})")
                drew = True
            for name, report in _flood_reports(group):
                shift = report.get("_offset", 0.0)
                pts = report["series"]
                ax.plot([p["t"] + shift for p in pts], [p["open"] for p in pts], color=COLORS.get(target),
                        linewidth=1.2, linestyle="-" if name == "flood" else ":",
                        label=f"{label}: {name} holds (client view)")
                drew = True
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("connections")
    ax.set_title("Pending connections against their caps")
    if drew:
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_rejections(scenario: Scenario, series: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for target, s in series.items():
        for label, group in _groups(target, s):
            samples = [x for x in group["samples"] if "metrics" in x]
            if len(samples) < 2:
                continue
            keys = sorted({k for x in samples for k in x["metrics"]
                           if k.split(":")[0] in ("rejected", "evicted", "expired") or k == "auth:invalid"})
            t = [x["t"] for x in samples[1:]]
            for key in keys:
                rates = [(b["metrics"].get(key, 0) - a["metrics"].get(key, 0)) / max(1e-6, b["t"] - a["t"])
                         for a, b in zip(samples, samples[1:])]
                if any(rates):
                    ax1.plot(t, rates, label=f"{label} {key}")
    ax1.set_title("guarded-ws refusals per second, by reason")
    ax1.set_xlabel("seconds since start")
    ax1.set_ylabel("per second")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=7)
    # How the attackers' connections ended, per target.
    tallies: dict[str, Counter[str]] = {}
    for target, s in series.items():
        for _, group in _groups(target, s):
            for _, report in _flood_reports(group):
                tallies.setdefault(target, Counter()).update(report["outcomes"])
    outcomes = sorted({o for c in tallies.values() for o in c})
    width = 0.8 / max(1, len(tallies))
    for i, (target, counts) in enumerate(tallies.items()):
        ax2.barh([j + i * width for j in range(len(outcomes))], [counts.get(o, 0) for o in outcomes], height=width,
                 color=COLORS.get(target), label=target)
    ax2.set_yticks([j + width * (len(tallies) - 1) / 2 for j in range(len(outcomes))])
    ax2.set_yticklabels(outcomes, fontsize=7)
    ax2.set_xscale("symlog")
    ax2.set_title("How attack connections ended (client view)")
    if tallies:
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_throughput(series: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for target, s in series.items():
        per = s["legit"]["per_second"]
        ax.plot(range(len(per)), per, color=COLORS.get(target), label=target, marker="o")
    ax.set_xlabel("second")
    ax.set_ylabel("sessions completed")
    ax.set_title("Handshake + auth + echo + close per second")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_memory(series: dict[str, Any], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for target, kinds in series.items():
        for i, (mode, s) in enumerate(kinds.items()):
            samples = s["samples"]
            style = ["-", "--", ":", "-."][i % 4]
            ax.plot([x["t"] for x in samples], [(x["rss"] - s["rss0"]) / 2**20 for x in samples], style,
                    color=COLORS.get(target), label=f"{target} {mode}")
    ax.set_xlabel("seconds since the flood started")
    ax.set_ylabel("RSS above the warmed-up server (MiB)")
    ax.set_title("Server memory while the flood opens and holds its connections")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# Command line

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not put the server on CPU 0 and the load generators on the other CPUs")
    p.add_argument("--no-priority", dest="priority", action="store_false",
                   help="run servers and clients at the normal priority (default: nice -5, clients -10)")
    p.add_argument("--gws-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a guarded-ws configuration key for this run (repeatable), e.g. server.backlog=4096")
    p.add_argument("--targets", help="only these of the scenario's targets (comma list), for quick looks")
    p.add_argument("--out", help="report directory (default bench/out/SCENARIO-YYYYmmdd-HHMMSS)")
    p.add_argument("--duration", type=float, help="seconds of load in one run (scenario default)")
    p.add_argument("--count", type=int, help="attack connections (scenario default)")
    p.add_argument("--sources", type=int, default=800, help="attack sources")
    p.add_argument("--procs", type=int, default=2, help="attacker / client processes")
    p.add_argument("--concurrency", type=int, help="connections in flight (ceiling, shed, throughput)")
    p.add_argument("--max-attempts", type=int, default=2_000_000, help="ceiling/shed: connects in all, at most")
    p.add_argument("--client", choices=("c", "python"), default="c",
                   help="ceiling/shed: bench/hammer.c (compiled on the fly; falls back to python) or bench/flood.py")
    p.add_argument("--mode", default="tcp,upgrade", help="flood: attack modes")
    p.add_argument("--hold", type=float, default=10.0, help="flood: attackers close their own after ~this")
    p.add_argument("--flood-rate", type=float, default=0.0,
                   help="flood: new attack connections per second at most (0: as fast as the flooder can)")
    p.add_argument("--legit-rate", type=float, default=60.0, help="flood: legitimate sessions per second")
    p.add_argument("--legit-timeout", type=float, default=5.0, help="flood: a legitimate session's bound")
    p.add_argument("--before", type=float, default=3.0, help="flood: calm seconds before the attack")
    p.add_argument("--after", type=float, default=3.0, help="flood: recovery seconds after it")
    p.add_argument("--kinds", default="tcp,upgrade,auth", help="memory: connection kinds")
    p.add_argument("--auth-count", type=int, default=10000, help="memory: authenticated connections")
    p.add_argument("--auth-timeout", type=float, default=5.0, help="deadline: guarded-ws auth_timeout")
    p.add_argument("--probes", type=int, default=200, help="deadline: probe connections")
    return p


DEFAULTS = {
    "ceiling": {"duration": 10.0, "concurrency": 256, "count": 0},
    "shed": {"duration": 10.0, "concurrency": 256, "count": 0},
    "flood": {"duration": 22.0, "count": 20000, "concurrency": 512},
    "memory": {"duration": 25.0, "count": 19000},
    "throughput": {"duration": 10.0, "concurrency": 64},
    "deadline": {"duration": 22.0, "count": 19000},
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    for key, value in DEFAULTS[args.scenario].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    wire.raise_nofile()
    PIN["enabled"] = args.pin
    PIN["priority"] = args.priority
    if args.priority:
        _raise_session_priority()
    for item in args.gws_set:
        key, _, value = item.partition("=")
        EXTRA_SETTINGS[key] = value
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else BENCH / "out" / f"{args.scenario}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    info = machine()
    scenario = SCENARIOS[args.scenario](args, work)
    command = "python bench/run.py " + " ".join(shlex.quote(a) for a in argv)
    runs = []
    for i in range(args.runs):
        began = time.monotonic()
        result = scenario.run_once()
        load = float(Path("/proc/loadavg").read_text().split()[0])
        for target, metrics in result["metrics"].items():
            if target != "ratio":
                metrics["loadavg_1m_after"] = load  # other engineers' jobs share this machine
        runs.append(result)
        print(f"run {i + 1}/{args.runs} ({time.monotonic() - began:.0f} s): "
              + json.dumps(result["metrics"], default=str), flush=True)
    report = write_report(scenario, runs, out, command, info)
    (out / "results.json").write_text(json.dumps(
        {"scenario": args.scenario, "command": command, "machine": info, "summary": summarize(runs),
         "runs": [r["metrics"] for r in runs]}, indent=1, default=str))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
