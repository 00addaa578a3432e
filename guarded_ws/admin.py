"""The admin port: ``/metrics``, ``/healthz`` and ``/readyz``.

It runs on the server's own event loop, so a scrape sees the structures
between two events (consistent gauges) and its latency is an honest sign of
the loop's health. It listens on loopback by default and is not for peers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0


class AdminServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        ready: Callable[[], bool],
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``refresh``: awaited before each /metrics page (the supervisor scrapes its workers then)."""
        self.registry = registry
        self.ready = ready
        self.refresh = refresh
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST)

    async def start_unix(self, path: str) -> None:
        """A worker's admin port: a socket only its supervisor (same user, private directory) reaches."""
        self._server = await asyncio.start_unix_server(self._handle, path, limit=MAX_REQUEST)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if path == b"/metrics" and self.refresh is not None:
                await self.refresh()
            writer.write(self._respond(method, path))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _respond(self, method: bytes, path: bytes) -> bytes:
        if method not in (b"GET", b"HEAD"):
            return _response(405, "Method Not Allowed", b"method not allowed\n")
        if path == b"/metrics":
            body = generate_latest(self.registry)
            return _response(200, "OK", body, CONTENT_TYPE_PLAIN_0_0_4, head_only=method == b"HEAD")
        if path == b"/healthz":
            return _response(200, "OK", b"ok\n")
        if path == b"/readyz":
            if self.ready():
                return _response(200, "OK", b"ready\n")
            return _response(503, "Service Unavailable", b"not ready\n")
        return _response(404, "Not Found", b"not found\n")


def _response(
    status: int, phrase: str, body: bytes, content_type: str = "text/plain; charset=utf-8", head_only: bool = False
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body
