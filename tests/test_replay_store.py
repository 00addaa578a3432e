"""Single-use tokens consumed cluster-wide: two guarded-ws instances sharing a real Redis."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from websockets.frames import Opcode

from guarded_ws.replay_store import KEY_PREFIX, remaining_ms
from support import frame, read_frame, read_response_head, source, status_of, tcp, token, upgrade_request, wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
TTL = 300.0


class RedisServer:
    """Debian's redis-server on a loopback port: no persistence, no config file, ours alone."""

    def __init__(self, port: int | None = None) -> None:
        if port is None:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        wait_for(self._answers, timeout=10, what="redis-server to answer")

    def _answers(self) -> bool:
        assert self.proc.poll() is None, "redis-server exited"
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if not shutil.which("redis-server") and not shutil.which(REDIS_SERVER):
        pytest.fail("redis-server is missing: `make test` installs it (Debian's redis-server)")
    server = RedisServer()
    yield server
    if server.proc.poll() is None:
        server.stop()


@pytest.fixture
def cluster(serve, redis_server):
    """Two guarded-ws instances that share one replay store."""

    def start(**overrides):
        return serve(auth__single_use=True, auth__replay_store=redis_server.url, **overrides)

    return start(), start()


def single_use(sub: str = "alice") -> tuple[str, str]:
    jti = uuid.uuid4().hex
    return token(sub, ttl=TTL, jti=jti), jti


def attempt(port: int, credential: str, src: str, then: bytes = b"") -> tuple[str, object]:
    """Present ``credential`` (and ``then``, in the same packet); ("ok", subject) or ("closed", code)."""
    sock = tcp(port, src)
    try:
        sock.sendall(upgrade_request() + frame(Opcode.TEXT, credential.encode()) + then)
        assert status_of(read_response_head(sock)) == 101
        got = read_frame(sock)
        assert got is not None, "closed without a close frame"
        opcode, payload = got
        if opcode == Opcode.TEXT:
            reply = json.loads(payload)
            assert reply["type"] == "authenticated"
            if then:
                assert read_frame(sock) == (Opcode.TEXT, b"behind the token")
            return "ok", reply["subject"]
        assert opcode == Opcode.CLOSE
        return "closed", struct.unpack("!H", payload[:2])[0]
    finally:
        sock.close()


def replayed(server) -> float:
    return server.metric("guarded_ws_auth_attempts_total", method="token", result="replayed")


def test_a_single_use_token_is_accepted_once_across_two_instances(cluster, redis_server):
    a, b = cluster
    credential, jti = single_use()
    assert attempt(a.port, credential, source(2)) == ("ok", "alice")
    # The attacker replays the captured token on the other instance, then on the first.
    assert attempt(b.port, credential, source(3)) == ("closed", 4401)
    assert attempt(a.port, credential, source(3)) == ("closed", 4401)
    assert (replayed(a), replayed(b)) == (1, 1)
    # A legitimate client with its own token still gets in anywhere.
    assert attempt(b.port, single_use("bob")[0], source(4)) == ("ok", "bob")
    # Redis forgets the jti when the token could no longer be accepted anyway (exp + leeway).
    remembered = redis_server.client.pttl(KEY_PREFIX + "jti:" + jti)
    assert (TTL - 10) * 1000 < remembered <= (TTL + 5) * 1000


def test_a_replay_race_across_instances_lets_exactly_one_in(cluster):
    a, b = cluster
    credential, _ = single_use()
    ports = [a.port, b.port] * 5
    with ThreadPoolExecutor(len(ports)) as pool:
        outcomes = list(pool.map(lambda n: attempt(ports[n], credential, source(2 + n)), range(len(ports))))
    assert outcomes.count(("ok", "alice")) == 1
    assert outcomes.count(("closed", 4401)) == len(ports) - 1


def test_messages_behind_the_token_wait_for_the_store_then_reach_the_app(cluster):
    a, _ = cluster
    credential, _ = single_use()
    early = frame(Opcode.TEXT, b"behind the token")
    assert attempt(a.port, credential, source(2), then=early) == ("ok", "alice")


def test_redis_down_fails_closed_with_1013_and_does_not_burn_the_token(serve, redis_server):
    server = serve(auth__single_use=True, auth__replay_store=redis_server.url, auth__replay_store_timeout=0.5)
    credential, _ = single_use()
    redis_server.stop()
    started = time.monotonic()
    assert attempt(server.port, credential, source(2)) == ("closed", 1013)
    assert time.monotonic() - started < 3.0
    assert server.metric("guarded_ws_auth_attempts_total", method="token", result="unavailable") == 1
    assert server.metric("guarded_ws_authenticated_connections") == 0
    # Redis is back: the refused token was never consumed, so it works, once.
    back = RedisServer(redis_server.port)
    try:
        assert attempt(server.port, credential, source(3)) == ("ok", "alice")
        assert attempt(server.port, credential, source(4)) == ("closed", 4401)
    finally:
        back.stop()


def test_remaining_lifetime_is_whole_milliseconds_and_never_zero():
    assert remaining_ms(100.0, 99.0) == 1000
    assert remaining_ms(100.0, 99.9994) == 1
    assert remaining_ms(100.0, 100.0) == 1
    with pytest.raises(ValueError):
        remaining_ms(float("inf"), 0.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("auth.replay_store", "http://127.0.0.1:6379"),
        ("auth.replay_store", "127.0.0.1:6379"),
        ("auth.replay_store_timeout", "0"),
    ],
)
def test_a_wrong_replay_store_setting_names_its_key(key, value):
    from guarded_ws.config import ConfigError, load_config

    with pytest.raises(ConfigError) as error:
        load_config(None, environ={}, overrides={key: value})
    assert error.value.key == key


def test_with_a_shared_store_the_verifier_leaves_the_jti_to_consume():
    from guarded_ws.tokens import AuthError, TokenVerifier

    from support import SECRET

    verifier = TokenVerifier(algorithms=["HS256"], key=SECRET, leeway=5.0, shared_single_use=True)
    now = time.time()
    identity = verifier.verify(token("alice", ttl=60, now=now, jti="abc"), now)
    assert identity.single_use == ("jti:abc", int(now + 60) + 5.0)
    # Twice: the verifier itself remembers nothing, the store decides.
    assert verifier.verify(token("alice", ttl=60, now=now, jti="abc"), now).single_use is not None
    with pytest.raises(AuthError, match="missing jti"):
        verifier.verify(token("alice", ttl=60, now=now), now)


def test_renewing_a_connection_consumes_the_single_use_token_cluster_wide(serve, redis_server):
    from websockets.sync.client import connect

    a = serve(auth__single_use=True, auth__replay_store=redis_server.url, server__app="sample_apps:refreshing")
    b = serve(auth__single_use=True, auth__replay_store=redis_server.url)
    ws = connect(f"ws://127.0.0.1:{a.port}/ws", sock=tcp(a.port, source(2)), compression=None, legacy=True)
    ws.send(single_use()[0])
    assert json.loads(ws.recv(timeout=5))["type"] == "authenticated"
    fresh, _ = single_use()
    ws.send("token " + fresh)
    assert ws.recv(timeout=5).startswith("renewed until ")
    ws.send("token " + fresh)
    assert ws.recv(timeout=5) == "refused: replayed"
    assert attempt(b.port, fresh, source(3)) == ("closed", 4401)  # spent on the other instance too
    ws.close()
