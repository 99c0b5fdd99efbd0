"""Sealing secrets to gateways: identity keys travel as ciphertext end to end.

A store broker keeps queued QoS 1 messages in its database file in clear, and every
subscriber with read access sees them; an identity key in clear there lets anyone track
that customer. So central seals each identity key to the gateways of the store, and only
a gateway's private X25519 key (made on the box, never leaving it) opens it.

One command, many records, several gateways, like JWE with several recipients:

* a random 32-byte content key (CEK) per command;
* each record's 16-byte identity key: ChaCha20-Poly1305 under the CEK, a random 12-byte
  nonce, and the record's other fields (customer, K, beacon time, registration time) as
  associated data, so a sealed key cannot be moved to another customer or re-timed;
* the CEK wrapped for each gateway: an ephemeral X25519 key agreement with the
  gateway's public key, HKDF-SHA256 (salt: both public keys, info: the label, store and
  gateway), ChaCha20-Poly1305.

Opening a 100,000-record command costs one X25519 and one AEAD per record (a few µs).
Pure apart from the randomness, which is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from storegate.core.trust import b64d, b64e, raw_key

LABEL: Final = b"storegate seal v1"
NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32
# epk(32) | nonce(12) | wrapped CEK (32 + 16 tag)
WRAPPED_BYTES: Final = 32 + NONCE_BYTES + KEY_BYTES + 16


class SealError(ValueError):
    """Sealed data that does not open (wrong gateway, tampered, truncated)."""


def public_text(key: X25519PublicKey) -> str:
    return b64e(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def load_public(text: str) -> X25519PublicKey:
    """A gateway's seal key as its birth certificate carries it. Raises ValueError."""
    return X25519PublicKey.from_public_bytes(raw_key(text, "X25519"))


def _kek(shared: bytes, epk: bytes, recipient: bytes, store: str, gateway: str) -> bytes:
    info = LABEL + b"|" + store.encode() + b"|" + gateway.encode()
    return HKDF(hashes.SHA256(), KEY_BYTES, salt=epk + recipient, info=info).derive(shared)


def wrap_key(cek: bytes, recipient: X25519PublicKey, *, store: str, gateway: str,
             rand: Callable[[int], bytes]) -> str:
    """The content key, sealed to one gateway (central's side)."""
    eph = X25519PrivateKey.from_private_bytes(rand(32))
    epk = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    rpk = recipient.public_bytes(Encoding.Raw, PublicFormat.Raw)
    kek = _kek(eph.exchange(recipient), epk, rpk, store, gateway)
    nonce = rand(NONCE_BYTES)
    return b64e(epk + nonce + ChaCha20Poly1305(kek).encrypt(nonce, cek, LABEL))


def unwrap_key(wrapped: str, key: X25519PrivateKey, *, store: str, gateway: str) -> bytes:
    """The content key of a command, opened with this gateway's private key."""
    try:
        raw = b64d(wrapped)
    except ValueError as exc:
        raise SealError("the wrapped key is not base64url") from exc
    if len(raw) != WRAPPED_BYTES:
        raise SealError(f"a wrapped key is {WRAPPED_BYTES} bytes, this is {len(raw)}")
    epk, nonce, body = raw[:32], raw[32:32 + NONCE_BYTES], raw[32 + NONCE_BYTES:]
    rpk = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(epk))
        kek = _kek(shared, epk, rpk, store, gateway)
        return ChaCha20Poly1305(kek).decrypt(nonce, body, LABEL)
    except (InvalidTag, ValueError) as exc:
        raise SealError("the content key does not open with this gateway's key "
                        "(sealed to an older key of this gateway?)") from exc


class RecordSealer:
    """Seals (central) or opens (gateway) the secret of each record of one command."""

    def __init__(self, cek: bytes) -> None:
        if len(cek) != KEY_BYTES:
            raise SealError("a content key is 32 bytes")
        self._aead = ChaCha20Poly1305(cek)

    def seal(self, secret: bytes, aad: bytes, rand: Callable[[int], bytes]) -> str:
        nonce = rand(NONCE_BYTES)
        return b64e(nonce + self._aead.encrypt(nonce, secret, aad))

    def open(self, sealed: str, aad: bytes) -> bytes:
        try:
            raw = b64d(sealed)
        except ValueError as exc:
            raise SealError("not base64url") from exc
        if len(raw) < NONCE_BYTES + 16:
            raise SealError("too short to be sealed")
        try:
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
        except InvalidTag as exc:
            raise SealError("does not open (tampered, or moved to another record)") from exc
