"""The QR code of a Russian fiscal receipt: ``t=20261128T1015&s=1234.56&fn=…&i=…&fp=…&n=1``.

Pure: text in, the fiscal sign (or None when the text is not such a QR) out.
"""

from __future__ import annotations

import re
from typing import Final

from storegate.core.payloads import FiscalSign
from storegate.core.pos.template import parse_money

_TIME: Final = re.compile(r"^\d{8}T\d{4}(\d{2})?$")
_DIGITS: Final = re.compile(r"^\d{1,20}$")


def parse_fiscal_qr(text: str) -> FiscalSign | None:
    fields: dict[str, str] = {}
    for part in text.strip().split("&"):
        key, sep, value = part.partition("=")
        if not sep:
            return None
        fields[key.strip().lower()] = value.strip()
    try:
        t, s, fn, i, fp, n = (fields[k] for k in ("t", "s", "fn", "i", "fp", "n"))
    except KeyError:
        return None
    total = parse_money(s)
    if (not _TIME.match(t) or total is None or not all(_DIGITS.match(v) for v in (fn, i, fp))
            or not n.isdigit() or not 1 <= int(n) <= 4):
        return None
    return FiscalSign(fn=fn, fd=i, fp=fp, operation=int(n), issued_at=t, total_minor=total)
