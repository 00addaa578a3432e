"""guarded_ws.upgrade against websockets 17.4: the fast path must decide as websockets does.

upgrade.py replaces websockets' request parser and, for the common request, its ``accept()``.
Its only claim to correctness is agreement with websockets, so these tests hold it there:
every head is parsed to the same request or refused with the same answer (414, 431, or a
plain refusal), every 101 it builds is the one websockets would send (less the Date), and the
requests real clients send do take the fast path.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from http import HTTPStatus

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from websocket._handshake import _get_handshake_headers
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import HeaderLineTooLong, RequestLineTooLong, TooManyHeaders
from websockets.http11 import Request
from websockets.protocol import CONNECTING
from websockets.server import ServerProtocol
from websockets.uri import parse_uri
from websockets.utils import accept_key

from guarded_ws.upgrade import HEAD_END, HeadTooLarge, parse_request, switching_protocols

# Parsed: ("parsed", method, path, protocol, header items); too large: ("too large", status);
# anything else refused: ("refused",).
Outcome = tuple[object, ...]

REFUSED: Outcome = ("refused",)
CHROMIUM_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
FIREFOX_KEY = "x3JJHMbDL1EzLkh9GBhXDw=="
property_settings = settings(max_examples=400, deadline=None)


def _parsed(request: Request) -> Outcome:
    return ("parsed", request.method, request.path, request.protocol, list(request.headers.raw_items()))


def _by_upgrade(head: bytes) -> Outcome:
    try:
        return _parsed(parse_request(head))
    except HeadTooLarge as exc:
        return ("too large", exc.status)
    except ValueError:
        return REFUSED


def _by_websockets(head: bytes) -> Outcome:
    """What websockets' server makes of ``head`` followed by the empty line."""
    protocol = ServerProtocol(state=CONNECTING)
    protocol.receive_data(head + HEAD_END)
    events = protocol.events_received()
    if events:
        request = events[0]
        assert isinstance(request, Request)
        return _parsed(request)
    if isinstance(protocol.handshake_exc, RequestLineTooLong):
        return ("too large", HTTPStatus.REQUEST_URI_TOO_LONG)
    if isinstance(protocol.handshake_exc, (HeaderLineTooLong, TooManyHeaders)):
        return ("too large", HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    assert protocol.handshake_exc is not None
    return REFUSED


# Parse equivalence: near-valid heads, with the bytes that parsers tend to disagree on.

ATOMS = (b"a", b"Z", b"0", b"-", b"/", b"?", b"=", b" ", b"\t", b":", b",", b";",
         b"\r", b"\n", b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xe9", b"\xff", b"websocket")
fuzz = st.lists(st.sampled_from(ATOMS), max_size=6).map(b"".join)

methods = st.one_of(st.sampled_from((b"GET", b"POST", b"get", b"HEAD", b"G\x00T", b"G\xe9T", b"")), fuzz)
targets = st.one_of(
    st.sampled_from((b"/", b"/ws", b"/ws?x=1", b"*", b"http://h/ws", b"/caf\xc3\xa9", b"/a\rb", b"/ws?a\nb", b"")),
    st.tuples(st.sampled_from((b"/ws", b"/ws?")), fuzz).map(b"".join),
)
protocols = st.one_of(
    st.just(b"HTTP/1.1"),
    st.sampled_from((b"HTTP/1.0", b"HTTP/2", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1.1\r", b"junk")),
    fuzz,
)
spaces = st.sampled_from((b" ", b" ", b" ", b" ", b"  ", b"\t"))
request_lines = st.one_of(st.tuples(methods, spaces, targets, spaces, protocols).map(b"".join), fuzz)

names = st.one_of(
    st.sampled_from((b"Host", b"Upgrade", b"Sec-WebSocket-Key", b"X-!#$%&'*+.^_`|~", b"content-length")),
    st.sampled_from((b"", b"Bad Name", b" Host", b"Host ", b"\tX", b"X\xe9", b"X\x00")),
    fuzz,
)
separators = st.sampled_from((b":", b": ", b":\t", b" :", b"::", b""))
values = st.one_of(
    st.sampled_from((b"websocket", b"a b", b"a\tb", b" padded \t", b"caf\xe9", b"\x80\xff", b"a\x7fb", b"a\nb", b"")),
    st.tuples(st.just(b"websocket"), fuzz).map(b"".join),
)
body_lines = st.sampled_from((
    b"Content-Length: 0", b"Content-Length:0 ", b"content-length: 00", b"Content-Length: 1",
    b"Content-Length: ", b"Transfer-Encoding: chunked", b"transfer-encoding: identity",
))
header_lines = st.one_of(st.tuples(names, separators, values).map(b"".join), body_lines, fuzz)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """A request line and header lines; sometimes about 128 headers, or a line near 8190 bytes."""
    lines = [draw(request_lines), *draw(st.lists(header_lines, max_size=8))]
    padding = draw(st.sampled_from((0, 0, 0, 0, 120, 126, 128)))
    at = draw(st.integers(1, len(lines)))
    lines[at:at] = [b"X-Pad: 1"] * padding
    length = draw(st.sampled_from((None, None, None, 8190, 8191, 9000)))
    if length is not None:
        which = draw(st.integers(0, len(lines) - 1))
        line = lines[which]
        cut = draw(st.integers(0, len(line)))
        lines[which] = line[:cut] + b"a" * max(0, length - len(line)) + line[cut:]
    return b"\r\n".join(lines)


def _is_head(head: bytes) -> bool:
    """A head as the caller cuts it, at the first CRLF CRLF: none inside, none ending in it."""
    return (head + HEAD_END).find(HEAD_END) == len(head)


def _head_with_headers(count: int) -> bytes:
    return b"GET /ws HTTP/1.1" + b"".join(b"\r\nX-%d: 1" % n for n in range(count))


def _request_line(length: int) -> bytes:
    return b"GET /" + b"a" * (length - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"


def _header_line(length: int) -> bytes:
    return b"GET /ws HTTP/1.1\r\nX: " + b"a" * (length - len(b"X: "))


# websockets reads a head line by line, each up to its LF, and stops at its first error: a bare
# LF ends a line early, and which error decides the answer (414, 431 or none) follows the
# order of its checks, as in these heads.
@property_settings
@example(b"GET /ws?a\nb HTTP/1.1")
@example(_head_with_headers(128) + b"\r\n:")
@example(_request_line(9000) + b"\r\nX: 1" * 129)
@example(b"GET /ws\x80 HTTP/1.1\r\nX: " + b"a" * 9000)
@example(b"GET /ws HTTP/1.1\r\nX: a\n" + b"a" * 9000)
@given(heads().filter(_is_head))
def test_a_head_parses_as_websockets_parses_it(head: bytes) -> None:
    assert _by_upgrade(head) == _by_websockets(head)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        pytest.param(_head_with_headers(128), None, id="128 headers"),
        pytest.param(_head_with_headers(129), HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, id="129 headers"),
        pytest.param(_request_line(8190), None, id="8190-byte request line"),
        pytest.param(_request_line(8191), HTTPStatus.REQUEST_URI_TOO_LONG, id="8191-byte request line"),
        pytest.param(_header_line(8190), None, id="8190-byte header line"),
        pytest.param(_header_line(8191), HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, id="8191-byte header line"),
    ],
)
def test_limits_are_websockets_limits(head: bytes, status: HTTPStatus | None) -> None:
    """``status`` None: the head parses. websockets' MAX_LINE_LENGTH, 8192, counts the CRLF."""
    outcome = _by_upgrade(head)
    assert outcome == _by_websockets(head)
    assert (outcome[0] == "parsed") if status is None else (outcome == ("too large", status))


# Decision equivalence: the headers the handshake reads, missing, repeated, valid or not.


def _one(*values: str) -> st.SearchStrategy[list[str]]:
    return st.sampled_from(values).map(lambda value: [value])


def _key(size: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=size, max_size=size).map(lambda raw: base64.b64encode(raw).decode())


# Each header the handshake reads: its usual values, and others, valid or not, for its place.
HANDSHAKE_HEADERS: dict[str, tuple[st.SearchStrategy[list[str]], st.SearchStrategy[str]]] = {
    "Upgrade": (
        _one("websocket", "WebSocket"),
        st.sampled_from(("websocket", "WEBSOCKET", "websocket, h2c", "h2c", "websocket/13", "web socket")),
    ),
    "Connection": (
        _one("Upgrade", "keep-alive, Upgrade", "upgrade,keep-alive"),
        st.sampled_from((
            "Upgrade", "close", "keep-alive", "Upgrade, ", ", Upgrade", "Upgrade,,close", "Upgrade\t,\tclose",
            "Up grade", "Upgrade;x", "Upgrade, k\xe9ep",
        )),
    ),
    "Sec-WebSocket-Key": (
        _key(16).map(lambda key: [key]),
        st.one_of(
            _key(16), _key(15), _key(17),
            st.sampled_from((
                "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ=!", "dGhl IHNhbXBsZSBub25jZQ==",
                "dGhlIHNhbXBsZSBub25jZQ===", "=dGhlIHNhbXBsZSBub25jZQ=", "dGhl-HNhbXBsZSBub25jZQ==",
                "dGhl\xe9HNhbXBsZSBub25jZQ==",
            )),
            st.text("AQZagz09+/=-_ \xe9", min_size=20, max_size=26),
        ),
    ),
    "Sec-WebSocket-Version": (_one("13"), st.sampled_from(("13", "8", "13, 8", "013"))),
    "Origin": (st.lists(st.just("https://example.com"), max_size=1), st.sampled_from(("https://example.com", "null"))),
    "Sec-WebSocket-Protocol": (st.just([]), st.sampled_from(("chat", "chat, superchat", "bad proto"))),
    "Sec-WebSocket-Extensions": (
        _one("permessage-deflate; client_max_window_bits", "permessage-deflate"),
        st.sampled_from(("permessage-deflate", "garbage;;")),
    ),
}


@st.composite
def handshake_requests(draw: st.DrawFn) -> Request:
    """A GET /ws HTTP/1.1 upgrade with, one part in six, something else in that part's place:
    another method or version, a header missing, repeated, or with another value."""

    def unusual() -> bool:
        return draw(st.integers(0, 5)) == 5

    method = draw(st.sampled_from(("POST", "get"))) if unusual() else "GET"
    protocol = "HTTP/1.0" if unusual() else "HTTP/1.1"
    fields = [("Host", "127.0.0.1:8765")]
    for name, (usual, others) in HANDSHAKE_HEADERS.items():
        fields += [(name, value) for value in draw(st.lists(others, max_size=2) if unusual() else usual)]
    lines = [f"{method} /ws {protocol}", *(f"{name}: {value}" for name, value in draw(st.permutations(fields)))]
    return parse_request("\r\n".join(lines).encode("iso-8859-1"))


def _in_declared_shape(request: Request) -> bool:
    """No subprotocol, and one Connection header listing options without empty ones; websockets
    refuses the rest of what the fast path leaves to it (methods, versions, repeated headers)."""
    connection = request.headers.get_all("Connection")
    return (
        "Sec-WebSocket-Protocol" not in request.headers
        and len(connection) == 1
        and all(option.strip(" \t") for option in connection[0].split(","))
    )


@property_settings
@given(handshake_requests())
def test_the_fast_path_answers_as_websockets_accepts(handshake: Request) -> None:
    fast = switching_protocols(handshake)
    reference = ServerProtocol(extensions=None, state=CONNECTING).accept(handshake)
    if fast is None:
        assert reference.status_code != 101 or not _in_declared_shape(handshake)
    else:
        assert reference.status_code == 101
        # websockets' own 101, less its Date (which RFC 9110 doesn't ask of a 1xx).
        undated = Headers([(name, value) for name, value in reference.headers.raw_items() if name != "Date"])
        assert fast == dataclasses.replace(reference, headers=undated).serialize()


# Coverage: the requests real clients send take the fast path.


def _chromium() -> tuple[bytes, str]:
    head = (
        "GET /ws HTTP/1.1\r\n"
        "Host: 127.0.0.1:8765\r\n"
        "Connection: Upgrade\r\n"
        "Pragma: no-cache\r\n"
        "Cache-Control: no-cache\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36\r\n"
        "Upgrade: websocket\r\n"
        "Origin: http://127.0.0.1:8765\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Accept-Encoding: gzip, deflate, br, zstd\r\n"
        "Accept-Language: en-US,en;q=0.9\r\n"
        "Cookie: gws_ticket=abc; gws_csrf=def\r\n"
        f"Sec-WebSocket-Key: {CHROMIUM_KEY}\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
    )
    return head.encode(), CHROMIUM_KEY


def _firefox() -> tuple[bytes, str]:
    head = (
        "GET /ws HTTP/1.1\r\n"
        "Host: 127.0.0.1:8765\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0\r\n"
        "Accept: */*\r\n"
        "Accept-Language: en-US,en;q=0.5\r\n"
        "Accept-Encoding: gzip, deflate, br\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Origin: http://127.0.0.1:8765\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate\r\n"
        f"Sec-WebSocket-Key: {FIREFOX_KEY}\r\n"
        "Connection: keep-alive, Upgrade\r\n"
        "Cookie: gws_ticket=abc; gws_csrf=def\r\n"
        "Sec-Fetch-Dest: empty\r\n"
        "Sec-Fetch-Mode: websocket\r\n"
        "Sec-Fetch-Site: same-origin\r\n"
        "Pragma: no-cache\r\n"
        "Cache-Control: no-cache\r\n"
        "Upgrade: websocket"
    )
    return head.encode(), FIREFOX_KEY


def _websockets_client() -> tuple[bytes, str]:
    request = ClientProtocol(parse_uri("ws://127.0.0.1:8765/ws")).connect()
    return request.serialize().removesuffix(HEAD_END), request.headers["Sec-WebSocket-Key"]


def _websocket_client() -> tuple[bytes, str]:
    lines, key = _get_handshake_headers("/ws", "ws://127.0.0.1:8765/ws", "127.0.0.1", 8765, {})
    return "\r\n".join(lines).removesuffix("\r\n\r\n").encode(), key


@pytest.mark.parametrize("client", [_chromium, _firefox, _websockets_client, _websocket_client])
def test_real_clients_take_the_fast_path(client: Callable[[], tuple[bytes, str]]) -> None:
    head, key = client()
    response = switching_protocols(parse_request(head))
    assert response is not None
    assert b"\r\nSec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n" in response
