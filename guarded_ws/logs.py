"""Logging that an attacker cannot turn into a flood of its own.

Every kind of event gets a small burst of lines per window; the rest are
counted and summed up in the first line of the next window. Pure policy:
the clock is a parameter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class LogBudget:
    """Decides which lines of each kind may be written."""

    __slots__ = ("interval", "burst", "_windows")

    def __init__(self, *, interval: float = 10.0, burst: int = 5) -> None:
        self.interval = interval
        self.burst = burst
        self._windows: dict[str, list[float | int]] = {}  # kind -> [window start, written, suppressed]

    def allow(self, kind: str, now: float) -> tuple[bool, int]:
        """(may write, lines suppressed since the last written line of this kind)."""
        window = self._windows.get(kind)
        if window is None or now - window[0] >= self.interval:
            suppressed = int(window[2]) if window is not None else 0
            self._windows[kind] = [now, 1, 0]
            return True, suppressed
        if window[1] < self.burst:
            window[1] += 1
            return True, 0
        window[2] += 1
        return False, 0


class RateLimitedLogger:
    """A logger front end with one :class:`LogBudget` per event kind (kinds are a fixed set)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 10.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.budget = LogBudget(interval=interval, burst=burst)
        self.clock = clock

    def log(self, level: int, kind: str, msg: str, *args: object, exc_info: bool = False) -> None:
        if not self.logger.isEnabledFor(level):
            return
        allowed, suppressed = self.budget.allow(kind, self.clock())
        if not allowed:
            return
        if suppressed:
            self.logger.log(level, msg + " (%d similar lines suppressed)", *args, suppressed, exc_info=exc_info)
        else:
            self.logger.log(level, msg, *args, exc_info=exc_info)
