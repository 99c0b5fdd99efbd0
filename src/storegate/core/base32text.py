"""Binary codes as QR-friendly text: RFC 4648 base32, upper case, no padding (QR
alphanumeric mode carries it at 5.5 bits a character). Offer tokens and zone posters
use it; both accept exactly one spelling of each code."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

_BASE32: Final = re.compile(r"[A-Z2-7]+")


def encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=")


def decode_canonical(body: str) -> bytes | None:
    """The bytes ``body`` spells, or None unless it is their one canonical spelling
    (upper case, no padding, the unused low bits of the last character zero): a code
    changed in a bit the decoder would ignore is not another valid code."""
    if not _BASE32.fullmatch(body):
        return None
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except (binascii.Error, ValueError):
        return None
    return raw if encode(raw) == body else None
