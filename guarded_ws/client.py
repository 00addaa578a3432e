"""A minimal client (a first-message token, or a client certificate): what the README's commands run."""

from __future__ import annotations

import json
import ssl as ssl_module
import sys
from collections.abc import Iterable

from websockets.sync.client import connect


def tls_context(cafile: str | None, cert: str | None, key: str | None) -> ssl_module.SSLContext:
    context = ssl_module.create_default_context(cafile=cafile)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def talk(
    url: str,
    token: str | None,
    messages: Iterable[str],
    *,
    timeout: float = 10.0,
    ssl: ssl_module.SSLContext | None = None,
) -> int:
    """Authenticate, send each message, print each echo; 0 on success, 1 when the server refuses.

    Without a token the client certificate in ``ssl`` must do: the server then answers the upgrade itself.
    """
    with connect(url, compression=None, open_timeout=timeout, close_timeout=timeout, ssl=ssl) as ws:
        if token is not None:
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
