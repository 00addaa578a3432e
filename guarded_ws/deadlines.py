"""Deadlines without a timer per connection.

Every item in a queue gets the same timeout, so insertion order is deadline
order: one periodic sweep pops the expired head and stops at the first item
still in time. Leaving a queue is O(1) and lazy: the item forgets the queue,
and its stale entry is skipped when it reaches the head (or dropped when the
queue compacts itself). An entry is live while its item is still in this
queue with the deadline the entry recorded, so an item can come back to a
queue it left. An item is in at most one queue at a time.

:class:`ExpiryQueue` is for deadlines that differ per item (a credential's expiry):
a heap, with the same lazy deletion.

Pure: the caller passes the clock reading.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from typing import Any, Generic, TypeVar


class Timed:
    """Base for anything kept in a :class:`DeadlineQueue`."""

    __slots__ = ("queue", "deadline")

    def __init__(self) -> None:
        self.queue: DeadlineQueue[Timed] | None = None
        self.deadline = 0.0


T = TypeVar("T", bound=Timed)


class DeadlineQueue(Generic[T]):
    """A FIFO of items sharing one timeout."""

    __slots__ = ("name", "timeout", "_items", "_live")

    # Stale entries tolerated before a rebuild; keeps memory within 2x live.
    _SLACK = 64

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        self._items: deque[tuple[float, T]] = deque()
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, item: T, now: float) -> None:
        """Move ``item`` here (out of any other queue); its deadline is now + timeout."""
        if item.queue is not None:
            item.queue.discard(item)
        item.queue = self
        item.deadline = deadline = now + self.timeout
        self._items.append((deadline, item))
        self._live += 1
        if len(self._items) > 2 * self._live + self._SLACK:
            self._items = deque(e for e in self._items if self._is_live(e))

    def _is_live(self, entry: tuple[float, T]) -> bool:
        deadline, item = entry
        return item.queue is self and item.deadline == deadline

    def discard(self, item: T) -> None:
        if item.queue is self:
            item.queue = None
            self._live -= 1

    def oldest(self) -> T | None:
        items = self._items
        while items:
            if self._is_live(items[0]):
                return items[0][1]
            items.popleft()
        return None

    def next_deadline(self) -> float | None:
        """When the oldest item expires; None when the queue is empty."""
        oldest = self.oldest()
        return None if oldest is None else oldest.deadline

    def pop_expired(self, now: float) -> Iterator[T]:
        """Yield (and remove) every item whose deadline is at or before ``now``."""
        items = self._items
        while items:
            deadline, item = items[0]
            if item.queue is not self or item.deadline != deadline:
                items.popleft()
                continue
            if deadline > now:
                return
            items.popleft()
            item.queue = None
            self._live -= 1
            yield item


def next_sweep(queues: Iterable[DeadlineQueue[Any]], now: float, longest: float, shortest: float) -> float:
    """When to sweep next: at the soonest deadline, but within [now + shortest, now + longest].

    The upper bound keeps the sweep's loop-lag reading regular; the lower one lets a flood's
    steady stream of deadlines expire in batches instead of one sweep each.
    """
    soonest = now + longest
    for queue in queues:
        deadline = queue.next_deadline()
        if deadline is not None and deadline < soonest:
            soonest = deadline
    return max(soonest, now + shortest)


H = TypeVar("H", bound=Hashable)


class ExpiryQueue(Generic[H]):
    """Items with deadlines of their own, in a min-heap: O(log n) push, O(1) discard.

    An item's current deadline lives in a dict; a heap entry whose deadline no
    longer matches it is stale and skipped. Independent of :class:`Timed`, so an
    item can sit here and in a :class:`DeadlineQueue` at once.
    """

    __slots__ = ("_heap", "_when", "_order")

    _SLACK = 64

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, H]] = []
        self._when: dict[H, float] = {}
        self._order = itertools.count()  # ties never compare items

    def __len__(self) -> int:
        return len(self._when)

    def __contains__(self, item: H) -> bool:
        return item in self._when

    def push(self, item: H, when: float) -> None:
        """Set (or move) ``item``'s deadline to ``when``."""
        self._when[item] = when
        heapq.heappush(self._heap, (when, next(self._order), item))
        if len(self._heap) > 2 * len(self._when) + self._SLACK:
            self._heap = [entry for entry in self._heap if self._when.get(entry[2]) == entry[0]]
            heapq.heapify(self._heap)

    def discard(self, item: H) -> None:
        self._when.pop(item, None)

    def pop_expired(self, now: float) -> Iterator[H]:
        """Yield (and remove) every item whose deadline is at or before ``now``."""
        heap, when = self._heap, self._when
        while heap:
            deadline, _, item = heap[0]
            if when.get(item) != deadline:
                heapq.heappop(heap)
                continue
            if deadline > now:
                return
            heapq.heappop(heap)
            del when[item]
            yield item
