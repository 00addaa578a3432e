"""Credential checks: JWTs verified against pinned algorithms, or an operator's hook.

The policy is pure: the caller passes the current time, so tests and the server
agree on "now" and nothing here reads a clock. Every rejection is an
:class:`AuthError` whose ``result`` is a metric label and whose message is safe
to log: it names what was wrong, never the token or a claim value, because a
token in a log line is a credential handed to whoever reads the logs.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jwt
from jwt.algorithms import AllowedPrivateKeys, HMACAlgorithm, get_default_algorithms

from .plugins import import_object

RESULTS: tuple[str, ...] = (
    "ok",
    "invalid",
    "expired",
    "not_yet_valid",
    "replayed",
    "timeout",
    "too_large",
    "protocol",
    "unavailable",  # the shared replay store did not answer (fail closed)
    "missing",  # the browser path: no ticket cookie, CSRF token or bearer token
    "csrf",  # the browser path: a CSRF token not bound to the ticket
)



class AuthError(Exception):
    """A rejected credential; ``result`` labels it in metrics, ``str()`` explains it in logs."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the credential names; ``expires_at`` is ``math.inf`` when a hook gives no exp."""

    subject: str
    claims: Mapping[str, Any]
    expires_at: float
    # (key, remember until) still to consume in the shared replay store before admitting, if any.
    single_use: tuple[str, float] | None = None


class ReplayCache:
    """In-memory single-use jti store, bounded; an entry is forgotten once its token has expired.

    "Expired" by both clocks: the wall clock the token's ``exp`` is judged by, and a monotonic
    one that measures the lifetime it had left when it was used. A wall clock that jumps
    ahead (purging everything) and comes back would otherwise re-admit every token it
    forgot. Entries sit in a min-heap by their monotonic deadline, so purging touches only
    what may have expired. When full it refuses new jtis instead of evicting live ones:
    forgetting an unexpired jti would let that token be replayed.
    """

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError(f"replay cache capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._clock = clock
        self._live: set[str] = set()
        self._by_deadline: list[tuple[float, float, str]] = []  # (monotonic deadline, wall expiry, jti)

    def consume(self, jti: str, expires_at: float, now: float) -> bool:
        """True the first time ``jti`` is seen while live; False on replay or when full."""
        heap = self._by_deadline
        elapsed = self._clock()
        while heap and heap[0][0] <= elapsed:
            _, wall_expiry, old = heapq.heappop(heap)
            if wall_expiry > now:  # the wall clock went back: live again by it, so kept that much longer
                heapq.heappush(heap, (elapsed + wall_expiry - now, wall_expiry, old))
            else:
                self._live.discard(old)
        if jti in self._live or len(self._live) >= self.capacity:
            return False
        self._live.add(jti)
        heapq.heappush(heap, (elapsed + max(0.0, expires_at - now), expires_at, jti))
        return True

    def __len__(self) -> int:
        return len(self._live)


class TokenVerifier:
    """Verifies a JWT (RFC 7519) with a key and algorithms fixed by configuration.

    The key is checked against every pinned algorithm at construction, so a
    configuration that could never verify a token (an RSA key with ES256, a
    public key as an HMAC secret, a weak secret) fails at start-up rather than
    on every connection.
    """

    method = "token"

    def __init__(
        self,
        *,
        algorithms: Sequence[str],
        key: str | bytes,
        audience: str | None = None,
        issuer: str | None = None,
        max_lifetime: float = 86400.0,
        leeway: float = 5.0,
        replay_cache: ReplayCache | None = None,
        shared_single_use: bool = False,
    ) -> None:
        """``shared_single_use``: jtis are required, and consumed by the caller in a shared store."""
        if isinstance(algorithms, str) or not algorithms:
            raise ValueError("algorithms: expected a non-empty list of algorithm names")
        if not max_lifetime > 0 or not leeway >= 0:
            raise ValueError(f"max_lifetime must be > 0 and leeway >= 0, got {max_lifetime} and {leeway}")
        self.algorithms = list(algorithms)
        self.key = _prepare_key(self.algorithms, key)
        self._jws = _signature_checker(self.algorithms)
        self.audience = audience
        self.issuer = issuer
        self.max_lifetime = max_lifetime
        self.leeway = leeway
        self.replay_cache = replay_cache
        self.shared_single_use = shared_single_use

    def verify(self, token: str, now: float) -> Identity:
        # A compact JWS is ASCII; checking first keeps odd text (lone surrogates) out of PyJWT.
        if not isinstance(token, str) or not token.isascii():
            raise AuthError("invalid", "token is not an ASCII string")
        try:
            payload = self._jws.decode(token, self.key, algorithms=self.algorithms)
        except jwt.PyJWTError as exc:
            # The class name only: PyJWT messages may quote attacker-controlled header values.
            raise AuthError("invalid", f"rejected by JWT check: {type(exc).__name__}") from None
        claims = _claims(payload, self.audience, self.issuer)
        subject = _subject(claims)
        leeway = self.leeway
        exp = _number(claims, "exp")
        if exp is None:
            raise AuthError("invalid", "missing exp")
        nbf = _number(claims, "nbf")
        iat = _number(claims, "iat")
        if iat is not None and iat - leeway > now:
            raise AuthError("invalid", "iat in the future")
        if exp - (now if iat is None else iat) > self.max_lifetime + leeway:
            raise AuthError("invalid", "lifetime too long")
        if exp + leeway <= now:
            raise AuthError("expired", "token expired")
        if nbf is not None and nbf - leeway > now:
            raise AuthError("not_yet_valid", "token not valid yet (nbf)")
        if self.replay_cache is not None or self.shared_single_use:
            # Last, so that a token rejected for any other reason never burns its jti.
            jti = claims.get("jti")
            if not isinstance(jti, str) or not jti:
                raise AuthError("invalid", "missing jti (single-use tokens are required)")
            # Remembered until the token stops being accepted, leeway included.
            if self.replay_cache is None:
                return Identity(subject, MappingProxyType(claims), exp, ("jti:" + jti, exp + leeway))
            if not self.replay_cache.consume(jti, exp + leeway, now):
                raise AuthError("replayed", "jti already used (or replay cache full)")
        return Identity(subject, MappingProxyType(claims), exp)


class HookVerifier:
    """Wraps an operator's "module:function" verifier, for credentials that are not our JWTs.

    ``function(token) -> Mapping`` with a non-empty ``"sub"`` string and
    optionally a numeric ``"exp"``. The hook is operator code facing hostile
    input, so anything it raises, or any other return value, means invalid
    rather than a crashed connection handler.
    """

    method = "hook"

    def __init__(self, func: Callable[[str], Mapping[str, Any]]) -> None:
        self.func = func

    def verify(self, token: str, now: float) -> Identity:
        if not isinstance(token, str):
            raise AuthError("invalid", "token is not a string")
        try:
            claims = self.func(token)
        except Exception as exc:
            # The exception's text may echo the token: log its class only.
            raise AuthError("invalid", f"verifier hook raised {type(exc).__name__}") from None
        if not isinstance(claims, Mapping):
            raise AuthError("invalid", f"verifier hook returned {type(claims).__name__}, not a mapping")
        subject = _subject(claims)
        exp = _number(claims, "exp")
        if exp is not None and exp <= now:
            raise AuthError("expired", "token expired")
        return Identity(subject, MappingProxyType(dict(claims)), math.inf if exp is None else exp)


def load_hook(spec: str) -> Callable[[str], Mapping[str, Any]]:
    return import_object(spec, "verifier")  # type: ignore[no-any-return]


def issue_token(
    key: str | bytes,
    subject: str,
    *,
    now: float,
    ttl: float = 3600.0,
    algorithm: str = "HS256",
    audience: str | None = None,
    issuer: str | None = None,
    jti: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Sign a token the verifier accepts; ``key`` is the secret, or a private key PEM for RS/ES/EdDSA."""
    if algorithm.lower() == "none":
        raise ValueError("refusing to issue an unsigned token (alg none)")
    claims: dict[str, Any] = {"sub": subject, "iat": int(now), "exp": int(now + ttl)}
    optional = {"aud": audience, "iss": issuer, "jti": jti}
    claims.update((name, value) for name, value in optional.items() if value is not None)
    clash = claims.keys() & (extra or {}).keys()
    if clash:
        raise ValueError(f"extra claims would override {sorted(clash)}: use the keyword arguments")
    return jwt.encode({**claims, **(extra or {})}, key, algorithm=algorithm)


def _prepare_key(algorithms: list[str], key: str | bytes) -> Any:
    """Parse the key at start-up: verify() never re-parses a PEM, and an unfit key fails before any client connects."""
    known = get_default_algorithms()
    prepared: Any = None
    for name in algorithms:
        if name.lower() == "none":
            raise ValueError("algorithms: 'none' is never accepted")
        if name not in known:
            raise ValueError(f"algorithms: unknown algorithm {name!r}")
        algorithm = known[name]
        try:
            prepared = algorithm.prepare_key(key)
        except jwt.PyJWTError as exc:
            raise ValueError(f"key does not fit algorithm {name}: {exc}") from None
        weakness = algorithm.check_key_length(prepared)
        if weakness:
            raise ValueError(f"key too weak for {name}: {weakness}")
        # A verifier needs the public half; holding the private key here is a leak waiting to happen.
        if isinstance(prepared, AllowedPrivateKeys):
            raise ValueError(f"key for {name}: expected a public key, got a private key")
    return prepared


class _PreparedHMAC(HMACAlgorithm):
    """HMAC whose key was prepared once at start-up.

    PyJWT prepares the key on every decode, and for HMAC that means scanning
    it for PEM and SSH markers: a third of the cost of verifying a token.
    """

    def prepare_key(self, key: str | bytes) -> bytes:
        assert isinstance(key, bytes)
        return key


def _signature_checker(algorithms: list[str]) -> jwt.PyJWS:
    """PyJWS with the pinned algorithms only, HMAC ones taking the prepared key."""
    jws = jwt.PyJWS(algorithms=[])
    for name, algorithm in get_default_algorithms().items():
        if name in algorithms:
            if isinstance(algorithm, HMACAlgorithm):
                algorithm = _PreparedHMAC(algorithm.hash_alg)
            jws.register_algorithm(name, algorithm)
    return jws


def _claims(payload: bytes, audience: str | None, issuer: str | None) -> dict[str, Any]:
    """The claims of a verified payload, with ``aud`` and ``iss`` checked as PyJWT's JWT layer does."""
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        raise AuthError("invalid", "payload is not JSON") from None
    if not isinstance(claims, dict):
        raise AuthError("invalid", "payload is not a JSON object")
    aud = claims.get("aud")
    if audience is None:
        if aud:
            raise AuthError("invalid", "aud present but no audience configured")
    else:
        auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(auds, list) or audience not in auds:
            raise AuthError("invalid", "audience does not match")
    if issuer is not None and claims.get("iss") != issuer:
        raise AuthError("invalid", "issuer does not match")
    return claims


def _subject(claims: Mapping[str, Any]) -> str:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AuthError("invalid", "missing or empty sub")
    return subject


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim as a finite float, None if absent; NaN or bool would slip past comparisons."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthError("invalid", f"{name} is not a number")
    try:
        number = float(value)
    except OverflowError:  # a huge JSON integer
        number = math.inf
    if not math.isfinite(number):
        raise AuthError("invalid", f"{name} is not finite")
    return number
