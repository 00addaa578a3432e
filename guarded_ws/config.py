"""Settings, and the one place they are checked.

Layers, each overriding the one before: the defaults (safe at an edge on their own), a
TOML file, ``GUARDED_WS_<SECTION>_<KEY>`` environment variables, then overrides (the
command line's ``--set`` and shortcut flags, or code). TOML is typed, so a value of the
wrong type there is an error rather than a guess; environment and ``--set`` values are
text, read as the type of the key they set. Everything is checked once, after all
layers, so a wrong value stops start-up with a message naming its key instead of
surfacing under load, and a later layer can repair what an earlier one set.

The HMAC secret is not a layer: a secret does not belong in a file that gets committed
or in a process's argv. It comes from ``GUARDED_WS_SECRET``, else from the contents of
``auth.secret_file``.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import math
import os
import re
import resource
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, get_type_hints

from .certs import SUBJECT_FIELDS, normalize_fingerprint
from .proxies import TrustedProxies

SECRET_ENV = "GUARDED_WS_SECRET"
RELAY_SECRET_ENV = "GUARDED_WS_RELAY_SECRET"
_ENV_PREFIX = "GUARDED_WS_"
# Not settings: the secrets are handled apart, and the CLI reads the config file's path.
_ENV_NOT_SETTINGS = frozenset({SECRET_ENV, RELAY_SECRET_ENV, "GUARDED_WS_CONFIG"})

# Descriptors kept out of the connection caps: listeners, the metrics port and its
# scrapes, logging, the event loop and stdio.
FD_RESERVE = 64


class ConfigError(ValueError):
    """A wrong setting, named by its key, so the operator knows which line to fix."""

    key: str

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)  # both in args, so the error survives pickling
        self.key = key

    def __str__(self) -> str:
        return f"{self.args[0]}: {self.args[1]}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0: any free port
    path: str = "/ws"
    allowed_origins: tuple[str, ...] = ()  # empty: no Origin check
    backlog: int = 1024
    accept_batch: int = 64  # accepts per readiness event
    loop: str = "uvloop"
    app: str = "echo"  # or "module:function"
    log_level: str = "info"
    proxy_protocol: str = "off"  # "optional" or "required": a PROXY header from trusted_proxies names the client
    trusted_proxies: tuple[str, ...] = ()  # CIDRs
    forwarded_header: str = "off"  # "x-forwarded-for" or "forwarded": an HTTP proxy's word on the client
    forwarded_hops: int = 1  # trusted proxies that append to that header
    workers: int = 1  # processes sharing the port (SO_REUSEPORT) under a supervisor


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    handshake_timeout: float = 5.0
    auth_timeout: float = 5.0
    max_request_bytes: int = 8192
    max_preauth_bytes: int = 4096
    max_pending_per_source: int = 32
    accept_rate_per_source: float = 0.0  # connections per second; 0: no rate limit
    accept_burst_per_source: int = 20
    max_pending_total: int | None = None  # None: derived from RLIMIT_NOFILE
    overload_policy: str = "evict-oldest"
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    max_connections_total: int | None = None  # None: derived from RLIMIT_NOFILE
    max_connections_per_source: int = 256
    max_connections_per_subject: int = 16
    max_message_bytes: int = 1048576
    write_stall_timeout: float = 10.0
    ping_interval: float = 20.0  # 0: no keepalive pings
    ping_timeout: float = 20.0
    close_timeout: float = 5.0
    drain_timeout: float = 10.0
    retry_after: int = 1


@dataclass(frozen=True, slots=True)
class AuthConfig:
    algorithms: tuple[str, ...] = ("HS256",)
    secret_file: str | None = None
    public_key_file: str | None = None
    audience: str | None = None
    issuer: str | None = None
    max_token_lifetime: float = 86400.0
    leeway: float = 5.0
    single_use: bool = False
    replay_cache_size: int = 100000
    # "redis://[:PASSWORD@]HOST:PORT/DB": single use consumed cluster-wide; may hold a password, so not in repr().
    replay_store: str | None = field(default=None, repr=False)
    replay_store_timeout: float = 1.0
    verifier: str | None = None  # "module:function"
    # From GUARDED_WS_SECRET or secret_file, never from a layer; kept out of repr() and so out of logs.
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class CookieConfig:
    """The browser path: preauth endpoint, ticket cookie, CSRF token, Origin (docs/protocol.md)."""

    enabled: bool = False
    preauth_path: str = "/ws/preauth"
    name: str = "guarded_ws_ticket"  # "__Host-" is prepended when secure
    ttl: float = 30.0
    single_use: bool = False
    secure: bool = False  # served over TLS (here or at a proxy): Secure and the __Host- prefix
    domain: str | None = None
    preauth_rate: float = 1.0  # preauth requests per second per source
    preauth_burst: int = 10
    max_body_bytes: int = 1024
    authenticator: str | None = None  # "module:function"; None: a bearer token in Authorization
    demo: bool = False


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108  # 0: any free port


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """The relay app (``server.app = "relay"``): where to, and the secret that signs the identity."""

    upstream: str | None = None  # ws://HOST:PORT/PATH or wss://...
    secret_file: str | None = None
    connect_timeout: float = 5.0
    # From GUARDED_WS_RELAY_SECRET or secret_file; shared with the upstream only, never the token secret.
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: str | None = None  # PEM chain; set: the port speaks wss:// only
    key_file: str | None = None  # None: the key is in cert_file
    min_version: str = "TLSv1.2"
    client_auth: str = "none"  # or "optional", "required"
    client_ca_file: str | None = None  # trust anchors: CAs and/or the known client certificates
    client_cert_fingerprints: tuple[str, ...] = ()  # SHA-256 pins, on top of client_ca_file
    crl_file: str | None = None
    client_subject: str = "cn"  # or "san_dns", "san_email", "san_uri"

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    cookie: CookieConfig = field(default_factory=CookieConfig)

    @property
    def needs_dev_secret(self) -> bool:
        """Nothing could check an HMAC token or sign a ticket: the CLI then makes a throwaway secret, not fail."""
        auth = self.auth
        if auth.secret is not None:
            return False
        return self.cookie.enabled or (auth.verifier is None and any(alg in _HMAC for alg in auth.algorithms))


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """The configuration in force: defaults < TOML file < environment < overrides, then checked.

    ``overrides`` maps ``"section.key"`` to a typed value or to text, read like the environment.
    """
    environ = os.environ if environ is None else environ
    values = _values(Config())
    if path is not None:
        for key, value in _read_toml(path):
            _set(values, key, value, toml=True)
    for key, text in _from_environ(environ):
        _set(values, key, text)
    for key, value in (overrides or {}).items():
        _set(values, key, value)
    secret = environ.get(SECRET_ENV)
    if secret == "":
        raise ConfigError("auth.secret", f"{SECRET_ENV} is set but empty")
    relay_secret = environ.get(RELAY_SECRET_ENV)
    if relay_secret == "":
        raise ConfigError("relay.secret", f"{RELAY_SECRET_ENV} is set but empty")
    return _build(values, secret, relay_secret)


def with_overrides(config: Config, overrides: Mapping[str, object]) -> Config:
    """A variant of ``config``, checked again as a whole so that variants cannot skip validation.

    The secret is kept, unless ``auth.secret_file`` changes: then it comes from the new file.
    """
    values = _values(config)
    for key, value in overrides.items():
        _set(values, key, value)
    same_file = values["auth"]["secret_file"] == config.auth.secret_file
    same_relay_file = values["relay"]["secret_file"] == config.relay.secret_file
    return _build(
        values, config.auth.secret if same_file else None, config.relay.secret if same_relay_file else None
    )


def derive_connection_caps(limits: LimitsConfig, nofile: int) -> tuple[int, int]:
    """Returns (max_pending_total, max_connections_total), filling the None ones.

    Derived caps share the descriptors left after FD_RESERVE, so a flood of pending
    connections can never take the ones authenticated connections need: pending gets half
    of the budget, authenticated connections the rest; when one cap is set, the other gets
    what it leaves (at least 1).
    """
    budget = nofile - FD_RESERVE
    if budget < 2:
        raise ConfigError(
            "limits.max_pending_total",
            f"RLIMIT_NOFILE is {nofile}, which leaves {budget} descriptors for connections after the "
            f"{FD_RESERVE} reserved: raise it (ulimit -n, or LimitNOFILE= in systemd)",
        )
    pending, connections = limits.max_pending_total, limits.max_connections_total
    if pending is None:
        pending = budget // 2 if connections is None else max(1, budget - connections)
    if connections is None:
        connections = max(1, budget - pending)
    return pending, connections


def nofile_limit() -> int:
    """The soft limit: it is the one that makes accept() fail with EMFILE."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_nofile_limit() -> int:
    """Take every descriptor the hard limit allows; the derived caps grow with what we get."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass  # e.g. macOS refuses an unlimited soft limit; keep what we have
    return nofile_limit()


# Reading the layers

_Values = dict[str, dict[str, Any]]
_SECTIONS = {
    "server": ServerConfig,
    "limits": LimitsConfig,
    "auth": AuthConfig,
    "metrics": MetricsConfig,
    "relay": RelayConfig,
    "tls": TlsConfig,
    "cookie": CookieConfig,
}
_HINTS: dict[str, dict[str, Any]] = {name: get_type_hints(cls) for name, cls in _SECTIONS.items()}
_ENV_KEYS = {
    f"{_ENV_PREFIX}{section}_{name}".upper(): f"{section}.{name}" for section, hints in _HINTS.items() for name in hints
}
_EXPECTED = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    str | None: "a string",
    int | None: 'an integer or "auto"',
    tuple[str, ...]: "a list of strings",
}
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _values(config: Config) -> _Values:
    values = {name: asdict(getattr(config, name)) for name in _SECTIONS}
    del values["auth"]["secret"]
    del values["relay"]["secret"]
    return values


def _set(values: _Values, key: str, value: object, *, toml: bool = False) -> None:
    """Text (environment, ``--set``) is parsed; anything else, and all of TOML, must be typed."""
    section, name, hint = _lookup(key)
    if isinstance(value, str) and not toml:
        values[section][name] = _parsed(key, hint, value)
    else:
        values[section][name] = _typed(key, hint, value)


def _lookup(key: str) -> tuple[str, str, Any]:
    section, dot, name = key.partition(".")
    if not dot:
        raise ConfigError(key, "expected SECTION.KEY")
    hints = _section(section)
    if key == "auth.secret":
        raise ConfigError(key, f"not accepted in configuration: use auth.secret_file or {SECRET_ENV}")
    if key == "relay.secret":
        raise ConfigError(key, f"not accepted in configuration: use relay.secret_file or {RELAY_SECRET_ENV}")
    if name not in hints:
        raise ConfigError(key, "unknown key" + _suggest(name, hints))
    return section, name, hints[name]


def _section(name: str) -> dict[str, Any]:
    if name not in _HINTS:
        raise ConfigError(name, "unknown section" + _suggest(name, _HINTS))
    return _HINTS[name]


def _suggest(word: str, known: Mapping[str, object]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _read_toml(path: str | os.PathLike[str]) -> Iterator[tuple[str, object]]:
    where = os.fspath(path)
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(where, f"cannot read the configuration file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(where, f"invalid TOML: {exc}") from None
    for section, table in document.items():
        _section(section)
        if not isinstance(table, dict):
            raise ConfigError(section, f"expected a [{section}] table")
        for name, value in table.items():
            yield f"{section}.{name}", value


def _from_environ(environ: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    for variable, text in environ.items():
        if not variable.startswith(_ENV_PREFIX) or variable in _ENV_NOT_SETTINGS:
            continue
        if variable not in _ENV_KEYS:
            raise ConfigError(variable, "unknown environment variable" + _suggest(variable, _ENV_KEYS))
        yield _ENV_KEYS[variable], text


def _typed(key: str, hint: Any, value: object) -> object:
    """A value that has a type already (TOML, code) must have the right one: no guessing."""
    if value is None and hint in (int | None, str | None):
        return None
    if value == "auto" and hint == int | None:
        return None
    if isinstance(value, bool):  # an int to Python, never to us
        if hint is bool:
            return value
    elif isinstance(value, int) and hint in (int, int | None, float):
        return float(value) if hint is float else value
    elif isinstance(value, float) and hint is float and math.isfinite(value):
        return value
    elif isinstance(value, str) and hint in (str, str | None):
        return value
    elif isinstance(value, (list, tuple)) and hint == tuple[str, ...] and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(key, f"expected {_EXPECTED[hint]}, got {type(value).__name__} {value!r}")


def _parsed(key: str, hint: Any, text: str) -> object:
    """Environment and ``--set`` values are text: read them as the key's type."""
    raw = text.strip()
    if raw == "auto" and hint == int | None:
        return None
    try:
        if hint is bool:
            return _BOOLS[raw.lower()]
        if hint in (int, int | None):
            return int(raw)
        if hint is float:
            number = float(raw)
            if not math.isfinite(number):
                raise ValueError(raw)
            return number
    except (KeyError, ValueError):
        raise ConfigError(key, f"expected {_EXPECTED[hint]}, got {text!r}") from None
    if hint == tuple[str, ...]:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    if hint == str | None:
        return text or None  # empty unsets what an earlier layer set
    return text


# Checking the result

_Rule = tuple[Callable[[Any], bool], str]


def _at_least(low: int) -> _Rule:
    return (lambda value: value >= low, f"must be >= {low}")


def _between(low: int, high: int) -> _Rule:
    return (lambda value: low <= value <= high, f"must be {low}..{high}")


def _one_of(*options: str) -> _Rule:
    return (lambda value: value in options, "must be one of " + ", ".join(options))


def _is_hook(value: str) -> bool:
    module, colon, attribute = value.partition(":")
    return bool(module and colon and attribute) and ":" not in attribute


_POSITIVE: _Rule = (lambda value: value > 0, "must be > 0")
_NOT_EMPTY: _Rule = (bool, "must not be empty")
_HOOK: _Rule = (_is_hook, 'must be "module:function"')
# Compared with the request's path as is: a query or fragment here could never match.
_PATH: _Rule = (
    lambda path: path.startswith("/") and not re.search(r"[?#\s]", path),
    'must start with "/" and hold no query, fragment or space',
)

# Every key with a rule; None (unset) is always allowed where the type admits it.
_RULES: dict[str, _Rule] = {
    "server.host": _NOT_EMPTY,
    "server.port": _between(0, 65535),
    "server.path": _PATH,
    "server.backlog": _at_least(1),
    "server.accept_batch": _at_least(1),
    "server.loop": _one_of("uvloop", "asyncio"),
    "server.app": (
        lambda app: app in ("echo", "relay") or _is_hook(app),
        'must be "echo", "relay" or "module:function"',
    ),
    "server.log_level": _one_of("debug", "info", "warning", "error"),
    "server.proxy_protocol": _one_of("off", "optional", "required"),
    "server.forwarded_header": _one_of("off", "x-forwarded-for", "forwarded"),
    "server.forwarded_hops": _at_least(1),
    "server.workers": _between(1, 256),
    "limits.handshake_timeout": _POSITIVE,
    "limits.auth_timeout": _POSITIVE,
    "limits.max_request_bytes": _at_least(256),
    "limits.max_preauth_bytes": _at_least(64),
    "limits.max_pending_per_source": _at_least(1),
    "limits.accept_rate_per_source": (lambda value: value >= 0, "must be >= 0"),
    "limits.accept_burst_per_source": _at_least(1),
    "limits.max_pending_total": _at_least(1),
    "limits.overload_policy": _one_of("evict-oldest", "reject"),
    "limits.ipv4_prefix": _between(1, 32),
    "limits.ipv6_prefix": _between(1, 128),
    "limits.max_connections_total": _at_least(1),
    "limits.max_connections_per_source": _at_least(1),
    "limits.max_connections_per_subject": _at_least(1),
    "limits.max_message_bytes": _at_least(1),
    "limits.write_stall_timeout": _POSITIVE,
    "limits.ping_interval": (lambda value: value >= 0, "must be >= 0"),
    "limits.ping_timeout": _POSITIVE,
    "limits.close_timeout": _POSITIVE,
    "limits.drain_timeout": _POSITIVE,
    "limits.retry_after": _at_least(0),
    "auth.secret_file": _NOT_EMPTY,
    "auth.public_key_file": _NOT_EMPTY,
    "auth.audience": _NOT_EMPTY,
    "auth.issuer": _NOT_EMPTY,
    "auth.max_token_lifetime": _POSITIVE,
    "auth.leeway": (lambda value: value >= 0, "must be >= 0"),
    "auth.replay_cache_size": _at_least(1),
    "auth.replay_store": (
        lambda url: re.match(r"(redis|rediss|unix)://", url) is not None
        and importlib.util.find_spec("redis") is not None,
        'must be a redis://, rediss:// or unix:// URL, with redis-py installed (pip install "guarded-ws[redis]")',
    ),
    "auth.replay_store_timeout": _POSITIVE,
    "auth.verifier": _HOOK,
    "metrics.host": _NOT_EMPTY,
    "metrics.port": _between(0, 65535),
    "relay.upstream": (
        lambda url: re.fullmatch(r"wss?://[^/?#\s]+(/[^#\s]*)?", url) is not None,
        "must be a ws:// or wss:// URL with a host",
    ),
    "relay.secret_file": _NOT_EMPTY,
    "relay.connect_timeout": _POSITIVE,
    "tls.cert_file": _NOT_EMPTY,
    "tls.key_file": _NOT_EMPTY,
    "tls.min_version": _one_of("TLSv1.2", "TLSv1.3"),
    "tls.client_auth": _one_of("none", "optional", "required"),
    "tls.client_ca_file": _NOT_EMPTY,
    "tls.crl_file": _NOT_EMPTY,
    "tls.client_subject": _one_of(*SUBJECT_FIELDS),
    "cookie.preauth_path": _PATH,
    "cookie.name": (
        lambda name: re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) is not None and not name.startswith("__"),
        "must be 1 to 64 of A-Z a-z 0-9 _ -, without a __ prefix (added when secure)",
    ),
    "cookie.ttl": (lambda value: 0 < value <= 3600, "must be > 0 and <= 3600: a ticket is for the next upgrade"),
    "cookie.domain": (
        lambda domain: re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)*", domain) is not None,
        "must be a lower-case host name, no leading dot",
    ),
    "cookie.preauth_rate": _POSITIVE,
    "cookie.preauth_burst": _at_least(1),
    "cookie.max_body_bytes": _between(0, 65536),
    "cookie.authenticator": _HOOK,
}

_HMAC = ("HS256", "HS384", "HS512")
_PUBLIC_KEY = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")

# Exactly what a browser sends as Origin: lower-case, no default port, no leading zeros.
_ORIGIN = re.compile(r"(https?)://([a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])(?::([1-9][0-9]{0,4}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


# Values that may carry a credential (a Redis URL's password): an error names the key only.
_MAY_HOLD_SECRETS = frozenset({"auth.replay_store"})


def _build(values: _Values, secret: str | None, relay_secret: str | None = None) -> Config:
    for key, (ok, requirement) in _RULES.items():
        section, _, name = key.partition(".")
        value = values[section][name]
        if value is not None and not ok(value):
            shown = "value not shown: it may hold a password" if key in _MAY_HOLD_SECRETS else f"got {value!r}"
            raise ConfigError(key, f"{requirement} ({shown})")
    server, limits, auth = values["server"], values["limits"], values["auth"]
    server["allowed_origins"] = tuple(_origin(entry) for entry in server["allowed_origins"])
    _check_caps(limits)
    _check_proxies(server["proxy_protocol"], server["forwarded_header"], server["trusted_proxies"])
    if server["workers"] > 1 and auth["single_use"] and auth["replay_store"] is None:
        # Each worker would remember its own jtis: a token could be used once per worker.
        raise ConfigError("auth.replay_store", "required by auth.single_use with server.workers > 1")
    if server["workers"] > 1 and values["cookie"]["single_use"] and auth["replay_store"] is None:
        # The same for tickets: consumed in the shared store, or once per worker.
        raise ConfigError("auth.replay_store", "required by cookie.single_use with server.workers > 1")
    _check_algorithms(auth["algorithms"])
    _check_public_key(auth["algorithms"], auth["public_key_file"])
    _check_tls(values["tls"])
    _check_cookie(values["cookie"], server, auth)
    if secret is None and auth["secret_file"] is not None:
        secret = _read_secret(auth["secret_file"])
    relay_secret = _check_relay(server["app"], values["relay"], relay_secret, secret)
    return Config(
        server=ServerConfig(**server),
        limits=LimitsConfig(**limits),
        auth=AuthConfig(**auth, secret=secret),
        metrics=MetricsConfig(**values["metrics"]),
        relay=RelayConfig(**values["relay"], secret=relay_secret),
        tls=TlsConfig(**values["tls"]),
        cookie=CookieConfig(**values["cookie"]),
    )


def _origin(entry: str) -> str:
    key = "server.allowed_origins"
    origin = entry.lower()  # scheme and host are case-insensitive; browsers send them lower-case
    match = _ORIGIN.fullmatch(origin)
    if match is None or (match[3] is not None and int(match[3]) > 65535):
        raise ConfigError(
            key, f"each entry must be exactly scheme://host[:port], scheme http or https, no path (got {entry!r})"
        )
    if match[3] is not None and int(match[3]) == _DEFAULT_PORTS[match[1]]:
        # Browsers leave the default port out, so this entry would never match.
        raise ConfigError(key, f"drop the default port: browsers send {match[1]}://{match[2]} (got {entry!r})")
    return origin


def _check_cookie(cookie: dict[str, Any], server: dict[str, Any], auth: dict[str, Any]) -> None:
    if cookie["demo"] and not cookie["enabled"]:
        raise ConfigError("cookie.demo", "requires cookie.enabled")
    if cookie["demo"] and not _is_loopback(server["host"]):
        # The demo hands a token to anyone who asks: never off this machine.
        raise ConfigError("cookie.demo", f"only on a loopback server.host (got {server['host']!r})")
    if cookie["enabled"] and not server["allowed_origins"] and not cookie["demo"]:
        # Without an Origin check any page could ride a user's cookie (Cross-Site WebSocket Hijacking).
        raise ConfigError("cookie.enabled", "requires server.allowed_origins: the pages that may open the socket")
    if cookie["enabled"] and cookie["preauth_path"] == server["path"]:
        raise ConfigError("cookie.preauth_path", f"must differ from server.path ({server['path']!r})")
    if cookie["enabled"] and cookie["authenticator"] is None and auth["single_use"] and auth["replay_store"]:
        # Preauth answers within one request: it cannot wait on the shared store, nor skip it.
        raise ConfigError(
            "cookie.authenticator",
            "required with auth.single_use and auth.replay_store: the built-in bearer check cannot consume a "
            "jti in the shared store",
        )


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_caps(limits: dict[str, Any]) -> None:
    for cap, total in (
        ("max_pending_per_source", "max_pending_total"),
        ("max_connections_per_source", "max_connections_total"),
        ("max_connections_per_subject", "max_connections_total"),
    ):
        if limits[total] is not None and limits[cap] > limits[total]:
            raise ConfigError(f"limits.{cap}", f"must be <= limits.{total} (got {limits[cap]} > {limits[total]})")


def _check_proxies(mode: str, forwarded: str, cidrs: tuple[str, ...]) -> None:
    key = "server.trusted_proxies"
    for cidr in cidrs:
        try:
            TrustedProxies([cidr])
        except ValueError as exc:
            raise ConfigError(key, f"each entry must be a network such as 10.0.0.0/8 ({exc})") from None
    if mode != "off" and forwarded != "off":
        # A TCP balancer sends the PROXY header, an HTTP proxy the forwarded header: one source of truth.
        raise ConfigError("server.forwarded_header", 'must be "off" when server.proxy_protocol is on')
    for name, value in (("proxy_protocol", mode), ("forwarded_header", forwarded)):
        if value != "off" and not cidrs:
            # With nobody trusted, "required" would refuse every peer, and the rest would do nothing.
            raise ConfigError(key, f'must not be empty when server.{name} is "{value}"')


def _check_algorithms(algorithms: tuple[str, ...]) -> None:
    key = "auth.algorithms"
    if not algorithms:
        raise ConfigError(key, "must not be empty")
    for alg in algorithms:
        if alg.lower() == "none":
            raise ConfigError(key, '"none" (unsigned tokens) is never accepted')
        if alg not in _HMAC and alg not in _PUBLIC_KEY:
            raise ConfigError(key, f"unknown algorithm {alg!r} (known: {', '.join(_HMAC + _PUBLIC_KEY)})")
    if any(alg in _HMAC for alg in algorithms) and any(alg in _PUBLIC_KEY for alg in algorithms):
        # Key confusion: a public key, which anyone may hold, would be taken as an HMAC secret.
        raise ConfigError(key, "HMAC (HS*) and public-key algorithms cannot be mixed")


def _check_public_key(algorithms: tuple[str, ...], path: str | None) -> None:
    key = "auth.public_key_file"
    asymmetric = [alg for alg in algorithms if alg in _PUBLIC_KEY]
    if asymmetric and path is None:
        raise ConfigError(key, f"required by {asymmetric[0]}")
    if path is not None and not asymmetric:
        # HS* tokens would then be checked with the public key as their secret: anyone could forge them.
        raise ConfigError(key, "only for public-key algorithms; HS* algorithms use a secret")
    if path is not None:
        _read(key, path)


def _check_relay(app: str, relay: dict[str, Any], secret: str | None, token_secret: str | None) -> str | None:
    """The relay secret, read from its file if need be; the relay app cannot start without it or an upstream."""
    if secret is None and relay["secret_file"] is not None:
        secret = _read_secret(relay["secret_file"], "relay.secret_file")
    if secret is not None and secret == token_secret:
        # The upstream holds the relay secret: with the token secret it could mint client tokens.
        raise ConfigError("relay.secret", "must differ from the token secret (auth.secret)")
    if app == "relay":
        if relay["upstream"] is None:
            raise ConfigError("relay.upstream", 'required by server.app = "relay" (--upstream ws://HOST:PORT/PATH)')
        if secret is None:
            raise ConfigError("relay.secret", f"required by the relay app: set {RELAY_SECRET_ENV} or relay.secret_file")
    return secret


def _check_tls(tls: dict[str, Any]) -> None:
    """Client-certificate keys only mean something together; the files themselves are read by tls.py."""
    if tls["cert_file"] is None:
        for key in ("key_file", "client_ca_file", "crl_file"):
            if tls[key] is not None:
                raise ConfigError(f"tls.{key}", "needs tls.cert_file (TLS is off without it)")
        if tls["client_auth"] != "none" or tls["client_cert_fingerprints"]:
            raise ConfigError("tls.client_auth", "client certificates need TLS: set tls.cert_file")
        return
    if tls["client_auth"] == "none":
        for key in ("client_ca_file", "crl_file"):
            if tls[key] is not None:
                raise ConfigError(f"tls.{key}", 'unused while tls.client_auth = "none"')
        if tls["client_cert_fingerprints"]:
            raise ConfigError("tls.client_cert_fingerprints", 'unused while tls.client_auth = "none"')
    elif tls["client_ca_file"] is None:
        # No verify callback in Python's ssl: a certificate is only requested if it can be verified.
        raise ConfigError(
            "tls.client_ca_file",
            f'required by client_auth = "{tls["client_auth"]}": the CA certificates, or the known client '
            "certificates themselves (pins alone cannot be checked during the handshake)",
        )
    pins = []
    for entry in tls["client_cert_fingerprints"]:
        try:
            pins.append(normalize_fingerprint(entry))
        except ValueError as exc:
            raise ConfigError("tls.client_cert_fingerprints", f"{exc} (got {entry!r})") from None
    tls["client_cert_fingerprints"] = tuple(pins)


def _read_secret(path: str, key: str = "auth.secret_file") -> str:
    try:
        secret = _read(key, path).decode().rstrip()
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path!r} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(key, f"{path!r} is empty")
    return secret


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path!r}: {exc.strerror or exc}") from None
