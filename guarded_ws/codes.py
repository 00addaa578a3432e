"""Close codes and the canned HTTP refusals of the protocol contract (DESIGN.md)."""

from __future__ import annotations

from enum import IntEnum
from http import HTTPStatus


class Close(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    INVALID_DATA = 1007  # a text message that is not UTF-8
    POLICY_VIOLATION = 1008  # binary or fragmented credential
    MESSAGE_TOO_BIG = 1009  # pre-auth budget or max_message_bytes
    INTERNAL_ERROR = 1011  # the app failed, or keepalive timed out
    TRY_AGAIN_LATER = 1013  # evicted, over a connection cap after auth, or the relay's upstream is down
    BAD_GATEWAY = 1014  # the relay's upstream went away or broke the protocol
    INVALID_CREDENTIAL = 4401
    AUTH_TIMEOUT = 4408


def http_refusal(status: HTTPStatus, retry_after: int | None = None) -> bytes:
    """A complete response that needs no parsing state: written once, then the socket closes."""
    body = f"{status.value} {status.phrase}\n".encode()
    head = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        "Connection: close",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
