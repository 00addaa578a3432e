from __future__ import annotations

import pytest

from guarded_ws.admission import Admission, Verdict, source_keyer


def test_ipv4_keys_per_address_by_default():
    key = source_keyer()
    assert key("127.0.0.2") != key("127.0.0.3")
    assert key("127.0.0.2") == key("127.0.0.2")


def test_ipv6_keys_per_64_by_default():
    key = source_keyer()
    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9")
    assert key("2001:db8:1:2::1") != key("2001:db8:1:3::1")


def test_ipv4_mapped_ipv6_counts_as_ipv4():
    key = source_keyer()
    assert key("::ffff:10.1.2.3") == key("10.1.2.3")


def test_scope_ids_are_ignored():
    key = source_keyer(ipv6_prefix=128)
    assert key("fe80::1%eth0") == key("fe80::1")


@pytest.mark.parametrize(
    ("v4", "same", "different"),
    [(24, ("10.0.0.1", "10.0.0.254"), ("10.0.0.1", "10.0.1.1")), (20, ("10.0.0.1", "10.0.15.9"), ("10.0.0.1", "10.0.16.1"))],
)
def test_ipv4_prefixes(v4, same, different):
    key = source_keyer(ipv4_prefix=v4)
    assert key(same[0]) == key(same[1])
    assert key(different[0]) != key(different[1])


def test_ipv6_odd_prefix():
    key = source_keyer(ipv6_prefix=60)
    assert key("2001:db8:0:10::1") == key("2001:db8:0:1f::1")
    assert key("2001:db8:0:10::1") != key("2001:db8:0:20::1")


def test_ipv4_and_ipv6_never_share_a_key():
    key = source_keyer(ipv4_prefix=32, ipv6_prefix=32)
    assert key("1.2.3.4") != key("102:304::")


@pytest.mark.parametrize(("v4", "v6"), [(0, 64), (33, 64), (32, 0), (32, 129)])
def test_prefix_ranges(v4, v6):
    with pytest.raises(ValueError):
        source_keyer(v4, v6)


def test_per_source_cap():
    admission = Admission(max_per_source=2, max_total=10)
    for _ in range(2):
        assert admission.check("a") is Verdict.ADMIT
        admission.take("a")
    assert admission.check("a") is Verdict.REJECT_SOURCE
    assert admission.check("b") is Verdict.ADMIT


def test_global_cap_evicts_or_rejects_by_policy():
    evicting = Admission(max_per_source=2, max_total=2)
    rejecting = Admission(max_per_source=2, max_total=2, evict_oldest=False)
    for admission in (evicting, rejecting):
        admission.take("a")
        admission.take("b")
    assert evicting.check("c") is Verdict.EVICT
    assert rejecting.check("c") is Verdict.REJECT_GLOBAL


def test_a_source_at_its_cap_cannot_evict_others():
    admission = Admission(max_per_source=1, max_total=1)
    admission.take("a")
    assert admission.check("a") is Verdict.REJECT_SOURCE


def test_release_forgets_a_source_with_nothing_pending():
    admission = Admission(max_per_source=3, max_total=10)
    admission.take("a")
    admission.take("a")
    admission.take("b")
    assert (admission.total, admission.sources) == (3, 2)
    admission.release("a")
    assert admission.pending("a") == 1
    admission.release("a")
    admission.release("b")
    assert (admission.total, admission.sources) == (0, 0)
    assert admission.check("a") is Verdict.ADMIT


def test_caps_are_validated():
    with pytest.raises(ValueError):
        Admission(max_per_source=0, max_total=1)
    with pytest.raises(ValueError):
        Admission(max_per_source=5, max_total=4)


def test_a_connection_without_a_source_yet_counts_against_the_global_cap_only():
    admission = Admission(max_per_source=1, max_total=3)
    key = source_keyer()
    admission.take(None)  # a trusted proxy's connection, before its PROXY header
    admission.take(None)
    assert admission.total == 2 and admission.sources == 0
    assert admission.check(None) is Verdict.ADMIT
    assert admission.assign(key("10.0.0.1"))
    assert not admission.assign(key("10.0.0.1"))  # the client named by the second header is at its cap
    admission.release(None)  # ... so that connection leaves without a source
    assert admission.total == 1 and admission.pending(key("10.0.0.1")) == 1
    admission.release(key("10.0.0.1"))
    assert admission.total == 0 and admission.sources == 0
