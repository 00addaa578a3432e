from __future__ import annotations

import logging

from guarded_ws.logs import LogBudget, RateLimitedLogger


def test_burst_then_silence_then_a_summary():
    budget = LogBudget(interval=10.0, burst=3)
    assert [budget.allow("refused", 0.0) for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    assert budget.allow("refused", 9.9) == (False, 0)
    assert budget.allow("refused", 10.0) == (True, 3)
    assert budget.allow("refused", 10.1) == (True, 0)


def test_kinds_have_separate_budgets():
    budget = LogBudget(interval=10.0, burst=1)
    assert budget.allow("a", 0.0) == (True, 0)
    assert budget.allow("b", 0.0) == (True, 0)
    assert budget.allow("a", 0.0) == (False, 0)


def test_a_flood_of_events_writes_a_bounded_number_of_lines(caplog):
    now = [0.0]
    logger = RateLimitedLogger(logging.getLogger("test.flood"), interval=1.0, burst=5, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.flood"):
        for i in range(100_000):
            now[0] = i / 1000  # 100 s of events at 1,000 per second
            logger.log(logging.INFO, "refused", "refused %s", i)
    assert len(caplog.records) <= 5 * 100 + 5
    assert any("similar lines suppressed" in record.getMessage() for record in caplog.records)


def test_disabled_levels_cost_nothing(caplog):
    logger = RateLimitedLogger(logging.getLogger("test.quiet"), burst=1)
    with caplog.at_level(logging.WARNING, logger="test.quiet"):
        logger.log(logging.INFO, "x", "hidden")
    assert caplog.records == []
    assert logger.budget.allow("x", 0.0) == (True, 0)  # the hidden line did not spend the budget
