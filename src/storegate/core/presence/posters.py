"""Zone posters: the signed QR code on a store's wall that the app scans to check in.

A check-in is presence evidence from a phone that may never advertise over Bluetooth.
The poster says "this is zone Z of store S", signed by the store's poster key, so the
app cannot invent a zone, another store's poster is refused, and a reprint with a new
``generation`` retires the old ones (a photo of a poster passed around online stops
working once the store bumps ``[checkin] min_generation``). The poster is public: the
signature proves where the code came from, not that the phone is in front of it; the
consent check, the rate limit and the short hold bound what a copied code can do.

Layout, version 1 (big-endian, 81..144 bytes)::

    version     u8      1
    kid         4 B     the signing key's id: SHA-256(raw public key)[:4]
    store_tag   4 B     SHA-256("sgz-store\\0" + store id)[:4]
    generation  u16     the poster generation (rotation: reprint with a higher one)
    issued_at   u32     epoch seconds the poster was rendered
    zone_len    u8      1..64
    zone        UTF-8   the zone id (not secret: it is printed on the poster)
    signature   64 B    Ed25519 over "storegate-zone-poster\\0" + the bytes above

Text form (the QR's content): ``SGZ1.`` + RFC 4648 base32, upper case, no padding: all
in the QR alphanumeric set, 135..236 characters. Pure: keys and time are passed in;
:func:`verify_poster` never raises, bounds the input before decoding it, and names a
reason for everything it refuses.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from storegate.core import base32text
from storegate.core.personal.tokens import key_id

TEXT_PREFIX: Final = "SGZ1."
VERSION: Final = 1
MAX_ZONE_BYTES: Final = 64  # config zone ids are at most 64 characters
MAX_GENERATION: Final = 0xFFFF
U32_MAX: Final = 0xFFFF_FFFF
_HEAD: Final = struct.Struct(">B4s4sHIB")  # version .. zone_len: 16 bytes
SIGNATURE_BYTES: Final = 64
MIN_BYTES: Final = _HEAD.size + 1 + SIGNATURE_BYTES  # 81
MAX_BYTES: Final = _HEAD.size + MAX_ZONE_BYTES + SIGNATURE_BYTES  # 144
MIN_TEXT_CHARS: Final = len(TEXT_PREFIX) + -(-MIN_BYTES * 8 // 5)
MAX_TEXT_CHARS: Final = len(TEXT_PREFIX) + -(-MAX_BYTES * 8 // 5)  # 236
# A poster rendered on a box whose clock runs ahead is still fine within this.
DEFAULT_SKEW_S: Final = 300

_SIGNED_PREFIX: Final = b"storegate-zone-poster\0"  # a poster signature is nothing else

RejectReason = Literal[
    "malformed",      # not a poster code of a version this gateway reads
    "unknown_key",    # signed by a key this store does not trust
    "bad_signature",  # forged or altered
    "wrong_store",    # another store's poster
    "unknown_zone",   # a zone this store does not have (any more)
    "retired",        # an older generation than the store still accepts
    "not_yet_valid",  # rendered further ahead than the skew allows
]
REJECT_REASONS: Final[tuple[RejectReason, ...]] = (
    "malformed", "unknown_key", "bad_signature", "wrong_store", "unknown_zone", "retired",
    "not_yet_valid")


@dataclass(frozen=True, slots=True)
class VerifiedPoster:
    """An authentic poster of this store for one of its zones."""

    kid: str
    zone: str
    generation: int
    issued_at: int
    poster_id: str  # hex, derived from the code: tells two printed posters apart


@dataclass(frozen=True, slots=True)
class PosterRejected:
    reason: RejectReason
    detail: str  # says what is wrong, never echoes more than a zone id of this store


def store_tag(store: str) -> bytes:
    return hashlib.sha256(b"sgz-store\0" + store.encode()).digest()[:4]


def poster_id(raw: bytes) -> str:
    return hashlib.sha256(raw).digest()[:6].hex()


class PosterSigner:
    """Signs a store's zone posters (Ed25519 is deterministic: the same zone, generation
    and time give the same code, so a reprint of a damaged poster is identical)."""

    def __init__(self, key: Ed25519PrivateKey, store: str) -> None:
        self._key = key
        self.public_key = key.public_key()
        self.kid = key_id(self.public_key)
        self._kid = bytes.fromhex(self.kid)
        self._store = store_tag(store)

    def sign(self, *, zone: str, generation: int, issued_at: int) -> str:
        name = zone.encode()
        if not 1 <= len(name) <= MAX_ZONE_BYTES:
            raise ValueError(f"a zone id is 1..{MAX_ZONE_BYTES} bytes of UTF-8")
        if not 1 <= generation <= MAX_GENERATION:
            raise ValueError(f"generation is 1..{MAX_GENERATION}")
        if not 0 <= issued_at <= U32_MAX:
            raise ValueError("issued_at is epoch seconds that fit 32 bits")
        body = _HEAD.pack(VERSION, self._kid, self._store, generation, issued_at,
                          len(name)) + name
        sig = self._key.sign(_SIGNED_PREFIX + body)
        return TEXT_PREFIX + base32text.encode(body + sig)


def verify_poster(  # noqa: PLR0911 -- one return per reason, in the order checked
        text: object, *, keys: Mapping[str, Ed25519PublicKey], store: str,
        zones: Collection[str], min_generation: int, now: float,
        skew_s: float = DEFAULT_SKEW_S) -> VerifiedPoster | PosterRejected:
    """Check a scanned poster code. ``keys``: the store's poster keys by kid; ``zones``:
    the store's zone ids; posters of a generation below ``min_generation`` are retired."""
    raw = _decode(text)
    if raw is None:
        return PosterRejected("malformed", "not a zone poster code")
    version, kid_b, tag, generation, issued_at, zone_len = _HEAD.unpack_from(raw)
    if version != VERSION:
        return PosterRejected("malformed", f"poster version {version} is not read here")
    if len(raw) != _HEAD.size + zone_len + SIGNATURE_BYTES or zone_len == 0:
        return PosterRejected("malformed", "the zone length does not match the code")
    kid = kid_b.hex()
    public = keys.get(kid)
    if public is None:
        return PosterRejected("unknown_key", f"signed by key {kid}, not trusted here")
    signed = raw[:-SIGNATURE_BYTES]
    try:
        public.verify(raw[-SIGNATURE_BYTES:], _SIGNED_PREFIX + signed)
    except InvalidSignature:
        return PosterRejected("bad_signature", "forged or altered")
    if not hmac.compare_digest(tag, store_tag(store)):
        return PosterRejected("wrong_store", "a poster of another store")
    try:
        zone = raw[_HEAD.size:_HEAD.size + zone_len].decode("utf-8")
    except UnicodeDecodeError:  # signed by a key of ours, yet not UTF-8: not ours to read
        return PosterRejected("malformed", "the zone is not UTF-8")
    if zone not in zones:
        return PosterRejected("unknown_zone", "a zone this store does not have")
    if generation < min_generation:
        return PosterRejected("retired", f"generation {generation} is retired (the store "
                              f"accepts {min_generation} and later)")
    if issued_at > now + skew_s:
        return PosterRejected("not_yet_valid", f"rendered at {issued_at}, ahead of this "
                              "clock")
    return VerifiedPoster(kid, zone, generation, issued_at, poster_id(raw))


def _decode(text: object) -> bytes | None:
    """The code's bytes, or None for anything that is not a v1 poster's text (one
    canonical spelling). The length is checked before anything is decoded: an app can
    post kilobytes of junk, none of it is."""
    if not isinstance(text, str) or not MIN_TEXT_CHARS <= len(text) <= MAX_TEXT_CHARS \
            or not text.startswith(TEXT_PREFIX):
        return None
    raw = base32text.decode_canonical(text[len(TEXT_PREFIX):])
    if raw is None or not MIN_BYTES <= len(raw) <= MAX_BYTES:
        return None
    return raw
