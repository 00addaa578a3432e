"""The ceiling: a bare socket server that accepts and closes, nothing else.

Same accept loop shape as guarded-ws (a non-blocking listener on the event loop,
``accept()`` in batches of 64), no protocol at all: what refusing a connection can cost
at best on this machine, in this language, on this loop.

    python bench/bare_server.py --port 8767 [--loop asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import wire  # noqa: E402

BATCH = 64


async def main(host: str, port: int, backlog: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(backlog)
    listener.setblocking(False)
    accept = listener.accept

    def on_readable() -> None:
        for _ in range(BATCH):
            try:
                sock, _ = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and friends: nothing to free, try again at the next event
            sock.close()

    loop = asyncio.get_running_loop()
    loop.add_reader(listener.fileno(), on_readable)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    bound = listener.getsockname()
    print(f"listening on tcp://{bound[0]}:{bound[1]}", flush=True)
    await stop
    loop.remove_reader(listener.fileno())
    listener.close()


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8767, help="0: any free port")
    parser.add_argument("--backlog", type=int, default=1024, help="guarded-ws's default")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    wire.raise_nofile()
    wire.run(main(args.host, args.port, args.backlog), args.loop)


if __name__ == "__main__":
    cli()
