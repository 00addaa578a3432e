"""``--workers N``: real worker processes on one SO_REUSEPORT port, under a real supervisor."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.sync.client import ClientConnection

from guarded_ws.config import ConfigError, load_config
from guarded_ws.supervisor import HUNG_AFTER, REFRESH_INTERVAL, Backoff

from support import (
    ServerProcess,
    frame,
    open_legit,
    read_close,
    read_response_head,
    source,
    status_of,
    tcp,
    upgrade_request,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL = "/usr/bin/promtool"


@pytest.fixture
def supervised(monkeypatch) -> Iterator:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")])))
    started: list[ServerProcess] = []

    def start(workers: int, *args: str) -> ServerProcess:
        server = ServerProcess("--workers", str(workers), "--app", "sample_apps:worker_pid", *args)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


def workers_of(server: ServerProcess) -> set[int]:
    pid = server.proc.pid
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def connect(server: ServerProcess, n: int) -> tuple[ClientConnection, int]:
    """An authenticated client from source n, and the pid of the worker that serves it."""
    ws = open_legit(server.port, source(n))
    return ws, json.loads(ws.recv(timeout=5))["pid"]


def scrape(server: ServerProcess) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        body = response.read()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    return samples, body


def auth(result: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("guarded_ws_auth_attempts_total", (("method", "token"), ("result", result)))


AUTHENTICATED = ("guarded_ws_authenticated_connections", ())
ACCEPTED = ("guarded_ws_connections_accepted_total", ())


@pytest.mark.slow
def test_connections_from_many_sources_reach_several_workers(supervised):
    server = supervised(3)
    workers = workers_of(server)
    assert len(workers) == 3
    clients = [connect(server, n) for n in range(2, 26)]
    serving = {pid for _, pid in clients}
    assert len(serving) > 1, "one worker took every connection"
    assert serving <= workers and server.proc.pid not in serving
    for ws, _ in clients:
        ws.close()


@pytest.mark.slow
def test_the_summed_metrics_are_what_the_clients_did(supervised):
    server = supervised(3)
    clients = [connect(server, n) for n in range(2, 14)]  # 12 authenticated, and they stay
    for n in range(20, 25):  # 5 bad credentials
        sock = tcp(server.port, source(n))
        sock.sendall(upgrade_request())
        assert status_of(read_response_head(sock)) == 101
        sock.sendall(frame(Opcode.TEXT, b"not-a-token"))
        assert read_close(sock) == 4401
        sock.close()
    assert len({pid for _, pid in clients}) > 1, "the sum must be over several workers"
    samples, body = scrape(server)
    assert samples[ACCEPTED] == 17
    assert samples[auth("ok")] == 12
    assert samples[auth("invalid")] == 5
    assert samples[AUTHENTICATED] == 12
    assert samples[("guarded_ws_auth_duration_seconds_count", (("method", "token"),))] == 12
    assert samples[("guarded_ws_workers", ())] == 3
    assert samples[("guarded_ws_limit", (("name", "auth_timeout"),))] == 5.0  # a deadline: not summed
    per_worker = {labels for name, labels in samples if name == "process_open_fds"}
    assert per_worker == {(("worker", w),) for w in ("0", "1", "2", "supervisor")}
    if os.path.exists(PROMTOOL):
        checked = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert checked.returncode == 0, checked.stderr.decode() + checked.stdout.decode()
    for ws, _ in clients:
        ws.close()


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_sums_stay_right(supervised):
    server = supervised(2)
    clients = [connect(server, n) for n in range(2, 14)]
    pids = [pid for _, pid in clients]
    victim = max(set(pids), key=pids.count)
    survivors = [ws for ws, pid in clients if pid != victim]
    before, _ = scrape(server)
    assert before[auth("ok")] == 12 and before[AUTHENTICATED] == 12

    os.kill(victim, signal.SIGKILL)
    server.wait_line("restarting in")
    wait_for(lambda: len(workers_of(server)) == 2 and victim not in workers_of(server), timeout=20, what="a new worker")
    wait_for(lambda: scrape(server)[0][AUTHENTICATED] == len(survivors), timeout=10, what="the gauge to drop")
    after, _ = scrape(server)
    assert after[auth("ok")] == 12, "a dead worker's counts must stay in the sum"
    assert after[ACCEPTED] == before[ACCEPTED]
    assert after[("guarded_ws_worker_restarts_total", ())] == 1
    for ws, pid in clients:
        if pid == victim:
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=5)
    # The survivors were never touched, and the replacement serves new clients.
    for ws in survivors:
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
    replacement = (workers_of(server) - set(pids)).pop()
    sources = iter(range(30, 250))

    def served_by_replacement() -> bool:  # once it listens, the kernel's hash sends it some sources
        ws, pid = connect(server, next(sources))
        ws.close()
        return pid == replacement

    wait_for(served_by_replacement, timeout=20, what="the new worker to get a connection")
    for ws in survivors:
        ws.close()


@pytest.mark.slow
def test_a_hung_worker_is_killed_and_replaced(supervised):
    server = supervised(2)
    hung = min(workers_of(server))
    os.kill(hung, signal.SIGSTOP)  # alive, holding its share of the port, answering nothing
    try:
        server.wait_line("has not answered", timeout=HUNG_AFTER + 2 * REFRESH_INTERVAL + 20)
        replaced = lambda: hung not in workers_of(server) and len(workers_of(server)) == 2  # noqa: E731
        wait_for(replaced, timeout=30, what="a new worker")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    samples, _ = scrape(server)
    assert samples[("guarded_ws_worker_restarts_total", ())] == 1, server.output
    ws, pid = connect(server, 2)
    assert pid in workers_of(server), server.output
    ws.close()


@pytest.mark.slow
def test_sigterm_drains_every_worker_with_1001(supervised):
    server = supervised(3)
    workers = workers_of(server)
    clients = [connect(server, n) for n in range(2, 14)]
    assert len({pid for _, pid in clients}) > 1
    server.proc.send_signal(signal.SIGTERM)
    for ws, _ in clients:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert server.wait(30) == 0
    assert not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in workers)


@pytest.mark.slow
def test_workers_do_not_outlive_a_killed_supervisor(supervised):
    server = supervised(2)
    workers = workers_of(server)
    ws, _ = connect(server, 2)
    server.proc.kill()  # no chance to stop its workers: they must notice by themselves
    server.wait(10)
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001  # drained, not dropped
    wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=20, what="the workers to exit")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


# The parts without processes: restart back-off, and the configuration check.


def test_backoff_doubles_while_a_worker_dies_young_and_resets_once_it_lived():
    backoff = Backoff(first=0.5, most=4.0, healthy_after=60.0)
    assert [backoff.delay(0.0, 1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(100.0, 200.0) == 0.5  # it had lived 100 s: a fresh start
    assert backoff.delay(200.0, 201.0) == 1.0


def test_single_use_across_workers_needs_a_shared_store():
    with pytest.raises(ConfigError) as error:
        load_config(None, environ={}, overrides={"server.workers": 2, "auth.single_use": True})
    assert error.value.key == "auth.replay_store"
    with pytest.raises(ConfigError):
        load_config(None, environ={}, overrides={"server.workers": 0})
    config = load_config(
        None,
        environ={},
        overrides={"server.workers": 2, "auth.single_use": True, "auth.replay_store": "redis://127.0.0.1:6379/0"},
    )
    assert config.server.workers == 2


def test_a_worker_that_cannot_start_stops_the_supervisor_with_status_1():
    env = {key: value for key, value in os.environ.items() if not key.startswith("GUARDED_WS_")}
    env["GUARDED_WS_SECRET"] = "a-secret-long-enough-for-hs256-0123456789"
    command = [sys.executable, "-m", "guarded_ws", "serve", "--port", "0", "--metrics-port", "0"]
    result = subprocess.run(
        [*command, "--workers", "2", "--app", "no_such_module:app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "exited during start-up" in result.stderr
    assert "(2 workers)" not in result.stderr  # the supervisor never said it was listening
