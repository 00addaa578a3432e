"""Single-use keys consumed cluster-wide: every guarded-ws instance (and worker) sees one store.

Without it each process remembers its own single-use ``jti``s (``tokens.ReplayCache``),
so behind a load balancer a token could be used once per instance. With
``auth.replay_store = "redis://..."`` a key is consumed by one atomic
``SET key 1 NX PX <remaining lifetime>``: the first instance to set it wins, every
later attempt anywhere sees it set, and Redis forgets it when the token could no
longer be accepted anyway.

The store is asked only after a credential has passed every other check (a valid
signature costs the attacker a real token), and it fails closed: when Redis cannot
answer within ``auth.replay_store_timeout`` the credential is refused with 1013 and
counted as ``unavailable``, never accepted unchecked.

Cookie tickets and any other single-use credential use the same interface with
their own key prefix (``jti:``, ``ticket:``).
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

KEY_PREFIX = "guarded-ws:used:"
MAX_CONNECTIONS = 64  # to Redis, per process: concurrent checks beyond this wait for a free one


class ReplayStoreUnavailable(Exception):
    """The store did not answer: the caller must refuse (fail closed), not accept unchecked."""


class SharedReplayStore(Protocol):
    async def consume(self, key: str, expires_at: float, now: float) -> bool:
        """True the first time ``key`` is consumed cluster-wide; raises :class:`ReplayStoreUnavailable`."""
        ...

    async def close(self) -> None: ...


def remaining_ms(expires_at: float, now: float) -> int:
    """How long to remember a key, in whole milliseconds, at least 1 (Redis refuses PX 0)."""
    if not math.isfinite(expires_at):
        raise ValueError("a single-use key needs a finite expiry")
    return max(1, math.ceil((expires_at - now) * 1000))


class RedisReplayStore:
    def __init__(self, url: str, *, timeout: float) -> None:
        # Imported here: redis-py is an optional extra, needed only when a store is configured.
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        no_retry = Retry(NoBackoff(), 0)  # a retry would outlast the client's auth deadline
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=no_retry,
        )
        self.redis = Redis(connection_pool=pool, retry=no_retry)
        self.timeout = timeout

    async def consume(self, key: str, expires_at: float, now: float) -> bool:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self.timeout):
                fresh = await self.redis.set(KEY_PREFIX + key, b"1", nx=True, px=remaining_ms(expires_at, now))
        except (RedisError, OSError, TimeoutError) as exc:
            raise ReplayStoreUnavailable(type(exc).__name__) from None
        return bool(fresh)

    async def close(self) -> None:
        await self.redis.aclose()
