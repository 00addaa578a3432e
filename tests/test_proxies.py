from __future__ import annotations

import pytest

from guarded_ws.proxies import TrustedProxies, forwarded_client


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


def test_x_forwarded_for_takes_the_entry_the_first_trusted_proxy_appended():
    xff = "x-forwarded-for"
    assert forwarded_client(["10.0.0.9"], xff, 1) == "10.0.0.9"
    # The client wrote "6.6.6.6" itself; two trusted proxies appended 10.0.0.9 and 10.1.1.1.
    assert forwarded_client(["6.6.6.6, 10.0.0.9", "10.1.1.1"], xff, 2) == "10.0.0.9"
    assert forwarded_client(["6.6.6.6, 10.0.0.9"], xff, 1) == "10.0.0.9"
    assert forwarded_client(["10.0.0.9"], xff, 2) is None  # fewer entries than trusted hops
    assert forwarded_client([], xff, 1) is None
    assert forwarded_client(["unknown"], xff, 1) is None
    assert forwarded_client(["2001:db8::1"], xff, 1) == "2001:db8::1"
    assert forwarded_client(["10.0.0.9:5000"], xff, 1) == "10.0.0.9"


def test_forwarded_takes_the_for_parameter():
    fwd = "forwarded"
    assert forwarded_client(['for=192.0.2.60;proto=http;by=203.0.113.43'], fwd, 1) == "192.0.2.60"
    assert forwarded_client(['for="[2001:db8:cafe::17]:4711"'], fwd, 1) == "2001:db8:cafe::17"
    assert forwarded_client(["for=6.6.6.6, For=192.0.2.7"], fwd, 1) == "192.0.2.7"
    assert forwarded_client(["for=_hidden", ], fwd, 1) is None
    assert forwarded_client(["proto=https"], fwd, 1) is None
    assert forwarded_client(['for="[::1'], fwd, 1) is None
