"""The certificate policy, on decoded certificates and a fixed clock: no network."""

from __future__ import annotations

import ssl

import pytest
from cryptography.hazmat.primitives import serialization

import pki
from guarded_ws.certs import (
    CertificateRefused,
    fingerprint,
    identify,
    normalize_fingerprint,
    pem_certificates,
    pin_set,
    subject_of,
)

NOW = 1_800_000_000.0
FP = "ab" * 32
ALICE = {
    "subject": ((("countryName", "FR"),), (("commonName", "alice"),)),
    "subjectAltName": (("DNS", "alice.example.org"), ("email", "alice@example.org"), ("URI", "spiffe://x/alice")),
    "serialNumber": "0A1B2C",
    "notAfter": "Jan 15 08:00:00 2028 GMT",
}
DER = b"\x30\x03\x02\x01\x01"


def test_fingerprint_is_sha256_of_the_der_in_lower_case_hex():
    assert fingerprint(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize(
    "text",
    [FP, FP.upper(), ":".join(FP[i : i + 2] for i in range(0, 64, 2)).upper(), "sha256:" + FP, f"  {FP}\n",
     "SHA256 Fingerprint=" + ":".join(FP[i : i + 2] for i in range(0, 64, 2))],
)  # fmt: skip
def test_fingerprints_in_the_forms_tools_print_are_accepted(text):
    assert normalize_fingerprint(text) == FP


@pytest.mark.parametrize("text", ["", "ab" * 31, "ab" * 33, "zz" * 32, "sha1:" + "ab" * 20, "md5:" + FP])
def test_anything_else_is_not_a_fingerprint(text):
    with pytest.raises(ValueError):
        normalize_fingerprint(text)


@pytest.mark.parametrize(
    ("field", "subject"),
    [("cn", "alice"), ("san_dns", "alice.example.org"), ("san_email", "alice@example.org"),
     ("san_uri", "spiffe://x/alice")],
)  # fmt: skip
def test_subject_comes_from_the_configured_field(field, subject):
    assert subject_of(ALICE, field) == subject


def test_a_missing_or_ambiguous_field_names_no_subject():
    assert subject_of({"subject": ()}, "cn") is None
    assert subject_of({"subject": ((("commonName", "a"),), (("commonName", "b"),))}, "cn") is None
    assert subject_of({"subject": ((("commonName", ""),),)}, "cn") is None
    assert subject_of({"subjectAltName": (("DNS", "x"),)}, "san_email") is None


def test_the_first_san_of_the_type_is_the_subject():
    cert = {"subjectAltName": (("DNS", "first.example"), ("DNS", "second.example"))}
    assert subject_of(cert, "san_dns") == "first.example"


def test_identity_carries_fingerprint_serial_and_expiry():
    identity = identify(ALICE, DER, field="cn", pins=frozenset(), now=NOW)
    expires = ssl.cert_time_to_seconds(ALICE["notAfter"])
    assert identity.subject == "alice"
    assert identity.expires_at == expires
    assert dict(identity.claims) == {"sub": "alice", "exp": expires, "fingerprint": fingerprint(DER), "serial": "0a1b2c"}


def test_pins_admit_only_the_listed_certificates():
    assert identify(ALICE, DER, field="cn", pins=frozenset({fingerprint(DER)}), now=NOW).subject == "alice"
    with pytest.raises(CertificateRefused) as refused:
        identify(ALICE, DER, field="cn", pins=frozenset({FP}), now=NOW)
    assert refused.value.reason == "pin_mismatch"


def test_no_subject_and_expired_are_refused():
    with pytest.raises(CertificateRefused) as refused:
        identify({**ALICE, "subjectAltName": ()}, DER, field="san_email", pins=frozenset(), now=NOW)
    assert refused.value.reason == "no_subject"
    with pytest.raises(CertificateRefused) as refused:
        identify(ALICE, DER, field="cn", pins=frozenset(), now=ssl.cert_time_to_seconds(ALICE["notAfter"]))
    assert refused.value.reason == "expired"


def test_pem_and_der_files_give_every_certificate(tmp_path):
    first, second = pki.self_signed("one"), pki.self_signed("two")
    bundle = b"# a comment\n" + first.cert_pem + second.cert_pem
    assert [fingerprint(der) for der in pem_certificates(bundle)] == [first.fingerprint, second.fingerprint]
    der = first.cert.public_bytes(serialization.Encoding.DER)
    assert pem_certificates(der) == [der]
    with pytest.raises(ValueError):
        pem_certificates(first.key_pem)


def test_pin_set_normalises():
    assert pin_set([FP.upper(), "sha256:" + FP]) == frozenset({FP})
