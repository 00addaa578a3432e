"""Credential attacks against the configured schemes: replay, algorithm confusion, a custom verifier."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.frames import Opcode

from support import frame, legit, read_close, read_frame, source, token, upgraded
from guarded_ws.tokens import issue_token


def _first_message(port: int, credential: str, src: str = "127.0.0.2") -> tuple[int, bytes] | int | None:
    """What the server answers to one credential: the authenticated frame, or the close code."""
    sock = upgraded(port, src)
    sock.sendall(frame(Opcode.TEXT, credential.encode()))
    got = read_frame(sock)
    if got is not None and got[0] == Opcode.CLOSE:
        return int.from_bytes(got[1][:2], "big")
    return got


def _hs256_by_hand(key: bytes, claims: dict[str, object]) -> str:
    """PyJWT refuses to sign HS256 with a PEM key; an attacker does not ask it."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    return (signing_input + b"." + b64(hmac.new(key, signing_input, hashlib.sha256).digest())).decode()


def test_single_use_token_is_refused_the_second_time(serve):
    server = serve(auth__single_use=True)
    once = token("ivan", jti="one-time-1")
    assert _first_message(server.port, once) == (Opcode.TEXT, b'{"type": "authenticated", "subject": "ivan"}')
    assert _first_message(server.port, once, source(3)) == 4401
    assert server.metric("guarded_ws_auth_attempts_total", method="token", result="replayed") == 1
    assert _first_message(server.port, token("ivan"), source(4)) == 4401  # no jti: invalid when single-use


def test_rs256_rejects_an_hs256_token_signed_with_the_public_key(serve, tmp_path):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(public_pem)
    server = serve(auth__algorithms=["RS256"], auth__public_key_file=str(key_file))
    good = issue_token(private_pem, "judy", now=time.time(), ttl=60, algorithm="RS256")
    assert _first_message(server.port, good) == (Opcode.TEXT, b'{"type": "authenticated", "subject": "judy"}')
    # The classic confusion: sign HS256 with the public key, hoping it is used as the HMAC secret.
    forged = _hs256_by_hand(public_pem, {"sub": "mallory", "exp": int(time.time()) + 60})
    assert _first_message(server.port, forged, source(3)) == 4401


def test_operator_hook_replaces_the_jwt_check(serve):
    server = serve(auth__verifier="sample_apps:verify_hook")
    assert _first_message(server.port, "open-sesame") == (
        Opcode.TEXT,
        json.dumps({"type": "authenticated", "subject": "hooked"}).encode(),
    )
    assert _first_message(server.port, token("alice"), source(3)) == 4401
    assert server.metric("guarded_ws_auth_attempts_total", method="hook", result="ok") == 1
    assert server.metric("guarded_ws_auth_attempts_total", method="hook", result="invalid") == 1


def test_expired_token_closes_with_a_reason_that_says_so(serve):
    server = serve()
    sock = upgraded(server.port, source(2))
    sock.sendall(frame(Opcode.TEXT, token(now=time.time() - 3600, ttl=60).encode()))
    got = read_frame(sock)
    assert got is not None and got[0] == Opcode.CLOSE
    assert got[1] == (4401).to_bytes(2, "big") + b"expired credential"
    assert legit(server.port, source(3)) == "hello"
    assert read_close(sock) is None
