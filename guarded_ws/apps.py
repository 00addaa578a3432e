"""Built-in applications, and loading an operator's own by name."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any

from .session import Session

App = Callable[[Session], Awaitable[None]]


async def echo(conn: Session) -> None:
    """Send every message back: the default app, and what the benchmarks measure."""
    async for message in conn:
        await conn.send(message)


BUILTIN: dict[str, App] = {"echo": echo}


def import_object(spec: str) -> Any:
    """Resolve ``"package.module:name"``; ValueError says what is missing."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{spec!r}: expected 'module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{spec!r}: cannot import {module_name!r} ({exc})") from exc
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"{spec!r}: {module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{spec!r}: not callable")
    return target


def load_app(spec: str) -> App:
    return BUILTIN.get(spec) or import_object(spec)
