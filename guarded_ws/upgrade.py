"""The opening handshake's common case, without the Sans-I/O handshake machinery.

websockets' handshake costs about 45 µs a connection (a generator-driven parser, a
protocol object, a Headers object for the response, a formatted Date); every attack
connection that sends a request pays it. This reads the head in one pass and answers the
request every client sends (GET, HTTP/1.1, one ``Upgrade: websocket``, version 13, a
valid key, no subprotocol) with a 101 built from a constant and the accept key, in about
a fifth of the time. Anything else goes to websockets' ``accept()``, so its answers
(405, 426, 400 with a reason) stay the reference; tests/test_upgrade.py holds both to the
same decisions.

Pure: bytes in, a Request or a response out.
"""

from __future__ import annotations

import binascii
import re
from http import HTTPStatus

from websockets.datastructures import Headers, MultipleValuesError
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request
from websockets.utils import accept_key

HEAD_END = b"\r\n\r\n"

# RFC 9110's token and field-value (obs-text allowed, no folding), as websockets parses them.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")

# No Date: RFC 9110 section 6.6.1 asks for one in 2xx-4xx answers, not in a 1xx.
_SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "


class HeadTooLarge(ValueError):
    """A line or the header count over websockets' limits: answered 414 or 431, as websockets does."""

    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


def parse_request(head: bytes) -> Request:
    """The request in ``head``: its request line and header lines, without the empty line.

    Raises HeadTooLarge, or ValueError for anything websockets' parser refuses, checking in
    its order so that the answer is the same.
    """
    lines = head.split(b"\r\n")
    method, path, protocol = _line(lines[0], HTTPStatus.REQUEST_URI_TOO_LONG).split(b" ", 2)  # ValueError: not 3
    if protocol != b"HTTP/1.1" and protocol != b"HTTP/1.0":
        raise ValueError("unsupported protocol")
    # decode("ascii") raises UnicodeDecodeError, a ValueError, as websockets' parser does.
    request = Request(path.decode("ascii"), Headers(), method.decode("ascii"), protocol.decode("ascii"))
    headers = request.headers
    for line in lines[1 : MAX_NUM_HEADERS + 2]:  # websockets reads one line past the limit before refusing
        name, colon, value = _line(line, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE).partition(b":")
        value = value.strip(b" \t")
        if not colon or _TOKEN.fullmatch(name) is None or _VALUE.fullmatch(value) is None:
            raise ValueError("invalid header line")
        headers.set_insecure(name.decode("ascii"), value.decode("iso-8859-1"))
    if len(lines) > MAX_NUM_HEADERS + 1:
        raise HeadTooLarge(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    if "Transfer-Encoding" in headers or not set(headers.get_all("Content-Length")) <= {"0"}:
        raise ValueError("request body")
    return request


def _line(line: bytes, too_long: HTTPStatus) -> bytes:
    """``line`` as websockets reads it: up to a newline, at most MAX_LINE_LENGTH with its CRLF;
    a bare LF ends a line without CRLF, which it refuses."""
    lf = line.find(b"\n")
    if (lf + 1 if lf >= 0 else len(line) + 2) > MAX_LINE_LENGTH:
        raise HeadTooLarge(too_long)
    if lf >= 0:
        raise ValueError("line without CRLF")
    return line


def switching_protocols(request: Request) -> bytes | None:
    """The 101 for a request of the shape every client sends, or None: let websockets decide."""
    if request.method != "GET" or request.protocol != "HTTP/1.1":
        return None
    headers = request.headers
    try:
        upgrade = headers["Upgrade"]
        key = headers["Sec-WebSocket-Key"]
        version = headers["Sec-WebSocket-Version"]
        connection = headers["Connection"]
    except (KeyError, MultipleValuesError):
        return None
    if (
        version != "13"
        or upgrade.lower() != "websocket"
        or "Sec-WebSocket-Protocol" in headers
        or len(headers.get_all("Origin")) > 1
        or not _upgrade_in(connection)
        or not _valid_key(key)
    ):
        return None
    return _SWITCHING + accept_key(key).encode() + b"\r\n\r\n"


def _upgrade_in(connection: str) -> bool:
    """``upgrade`` among the Connection header's options, each of them a token."""
    options = [option.strip(" \t") for option in connection.lower().split(",")]
    return "upgrade" in options and all(_TOKEN.fullmatch(option.encode("iso-8859-1")) for option in options)


def _valid_key(key: str) -> bool:
    try:
        return len(binascii.a2b_base64(key.encode("iso-8859-1"), strict_mode=True)) == 16
    except binascii.Error:
        return False
