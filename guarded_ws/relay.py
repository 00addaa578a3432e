"""The relay app: each authenticated client gets its own WebSocket to an upstream.

This is what lets an app in any language sit behind guarded-ws: the upstream
never sees an unauthenticated peer, and learns who is connected from signed
headers (:mod:`guarded_ws.identity`), not from the client's credential, which
is never forwarded. Nothing of the client's upgrade request is forwarded.

Both directions have backpressure. Client to upstream: while a send to the
upstream waits for its buffer to drain, the session's inbox fills and the
client's socket stops being read. Upstream to client: while the client does
not read, ``Session.send`` waits, the upstream connection's receive queue fills
(``max_queue``) and the upstream's socket stops being read. What guarded-ws
holds per link is therefore bounded by those queues (docs/relay.md).

A link costs two tasks besides the app's: this is after authentication, where
an attacker has already spent a valid credential and the per-source and
per-subject caps apply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from prometheus_client import Counter
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as UpstreamClosed
from websockets.exceptions import InvalidHandshake
from websockets.frames import CloseCode

from .codes import Close
from .identity import sign_identity
from .logs import RateLimitedLogger
from .session import ConnectionClosed, Session

log = logging.getLogger("guarded_ws.relay")

# Codes that mean the same to the client as they meant to us, so they pass through.
_PASS_TO_CLIENT = frozenset(
    {
        CloseCode.NORMAL_CLOSURE,
        CloseCode.GOING_AWAY,
        CloseCode.POLICY_VIOLATION,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
    }
)


def code_for_client(code: int, reason: str) -> tuple[int, str]:
    """How the upstream's close reaches the client.

    The upstream's own decisions (normal, going away, policy, its errors, and
    application codes 3000-4999) pass through; a lost connection or a protocol
    failure on the upstream leg is 1014: the client did nothing wrong.
    """
    if code in _PASS_TO_CLIENT or 3000 <= code <= 4999:
        return code, reason
    if code == 1005:  # a close frame with no code: a normal close
        return Close.NORMAL, ""
    return Close.BAD_GATEWAY, "upstream went away"


def code_for_upstream(code: int, reason: str) -> tuple[int, str]:
    """How the client's departure reaches the upstream: 1000 and application codes pass, the rest is 1001."""
    if code == Close.NORMAL or 3000 <= code <= 4999:
        return code, reason
    return Close.GOING_AWAY, "client went away"


class Relay:
    """The ``relay`` app: ``await relay(session)`` links one client to the upstream until either leaves."""

    def __init__(
        self,
        upstream: str,
        secret: str,
        *,
        connect_timeout: float = 5.0,
        max_message_bytes: int = 1048576,
        close_timeout: float = 5.0,
        wallclock: Callable[[], float] = time.time,
        counts: Mapping[str, Counter] | None = None,
    ) -> None:
        """``counts``: the ``relay_upstream_total`` counters by result (linked, unavailable, lost)."""
        self.upstream = upstream
        self.secret = secret
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self.close_timeout = close_timeout
        self.wallclock = wallclock
        self.counts = counts
        self.links: set[ClientConnection] = set()  # open upstream connections, for shutdown and tests
        self.events = RateLimitedLogger(log)

    async def __call__(self, session: Session) -> None:
        headers = sign_identity(self.secret, session.subject, session.claims, session.source, now=self.wallclock())
        try:
            upstream = await connect(
                self.upstream,
                additional_headers=headers,
                open_timeout=self.connect_timeout,
                close_timeout=self.close_timeout,
                max_size=self.max_message_bytes,
                compression=None,  # memory per link stays what max_size and max_queue say
                proxy=None,  # an HTTP(S)_PROXY variable must not reroute the identity
                user_agent_header="guarded-ws relay",
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            self.events.log(logging.WARNING, "upstream_connect", "upstream unavailable: %s", type(exc).__name__)
            self._count("unavailable")
            await session.close(Close.TRY_AGAIN_LATER, "upstream unavailable")
            return
        self.links.add(upstream)
        self._count("linked")
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(_to_upstream(session, upstream))
                down = tasks.create_task(_to_client(upstream, session))
                code, reason = await session.wait_closed()
                await upstream.close(*code_for_upstream(code, reason))
            if down.result() == Close.BAD_GATEWAY:
                self.events.log(logging.WARNING, "upstream_lost", "upstream went away during a link")
                self._count("lost")
        finally:
            # Cancelled (the server shutting down) while closing: finish the upstream's close
            # handshake all the same, within close_timeout; a no-op when it is closed already.
            await upstream.close(Close.GOING_AWAY, "client went away")
            self.links.discard(upstream)


    def _count(self, result: str) -> None:
        if self.counts is not None:
            self.counts[result].inc()


async def _to_upstream(session: Session, upstream: ClientConnection) -> None:
    """Until either side is gone; each send waits for the upstream's buffer to drain."""
    try:
        while True:
            await upstream.send(await session.recv())
    except (ConnectionClosed, UpstreamClosed):
        return


async def _to_client(upstream: ClientConnection, session: Session) -> int | None:
    """Until the upstream is gone, then close the client with what that means to it; the code sent, if any."""
    try:
        async for message in upstream:
            await session.send(message)
    except ConnectionClosed:
        return None  # the client left: the app closes the upstream
    except UpstreamClosed:
        pass  # closed with an error code: mapped below like any other
    if session.closed:
        return None  # the client left first, and the app closed the upstream
    code, reason = code_for_client(upstream.close_code or 1006, upstream.close_reason or "")
    await session.close(code, reason)
    return code
