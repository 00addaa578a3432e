"""Wiring: configuration in, a running server out (the same from the CLI and from code)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from . import demo, preauth
from .admin import AdminServer
from .apps import App, load_app
from .config import Config, ConfigError, derive_connection_caps, raise_nofile_limit
from .cookie_auth import CookieAuth
from .metrics import Metrics
from .plugins import import_object
from .rate import AcceptRate
from .relay import Relay
from .replay_store import RedisReplayStore
from .server import Server, Verifier
from .tickets import MIN_SECRET_BYTES, Tickets, cookie_name
from .tls import ServerTLS
from .tokens import HookVerifier, ReplayCache, TokenVerifier, issue_token, load_hook

log = logging.getLogger("guarded_ws")

FULL_COLLECTION_EVERY = 100  # collections of generation 1 between full ones; CPython's default is 10


def build_verifier(config: Config, secret: str | None = None) -> Verifier:
    """The configured credential check; ``secret`` stands in for a missing one (development)."""
    auth = config.auth
    if auth.verifier is not None:
        return HookVerifier(load_hook(auth.verifier))
    if auth.public_key_file is not None:
        key: str = Path(auth.public_key_file).read_text()
    else:
        key = auth.secret or secret or ""
        if not key:
            raise ValueError("auth.secret: no secret configured (set GUARDED_WS_SECRET or auth.secret_file)")
    return TokenVerifier(
        algorithms=auth.algorithms,
        key=key,
        audience=auth.audience,
        issuer=auth.issuer,
        max_lifetime=auth.max_token_lifetime,
        leeway=auth.leeway,
        replay_cache=ReplayCache(auth.replay_cache_size) if auth.single_use and auth.replay_store is None else None,
        shared_single_use=auth.single_use and auth.replay_store is not None,
    )


def build_app(config: Config, metrics: Metrics) -> App:
    if config.server.app != "relay":
        return load_app(config.server.app)
    relay = config.relay
    assert relay.upstream is not None and relay.secret is not None  # config checks both for the relay app
    return Relay(
        relay.upstream,
        relay.secret,
        connect_timeout=relay.connect_timeout,
        max_message_bytes=config.limits.max_message_bytes,
        close_timeout=config.limits.close_timeout,
        counts=metrics.relay_upstream,
    )


def build_browser_path(
    config: Config, verifier: Verifier, metrics: Metrics, secret: str | None = None
) -> tuple[preauth.Preauth, CookieAuth]:
    """The preauth endpoint and the upgrade's cookie check, sharing one ticket key."""
    cookie, auth = config.cookie, config.auth
    key = auth.secret or secret or ""
    if len(key.encode()) < MIN_SECRET_BYTES:
        raise ConfigError("auth.secret", f"cookie.enabled signs tickets with it: at least {MIN_SECRET_BYTES} bytes")
    shared = cookie.single_use and auth.replay_store is not None
    replay = ReplayCache(auth.replay_cache_size) if cookie.single_use and not shared else None
    tickets = Tickets(key, ttl=cookie.ttl, leeway=auth.leeway, replay_cache=replay, shared_single_use=shared)
    secure = cookie.secure or config.tls.enabled  # browsers reach us over TLS: Secure and __Host-
    name = cookie_name(cookie.name, secure=secure, domain=cookie.domain)
    if cookie.authenticator is not None:
        authenticate = preauth.hook(import_object(cookie.authenticator, "authenticator"))
    else:
        authenticate = preauth.bearer(verifier.verify)
    routes = {}
    demo_page = None
    if cookie.demo:
        routes[demo.LOGIN_PATH] = demo.login(_demo_token_issuer(config, key))
        demo_page = demo.page(cookie.preauth_path, config.server.path)
    endpoint = preauth.Preauth(
        path=cookie.preauth_path,
        tickets=tickets,
        cookie_name=name,
        secure=secure,
        domain=cookie.domain,
        authenticate=authenticate,
        rate=AcceptRate(cookie.preauth_rate, cookie.preauth_burst),
        metrics=metrics,
        max_request_bytes=config.limits.max_request_bytes,
        max_body_bytes=cookie.max_body_bytes,
        retry_after=config.limits.retry_after,
        routes=routes,
        demo_page=demo_page,
    )
    return endpoint, CookieAuth(tickets, name)


def _demo_token_issuer(config: Config, key: str) -> Callable[[str, float, float, str], str]:
    auth = config.auth
    hs = [alg for alg in auth.algorithms if alg.startswith("HS")]
    if not hs or auth.verifier is not None:
        raise ConfigError("cookie.demo", "the demo's login signs tokens with the secret: needs an HS* algorithm")

    def issue(subject: str, now: float, ttl: float, jti: str) -> str:
        return issue_token(
            key, subject, now=now, ttl=ttl, algorithm=hs[0], audience=auth.audience, issuer=auth.issuer, jti=jti
        )

    return issue


def build_server(config: Config, *, secret: str | None = None, nofile: int, metrics: Metrics | None = None) -> Server:
    pending_total, connections_total = derive_connection_caps(config.limits, nofile)
    metrics = metrics if metrics is not None else Metrics()
    verifier = build_verifier(config, secret)
    endpoint, cookie_auth = None, None
    if config.cookie.enabled:
        endpoint, cookie_auth = build_browser_path(config, verifier, metrics, secret)
    return Server(
        config,
        app=build_app(config, metrics),
        verifier=verifier,
        max_pending_total=pending_total,
        max_connections_total=connections_total,
        metrics=metrics,
        replay_store=(
            RedisReplayStore(config.auth.replay_store, timeout=config.auth.replay_store_timeout)
            if config.auth.replay_store is not None
            else None
        ),
        tls=ServerTLS(config.tls, config.limits.handshake_timeout) if config.tls.enabled else None,
        preauth=endpoint,
        cookie_auth=cookie_auth,
    )


class Running:
    """A started server and its admin port; ``stop()`` drains both."""

    def __init__(self, server: Server, admin: AdminServer | None) -> None:
        self.server = server
        self.admin = admin

    async def stop(self) -> None:
        await self.server.shutdown()
        if self.admin is not None:
            await self.admin.close()
        if self.server.replay_store is not None:
            await self.server.replay_store.close()


async def start(
    config: Config, *, secret: str | None = None, nofile: int | None = None, admin_path: str | None = None
) -> Running:
    """``admin_path``: serve the admin port on this unix socket instead (a worker, for its supervisor)."""
    server = build_server(config, secret=secret, nofile=nofile if nofile is not None else raise_nofile_limit())
    await server.start()
    admin = None
    if config.metrics.enabled or admin_path is not None:
        admin = AdminServer(server.metrics.registry, ready=lambda: not server.draining)
        if admin_path is not None:
            await admin.start_unix(admin_path)
        else:
            await admin.start(config.metrics.host, config.metrics.port)
    scheme = "wss" if server.tls is not None else "ws"
    for host, port in server.addresses:
        log.info("listening on %s://%s:%d%s", scheme, bracket(host), port, config.server.path)
        if config.cookie.demo:
            page = "https" if server.tls is not None else "http"
            log.info("demo page on %s://%s:%d/demo", page, bracket(host), port)
    if admin is not None and admin_path is None:
        log.info("metrics on http://%s:%d/metrics", bracket(config.metrics.host), admin.port)
    log.info(
        "limits: %d pending (%d per source), %d authenticated",
        server.admission.max_total,
        server.admission.max_per_source,
        server.max_connections_total,
    )
    return Running(server, admin)


async def serve(
    config: Config,
    *,
    secret: str | None = None,
    on_started: Callable[[Running], None] | None = None,
    admin_path: str | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then drain."""
    running = await start(config, secret=secret, admin_path=admin_path)
    settle_heap()
    if on_started is not None:
        on_started(running)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_tls, running.server)
    await stop.wait()
    log.info("shutting down: draining authenticated connections")
    await running.stop()
    log.info("stopped")


def settle_heap() -> None:
    """Garbage-collection policy for a serving process.

    A full collection walks every live object: with 19,000 pending connections, about 100 ms
    in which nothing else runs, deadlines included (bench/RESULTS.md, figure 6), and under
    churn CPython starts one every few seconds. Connections never need one: they break their
    cycles when they close (tests/test_resources.py). So what startup allocated is frozen out
    of every collection, and full collections come after 100 collections of the middle
    generation instead of 10.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def reload_tls(server: Server) -> None:
    """SIGHUP: new connections get the re-read certificates; open ones keep the session they have."""
    if server.tls is None:
        log.info("SIGHUP: TLS is off, nothing to reload")
        return
    try:
        server.tls.reload()
    except ConfigError as exc:
        log.error("SIGHUP: TLS reload failed, keeping the previous certificates: %s", exc)
        return
    log.info("SIGHUP: TLS certificates reloaded")


def run(
    config: Config,
    *,
    secret: str | None = None,
    on_started: Callable[[Running], None] | None = None,
    admin_path: str | None = None,
) -> None:
    runner: Callable[..., object]
    if config.server.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run
    runner(serve(config, secret=secret, on_started=on_started, admin_path=admin_path))


def bracket(host: str) -> str:
    """An address as it appears in a URL."""
    return f"[{host}]" if ":" in host else host
