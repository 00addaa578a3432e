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
