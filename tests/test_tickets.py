"""The ticket cookie and its CSRF token, without a network: the clock is a parameter."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guarded_ws.tickets import MAX_SUBJECT_BYTES, Tickets, cookie_name, issue, set_cookie
from guarded_ws.tokens import AuthError, ReplayCache

SECRET = "ticket-test-secret-0123456789-abcdef"
NOW = 1_800_000_000.0


def _tickets(**kw: object) -> Tickets:
    return Tickets(SECRET, **{"ttl": 30.0, "leeway": 0.0, **kw})  # type: ignore[arg-type]


def _result(fn: object) -> str:
    with pytest.raises(AuthError) as caught:
        fn()  # type: ignore[operator]
    return caught.value.result


def test_a_ticket_verifies_with_its_own_csrf_token():
    tickets = _tickets()
    ticket = tickets.issue("alice", NOW)
    identity = tickets.verify(ticket.value, ticket.csrf, NOW + 29)
    assert identity.subject == "alice"
    assert ticket.expires_at == NOW + 30
    assert identity.expires_at == math.inf  # no credential behind it that ends: the connection lives on
    assert dict(identity.claims) == {"sub": "alice"}


def test_a_ticket_carries_when_the_credential_behind_it_ends():
    tickets = _tickets()
    ticket = tickets.issue("alice", NOW, until=NOW + 600.5)
    identity = tickets.verify(ticket.value, ticket.csrf, NOW)
    assert identity.expires_at == NOW + 600  # whole seconds, never later than the credential
    assert dict(identity.claims) == {"sub": "alice", "exp": NOW + 600}


def test_every_ticket_and_token_is_new():
    tickets = _tickets()
    first, second = tickets.issue("alice", NOW), tickets.issue("alice", NOW)
    assert first.value != second.value and first.csrf != second.csrf


def test_an_expired_ticket_is_refused_leeway_included():
    ticket = _tickets().issue("alice", NOW)
    assert _result(lambda: _tickets().verify(ticket.value, ticket.csrf, NOW + 30)) == "expired"
    lenient = _tickets(leeway=5.0)
    assert lenient.verify(ticket.value, ticket.csrf, NOW + 34).subject == "alice"
    assert _result(lambda: lenient.verify(ticket.value, ticket.csrf, NOW + 35)) == "expired"


@pytest.mark.parametrize("part", [1, 2, 3, 4, 5])  # expiry, credential's end, nonce, subject, signature
def test_a_tampered_ticket_is_invalid(part):
    tickets = _tickets()
    ticket = tickets.issue("alice", NOW)
    parts = ticket.value.split(".")
    parts[part] = ("A" if parts[part][0] != "A" else "B") + parts[part][1:]
    assert _result(lambda: tickets.verify(".".join(parts), ticket.csrf, NOW)) == "invalid"


def test_a_longer_life_is_a_forgery_even_when_signed():
    """A stolen ticket must not outlive its ttl, so the exp cannot be moved: the signature covers it."""
    tickets = _tickets()
    ticket = tickets.issue("alice", NOW, until=NOW + 60)
    version, expiry, until, nonce, subject, mac = ticket.value.split(".")
    later = ".".join([version, str(int(expiry) + 3600), until, nonce, subject, mac])
    assert _result(lambda: tickets.verify(later, ticket.csrf, NOW)) == "invalid"
    longer = ".".join([version, expiry, "0", nonce, subject, mac])  # the connection's bound, dropped
    assert _result(lambda: tickets.verify(longer, ticket.csrf, NOW)) == "invalid"


def test_a_ticket_longer_than_the_ttl_is_invalid():
    long_lived = Tickets(SECRET, ttl=600.0).issue("alice", NOW)
    assert _result(lambda: _tickets().verify(long_lived.value, long_lived.csrf, NOW)) == "invalid"


def test_another_secret_cannot_sign_tickets():
    forged = Tickets("another-secret-0123456789-abcdefgh", ttl=30.0).issue("alice", NOW)
    assert _result(lambda: _tickets().verify(forged.value, forged.csrf, NOW)) == "invalid"


def test_the_csrf_token_of_another_ticket_does_not_match():
    tickets = _tickets()
    mine, theirs = tickets.issue("alice", NOW), tickets.issue("alice", NOW)
    assert _result(lambda: tickets.verify(mine.value, theirs.csrf, NOW)) == "csrf"
    assert _result(lambda: tickets.verify(mine.value, mine.csrf + "x", NOW)) == "csrf"
    assert _result(lambda: tickets.verify(mine.value, "é" * 43, NOW)) == "csrf"


@pytest.mark.parametrize("csrf", [None, ""])
def test_a_missing_csrf_token_is_refused(csrf):
    ticket = _tickets().issue("alice", NOW)
    assert _result(lambda: _tickets().verify(ticket.value, csrf, NOW)) == "missing"


def test_single_use_tickets_are_refused_the_second_time():
    tickets = _tickets(replay_cache=ReplayCache(10))
    ticket = tickets.issue("alice", NOW)
    assert tickets.verify(ticket.value, ticket.csrf, NOW).subject == "alice"
    assert _result(lambda: tickets.verify(ticket.value, ticket.csrf, NOW + 1)) == "replayed"


def test_a_refused_check_does_not_burn_a_single_use_ticket():
    tickets = _tickets(replay_cache=ReplayCache(10))
    ticket, other = tickets.issue("alice", NOW), tickets.issue("alice", NOW)
    assert _result(lambda: tickets.verify(ticket.value, other.csrf, NOW)) == "csrf"
    assert _result(lambda: tickets.verify(ticket.value, None, NOW)) == "missing"
    assert tickets.verify(ticket.value, ticket.csrf, NOW).subject == "alice"


def test_subjects_round_trip_and_are_bounded():
    tickets = _tickets()
    for subject in ("ü-ñ 名前", "a.b@example.com", "x" * MAX_SUBJECT_BYTES):
        ticket = tickets.issue(subject, NOW)
        assert tickets.verify(ticket.value, ticket.csrf, NOW).subject == subject
    for bad in ("", "x" * (MAX_SUBJECT_BYTES + 1)):
        with pytest.raises(ValueError):
            tickets.issue(bad, NOW)


def test_a_short_secret_or_a_ttl_past_the_bound_is_refused():
    with pytest.raises(ValueError, match="32 bytes"):
        Tickets("short", ttl=30.0)
    with pytest.raises(ValueError, match="ttl"):
        _tickets().issue("alice", NOW, ttl=31.0)


@given(value=st.text(max_size=600), csrf=st.one_of(st.none(), st.text(max_size=80)))
def test_arbitrary_input_only_ever_raises_auth_error(value, csrf):
    with pytest.raises(AuthError):
        _tickets().verify(value, csrf, NOW)


def test_cookie_names_take_the_prefix_that_pins_them_to_a_secure_host():
    assert cookie_name("t", secure=False) == "t"
    assert cookie_name("t", secure=True) == "__Host-t"
    assert cookie_name("t", secure=True, domain="example.com") == "__Secure-t"


def test_set_cookie_attributes():
    assert set_cookie("t", "v", max_age=29.5, secure=False) == "t=v; Max-Age=30; Path=/; HttpOnly; SameSite=Strict"
    assert set_cookie("__Host-t", "v", max_age=30, secure=True).endswith("; HttpOnly; SameSite=Strict; Secure")
    assert "; Domain=example.com" in set_cookie("t", "v", max_age=30, secure=True, domain="example.com")


def test_the_web_app_helper_issues_what_the_server_accepts():
    csrf, header = issue("carol", secret=SECRET, secure=True, ttl=20, until=NOW + 3600, now=NOW)
    name, _, rest = header.partition("=")
    value = rest.partition(";")[0]
    assert name == "__Host-guarded_ws_ticket"
    assert header.endswith("; Max-Age=20; Path=/; HttpOnly; SameSite=Strict; Secure")
    identity = _tickets().verify(value, csrf, NOW + 19)
    assert (identity.subject, identity.expires_at) == ("carol", NOW + 3600)


def test_signature_and_csrf_token_are_compared_in_constant_time(monkeypatch):
    """Both secrets the peer sends are checked with hmac.compare_digest, never with ==."""
    import hmac as real_hmac

    from guarded_ws import tickets as module

    compared: list[tuple[object, object]] = []

    class Recording:
        digest = staticmethod(real_hmac.digest)

        @staticmethod
        def compare_digest(a, b):
            compared.append((a, b))
            return real_hmac.compare_digest(a, b)

    tickets = _tickets()
    ticket = tickets.issue("alice", NOW)
    monkeypatch.setattr(module, "hmac", Recording)
    tickets.verify(ticket.value, ticket.csrf, NOW)
    mac = ticket.value.rpartition(".")[2]
    assert compared == [(mac, mac), (ticket.csrf.encode(), ticket.csrf.encode())]
