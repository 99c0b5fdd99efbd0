"""A simulated checkout lane: receipts with ground truth, as the lane's devices emit them.

ESC/POS printer jobs (CP866 text with ``ESC t``, a raster logo, a native fiscal QR, a
cut), CD5220 pole display updates and barcode scanner codes, byte for byte, for the
tests, the benchmark and the demo. Deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

ESC: Final = b"\x1b"
GS: Final = b"\x1d"
WIDTH: Final = 42
PRODUCTS: Final = (
    ("Молоко 3.2% 1л", 8990, 1000), ("Хлеб Бородинский", 4550, 1000),
    ("Яблоки Гала кг", 12900, 1254), ("Сыр Российский 200г", 21900, 1000),
    ("Кофе зерновой 1кг", 149900, 1000), ("Бананы кг", 9990, 1730),
    ("Вода питьевая 1.5л", 5900, 6000), ("Шоколад горький", 11990, 2000),
    ("Пакет-майка", 500, 1000), ("Телевизор 55\"", 6499000, 1000),
)


@dataclass(frozen=True, slots=True)
class SimItem:
    name: str
    price_minor: int
    quantity_milli: int
    discount_minor: int = 0
    ean: str = ""

    @property
    def amount_minor(self) -> int:
        return (self.price_minor * self.quantity_milli + 500) // 1000


@dataclass(frozen=True, slots=True)
class SimReceipt:
    number: str
    cashier: str
    items: tuple[SimItem, ...]
    cash_minor: int
    card_minor: int
    loyalty: str | None = None
    offers: tuple[str, ...] = ()
    when: str = "20261128T1015"
    fiscal: dict[str, str] = field(default_factory=dict)

    @property
    def total_minor(self) -> int:
        return sum(i.amount_minor - i.discount_minor for i in self.items)


def money(minor: int) -> str:
    return f"{minor // 100}.{minor % 100:02d}"


def qty(milli: int) -> str:
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli / 1000:.3f}"


def _ean13(rng: random.Random) -> str:
    digits = [rng.randrange(10) for _ in range(12)]
    check = (10 - sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits)) % 10) % 10
    return "".join(map(str, digits)) + str(check)


def random_receipt(rng: random.Random, number: int) -> SimReceipt:
    items = []
    for _ in range(rng.randint(1, 8)):
        name, price, q = rng.choice(PRODUCTS)
        disc = 0
        if rng.random() < 0.2:
            disc = (price * q // 1000) // 10  # 10 % off
        items.append(SimItem(name, price, q, disc, _ean13(rng)))
    total = sum(i.amount_minor - i.discount_minor for i in items)
    if rng.random() < 0.5:
        cash, card = (total + 99) // 100 * 100 + rng.choice((0, 500, 1000)), 0
    else:
        cash, card = 0, total
    loyalty = f"LOY{rng.randrange(10 ** 9):09d}" if rng.random() < 0.6 else None
    offers = (f"SGO1.{rng.randrange(16 ** 12):012x}",) if rng.random() < 0.3 else ()
    fiscal = {"fn": f"{rng.randrange(10 ** 16):016d}", "i": str(number),
              "fp": f"{rng.randrange(10 ** 10):010d}"}
    return SimReceipt(str(number), rng.choice(("Иванова А.", "Петров С.", "Сидоренко О.")),
                      tuple(items), cash, card, loyalty, offers, fiscal=fiscal)


def _line(left: str, right: str = "") -> str:
    return left + " " * max(WIDTH - len(left) - len(right), 1) + right


def receipt_lines(r: SimReceipt) -> list[str]:
    """The text of the receipt as printed (what a template must read)."""
    out = ['        ООО "Ромашка"', "   Магазин №42, ул. Ленина, 1", "ИНН 7701234567",
           "КАССОВЫЙ ЧЕК ПРИХОД", _line(f"ЧЕК № {r.number}", "28.11.26 10:15"),
           f"Кассир: {r.cashier}", "-" * WIDTH]
    for i in r.items:
        out.append(i.name)
        out.append(_line(f"  {qty(i.quantity_milli)} x {money(i.price_minor)}",
                         f"={money(i.amount_minor)}"))
        if i.discount_minor:
            out.append(_line("СКИДКА", f"-{money(i.discount_minor)}"))
    out.append("-" * WIDTH)
    out.append(_line("ИТОГ", f"={money(r.total_minor)}"))
    if r.cash_minor:
        out.append(_line("НАЛИЧНЫМИ", f"={money(r.cash_minor)}"))
    if r.card_minor:
        out.append(_line("БЕЗНАЛИЧНЫМИ", f"={money(r.card_minor)}"))
    change = r.cash_minor + r.card_minor - r.total_minor
    if change:
        out.append(_line("СДАЧА", f"={money(change)}"))
    if r.loyalty:
        out.append(f"Карта лояльности: {r.loyalty}")
    out.append("СПАСИБО ЗА ПОКУПКУ!")
    return out


def fiscal_qr(r: SimReceipt) -> str:
    f = r.fiscal
    return (f"t={r.when}&s={money(r.total_minor)}&fn={f.get('fn', '0')}&i={f.get('i', '0')}"
            f"&fp={f.get('fp', '0')}&n=1")


def escpos_job(r: SimReceipt, *, rng: random.Random | None = None,
               encoding: str = "cp866") -> bytes:
    """The bytes the POS sends the receipt printer for one receipt."""
    rng = rng or random.Random(int(r.number))
    out = bytearray(ESC + b"@" + ESC + b"t" + bytes([17 if encoding == "cp866" else 0]))
    # a logo: raster bit image whose data contains every byte value, ESC and GS included
    w, h = 12, 24
    out += GS + b"v0\x00" + bytes([w, 0, h, 0]) + bytes(rng.randrange(256) for _ in range(w * h))
    out += ESC + b"a\x01" + ESC + b"E\x01"
    lines = receipt_lines(r)
    for n, line in enumerate(lines):
        if n == 1:
            out += ESC + b"E\x00" + ESC + b"a\x00"
        if line.startswith("ИТОГ"):
            out += GS + b"!\x11"  # double size, as tills print totals
        out += line.encode(encoding, "replace") + b"\n"
        if line.startswith("ИТОГ"):
            out += GS + b"!\x00"
    qr = fiscal_qr(r).encode()
    out += GS + b"(k\x04\x00\x31\x41\x32\x00"  # model 2
    out += GS + b"(k\x03\x00\x31\x43\x05"  # module size
    n = len(qr) + 3
    out += GS + b"(k" + bytes([n & 0xFF, n >> 8]) + b"\x31\x50\x30" + qr  # store
    out += GS + b"(k\x03\x00\x31\x51\x30"  # print
    out += b"\n" + GS + b"k\x02" + (r.items[0].ean.encode() if r.items else b"0") + b"\x00"
    out += b"\n\n\n" + GS + b"V\x42\x03"  # feed and partial cut
    return bytes(out)


def display_updates(r: SimReceipt, encoding: str = "cp866") -> list[bytes]:
    """CD5220 updates while the receipt is rung up: one per item, then the total."""
    out = [ESC + b"@" + b"\x0c"]
    for i in r.items:
        lower = _fit(f"{qty(i.quantity_milli)} x {money(i.price_minor)}", money(i.amount_minor))
        out.append(ESC + b"QA" + i.name[:20].encode(encoding, "replace") + b"\r"
                   + ESC + b"QB" + lower.encode(encoding, "replace") + b"\r")
    out.append(ESC + b"QA" + _fit("ИТОГО", "").encode(encoding) + b"\r"
               + ESC + b"QB" + _fit("", money(r.total_minor)).encode(encoding) + b"\r")
    return out


def _fit(left: str, right: str) -> str:
    return (left + " " * max(20 - len(left) - len(right), 1) + right)[:20]


def scanner_codes(r: SimReceipt, suffix: bytes = b"\r") -> list[bytes]:
    """What the lane's scanner sends: products (EAN-13, AIM ]E0), loyalty card, offers."""
    out = [b"]E0" + i.ean.encode() + suffix for i in r.items]
    if r.loyalty:
        out.insert(min(1, len(out)), b"]C0" + r.loyalty.encode() + suffix)
    out.extend(b"]Q1" + o.encode() + suffix for o in r.offers)
    return out
