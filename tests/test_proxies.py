from __future__ import annotations

import pytest

from guarded_ws.proxies import TrustedProxies


def test_members_of_the_listed_networks_are_trusted_and_no_one_else():
    trusted = TrustedProxies(["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"])
    assert "10.200.3.4" in trusted
    assert "192.168.1.7" in trusted
    assert "192.168.1.8" not in trusted
    assert "11.0.0.1" not in trusted
    assert "fd12::1" in trusted
    assert "fe80::1%eth0" not in trusted
    assert "::ffff:10.0.0.1" in trusted  # a dual-stack socket's view of an IPv4 proxy
    assert "::ffff:11.0.0.1" not in trusted


def test_nothing_is_trusted_by_an_empty_list_and_junk_is_never_trusted():
    assert "127.0.0.1" not in TrustedProxies([])
    trusted = TrustedProxies(["0.0.0.0/0"])
    assert "1.2.3.4" in trusted
    for junk in ("", "localhost", "1.2.3.4\x00", "::1"):
        assert junk not in trusted


@pytest.mark.parametrize("cidr", ["10.0.0.1/8", "10.0.0.0/33", "proxy.example", ""])
def test_a_wrong_network_is_an_error(cidr):
    with pytest.raises(ValueError):
        TrustedProxies([cidr])
