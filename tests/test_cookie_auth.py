"""The upgrade's cookie check on parsed requests, without a network."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from guarded_ws.cookie_auth import CookieAuth, CookieRefused, cookie_values, csrf_tokens
from guarded_ws.tickets import Tickets

SECRET = "cookie-auth-test-secret-0123456789-ab"
NOW = 1_800_000_000.0
ORIGIN = "https://app.example.com"
ORIGINS = frozenset({ORIGIN})
NAME = "ticket"


def _auth() -> CookieAuth:
    return CookieAuth(Tickets(SECRET, ttl=30.0), NAME)


def _request(target: str, *headers: tuple[str, str]) -> Request:
    return Request(target, Headers(list(headers)))


def _refusal(auth: CookieAuth, request: Request) -> tuple[str, str | None]:
    with pytest.raises(CookieRefused) as caught:
        auth.check(request, ORIGINS, NOW)
    return caught.value.reason, caught.value.result


def test_cookie_values_and_csrf_tokens_are_read_as_browsers_send_them():
    headers = Headers([("Cookie", "a=1; ticket=v1.x; b=2"), ("Cookie", 'ticket="v1.y"')])
    assert cookie_values(headers, "ticket") == ["v1.x", "v1.y"]
    assert cookie_values(headers, "ticke") == []
    assert csrf_tokens("/ws?x=1&csrf=a%2Bb&y") == ["a+b"]
    assert csrf_tokens("/ws?csrf=a&csrf=b") == ["a", "b"]
    assert csrf_tokens("/ws") == [] and csrf_tokens("/ws?xcsrf=1") == []


def test_only_requests_with_the_cookie_or_a_csrf_token_take_the_cookie_path():
    auth = _auth()
    assert not auth.wants(_request("/ws", ("Cookie", "other=1")))
    assert auth.wants(_request("/ws", ("Cookie", "other=1; ticket=x")))
    assert auth.wants(_request("/ws?csrf=x"))


def test_a_good_ticket_from_an_allowed_origin_passes():
    auth = _auth()
    ticket = auth.tickets.issue("alice", NOW)
    request = _request(f"/ws?csrf={ticket.csrf}", ("Origin", ORIGIN), ("Cookie", f"{NAME}={ticket.value}"))
    assert auth.check(request, ORIGINS, NOW).subject == "alice"


@pytest.mark.parametrize(
    "origins",
    [[], ["https://evil.example"], ["https://app.example.com.evil.example"], [ORIGIN, ORIGIN], ["null"]],
)
def test_origin_is_required_and_exact(origins):
    auth = _auth()
    ticket = auth.tickets.issue("alice", NOW)
    headers = [("Origin", origin) for origin in origins] + [("Cookie", f"{NAME}={ticket.value}")]
    assert _refusal(auth, _request(f"/ws?csrf={ticket.csrf}", *headers)) == ("origin", None)


def test_each_credential_failure_is_a_csrf_refusal_labelled_by_result():
    auth = _auth()
    ticket, other = auth.tickets.issue("alice", NOW), auth.tickets.issue("alice", NOW)
    cookie = ("Cookie", f"{NAME}={ticket.value}")
    origin = ("Origin", ORIGIN)
    assert _refusal(auth, _request(f"/ws?csrf={ticket.csrf}", origin)) == ("csrf", "missing")
    assert _refusal(auth, _request("/ws", origin, cookie)) == ("csrf", "missing")
    assert _refusal(auth, _request(f"/ws?csrf={other.csrf}", origin, cookie)) == ("csrf", "csrf")
    assert _refusal(auth, _request(f"/ws?csrf={ticket.csrf}&csrf={ticket.csrf}", origin, cookie)) == ("csrf", "invalid")
    tampered = ("Cookie", f"{NAME}={ticket.value[:-1]}{'B' if ticket.value.endswith('A') else 'A'}")
    assert _refusal(auth, _request(f"/ws?csrf={ticket.csrf}", origin, tampered)) == ("csrf", "invalid")
    assert _refusal(auth, _request(f"/ws?csrf={ticket.csrf}", origin, ("Cookie", "; ".join([f"{NAME}=x"] * 5)))) == (
        "csrf",
        "invalid",
    )


def test_a_tossed_cookie_beside_the_real_one_does_not_lock_the_user_out():
    """A sibling subdomain can add a cookie of the same name; the one bound to the CSRF token still counts."""
    auth = _auth()
    tossed, mine = auth.tickets.issue("mallory", NOW), auth.tickets.issue("alice", NOW)
    cookies = ("Cookie", f"{NAME}={tossed.value}; {NAME}={mine.value}")
    assert auth.check(_request(f"/ws?csrf={mine.csrf}", ("Origin", ORIGIN), cookies), ORIGINS, NOW).subject == "alice"
