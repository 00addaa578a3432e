"""Admission: who may hold pending state, decided on the raw peer address.

Runs right after ``accept()``, before a protocol object exists or a byte is
read, so it must be cheap: one address parse and two dictionary operations.
The per-source table holds an entry only while that source has a pending
connection, so its size is bounded by the global cap, whatever the attacker
does.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Hashable
from enum import IntEnum

SourceKey = Hashable


class Verdict(IntEnum):
    ADMIT = 0
    EVICT = 1  # admit after evicting the oldest pending connection
    REJECT_SOURCE = 2  # per-source pending cap: HTTP 429
    REJECT_GLOBAL = 3  # global pending cap: HTTP 503


def source_keyer(ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> Callable[[str], SourceKey]:
    """Build the function that maps a peer address to the key its caps are counted under.

    IPv6 defaults to /64 because one host usually owns a whole /64 and would
    otherwise walk around any per-address cap. IPv4-mapped IPv6 addresses
    (from dual-stack sockets) count as the IPv4 address they carry.
    """
    if not 1 <= ipv4_prefix <= 32:
        raise ValueError(f"ipv4_prefix must be 1..32, got {ipv4_prefix}")
    if not 1 <= ipv6_prefix <= 128:
        raise ValueError(f"ipv6_prefix must be 1..128, got {ipv6_prefix}")
    mask4 = _masker(ipv4_prefix, 32)
    mask6 = _masker(ipv6_prefix, 128)
    inet_pton = socket.inet_pton
    v4, v6 = socket.AF_INET, socket.AF_INET6

    def key(host: str) -> SourceKey:
        if ":" not in host:
            return mask4(inet_pton(v4, host))
        packed = inet_pton(v6, host.partition("%")[0])
        if packed[:12] == b"\0" * 10 + b"\xff\xff":
            return mask4(packed[12:])
        return mask6(packed)

    return key


def _masker(prefix: int, bits: int) -> Callable[[bytes], bytes]:
    """Zero the host bits; keys keep their family's length, so IPv4 and IPv6 never collide."""
    length = bits // 8
    if prefix == bits:
        return lambda packed: packed
    if prefix % 8 == 0:
        size = prefix // 8
        padding = bytes(length - size)
        return lambda packed: packed[:size] + padding
    mask = ((1 << prefix) - 1) << (bits - prefix)
    return lambda packed: (int.from_bytes(packed, "big") & mask).to_bytes(length, "big")


class Admission:
    """Counts pending connections per source and in total."""

    __slots__ = ("max_per_source", "max_total", "evict", "_by_source", "_total")

    def __init__(self, *, max_per_source: int, max_total: int, evict_oldest: bool = True) -> None:
        if max_per_source < 1 or max_total < 1:
            raise ValueError("pending caps must be >= 1")
        if max_per_source > max_total:
            raise ValueError("max_per_source must not exceed max_total")
        self.max_per_source = max_per_source
        self.max_total = max_total
        self.evict = evict_oldest
        self._by_source: dict[SourceKey, int] = {}
        self._total = 0

    @property
    def total(self) -> int:
        return self._total

    @property
    def sources(self) -> int:
        return len(self._by_source)

    def pending(self, key: SourceKey) -> int:
        return self._by_source.get(key, 0)

    def check(self, key: SourceKey | None) -> Verdict:
        """Decide without counting; the caller then calls :meth:`take` for ADMIT or EVICT.

        The per-source cap comes first: a source at its cap must not push out
        another source's connection.
        """
        if self._by_source.get(key, 0) >= self.max_per_source:
            return Verdict.REJECT_SOURCE
        if self._total < self.max_total:
            return Verdict.ADMIT
        return Verdict.EVICT if self.evict else Verdict.REJECT_GLOBAL

    def take(self, key: SourceKey | None) -> None:
        """Count a connection; ``None``: its source is not known yet (a trusted proxy's, before
        the PROXY header), so only the global cap counts it until :meth:`assign`."""
        if key is not None:
            self._by_source[key] = self._by_source.get(key, 0) + 1
        self._total += 1

    def assign(self, key: SourceKey) -> bool:
        """Give a connection taken with ``None`` its source, unless that source is at its cap."""
        count = self._by_source.get(key, 0)
        if count >= self.max_per_source:
            return False
        self._by_source[key] = count + 1
        return True

    def release(self, key: SourceKey | None) -> None:
        if key is None:
            self._total -= 1
            return
        count = self._by_source[key] - 1
        if count:
            self._by_source[key] = count
        else:
            del self._by_source[key]
        self._total -= 1
