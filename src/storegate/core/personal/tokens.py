"""The offer token: what a customer's phone shows and a till's scanner reads.

Compact, binary, Ed25519-signed by the gateway that issued it, so any lane of the store
checks it offline with a public key and no lookup. It carries no personal data: the
store, the offer and the customer appear only as truncated hashes, the customer's
salted with the token's own random id (two tokens of one customer share nothing).

Layout, version 1 (big-endian, 113 bytes)::

    version     u8      1
    kid         4 B     the signing key's id: SHA-256(raw public key)[:4]
    token_id    16 B    random, the redemption ledger's key
    store_tag   4 B     SHA-256("sgo-store\\0" + store id)[:4]
    offer_ref   8 B     SHA-256("sgo-offer\\0" + campaign)[:8]
    issued_at   u32     epoch seconds
    expires_at  u32     epoch seconds
    customer    8 B     SHA-256("sgo-customer\\0" + token_id + pseudonym)[:8]
    signature   64 B    Ed25519 over "storegate-offer-token\\0" + the 49 bytes above

Text form (the QR's content): ``SGO1.`` + RFC 4648 base32, upper case, no padding:
186 characters, all in the QR alphanumeric set (5.5 bits a character instead of 8),
and matching the lanes' ``offer_pattern`` (``^SGO1\\.``).

Pure: keys, the time and the token id are passed in. ``verify_token`` never raises:
anything that is not a well-formed token of a known key is a :class:`TokenRejected`
with its reason, and input is bounded before any work is done.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from storegate.core import base32text

TEXT_PREFIX: Final = "SGO1."
VERSION: Final = 1
TOKEN_ID_BYTES: Final = 16
KID_BYTES: Final = 4
_BODY: Final = struct.Struct(">B4s16s4s8sII8s")  # version .. customer: 49 bytes
SIGNATURE_BYTES: Final = 64
TOKEN_BYTES: Final = _BODY.size + SIGNATURE_BYTES  # 113
TEXT_CHARS: Final = len(TEXT_PREFIX) + -(-TOKEN_BYTES * 8 // 5)  # 186
# Clock skew allowed between the gateway that issued a token and the one that checks it.
DEFAULT_SKEW_S: Final = 300
U32_MAX: Final = 0xFFFF_FFFF
KID_PATTERN: Final = re.compile(r"^[0-9a-f]{8}$")

_SIGNED_PREFIX: Final = b"storegate-offer-token\0"  # a token signature is nothing else

RejectReason = Literal[
    "malformed",          # not a token of a version this gateway reads
    "unknown_key",        # signed by a key neither this gateway's nor trusted
    "bad_signature",      # forged or altered
    "expired",            # past expires_at
    "not_yet_valid",      # issued further ahead than the skew allows
    "wrong_store",        # issued for another store
    "customer_mismatch",  # the lane knows its customer, and the token is someone else's
]


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """An authentic token of this store, inside its validity, for this customer (when
    the customer was known): still to be checked against the redemption ledger."""

    kid: str
    token_id: bytes
    store_tag: bytes
    offer_ref: bytes
    issued_at: int
    expires_at: int
    customer_tag: bytes

    @property
    def token_hex(self) -> str:
        return self.token_id.hex()


@dataclass(frozen=True, slots=True)
class TokenRejected:
    reason: RejectReason
    detail: str
    token_id: str | None = None  # hex, once the token parsed


def key_id(public_key: Ed25519PublicKey) -> str:
    """A key's id, derived from the key: tills and other gateways need no registry."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:KID_BYTES].hex()


def store_tag(store: str) -> bytes:
    return hashlib.sha256(b"sgo-store\0" + store.encode()).digest()[:4]


def offer_ref(campaign: str) -> bytes:
    """The campaign as a token names it: a hash, so the campaign id is not readable."""
    return hashlib.sha256(b"sgo-offer\0" + campaign.encode()).digest()[:8]


def customer_tag(token_id: bytes, customer: str) -> bytes:
    """Binds a token to a customer pseudonym without carrying it; salted by the token id
    so tags of one customer's tokens cannot be linked."""
    return hashlib.sha256(b"sgo-customer\0" + token_id + customer.encode()).digest()[:8]


class TokenSigner:
    """Signs this gateway's tokens: the key, its id and the store tag, computed once."""

    def __init__(self, key: Ed25519PrivateKey, store: str) -> None:
        self._key = key
        self.public_key = key.public_key()
        self.kid = key_id(self.public_key)
        self._kid = bytes.fromhex(self.kid)
        self._store = store_tag(store)

    def sign(self, *, token_id: bytes, offer: str, customer: str, issued_at: int,
             expires_at: int) -> str:
        if len(token_id) != TOKEN_ID_BYTES:
            raise ValueError(f"a token id is {TOKEN_ID_BYTES} bytes, got {len(token_id)}")
        if not 0 <= issued_at < expires_at <= U32_MAX:
            raise ValueError("issued_at < expires_at, both epoch seconds that fit 32 bits")
        body = _BODY.pack(VERSION, self._kid, token_id, self._store, offer_ref(offer),
                          issued_at, expires_at, customer_tag(token_id, customer))
        sig = self._key.sign(_SIGNED_PREFIX + body)
        return TEXT_PREFIX + base32text.encode(body + sig)


def sign_token(key: Ed25519PrivateKey, *, store: str, token_id: bytes, offer: str,
               customer: str, issued_at: int, expires_at: int) -> str:
    """The text of a new token (one-off; a gateway keeps a :class:`TokenSigner`)."""
    return TokenSigner(key, store).sign(token_id=token_id, offer=offer, customer=customer,
                                        issued_at=issued_at, expires_at=expires_at)


def verify_token(  # noqa: PLR0911 -- one return per reason, in the order checked
        text: object, *, keys: Mapping[str, Ed25519PublicKey], store: str,
                 now: float, customer: str | None = None,
                 skew_s: float = DEFAULT_SKEW_S) -> VerifiedToken | TokenRejected:
    """Check a scanned token. ``keys``: this gateway's and the store's other gateways'
    public keys by kid. ``customer``: the lane's customer when it knows one."""
    raw = _decode(text)
    if raw is None:
        return TokenRejected("malformed", "not an offer token")
    version, kid_b, token_id, tag, ref, issued_at, expires_at, ctag = _BODY.unpack_from(raw)
    if version != VERSION:
        return TokenRejected("malformed", f"token version {version} is not read here")
    tid = token_id.hex()
    kid = kid_b.hex()
    public = keys.get(kid)
    if public is None:
        return TokenRejected("unknown_key", f"signed by key {kid}, not trusted here", tid)
    try:
        public.verify(raw[_BODY.size:], _SIGNED_PREFIX + raw[:_BODY.size])
    except InvalidSignature:
        return TokenRejected("bad_signature", "forged or altered", tid)
    if not hmac.compare_digest(tag, store_tag(store)):
        return TokenRejected("wrong_store", "issued for another store", tid)
    if now >= expires_at:
        return TokenRejected("expired", f"expired at {expires_at}", tid)
    if issued_at > now + skew_s:
        return TokenRejected("not_yet_valid", f"issued at {issued_at}, ahead of this clock",
                             tid)
    if customer is not None and not hmac.compare_digest(ctag, customer_tag(token_id, customer)):
        return TokenRejected("customer_mismatch", "the token is another customer's", tid)
    return VerifiedToken(kid, token_id, tag, ref, issued_at, expires_at, ctag)


def _decode(text: object) -> bytes | None:
    """The token's bytes, or None for anything that is not exactly a v1 token's text
    (one canonical spelling: a changed padding bit is not another valid text). The
    length is checked first: a scanner can send kilobytes of junk, none is decoded."""
    if not isinstance(text, str) or len(text) != TEXT_CHARS or not text.startswith(TEXT_PREFIX):
        return None
    raw = base32text.decode_canonical(text[len(TEXT_PREFIX):])
    return raw if raw is not None and len(raw) == TOKEN_BYTES else None
