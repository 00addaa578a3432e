"""One client connection: the asyncio protocol that drives websockets' Sans-I/O layer.

Phases, and what moves a connection between them (DESIGN.md, life of a connection)::

    HANDSHAKE --101 sent--------------> AUTH --valid credential--> OPEN
        |  refusal, deadline, eviction    |  anything else            |  close, keepalive, stall
        +---------------------------------+---------------------------+------> CLOSING --> CLOSED

HANDSHAKE and AUTH are *pending*: counted by admission, held in a deadline
queue, bounded by a byte budget. Everything per-connection is in slots; the
handshake is read by guarded_ws.upgrade, and the Sans-I/O object that parses frames
is created only when the first byte after the 101 arrives, so an idle or upgraded-and-silent
attacker costs one of these, a transport and, mid-request, the bytes it sent.

A closed connection is freed by reference counting: connection_lost breaks every cycle,
so none of it waits for a full garbage collection (tests/test_resources.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable, Mapping
from enum import IntEnum
from functools import cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from websockets.exceptions import PayloadTooBig
from websockets.frames import Close as CloseFrame
from websockets.frames import Frame, Opcode
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.protocol import CONNECTING as WS_CONNECTING
from websockets.protocol import OPEN as WS_OPEN
from websockets.protocol import Event, State
from websockets.server import ServerProtocol

from .certs import CertificateRefused
from .codes import Close, http_refusal
from .cookie_auth import CookieRefused
from .deadlines import Timed
from .proxies import forwarded_client
from .proxy_protocol import ProxyError, parse, starts_like_header
from .session import ConnectionClosed, Message, Session
from .replay_store import ReplayStoreUnavailable
from .tokens import AuthError, Identity
from .upgrade import HEAD_END, HeadTooLarge, parse_request, switching_protocols

if TYPE_CHECKING:
    from .preauth import RequestReader
    from .server import Server

# websockets logs every open and close at INFO; ours are enough.
_WS_LOGGER = logging.getLogger("guarded_ws.sansio")
_WS_LOGGER.setLevel(logging.WARNING)

_TEXT, _BINARY, _CONT, _CLOSE, _PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.CLOSE, Opcode.PONG
_PONG_FIRST_BYTE = 0x80 | Opcode.PONG  # FIN + opcode: how an outgoing pong starts

REFUSE_MALFORMED = http_refusal(HTTPStatus.BAD_REQUEST)
REFUSE_TOO_LARGE = http_refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
REFUSE_TIMEOUT = http_refusal(HTTPStatus.REQUEST_TIMEOUT)


def _sansio(max_size: int, state: State) -> ServerProtocol:
    return ServerProtocol(extensions=None, max_size=max_size, state=state, logger=_WS_LOGGER)


def _release(ws: ServerProtocol) -> None:
    """Break the cycles a Sans-I/O protocol holds, so reference counting frees it: its parser
    is a generator that refers back to it, and so does the traceback of an error it kept."""
    ws.parser.close()
    for exc in (ws.parser_exc, ws.handshake_exc):
        if exc is not None:
            exc.__traceback__ = None


@cache
def _close_frame(code: int, reason: str) -> bytes:
    """A close frame for a connection with no frame parser yet (upgraded, nothing received)."""
    return Frame(_CLOSE, CloseFrame(code, reason).serialize()).serialize(mask=False)


MAX_FRAME_HEADER = 10  # what a frame's size can be read from: 2 bytes and a 64-bit length


def frame_size(head: bytes) -> int | None:
    """The whole size of the frame ``head`` starts with (header, mask, payload), or None if ``head`` is too short to tell."""
    if len(head) < 2:
        return None
    size = head[1] & 0x7F
    offset = 2
    if size == 126:
        offset = 4
    elif size == 127:
        offset = 10
    if len(head) < offset:
        return None
    if offset > 2:
        size = int.from_bytes(head[2:offset], "big")
    return offset + (4 if head[1] & 0x80 else 0) + size


class Phase(IntEnum):
    HANDSHAKE = 0
    AUTH = 1
    OPEN = 2
    CLOSING = 3
    CLOSED = 4


_HANDSHAKE, _AUTH, _OPEN, _CLOSING, _CLOSED = Phase


class Connection(asyncio.Protocol, Timed):
    __slots__ = (
        "server",
        "source",
        "host",
        "accepted_at",
        "upgraded_at",
        "phase",
        "transport",
        "ws",
        "received",
        "writing_paused",
        "reading_paused",
        "session",
        "pending",
        "tls_sock",
        "certificate",
        "http",
        "head",
        "_fragments",
        "_fragment_op",
        "_held",
        "_frame_left",
        "_frame_head",
    )

    def __init__(self, server: Server, source: object, host: str, now: float) -> None:
        Timed.__init__(self)
        self.server = server
        self.source = source
        self.host = host
        self.accepted_at = now
        self.upgraded_at = 0.0
        self.phase = _HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.ws: ServerProtocol | None = None
        self.received = 0
        self.writing_paused = False
        self.reading_paused = False
        self.session: Session | None = None
        self.pending = True  # counted by admission until the server's leave_pending()
        self.tls_sock: socket.socket | None = None  # the raw socket while the TLS handshake runs
        self.certificate: Identity | None = None  # a verified client certificate: authenticates at the upgrade
        self.http: RequestReader | None = None  # a preauth POST, read by guarded_ws.preauth
        self.head = b""  # a PROXY header, then a request head, still arriving
        self._fragments: bytearray | None = None
        self._fragment_op = _TEXT
        self._held: list[Frame] | None = None  # frames behind a credential the replay store is checking
        self._frame_left = 0  # before auth: bytes of the current frame not fed to the parser yet
        self._frame_head = b""  # before auth: a frame header split between reads

    def __call__(self) -> Connection:
        """Be our own protocol factory: no closure per accepted socket."""
        return self

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        if self.tls_sock is not None:
            self.tls_sock = None
            if self.phase is _HANDSHAKE:
                self._on_tls_established()
                return
        if self.phase >= _CLOSING:  # evicted, or shut down, before the transport existed
            transport.write(self.server.unavailable)
            transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self._data_received(data)
        except Exception:
            # A bug must cost one connection and one rate-limited log line, not a traceback per peer.
            self.server.events.log(logging.ERROR, "internal_error", "internal error; connection dropped", exc_info=True)
            self.abort()

    def _data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase is _OPEN:
            self.ws.receive_data(data)  # type: ignore[union-attr]
            self._on_frames(self.ws.events_received())  # type: ignore[union-attr]
        elif phase is _AUTH:
            self._on_auth_data(data)
        elif phase is _HANDSHAKE:
            if self.server.proxy_protocol and (self.source is None or not self.head):
                data = self._on_proxy_data(data)
                if not data:
                    return
            self._on_handshake_data(data)
        elif self.ws is not None and not self.ws.reader.eof:
            # CLOSING: the peer's close frame completes the closing handshake.
            self.ws.receive_data(data)
            self.ws.events_received()
        self._flush()

    def eof_received(self) -> None:
        if self.ws is None or self.phase >= _CLOSING:
            self._close_transport()
            return
        self.ws.receive_eof()
        self._flush()
        self._close_transport()

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        server.leave_pending(self)
        self.phase = _CLOSED
        self.tls_sock = None
        if self.queue is not None:
            self.queue.discard(self)
        if self.ws is not None:
            _release(self.ws)
        session = self.session
        if session is not None:
            server.leave_authenticated(self)
            session.lost(*self._close_status())
            self.session = None  # the app's session keeps this connection; not the other way round

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.phase is _OPEN:
            self.server.stalled.push(self, self.server.clock())

    def resume_writing(self) -> None:
        self.writing_paused = False
        server = self.server
        if self.queue is server.stalled:
            server.keep_alive(self)
        if self.session is not None:
            self.session.writable()

    # Pre-auth

    def _on_tls_established(self) -> None:
        server = self.server
        try:
            self.certificate = server.tls.identify(self.transport, server.wallclock())  # type: ignore[union-attr]
        except CertificateRefused as exc:
            server.tls_failed(self, exc.reason)
            self._close_transport()

    def _on_proxy_data(self, data: bytes) -> bytes:
        """Before the request: a trusted proxy's PROXY header names the client; anyone else's
        closes the connection. Returns what follows the header.

        The header counts against the handshake deadline and ``max_request_bytes``. A
        connection with no source yet is a trusted proxy's (see Server._accept).
        """
        server = self.server
        if self.source is not None:  # not a trusted proxy's connection, or its header is done
            if starts_like_header(data):
                self._refuse(b"", "proxy_untrusted")
                return b""
            return data
        head = self.head + data if self.head else data
        used = self.read_proxy_header(head)
        if used < 0:
            return b""
        return self._on_proxy_data(head[used:]) if used < len(head) else b""  # no second header

    def read_proxy_header(self, head: bytes) -> int:
        """Read a trusted proxy's header from ``head`` (everything received so far) and admit
        the client it names. Returns the header's length (0: none, where it is optional),
        or -1: more bytes are needed (kept in ``proxy_head``), or the connection is refused.
        """
        server = self.server
        begins = server.proxy_required or starts_like_header(head) is not False
        try:
            header = parse(head, server.max_request_bytes) if begins else None
        except ProxyError as exc:
            self._refuse(b"", "proxy_" + exc.reason)
            return -1
        if begins and header is None:
            self.head = head
            self.received = len(head)
            return -1
        self.head = b""
        # No header (optional), or one that names no client (LOCAL health checks): the proxy's own address.
        client = header.source if header is not None else None
        if server.admit_client(self, client[0] if client is not None else self.host) is not None:
            self._refuse(server.too_many, None)
            return -1
        self.received = used = header.length if header is not None else 0
        return used

    def _on_handshake_data(self, data: bytes) -> None:
        server = self.server
        held = self.head
        # An upgrade is a GET: anything else is the browser path's preauth POST.
        if server.preauth is not None and (self.http is not None or (not held and data[:1] != b"G")):
            self._on_preauth_data(data)
            return
        buffered = held + data if held else data
        end = buffered.find(HEAD_END, max(0, len(held) - 3))
        room = server.max_request_bytes - self.received
        if end < 0 and len(buffered) < room:
            self.head = buffered
            return
        self.head = b""
        if end < 0 or end + len(HEAD_END) > room:
            self._refuse(REFUSE_TOO_LARGE, "headers_too_large")
            return
        self.received += end + len(HEAD_END)
        try:
            request = parse_request(buffered[:end])
        except HeadTooLarge as exc:
            self._refuse(http_refusal(exc.status), "headers_too_large")
            return
        except ValueError:
            self._refuse(REFUSE_MALFORMED, "malformed")
            return
        # What follows the head is frames: the credential, maybe the app's first messages.
        self._on_request(request, buffered[end + len(HEAD_END) :])

    def _on_preauth_data(self, data: bytes) -> None:
        server = self.server
        preauth = server.preauth
        assert preauth is not None
        if self.http is None:
            self.http = preauth.reader()
        response = preauth.receive(
            self.http,
            data,
            source=self.source,
            # A trusted HTTP proxy's connection: its forwarded header names the client.
            admit=self._forwarded_client if self.source is None else None,
            host=self.host,
            allowed_origins=server.allowed_origins,
            now=server.clock(),
            wallclock=server.wallclock(),
        )
        if response is not None:
            self.http = None
            self._refuse(response, None)

    def _forwarded_client(self, headers: Headers) -> tuple[object, str] | None:
        """The (source, host) a preauth POST counts under, or None: refused, and answered."""
        return (self.source, self.host) if self._admit_forwarded(headers) else None

    def _on_request(self, request: Request, rest: bytes) -> None:
        server = self.server
        if self.source is None and not self._admit_forwarded(request.headers):
            return
        path = request.path.partition("?")[0]
        if path != server.path:
            if server.demo_page is not None and path == "/demo":
                self._refuse(server.demo_page, None)
            else:
                self._reject(HTTPStatus.NOT_FOUND, "path")
            return
        if server.allowed_origins:
            origins = request.headers.get_all("Origin")
            if origins and (len(origins) > 1 or origins[0] not in server.allowed_origins):
                self._reject(HTTPStatus.FORBIDDEN, "origin")
                return
        elif self.certificate is not None and "Origin" in request.headers:
            # Browsers present client certificates by themselves, to pages of any site: cross-site
            # hijacking, unless the page's Origin is one the operator approved.
            self._reject(HTTPStatus.FORBIDDEN, "origin")
            return
        response = switching_protocols(request) or self._websockets_answer(request)
        if response is None:
            return
        identity = None
        if server.cookie_auth is not None and server.cookie_auth.wants(request):
            try:
                identity = server.cookie_auth.check(request, server.allowed_origins, server.wallclock())
            except CookieRefused as refused:
                if refused.result is not None:
                    server.count_auth("cookie", refused.result)
                    server.log_auth_failure(self, refused.result, str(refused))
                self._reject(HTTPStatus.FORBIDDEN, refused.reason)
                return
            if identity.single_use is not None:  # consumed cluster-wide before the 101
                self.transport.pause_reading()  # type: ignore[union-attr]
                server._spawn(self._consume_ticket(response, identity, rest))
                return
        self._upgrade(response, identity, rest)

    def _websockets_answer(self, request: Request) -> bytes | None:
        """websockets' answer to a request outside the fast path's shape: its 101, or None
        once its refusal (405, 426, 400...) is sent."""
        ws = _sansio(self.server.max_preauth_bytes, WS_CONNECTING)
        response = ws.accept(request)
        _release(ws)
        if response.status_code == 101:
            return response.serialize()
        self._refuse(response.serialize(), "not_websocket" if response.status_code == 426 else "malformed")
        return None

    def _upgrade(self, response: bytes, identity: Identity | None, rest: bytes) -> None:
        """Send the 101; ``identity`` (a ticket) or a client certificate authenticates it at once."""
        server = self.server
        self.transport.write(response)  # type: ignore[union-attr]
        now = server.clock()
        self.phase = _AUTH
        self.upgraded_at = now
        self.received = 0
        server.upgraded(self, now)
        if self.certificate is not None:
            self._admit(self.certificate, "certificate")
        elif identity is not None:  # the browser path: authenticated by the upgrade itself
            self._admit(identity, "cookie")
        if rest and self.phase is _AUTH:
            self._on_auth_data(rest)
        elif rest and self.phase is _OPEN:  # authenticated at the upgrade: the frames are the app's
            self._data_received(rest)

    async def _consume_ticket(self, response: bytes, identity: Identity, rest: bytes) -> None:
        """A single-use ticket in the shared replay store; the connection stays in the handshake phase meanwhile."""
        assert identity.single_use is not None
        fresh = await self._consume_single_use(identity.single_use)
        self._after_store(lambda: self._on_ticket_consumed(response, identity, rest, fresh))

    def _on_ticket_consumed(self, response: bytes, identity: Identity, rest: bytes, fresh: bool | None) -> None:
        server = self.server
        if self.phase is not _HANDSHAKE:  # expired, evicted or gone while the store answered
            return
        if fresh:
            self._upgrade(response, identity, rest)
        elif fresh is None:
            server.count_auth("cookie", "unavailable")
            server.log_auth_failure(self, "unavailable", "replay store unavailable")
            self._refuse(server.unavailable, None)
        else:
            server.count_auth("cookie", "replayed")
            server.log_auth_failure(self, "replayed", "ticket already used")
            self._reject(HTTPStatus.FORBIDDEN, "csrf")
        self._flush()

    async def _consume_single_use(self, single_use: tuple[str, float]) -> bool | None:
        """True the first time the key is consumed cluster-wide, False on a replay, None: no answer (fail closed)."""
        server = self.server
        assert server.replay_store is not None
        try:
            return await server.replay_store.consume(*single_use, server.wallclock())
        except ReplayStoreUnavailable:
            return None

    def _after_store(self, step: Callable[[], None]) -> None:
        """Go on once the store answered: a bug costs this connection alone; then reading resumes."""
        try:
            step()
        except Exception:
            self.server.events.log(
                logging.ERROR, "internal_error", "internal error; connection dropped", exc_info=True
            )
            self.abort()
        transport = self.transport
        if not self.reading_paused and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _admit_forwarded(self, headers: Headers) -> bool:
        """A trusted HTTP proxy's forwarded header names the client; admit it under that source."""
        server = self.server
        name = server.forwarded
        assert name is not None
        client = forwarded_client(headers.get_all(name), name, server.forwarded_hops)
        if server.admit_client(self, client or self.host) is None:
            return True
        self._refuse(server.too_many, None)
        return False

    def _on_auth_data(self, data: bytes) -> None:
        """Feed the frame parser one frame at a time until the credential is checked.

        The parser answers a close frame as soon as it reads one: a token, messages and a
        close arriving in one read must reach it in that order, or the token is never
        checked and the messages never delivered.
        """
        self.received += len(data)
        ws = self.ws or self._frame_parser()
        while data and self.phase is _AUTH:
            if not self._frame_left:
                head = self._frame_head + data[:MAX_FRAME_HEADER]
                size = frame_size(head)
                if size is None:  # the read ends inside a frame header
                    self._frame_head = head
                    break
                self._frame_left = size - len(self._frame_head)
                self._frame_head = b""
            n = min(self._frame_left, len(data))
            self._frame_left -= n
            ws.receive_data(data[:n])
            data = data[n:]
            self._on_frames(ws.events_received())
        if data:  # a split frame header, the app's messages once authenticated, or a refused peer's bytes
            ws.receive_data(data)
            self._on_frames(ws.events_received())
        self._check_preauth_budget()

    def _frame_parser(self) -> ServerProtocol:
        """The Sans-I/O protocol, from the first byte after the 101 on.

        Its size limit is the post-auth one: messages that follow the credential in the same
        read are the app's. Before auth, the byte count and the credential's size check hold.
        """
        ws = self.ws = _sansio(self.server.max_message_bytes, WS_OPEN)
        return ws

    def _on_frames(self, frames: list[Event]) -> None:
        for frame in frames:
            assert isinstance(frame, Frame)
            phase = self.phase
            if phase is _OPEN:
                self._on_app_frame(frame)
            elif phase is _AUTH:
                self._on_credential_frame(frame)
            else:
                return

    def _on_credential_frame(self, frame: Frame) -> None:
        if self.ws.state is not WS_OPEN:  # type: ignore[union-attr]
            return  # the peer's close frame came in the same read: it is leaving
        if self._held is not None:  # the credential is being checked: what follows is the app's
            self._held.append(frame)
            return
        op = frame.opcode
        if len(frame.data) > self.server.max_preauth_bytes:
            self.server.count_auth(self.server.verifier.method, "too_large")
            self.fail(Close.MESSAGE_TOO_BIG, "credential too large")
        elif op is _TEXT and frame.fin:
            self._authenticate(frame.data)
        elif op is _TEXT or op is _BINARY or op is _CONT:
            self.server.count_auth(self.server.verifier.method, "protocol")
            self.fail(Close.POLICY_VIOLATION, "credential must be one text frame")
        # Pings are answered by the Sans-I/O layer and paid from the byte budget.

    def _check_preauth_budget(self) -> None:
        if self.phase is not _AUTH:
            return
        ws = self.ws
        assert ws is not None
        method = self.server.verifier.method
        if ws.parser_exc is not None:  # websockets already failed the connection
            self.server.count_auth(method, "too_large" if isinstance(ws.parser_exc, PayloadTooBig) else "protocol")
        elif self.received > self.server.max_preauth_bytes:
            self.server.count_auth(method, "too_large")
            self.fail(Close.MESSAGE_TOO_BIG, "pre-authentication budget exceeded")

    def _authenticate(self, data: bytes) -> None:
        server = self.server
        verifier = server.verifier
        try:
            identity = verifier.verify(data.decode(), server.wallclock())
        except (AuthError, UnicodeDecodeError) as exc:
            result = exc.result if isinstance(exc, AuthError) else "invalid"
            server.count_auth(verifier.method, result)
            server.log_auth_failure(self, result, str(exc) if isinstance(exc, AuthError) else "not UTF-8")
            self.fail(Close.INVALID_CREDENTIAL, "expired credential" if result == "expired" else "invalid credential")
            return
        if identity.single_use is not None:
            self._check_single_use(identity)
        else:
            self._admit(identity, verifier.method)

    def _check_single_use(self, identity: Identity) -> None:
        """Consume the credential in the shared replay store: a round trip, so reading pauses meanwhile.

        The connection stays pending (its auth deadline still runs); frames that came behind
        the credential in the same read wait in ``_held`` and go to the app once admitted.
        """
        self._held = []
        self.transport.pause_reading()  # type: ignore[union-attr]
        self.server._spawn(self._consume(identity))

    async def _consume(self, identity: Identity) -> None:
        assert identity.single_use is not None
        fresh = await self._consume_single_use(identity.single_use)
        held, self._held = self._held or [], None
        self._after_store(lambda: self._on_consumed(identity, fresh, held))

    def _on_consumed(self, identity: Identity, fresh: bool | None, held: list[Frame]) -> None:
        server = self.server
        if self.phase is not _AUTH or self.ws.state is not WS_OPEN:  # type: ignore[union-attr]
            return  # expired, evicted or left while the store answered
        method = server.verifier.method
        if fresh is None:
            server.count_auth(method, "unavailable")
            server.log_auth_failure(self, "unavailable", "replay store unavailable")
            self.fail(Close.TRY_AGAIN_LATER, "try again later")
        elif not fresh:
            server.count_auth(method, "replayed")
            server.log_auth_failure(self, "replayed", "jti already used")
            self.fail(Close.INVALID_CREDENTIAL, "invalid credential")
        else:
            self._admit(identity, method)
            self._on_frames(held)  # type: ignore[arg-type]
            self._flush()

    def _admit(self, identity: Identity, method: str) -> None:
        """A verified credential: open the session, unless a cap on authenticated connections is full."""
        server = self.server
        now = server.clock()
        server.leave_pending(self)
        refusal = server.authenticated_cap(self.source, identity.subject)
        if refusal is not None:
            server.count_refusal(refusal)
            self.fail(Close.TRY_AGAIN_LATER, "too many connections")
            return
        ws = self.ws or self._frame_parser()
        self.phase = _OPEN
        ws.send_text(json.dumps({"type": "authenticated", "subject": identity.subject}).encode())
        server.count_auth(method, "ok")
        server.metrics.auth_duration[method].observe(now - self.upgraded_at)
        self.session = Session(self, identity.subject, identity.claims, self.host, server.loop)  # type: ignore[arg-type]
        server.start_session(self, now, identity.expires_at)

    # Authenticated

    def _on_app_frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is _TEXT or op is _BINARY:
            if frame.fin:
                self._deliver(op, frame.data)
            else:
                self._fragments = bytearray(frame.data)
                self._fragment_op = op
        elif op is _CONT:
            assert self._fragments is not None  # the Sans-I/O layer checks continuation order
            self._fragments += frame.data
            if frame.fin:
                data, self._fragments = bytes(self._fragments), None
                self._deliver(self._fragment_op, data)
        elif op is _PONG and self.queue is self.server.awaiting_pong:
            self.server.keep_alive(self)

    def _deliver(self, op: Opcode, data: bytes) -> None:
        message: Message
        if op is _TEXT:
            try:
                message = data.decode()
            except UnicodeDecodeError:
                self.fail(Close.INVALID_DATA, "invalid UTF-8")
                return
        else:
            message = data
        assert self.session is not None
        if not self.session.feed(message) and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        if self.reading_paused and self.phase is _OPEN:
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]

    def send_message(self, message: Message) -> None:
        if self.phase is not _OPEN:
            raise self._closed_error()
        ws = self.ws
        assert ws is not None
        if isinstance(message, str):
            ws.send_text(message.encode())
        else:
            ws.send_binary(message)
        self._flush()

    async def reauthenticate(self, credential: str) -> Mapping[str, Any]:
        """A fresh token for the session's subject moves the expiry; returns its claims."""
        server = self.server
        verifier = server.verifier
        session = self.session
        assert session is not None
        try:
            identity = verifier.verify(credential, server.wallclock())
            if identity.subject != session.subject:
                raise AuthError("invalid", "re-authentication names another subject")
            if identity.single_use is not None:  # a jti checked cluster-wide: consume it there too
                await self._consume_for_renewal(*identity.single_use)
        except AuthError as exc:
            server.count_auth(verifier.method, exc.result)
            server.log_auth_failure(self, exc.result, str(exc))
            raise
        server.count_auth(verifier.method, "ok")
        if self.phase is _OPEN:
            server.credential_expires(self, identity.expires_at)
        return identity.claims

    async def _consume_for_renewal(self, key: str, until: float) -> None:
        server = self.server
        assert server.replay_store is not None
        try:
            fresh = await server.replay_store.consume(key, until, server.wallclock())
        except ReplayStoreUnavailable:
            raise AuthError("unavailable", "replay store unavailable") from None
        if not fresh:
            raise AuthError("replayed", "jti already used")

    def ping(self) -> None:
        self.ws.send_ping(b"")  # type: ignore[union-attr]
        self._flush()

    def start_close(self, code: int, reason: str = "") -> None:
        """Begin the closing handshake; the close deadline bounds how long the peer may take."""
        if self.phase is _OPEN:
            self.ws.send_close(code, reason)  # type: ignore[union-attr]
            self.phase = _CLOSING
            self.server.closing.push(self, self.server.clock())
            self._flush()

    # Endings

    def expire(self) -> None:
        """The phase deadline passed."""
        if self.phase is _HANDSHAKE:
            self._refuse(REFUSE_TIMEOUT, None)
        elif self.phase is _AUTH:
            self.server.count_auth(self.server.verifier.method, "timeout")
            self.fail(Close.AUTH_TIMEOUT, "authentication timeout")

    def evict(self, code: int) -> None:
        """Make room for a newer connection (overload policy evict-oldest), or shut down."""
        if self.phase is _HANDSHAKE:
            self._refuse(self.server.unavailable, None)
        elif self.phase is _AUTH:
            self.fail(code, "server overloaded" if code == Close.TRY_AGAIN_LATER else "server shutting down")

    def abort(self) -> None:
        self.phase = max(self.phase, _CLOSING)
        if self.transport is not None:
            self.transport.abort()

    def fail(self, code: int, reason: str) -> None:
        ws = self.ws
        if ws is None:  # upgraded, nothing received since
            self.transport.write(_close_frame(code, reason))  # type: ignore[union-attr]
            self._close_transport()
            return
        ws.fail(code, reason)
        self._flush()

    def _reject(self, status: HTTPStatus, reason: str) -> None:
        self._refuse(http_refusal(status), reason)

    def _refuse(self, response: bytes, reason: str | None) -> None:
        """Answer an HTTP request, or a connection that never sent one, and close."""
        if reason is not None:
            self.server.count_refusal(reason)
        if self.transport is not None:
            self.transport.write(response)
        elif self.tls_sock is not None and self.source is None and response:
            # Refused on its PROXY header, read before TLS begins: answered in clear, as at accept.
            try:
                self.tls_sock.send(response, socket.MSG_DONTWAIT)
            except OSError:
                pass
        self._close_transport()

    def _flush(self) -> None:
        if self.ws is None:
            return
        writes = self.ws.data_to_send()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for chunk in writes:
            if chunk:
                # Automatic pongs must not grow the buffer of a peer that does not read.
                if self.writing_paused and chunk[0] == _PONG_FIRST_BYTE:
                    continue
                transport.write(chunk)
            else:
                self._close_transport()

    def _close_transport(self) -> None:
        """Close once the buffer is flushed; the close deadline bounds a peer that never reads."""
        server = self.server
        server.leave_pending(self)
        if self.phase is _CLOSED:
            return
        self.phase = _CLOSING
        if self.queue is not server.closing:
            server.closing.push(self, server.clock())
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        elif self.tls_sock is not None:
            # Mid-handshake there is no transport yet: ending the socket fails the handshake, and
            # the server's _attach cleans up. shutdown(), not close(): the loop still polls the fd.
            try:
                self.tls_sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close_status(self) -> tuple[int, str]:
        ws = self.ws
        close = (ws.close_rcvd or ws.close_sent) if ws is not None else None
        return (close.code, close.reason) if close is not None else (1006, "")

    def _closed_error(self) -> ConnectionClosed:
        return ConnectionClosed(*self._close_status())
