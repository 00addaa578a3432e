from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from pathlib import Path

import pytest

from guarded_ws import config as config_module
from guarded_ws.config import (
    FD_RESERVE,
    Config,
    ConfigError,
    LimitsConfig,
    derive_connection_caps,
    load_config,
    nofile_limit,
    raise_nofile_limit,
    with_overrides,
)


def load(
    tmp_path: Path,
    toml: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    path = None
    if toml is not None:
        path = tmp_path / "guarded-ws.toml"
        path.write_text(toml)
    return load_config(path, environ=environ or {}, overrides=overrides)


def test_defaults_load_without_a_file_or_environment():
    config = load_config(None, environ={})
    assert config == Config()
    assert config.server.port == 8765 and config.server.path == "/ws"
    assert config.limits.max_pending_total is None and config.limits.max_connections_total is None
    assert config.auth.algorithms == ("HS256",) and config.auth.secret is None
    assert config.metrics.enabled is True


def test_toml_overrides_defaults(tmp_path):
    config = load(
        tmp_path,
        """
        [server]
        host = "0.0.0.0"
        port = 9000
        allowed_origins = ["https://app.example.com"]

        [limits]
        auth_timeout = 3
        max_pending_total = 100
        overload_policy = "reject"

        [auth]
        algorithms = ["HS512"]
        single_use = true

        [metrics]
        enabled = false
        """,
    )
    assert config.server.host == "0.0.0.0" and config.server.port == 9000
    assert config.server.allowed_origins == ("https://app.example.com",)
    assert config.limits.auth_timeout == 3.0 and isinstance(config.limits.auth_timeout, float)
    assert config.limits.max_pending_total == 100
    assert config.limits.overload_policy == "reject"
    assert config.auth.algorithms == ("HS512",) and config.auth.single_use is True
    assert config.metrics.enabled is False
    assert config.limits.handshake_timeout == 5.0  # untouched keys keep their default


def test_environment_overrides_toml(tmp_path):
    config = load(
        tmp_path,
        "[limits]\nauth_timeout = 3\n[server]\nport = 9000\n",
        environ={
            "GUARDED_WS_LIMITS_AUTH_TIMEOUT": "2.5",
            "GUARDED_WS_SERVER_ALLOWED_ORIGINS": "https://a.example, ,https://b.example,",
            "GUARDED_WS_AUTH_SINGLE_USE": "yes",
            "GUARDED_WS_CONFIG": "/ignored/here.toml",
            "UNRELATED": "x",
        },
    )
    assert config.limits.auth_timeout == 2.5
    assert config.server.port == 9000  # from the file, not overridden
    assert config.server.allowed_origins == ("https://a.example", "https://b.example")
    assert config.auth.single_use is True


def test_overrides_beat_environment(tmp_path):
    config = load(
        tmp_path,
        "[limits]\nauth_timeout = 3\n",
        environ={"GUARDED_WS_LIMITS_AUTH_TIMEOUT": "2.5", "GUARDED_WS_SERVER_PORT": "9000"},
        overrides={"limits.auth_timeout": "1.5", "server.port": 0},
    )
    assert config.limits.auth_timeout == 1.5
    assert config.server.port == 0


def test_environ_defaults_to_the_process_environment(monkeypatch):
    for variable in [name for name in os.environ if name.startswith("GUARDED_WS_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("GUARDED_WS_SERVER_PORT", "9999")
    assert load_config().server.port == 9999


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("server.port", "8080", 8080),
        ("server.port", " 8080 ", 8080),
        ("limits.auth_timeout", "0.25", 0.25),
        ("limits.auth_timeout", "3", 3.0),
        ("auth.single_use", "true", True),
        ("auth.single_use", "1", True),
        ("metrics.enabled", "False", False),
        ("metrics.enabled", "no", False),
        ("metrics.enabled", "0", False),
        ("auth.algorithms", "HS256, HS384", ("HS256", "HS384")),
        ("server.allowed_origins", "", ()),
        ("limits.max_pending_total", "50", 50),
        ("auth.audience", "ws.example.com", "ws.example.com"),
    ],
)
def test_text_values_are_read_as_the_type_of_their_key(tmp_path, key, text, expected):
    section, _, name = key.partition(".")
    from_override = load(tmp_path, overrides={key: text})
    from_env = load(tmp_path, environ={f"GUARDED_WS_{section}_{name}".upper(): text})
    assert getattr(getattr(from_override, section), name) == expected
    assert getattr(getattr(from_env, section), name) == expected


def test_auto_is_accepted_for_derived_caps(tmp_path):
    toml = '[limits]\nmax_pending_total = "auto"\nmax_connections_total = 1000\n'
    assert load(tmp_path, toml).limits.max_pending_total is None
    assert load(tmp_path, toml).limits.max_connections_total == 1000
    environ = {"GUARDED_WS_LIMITS_MAX_CONNECTIONS_TOTAL": "auto"}
    assert load(tmp_path, toml, environ=environ).limits.max_connections_total is None
    assert load(tmp_path, toml, overrides={"limits.max_connections_total": None}).limits.max_connections_total is None


def test_an_empty_text_value_unsets_an_optional_string(tmp_path):
    config = load(tmp_path, '[auth]\naudience = "ws.example.com"\n', environ={"GUARDED_WS_AUTH_AUDIENCE": ""})
    assert config.auth.audience is None


def test_origins_are_stored_with_lower_case_scheme_and_host(tmp_path):
    config = load(tmp_path, overrides={"server.allowed_origins": "HTTPS://App.Example.COM:8443,http://[::1]:8080"})
    assert config.server.allowed_origins == ("https://app.example.com:8443", "http://[::1]:8080")


KEY_FILE = "{tmp}/key.pem"

# (toml, environ, overrides, key named by the error, text the message must hold)
BAD = {
    "unknown key": ("[limits]\nauth_timeot = 3\n", {}, {}, "limits.auth_timeot", "unknown key"),
    "unknown key override": (None, {}, {"limits.auth_timeot": "3"}, "limits.auth_timeot", "unknown key"),
    "override without section": (None, {}, {"port": 1}, "port", "SECTION.KEY"),
    "unknown section": ("[limitz]\nauth_timeout = 3\n", {}, {}, "limitz", "unknown section"),
    "unknown section override": (None, {}, {"limitz.auth_timeout": 3}, "limitz", "unknown section"),
    "key outside a section": ("port = 1\n", {}, {}, "port", "unknown section"),
    "section not a table": ('server = "x"\n', {}, {}, "server", "table"),
    "wrong type": ('[limits]\nauth_timeout = "3"\n', {}, {}, "limits.auth_timeout", "expected a number"),
    "bool as int": ("[server]\nport = true\n", {}, {}, "server.port", "expected an integer"),
    "bool as int override": (None, {}, {"server.port": True}, "server.port", "expected an integer"),
    "float as int": ("[server]\nport = 80.0\n", {}, {}, "server.port", "expected an integer"),
    "bool as float": ("[limits]\nauth_timeout = false\n", {}, {}, "limits.auth_timeout", "expected a number"),
    "string as list": ('[auth]\nalgorithms = "HS256"\n', {}, {}, "auth.algorithms", "list of strings"),
    "list of non-strings": ("[auth]\nalgorithms = [256]\n", {}, {}, "auth.algorithms", "list of strings"),
    "text fraction as int": (None, {}, {"server.port": "1.5"}, "server.port", "expected an integer"),
    "text not a bool": (None, {"GUARDED_WS_AUTH_SINGLE_USE": "maybe"}, {}, "auth.single_use", "true or false"),
    "text nan": (None, {"GUARDED_WS_LIMITS_CLOSE_TIMEOUT": "nan"}, {}, "limits.close_timeout", "a number"),
    "toml inf": ("[limits]\nclose_timeout = inf\n", {}, {}, "limits.close_timeout", "a number"),
    "negative timeout": ("[limits]\nauth_timeout = -1\n", {}, {}, "limits.auth_timeout", "> 0"),
    "zero timeout": (None, {}, {"limits.handshake_timeout": 0}, "limits.handshake_timeout", "> 0"),
    "negative ping interval": (None, {}, {"limits.ping_interval": -1}, "limits.ping_interval", ">= 0"),
    "negative retry after": (None, {}, {"limits.retry_after": -1}, "limits.retry_after", ">= 0"),
    "tiny request budget": (None, {}, {"limits.max_request_bytes": 255}, "limits.max_request_bytes", ">= 256"),
    "tiny preauth budget": (None, {}, {"limits.max_preauth_bytes": 63}, "limits.max_preauth_bytes", ">= 64"),
    "zero pending total": (None, {}, {"limits.max_pending_total": 0}, "limits.max_pending_total", ">= 1"),
    "zero backlog": (None, {}, {"server.backlog": 0}, "server.backlog", ">= 1"),
    "port out of range": (None, {}, {"metrics.port": 65536}, "metrics.port", "0..65535"),
    "pending per source above total": (
        "[limits]\nmax_pending_total = 10\nmax_pending_per_source = 11\n",
        {},
        {},
        "limits.max_pending_per_source",
        "limits.max_pending_total",
    ),
    "connections per source above total": (
        None,
        {},
        {"limits.max_connections_total": 100},
        "limits.max_connections_per_source",
        "limits.max_connections_total",
    ),
    "connections per subject above total": (
        None,
        {},
        {"limits.max_connections_total": 10, "limits.max_connections_per_source": 5},
        "limits.max_connections_per_subject",
        "limits.max_connections_total",
    ),
    "bad policy": ('[limits]\noverload_policy = "drop-newest"\n', {}, {}, "limits.overload_policy", "evict-oldest"),
    "ipv4 prefix too long": ("[limits]\nipv4_prefix = 33\n", {}, {}, "limits.ipv4_prefix", "1..32"),
    "ipv6 prefix zero": ("[limits]\nipv6_prefix = 0\n", {}, {}, "limits.ipv6_prefix", "1..128"),
    "ipv6 prefix too long": (None, {}, {"limits.ipv6_prefix": 129}, "limits.ipv6_prefix", "1..128"),
    "algorithm none": ('[auth]\nalgorithms = ["none"]\n', {}, {}, "auth.algorithms", "never accepted"),
    "algorithm NONE": (None, {"GUARDED_WS_AUTH_ALGORITHMS": "HS256,NONE"}, {}, "auth.algorithms", "never accepted"),
    "unknown algorithm": ('[auth]\nalgorithms = ["hs256"]\n', {}, {}, "auth.algorithms", "unknown algorithm"),
    "no algorithm": ("[auth]\nalgorithms = []\n", {}, {}, "auth.algorithms", "empty"),
    "HS and RS mixed": (
        f"[auth]\nalgorithms = ['HS256', 'RS256']\npublic_key_file = '{KEY_FILE}'\n",
        {},
        {},
        "auth.algorithms",
        "cannot be mixed",
    ),
    "asymmetric without key file": ('[auth]\nalgorithms = ["RS256"]\n', {}, {}, "auth.public_key_file", "RS256"),
    "asymmetric with a missing key file": (
        "[auth]\nalgorithms = ['ES256']\npublic_key_file = '{tmp}/missing.pem'\n",
        {},
        {},
        "auth.public_key_file",
        "missing.pem",
    ),
    "key file with HS": (f"[auth]\npublic_key_file = '{KEY_FILE}'\n", {}, {}, "auth.public_key_file", "HS"),
    "origin with trailing slash": (
        '[server]\nallowed_origins = ["https://app.example/"]\n',
        {},
        {},
        "server.allowed_origins",
        "https://app.example/",
    ),
    "origin with path": (
        None,
        {"GUARDED_WS_SERVER_ALLOWED_ORIGINS": "https://a.example,https://app.example/ws"},
        {},
        "server.allowed_origins",
        "https://app.example/ws",
    ),
    "origin with query": (
        None,
        {},
        {"server.allowed_origins": "https://app.example?x=1"},
        "server.allowed_origins",
        "?x=1",
    ),
    "wildcard origin": (
        '[server]\nallowed_origins = ["https://*.example.com"]\n',
        {},
        {},
        "server.allowed_origins",
        "*.example.com",
    ),
    "bare wildcard origin": ('[server]\nallowed_origins = ["*"]\n', {}, {}, "server.allowed_origins", "'*'"),
    "origin without scheme": (None, {}, {"server.allowed_origins": "app.example"}, "server.allowed_origins", "scheme"),
    "origin with other scheme": (
        None,
        {},
        {"server.allowed_origins": "ws://app.example"},
        "server.allowed_origins",
        "http or https",
    ),
    "origin with default port": (
        None,
        {},
        {"server.allowed_origins": "https://app.example:443"},
        "server.allowed_origins",
        "default port",
    ),
    "origin with bad port": (
        None,
        {},
        {"server.allowed_origins": "https://app.example:99999"},
        "server.allowed_origins",
        "99999",
    ),
    "path without slash": ('[server]\npath = "ws"\n', {}, {}, "server.path", '"/"'),
    "path with query": (None, {}, {"server.path": "/ws?x=1"}, "server.path", "query"),
    "bad loop": (None, {}, {"server.loop": "trio"}, "server.loop", "uvloop"),
    "bad log level": (None, {}, {"server.log_level": "verbose"}, "server.log_level", "debug"),
    "app without function": (None, {}, {"server.app": "mymodule"}, "server.app", "module:function"),
    "verifier with two colons": (None, {}, {"auth.verifier": "a:b:c"}, "auth.verifier", "module:function"),
    "verifier without module": (None, {}, {"auth.verifier": ":check"}, "auth.verifier", "module:function"),
    "empty audience in toml": ('[auth]\naudience = ""\n', {}, {}, "auth.audience", "empty"),
    "empty secret file name in toml": ('[auth]\nsecret_file = ""\n', {}, {}, "auth.secret_file", "empty"),
    "secret in TOML": ('[auth]\nsecret = "hunter2"\n', {}, {}, "auth.secret", "GUARDED_WS_SECRET"),
    "secret in override": (None, {}, {"auth.secret": "hunter2"}, "auth.secret", "secret_file"),
    "secret in a settings variable": (None, {"GUARDED_WS_AUTH_SECRET": "hunter2"}, {}, "auth.secret", "secret_file"),
    "empty secret variable": (None, {"GUARDED_WS_SECRET": ""}, {}, "auth.secret", "empty"),
    "missing secret file": (
        "[auth]\nsecret_file = '{tmp}/no-such-secret'\n",
        {},
        {},
        "auth.secret_file",
        "no-such-secret",
    ),
    "secret file is a directory": ("[auth]\nsecret_file = '{tmp}'\n", {}, {}, "auth.secret_file", "cannot read"),
    "empty secret file": ("[auth]\nsecret_file = '{tmp}/blank'\n", {}, {}, "auth.secret_file", "empty"),
    "unknown variable": (
        None,
        {"GUARDED_WS_LIMITS_AUTH_TIMEOT": "3"},
        {},
        "GUARDED_WS_LIMITS_AUTH_TIMEOT",
        "GUARDED_WS_LIMITS_AUTH_TIMEOUT",  # the suggestion
    ),
    "unknown variable with a section only": (None, {"GUARDED_WS_PORT": "1"}, {}, "GUARDED_WS_PORT", "unknown"),
    "malformed TOML": ("[limits\nauth_timeout = 3\n", {}, {}, "{file}", "line 1"),
    "tls version": (None, {}, {"tls.min_version": "TLSv1.1"}, "tls.min_version", "TLSv1.2, TLSv1.3"),
    "tls client auth": (None, {}, {"tls.client_auth": "maybe"}, "tls.client_auth", "none, optional, required"),
    "tls subject field": (None, {}, {"tls.client_subject": "ou"}, "tls.client_subject", "cn, san_dns"),
    "tls key without cert": (None, {}, {"tls.key_file": "k.pem"}, "tls.key_file", "tls.cert_file"),
    "client auth without tls": (None, {}, {"tls.client_auth": "required"}, "tls.client_auth", "tls.cert_file"),
    "client auth without anchors": (
        None, {}, {"tls.cert_file": "c.pem", "tls.client_auth": "optional"}, "tls.client_ca_file", "pins alone",
    ),
    "client ca unused": (
        None, {}, {"tls.cert_file": "c.pem", "tls.client_ca_file": "ca.pem"}, "tls.client_ca_file", "unused",
    ),
    "pins unused": (
        None, {}, {"tls.cert_file": "c.pem", "tls.client_cert_fingerprints": "ab" * 32},
        "tls.client_cert_fingerprints", "unused",
    ),
    "pin not sha-256": (
        '[tls]\ncert_file = "c.pem"\nclient_auth = "required"\nclient_ca_file = "ca.pem"\n'
        'client_cert_fingerprints = ["abcd"]\n',
        {}, {}, "tls.client_cert_fingerprints", "64 hex digits",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("toml", "environ", "overrides", "key", "says"), BAD.values(), ids=BAD.keys())
def test_bad_settings_are_errors_naming_their_key(tmp_path, toml, environ, overrides, key, says):
    (tmp_path / "key.pem").write_text("-----BEGIN PUBLIC KEY-----\n")
    (tmp_path / "blank").write_text(" \n")
    key = key.format(file=tmp_path / "guarded-ws.toml")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, toml.format(tmp=tmp_path) if toml else None, environ, overrides)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")
    assert says.format(tmp=tmp_path) in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("server.host", ""),
        ("server.port", -1),
        ("server.accept_batch", 0),
        ("limits.max_pending_per_source", 0),
        ("limits.max_connections_total", 0),
        ("limits.max_connections_per_source", 0),
        ("limits.max_connections_per_subject", 0),
        ("limits.max_message_bytes", 0),
        ("limits.write_stall_timeout", 0),
        ("limits.ping_timeout", 0),
        ("limits.close_timeout", -0.5),
        ("limits.drain_timeout", 0),
        ("auth.max_token_lifetime", 0),
        ("auth.leeway", -1),
        ("auth.replay_cache_size", 0),
        ("metrics.host", ""),
    ],
)
def test_every_bound_is_checked(tmp_path, key, value):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, overrides={key: value})
    assert caught.value.key == key


def test_a_missing_config_file_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing, environ={})
    assert caught.value.key == str(missing)


def test_a_later_layer_can_repair_an_earlier_one(tmp_path):
    # Checked after all layers, not per layer.
    toml = "[limits]\nmax_pending_total = 10\nmax_pending_per_source = 11\n"
    config = load(tmp_path, toml, overrides={"limits.max_pending_total": 20})
    assert config.limits.max_pending_total == 20 and config.limits.max_pending_per_source == 11


def test_asymmetric_algorithms_with_a_readable_key_file(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\n")
    config = load(tmp_path, f"[auth]\nalgorithms = ['RS256', 'ES256', 'EdDSA']\npublic_key_file = '{key}'\n")
    assert config.auth.algorithms == ("RS256", "ES256", "EdDSA")
    assert config.auth.public_key_file == str(key)
    assert not config.needs_dev_secret


def test_secret_from_the_environment(tmp_path):
    config = load(tmp_path, environ={"GUARDED_WS_SECRET": "env-secret"})
    assert config.auth.secret == "env-secret"
    assert not config.needs_dev_secret


def test_secret_from_file_loses_its_trailing_newline(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("file-secret \n\n")
    config = load(tmp_path, f"[auth]\nsecret_file = '{secret_file}'\n")
    assert config.auth.secret == "file-secret"
    assert not config.needs_dev_secret


def test_the_environment_secret_wins_over_the_file_which_is_then_not_read(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("file-secret\n")
    config = load(tmp_path, f"[auth]\nsecret_file = '{secret_file}'\n", environ={"GUARDED_WS_SECRET": "env-secret"})
    assert config.auth.secret == "env-secret"
    absent = load(tmp_path, "[auth]\nsecret_file = '/nonexistent/secret'\n", environ={"GUARDED_WS_SECRET": "s"})
    assert absent.auth.secret == "s"


def test_the_secret_stays_out_of_repr(tmp_path):
    config = load(tmp_path, environ={"GUARDED_WS_SECRET": "do-not-log-me"})
    assert "do-not-log-me" not in repr(config)


def test_needs_dev_secret_only_when_nothing_can_check_an_hmac_token(tmp_path):
    assert load(tmp_path).needs_dev_secret
    assert load(tmp_path, overrides={"auth.algorithms": "HS384,HS512"}).needs_dev_secret
    assert not load(tmp_path, environ={"GUARDED_WS_SECRET": "s"}).needs_dev_secret
    assert not load(tmp_path, overrides={"auth.verifier": "mymodule:check"}).needs_dev_secret


def test_with_overrides_builds_a_checked_variant(tmp_path):
    base = load(tmp_path, environ={"GUARDED_WS_SECRET": "env-secret"})
    variant = with_overrides(base, {"limits.auth_timeout": "2", "server.port": 0})
    assert variant.limits.auth_timeout == 2.0 and variant.server.port == 0
    assert variant.auth.secret == "env-secret"  # kept
    assert base.limits.auth_timeout == 5.0 and base.server.port == 8765  # untouched
    with pytest.raises(ConfigError) as caught:
        with_overrides(base, {"limits.max_pending_total": 10, "limits.max_pending_per_source": 11})
    assert caught.value.key == "limits.max_pending_per_source"


def test_with_overrides_reads_a_changed_secret_file(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    base = load(tmp_path, environ={"GUARDED_WS_SECRET": "env-secret"})
    assert with_overrides(base, {"auth.secret_file": str(secret_file)}).auth.secret == "from-file"


def test_tls_settings_load_and_pins_are_normalised(tmp_path):
    pin = "AB:" * 31 + "AB"
    config = load(
        tmp_path,
        '[tls]\ncert_file = "c.pem"\nclient_auth = "optional"\nclient_ca_file = "ca.pem"\n'
        f'client_cert_fingerprints = ["{pin}"]\nclient_subject = "san_email"\n',
    )
    assert config.tls.enabled and config.tls.key_file is None
    assert config.tls.client_cert_fingerprints == ("ab" * 32,)
    assert config.tls.client_subject == "san_email"
    assert not load(tmp_path).tls.enabled


@pytest.mark.parametrize(
    ("pending", "connections", "nofile", "expected"),
    [
        (None, None, FD_RESERVE + 1000, (500, 500)),
        (None, None, FD_RESERVE + 1001, (500, 501)),
        (None, None, FD_RESERVE + 2, (1, 1)),
        (100, None, FD_RESERVE + 1000, (100, 900)),
        (None, 300, FD_RESERVE + 1000, (700, 300)),
        (2000, None, FD_RESERVE + 1000, (2000, 1)),  # explicit beyond the budget: kept, the other gets 1
        (5000, 7000, FD_RESERVE + 1000, (5000, 7000)),
    ],
)
def test_derive_connection_caps(pending, connections, nofile, expected):
    limits = LimitsConfig(max_pending_total=pending, max_connections_total=connections)
    assert derive_connection_caps(limits, nofile) == expected


@pytest.mark.parametrize("nofile", [FD_RESERVE + 1, FD_RESERVE, 10])
def test_derive_connection_caps_needs_descriptors(nofile):
    with pytest.raises(ConfigError) as caught:
        derive_connection_caps(LimitsConfig(), nofile)
    assert caught.value.key == "limits.max_pending_total"
    assert "ulimit -n" in str(caught.value)


def test_nofile_limit_is_the_soft_limit():
    assert nofile_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class FakeResource:
    RLIMIT_NOFILE = resource.RLIMIT_NOFILE

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert which == self.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed to raise maximum limit")
        self.limits = limits


def test_raise_nofile_limit_raises_the_soft_limit_to_the_hard_one(monkeypatch):
    fake = FakeResource(1024, 65536)
    monkeypatch.setattr(config_module, "resource", fake)
    assert raise_nofile_limit() == 65536
    assert fake.limits == (65536, 65536)


def test_raise_nofile_limit_keeps_the_soft_limit_when_refused(monkeypatch):
    monkeypatch.setattr(config_module, "resource", FakeResource(1024, 65536, refuse=True))
    assert raise_nofile_limit() == 1024


# The browser path: [cookie]

ORIGIN = {"server.allowed_origins": "https://app.example"}
BAD_COOKIE = {
    "cookie without origins": ({"cookie.enabled": True}, "cookie.enabled", "server.allowed_origins"),
    "demo without cookie": ({"cookie.demo": True}, "cookie.demo", "cookie.enabled"),
    "demo off loopback": (
        {"cookie.enabled": True, "cookie.demo": True, "server.host": "0.0.0.0"},
        "cookie.demo",
        "loopback",
    ),
    "preauth path is the socket's": (
        {**ORIGIN, "cookie.enabled": True, "cookie.preauth_path": "/ws"},
        "cookie.preauth_path",
        "server.path",
    ),
    "preauth path with query": ({"cookie.preauth_path": "/p?x"}, "cookie.preauth_path", "query"),
    "prefixed cookie name": ({"cookie.name": "__Host-t"}, "cookie.name", "__ prefix"),
    "cookie name with a separator": ({"cookie.name": "a;b"}, "cookie.name", "A-Z"),
    "zero ttl": ({"cookie.ttl": 0}, "cookie.ttl", "> 0"),
    "long ttl": ({"cookie.ttl": 86400}, "cookie.ttl", "3600"),
    "domain with leading dot": ({"cookie.domain": ".example.com"}, "cookie.domain", "leading dot"),
    "zero preauth rate": ({"cookie.preauth_rate": 0}, "cookie.preauth_rate", "> 0"),
    "zero preauth burst": ({"cookie.preauth_burst": 0}, "cookie.preauth_burst", ">= 1"),
    "huge body": ({"cookie.max_body_bytes": 1 << 20}, "cookie.max_body_bytes", "0..65536"),
    "authenticator not a hook": ({"cookie.authenticator": "nohook"}, "cookie.authenticator", "module:function"),
}


@pytest.mark.parametrize(("overrides", "key", "says"), BAD_COOKIE.values(), ids=BAD_COOKIE.keys())
def test_bad_cookie_settings_are_errors_naming_their_key(tmp_path, overrides, key, says):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, overrides=overrides)
    assert caught.value.key == key
    assert says in str(caught.value)


def test_cookie_settings_from_every_layer(tmp_path):
    config = load(
        tmp_path,
        '[server]\nallowed_origins = ["https://app.example"]\n[cookie]\nenabled = true\nttl = 20\n',
        {"GUARDED_WS_COOKIE_SINGLE_USE": "true"},
        {"cookie.secure": "yes", "cookie.domain": "example.com"},
    )
    cookie = config.cookie
    assert (cookie.enabled, cookie.ttl, cookie.single_use, cookie.secure, cookie.domain) == (
        True,
        20.0,
        True,
        True,
        "example.com",
    )
    assert load(tmp_path, overrides={"cookie.enabled": True, "cookie.demo": True}).cookie.demo  # origins: its own


def test_the_cookie_path_needs_a_secret_even_with_public_key_tokens(tmp_path):
    key_file = tmp_path / "key.pem"
    key_file.write_text("-----BEGIN PUBLIC KEY-----\n")
    rs = {"auth.algorithms": "RS256", "auth.public_key_file": str(key_file)}
    assert not load(tmp_path, overrides=rs).needs_dev_secret
    assert load(tmp_path, overrides={**rs, **ORIGIN, "cookie.enabled": True}).needs_dev_secret


def test_preauth_bearer_check_cannot_skip_a_shared_replay_store(tmp_path):
    shared = {**ORIGIN, "cookie.enabled": True, "auth.single_use": True, "auth.replay_store": "redis://127.0.0.1:6379/0"}
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, overrides=shared)
    assert caught.value.key == "cookie.authenticator"
    assert load(tmp_path, overrides={**shared, "cookie.authenticator": "mymodule:check"}).cookie.enabled


def test_single_use_tickets_with_workers_need_the_shared_store(tmp_path):
    tickets = {**ORIGIN, "cookie.enabled": True, "cookie.single_use": True, "server.workers": 2}
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, overrides=tickets)
    assert caught.value.key == "auth.replay_store" and "cookie.single_use" in str(caught.value)
    shared = load(tmp_path, overrides={**tickets, "auth.replay_store": "redis://127.0.0.1:6379/0"})
    assert shared.cookie.single_use and shared.server.workers == 2


def test_a_wrong_replay_store_url_is_named_without_its_password(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, overrides={"auth.replay_store": "http://user:hunter2-secret@redis.internal:6379/0"})
    assert caught.value.key == "auth.replay_store"
    assert "hunter2-secret" not in str(caught.value) and "redis://" in str(caught.value)
