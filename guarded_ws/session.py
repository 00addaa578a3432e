"""What the application sees of an authenticated connection.

The app is ``async def app(conn)``; ``conn`` is a :class:`Session`. Sessions
exist only after authentication: nothing here runs for a pending peer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .codes import Close

if TYPE_CHECKING:
    from .connection import Connection

Message = str | bytes

# Inbound backpressure: stop reading the socket while the app lags this far behind.
INBOX_HIGH = 32
INBOX_LOW = 8


class ConnectionClosed(Exception):
    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed ({code}{' ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class Session:
    __slots__ = ("_conn", "_loop", "subject", "claims", "source", "_inbox", "_waiter", "_drain", "_closed", "_done")

    def __init__(
        self,
        conn: Connection,
        subject: str,
        claims: Mapping[str, Any],
        source: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._conn = conn
        self._loop = loop
        self.subject = subject
        self.claims = claims
        self.source = source
        self._inbox: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        # (code, reason) once lost. Each raise makes a fresh ConnectionClosed: one kept here
        # would hold its traceback, whose frames hold this session, a cycle.
        self._closed: tuple[int, str] | None = None
        self._done: asyncio.Future[None] | None = None  # made by close() only: most sessions never wait on it

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def recv(self) -> Message:
        """The next message; raises :class:`ConnectionClosed` once none is left."""
        while not self._inbox:
            if self._closed is not None:
                raise ConnectionClosed(*self._closed)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._inbox.popleft()
        if len(self._inbox) == INBOX_LOW:
            self._conn.resume_reading()
        return message

    async def send(self, message: Message) -> None:
        """Send one message; waits while the peer is not reading."""
        if self._closed is not None:
            raise ConnectionClosed(*self._closed)
        self._conn.send_message(message)
        while self._conn.writing_paused and self._closed is None:
            self._drain = self._loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None
        if self._closed is not None:
            raise ConnectionClosed(*self._closed)

    async def reauthenticate(self, credential: str) -> None:
        """Keep the connection past its credential's expiry with a fresh token for the same subject.

        The connection closes with 4401 when its credential expires; an app whose clients
        refresh their token sends the new one through its own messages and calls this.
        Raises :class:`guarded_ws.tokens.AuthError` if the token is not valid, or names
        another subject; the connection is left as it was.
        """
        self.claims = await self._conn.reauthenticate(credential)

    async def close(self, code: int = Close.NORMAL, reason: str = "") -> None:
        """Start the closing handshake and wait until the connection is gone."""
        self._conn.start_close(code, reason)
        if self._closed is not None:
            return
        if self._done is None:
            self._done = self._loop.create_future()
        await asyncio.shield(self._done)

    async def wait_closed(self) -> tuple[int, str]:
        """Wait until the connection is gone; its close code and reason (1006 if it was lost)."""
        if self._closed is None:
            if self._done is None:
                self._done = self._loop.create_future()
            await asyncio.shield(self._done)
        assert self._closed is not None
        return self._closed

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    # Called by the connection.

    def feed(self, message: Message) -> bool:
        """Queue an inbound message; False asks the connection to stop reading."""
        self._inbox.append(message)
        _wake(self._waiter)
        return len(self._inbox) < INBOX_HIGH

    def writable(self) -> None:
        _wake(self._drain)

    def lost(self, code: int, reason: str) -> None:
        self._closed = (code, reason)
        _wake(self._waiter)
        _wake(self._drain)
        _wake(self._done)


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
