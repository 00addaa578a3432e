"""A minimal first-message-token client: what the README's copy-paste command runs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable

from websockets.sync.client import connect


def talk(url: str, token: str, messages: Iterable[str], *, timeout: float = 10.0) -> int:
    """Authenticate, send each message, print each echo; 0 on success, 1 when the server refuses."""
    with connect(url, compression=None, open_timeout=timeout, close_timeout=timeout) as ws:
        ws.send(token)
        try:
            reply = json.loads(ws.recv(timeout=timeout))
        except Exception as exc:
            print(f"not authenticated: {exc}", file=sys.stderr)
            return 1
        print(f"authenticated as {reply['subject']}")
        for message in messages:
            ws.send(message)
            print(f"echo: {ws.recv(timeout=timeout)}")
    return 0
