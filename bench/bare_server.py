"""The ceiling: a bare socket server that accepts and closes, nothing else.

Same accept loop shape as guarded-ws (a non-blocking listener on the event loop,
``accept()`` in batches of 64), no protocol at all: what refusing a connection can cost
at best on this machine, in this language, on this loop.

``--hold`` keeps every accepted socket open instead (a sink), and ``--workers N`` runs N
processes on one port with SO_REUSEPORT: how bench/flood.py shows it can hold more
connections than one process has descriptors.

    python bench/bare_server.py --port 8767 [--loop asyncio]
    python bench/bare_server.py --port 8767 --hold --workers 2
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


async def main(host: str, port: int, backlog: int, hold: bool = False, reuseport: bool = False) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held: list[socket.socket] = []
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
            if hold:
                held.append(sock)
            else:
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
    parser.add_argument("--hold", action="store_true", help="keep accepted sockets open (a sink)")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    args = parser.parse_args(argv)
    wire.raise_nofile()
    if args.workers > 1:
        if args.port == 0:
            parser.error("--workers needs a fixed --port")
        for _ in range(args.workers - 1):
            if os.fork() == 0:
                import ctypes

                ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: go when the parent goes
                break
    wire.run(main(args.host, args.port, args.backlog, args.hold, args.workers > 1), args.loop)


if __name__ == "__main__":
    cli()
