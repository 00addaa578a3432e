"""Per-source accept rate: a token bucket per source (off by default).

Unlike the pending caps, a rate must remember sources that have nothing pending, so its
table is bounded: a source whose bucket has refilled is the same as one never seen and is
forgotten, and while the table is full of busy sources a newcomer is admitted untracked
(the pending caps still hold), so the table cannot be filled to lock newcomers out.
Pure: the caller passes the clock reading.
"""

from __future__ import annotations

from collections.abc import Hashable

TABLE_CAPACITY = 65536


class AcceptRate:
    __slots__ = ("rate", "burst", "capacity", "_buckets", "_next_purge")

    def __init__(self, rate: float, burst: int, capacity: int = TABLE_CAPACITY) -> None:
        if rate <= 0 or burst < 1 or capacity < 1:
            raise ValueError("rate must be > 0, burst and capacity >= 1")
        self.rate = rate
        self.burst = burst
        self.capacity = capacity
        self._buckets: dict[Hashable, list[float]] = {}  # source -> [tokens, last update]
        self._next_purge = 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: Hashable, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.capacity and not self._purge(now):
                return True
            self._buckets[source] = [self.burst - 1.0, now]
            return True
        tokens = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _purge(self, now: float) -> bool:
        """Forget refilled buckets; at most once per refill time, so a full table costs O(1) per accept."""
        if now < self._next_purge:
            return False
        self._next_purge = now + self.burst / self.rate
        rate, burst = self.rate, self.burst
        self._buckets = {
            source: bucket for source, bucket in self._buckets.items() if bucket[0] + (now - bucket[1]) * rate < burst
        }
        return len(self._buckets) < self.capacity
