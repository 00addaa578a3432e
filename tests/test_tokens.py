from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from guarded_ws.tokens import (
    RESULTS,
    AuthError,
    HookVerifier,
    ReplayCache,
    TokenVerifier,
    issue_token,
    load_hook,
)

SECRET = "tokens-test-secret-0123456789-abcdef"
SUB = "alice-7f3a9c"
NOW = 1_700_000_000.0
HOUR = 3600


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: Any, payload: Any, secret: str = SECRET) -> str:
    """An HS256 token built without PyJWT, which would refuse to encode some of what attackers send."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims at NOW; an override of None removes the claim."""
    base: dict[str, Any] = {"sub": SUB, "iat": int(NOW), "exp": int(NOW) + HOUR}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def signed(key: str = SECRET, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm="HS256")


def verifier(**kw: Any) -> TokenVerifier:
    kw.setdefault("algorithms", ["HS256"])
    kw.setdefault("key", SECRET)
    return TokenVerifier(**kw)


def reject(check: TokenVerifier | HookVerifier, token: Any, result: str, now: float = NOW) -> AuthError:
    """Assert the rejection's result, and that its message leaks neither the token nor a claim value."""
    with pytest.raises(AuthError) as caught:
        check.verify(token, now)
    error = caught.value
    assert error.result == result
    message = str(error)
    assert message
    if isinstance(token, str):
        for secret_part in [token, *token.split(".")]:
            if len(secret_part) >= 8:
                assert secret_part not in message
    assert SUB not in message
    return error


def pem_pair(key: Any) -> tuple[str, str]:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private.decode(), public.decode()


GENERATORS = {
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "EdDSA": ed25519.Ed25519PrivateKey.generate,
}


@pytest.fixture(scope="module")
def keys() -> dict[str, list[tuple[str, str]]]:
    """algorithm -> two (private PEM, public PEM) pairs: the issuer's, and a stranger's."""
    return {alg: [pem_pair(generate()), pem_pair(generate())] for alg, generate in GENERATORS.items()}


# --- accepted tokens ---------------------------------------------------------


def test_valid_hs256_gives_subject_claims_and_expiry():
    identity = verifier().verify(signed(role="admin"), NOW)
    assert identity.subject == SUB
    assert identity.claims["role"] == "admin"
    assert identity.expires_at == NOW + HOUR
    with pytest.raises(TypeError):
        identity.claims["sub"] = "mallory"  # type: ignore[index]


@pytest.mark.parametrize("alg", sorted(GENERATORS))
def test_public_key_algorithms_verify_with_the_public_key(keys, alg):
    (private, public), (stranger, _) = keys[alg]
    check = TokenVerifier(algorithms=[alg], key=public)
    assert check.verify(issue_token(private, SUB, now=NOW, algorithm=alg), NOW).subject == SUB
    reject(check, issue_token(stranger, SUB, now=NOW, algorithm=alg), "invalid")


# --- signature and algorithm ---------------------------------------------------


def test_wrong_key_is_invalid():
    reject(verifier(), signed(key="another-secret-of-sufficient-length-42"), "invalid")


def test_alg_none_token_is_invalid():
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    reject(verifier(), f"{header}.{payload}.", "invalid")


@pytest.mark.parametrize("algorithms", [["none"], ["HS256", "none"], ["NONE"], ["None"]])
def test_alg_none_cannot_be_configured(algorithms):
    with pytest.raises(ValueError, match="none"):
        verifier(algorithms=algorithms)


def test_hs256_token_is_invalid_when_only_rs256_is_pinned(keys):
    reject(TokenVerifier(algorithms=["RS256"], key=keys["RS256"][0][1]), signed(), "invalid")


def test_public_key_used_as_hmac_secret_is_invalid(keys):
    public = keys["RS256"][0][1]
    confused = hand_signed({"alg": "HS256", "typ": "JWT"}, claims(), secret=public)
    reject(TokenVerifier(algorithms=["RS256"], key=public), confused, "invalid")
    # and the configuration that would make the confusion possible is refused
    with pytest.raises(ValueError, match="HS256"):
        TokenVerifier(algorithms=["RS256", "HS256"], key=public)


@pytest.mark.parametrize(
    ("algorithms", "key_of", "match"),
    [
        (["ES256"], lambda keys: keys["RS256"][0][1], "ES256"),  # a key of another family
        (["RS256"], lambda keys: SECRET, "RS256"),  # a shared secret where a public key belongs
        (["RS256"], lambda keys: keys["RS256"][0][0], "private"),  # the signing key, not the verifying one
        (["HS256"], lambda keys: "too-short", "weak"),
        (["HS999"], lambda keys: SECRET, "unknown"),
        ("HS256", lambda keys: SECRET, "list"),
        ([], lambda keys: SECRET, "list"),
    ],
    ids=["other-family", "secret-for-rsa", "private-key", "short-secret", "unknown-alg", "str-not-list", "empty"],
)
def test_unusable_configuration_fails_at_construction(keys, algorithms, key_of, match):
    with pytest.raises(ValueError, match=match):
        TokenVerifier(algorithms=algorithms, key=key_of(keys))


def test_jwt_error_messages_do_not_echo_header_values():
    # PyJWT's own message would quote this attacker-chosen value.
    token = hand_signed({"alg": "HS256", "crit": ["INJECTED-MARKER"]}, claims())
    error = reject(verifier(), token, "invalid")
    assert "INJECTED-MARKER" not in str(error)


# --- required claims, audience, issuer ---------------------------------------


@pytest.mark.parametrize("sub", [None, "", 42, ["alice"]])
def test_missing_empty_or_non_string_sub_is_invalid(sub):
    reject(verifier(), hand_signed({"alg": "HS256"}, claims(sub=sub)), "invalid")


@pytest.mark.parametrize(
    "exp",
    [None, "soon", True, float("nan"), float("inf"), 10**400],
    ids=["missing", "string", "bool", "nan", "inf", "huge"],
)
def test_missing_or_non_numeric_exp_is_invalid(exp):
    reject(verifier(), hand_signed({"alg": "HS256"}, claims(exp=exp, iat=None)), "invalid")


@pytest.mark.parametrize("name", ["nbf", "iat"])
def test_non_numeric_nbf_or_iat_is_invalid(name):
    reject(verifier(), hand_signed({"alg": "HS256"}, claims(**{name: "yesterday"})), "invalid")


def test_audience_is_checked_when_configured():
    check = verifier(audience="guarded-ws")
    assert check.verify(signed(aud="guarded-ws"), NOW).subject == SUB
    reject(check, signed(aud="another-service"), "invalid")
    reject(check, signed(), "invalid")  # a token for anyone is not a token for us
    assert check.verify(signed(aud=["other", "guarded-ws"]), NOW).subject == SUB
    reject(check, signed(aud=["other", "another-service"]), "invalid")
    reject(check, signed(aud={"guarded-ws": 1}), "invalid")


def test_a_token_for_an_audience_is_refused_where_none_is_configured():
    reject(verifier(), signed(aud="some-service"), "invalid")
    assert verifier().verify(signed(aud=""), NOW).subject == SUB  # empty: no audience, as PyJWT reads it


@pytest.mark.parametrize("payload", [b"[1, 2]", b"not json", b'"alice"'])
def test_a_payload_that_is_not_a_json_object_is_invalid(payload):
    signing_input = f"{b64(json.dumps({'alg': 'HS256'}).encode())}.{b64(payload)}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    reject(verifier(), f"{signing_input}.{b64(signature)}", "invalid")


def test_issuer_is_checked_when_configured():
    check = verifier(issuer="https://login.example")
    assert check.verify(signed(iss="https://login.example"), NOW).subject == SUB
    reject(check, signed(iss="https://evil.example"), "invalid")
    reject(check, signed(), "invalid")


# --- time ----------------------------------------------------------------------


def test_expired_token_is_expired():
    check = verifier(leeway=5)
    reject(check, signed(exp=int(NOW) - 10), "expired")
    reject(check, signed(exp=int(NOW) - 5), "expired")  # exp + leeway == now is already too late


def test_expired_within_leeway_is_accepted():
    token = signed(exp=int(NOW) - 3)
    assert verifier(leeway=5).verify(token, NOW).subject == SUB
    reject(verifier(leeway=0), token, "expired")


def test_nbf_in_the_future_is_not_yet_valid():
    check = verifier(leeway=5)
    reject(check, signed(nbf=int(NOW) + 60), "not_yet_valid")
    assert check.verify(signed(nbf=int(NOW) + 3), NOW).subject == SUB
    assert check.verify(signed(nbf=int(NOW) + 60), NOW + 60).subject == SUB


def test_iat_in_the_future_is_invalid():
    check = verifier(leeway=5)
    reject(check, signed(iat=int(NOW) + 60), "invalid")
    assert check.verify(signed(iat=int(NOW) + 3), NOW).subject == SUB


def test_lifetime_is_bounded_from_iat():
    check = verifier(max_lifetime=HOUR, leeway=5)
    assert check.verify(signed(exp=int(NOW) + HOUR), NOW).subject == SUB
    error = reject(check, signed(exp=int(NOW) + 2 * HOUR), "invalid")
    assert "lifetime" in str(error)
    # an old iat counts too: the token claims a day-long life, though little is left
    reject(check, signed(iat=int(NOW) - 86400, exp=int(NOW) + 60), "invalid")


def test_lifetime_is_bounded_from_now_without_iat():
    check = verifier(max_lifetime=HOUR, leeway=5)
    assert check.verify(signed(iat=None, exp=int(NOW) + HOUR), NOW).subject == SUB
    reject(check, signed(iat=None, exp=int(NOW) + 2 * HOUR), "invalid")


# --- malformed input ---------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    ["", "garbage-credential", "a.b.c", "a.b", "....", "é.é.é", "\ud800", "Bearer " + "x" * 40],
)
def test_garbage_is_invalid(token):
    reject(verifier(), token, "invalid")


@pytest.mark.parametrize("header", [{}, [], "HS256", {"alg": 256}, {"alg": "HS256", "kid": 1}])
def test_malformed_header_is_invalid(header):
    reject(verifier(), hand_signed(header, claims()), "invalid")


@pytest.mark.parametrize("token", [None, 42, signed().encode(), ["a", "b"]])
def test_non_string_token_is_invalid(token):
    reject(verifier(), token, "invalid")


def test_deeply_nested_header_is_invalid():
    header = b64(b"[" * 50_000)
    reject(verifier(), f"{header}.e30.AA", "invalid")


# --- single use ------------------------------------------------------------------------


def test_jti_is_single_use():
    check = verifier(replay_cache=ReplayCache(10))
    token = signed(jti="once")
    assert check.verify(token, NOW).subject == SUB
    reject(check, token, "replayed")
    reject(check, token, "replayed", now=NOW + 10)


def test_jti_is_required_with_a_replay_cache_only():
    token = signed()
    assert verifier().verify(token, NOW).subject == SUB
    reject(verifier(replay_cache=ReplayCache(10)), token, "invalid")
    reject(verifier(replay_cache=ReplayCache(10)), signed(jti=""), "invalid")
    reject(verifier(replay_cache=ReplayCache(10)), hand_signed({"alg": "HS256"}, claims(jti=7)), "invalid")


class Elapsed:
    """The monotonic clock a ReplayCache reads, set by hand."""

    def __init__(self) -> None:
        self.value = 0.0

    def __call__(self) -> float:
        return self.value


class InStep(ReplayCache):
    """A ReplayCache whose monotonic clock moves with the wall clock it is given, as it does
    while nobody sets the wall clock."""

    def __init__(self, capacity: int) -> None:
        self.elapsed = Elapsed()
        super().__init__(capacity, clock=self.elapsed)

    def consume(self, jti: str, expires_at: float, now: float) -> bool:
        self.elapsed.value = now - NOW
        return super().consume(jti, expires_at, now)


def test_jti_is_remembered_through_the_leeway_then_forgotten():
    cache = InStep(10)
    check = verifier(replay_cache=cache, leeway=5)
    first = signed(jti="j", exp=int(NOW) + 60)
    assert check.verify(first, NOW).subject == SUB
    # past exp but inside the leeway the token still verifies, so it must still be refused
    reject(check, first, "replayed", now=NOW + 62)
    later = signed(jti="j", iat=int(NOW) + 100, exp=int(NOW) + 200)
    assert check.verify(later, NOW + 100).subject == SUB
    assert len(cache) == 1


def test_full_cache_refuses_rather_than_forgets():
    cache = InStep(2)
    assert cache.consume("a", NOW + 10, NOW)
    assert cache.consume("b", NOW + 20, NOW)
    assert not cache.consume("c", NOW + 30, NOW)
    assert not cache.consume("a", NOW + 10, NOW + 5)  # "a" was not evicted to make room
    assert cache.consume("c", NOW + 30, NOW + 10)  # "a" expired, its slot is free
    assert not cache.consume("d", NOW + 40, NOW + 10)  # full again
    assert len(cache) == 2
    check = verifier(replay_cache=ReplayCache(1))
    assert check.verify(signed(jti="x"), NOW).subject == SUB
    reject(check, signed(jti="y"), "replayed")


def test_expired_entries_are_purged():
    cache = InStep(100)
    for n in range(50):
        assert cache.consume(f"j{n}", NOW + n, NOW)
    assert cache.consume("late", NOW + 1000, NOW + 25)
    assert len(cache) == 25  # j26..j49 and "late"
    assert cache.consume("j0", NOW + 1000, NOW + 25)


def test_a_wall_clock_that_jumps_ahead_and_back_forgets_nothing_still_live():
    elapsed = Elapsed()
    cache = ReplayCache(10, clock=elapsed)
    assert cache.consume("j", NOW + 60, NOW)
    elapsed.value = 1.0
    assert cache.consume("k", NOW + 3 * HOUR + 60, NOW + 3 * HOUR)  # set three hours ahead by mistake
    elapsed.value = 2.0
    assert not cache.consume("j", NOW + 60, NOW + 2)  # set right again: "j" is still live
    elapsed.value = 61.0
    assert not cache.consume("k", NOW + 3 * HOUR + 60, NOW + 61)  # and "k" was used within its life
    assert cache.consume("j", NOW + 120, NOW + 61)  # "j" has expired by both clocks


def test_replay_cache_capacity_must_be_positive():
    with pytest.raises(ValueError):
        ReplayCache(0)


@pytest.mark.parametrize(
    ("bad", "result"),
    [
        ({"aud": "another-service"}, "invalid"),
        ({"exp": int(NOW) + 86400 * 30}, "invalid"),  # lifetime too long
        ({"nbf": int(NOW) + 60}, "not_yet_valid"),
        ({"sub": ""}, "invalid"),
    ],
)
def test_a_rejected_token_does_not_burn_its_jti(bad, result):
    check = verifier(replay_cache=ReplayCache(10), audience="guarded-ws")
    reject(check, hand_signed({"alg": "HS256"}, claims(**{"aud": "guarded-ws", "jti": "j1", **bad})), result)
    reject(check, signed(key="another-secret-of-sufficient-length-42", aud="guarded-ws", jti="j1"), "invalid")
    assert check.verify(signed(aud="guarded-ws", jti="j1"), NOW).subject == SUB


# --- hook verifier ---------------------------------------------------------------------


def test_hook_accepts_what_the_function_accepts():
    seen: list[str] = []

    def hook(token: str) -> dict[str, Any]:
        seen.append(token)
        return {"sub": SUB, "team": "blue"}

    identity = HookVerifier(hook).verify("opaque-credential", NOW)
    assert seen == ["opaque-credential"]
    assert (identity.subject, identity.claims["team"], identity.expires_at) == (SUB, "blue", math.inf)
    assert HookVerifier.method == "hook" and TokenVerifier.method == "token"


def test_hook_exp_is_honoured():
    check = HookVerifier(lambda token: {"sub": SUB, "exp": NOW + 60})
    assert check.verify("opaque-credential", NOW).expires_at == NOW + 60
    reject(check, "opaque-credential", "expired", now=NOW + 60)
    reject(HookVerifier(lambda token: {"sub": SUB, "exp": "later"}), "opaque-credential", "invalid")


def test_hook_that_raises_is_invalid_and_its_message_is_not_logged():
    def hook(token: str) -> dict[str, Any]:
        raise RuntimeError(f"bad credential {token}")

    error = reject(HookVerifier(hook), "opaque-credential-secret", "invalid")
    assert "RuntimeError" in str(error)


@pytest.mark.parametrize("returned", [None, "alice", [("sub", SUB)], {}, {"sub": ""}, {"sub": 42}])
def test_hook_returning_something_else_is_invalid(returned):
    reject(HookVerifier(lambda token: returned), "opaque-credential", "invalid")


def test_hook_is_not_called_with_a_non_string():
    def hook(token: str) -> dict[str, Any]:
        raise AssertionError("called")

    reject(HookVerifier(hook), b"opaque-credential", "invalid")


def test_load_hook_resolves_module_and_function():
    assert load_hook("json:dumps") is json.dumps


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("json", "module:function"),
        (":dumps", "module:function"),
        ("json:", "module:function"),
        ("no_such_module_for_guarded_ws:verify", "cannot import"),
        ("json:no_such_function", "no attribute"),
        ("json:__name__", "not callable"),
    ],
)
def test_load_hook_errors_are_clear(spec, match):
    with pytest.raises(ValueError, match=match):
        load_hook(spec)


# --- issuing ---------------------------------------------------------------------------------


def test_issue_token_round_trip():
    token = issue_token(
        SECRET, SUB, now=NOW + 0.7, ttl=600, audience="guarded-ws", issuer="me", jti="t-1", extra={"role": "ops"}
    )
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], audience="guarded-ws", options={"verify_exp": False})
    standard = {"sub": SUB, "iat": int(NOW), "exp": int(NOW) + 600, "aud": "guarded-ws", "iss": "me", "jti": "t-1"}
    assert decoded == {**standard, "role": "ops"}
    check = verifier(audience="guarded-ws", issuer="me", replay_cache=ReplayCache(1))
    assert check.verify(token, NOW + 1).claims["role"] == "ops"
    plain = jwt.decode(issue_token(SECRET, SUB, now=NOW), SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert set(plain) == {"sub", "iat", "exp"}


def test_issue_token_refuses_alg_none_and_shadowed_claims():
    with pytest.raises(ValueError, match="unsigned"):
        issue_token(SECRET, SUB, now=NOW, algorithm="none")
    with pytest.raises(ValueError, match="exp"):
        issue_token(SECRET, SUB, now=NOW, extra={"exp": NOW + 10**9})


# --- properties ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
jwt_shaped = st.builds(
    lambda header, payload, signature: f"{b64(json.dumps(header).encode())}.{b64(payload)}.{b64(signature)}",
    st.dictionaries(st.sampled_from(["alg", "typ", "kid", "crit", "b64", "jku"]), json_values, max_size=4),
    st.binary(max_size=64),
    st.binary(max_size=64),
)


@given(st.one_of(st.text(), jwt_shaped))
def test_arbitrary_text_only_ever_raises_auth_error(token):
    for check in (verifier(), verifier(replay_cache=ReplayCache(4), audience="guarded-ws", issuer="me")):
        with pytest.raises(AuthError) as caught:
            check.verify(token, NOW)
        assert caught.value.result in RESULTS


@given(st.dictionaries(st.sampled_from(["sub", "exp", "nbf", "iat", "aud", "iss", "jti"]), json_values))
def test_signed_claims_of_any_shape_verify_or_raise_auth_error(payload):
    check = verifier(replay_cache=ReplayCache(4))
    try:
        identity = check.verify(hand_signed({"alg": "HS256"}, payload), NOW)
    except AuthError as error:
        assert error.result in RESULTS
    else:
        assert identity.subject and math.isfinite(identity.expires_at) and identity.expires_at + 5 > NOW
