"""Keyed pseudonyms for the personal data a lane reads: loyalty card numbers, cashiers.

A loyalty card number or a cashier's name identifies a person; published as read, it
would sit in clear in the outbox, the broker's persistence file and every subscriber.
What leaves the box instead is ``ps1:`` + the first 128 bits (32 hex digits) of
HMAC-SHA256(key, "<kind>:" + value), with a key central provides: central, holding the
same key, computes the same pseudonym from its own customer records and still joins
purchases to profiles; anyone without the key learns nothing (a 128-bit keyed hash
cannot be reversed, nor checked against a list of card numbers).

The kind prefix separates domains: a cashier named like a card number does not get
the card's pseudonym. The value is hashed exactly as read (UTF-8), so central must
normalise the same way the till prints or scans it.

Without a key, and without the explicit raw opt-in for a field, the field is withheld
(null) and the caller counts it: never the raw value by default. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Final, Literal

PREFIX: Final = "ps1:"
MIN_KEY_BYTES: Final = 16  # 128 bits: below that a key could be searched for
PSEUDONYM_BITS: Final = 128

Kind = Literal["loyalty", "operator"]


def pseudonym(key: bytes, kind: Kind, value: str) -> str:
    """The published stand-in for ``value``: stable for one key, unlinkable without it."""
    mac = hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).digest()
    return PREFIX + mac[: PSEUDONYM_BITS // 8].hex()


def parse_key(text: str) -> bytes:
    """A key as configured: hex (64 digits for 32 bytes) or base64. Raises ValueError
    with a message that never repeats the key."""
    s = text.strip()
    key: bytes | None = None
    try:
        key = bytes.fromhex(s)
    except ValueError:
        try:
            key = base64.b64decode(s, validate=True)
        except (binascii.Error, ValueError):
            key = None
    if key is None:
        raise ValueError("not hex or base64")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"too short: {len(key)} bytes, at least {MIN_KEY_BYTES} needed "
                         "(32 random bytes recommended)")
    return key


@dataclass(frozen=True, slots=True)
class PersonalData:
    """What to publish for personal fields. ``key`` None: no pseudonyms possible."""

    key: bytes | None = None
    raw_loyalty_ids: bool = False
    raw_operator_names: bool = False

    def loyalty(self, value: str | None) -> str | None:
        return self._publish("loyalty", value, self.raw_loyalty_ids)

    def operator(self, value: str | None) -> str | None:
        return self._publish("operator", value, self.raw_operator_names)

    def withholds(self, kind: Kind) -> bool:
        """True when a value of this kind would be published as null."""
        raw = self.raw_loyalty_ids if kind == "loyalty" else self.raw_operator_names
        return not raw and self.key is None

    def _publish(self, kind: Kind, value: str | None, raw: bool) -> str | None:
        if value is None or raw:
            return value
        if self.key is None:
            return None
        return pseudonym(self.key, kind, value)


WITHHELD: Final = PersonalData()  # no key, no raw opt-in: personal fields are null
