"""Applications the tests serve by name (``server.app = "sample_apps:NAME"``)."""

from __future__ import annotations

import asyncio
import json
import os

from guarded_ws import Session
from guarded_ws.preauth import PreauthRequest


async def whoami(conn: Session) -> None:
    await conn.send(json.dumps({"subject": conn.subject, "source": conn.source, "sub_claim": conn.claims["sub"]}))
    async for message in conn:
        await conn.send(message.upper() if isinstance(message, str) else message)


async def closer(conn: Session) -> None:
    await conn.send("bye")
    await conn.close(4000, "done")
    assert conn.closed


async def crash(conn: Session) -> None:
    await conn.recv()
    raise RuntimeError("application bug")


async def firehose(conn: Session) -> None:
    """Writes until the peer stops reading: the write-backpressure case."""
    chunk = b"x" * 65536
    for _ in range(100_000):
        await conn.send(chunk)


def verify_hook(token: str) -> dict[str, object]:
    """An operator's own credential check (``auth.verifier = "sample_apps:verify_hook"``)."""
    if token == "open-sesame":
        return {"sub": "hooked"}
    raise ValueError("unknown credential")


async def claims(conn: Session) -> None:
    """Sends the credential's claims: what a certificate tells the app."""
    await conn.send(json.dumps({"subject": conn.subject, "claims": dict(conn.claims)}))
    async for message in conn:
        await conn.send(message)


async def refreshing(conn: Session) -> None:
    """Takes "token <jwt>" messages to re-authenticate, the way an app lets clients outlive a token."""
    from guarded_ws.tokens import AuthError

    async for message in conn:
        if isinstance(message, str) and message.startswith("token "):
            try:
                await conn.reauthenticate(message.removeprefix("token "))
            except AuthError as exc:
                await conn.send(f"refused: {exc.result}")
            else:
                await conn.send(f"renewed until {conn.claims['exp']}")
        else:
            await conn.send(message)


def session_authenticator(request: PreauthRequest) -> str | None:
    """A site's own auth for the preauth endpoint (``cookie.authenticator``): its session cookie names the user."""
    return {"s3cret-session-of-bob": "bob"}.get(request.cookies.get("session", ""))


async def worker_pid(conn: Session) -> None:
    """Says which process serves the connection (the workers' tests), then echoes."""
    await conn.send(json.dumps({"pid": os.getpid()}))
    async for message in conn:
        await conn.send(message)


TIDIED: list[str] = []  # subjects whose app finished its clean-up (in-process servers only)


async def tidy(conn: Session) -> None:
    """Cleans up after its connection is gone, as a relay closes its upstream."""
    async for _ in conn:
        pass
    await asyncio.sleep(0.3)
    TIDIED.append(conn.subject)
