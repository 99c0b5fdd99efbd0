"""Byte-stream encoders for the fiscal dialects: what a till sends, for tests and the lane
simulator. The inverse of :mod:`storegate.core.pos.shtrih_m`, :mod:`~.atol` and
:mod:`~.stx_etx`; unlike the parsers these raise ``ValueError`` on values a device could
not send (they are driven by code, not by a line).
"""

from __future__ import annotations

from typing import Final

from storegate.core.pos import atol, shtrih_m
from storegate.core.pos.framing import crc8, xor8
from storegate.core.pos.stx_etx import StxEtxSettings

ENQ: Final = bytes((shtrih_m.ENQ,))
ACK: Final = bytes((shtrih_m.ACK,))
NAK: Final = bytes((shtrih_m.NAK,))
DEFAULT_PASSWORD: Final = 30  # Shtrih-M's factory operator password


def _uint(value: int, size: int, what: str) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise ValueError(f"{what} {value} does not fit in {size} bytes")
    return value.to_bytes(size, "little")


def _text(text: str, size: int, encoding: str, pad: bytes = b"\x00") -> bytes:
    raw = text.encode(encoding, "replace")[:size]
    return raw + pad * (size - len(raw))


# -- Shtrih-M -------------------------------------------------------------------------


def shtrih_frame(cmd: int, data: bytes) -> bytes:
    """``STX LEN CMD DATA LRC``; LRC = XOR of LEN..DATA. A two-byte command (``FF xx``)
    is sent high byte first and counted in LEN."""
    code = cmd.to_bytes(2 if cmd > 0xFF else 1, "big")
    if len(data) + len(code) > 0xFF:
        raise ValueError("Shtrih-M frames carry at most 255 command and data bytes")
    body = bytes((len(data) + len(code),)) + code + data
    return bytes((shtrih_m.STX,)) + body + bytes((xor8(body),))


def _password(password: int) -> bytes:
    return _uint(password, 4, "password")


def shtrih_sale(name: str, quantity_milli: int, price_minor: int, department: int = 1, *,
                password: int = DEFAULT_PASSWORD, is_return: bool = False,
                taxes: bytes = b"\x00\x00\x00\x00") -> bytes:
    """0x80 Sale (0x82 Return when ``is_return``)."""
    if len(taxes) != 4:
        raise ValueError("taxes is 4 tax-group bytes")
    data = (_password(password) + _uint(quantity_milli, 5, "quantity")
            + _uint(price_minor, 5, "price") + _uint(department, 1, "department") + taxes
            + _text(name, 40, shtrih_m.TEXT_ENCODING))
    return shtrih_frame(shtrih_m.RETURN if is_return else shtrih_m.SALE, data)


def shtrih_close(cash_minor: int = 0, card_minor: int = 0, other_minor: int = 0,
                 other2_minor: int = 0, *, discount_percent_centi: int = 0,
                 password: int = DEFAULT_PASSWORD, text: str = "",
                 taxes: bytes = b"\x00\x00\x00\x00") -> bytes:
    """0x85 Close receipt: sums 1..4 (cash, card, other, other), a percent discount."""
    if not -9999 <= discount_percent_centi <= 9999:
        raise ValueError("discount is -99.99..99.99 %")
    data = (_password(password)
            + b"".join(_uint(s, 5, "sum") for s in (cash_minor, card_minor, other_minor,
                                                    other2_minor))
            + discount_percent_centi.to_bytes(2, "little", signed=True) + taxes
            + _text(text, 40, shtrih_m.TEXT_ENCODING))
    return shtrih_frame(shtrih_m.CLOSE, data)


def shtrih_discount(amount_minor: int, text: str = "", password: int = DEFAULT_PASSWORD,
                    surcharge: bool = False) -> bytes:
    """0x86 Discount (0x87 Surcharge when ``surcharge``) on the last item."""
    data = (_password(password) + _uint(amount_minor, 5, "amount") + b"\x00" * 4
            + _text(text, 40, shtrih_m.TEXT_ENCODING))
    return shtrih_frame(shtrih_m.SURCHARGE if surcharge else shtrih_m.DISCOUNT, data)


def shtrih_sale_v2(name: str, quantity_milli: int, price_minor: int, department: int = 1, *,
                   is_return: bool = False, sum_minor: int | None = None,
                   password: int = DEFAULT_PASSWORD, tax_rate: int = 1, method: int = 4,
                   subject: int = 1) -> bytes:
    """0xFF46 Operation V2 (fiscal storage registers): quantity in millionths; without
    ``sum_minor`` the register computes price x quantity (FF..FF)."""
    data = (_password(password) + bytes((2 if is_return else 1,))
            + _uint(quantity_milli * 1000, 6, "quantity") + _uint(price_minor, 5, "price")
            + (_uint(sum_minor, 5, "sum") if sum_minor is not None else b"\xff" * 5)
            + b"\xff" * 5 + bytes((tax_rate,)) + _uint(department, 1, "department")
            + bytes((method, subject)) + _text(name, 40, shtrih_m.TEXT_ENCODING))
    return shtrih_frame(shtrih_m.SALE_V2, data)


def shtrih_close_v2(sums: dict[int, int], *, rounding_minor: int = 0,
                    password: int = DEFAULT_PASSWORD, text: str = "") -> bytes:
    """0xFF45 Close receipt V2: ``sums`` by payment type 1..16 (1 cash, 2-13 electronic,
    14 prepayment, 15 credit, 16 counter-provision), rounding in kopecks."""
    if not set(sums) <= set(range(1, 17)):
        raise ValueError("payment types are 1..16")
    data = (_password(password)
            + b"".join(_uint(sums.get(k, 0), 5, "sum") for k in range(1, 17))
            + _uint(rounding_minor, 1, "rounding") + b"\x00" * 30 + b"\x01"
            + _text(text, min(len(text.encode(shtrih_m.TEXT_ENCODING)), 64),
                    shtrih_m.TEXT_ENCODING))
    return shtrih_frame(shtrih_m.CLOSE_V2, data)


def shtrih_cancel(password: int = DEFAULT_PASSWORD) -> bytes:
    """0x88 Cancel the open receipt."""
    return shtrih_frame(shtrih_m.CANCEL, _password(password))


def shtrih_reply(cmd: int, error: int = 0, operator: int = DEFAULT_PASSWORD,
                 extra: bytes = b"") -> bytes:
    """The register's answer: ``CMD error`` alone on an error, else ``CMD 0 operator …``
    (``extra``: e.g. the 5-byte change after a close)."""
    data = bytes((error,)) if error else bytes((0, operator)) + extra
    return shtrih_frame(cmd, data)


# -- ATOL v3 --------------------------------------------------------------------------


def _bcd(value: int, size: int, what: str) -> bytes:
    if not 0 <= value < 10 ** (2 * size):
        raise ValueError(f"{what} {value} does not fit in {size} BCD bytes")
    return bytes.fromhex(f"{value:0{2 * size}d}")


def _stuff(raw: bytes) -> bytes:
    return raw.replace(b"\xfd", b"\xfd\xed").replace(b"\xfe", b"\xfd\xee")


def atol_frame(packet_id: int, command: bytes, *, task_id: int | None = None,
               task_flags: int = 0, password: bytes | None = b"\x00\x00") -> bytes:
    """``FE LEN0 LEN1 ID DATA CRC8``, stuffed. The device command goes after the access
    ``password`` (2 BCD bytes, as every ATOL command; None: a transport command, which
    has none); with ``task_id`` it is wrapped in an "add task" (``C1 flags task-id``)."""
    data = command if password is None else password + command
    if task_id is not None:
        data = bytes((atol.ADD_TASK, task_flags, task_id)) + data
    if len(data) >= 1 << 14:
        raise ValueError("ATOL v3 data is at most 16383 bytes")
    body = bytes((packet_id,)) + data
    body += bytes((crc8(body, atol.CRC8_POLY, atol.CRC8_INIT),))
    return bytes((atol.FE, len(data) & 0x7F, len(data) >> 7)) + _stuff(body)


def atol_item(name: str, quantity_milli: int, price_minor: int, department: int = 1,
              flags: int = 2, *, discount_minor: int = 0, tax: int = 0) -> bytes:
    """Device command 0xE6, item registration, laid out as atol4j sends it (104 bytes):
    a negative ``discount_minor`` is a surcharge."""
    return (bytes((atol.ITEM, flags)) + _text(name, atol.NAME_LEN, atol.TEXT_ENCODING)
            + _bcd(price_minor, 6, "price") + _bcd(quantity_milli, 5, "quantity")
            + bytes((1, 0 if discount_minor >= 0 else 1))
            + _bcd(abs(discount_minor), 6, "discount") + _uint(tax, 1, "tax")
            + _uint(department, 1, "department") + b"\x00" * 17)


def atol_close(sum_minor: int, tender: int = 1, flags: int = 0) -> bytes:
    """Device command 0x4A, close receipt: tender 1 cash, 2 electronic, 3 prepayment,
    4 credit, 5 other; a sum of 0 is "the receipt's sum"."""
    return bytes((atol.CLOSE, flags, tender)) + _bcd(sum_minor, 5, "sum")


def atol_cancel() -> bytes:
    """Device command 0x59, cancel the open receipt."""
    return bytes((atol.CANCEL,))


# -- generic STX/ETX ------------------------------------------------------------------


def stx_etx_frame(payload: bytes | str, settings: StxEtxSettings) -> bytes:
    """One frame as the device sends it: start, escaped payload, end, checksum."""
    raw = payload.encode(settings.encoding) if isinstance(payload, str) else payload
    if settings.escape is not None:
        esc = bytes((settings.escape,))
        body = b"".join(esc + bytes((b,)) if b in settings.literals() else bytes((b,))
                        for b in raw)
    else:
        body = raw
        for marker in (settings.start, settings.end):
            if marker in raw:
                raise ValueError(f"payload holds the marker {marker!r} and nothing escapes it")
    return (settings.start + body + settings.end
            + settings.checksum_of(settings.covered(raw)))
