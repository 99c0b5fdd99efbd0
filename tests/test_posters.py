"""Zone poster codes (core/presence/posters.py): signed, verified, every refusal named,
garbage bounded. Real Ed25519 keys."""

from __future__ import annotations

import base64
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from storegate.core.personal.tokens import TokenSigner
from storegate.core.personal.tokens import verify_token as verify_offer_token
from storegate.core.presence.posters import (
    MAX_TEXT_CHARS,
    MIN_TEXT_CHARS,
    REJECT_REASONS,
    TEXT_PREFIX,
    PosterRejected,
    PosterSigner,
    VerifiedPoster,
    verify_poster,
)

KEY = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
OTHER = Ed25519PrivateKey.from_private_bytes(b"\x08" * 32)
SIGNER = PosterSigner(KEY, "s1")
KEYS = {SIGNER.kid: SIGNER.public_key}
ZONES = ("entrance", "dairy", "checkout")
NOW = 1_795_000_000


def check(text: object, **kw: object) -> VerifiedPoster | PosterRejected:
    args: dict[str, object] = {"keys": KEYS, "store": "s1", "zones": ZONES,
                               "min_generation": 1, "now": NOW}
    args.update(kw)
    return verify_poster(text, **args)  # type: ignore[arg-type]


def reason(text: object, **kw: object) -> str:
    result = check(text, **kw)
    assert isinstance(result, PosterRejected), result
    return result.reason


def raw_of(text: str) -> bytes:
    body = text[len(TEXT_PREFIX):]
    return base64.b32decode(body + "=" * (-len(body) % 8))


def text_of(raw: bytes) -> str:
    return TEXT_PREFIX + base64.b32encode(raw).decode().rstrip("=")


def test_a_signed_poster_verifies_with_its_zone_and_generation() -> None:
    code = SIGNER.sign(zone="dairy", generation=3, issued_at=NOW - 86_400)
    result = check(code)
    assert isinstance(result, VerifiedPoster)
    assert (result.zone, result.generation, result.issued_at, result.kid) == (
        "dairy", 3, NOW - 86_400, SIGNER.kid)
    assert len(result.poster_id) == 12
    # alphanumeric-mode QR friendly: prefix, upper-case base32, no padding
    assert code.startswith("SGZ1.")
    assert set(code[5:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    assert MIN_TEXT_CHARS <= len(code) <= MAX_TEXT_CHARS


def test_signing_is_deterministic_and_posters_differ_by_zone() -> None:
    a = SIGNER.sign(zone="dairy", generation=1, issued_at=NOW)
    assert a == SIGNER.sign(zone="dairy", generation=1, issued_at=NOW)  # a reprint
    b = SIGNER.sign(zone="checkout", generation=1, issued_at=NOW)
    ra, rb = check(a), check(b)
    assert isinstance(ra, VerifiedPoster) and isinstance(rb, VerifiedPoster)
    assert ra.poster_id != rb.poster_id


def test_the_longest_zone_id_fits_the_bounds() -> None:
    zone = "z" * 64
    code = SIGNER.sign(zone=zone, generation=65_535, issued_at=2**32 - 1)
    assert len(code) == MAX_TEXT_CHARS
    assert isinstance(check(code, zones=(zone,), now=2**32), VerifiedPoster)
    shortest = SIGNER.sign(zone="z", generation=1, issued_at=0)
    assert len(shortest) == MIN_TEXT_CHARS


@pytest.mark.parametrize(("kw", "problem"), [
    ({"zone": ""}, "zone"), ({"zone": "z" * 65}, "zone"), ({"generation": 0}, "generation"),
    ({"generation": 65_536}, "generation"), ({"issued_at": -1}, "issued_at"),
    ({"issued_at": 2**32}, "issued_at")])
def test_the_signer_refuses_what_does_not_fit(kw: dict[str, object], problem: str) -> None:
    args: dict[str, object] = {"zone": "dairy", "generation": 1, "issued_at": NOW}
    args.update(kw)
    with pytest.raises(ValueError, match=problem):
        SIGNER.sign(**args)  # type: ignore[arg-type]


def test_a_key_the_store_does_not_trust_is_refused() -> None:
    code = PosterSigner(OTHER, "s1").sign(zone="dairy", generation=1, issued_at=NOW)
    assert reason(code) == "unknown_key"
    # ...and trusted once listed (another gateway of the store)
    other = PosterSigner(OTHER, "s1")
    assert isinstance(check(code, keys={**KEYS, other.kid: other.public_key}),
                      VerifiedPoster)


def test_a_forged_signature_is_refused() -> None:
    # the kid of our key, signed by another: the signature does not verify
    forged = bytearray(raw_of(PosterSigner(OTHER, "s1").sign(zone="dairy", generation=1,
                                                             issued_at=NOW)))
    forged[1:5] = bytes.fromhex(SIGNER.kid)
    assert reason(text_of(bytes(forged))) == "bad_signature"


def test_an_altered_zone_or_generation_breaks_the_signature() -> None:
    raw = bytearray(raw_of(SIGNER.sign(zone="dairy", generation=1, issued_at=NOW)))
    raw[16:21] = b"dairx"
    assert reason(text_of(bytes(raw))) == "bad_signature"
    raw = bytearray(raw_of(SIGNER.sign(zone="dairy", generation=1, issued_at=NOW)))
    raw[9:11] = struct.pack(">H", 9)
    assert reason(text_of(bytes(raw))) == "bad_signature"
    raw = bytearray(raw_of(SIGNER.sign(zone="dairy", generation=1, issued_at=NOW)))
    raw[-1] ^= 1
    assert reason(text_of(bytes(raw))) == "bad_signature"


def test_another_stores_poster_is_refused() -> None:
    code = PosterSigner(KEY, "s2").sign(zone="dairy", generation=1, issued_at=NOW)
    assert reason(code) == "wrong_store"
    assert isinstance(check(code, store="s2"), VerifiedPoster)


def test_a_zone_the_store_does_not_have_is_refused() -> None:
    code = SIGNER.sign(zone="bakery", generation=1, issued_at=NOW)
    result = check(code)
    assert isinstance(result, PosterRejected) and result.reason == "unknown_zone"


def test_rotation_retires_older_generations() -> None:
    old = SIGNER.sign(zone="dairy", generation=1, issued_at=NOW)
    new = SIGNER.sign(zone="dairy", generation=2, issued_at=NOW)
    assert reason(old, min_generation=2) == "retired"
    assert isinstance(check(new, min_generation=2), VerifiedPoster)
    assert isinstance(check(SIGNER.sign(zone="dairy", generation=7, issued_at=NOW),
                            min_generation=2), VerifiedPoster)  # a newer box's poster


def test_a_poster_from_the_future_is_not_yet_valid_beyond_the_skew() -> None:
    assert isinstance(check(SIGNER.sign(zone="dairy", generation=1, issued_at=NOW + 300)),
                      VerifiedPoster)
    assert reason(SIGNER.sign(zone="dairy", generation=1, issued_at=NOW + 301)) == \
        "not_yet_valid"


def test_an_offer_token_is_not_a_poster_and_a_poster_is_not_a_token() -> None:
    token = TokenSigner(KEY, "s1").sign(token_id=b"\x01" * 16, offer="c1", customer="cust-1",
                                        issued_at=NOW, expires_at=NOW + 60)
    assert reason(token) == "malformed"
    poster = SIGNER.sign(zone="dairy", generation=1, issued_at=NOW)
    assert verify_offer_token(poster, keys=KEYS, store="s1", now=NOW).reason == "malformed"  # type: ignore[union-attr]


def _garbage() -> list[object]:
    good = SIGNER.sign(zone="dairy", generation=1, issued_at=NOW)
    raw = raw_of(good)
    wrong_version = bytearray(raw)
    wrong_version[0] = 2
    long_zone_len = bytearray(raw)
    long_zone_len[15] = 60  # the zone length says more than the code holds
    zero_zone = bytearray(raw)
    zero_zone[15] = 0
    return [
        None, 42, b"SGZ1.AAAA", "", "SGZ1.", "SGZ1", good.lower(), good[:-1], good + "A",
        good + "=" * 3, "SGO1." + good[5:], good.replace("A", "1", 1), good + " ",
        " " + good, "SGZ1." + "A" * (MAX_TEXT_CHARS + 100), "x" * 100_000,
        "SGZ1." + "é" * 140, text_of(bytes(wrong_version)), text_of(bytes(long_zone_len)),
        text_of(bytes(zero_zone)), text_of(raw + b"\x00"), text_of(raw[:-1]),
        # a non-canonical spelling: the last character's unused bits set
        good[:-1] + chr(ord(good[-1]) + 1) if good[-1] not in "Z7" else good[:-1] + "2",
    ]


@pytest.mark.parametrize("garbage", _garbage())
def test_garbage_is_malformed_never_an_exception(garbage: object) -> None:
    result = check(garbage)
    assert isinstance(result, PosterRejected)
    assert result.reason in ("malformed", "bad_signature")  # never a crash, never valid


def test_garbage_that_cannot_be_a_poster_is_malformed() -> None:
    for junk in (None, 42, "", "SGZ1.", "x" * 100_000, "SGZ1." + "A" * 1000):
        assert reason(junk) == "malformed"


def test_every_reason_is_reachable_and_listed() -> None:
    seen = {
        reason("junk"),
        reason(PosterSigner(OTHER, "s1").sign(zone="dairy", generation=1, issued_at=NOW)),
        reason(SIGNER.sign(zone="bakery", generation=1, issued_at=NOW)),
        reason(PosterSigner(KEY, "s2").sign(zone="dairy", generation=1, issued_at=NOW)),
        reason(SIGNER.sign(zone="dairy", generation=1, issued_at=NOW), min_generation=2),
        reason(SIGNER.sign(zone="dairy", generation=1, issued_at=NOW + 3600)),
    }
    raw = bytearray(raw_of(SIGNER.sign(zone="dairy", generation=1, issued_at=NOW)))
    raw[-1] ^= 1
    seen.add(reason(text_of(bytes(raw))))
    assert seen == set(REJECT_REASONS)
