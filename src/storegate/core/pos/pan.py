"""Card numbers on printed receipts: found so that they are never published. Pure.

A till prints the card as masked (``VISA **** **** **** 4821``, ``CARD#: ************1234``,
``girocard ############1234``), but a misconfigured layout or a test print can show the
whole number, with or without spaces. A line that carries either is a card line: never an
item, and its text never reaches an event; what is echoed to an operator is masked.
"""

from __future__ import annotations

import re
from typing import Final

# 15-19 digits, optionally grouped by single spaces or dashes (4-4-4-4, 4-6-5)
_DIGITS: Final = re.compile(r"(?<![\d.,])\d(?:[ -]?\d){14,18}(?![\d.,])")
# a masked number: at least four mask characters, then the last four digits
_MASKED: Final = re.compile(r"(?:[*Xx#•][ -]?){4,}\d{4}(?!\d)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for k, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if k % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _full(m: re.Match[str]) -> bool:
    # 15-19 digits from a card network's range (2-6: Mir, Amex, Visa, Mastercard,
    # UnionPay) that pass Luhn: not an EAN-13 printed beside an item, not a shorter id
    digits = re.sub(r"\D", "", m.group())
    return 15 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits)


def has_card_number(line: str) -> bool:
    """A full (Luhn-valid) or a masked card number on the line."""
    if _MASKED.search(line):
        return True
    return any(_full(m) for m in _DIGITS.finditer(line))


def mask_card_numbers(line: str) -> str:
    """The line with every full card number masked to its last four digits."""
    def sub(m: re.Match[str]) -> str:
        if not _full(m):
            return m.group()
        digits = re.sub(r"\D", "", m.group())
        return "*" * (len(digits) - 4) + digits[-4:]
    return _DIGITS.sub(sub, line)
