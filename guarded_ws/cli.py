"""``guarded-ws``: a thin layer over :mod:`guarded_ws.config` and :mod:`guarded_ws.runner`."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
from collections.abc import Sequence

from . import runner
from .certs import fingerprint, pem_certificates
from .config import Config, ConfigError, load_config
from .tokens import issue_token

# Flags that are shortcuts for a configuration key.
SHORTCUTS = {
    "host": "server.host",
    "port": "server.port",
    "path": "server.path",
    "loop": "server.loop",
    "app": "server.app",
    "log_level": "server.log_level",
    "metrics_host": "metrics.host",
    "metrics_port": "metrics.port",
    "upstream": "relay.upstream",
    "workers": "server.workers",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"guarded-ws: configuration error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guarded-ws", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    _config_options(serve)
    serve.add_argument("--host", help="listen address (server.host)")
    serve.add_argument("--port", type=int, help="listen port, 0 for any free one (server.port)")
    serve.add_argument("--path", help="WebSocket path (server.path)")
    serve.add_argument("--loop", choices=("uvloop", "asyncio"), help="event loop (server.loop)")
    serve.add_argument("--app", help="'echo', 'relay' or 'module:function' (server.app)")
    serve.add_argument("--upstream", help="the relay app's upstream, ws://HOST:PORT/PATH (relay.upstream)")
    serve.add_argument("--workers", type=int, help="processes sharing the port, under a supervisor (server.workers)")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="(server.log_level)")
    serve.add_argument("--metrics-host", help="admin port address (metrics.host)")
    serve.add_argument("--metrics-port", type=int, help="admin port (metrics.port)")
    serve.add_argument(
        "--demo", action="store_true", help="serve the browser-auth demo page on /demo (loopback only; cookie.demo)"
    )
    serve.set_defaults(handler=_serve)

    token = commands.add_parser("token", help="credentials")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    issue = token_commands.add_parser("issue", help="print a token signed with the configured secret")
    _config_options(issue)
    issue.add_argument("--sub", required=True, help="the subject the token names")
    issue.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds (default 3600)")
    issue.add_argument("--jti", help="a token id (needed for auth.single_use)")
    issue.set_defaults(handler=_issue)

    cert = commands.add_parser("cert", help="client certificates")
    cert_commands = cert.add_subparsers(dest="cert_command", required=True)
    fingerprint = cert_commands.add_parser(
        "fingerprint", help="print each certificate's SHA-256 fingerprint, as tls.client_cert_fingerprints takes it"
    )
    fingerprint.add_argument("file", help="a PEM (one or more certificates) or DER file")
    fingerprint.set_defaults(handler=_fingerprint)

    client = commands.add_parser("client", help="connect, authenticate, send messages, print the echoes")
    client.add_argument("url", help="e.g. ws://127.0.0.1:8765/ws or wss://...")
    client.add_argument("--token", help="the first-message credential (not needed with a client certificate)")
    client.add_argument("--cafile", help="wss://: trust this CA (PEM) for the server's certificate")
    client.add_argument("--cert", help="wss://: present this client certificate (PEM, key included or --key)")
    client.add_argument("--key", help="the client certificate's key, if not in --cert")
    client.add_argument("--message", action="append", default=[], help="a message to send (repeatable)")
    client.set_defaults(handler=_client)
    return parser


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=os.environ.get("GUARDED_WS_CONFIG"), help="TOML file")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one configuration key (repeatable)",
    )


def _load(args: argparse.Namespace) -> Config:
    overrides: dict[str, object] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(key, f"{item}: expected SECTION.KEY=VALUE")
        overrides[key.strip()] = value
    for flag, key in SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "demo", False):
        overrides.update({"cookie.enabled": True, "cookie.demo": True})
    return load_config(args.config, overrides=overrides)


def _serve(args: argparse.Namespace) -> int:
    config = _load(args)
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    secret = secrets.token_urlsafe(32) if config.needs_dev_secret else None
    if config.server.workers > 1:
        from . import supervisor

        return supervisor.run(
            config,
            secret=secret,
            on_started=lambda started: _print_dev_banner(config, secret, started.addresses[0]) if secret else None,
        )
    if secret is None:
        runner.run(config)
        return 0
    runner.run(
        config, secret=secret, on_started=lambda running: _print_dev_banner(config, secret, running.server.addresses[0])
    )
    return 0


def _print_dev_banner(config: Config, secret: str, address: tuple[str, int]) -> None:
    """Everything needed to try the server, printed once it listens (so the port is real)."""
    host, port = address
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    host = f"[{host}]" if ":" in host else host
    token = issue_token(secret, "dev-user", now=time.time(), ttl=3600, algorithm=_hs_algorithm(config))
    program = sys.argv[0] if sys.argv[0].endswith("guarded-ws") else f"{sys.executable} -m guarded_ws"
    scheme, trust = ("wss", " --cafile CA.pem") if config.tls.enabled else ("ws", "")
    print(
        "WARNING: no secret configured; using a random DEVELOPMENT secret that dies with this process.\n"
        "         Set GUARDED_WS_SECRET or auth.secret_file for anything real.\n"
        f"Sample token (sub=dev-user, valid 1 h):\n  {token}\n"
        "Try it:\n"
        f"  {program} client {scheme}://{host}:{port}{config.server.path} --token {token}{trust} --message hello\n",
        flush=True,
    )


def _issue(args: argparse.Namespace) -> int:
    config = _load(args)
    if config.auth.secret is None:
        raise ConfigError("auth.secret", "no secret configured: set GUARDED_WS_SECRET or auth.secret_file")
    print(
        issue_token(
            config.auth.secret,
            args.sub,
            now=time.time(),
            ttl=args.ttl,
            algorithm=_hs_algorithm(config),
            audience=config.auth.audience,
            issuer=config.auth.issuer,
            jti=args.jti,
        )
    )
    return 0


def _hs_algorithm(config: Config) -> str:
    hs = [alg for alg in config.auth.algorithms if alg.startswith("HS")]
    if not hs:
        raise ConfigError("auth.algorithms", "token issue signs with a shared secret: configure an HS algorithm")
    return hs[0]


def _fingerprint(args: argparse.Namespace) -> int:
    try:
        with open(args.file, "rb") as file:
            ders = pem_certificates(file.read())
    except (OSError, ValueError) as exc:
        print(f"guarded-ws: {args.file}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 1
    for der in ders:
        print(fingerprint(der))
    return 0


def _client(args: argparse.Namespace) -> int:
    from .client import talk, tls_context

    context = tls_context(args.cafile, args.cert, args.key) if args.url.startswith("wss:") else None
    if args.token is None and args.cert is None:
        print("guarded-ws client: give --token, or --cert for a wss:// server that takes certificates", file=sys.stderr)
        return 2
    return talk(args.url, args.token, args.message or ["hello"], ssl=context)


if __name__ == "__main__":
    sys.exit(main())
