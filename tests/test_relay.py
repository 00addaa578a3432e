"""The relay app against a real upstream: websockets' asyncio server on loopback, in a thread."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Opcode
from websockets.http11 import Request, Response

from guarded_ws.identity import IdentityError, VerifiedIdentity, sign_identity, verify_identity
from guarded_ws.session import INBOX_HIGH
from support import authenticated_raw, frame, open_legit, read_close, source, wait_for

RELAY_SECRET = "relay-secret-shared-with-the-upstream-only"
READ_SIZE = 256 * 1024  # the most one read of the event loop hands to data_received
Handler = Callable[[ServerConnection], Awaitable[None]]


class Upstream:
    """An app behind guarded-ws: checks the identity headers like a real upstream would, then runs ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.identities: list[VerifiedIdentity] = []
        self.refused = 0
        self.closes: list[int | None] = []  # the close code each connection ended with
        self.changed = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/app"

    async def _start(self) -> Any:
        return await serve(self._run, "127.0.0.1", 0, process_request=self._check, compression=None)

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            identity = verify_identity(request.headers, RELAY_SECRET, now=time.time())
        except IdentityError:
            with self.changed:
                self.refused += 1
                self.changed.notify_all()
            return connection.respond(HTTPStatus.FORBIDDEN, "forbidden\n")
        with self.changed:
            self.identities.append(identity)
            self.changed.notify_all()
        return None

    async def _run(self, connection: ServerConnection) -> None:
        try:
            await self.handler(connection)
        finally:
            await connection.wait_closed()
            with self.changed:
                self.closes.append(connection.close_code)
                self.changed.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout), "timed out waiting on the upstream"

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(message)


@pytest.fixture
def upstreams() -> Iterator[Callable[[Handler], Upstream]]:
    started: list[Upstream] = []

    def start(handler: Handler) -> Upstream:
        upstream = Upstream(handler)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.stop()


@pytest.fixture
def relay(serve, tmp_path: Path):
    secret_file = tmp_path / "relay-secret"
    secret_file.write_text(RELAY_SECRET + "\n")

    def start(url: str, **overrides: Any):
        return serve(server__app="relay", relay__upstream=url, relay__secret_file=str(secret_file), **overrides)

    return start


def relayed(server, result: str) -> float:
    return server.metric("guarded_ws_relay_upstream_total", result=result)


def test_messages_go_both_ways_and_the_upstream_gets_a_verifiable_identity(relay, upstreams):
    upstream = upstreams(echo)
    server = relay(upstream.url)
    with open_legit(server.port, source(2), sub="alice") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\xffbinary")
        assert ws.recv(timeout=5) == b"\x00\xffbinary"
    (identity,) = upstream.identities
    assert identity.subject == "alice"
    assert identity.source == source(2)
    assert identity.claims["sub"] == "alice" and "exp" in identity.claims
    assert upstream.refused == 0
    assert relayed(server, "linked") == 1 and relayed(server, "lost") == 0


def test_the_upstream_refuses_a_forged_identity_and_the_verifier_refuses_tampering(relay, upstreams):
    upstream = upstreams(echo)
    claims = {"sub": "admin", "exp": int(time.time()) + 60}
    forged = sign_identity("not-the-relay-secret", "admin", claims, "127.0.0.9", now=time.time())

    async def attack() -> None:
        async with async_connect(upstream.url, additional_headers=forged, proxy=None):
            pass

    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(attack())
    assert refused.value.response.status_code == 403
    assert upstream.refused == 1 and upstream.identities == []

    genuine = sign_identity(RELAY_SECRET, "alice", {"sub": "alice"}, "127.0.0.2", now=time.time())
    for name, value in (("X-Guarded-WS-Subject", "admin"), ("X-Guarded-WS-Source", "10.0.0.1")):
        with pytest.raises(IdentityError):
            verify_identity({**genuine, name: value}, RELAY_SECRET, now=time.time())
    # A legitimate client through guarded-ws still gets in.
    server = relay(upstream.url)
    with open_legit(server.port, source(2), sub="alice") as ws:
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"
    assert [identity.subject for identity in upstream.identities] == ["alice"]


def test_a_slow_upstream_pauses_the_client_instead_of_buffering(relay, upstreams):
    release = threading.Event()
    received: list[int] = []

    async def slow(connection: ServerConnection) -> None:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 30)
        async for message in connection:
            received.append(len(message))

    upstream = upstreams(slow)
    server = relay(upstream.url)
    sock = authenticated_raw(server.port, source(2))
    try:
        _flood_then_release(server, sock, release, received)
    finally:
        release.set()
        sock.close()


def _flood_then_release(server, sock: socket.socket, release: threading.Event, received: list[int]) -> None:
    chunk = frame(Opcode.BINARY, b"m" * 65536)
    sock.setblocking(False)
    sent_frames, offset = 0, 0
    stalled = False
    while sent_frames < 2560:  # 160 MiB offered: more than every socket buffer on the way can hold
        try:
            offset += sock.send(chunk[offset:])
        except BlockingIOError:
            if not select.select([], [sock], [], 2.0)[1]:
                stalled = True
                break
            continue
        if offset == len(chunk):
            sent_frames, offset = sent_frames + 1, 0
    assert stalled, "the client was never slowed down"

    def buffered() -> tuple[bool, int, int]:
        (conn,) = server.server.authenticated
        (link,) = server.server.app.links
        inbox = sum(len(message) for message in conn.session._inbox)
        return conn.reading_paused, inbox, link.transport.get_write_buffer_size()

    paused, inbox, upstream_buffer = server.call(buffered)
    assert paused, "guarded-ws kept reading a client it cannot forward"
    # The inbox stops the reading at INBOX_HIGH messages; what one read already held still lands.
    assert inbox <= INBOX_HIGH * 65536 + READ_SIZE
    assert upstream_buffer <= 32768 + len(chunk)  # websockets' write limit, plus the frame that crossed it

    release.set()  # the upstream reads again: everything arrives, nothing was lost
    sock.setblocking(True)
    sock.settimeout(10)
    if offset:
        sock.sendall(chunk[offset:])
        sent_frames += 1
    wait_for(lambda: len(received) == sent_frames, timeout=30, what="every message to reach the upstream")
    assert set(received) == {65536}


def test_upstream_down_at_connect_closes_the_client_with_1013(relay):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{probe.getsockname()[1]}/app"
    server = relay(url)
    sock = authenticated_raw(server.port, source(2))
    assert read_close(sock) == 1013
    sock.close()
    assert relayed(server, "unavailable") == 1 and relayed(server, "linked") == 0


@pytest.mark.parametrize(
    ("ending", "code"),
    [("close 4000", 4000), ("close 1011", 1011), ("drop", 1014)],
)
def test_when_the_upstream_leaves_the_client_gets_a_meaningful_code(relay, upstreams, ending, code):
    async def leaves(connection: ServerConnection) -> None:
        await connection.recv()
        if ending == "drop":
            connection.transport.abort()
        else:
            await connection.close(int(ending.split()[1]), "upstream done")

    upstream = upstreams(leaves)
    server = relay(upstream.url)
    sock = authenticated_raw(server.port, source(2))
    sock.sendall(frame(Opcode.TEXT, b"bye"))
    assert read_close(sock) == code
    sock.close()
    wait_for(lambda: server.call(lambda: not server.server.app.links), what="the link to go")
    assert relayed(server, "lost") == (1 if code == 1014 else 0)


@pytest.mark.parametrize(("leaving", "code"), [("close", 1000), ("drop", 1001), ("app code", 4001)])
def test_when_the_client_leaves_the_upstream_sees_a_close(relay, upstreams, leaving, code):
    upstream = upstreams(echo)
    server = relay(upstream.url)
    sock = authenticated_raw(server.port, source(2))
    upstream.wait(lambda: len(upstream.identities) == 1)
    if leaving == "drop":
        sock.close()  # no close frame: the connection is just gone
    else:
        sock.sendall(frame(Opcode.CLOSE, (code).to_bytes(2, "big") + b"done"))
        assert read_close(sock) == code
        sock.close()
    upstream.wait(lambda: upstream.closes == [code])


def test_shutdown_closes_both_sides(relay, upstreams):
    upstream = upstreams(echo)
    server = relay(upstream.url)
    ws = open_legit(server.port, source(2))
    upstream.wait(lambda: len(upstream.identities) == 1)
    server.run(server.running.stop())
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    upstream.wait(lambda: upstream.closes == [1001])


# Configuration: the relay app cannot start half-configured.


def _config(environ: dict[str, str], **overrides: object):
    from guarded_ws.config import load_config

    return load_config(None, environ={"GUARDED_WS_SECRET": "token-secret", **environ}, overrides=overrides)


@pytest.mark.parametrize(
    ("environ", "overrides", "key"),
    [
        ({"GUARDED_WS_RELAY_SECRET": RELAY_SECRET}, {"server.app": "relay"}, "relay.upstream"),
        ({}, {"server.app": "relay", "relay.upstream": "ws://127.0.0.1:9000/app"}, "relay.secret"),
        ({"GUARDED_WS_RELAY_SECRET": "token-secret"}, {}, "relay.secret"),
        ({}, {"relay.upstream": "http://127.0.0.1:9000/app"}, "relay.upstream"),
        ({}, {"relay.upstream": "ws:///app"}, "relay.upstream"),
        ({}, {"relay.secret": "inline"}, "relay.secret"),
        ({"GUARDED_WS_RELAY_SECRET": ""}, {}, "relay.secret"),
        ({}, {"relay.connect_timeout": "0"}, "relay.connect_timeout"),
    ],
)
def test_a_wrong_relay_configuration_names_its_key(environ, overrides, key):
    from guarded_ws.config import ConfigError

    with pytest.raises(ConfigError) as error:
        _config(environ, **overrides)
    assert error.value.key == key


def test_the_relay_secret_comes_from_the_environment_and_stays_out_of_repr():
    config = _config(
        {"GUARDED_WS_RELAY_SECRET": RELAY_SECRET}, **{"server.app": "relay", "relay.upstream": "wss://up.internal/app"}
    )
    assert config.relay.secret == RELAY_SECRET
    assert RELAY_SECRET not in repr(config)
