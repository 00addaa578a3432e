"""The PROXY protocol header (HAProxy's spec, versions 1 and 2): a pure, bounded parser.

A load balancer that passes TCP through puts this header in front of the client's bytes
so that the server learns who the client is. The parser looks at what has arrived so
far and answers at once: more bytes are needed, here is the header and its length, or
the bytes cannot be a header (:class:`ProxyError`). It never asks for more than
``limit`` bytes, so a peer cannot make the caller buffer beyond its budget, and it
decides as early as the bytes allow: the first byte that cannot belong to a header ends
it. Which peers may send a header, and what happens to the connection, is the caller's.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the spec's longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version and command, family and transport, length

_V2_LOCAL, _V2_PROXY = 0x20, 0x21
_V2_STREAM = 1
# Address family nibble -> (socket family, size of the address block).
_V2_FAMILIES = {0x1: (socket.AF_INET, 12), 0x2: (socket.AF_INET6, 36)}
_V2_UNSPEC, _V2_UNIX = 0x0, 0x3
_V1_FAMILIES = {b"TCP4": socket.AF_INET, b"TCP6": socket.AF_INET6}
_V1_PROTOCOLS = (b"TCP4", b"TCP6", b"UNKNOWN")


class ProxyError(ValueError):
    """The bytes cannot be a PROXY header: ``missing`` (no header starts here) or ``malformed``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.args[0]}: {self.args[1]}"


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header. ``source`` is None when the header names no client (v2 LOCAL, as
    in health checks; v1 UNKNOWN; v2 UNSPEC or UNIX): the proxy's own address then stands."""

    version: int
    length: int  # bytes the header took; the client's stream starts after them
    family: socket.AddressFamily | None = None
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def starts_like_header(data: bytes) -> bool | None:
    """Whether ``data`` begins a PROXY header: True, False, or None while too short to tell."""
    for signature in (V1_PREFIX, V2_SIGNATURE):
        common = min(len(data), len(signature))
        if data[:common] == signature[:common]:
            return True if common == len(signature) else None
    return False


def parse(data: bytes, limit: int = V2_FIXED + 216) -> ProxyHeader | None:
    """The header at the start of ``data``, or None if more bytes are needed.

    ``limit`` bounds a v2 header, TLVs included (the default fits every address block
    and no TLV); a v1 header is at most V1_MAX bytes whatever the limit. Raises
    ProxyError as soon as the bytes cannot be a header.
    """
    begins = starts_like_header(data)
    if begins is None:
        return None
    if not begins:
        raise ProxyError("missing", "no PROXY protocol signature")
    if data[:1] == b"P":
        return _parse_v1(data)
    return _parse_v2(data, limit)


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    line = data[len(V1_PREFIX) : end if end >= 0 else V1_MAX]
    protocol, space, _ = line.partition(b" ")
    if space or end >= 0:
        known = protocol in _V1_PROTOCOLS
    else:  # still arriving: it must be on its way to a known word
        known = any(word.startswith(protocol) for word in _V1_PROTOCOLS)
    if not known:
        raise ProxyError("malformed", "v1 protocol must be TCP4, TCP6 or UNKNOWN")
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in line or b"\r" in line[:-1]:
            raise ProxyError("malformed", "v1 line is not ended by CRLF within 107 bytes")
        return None
    fields = line.split(b" ")
    length = end + 2
    if fields[0] == b"UNKNOWN":
        return ProxyHeader(1, length)
    family = _V1_FAMILIES[fields[0]]
    if len(fields) != 5:
        raise ProxyError("malformed", "v1 needs exactly: protocol, two addresses, two ports")
    source = (_v1_address(family, fields[1]), _v1_port(fields[3]))
    destination = (_v1_address(family, fields[2]), _v1_port(fields[4]))
    return ProxyHeader(1, length, family, source, destination)


def _v1_address(family: socket.AddressFamily, text: bytes) -> str:
    try:
        address = text.decode("ascii")
        socket.inet_pton(family, address)  # strict: no leading zeros, no scope, no spaces
    except (UnicodeDecodeError, OSError, ValueError):
        raise ProxyError("malformed", "v1 address is not valid for its protocol") from None
    return address


def _v1_port(text: bytes) -> int:
    if not (text.isdigit() and len(text) <= 5 and (text == b"0" or text[:1] != b"0")):
        raise ProxyError("malformed", "v1 port must be a decimal number without leading zeros")
    port = int(text)
    if port > 65535:
        raise ProxyError("malformed", "v1 port above 65535")
    return port


def _parse_v2(data: bytes, limit: int) -> ProxyHeader | None:
    if len(data) < V2_FIXED:
        # The command byte decides early: a version or command that cannot be right ends it now.
        if len(data) > 12 and data[12] not in (_V2_LOCAL, _V2_PROXY):
            raise ProxyError("malformed", "v2 version must be 2 and command LOCAL or PROXY")
        return None
    command, family_byte = data[12], data[13]
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyError("malformed", "v2 version must be 2 and command LOCAL or PROXY")
    length = V2_FIXED + int.from_bytes(data[14:16], "big")
    if length > limit:
        raise ProxyError("malformed", f"v2 header of {length} bytes is over the {limit}-byte budget")
    if len(data) < length:
        return None
    if command == _V2_LOCAL:
        return ProxyHeader(2, length)
    family_nibble, transport = family_byte >> 4, family_byte & 0x0F
    if family_nibble in (_V2_UNSPEC, _V2_UNIX) and transport <= 2:
        return ProxyHeader(2, length)  # no IP address to take: the proxy's own stands
    known = _V2_FAMILIES.get(family_nibble)
    if known is None or transport != _V2_STREAM:
        raise ProxyError("malformed", "v2 family must be INET or INET6 over STREAM (or UNSPEC, UNIX)")
    family, block = known
    if length - V2_FIXED < block:
        raise ProxyError("malformed", "v2 length is shorter than its address block")
    size = 4 if family == socket.AF_INET else 16
    addresses = data[V2_FIXED : V2_FIXED + 2 * size]
    ports = data[V2_FIXED + 2 * size : V2_FIXED + block]
    source = (socket.inet_ntop(family, addresses[:size]), int.from_bytes(ports[:2], "big"))
    destination = (socket.inet_ntop(family, addresses[size:]), int.from_bytes(ports[2:], "big"))
    return ProxyHeader(2, length, family, source, destination)
