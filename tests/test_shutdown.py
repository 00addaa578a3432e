"""Graceful shutdown, in-process (SIGTERM through the command line: tests/test_cli.py)."""

from __future__ import annotations

import pytest
from websockets.exceptions import ConnectionClosed

import sample_apps
from support import open_legit, source


def test_apps_finish_their_clean_up_after_the_drain(serve):
    sample_apps.TIDIED.clear()
    server = serve(server__app="sample_apps:tidy", limits__close_timeout=5.0)
    ws = open_legit(server.port, source(2), sub="tidy-1")
    server.run(server.running.stop())
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    # Its connection closed in the drain; its clean-up ran to the end instead of being cancelled.
    assert sample_apps.TIDIED == ["tidy-1"]
