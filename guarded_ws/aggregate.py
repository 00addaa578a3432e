"""One /metrics page for all workers: their pages, parsed and combined.

prometheus-client's multiprocess mode cannot serve guarded-ws's gauges, which are
read from the server's own structures at scrape time (``Metrics.observe``) rather
than written on every event. So each worker keeps its ordinary registry and serves
it on a private unix socket, and the supervisor combines the pages:

- counters and histograms are summed; a worker that dies leaves its last values in
  a baseline, so the sums never go backwards when a worker is replaced;
- gauges are summed over the live workers only: a dead worker's pending and
  authenticated connections are gone, and so are they from the sum;
- ``event_loop_lag_seconds`` and ``build_info`` take the maximum (a sum means nothing),
  and so do the deadlines of ``guarded_ws_limit``: its caps are summed, which is the
  instance's capacity (each worker has its share);
- ``process_*`` series are not summed: each keeps a ``worker`` label, from the fixed
  set ``0`` .. ``N-1`` and ``supervisor``.

Pure: pages in, families out; the supervisor does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

_MONOTONIC = frozenset({"counter", "histogram", "summary"})
_MAX_GAUGES = frozenset({"guarded_ws_event_loop_lag_seconds", "guarded_ws_build_info"})
_PER_WORKER_PREFIX = "process_"

_Key = tuple[str, str, tuple[tuple[str, str], ...]]  # family, sample name, labels


def parse(page: str) -> list[Metric]:
    return list(text_string_to_metric_families(page))


class Aggregator:
    """Combines the latest families of each live worker, plus what dead ones counted."""

    def __init__(self) -> None:
        self._baseline: dict[_Key, float] = {}
        self._kinds: dict[str, tuple[str, str]] = {}  # family -> (type, help), as first seen

    def retire(self, families: Iterable[Metric]) -> None:
        """A worker died: keep what its counters and histograms had counted."""
        for family in families:
            if family.type in _MONOTONIC and not family.name.startswith(_PER_WORKER_PREFIX):
                self._kinds.setdefault(family.name, (family.type, family.documentation))
                for sample in family.samples:
                    key = (family.name, sample.name, _labels(sample.labels))
                    self._baseline[key] = self._baseline.get(key, 0.0) + sample.value

    def combine(self, workers: Mapping[str, Iterable[Metric]]) -> list[Metric]:
        """``workers`` maps a worker label ("0", "1", ..., "supervisor") to its families."""
        values: dict[_Key, float] = dict(self._baseline)
        order: dict[str, tuple[str, str]] = dict(self._kinds)
        for worker, families in workers.items():
            for family in families:
                order.setdefault(family.name, (family.type, family.documentation))
                per_worker = family.name.startswith(_PER_WORKER_PREFIX)
                for sample in family.samples:
                    labels = {**sample.labels, "worker": worker} if per_worker else sample.labels
                    key = (family.name, sample.name, _labels(labels))
                    if key not in values:
                        values[key] = sample.value
                    elif _takes_max(family.name, labels):
                        values[key] = max(values[key], sample.value)
                    else:
                        values[key] += sample.value
        combined = {name: Metric(name, documentation, kind) for name, (kind, documentation) in order.items()}
        for (name, sample_name, labels), value in values.items():
            combined[name].add_sample(sample_name, dict(labels), value)
        return [family for family in combined.values() if family.samples]


def _takes_max(family: str, labels: Mapping[str, str]) -> bool:
    return family in _MAX_GAUGES or (family == "guarded_ws_limit" and labels.get("name", "").endswith("_timeout"))


def _labels(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))
