"""guarded-ws scraped by a real Prometheus, through a short attack burst.

One setup for the whole module: a guarded-ws with small limits, a Prometheus
server (Debian's /usr/bin/prometheus) scraping its admin port every second and
loading grafana/alerts.yml, and a burst of attacks and legitimate sessions, each
outcome read by its client. The tests then ask Prometheus's HTTP API what it
saw: every counter moved by exactly what the burst did, the gauges came back to
zero, every dashboard query and alert expression evaluates, and the metrics
page never carries an address, a subject or a credential.

Everything waits by polling with a bound, never by sleeping a fixed time.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.frames import Opcode
from websockets.sync.client import connect

import support
from guarded_ws import metrics, tokens
from support import ServerThread, make_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboard.json"
ALERTS = GRAFANA / "alerts.yml"
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
JOB = "guarded-ws"

# The burst. Every attacker and legitimate client has its own source address,
# except the per-source cap attack, which needs several from one.
CAP = 3  # limits.max_pending_per_source
IDLE_EXTRA = 2  # idle after the upgrade, besides the CAP ones that fill a source
OVER_CAP = 2  # refused with 429 once a source holds CAP pending connections
SILENT = 2  # connect and send nothing: the handshake deadline answers 408
WRONG_KEY = 3  # signed with another secret: 4401, result "invalid"
GARBAGE = 1  # not a JWT at all: 4401, result "invalid"
EXPIRED = 2  # a valid signature, expired: 4401, result "expired"
OVERSIZE = 2  # a first message over max_preauth_bytes: 1009
WRONG_PATH = 2  # GET /admin: 404
LEGIT = 5  # full sessions: authenticate, one echo, close

IDLE = CAP + IDLE_EXTRA
BAD_TOKENS = WRONG_KEY + GARBAGE + EXPIRED
UPGRADED = IDLE + BAD_TOKENS + OVERSIZE + LEGIT

LEGIT_SUBJECTS = [f"legit-subject-Zq7vK{i}x" for i in range(LEGIT)]
ATTACK_SUBJECT = "attacker-subject-Wm4pR8"
WRONG_SECRET = "wrong-secret-for-guarded-ws-9876543210"
GARBAGE_TOKEN = "garbage-credential-Qz9rT4kLmW7"

# What the burst must leave on the counters (deltas), series by series: every series of the
# fixed label sets the server exports, 0 where the burst should not have moved it.
MOVED = {
    "guarded_ws_connections_rejected_total": {"per_source_cap": OVER_CAP, "path": WRONG_PATH},
    "guarded_ws_auth_attempts_total": {
        ("token", "ok"): LEGIT,
        ("token", "invalid"): WRONG_KEY + GARBAGE,
        ("token", "expired"): EXPIRED,
        ("token", "timeout"): IDLE,
        ("token", "too_large"): OVERSIZE,
    },
    "guarded_ws_deadline_expired_total": {"handshake": SILENT, "auth": IDLE},
    "guarded_ws_auth_duration_seconds_count": {"token": LEGIT},
}
EXPECTED_COUNTERS: dict[str, dict[tuple[tuple[str, str], ...], float]] = {
    "guarded_ws_connections_accepted_total": {
        (): IDLE + OVER_CAP + SILENT + BAD_TOKENS + OVERSIZE + WRONG_PATH + LEGIT,
    },
    "guarded_ws_connections_rejected_total": {
        (("reason", reason),): MOVED["guarded_ws_connections_rejected_total"].get(reason, 0)
        for reason in metrics.REJECT_REASONS
    },
    "guarded_ws_connections_evicted_total": {(("phase", phase),): 0 for phase in metrics.PENDING_PHASES},
    "guarded_ws_auth_attempts_total": {
        (("method", method), ("result", result)): MOVED["guarded_ws_auth_attempts_total"].get((method, result), 0)
        for method in metrics.AUTH_METHODS
        for result in tokens.RESULTS
    },
    "guarded_ws_deadline_expired_total": {
        (("phase", phase),): MOVED["guarded_ws_deadline_expired_total"].get(phase, 0)
        for phase in metrics.DEADLINE_PHASES
    },
    "guarded_ws_accept_errors_total": {(("errno", name),): 0 for name in metrics.ACCEPT_ERRNOS},
    "guarded_ws_handshake_duration_seconds_count": {(): UPGRADED},
    "guarded_ws_auth_duration_seconds_count": {
        (("method", method),): MOVED["guarded_ws_auth_duration_seconds_count"].get(method, 0)
        for method in metrics.AUTH_METHODS
    },
}
EXPECTED_GAUGES: dict[str, dict[tuple[tuple[str, str], ...], float]] = {
    "guarded_ws_authenticated_connections": {(): 0},
    "guarded_ws_pending_connections": {(("phase", phase),): 0 for phase in metrics.PENDING_PHASES},
    "guarded_ws_tracked_sources": {(): 0},
}


# Prometheus


class Prometheus:
    """A Prometheus server on loopback, scraping one target every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "rule_files:\n"
            f"  - {json.dumps(str(ALERTS))}\n"
            "scrape_configs:\n"
            f"  - job_name: {JOB}\n"
            "    static_configs:\n"
            f"      - targets: [{json.dumps(target)}]\n"
        )
        self.log_path = workdir / "prometheus.log"
        for _attempt in range(3):  # the free port we picked may be taken before Prometheus binds it
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}"
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [
                        PROMETHEUS,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready(timeout=20.0):
                return
            self.stop()
            if "address already in use" not in self.log():
                break
        raise AssertionError(f"Prometheus did not become ready:\n{self.log()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)  # poll interval, not a wait for a condition
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """The decoded JSON answer, errors included (Prometheus answers 400/422 with a JSON body)."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            return json.load(exc)

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        answer = self.api("query", **params)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def poll(self, predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for Prometheus: {what}")
            time.sleep(0.1)  # poll interval

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The burst


@dataclass
class Burst:
    outcomes: dict[str, list[Any]] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)
    tokens: list[str] = field(default_factory=list)

    def src(self, n: int) -> str:
        address = support.source(n)
        self.sources.add(address)
        return address


@dataclass
class Stack:
    server: ServerThread
    prometheus: Prometheus
    burst: Burst
    baseline: dict[str, dict[tuple[tuple[str, str], ...], float]]
    after: dict[str, dict[tuple[tuple[str, str], ...], float]]
    at: float  # evaluation time of a scrape taken once the server was quiet

    def page(self) -> tuple[str, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=5) as response:
            return response.headers["Content-Type"], response.read()


def _session(port: int, src: str, token: str, subject: str) -> str:
    """A legitimate client: authenticate with ``token``, one echo, a clean close."""
    with connect(
        f"ws://127.0.0.1:{port}/ws",
        sock=support.tcp(port, src),
        compression=None,
        proxy=None,
        open_timeout=5,
        close_timeout=5,
    ) as ws:
        ws.send(token)
        reply = json.loads(ws.recv(timeout=5))
        assert reply == {"type": "authenticated", "subject": subject}, reply
        ws.send("hello")
        return str(ws.recv(timeout=5))


def _close_code_after(sock: socket.socket, data: bytes) -> int | None:
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return support.read_close(sock)


def _run_burst(port: int) -> Burst:
    burst = Burst()
    out = burst.outcomes
    opened: list[socket.socket] = []
    try:
        # Idle after the upgrade: CAP from one source (filling its pending cap), a few more elsewhere.
        idle = [support.upgraded(port, burst.src(10)) for _ in range(CAP)]
        idle += [support.upgraded(port, burst.src(11 + i)) for i in range(IDLE_EXTRA)]
        opened += idle
        # The full source is refused before a byte is read: 429 with Retry-After.
        refused = [support.tcp(port, burst.src(10)) for _ in range(OVER_CAP)]
        opened += refused
        out["per_source_cap"] = [support.status_of(support.read_response_head(sock)) for sock in refused]
        # Connect and say nothing: the handshake deadline answers 408.
        silent = [support.tcp(port, burst.src(20 + i)) for i in range(SILENT)]
        opened += silent
        # Bad credentials, each on its own source.
        now = time.time()
        bad = [support.token(ATTACK_SUBJECT, key=WRONG_SECRET) for _ in range(WRONG_KEY)]
        bad += [GARBAGE_TOKEN] * GARBAGE
        bad += [support.token(ATTACK_SUBJECT, now=now - 7200, ttl=60) for _ in range(EXPIRED)]
        burst.tokens += bad
        out["bad_token"] = []
        for i, credential in enumerate(bad):
            sock = support.upgraded(port, burst.src(30 + i))
            opened.append(sock)
            out["bad_token"].append(_close_code_after(sock, support.frame(Opcode.TEXT, credential.encode())))
        # A first message over max_preauth_bytes (1024).
        out["oversize"] = []
        for i in range(OVERSIZE):
            sock = support.upgraded(port, burst.src(40 + i))
            opened.append(sock)
            out["oversize"].append(_close_code_after(sock, support.frame(Opcode.TEXT, b"x" * 2000)))
        # Another path than /ws.
        out["wrong_path"] = []
        for i in range(WRONG_PATH):
            sock = support.tcp(port, burst.src(50 + i))
            opened.append(sock)
            sock.sendall(support.upgrade_request("/admin"))
            out["wrong_path"].append(support.status_of(support.read_response_head(sock)))
        # The deadlines (1 s) close the silent and idle ones.
        out["silent"] = [support.status_of(support.read_response_head(sock)) for sock in silent]
        out["idle"] = [support.read_close(sock) for sock in idle]
        # Legitimate sessions last: once Prometheus counts all their auth "ok", it saw the whole burst.
        out["legit"] = []
        for i, subject in enumerate(LEGIT_SUBJECTS):
            credential = support.token(subject)
            burst.tokens.append(credential)
            out["legit"].append(_session(port, burst.src(60 + i), credential, subject))
    finally:
        for sock in opened:
            sock.close()
    return burst


def _labels_key(metric: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in metric.items() if k not in ("__name__", "job", "instance")))


def _snapshot(prometheus: Prometheus, at: float | None = None) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    snapshot: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for name in [*EXPECTED_COUNTERS, *EXPECTED_GAUGES]:
        result = prometheus.query(f'{name}{{job="{JOB}"}}', at)
        snapshot[name] = {_labels_key(series["metric"]): float(series["value"][1]) for series in result}
    return snapshot


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    server = ServerThread(
        make_config(
            limits__max_pending_per_source=CAP,
            limits__max_preauth_bytes=1024,
            limits__auth_timeout=1.0,
            limits__handshake_timeout=1.0,
        )
    )
    prometheus: Prometheus | None = None
    try:
        prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{server.metrics_port}")
        prom = prometheus
        prom.poll(lambda: prom.value(f'up{{job="{JOB}"}}') == 1, "a first successful scrape")
        baseline = _snapshot(prom)

        burst = _run_burst(server.port)

        # The server is quiet: nothing pending, nobody authenticated. A scrape that starts after
        # this moment sees final counters and settled gauges.
        support.wait_for(server.idle_state, what="pending state released")
        support.wait_for(lambda: server.call(lambda: len(server.server.authenticated)) == 0, what="sessions gone")
        quiet = time.time()
        prom.poll(
            lambda: prom.value(f'sum(guarded_ws_auth_attempts_total{{job="{JOB}", result="ok"}})') == LEGIT
            and (prom.value(f'timestamp(guarded_ws_tracked_sources{{job="{JOB}"}})') or 0) > quiet,
            f"auth ok = {LEGIT} in a scrape taken after the burst",
        )
        at = time.time()
        yield Stack(server, prom, burst, baseline, _snapshot(prom, at), at)
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()


# The tests


def test_clients_saw_the_expected_answers(stack: Stack) -> None:
    """The burst did what the counters are about to be checked against."""
    assert stack.burst.outcomes == {
        "per_source_cap": [429] * OVER_CAP,
        "bad_token": [4401] * BAD_TOKENS,
        "oversize": [1009] * OVERSIZE,
        "wrong_path": [404] * WRONG_PATH,
        "silent": [408] * SILENT,
        "idle": [4408] * IDLE,
        "legit": ["hello"] * LEGIT,
    }


def test_prometheus_scrapes_the_admin_port(stack: Stack) -> None:
    targets = stack.prometheus.api("targets")["data"]["activeTargets"]
    assert [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets] == [(JOB, "up", "")]


@pytest.mark.parametrize("name", list(EXPECTED_COUNTERS))
def test_counter_moved_by_exactly_the_burst(stack: Stack, name: str) -> None:
    before, after = stack.baseline[name], stack.after[name]
    assert set(after) == set(EXPECTED_COUNTERS[name]), "series differ from the fixed label sets"
    moved = {labels: after[labels] - before.get(labels, 0.0) for labels in after}
    assert moved == EXPECTED_COUNTERS[name]


@pytest.mark.parametrize("name", list(EXPECTED_GAUGES))
def test_gauge_back_to_zero(stack: Stack, name: str) -> None:
    assert stack.after[name] == EXPECTED_GAUGES[name]


def _dashboard_queries() -> list[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    queries = []
    for panel in panels(json.loads(DASHBOARD.read_text())["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".+")
            queries.append((f"{panel['title']} [{target['refId']}]", expr))
    return queries


DASHBOARD_QUERIES = _dashboard_queries()


def test_dashboard_has_queries() -> None:
    assert len(DASHBOARD_QUERIES) >= 20
    assert not [expr for _, expr in DASHBOARD_QUERIES if "$" in expr], "an unsubstituted variable"


@pytest.mark.parametrize("expr", [expr for _, expr in DASHBOARD_QUERIES], ids=[i for i, _ in DASHBOARD_QUERIES])
def test_dashboard_query_returns_series(stack: Stack, expr: str) -> None:
    assert stack.prometheus.query(expr, stack.at), f"no series for {expr}"


def _alert_names() -> list[str]:
    return re.findall(r"^\s*-\s*alert:\s*(\S+)\s*$", ALERTS.read_text(), re.MULTILINE)


def test_alert_expressions_evaluate(stack: Stack) -> None:
    """Every rule of alerts.yml, as the server loaded it, evaluates without error."""
    groups = stack.prometheus.api("rules", type="alert")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert [rule["name"] for rule in rules] == _alert_names()
    failures = {}
    for rule in rules:
        answer = stack.prometheus.api("query", query=rule["query"], time=f"{stack.at:.3f}")
        if answer["status"] != "success":
            failures[rule["name"]] = answer
    assert not failures


def test_alert_rules_are_healthy_in_prometheus(stack: Stack) -> None:
    """Prometheus's own rule evaluations (every second) report no error."""
    prometheus = stack.prometheus

    def rules() -> list[dict[str, Any]]:
        groups = prometheus.api("rules", type="alert")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    prometheus.poll(lambda: all(rule["health"] != "unknown" for rule in rules()), "a first rule evaluation")
    assert {rule["name"]: (rule["health"], rule.get("lastError", "")) for rule in rules()} == {
        name: ("ok", "") for name in _alert_names()
    }


def test_promtool_check_metrics_passes_on_a_real_scrape(stack: Stack) -> None:
    content_type, body = stack.page()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"guarded_ws_connections_accepted_total" in body
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_metrics_page_carries_no_address_subject_or_token(stack: Stack) -> None:
    _, body = stack.page()
    page = body.decode()
    burst = stack.burst
    assert len(burst.sources) >= 15 and len(burst.tokens) == BAD_TOKENS + LEGIT
    assert "127.0.0." not in page
    assert not [address for address in burst.sources if address in page]
    samples = "\n".join(line for line in page.splitlines() if not line.startswith("#"))
    assert not re.search(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])", samples), "a dotted quad in a sample"
    assert not [subject for subject in [*LEGIT_SUBJECTS, ATTACK_SUBJECT] if subject in page]
    parts = {part for credential in burst.tokens for part in [credential, *credential.split(".")] if part}
    assert not [part for part in parts if part in page]


@pytest.mark.parametrize(("path", "body"), [("/healthz", b"ok\n"), ("/readyz", b"ready\n")])
def test_health_endpoints_answer_200(stack: Stack, path: str, body: bytes) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.server.metrics_port}{path}", timeout=5) as response:
        assert (response.status, response.read()) == (200, body)
