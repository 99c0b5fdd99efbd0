"""Offer tokens (core/personal/tokens.py): real Ed25519, every rejection reason."""

from __future__ import annotations

import base64
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from storegate.core.personal import tokens as t

STORE = "store-0042"
T0 = 1_796_000_000
TID = bytes(range(16))
KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))
SIGNER = t.TokenSigner(KEY, STORE)
KEYS = {SIGNER.kid: SIGNER.public_key}


def token(**kw: object) -> str:
    args: dict[str, object] = {"token_id": TID, "offer": "spring-sale", "customer": "cust-1",
                               "issued_at": T0, "expires_at": T0 + 3600}
    args.update(kw)
    return SIGNER.sign(**args)  # type: ignore[arg-type]


def check(text: object, now: float = T0 + 10, **kw: object) -> t.VerifiedToken | t.TokenRejected:
    args: dict[str, object] = {"keys": KEYS, "store": STORE, "now": now}
    args.update(kw)
    return t.verify_token(text, **args)  # type: ignore[arg-type]


def reason(result: t.VerifiedToken | t.TokenRejected) -> str:
    assert isinstance(result, t.TokenRejected), result
    return result.reason


def raw(text: str) -> bytes:
    body = text[len(t.TEXT_PREFIX):]
    return base64.b32decode(body + "=" * (-len(body) % 8))


def text_of(data: bytes) -> str:
    return t.TEXT_PREFIX + base64.b32encode(data).decode().rstrip("=")


def test_round_trip_carries_what_was_signed_and_no_personal_data() -> None:
    text = token()
    assert len(text) == t.TEXT_CHARS == 186
    assert re.fullmatch(r"SGO1\.[A-Z2-7]+", text)  # the lanes' offer_pattern, QR alnum
    v = check(text, customer="cust-1")
    assert isinstance(v, t.VerifiedToken)
    assert v.token_id == TID and v.token_hex == TID.hex()
    assert (v.issued_at, v.expires_at) == (T0, T0 + 3600)
    assert v.kid == SIGNER.kid == t.key_id(KEY.public_key())
    assert v.offer_ref == t.offer_ref("spring-sale")
    assert v.store_tag == t.store_tag(STORE)
    data = raw(text)
    for secret in (b"cust-1", b"spring-sale", STORE.encode()):
        assert secret not in data


def test_the_customer_is_optional_and_tags_of_one_customer_do_not_link() -> None:
    assert isinstance(check(token()), t.VerifiedToken)  # the lane knows nobody
    a = check(token(token_id=b"a" * 16))
    b = check(token(token_id=b"b" * 16))
    assert isinstance(a, t.VerifiedToken) and isinstance(b, t.VerifiedToken)
    assert a.customer_tag != b.customer_tag


def test_every_single_bit_flipped_is_rejected() -> None:
    data = raw(token())
    seen: set[str] = set()
    for i in range(len(data) * 8):
        bad = bytearray(data)
        bad[i // 8] ^= 1 << (i % 8)
        r = check(text_of(bytes(bad)))
        assert isinstance(r, t.TokenRejected), i
        seen.add(r.reason)
        # the version byte -> malformed, the kid -> unknown_key, the rest -> bad signature
        expected = "malformed" if i < 8 else "unknown_key" if i < 40 else "bad_signature"
        assert r.reason == expected, (i, r)
    assert seen == {"malformed", "unknown_key", "bad_signature"}


def test_every_character_changed_in_the_text_is_rejected() -> None:
    text = token()
    for i in range(len(text)):
        for c in ("A", "7", "a", "=", "1"):
            if text[i] != c:
                assert isinstance(check(text[:i] + c + text[i + 1:]), t.TokenRejected), (i, c)


def test_truncated_and_extended_tokens_are_malformed() -> None:
    text = token()
    for n in range(len(text)):
        assert reason(check(text[:n])) == "malformed"
    assert reason(check(text + "A")) == "malformed"
    assert reason(check(text + "\n")) == "malformed"
    assert reason(check(" " + text)) == "malformed"


def test_non_canonical_base32_is_malformed() -> None:
    # 113 bytes are 904 bits: the last character carries one unused bit, which must be 0
    text = token()
    last = text[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    twin = text[:-1] + alphabet[alphabet.index(last) ^ 1]
    assert raw(twin) == raw(text)  # the same bytes...
    assert reason(check(twin)) == "malformed"  # ...but only one spelling is a token


@pytest.mark.parametrize("garbage", [
    None, 42, b"SGO1.AAAA", "", "SGO1.", "SGO1." + "A" * 181 + "\x00", "SGO1." + "a" * 181,
    "SGO1." + "0" * 181, "sgo1." + "A" * 181, "SGO2." + "A" * 181, "SGO1." + "A" * 181,
    "SGO1." + "Я" * 181, "x" * 10_000_000,
])
def test_garbage_and_huge_input_is_malformed_never_an_exception(garbage: object) -> None:
    assert reason(check(garbage)) in ("malformed", "unknown_key")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_is_rejected_without_an_exception(text: str) -> None:
    assert isinstance(check(text), t.TokenRejected)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=t.TOKEN_BYTES, max_size=t.TOKEN_BYTES))
def test_any_bytes_of_the_right_length_are_rejected(data: bytes) -> None:
    assert isinstance(check(text_of(data)), t.TokenRejected)


def test_another_version_is_malformed() -> None:
    data = bytearray(raw(token()))
    data[0] = 2
    assert reason(check(text_of(bytes(data)))) == "malformed"


def test_a_key_not_trusted_here_is_unknown_and_a_forged_kid_fails_the_signature() -> None:
    other = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    foreign = t.TokenSigner(other, STORE).sign(token_id=TID, offer="x", customer="c",
                                               issued_at=T0, expires_at=T0 + 60)
    r = check(foreign)
    assert isinstance(r, t.TokenRejected) and r.reason == "unknown_key"
    assert r.token_id == TID.hex()  # it parsed
    # trusted (another gateway of the store): accepted
    both = {**KEYS, t.key_id(other.public_key()): other.public_key()}
    assert isinstance(check(foreign, keys=both), t.VerifiedToken)
    # signed by the other key but claiming ours: the signature does not verify
    data = bytearray(raw(foreign))
    data[1:5] = bytes.fromhex(SIGNER.kid)
    assert reason(check(text_of(bytes(data)))) == "bad_signature"


def test_wrong_store() -> None:
    other_store = t.TokenSigner(KEY, "store-0043").sign(
        token_id=TID, offer="x", customer="c", issued_at=T0, expires_at=T0 + 60)
    assert reason(check(other_store)) == "wrong_store"
    assert isinstance(check(other_store, store="store-0043"), t.VerifiedToken)


def test_validity_window_edges() -> None:
    text = token()
    assert isinstance(check(text, now=T0 + 3599.999), t.VerifiedToken)
    assert reason(check(text, now=T0 + 3600)) == "expired"
    assert reason(check(text, now=T0 + 10**6)) == "expired"
    assert isinstance(check(text, now=T0 - t.DEFAULT_SKEW_S), t.VerifiedToken)
    assert reason(check(text, now=T0 - t.DEFAULT_SKEW_S - 1)) == "not_yet_valid"
    assert reason(check(text, now=T0 - 10, skew_s=0)) == "not_yet_valid"


def test_customer_mismatch() -> None:
    text = token(customer="cust-1")
    assert isinstance(check(text, customer="cust-1"), t.VerifiedToken)
    r = check(text, customer="cust-2")
    assert isinstance(r, t.TokenRejected) and r.reason == "customer_mismatch"
    assert r.token_id == TID.hex()


def test_signing_refuses_what_a_token_cannot_carry() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        token(token_id=b"short")
    with pytest.raises(ValueError, match="32 bits"):
        token(expires_at=T0)
    with pytest.raises(ValueError, match="32 bits"):
        token(expires_at=2**32)
    assert isinstance(check(t.sign_token(KEY, store=STORE, token_id=TID, offer="o",
                                         customer="c", issued_at=T0, expires_at=T0 + 50)),
                      t.VerifiedToken)
