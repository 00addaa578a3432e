"""Built-in applications, and loading an operator's own by name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .plugins import import_object
from .session import Session

App = Callable[[Session], Awaitable[None]]


async def echo(conn: Session) -> None:
    """Send every message back: the default app, and what the benchmarks measure."""
    async for message in conn:
        await conn.send(message)


BUILTIN: dict[str, App] = {"echo": echo}


def load_app(spec: str) -> App:
    return BUILTIN.get(spec) or import_object(spec, "app")
