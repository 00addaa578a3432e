"""The preauth endpoint's bounded request reader and its routing, without a network."""

from __future__ import annotations

import logging
import socket
from http import HTTPStatus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guarded_ws.config import ConfigError, load_config
from guarded_ws.metrics import Metrics
from guarded_ws.preauth import Preauth, Refusal, RequestReader, bearer, hook
from guarded_ws.rate import AcceptRate
from guarded_ws.runner import build_server
from guarded_ws.tickets import Tickets
from guarded_ws.tokens import AuthError, Identity

ORIGIN = "https://app.example.com"
REQUEST = (
    b"POST /ws/preauth HTTP/1.1\r\nHost: edge\r\nOrigin: https://app.example.com\r\n"
    b"Authorization: Bearer t0k3n\r\nCookie: session=s1; theme=dark\r\nContent-Length: 4\r\n\r\nbody"
)


def _read(data: bytes, max_bytes: int = 1024, max_body: int = 16) -> RequestReader:
    reader = RequestReader(max_bytes, max_body)
    reader.feed(data)
    return reader


def _refused(data: bytes, **kw: int) -> tuple[HTTPStatus, str]:
    with pytest.raises(Refusal) as caught:
        _read(data, **kw)
    return caught.value.status, caught.value.reason


@given(cuts=st.lists(st.integers(0, len(REQUEST)), max_size=6))
def test_a_request_split_anywhere_reads_the_same(cuts):
    reader = RequestReader(1024, 16)
    bounds = [0, *sorted(cuts), len(REQUEST)]
    for start, end in zip(bounds, bounds[1:]):
        reader.feed(REQUEST[start:end])
        if end < len(REQUEST):
            assert reader.body() is None
    assert reader.head is not None
    method, target, headers = reader.head
    assert (method, target) == ("POST", "/ws/preauth")
    assert (headers["origin"], headers["Authorization"]) == (ORIGIN, "Bearer t0k3n")
    assert reader.body() == b"body"


def test_the_head_is_bounded_by_the_request_budget():
    assert _refused(b"POST / HTTP/1.1\r\nX: " + b"a" * 2000, max_bytes=1024) == (
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    )
    reader = RequestReader(64, 16)
    reader.feed(b"POST / HTTP/1.1\r\n")
    with pytest.raises(Refusal):
        for _ in range(10):  # trickled: the budget counts what was sent, not what one read held
            reader.feed(b"X-Pad: aaaa\r\n")


def test_the_body_is_bounded_before_it_is_read():
    head = b"POST /ws/preauth HTTP/1.1\r\nContent-Length: 17\r\n\r\n"
    assert _refused(head, max_body=16) == (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body_too_large")
    assert _refused(head, max_bytes=64, max_body=4096) == (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body_too_large")


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /x HTTP/1.0\r\n\r\n",
        b"post /x HTTP/1.1\r\n\r\n",
        b"POST x HTTP/1.1\r\n\r\n",
        b"POST /x HTTP/1.1\r\nBad Header: 1\r\n\r\n",
        b"POST /x HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n",
        b"POST /x HTTP/1.1\r\nX: a\nb\r\n\r\n",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /x HTTP/1.1\r\n" + b"X: 1\r\n" * 129 + b"\r\n",
    ],
)
def test_malformed_requests_are_400(data):
    assert _refused(data, max_bytes=4096) == (HTTPStatus.BAD_REQUEST, "malformed")


def _preauth(authenticate=None, rate: AcceptRate | None = None) -> tuple[Preauth, Metrics]:
    metrics = Metrics()
    endpoint = Preauth(
        path="/ws/preauth",
        tickets=Tickets("preauth-test-secret-0123456789-abcdef", ttl=30.0),
        cookie_name="ticket",
        secure=True,
        domain=None,
        authenticate=authenticate or (lambda request, now: Identity("alice", {}, float("inf"))),
        rate=rate if rate is not None else AcceptRate(100.0, 100),
        metrics=metrics,
        max_request_bytes=1024,
        max_body_bytes=16,
    )
    return endpoint, metrics


def _answer(endpoint: Preauth, data: bytes, now: float = 100.0) -> bytes | None:
    return endpoint.receive(
        endpoint.reader(), data, source="s", host="127.0.0.1", allowed_origins={ORIGIN}, now=now, wallclock=now
    )


def _status(response: bytes | None) -> int:
    assert response is not None
    return int(response.split(b" ", 2)[1])


def test_a_good_request_gets_a_ticket_and_no_cors_header():
    endpoint, metrics = _preauth()
    response = _answer(endpoint, REQUEST)
    assert _status(response) == 200
    assert b"Set-Cookie: __Host-ticket=v1." not in response  # the name is the caller's to choose
    assert b"Set-Cookie: ticket=v1." in response and b"HttpOnly; SameSite=Strict; Secure" in response
    assert b'"expires_in": 30' in response and b'"csrf": "' in response
    assert b"Access-Control" not in response and b"Cache-Control: no-store" in response
    ok = {"method": "preauth", "result": "ok"}
    assert metrics.registry.get_sample_value("guarded_ws_auth_attempts_total", ok) == 1


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (REQUEST.replace(b"/ws/preauth", b"/elsewhere"), 404, "path"),
        (REQUEST.replace(b"POST", b"OPTIONS"), 405, "method"),
        (REQUEST.replace(b"POST", b"PUT"), 405, "method"),
        (REQUEST.replace(ORIGIN.encode(), b"https://evil.example"), 403, "origin"),
        (REQUEST.replace(b"Origin: https://app.example.com\r\n", b""), 403, "origin"),
        (REQUEST.replace(b"Host: edge", b"Origin: " + ORIGIN.encode()), 403, "origin"),  # two Origin headers
    ],
)
def test_refusals_before_any_credential_is_looked_at(data, status, reason):
    called = []
    endpoint, metrics = _preauth(lambda request, now: called.append(1) or Identity("x", {}, 1e12))
    response = _answer(endpoint, data)
    assert _status(response) == status
    assert b"Access-Control" not in response
    assert metrics.registry.get_sample_value("guarded_ws_connections_rejected_total", {"reason": reason}) == 1
    assert called == []


def test_the_rate_is_per_source_and_checked_before_the_credential():
    endpoint, metrics = _preauth(rate=AcceptRate(1.0, 2))
    assert [_status(_answer(endpoint, REQUEST, now=100.0)) for _ in range(3)] == [200, 200, 429]
    assert _status(_answer(endpoint, REQUEST, now=101.0)) == 200  # refilled
    value = metrics.registry.get_sample_value("guarded_ws_connections_rejected_total", {"reason": "preauth_rate"})
    assert value == 1


def test_the_bearer_authenticator_counts_each_result():
    def verify(token: str, now: float) -> Identity:
        if token == "t0k3n":
            return Identity("alice", {}, now + 10)
        raise AuthError("expired", "token expired")

    endpoint, metrics = _preauth(bearer(verify))
    response = _answer(endpoint, REQUEST)
    assert _status(response) == 200 and b'"expires_in": 10' in response  # never past the token's own exp
    assert _status(_answer(endpoint, REQUEST.replace(b"t0k3n", b"old"))) == 401
    assert _status(_answer(endpoint, REQUEST.replace(b"Authorization: Bearer t0k3n\r\n", b""))) == 401
    for result in ("ok", "expired", "missing"):
        labels = {"method": "preauth", "result": result}
        assert metrics.registry.get_sample_value("guarded_ws_auth_attempts_total", labels) == 1


def test_a_hook_sees_headers_cookies_and_body_and_anything_but_a_subject_refuses():
    seen = []

    def session(request):
        seen.append((request.path, request.cookies["session"], request.body, request.source))
        return {"s1": "bob", "s2": None, "s3": 42}.get(request.cookies["session"]) or (1 / 0)

    endpoint, _ = _preauth(hook(session))
    assert _status(_answer(endpoint, REQUEST)) == 200
    assert seen == [("/ws/preauth", "s1", b"body", "127.0.0.1")]
    for value in (b"s2", b"s3", b"s4"):
        assert _status(_answer(endpoint, REQUEST.replace(b"session=s1", b"session=" + value))) == 401


def test_tickets_need_a_secret_of_32_bytes_whatever_checks_the_tokens():
    overrides = {
        "cookie.enabled": True,
        "server.allowed_origins": ORIGIN,
        "auth.verifier": "sample_apps:verify_hook",  # tokens need no secret: tickets still do
    }
    config = load_config(None, environ={"GUARDED_WS_SECRET": "too-short"}, overrides=overrides)
    with pytest.raises(ConfigError) as caught:
        build_server(config, nofile=1024)
    assert caught.value.key == "auth.secret" and "32 bytes" in str(caught.value)


@pytest.fixture(scope="module")
def cookie_server():
    from support import ServerThread, make_config

    server = ServerThread(
        make_config(
            cookie__enabled=True,
            server__allowed_origins=[ORIGIN],
            cookie__preauth_rate=1e6,
            cookie__preauth_burst=1_000_000,
            cookie__max_body_bytes=64,
            limits__max_request_bytes=1024,
            limits__handshake_timeout=2,
        )
    )
    yield server
    server.stop()


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_LINES = st.sampled_from(
    [
        b"POST /ws/preauth HTTP/1.1\r\n",
        b"OPTIONS /ws/preauth HTTP/1.1\r\n",
        b"PUT /elsewhere HTTP/1.1\r\n",
        b"POST /ws/preauth?csrf=x HTTP/1.0\r\n",
    ]
)
_HEADERS = st.sampled_from(
    [
        b"Origin: https://app.example.com\r\n",
        b"Origin: https://evil.example\r\n",
        b"Authorization: Bearer nonsense\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: 99999\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b" folded\r\n",
        b"Cookie: a=b; guarded_ws_ticket=v1.x\r\n",
    ]
)
_BYTES = st.binary(max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    line=st.one_of(_LINES, _BYTES.map(lambda junk: b"P" + junk + b"\r\n")),  # not a G: the preauth reader's
    headers=st.lists(_HEADERS, max_size=6),
    junk=st.one_of(st.just(b""), _BYTES.map(lambda junk: junk + b"\r\n")),
    body=_BYTES,
    cut=st.integers(1, 64),
)
def test_arbitrary_preauth_requests_get_a_documented_answer_and_leave_nothing_behind(
    cookie_server, line, headers, junk, body, cut
):
    """Whatever a non-GET request holds, split anywhere: an HTTP status we document, or a close; no bug logged."""
    from support import read_response_head, status_of, tcp, wait_for

    errors = _Errors()
    logging.getLogger("guarded_ws").addHandler(errors)
    try:
        data = line + b"".join(headers) + junk + b"\r\n" + body
        sock = tcp(cookie_server.port)
        try:
            for start in range(0, len(data), cut):
                sock.sendall(data[start : start + cut])
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # answered and closed before the rest was sent
        status = status_of(read_response_head(sock))
        sock.close()
        assert status in (None, 400, 401, 403, 404, 405, 408, 413, 431)
        wait_for(cookie_server.idle_state, what="nothing pending")
        assert errors.records == []
    finally:
        logging.getLogger("guarded_ws").removeHandler(errors)
