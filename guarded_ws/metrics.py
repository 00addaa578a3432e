"""Prometheus metrics: DESIGN.md's table, with every label value bound once.

Label values come from the fixed sets below and are created at start-up, so
a series reads 0 instead of being absent, and the hot path increments a bound
child instead of looking one up by label. No label ever holds an address, a
subject or a credential.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram, Info, ProcessCollector
from prometheus_client.metrics import disable_created_metrics

from . import __version__
from .tls import FAILURES as TLS_FAILURES
from .tokens import RESULTS

# The `_created` series double the page for no use on a long-running server.
disable_created_metrics()

REJECT_REASONS = (
    "per_source_cap",
    "per_source_rate",
    "global_cap",
    "connections_cap",
    "source_connections_cap",
    "subject_connections_cap",
    "origin",
    "path",
    "malformed",
    "not_websocket",
    "headers_too_large",
    "shutting_down",
    "csrf",
    "method",
    "body_too_large",
    "preauth_rate",
    "proxy_untrusted",
    "proxy_missing",
    "proxy_malformed",
)
PENDING_PHASES = ("handshake", "auth")
# "credential": an authenticated connection closed (4401) when its token or certificate expired.
DEADLINE_PHASES = ("tls", "handshake", "auth", "credential")
AUTH_METHODS = ("token", "hook", "certificate", "cookie", "preauth")
ACCEPT_ERRNOS = ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "other")
RELAY_RESULTS = ("linked", "unavailable", "lost")

# From loopback latencies (~1 ms) up to the longest default deadline and beyond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

PREFIX = "guarded_ws_"


class Metrics:
    """All of guarded-ws's metrics, on a registry of their own (one per server)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # CPU, RSS, open fds against the fd limit
        GCCollector(registry=r)  # collections by generation: a full one stalls the loop (runner.settle_heap)
        self.accepted = Counter(
            PREFIX + "connections_accepted_total", "Connections accepted from the listener.", registry=r
        )
        self.rejected = self._counters(
            "connections_rejected_total",
            "Connections refused, by reason.",
            "reason",
            REJECT_REASONS,
        )
        self.evicted = self._counters(
            "connections_evicted_total",
            "Pending connections closed to admit newer ones (overload policy evict-oldest).",
            "phase",
            PENDING_PHASES,
        )
        self._pending = Gauge(
            PREFIX + "pending_connections", "Connections not authenticated yet, by phase.", ["phase"], registry=r
        )
        self._authenticated = Gauge(
            PREFIX + "authenticated_connections", "Authenticated connections open now.", registry=r
        )
        attempts = Counter(
            PREFIX + "auth_attempts_total",
            "Credentials checked, by method and result.",
            ["method", "result"],
            registry=r,
        )
        self.auth_attempts = {
            (method, result): attempts.labels(method, result) for method in AUTH_METHODS for result in RESULTS
        }
        self.deadline_expired = self._counters(
            "deadline_expired_total",
            "Connections closed because a deadline passed: a pending phase's, or their credential's expiry.",
            "phase",
            DEADLINE_PHASES,
        )
        self.handshake_duration = Histogram(
            PREFIX + "handshake_duration_seconds",
            "From accept to the 101 response.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        auth_duration = Histogram(
            PREFIX + "auth_duration_seconds",
            "From the 101 response to a verified credential.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_duration = {method: auth_duration.labels(method) for method in AUTH_METHODS}
        self._tracked_sources = Gauge(
            PREFIX + "tracked_sources", "Sources with at least one pending connection.", registry=r
        )
        self.loop_lag = Gauge(
            PREFIX + "event_loop_lag_seconds", "How late the event loop ran the last periodic sweep.", registry=r
        )
        self.limit = Gauge(
            PREFIX + "limit", "Configured caps and deadlines, to draw 'used vs cap'.", ["name"], registry=r
        )
        Info(PREFIX + "build", "The running version.", registry=r).info({"version": __version__})
        self.accept_errors = self._counters(
            "accept_errors_total",
            "accept() failures, by errno.",
            "errno",
            ACCEPT_ERRNOS,
        )
        self.relay_upstream = self._counters(
            "relay_upstream_total",
            "Relay app links to the upstream: opened, unavailable at connect (1013), lost (1014).",
            "result",
            RELAY_RESULTS,
        )
        self.tls_failures = self._counters(
            "tls_handshake_failures_total",
            "TLS handshakes that failed, or client certificates refused after one, by reason.",
            "reason",
            TLS_FAILURES,
        )

    def _counters(self, name: str, documentation: str, label: str, values: Iterable[str]) -> dict[str, Counter]:
        """A counter family with one label, every child bound now: the hot path indexes a dict."""
        family = Counter(PREFIX + name, documentation, [label], registry=self.registry)
        return {value: family.labels(value) for value in values}

    def set_limits(self, limits: Mapping[str, float]) -> None:
        for name, value in limits.items():
            self.limit.labels(name).set(value)

    def observe(
        self,
        *,
        pending: Callable[[str], int],
        authenticated: Callable[[], int],
        tracked_sources: Callable[[], int],
    ) -> None:
        """Read the gauges from the server's own structures at scrape time: no cost per event."""
        for phase in PENDING_PHASES:
            self._pending.labels(phase).set_function(lambda phase=phase: pending(phase))
        self._authenticated.set_function(authenticated)
        self._tracked_sources.set_function(tracked_sources)


def accept_errno_label(value: int) -> str:
    return _ERRNO_LABELS.get(value, "other")


_ERRNO_LABELS = {getattr(errno, name): name for name in ACCEPT_ERRNOS if name != "other"}
