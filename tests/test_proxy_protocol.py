"""The PROXY protocol parser: well-formed, truncated and hostile headers, v1 and v2."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from guarded_ws.proxy_protocol import V1_MAX, V2_FIXED, V2_SIGNATURE, ProxyError, parse, starts_like_header
from support import proxy_v1, proxy_v2

LIMIT = 1024

ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1))
ports = st.integers(0, 65535)
endpoints = st.one_of(
    st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports)),
    st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports)),
)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, tuple[str, int] | None]:
    """A well-formed header of either version and what it says about the client."""
    src, dst = draw(endpoints)
    kind = draw(st.sampled_from(["v1", "v2", "v2_tlv", "v2_local"]))
    if kind == "v1":
        return proxy_v1(src, dst), src
    if kind == "v2_local":
        return proxy_v2(None), None
    tlvs = draw(st.binary(max_size=100)) if kind == "v2_tlv" else b""
    return proxy_v2(src, dst, tlvs=tlvs), src


@settings(max_examples=300)
@given(headers(), st.binary(max_size=64))
def test_a_well_formed_header_names_the_client_and_its_length(made, rest: bytes) -> None:
    header_bytes, client = made
    header = parse(header_bytes + rest, LIMIT)
    assert header is not None
    assert header.length == len(header_bytes)
    if client is None:
        assert header.source is None
    else:
        assert header.source is not None and header.source[1] == client[1]
        assert ipaddress.ip_address(header.source[0]) == ipaddress.ip_address(client[0])
        assert header.family == (socket.AF_INET6 if ":" in client[0] else socket.AF_INET)


@settings(max_examples=300)
@given(headers())
def test_every_truncation_asks_for_more_and_never_decides_early(made) -> None:
    header_bytes, _ = made
    for end in range(len(header_bytes)):
        assert parse(header_bytes[:end], LIMIT) is None, end


@settings(max_examples=1000)
@given(st.binary(max_size=300))
@example(V2_SIGNATURE + b"\x21\x11\xff\xff")
@example(b"PROXY TCP4 " + b"1" * 200)
def test_hostile_bytes_get_an_answer_within_the_bound(data: bytes) -> None:
    """Anything: a header, a ProxyError, or a request for more only while under the bound."""
    try:
        header = parse(data, LIMIT)
    except ProxyError as exc:
        assert exc.reason in ("missing", "malformed")
        return
    if header is None:
        assert len(data) < max(LIMIT, V1_MAX)
        assert starts_like_header(data) is not False
    else:
        assert header.length <= min(len(data), max(LIMIT, V1_MAX))


@settings(max_examples=500)
@given(headers(), st.integers(0, 200), st.integers(0, 255))
def test_a_mutated_header_is_refused_or_still_means_one_header(made, at: int, value: int) -> None:
    header_bytes, _ = made
    i = at % len(header_bytes)
    mutated = header_bytes[:i] + bytes([value]) + header_bytes[i + 1 :]
    try:
        header = parse(mutated, LIMIT)
    except ProxyError:
        return
    if header is not None:
        assert header.length <= len(mutated)


def test_something_else_than_a_header_is_missing_from_the_first_byte() -> None:
    with pytest.raises(ProxyError, match="missing"):
        parse(b"G")
    with pytest.raises(ProxyError, match="missing"):
        parse(b"GET /ws HTTP/1.1\r\n")
    assert starts_like_header(b"PRO") is None
    assert starts_like_header(b"\r\n\r\n") is None
    assert starts_like_header(b"POST") is False


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF without CR
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # the family says IPv4
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # leading zero in an octet
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # leading zero in a port
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY X",  # no known protocol starts so: refused before the line ends
    ],
)
def test_v1_malformed_lines_are_refused(line: bytes) -> None:
    with pytest.raises(ProxyError, match="malformed"):
        parse(line)


def test_v1_unknown_keeps_the_proxy_address_and_the_line_is_bounded() -> None:
    header = parse(b"PROXY UNKNOWN whatever follows\r\nGET")
    assert header is not None and header.source is None and header.length == len(b"PROXY UNKNOWN whatever follows\r\n")
    with pytest.raises(ProxyError, match="107"):
        parse(b"PROXY UNKNOWN " + b"x" * 100)
    longest = b"PROXY TCP6 " + b"ffff:" * 7 + b"ffff " + b"ffff:" * 7 + b"ffff 65535 65535\r\n"
    assert len(longest) <= V1_MAX and parse(longest) is not None


def _v2(command: int, family: int, body: bytes, length: int | None = None) -> bytes:
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(body) if length is None else length) + body


@pytest.mark.parametrize(
    "data",
    [
        _v2(0x11, 0x11, bytes(12)),  # version 1 in a v2 header
        _v2(0x22, 0x11, bytes(12)),  # command 2
        _v2(0x21, 0x12, bytes(12)),  # INET over DGRAM
        _v2(0x21, 0x41, bytes(12)),  # family 4
        _v2(0x21, 0x11, bytes(8)),  # shorter than the IPv4 block
        _v2(0x21, 0x21, bytes(20)),  # shorter than the IPv6 block
        V2_SIGNATURE + b"\x31",  # refused at the 13th byte
    ],
)
def test_v2_malformed_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyError, match="malformed"):
        parse(data + bytes(64))


def test_v2_length_over_the_budget_is_refused_before_it_arrives() -> None:
    with pytest.raises(ProxyError, match="budget"):
        parse(_v2(0x21, 0x11, b"", length=65535)[:V2_FIXED], limit=1024)
    assert parse(_v2(0x21, 0x11, bytes(1008))[:V2_FIXED], limit=1024) is None


def test_v2_local_unspec_and_unix_keep_the_proxy_address() -> None:
    for data in (proxy_v2(None), _v2(0x21, 0x00, b""), _v2(0x21, 0x31, bytes(216))):
        header = parse(data, LIMIT)
        assert header is not None and header.source is None and header.length == len(data)


def test_v2_ipv6_source() -> None:
    header = parse(proxy_v2(("2001:db8::7", 4242), ("2001:db8::1", 443)), LIMIT)
    assert header is not None
    assert header.source == ("2001:db8::7", 4242) and header.destination == ("2001:db8::1", 443)
