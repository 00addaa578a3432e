"""The relay's signed identity headers: what the upstream accepts and what it refuses."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.datastructures import Headers

from guarded_ws.identity import CLAIMS, SIGNATURE, SUBJECT, TIMESTAMP, IdentityError, sign_identity, verify_identity

SECRET = "relay-secret"
NOW = 1_800_000_000.0
CLAIMS_IN = {"sub": "alice", "exp": 1_800_000_600, "roles": ["reader"]}


def signed(**kw: object) -> dict[str, str]:
    return sign_identity(SECRET, "alice", CLAIMS_IN, "127.0.0.2", now=NOW, **kw)  # type: ignore[arg-type]


def test_a_signed_identity_verifies_with_the_same_secret():
    identity = verify_identity(signed(), SECRET, now=NOW + 1)
    assert (identity.subject, identity.source, identity.claims, identity.signed_at) == (
        "alice",
        "127.0.0.2",
        CLAIMS_IN,
        int(NOW),
    )


@given(subject=st.text(min_size=1), source=st.sampled_from(["127.0.0.1", "::1", "2001:db8::1"]))
def test_any_subject_round_trips_as_safe_header_text(subject, source):
    headers = sign_identity(SECRET, subject, {"sub": subject}, source, now=NOW)
    assert all(value.isascii() and value.isprintable() for value in headers.values())
    identity = verify_identity(headers, SECRET, now=NOW)
    assert (identity.subject, identity.source) == (subject, source)


def test_headers_are_found_whatever_their_case_or_container():
    lower = {name.lower(): value for name, value in signed().items()}
    assert verify_identity(lower, SECRET, now=NOW).subject == "alice"
    assert verify_identity(list(signed().items()), SECRET, now=NOW).subject == "alice"
    assert verify_identity(Headers(signed()), SECRET, now=NOW).subject == "alice"


def _with_claims(claims: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "change",
    [
        {SUBJECT: "mallory"},
        {CLAIMS: _with_claims({"sub": "alice", "exp": 9_999_999_999, "roles": ["admin"]})},
        {TIMESTAMP: str(int(NOW) + 30)},
        {SIGNATURE: "v1=" + "0" * 64},
        {SIGNATURE: "v2=" + signed()[SIGNATURE][3:]},
    ],
)
def test_any_altered_header_is_refused(change):
    with pytest.raises(IdentityError):
        verify_identity({**signed(), **change}, SECRET, now=NOW)


def test_the_wrong_secret_is_refused():
    with pytest.raises(IdentityError, match="does not match"):
        verify_identity(signed(), "another-secret", now=NOW)


@pytest.mark.parametrize("skew", [-61.0, 61.0])
def test_a_stale_or_future_signature_is_refused(skew):
    with pytest.raises(IdentityError, match="window"):
        verify_identity(signed(), SECRET, now=NOW + skew)
    assert verify_identity(signed(), SECRET, now=NOW + skew, max_age=120).subject == "alice"


def test_a_missing_or_repeated_header_is_refused():
    headers = signed()
    del headers[SUBJECT]
    with pytest.raises(IdentityError, match="missing"):
        verify_identity(headers, SECRET, now=NOW)
    repeated = [*signed().items(), (SUBJECT, "mallory")]
    with pytest.raises(IdentityError, match="more than once"):
        verify_identity(repeated, SECRET, now=NOW)


def test_claims_that_disagree_with_the_subject_are_refused_even_when_signed():
    headers = sign_identity(SECRET, "alice", {"sub": "bob"}, "127.0.0.2", now=NOW)
    with pytest.raises(IdentityError, match="sub"):
        verify_identity(headers, SECRET, now=NOW)
