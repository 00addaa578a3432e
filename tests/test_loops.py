"""The same defences on both event loops (`--loop uvloop`, the default, and `--loop asyncio`)."""

from __future__ import annotations

import pytest
from websockets.frames import Opcode

from support import frame, legit, read_close, read_response_head, source, status_of, tcp, token, upgraded


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_defences_hold_on_each_loop(serve, loop):
    server = serve(server__loop=loop, limits__auth_timeout=1.0, limits__max_pending_per_source=2)
    idle = upgraded(server.port, source(2))
    second = upgraded(server.port, source(2))
    assert status_of(read_response_head(tcp(server.port, source(2)))) == 429
    second.sendall(frame(Opcode.TEXT, token(key="wrong-key-wrong-key-wrong-key-0123").encode()))
    assert read_close(second) == 4401
    assert legit(server.port, source(4)) == "hello"
    assert read_close(idle) == 4408
