from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import ServerThread, make_config  # noqa: E402


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """Start a real guarded-ws on loopback: ``serve(limits__auth_timeout=1)`` sets limits.auth_timeout."""
    started: list[ServerThread] = []

    def start(nofile: int = 4096, **overrides: Any) -> ServerThread:
        server = ServerThread(make_config(**overrides), nofile=nofile)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
