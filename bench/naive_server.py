"""The naive baseline: stock ``websockets`` serve() with first-message JWT auth and echo.

What most first-message-token servers look like: the same token check and the same
``{"type": "authenticated", "subject": ...}`` reply as guarded-ws, but no admission
control, no caps, no authentication deadline, and websockets' default timeouts (10 s to
open, keepalive pings every 20 s, permessage-deflate offered). Every benchmark runs it
beside guarded-ws, on the same machine, with the same clients.

    GUARDED_WS_SECRET=... python bench/naive_server.py --port 8766 [--loop asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from websockets.asyncio.server import ServerConnection, serve  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

import wire  # noqa: E402
from guarded_ws.tokens import AuthError, TokenVerifier  # noqa: E402


def make_handler(verifier: TokenVerifier):  # type: ignore[no-untyped-def]
    async def handler(ws: ServerConnection) -> None:
        try:
            token = await ws.recv()  # no deadline: the naive part
            try:
                identity = verifier.verify(token if isinstance(token, str) else "", time.time())
            except AuthError:
                await ws.close(4401, "invalid credential")
                return
            await ws.send(json.dumps({"type": "authenticated", "subject": identity.subject}))
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass

    return handler


async def main(host: str, port: int) -> None:
    verifier = TokenVerifier(algorithms=["HS256"], key=wire.secret())
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(make_handler(verifier), host, port) as server:
        bound = server.sockets[0].getsockname()
        print(f"listening on ws://{bound[0]}:{bound[1]}/ws", flush=True)
        await stop


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766, help="0: any free port")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    wire.raise_nofile()
    wire.run(main(args.host, args.port), args.loop)


if __name__ == "__main__":
    cli()
