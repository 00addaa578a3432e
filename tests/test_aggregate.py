"""Combining the workers' /metrics pages into one: sums, maxima, per-worker series, dead workers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from guarded_ws.aggregate import Aggregator, parse


def page(accepted: float, authenticated: float, lag: float, cpu: float, bucket: float) -> str:
    return f"""# HELP guarded_ws_connections_accepted_total Connections accepted.
# TYPE guarded_ws_connections_accepted_total counter
guarded_ws_connections_accepted_total {accepted}
# HELP guarded_ws_authenticated_connections Open now.
# TYPE guarded_ws_authenticated_connections gauge
guarded_ws_authenticated_connections {authenticated}
# HELP guarded_ws_event_loop_lag_seconds Lag.
# TYPE guarded_ws_event_loop_lag_seconds gauge
guarded_ws_event_loop_lag_seconds {lag}
# HELP guarded_ws_limit Caps.
# TYPE guarded_ws_limit gauge
guarded_ws_limit{{name="max_pending_total"}} 100.0
guarded_ws_limit{{name="auth_timeout"}} 5.0
# HELP guarded_ws_build_info Version.
# TYPE guarded_ws_build_info gauge
guarded_ws_build_info{{version="1.0"}} 1.0
# HELP guarded_ws_auth_duration_seconds Auth.
# TYPE guarded_ws_auth_duration_seconds histogram
guarded_ws_auth_duration_seconds_bucket{{method="token",le="0.01"}} {bucket}
guarded_ws_auth_duration_seconds_bucket{{method="token",le="+Inf"}} {bucket}
guarded_ws_auth_duration_seconds_count{{method="token"}} {bucket}
guarded_ws_auth_duration_seconds_sum{{method="token"}} {bucket / 100}
# HELP process_cpu_seconds_total CPU.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total {cpu}
"""


def values(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_counters_gauges_and_histograms_are_summed_lag_and_deadlines_are_not():
    combined = values(
        Aggregator().combine({"0": parse(page(3, 2, 0.01, 1.5, 4)), "1": parse(page(5, 1, 0.2, 2.5, 6))})
    )
    assert combined[("guarded_ws_connections_accepted_total", ())] == 8
    assert combined[("guarded_ws_authenticated_connections", ())] == 3
    assert combined[("guarded_ws_auth_duration_seconds_bucket", (("le", "+Inf"), ("method", "token")))] == 10
    assert combined[("guarded_ws_auth_duration_seconds_count", (("method", "token"),))] == 10
    assert combined[("guarded_ws_event_loop_lag_seconds", ())] == 0.2
    assert combined[("guarded_ws_limit", (("name", "max_pending_total"),))] == 200  # the instance's capacity
    assert combined[("guarded_ws_limit", (("name", "auth_timeout"),))] == 5
    assert combined[("guarded_ws_build_info", (("version", "1.0"),))] == 1
    # Process series are per worker, never summed.
    assert combined[("process_cpu_seconds_total", (("worker", "0"),))] == 1.5
    assert combined[("process_cpu_seconds_total", (("worker", "1"),))] == 2.5
    assert ("process_cpu_seconds_total", ()) not in combined


def test_a_dead_workers_counts_stay_and_its_gauges_go():
    aggregator = Aggregator()
    dead = parse(page(7, 4, 0.5, 9.0, 3))
    aggregator.retire(dead)
    combined = values(aggregator.combine({"0": parse(page(1, 1, 0.01, 0.1, 1))}))  # its replacement, just started
    assert combined[("guarded_ws_connections_accepted_total", ())] == 8  # never goes backwards
    assert combined[("guarded_ws_auth_duration_seconds_count", (("method", "token"),))] == 4
    assert combined[("guarded_ws_authenticated_connections", ())] == 1  # the dead worker's 4 are gone
    assert combined[("guarded_ws_event_loop_lag_seconds", ())] == 0.01
    assert ("process_cpu_seconds_total", (("worker", "0"),)) in combined
    # With no live worker at all, the counts are still there.
    alone = values(aggregator.combine({}))
    assert alone[("guarded_ws_connections_accepted_total", ())] == 7
    assert ("guarded_ws_authenticated_connections", ()) not in alone


def test_the_combined_families_render_as_a_valid_page_again():
    families = Aggregator().combine({"0": parse(page(3, 2, 0.01, 1.5, 4)), "1": parse(page(5, 1, 0.2, 2.5, 6))})

    class Fixed:
        def collect(self):
            return families

    registry = CollectorRegistry()
    registry.register(Fixed())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert "guarded_ws_connections_accepted_total 8.0" in text
    assert values(parse(text)) == values(families)
