"""Which peers are trusted proxies: the only ones whose word on the client's address counts.

A peer that is not listed gets no say: its PROXY header or forwarded header would let
it pose as any source, and so walk around every per-source cap. Pure: addresses in,
booleans out; checked on the accept path, so one address parse and a few integer
comparisons.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

_MAPPED = b"\0" * 10 + b"\xff\xff"


class TrustedProxies:
    __slots__ = ("_v4", "_v6")

    def __init__(self, cidrs: Iterable[str]) -> None:
        """``cidrs``: networks such as ``10.0.0.0/8`` or ``fd00::/8``; raises ValueError on a bad one."""
        self._v4: list[tuple[int, int]] = []
        self._v6: list[tuple[int, int]] = []
        for cidr in cidrs:
            network = ipaddress.ip_network(cidr, strict=True)
            table = self._v4 if network.version == 4 else self._v6
            table.append((int(network.network_address), int(network.netmask)))

    def __contains__(self, host: str) -> bool:
        """Whether a peer address (as accept() gives it) is a trusted proxy."""
        try:
            if ":" not in host:
                return _member(socket.inet_pton(socket.AF_INET, host), self._v4)
            packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        except (OSError, ValueError):
            return False
        if packed[:12] == _MAPPED:  # a dual-stack socket's view of an IPv4 peer
            return _member(packed[12:], self._v4)
        return _member(packed, self._v6)


def _member(packed: bytes, networks: list[tuple[int, int]]) -> bool:
    value = int.from_bytes(packed, "big")
    return any(value & mask == network for network, mask in networks)


def forwarded_client(values: list[str], header: str, hops: int) -> str | None:
    """The client address a chain of ``hops`` trusted proxies recorded, or None.

    Each trusted proxy appends the address it received the request from, so the
    ``hops``-th entry from the right is the one the first trusted proxy saw; everything
    left of it came from the client and proves nothing. ``header`` is
    ``"x-forwarded-for"`` (bare addresses) or ``"forwarded"`` (RFC 7239 ``for=``
    parameters). None when there are fewer entries than hops, or that entry is not an
    IP address (``unknown``, an obfuscated name): the proxy's own address then stands.
    """
    entries = [entry.strip() for value in values for entry in value.split(",")]
    if len(entries) < hops:
        return None
    entry = entries[-hops]
    if header == "forwarded":
        entry = _forwarded_for(entry)
    return _address(entry)


def _forwarded_for(element: str) -> str:
    for pair in element.split(";"):
        name, _, value = pair.strip().partition("=")
        if name.lower() == "for":
            return value.strip('"')
    return ""


def _address(text: str) -> str | None:
    """An IP address, without the brackets and port RFC 7239 (and some proxies) put around it."""
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return text
        except (OSError, ValueError):
            continue
    return None
