"""The Locust attack lab (bench/locustfile.py), run as Locust runs it: headless, in a subprocess.

Locust monkey-patches the standard library with gevent, so it never runs inside this
process. Each test runs several user classes in one Locust process for a few seconds
against a real server, then reads the CSV stats: against guarded-ws every ATTACK row
must succeed (the server defended itself); against the naive baseline
(bench/naive_server.py) the same rows must fail, which proves the scenarios can tell a
server that defends from one that does not.
"""

from __future__ import annotations

import csv
import os
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import SECRET, ServerProcess, scraped

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "bench" / "locustfile.py"
NAIVE_SERVER = ROOT / "bench" / "naive_server.py"

# The server's limits and what the scenarios expect, kept in step.
SERVER_ARGS = (
    "--set", "limits.auth_timeout=1",
    "--set", "limits.handshake_timeout=1",
    "--set", "limits.write_stall_timeout=1",
    "--set", "limits.max_preauth_bytes=1024",
    "--set", "server.allowed_origins=https://app.example",
)  # fmt: skip
EXPECTATIONS = {
    "GWS_AUTH_TIMEOUT": "1",
    "GWS_HANDSHAKE_TIMEOUT": "1",
    "GWS_WRITE_STALL_TIMEOUT": "1",
    "GWS_MAX_PREAUTH_BYTES": "1024",
    "GWS_MARGIN": "1",
    "GWS_ATTACK_SOURCES": "127.20.0.0/24",
    "GWS_LEGIT_SOURCES": "127.21.0.0/24",
}

BAD_TOKEN_KINDS = ("wrong_key", "expired", "alg_none", "garbage", "missing_sub", "not_utf8")
BAD_TOKENS = [f"bad_token:{kind}" for kind in BAD_TOKEN_KINDS]
ATTACK_ROWS = {
    "IdleFlood": ["idle_flood"],
    "AuthStaller": ["auth_staller"],
    "Slowloris": ["slowloris"],
    "BadTokenSpam": BAD_TOKENS,
    "OversizeFirstMessage": ["oversize_first_message"],
    "PingFlood": ["ping_flood"],
    "ForgedOrigin": ["forged_origin"],
    "ConnectCloseChurn": ["connect_close_churn"],
    "NeverReads": ["never_reads"],
}
LEGIT_STEPS = ("connect", "upgrade", "auth", "echo")
# What a server without defences lets through. Bad tokens and churn are left out: the
# baseline rejects bad tokens too (4401) and survives a small churn.
UNDEFENDED_BY_NAIVE = [
    "IdleFlood", "AuthStaller", "Slowloris", "OversizeFirstMessage", "PingFlood", "ForgedOrigin", "NeverReads",
]  # fmt: skip


@dataclass
class Run:
    returncode: int
    output: str
    rows: dict[tuple[str, str], tuple[int, int]]  # (type, name) -> (requests, failures)
    failures: str  # the failures CSV, for assertion messages
    html: Path

    def explain(self) -> str:
        return f"failures:\n{self.failures}\nlocust output (tail):\n{self.output[-3000:]}"

    def assert_defended(self, names: list[str]) -> None:
        for name in names:
            requests, failures = self.rows.get(("ATTACK", name), (0, 0))
            assert requests > 0, f"no ATTACK row {name!r}\n{self.explain()}"
            assert failures == 0, f"ATTACK {name}: {failures}/{requests} failed\n{self.explain()}"

    def assert_legit_ok(self, suffix: str = "") -> None:
        for step in LEGIT_STEPS:
            requests, failures = self.rows.get(("WS", step + suffix), (0, 0))
            assert requests > 0, f"no WS row {step + suffix!r}\n{self.explain()}"
            assert failures == 0, f"WS {step + suffix}: {failures}/{requests} failed\n{self.explain()}"


def run_locust(
    tmp_path: Path,
    url: str,
    classes: list[str],
    *,
    seconds: float,
    per_class: int = 2,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Run:
    prefix = tmp_path / "stats"
    html = tmp_path / "report.html"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("GWS_", "LOCUST_", "GUARDED_WS_"))}
    child_env.update({"GUARDED_WS_SECRET": SECRET, "PYTHONUNBUFFERED": "1", **EXPECTATIONS, **(env or {})})
    users = per_class * len(classes)
    run_args = ("-u", str(users), "-r", str(users), "-t", f"{seconds}s") if "GWS_SHAPE" not in child_env else ()
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", url,
        "--headless", *run_args, "--csv", str(prefix), "--html", str(html),
        "--only-summary", "--loglevel", "WARNING", *args, *classes,
    ]  # fmt: skip
    proc = subprocess.run(
        command, env=child_env, cwd=tmp_path, capture_output=True, text=True, timeout=seconds + 60
    )
    rows: dict[tuple[str, str], tuple[int, int]] = {}
    stats = Path(f"{prefix}_stats.csv")
    assert stats.exists(), f"no CSV written (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    with stats.open() as fh:
        for row in csv.DictReader(fh):
            rows[(row["Type"], row["Name"])] = (int(row["Request Count"]), int(row["Failure Count"]))
    failures = Path(f"{prefix}_failures.csv")
    return Run(
        proc.returncode,
        proc.stdout + proc.stderr,
        rows,
        failures.read_text() if failures.exists() else "",
        html,
    )


@pytest.fixture(scope="module")
def guarded() -> Iterator[ServerProcess]:
    server = ServerProcess(*SERVER_ARGS)
    yield server
    server.kill()


class NaiveServer:
    """bench/naive_server.py as a child process, on any free port."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDED_WS_")}
        env.update({"GUARDED_WS_SECRET": SECRET, "PYTHONUNBUFFERED": "1"})
        self.proc = subprocess.Popen(
            [sys.executable, str(NAIVE_SERVER), "--host", "127.0.0.1", "--port", "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None
        threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
        seen = []
        self.port = 0
        for _ in range(100):  # bounded: a few lines within 20 s
            try:
                line = lines.get(timeout=20)
            except queue.Empty:
                break
            seen.append(line)
            if match := re.search(r"listening on ws://[^:]+:(\d+)/", line):
                self.port = int(match.group(1))
                break
        if not self.port:
            self.kill()
            raise AssertionError("naive server did not start:\n" + "".join(seen))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def test_guarded_ws_defends_against_every_attack(guarded, tmp_path):
    run = run_locust(tmp_path, f"ws://127.0.0.1:{guarded.port}/ws", ["LegitUser", *ATTACK_ROWS], seconds=7)
    for names in ATTACK_ROWS.values():
        run.assert_defended(names)
    run.assert_legit_ok()
    churn = run.rows.get(("CHURN", "connect_close"), (0, 0))
    assert churn[0] > 0 and churn[1] == 0, run.explain()
    assert run.returncode == 0, run.explain()
    assert run.html.stat().st_size > 0
    # The server saw the attacks the way the rows say it did.
    port = guarded.metrics_port
    assert scraped(port, "guarded_ws_deadline_expired_total", phase="auth") > 0
    assert scraped(port, "guarded_ws_deadline_expired_total", phase="handshake") > 0
    assert scraped(port, "guarded_ws_auth_attempts_total", method="token", result="too_large") > 0
    assert scraped(port, "guarded_ws_connections_rejected_total", reason="origin") > 0


def test_the_naive_baseline_fails_the_attack_rows(tmp_path):
    naive = NaiveServer()
    try:
        run = run_locust(tmp_path, f"ws://127.0.0.1:{naive.port}/ws", ["LegitUser", *UNDEFENDED_BY_NAIVE], seconds=6)
    finally:
        naive.kill()
    for cls in UNDEFENDED_BY_NAIVE:
        for name in ATTACK_ROWS[cls]:
            requests, failures = run.rows.get(("ATTACK", name), (0, 0))
            assert requests > 0, f"no ATTACK row {name!r}\n{run.explain()}"
            assert failures == requests, f"ATTACK {name}: {failures}/{requests} failed on the baseline\n{run.explain()}"
    run.assert_legit_ok()  # the baseline serves legitimate users when nobody floods it
    assert run.returncode != 0  # a server that does not defend fails the run


def test_flood_shape_runs_its_phases_in_distributed_mode(guarded, tmp_path):
    shape = {
        "GWS_SHAPE": "flood",
        "GWS_SHAPE_PHASES": "2,2,3,2",
        "GWS_SHAPE_LEGIT": "4",
        "GWS_SHAPE_ATTACKERS": "12",
        "GWS_SHAPE_ATTACK_CLASSES": "IdleFlood,Slowloris,BadTokenSpam,PingFlood,ConnectCloseChurn",
    }
    with socket.socket() as probe:  # a free port for the master: 5557 may be taken by another run
        probe.bind(("127.0.0.1", 0))
        master = str(probe.getsockname()[1])
    distributed = ("--processes", "2", "--master-bind-host", "127.0.0.1", "--master-bind-port", master, "--master-port", master)
    run = run_locust(tmp_path, f"ws://127.0.0.1:{guarded.port}/ws", [], seconds=9, env=shape, args=distributed)
    assert run.returncode == 0, run.explain()  # the shape ended the run by itself
    for phase in ("baseline", "flood", "recovery"):
        run.assert_legit_ok(f" @{phase}")
    run.assert_defended(["idle_flood", "slowloris", "ping_flood", "connect_close_churn"])
    attack_rows = [key for key in run.rows if key[0] == "ATTACK"]
    assert all(run.rows[key][1] == 0 for key in attack_rows), run.explain()
    assert not any(name.startswith(("forged_origin", "never_reads")) for _, name in attack_rows)  # not in the flood


def test_never_reads_against_an_app_that_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")])))
    server = ServerProcess(*SERVER_ARGS, "--app", "sample_apps:firehose")
    try:
        run = run_locust(tmp_path, f"ws://127.0.0.1:{server.port}/ws", ["NeverReads"], seconds=4)
    finally:
        server.kill()
    run.assert_defended(["never_reads"])
