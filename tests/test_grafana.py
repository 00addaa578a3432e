"""The observability files in grafana/: dashboard, alerts and Prometheus config.

Checked statically (JSON, metric and label names against what the server
exports, the knobs the texts tell operators to turn) and with promtool, which
parses every PromQL expression, the dashboard's included, and runs the alert
unit tests. promtool comes with Debian's `prometheus` package, which `make test`
installs; without it these tests fail rather than skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboard.json"
ALERTS = GRAFANA / "alerts.yml"
ALERT_TESTS = GRAFANA / "alerts.test.yml"
PROMETHEUS_CONFIG = GRAFANA / "prometheus.yml"
DATASOURCE_PROVISIONING = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVISIONING = GRAFANA / "provisioning" / "dashboards" / "guarded-ws.yml"
CONFIG_DOCS = ROOT / "docs" / "configuration.md"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB = "guarded-ws"

# What guarded-ws exports: metric name -> {label: its fixed values, or None for any value}.
REJECT_REASONS = (
    "per_source_cap", "per_source_rate", "global_cap", "connections_cap", "source_connections_cap", "subject_connections_cap",
    "origin", "path", "malformed", "not_websocket", "headers_too_large", "shutting_down",
    "csrf", "method", "body_too_large", "preauth_rate",
    "proxy_untrusted", "proxy_missing", "proxy_malformed",
)  # fmt: skip
PHASES = ("handshake", "auth")
DEADLINE_PHASES = ("tls", "handshake", "auth", "credential")
AUTH_METHODS = ("token", "hook", "certificate", "cookie", "preauth")
TLS_FAILURES = ("not_tls", "protocol", "no_certificate", "unknown_ca", "expired", "revoked", "bad_certificate",
                "pin_mismatch", "no_subject", "peer_alert", "closed", "timeout", "other")  # fmt: skip
AUTH_RESULTS = ("ok", "invalid", "expired", "not_yet_valid", "replayed", "timeout", "too_large", "protocol",
                "unavailable", "missing", "csrf")  # fmt: skip
ACCEPT_ERRNOS = ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "other")
LIMIT_NAMES = ("max_pending_total", "max_pending_per_source", "max_connections_total", "handshake_timeout",
               "auth_timeout")  # fmt: skip
GC_GENERATIONS = ("0", "1", "2")

METRICS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "guarded_ws_connections_accepted_total": {},
    "guarded_ws_connections_rejected_total": {"reason": REJECT_REASONS},
    "guarded_ws_connections_evicted_total": {"phase": PHASES},
    "guarded_ws_pending_connections": {"phase": PHASES},
    "guarded_ws_authenticated_connections": {},
    "guarded_ws_auth_attempts_total": {"method": AUTH_METHODS, "result": AUTH_RESULTS},
    "guarded_ws_deadline_expired_total": {"phase": DEADLINE_PHASES},
    "guarded_ws_handshake_duration_seconds": {},
    "guarded_ws_auth_duration_seconds": {"method": AUTH_METHODS},
    "guarded_ws_tracked_sources": {},
    "guarded_ws_event_loop_lag_seconds": {},
    "guarded_ws_accept_errors_total": {"errno": ACCEPT_ERRNOS},
    "guarded_ws_tls_handshake_failures_total": {"reason": TLS_FAILURES},
    "guarded_ws_limit": {"name": LIMIT_NAMES},
    "guarded_ws_build_info": {"version": None},
    "guarded_ws_relay_upstream_total": {"result": ("linked", "unavailable", "lost")},
    "process_cpu_seconds_total": {},
    "process_resident_memory_bytes": {},
    "process_virtual_memory_bytes": {},
    "process_open_fds": {},
    "process_max_fds": {},
    "process_start_time_seconds": {},
    "python_gc_collections_total": {"generation": GC_GENERATIONS},
    "python_gc_objects_collected_total": {"generation": GC_GENERATIONS},
    "python_gc_objects_uncollectable_total": {"generation": GC_GENERATIONS},
}
HISTOGRAMS = ("guarded_ws_handshake_duration_seconds", "guarded_ws_auth_duration_seconds")
TARGET_LABELS = ("job", "instance")  # added by Prometheus to every scraped series
# Series Prometheus makes itself for each target: only the alerts may use them (GuardedWsDown).
SYNTHETIC: dict[str, dict[str, tuple[str, ...] | None]] = {"up": {}}


def _series_names() -> dict[str, dict[str, tuple[str, ...] | None]]:
    """Every series name a query can select, histogram suffixes included."""
    names = dict(METRICS)
    for histogram in HISTOGRAMS:
        labels = METRICS[histogram]
        names.pop(histogram)
        names[histogram + "_bucket"] = {**labels, "le": None}
        names[histogram + "_sum"] = labels
        names[histogram + "_count"] = labels
    return names


SERIES = _series_names()

# Metrics the dashboard must draw (the brief's panels), by the series it queries.
DASHBOARD_MUST_SHOW = {name for name in SERIES if name.startswith("guarded_ws_")} - {
    "guarded_ws_handshake_duration_seconds_sum",
    "guarded_ws_handshake_duration_seconds_count",
    "guarded_ws_auth_duration_seconds_sum",
    "guarded_ws_auth_duration_seconds_count",
} | {"process_resident_memory_bytes", "process_open_fds", "process_max_fds",
     "python_gc_collections_total", "python_gc_objects_uncollectable_total"}

# One alert for each condition operators asked for.
REQUIRED_ALERTS = {
    "GuardedWsPendingNearCap",
    "GuardedWsAuthTimeoutRatioHigh",
    "GuardedWsEvicting",
    "GuardedWsAcceptErrors",
    "GuardedWsEventLoopLagHigh",
    "GuardedWsFdsNearLimit",
}
SEVERITIES = {"critical", "warning", "info"}


# ---------------------------------------------------------------------------
# Helpers: PromQL scanning, a small reader for our YAML files, promtool.


PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                   "offset", "inf", "nan", "atan2", "start", "end"}  # fmt: skip
_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")\s*(?:,|$)')


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (functions, keywords, labels and numbers left out)."""
    text = re.sub(_STRING, '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _GROUPING.sub(" ", text)  # by (...), on (...), ...
    names = set()
    for match in re.finditer(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(word)
    return names


def selectors(expr: str) -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, [(label, operator, value)]) for every `metric{...}` in the expression."""
    for match in _SELECTOR.finditer(expr):
        body = match.group(2).strip().rstrip(",")
        matchers = []
        position = 0
        while position < len(body):
            m = _MATCHER.match(body, position)
            assert m, f"cannot read the label matchers {{{body}}} in: {expr}"
            matchers.append((m.group(1), m.group(2), json.loads(m.group(3))))
            position = m.end()
        yield match.group(1), matchers


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for match in _GROUPING.finditer(re.sub(_STRING, '""', expr)):
        labels |= {label.strip() for label in match.group(2).split(",") if label.strip()}
    return labels


def check_expr(expr: str, known: dict[str, dict[str, tuple[str, ...] | None]], where: str) -> list[str]:
    """Problems with an expression's metric names, label names and fixed label values."""
    problems = []
    names = metric_names(expr)
    if not names:
        problems.append(f"{where}: selects no metric: {expr}")
    for name in sorted(names - known.keys()):
        problems.append(f"{where}: unknown metric {name!r} in: {expr}")
    for name, matchers in selectors(expr):
        if name not in known:
            continue  # reported above (or a keyword followed by a brace, which PromQL rejects)
        for label, op, value in matchers:
            if label in TARGET_LABELS:
                continue
            if label not in known[name]:
                problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(known[name])}): {expr}")
                continue
            allowed = known[name][label]
            if allowed is not None and op in ("=", "!=") and value not in allowed:
                problems.append(f"{where}: {name}{{{label}={value!r}}} is never exported (values: {allowed}): {expr}")
    available = set(TARGET_LABELS).union(*(known[name] for name in names if name in known))
    for label in sorted(grouping_labels(expr) - available):
        problems.append(f"{where}: groups by {label!r}, a label none of {sorted(names)} has: {expr}")
    return problems


def _unquote(value: str) -> str:
    """A scalar as written after `key:`, quotes and a trailing comment removed."""
    value = value.strip()
    if value.startswith('"'):
        quoted = re.match(r'"(?:[^"\\]|\\.)*"', value)
        assert quoted, value
        return json.loads(quoted.group(0))
    if value.startswith("'"):
        quoted = re.match(r"'(?:[^']|'')*'", value)
        assert quoted, value
        return quoted.group(0)[1:-1].replace("''", "'")
    return re.split(r"\s+#", value)[0].strip()


def yaml_values(text: str, key: str) -> list[str]:
    """Every value of `key:` in a YAML file of ours: plain, quoted or a block scalar (| or >).

    A reader for the shapes these files use, not YAML in general; the tests compare
    what it finds with what promtool counts, so a shape it misreads fails them.
    """
    lines = text.splitlines()
    found = []
    i = 0
    pattern = re.compile(rf"^(\s*)(?:-\s+)?{re.escape(key)}:\s*(.*?)\s*$")
    while i < len(lines):
        m = pattern.match(lines[i])
        i += 1
        if not m or lines[i - 1].lstrip().startswith("#"):
            continue
        indent, rest = len(m.group(1)), m.group(2)
        if rest.split("#")[0].strip() in ("|", "|-", "|+", ">", ">-", ">+"):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            joiner = "\n" if rest.startswith("|") else " "
            found.append(joiner.join(line for line in block if line).strip())
        else:
            found.append(_unquote(rest))
    return found


def alert_blocks(text: str) -> dict[str, str]:
    """alert name -> the text of its rule, from one `- alert:` to the next."""
    parts = re.split(r"^\s*- alert:\s*", text, flags=re.M)[1:]
    blocks = {}
    for part in parts:
        name, _, _ = part.partition("\n")
        assert name.strip() not in blocks, f"alert {name.strip()} is defined twice"
        blocks[name.strip()] = "alert: " + part
    return blocks


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail(
            "promtool not found: run `make test`, which installs it (Debian's `prometheus` package: "
            "apt-get install -y prometheus)"
        )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def rules_found(result: subprocess.CompletedProcess[str]) -> int:
    counts = re.findall(r"SUCCESS: (\d+) rules found", result.stdout + result.stderr)
    assert counts, result.stdout + result.stderr
    return int(counts[-1])


# ---------------------------------------------------------------------------
# The dashboard


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return panels


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) for every panel target."""
    exprs = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            exprs.append((f"panel {panel['id']} ({panel['title']}) target {target.get('refId')}", target["expr"]))
    return exprs


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for the query variables: label_values(SELECTOR, label) gives SELECTOR."""
    queries = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", query)
        assert m, f"variable {variable['name']}: expected label_values(selector, label), got {query!r}"
        queries.append((f"variable {variable['name']}", m.group(1)))
    return queries


GRAFANA_INTERVALS = re.compile(r"\$\{?(__rate_interval|__interval|__range)\}?")


def as_promql(expr: str, dashboard: dict[str, Any]) -> str:
    """A dashboard expression with Grafana's variables replaced, ready for promtool."""
    expr = GRAFANA_INTERVALS.sub("1m", expr)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] in ("query", "custom", "textbox", "constant"):
            expr = re.sub(rf"\$\{{{variable['name']}(?::\w+)?\}}|\${variable['name']}\b", ".+", expr)
    assert "$" not in expr, f"an unknown Grafana variable is left in: {expr}"
    return expr


def test_dashboard_identity_and_defaults():
    dashboard = load_dashboard()
    assert dashboard["uid"] == "guarded-ws"
    assert dashboard["title"] == "guarded-ws"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["refresh"] == "5s"
    assert dashboard["time"] == {"from": "now-15m", "to": "now"}
    assert dashboard.get("id") is None, "a fixed numeric id clashes on import: leave it null"


def test_dashboard_selects_its_datasource_through_a_variable():
    dashboard = load_dashboard()
    text = DASHBOARD.read_text()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # __inputs placeholders are filled by UI import only, never by file provisioning.
    assert not re.search(r"\$\{?DS_", text), "a ${DS_...} placeholder breaks file provisioning"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    panels = [p for p in all_panels(dashboard) if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel.get("datasource") == DATASOURCE, f"panel {panel['id']} ({panel['title']})"
        assert panel.get("targets"), f"panel {panel['id']} ({panel['title']}) has no query"
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, f"panel {panel['id']} target {target.get('refId')}"
            assert target.get("expr", "").strip(), f"panel {panel['id']} target {target.get('refId')}: no expr"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"panel {panel['id']}: duplicate refIds {ref_ids}"


def test_dashboard_panels_have_unique_ids_and_do_not_overlap():
    dashboard = load_dashboard()
    panels = all_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, panel["id"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['id']} is wider than the 24-column grid"
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {panel['id']} overlap at {(x, y)}"
                cells[(x, y)] = panel["id"]
    titles = [panel["title"] for panel in panels]
    assert len(titles) == len(set(titles)), "duplicate panel titles"


def test_dashboard_rows_hold_the_panels_listed_under_them():
    """An expanded row owns the panels after it in the JSON: they sit below it and above the next row."""
    top = load_dashboard()["panels"]
    rows = [panel for panel in top if panel["type"] == "row"]
    for row in rows:
        assert row["gridPos"]["x"] == 0 and row["gridPos"]["w"] == 24 and row["gridPos"]["h"] == 1, row["title"]
    assert [row["gridPos"]["y"] for row in rows] == sorted(row["gridPos"]["y"] for row in rows)
    row = None
    for panel in top:
        if panel["type"] == "row":
            row = panel
            continue
        later = [r["gridPos"]["y"] for r in rows if row is None or r["gridPos"]["y"] > row["gridPos"]["y"]]
        grid = panel["gridPos"]
        above = row["gridPos"]["y"] + 1 if row else 0
        assert grid["y"] >= above, f"panel {panel['id']} ({panel['title']}) is above its row"
        if later:
            assert grid["y"] + grid["h"] <= later[0], f"panel {panel['id']} ({panel['title']}) runs into the next row"


def test_dashboard_queries_only_what_the_server_exports():
    dashboard = load_dashboard()
    problems = []
    for where, expr in dashboard_exprs(dashboard) + variable_queries(dashboard):
        problems += check_expr(expr, SERIES, where)
    assert not problems, "\n".join(problems)


def test_dashboard_legends_name_labels_the_series_have():
    dashboard = load_dashboard()
    problems = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            names = metric_names(target["expr"]) & SERIES.keys()
            available = set(TARGET_LABELS).union(*(SERIES[name] for name in names))
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
                if label not in available:
                    problems.append(f"panel {panel['id']} target {target['refId']}: legend uses {label!r}")
    assert not problems, "\n".join(problems)


def test_dashboard_rates_use_short_windows():
    problems = []
    for where, expr in dashboard_exprs(load_dashboard()):
        for window in re.findall(r"\[([^\]]*)\]", expr):
            if window not in ("$__rate_interval", "1m"):
                problems.append(f"{where}: window [{window}], want [$__rate_interval] or [1m]")
        assert "job=\"guarded-ws\"" in expr, f"{where}: select job=\"guarded-ws\": {expr}"
    assert not problems, "\n".join(problems)


def test_dashboard_draws_every_metric_and_both_latency_quantiles():
    dashboard = load_dashboard()
    exprs = [expr for _, expr in dashboard_exprs(dashboard)]
    shown = set().union(*(metric_names(expr) for expr in exprs))
    assert DASHBOARD_MUST_SHOW <= shown, f"not on the dashboard: {sorted(DASHBOARD_MUST_SHOW - shown)}"
    for histogram in HISTOGRAMS:
        for quantile in ("0.5", "0.99"):
            assert any(
                re.search(rf"histogram_quantile\(\s*{re.escape(quantile)}\s*,", expr)
                and f"{histogram}_bucket" in expr
                and re.search(r"\brate\(", expr)
                and "le" in grouping_labels(expr)
                for expr in exprs
            ), f"no p{quantile} panel for {histogram}"
    limits = {value for expr in exprs for name, ms in selectors(expr) if name == "guarded_ws_limit"
              for label, op, value in ms if label == "name" and op == "="}  # fmt: skip
    assert {"max_pending_total", "max_connections_total"} <= limits, "draw the caps beside what they cap"
    # Full collections are the ones that stall the loop; the young generations run all the time.
    generations = {value for expr in exprs for name, ms in selectors(expr) if name == "python_gc_collections_total"
                   for label, op, value in ms if label == "generation" and op == "="}  # fmt: skip
    assert generations == {"2"}, f"draw full collections (generation 2) only, not {sorted(generations)}"


def test_every_dashboard_expression_is_valid_promql(tmp_path):
    """promtool parses every query, as recording rules in a throwaway rule file (JSON is YAML)."""
    dashboard = load_dashboard()
    exprs = dashboard_exprs(dashboard) + variable_queries(dashboard)
    rules = [{"record": f"dashboard:expr_{i}", "expr": as_promql(expr, dashboard)} for i, (_, expr) in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=2))
    result = run_promtool("check", "rules", str(path))
    wheres = "\n".join(f"dashboard:expr_{i}: {where}" for i, (where, _) in enumerate(exprs))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{wheres}"
    assert rules_found(result) == len(exprs)


# ---------------------------------------------------------------------------
# The alerts


def test_alert_rules_pass_promtool_check():
    result = run_promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    text = ALERTS.read_text()
    # Our reader found every rule promtool found: the static checks below see them all.
    assert rules_found(result) == len(yaml_values(text, "expr")) == len(alert_blocks(text))


def test_alert_unit_tests_pass():
    result = run_promtool("test", "rules", str(ALERT_TESTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_alerts_query_only_what_the_server_exports():
    problems = []
    for i, expr in enumerate(yaml_values(ALERTS.read_text(), "expr")):
        problems += check_expr(expr, {**SERIES, **SYNTHETIC}, f"rule {i}")
    assert not problems, "\n".join(problems)


def test_every_alert_has_a_severity_and_tells_what_to_do():
    blocks = alert_blocks(ALERTS.read_text())
    assert REQUIRED_ALERTS <= blocks.keys(), f"missing: {sorted(REQUIRED_ALERTS - blocks.keys())}"
    for name, block in blocks.items():
        assert re.fullmatch(r"GuardedWs[A-Z]\w+", name), name
        severity = yaml_values(block, "severity")
        assert len(severity) == 1 and severity[0] in SEVERITIES, f"{name}: severity {severity}"
        (summary,) = yaml_values(block, "summary")
        (description,) = yaml_values(block, "description")
        assert "{{ $labels.instance }}" in summary, f"{name}: say which instance in the summary"
        assert len(description) > 150, f"{name}: the description should tell the operator what to do"
        knobs = re.findall(r"\b(?:server|limits|auth|metrics)\.\w+|LimitNOFILE|fs\.file-max", description)
        assert knobs, f"{name}: the description names no knob to turn"


def test_the_knobs_the_texts_name_exist():
    """Every `section.key` the alerts and dashboard tell operators to turn is in docs/configuration.md."""
    keys = set()
    section = None
    for line in CONFIG_DOCS.read_text().splitlines():
        heading = re.match(r"^##\s+`\[(\w+)\]`", line)
        if heading:
            section = heading.group(1)
        row = re.match(r"^\|\s*`(\w+)`\s*\|", line)
        if row and section:
            keys.add(f"{section}.{row.group(1)}")
    assert "limits.auth_timeout" in keys, f"cannot read the keys of {CONFIG_DOCS}"
    texts = ALERTS.read_text() + "\n" + "\n".join(p.get("description", "") for p in all_panels(load_dashboard()))
    named = set(re.findall(r"\b(?:server|limits|auth|metrics)\.[a-z_]+\b", texts))
    assert named, "no knob named anywhere"
    assert named <= keys, f"not in {CONFIG_DOCS.name}: {sorted(named - keys)}"


def test_every_alert_has_a_test_that_fires_it_and_one_that_keeps_it_quiet():
    alerts = alert_blocks(ALERTS.read_text()).keys()
    text = ALERT_TESTS.read_text()
    assert "alerts.yml" in yaml_values(text, "rule_files") or re.search(r"rule_files:\s*\n\s*-\s*alerts\.yml", text)
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in re.split(r"^\s*- eval_time:", text, flags=re.M)[1:]:
        (alertname,) = yaml_values(case, "alertname")
        (expected,) = [line for line in case.splitlines() if line.strip().startswith("exp_alerts:")]
        if expected.split(":", 1)[1].strip() == "[]":
            quiet.add(alertname)
        else:
            assert "exp_labels:" in case and "severity:" in case, f"{alertname}: give the labels it fires with"
            fires.add(alertname)
    assert set(alerts) <= fires, f"never seen firing: {sorted(set(alerts) - fires)}"
    assert set(alerts) <= quiet, f"never seen quiet: {sorted(set(alerts) - quiet)}"
    problems = []
    for series in yaml_values(text, "series"):
        problems += check_expr(series, {**SERIES, **SYNTHETIC}, "input series")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# Prometheus and Grafana configuration


def test_prometheus_config_passes_promtool_check():
    result = run_promtool("check", "config", str(PROMETHEUS_CONFIG.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_prometheus_config_scrapes_guarded_ws_every_5s():
    text = PROMETHEUS_CONFIG.read_text()
    assert yaml_values(text, "job_name") == [JOB]
    assert "5s" in yaml_values(text, "scrape_interval")
    assert set(yaml_values(text, "scrape_interval")) == {"5s"}, "every scrape_interval here should be 5s"
    assert re.search(r'targets:\s*\[\s*["\']127\.0\.0\.1:9108["\']\s*\]', text), "scrape 127.0.0.1:9108"
    assert re.search(r"^rule_files:\s*\n\s*-\s*alerts\.yml\s*$", text, flags=re.M)


def test_grafana_provisioning_files():
    datasource = DATASOURCE_PROVISIONING.read_text()
    assert yaml_values(datasource, "apiVersion") == ["1"]
    assert yaml_values(datasource, "type") == ["prometheus"]
    assert yaml_values(datasource, "url") == ["http://127.0.0.1:9090"]
    assert yaml_values(datasource, "timeInterval") == ["5s"], "match the scrape interval ($__rate_interval)"
    dashboards = DASHBOARD_PROVISIONING.read_text()
    assert yaml_values(dashboards, "apiVersion") == ["1"]
    assert yaml_values(dashboards, "type") == ["file"]
    (path,) = yaml_values(dashboards, "path")
    assert path.startswith("/"), "Grafana resolves a relative provider path against its own working directory"
    assert path in dashboards.split("apiVersion")[0], "the header comment should say where dashboard.json goes"


# ---------------------------------------------------------------------------
# The list above against the server itself


def test_the_metrics_listed_here_are_the_ones_the_server_exports():
    from guarded_ws.metrics import Metrics

    metrics = Metrics()
    metrics.observe(pending=lambda phase: 0, authenticated=lambda: 0, tracked_sources=lambda: 0)
    exported: dict[str, dict[str, set[str]]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels = exported.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    # guarded_ws_limit's children are made by the server from its configuration.
    missing = sorted(set(SERIES) - exported.keys() - {"guarded_ws_limit"})
    assert not missing, f"listed here, not exported: {missing}"
    for name, labels in SERIES.items():
        for label, values in labels.items():
            if values is None or name not in exported:
                continue
            assert exported[name].get(label) == set(values), f"{name}{{{label}}}: {exported[name].get(label)}"
