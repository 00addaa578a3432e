from __future__ import annotations

import pytest

from guarded_ws.rate import AcceptRate


def test_burst_then_the_rate():
    rate = AcceptRate(rate=10.0, burst=3)
    assert [rate.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert rate.allow("a", 0.05) is False  # half a token
    assert rate.allow("a", 0.1) is True  # one token after 100 ms at 10/s
    assert rate.allow("a", 0.1) is False


def test_sources_have_their_own_buckets():
    rate = AcceptRate(rate=1.0, burst=1)
    assert rate.allow("a", 0.0) is True
    assert rate.allow("a", 0.0) is False
    assert rate.allow("b", 0.0) is True


def test_refusals_do_not_earn_tokens():
    rate = AcceptRate(rate=1.0, burst=1)
    rate.allow("a", 0.0)
    for step in range(1, 10):
        assert rate.allow("a", step * 0.1) is False  # hammering keeps the bucket near empty
    assert rate.allow("a", 1.0) is True


def test_a_full_table_forgets_refilled_sources():
    rate = AcceptRate(rate=1.0, burst=2, capacity=2)
    rate.allow("a", 0.0)
    rate.allow("b", 0.0)
    assert len(rate) == 2
    assert rate.allow("c", 5.0) is True  # a and b refilled: forgotten, c tracked
    assert len(rate) == 1


def test_a_table_full_of_busy_sources_admits_newcomers_untracked():
    rate = AcceptRate(rate=1.0, burst=5, capacity=2)
    for source in ("a", "b"):
        for _ in range(5):
            rate.allow(source, 0.0)
    assert rate.allow("c", 0.1) is True
    assert rate.allow("c", 0.1) is True  # not tracked: the pending caps still bound it
    assert len(rate) == 2
    assert rate.allow("a", 0.1) is False  # busy sources are still limited


@pytest.mark.parametrize(("r", "burst", "capacity"), [(0, 1, 1), (1, 0, 1), (1, 1, 0)])
def test_parameters_are_checked(r, burst, capacity):
    with pytest.raises(ValueError):
        AcceptRate(rate=r, burst=burst, capacity=capacity)
