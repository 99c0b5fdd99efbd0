"""Realistic printed receipt streams, with ground truth, reproducible by seed. Pure.

Written from the layouts stores print (docs/pos.md, "Receipt layouts", names the
sources), not from storegate's templates: the templates must read these, not the other
way round. Two families:

* ``ru``: Russian fiscal receipts (54-FZ), FFD 1.05 and 1.2, as Shtrih-M, ATOL,
  Evotor-class registers print them: the calculation sign (ПРИХОД, ВОЗВРАТ ПРИХОДА),
  items on one, two or three lines, with or without a number, the unit of measure
  (FFD 1.2: шт., кг, л, м, упак), weighed items, per-item VAT lines, payment-method and
  subject lines (ПОЛНЫЙ РАСЧЕТ, ТОВАР), marked goods ([М], [М+]), item and receipt
  discounts, ИТОГ or ИТОГО, amounts with '=' or '≡', thousands with spaces, decimal
  point or comma, Latin or Cyrillic x/х, per-receipt VAT sums, the fiscal footer;
* ``en``: US and EU (UK/IE) layouts: an item per line with a tax flag, ``2 @ 3.49`` on
  the line before the item, weighed items (``0.735 kg @ 2.99/kg``), coupons and
  multi-buy savings, SUBTOTAL, TAX lines added on top (US) or VAT included (EU), TOTAL,
  card tenders with a masked PAN, CHANGE, currency signs, thousands with commas.

Every family also prints reprints (КОПИЯ ЧЕКА / DUPLICATE) and cancelled receipts,
handled by the lane as before (not a new purchase; a void).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final, Literal

ESC: Final = b"\x1b"
GS: Final = b"\x1d"
Family = Literal["ru", "en"]
FAMILIES: Final[tuple[Family, ...]] = ("ru", "en")
LAYOUTS: Final[dict[Family, tuple[str, ...]]] = {
    "ru": ("ru-ffd105-shtrih", "ru-ffd12-atol", "ru-ffd12-wide", "ru-ffd12-evotor"),
    "en": ("en-us-grocery", "en-us-pharmacy", "en-eu-grocery"),
}
ENCODING: Final[dict[Family, str]] = {"ru": "cp866", "en": "cp858"}
_CODE_PAGE: Final[dict[str, int]] = {"cp866": 17, "cp858": 19, "cp437": 0}

# name, price (minor units), unit, weighed, VAT %, marked (Честный ЗНАК)
_RU_GOODS: Final = (
    ("Молоко 3,2% 1л", 8990, "шт.", False, 10, True), ("Хлеб Бородинский", 4550, "шт.", False,
                                                         10, False),
    ("Яблоки Гала", 12990, "кг", True, 10, False), ("Сыр Российский 200г", 21990, "шт.",
                                                     False, 10, False),
    ("Кофе зерновой 1кг", 149900, "шт.", False, 20, False),
    ("Бананы", 9990, "кг", True, 10, False), ("Вода питьевая 1,5л", 5990, "шт.", False, 20,
                                              True),
    ("Шоколад горький 85%", 11990, "шт.", False, 20, False),
    ("Пакет-майка", 500, "шт.", False, 20, False), ("Телевизор 55\" UHD", 6499000, "шт.",
                                                    False, 20, False),
    ("Квас разливной", 8900, "л", True, 20, False), ("Кабель ПВС 2х1,5", 6450, "м", True, 20,
                                                     False),
    ("Салфетки влажные", 12900, "упак", False, 20, False),
    ("Сигареты Ява", 18900, "шт.", False, 20, True), ("Обувь кроссовки муж.", 459900, "шт.",
                                                      False, 20, True),
    ("Колбаса Докторская", 69900, "кг", True, 10, False),
    ("Пиво светлое 0,5л", 9900, "шт.", False, 20, True),
)
_EN_GOODS: Final = (
    ("MILK 2% GAL", 349, "", False), ("BREAD WHEAT", 299, "", False),
    ("BANANAS", 59, "lb", True), ("EGGS LARGE 12CT", 429, "", False),
    ("COFFEE GROUND 12OZ", 899, "", False), ("APPLES GALA", 199, "lb", True),
    ("PAPER TOWELS 6PK", 1199, "", False), ("TV 55IN 4K", 49999, "", False),
    ("SHAMPOO 400ML", 649, "", False), ("CHICKEN BREAST", 549, "lb", True),
    ("SPARKLING WATER 12PK", 599, "", False), ("BLENDER PRO 1200W", 12999, "", False),
)
_CASHIERS: Final = ("Иванова А.", "Петров С.С.", "Сидоренко О.", "Кузнецова М.В.")
_EN_CASHIERS: Final = ("DANA", "MIKE R", "ALEX", "PRIYA S")


@dataclass(frozen=True, slots=True)
class TrueItem:
    name: str  # as a template should read it: no number, no [М] mark
    quantity_milli: int
    unit_price_minor: int
    amount_minor: int
    discount_minor: int = 0


@dataclass(frozen=True, slots=True)
class GenReceipt:
    """One printed receipt and what it says."""

    family: Family
    layout: str
    lines: tuple[str, ...]
    items: tuple[TrueItem, ...]
    total_minor: int
    discount_minor: int = 0  # receipt level
    tax_added_minor: int = 0
    kind: Literal["sale", "return"] = "sale"
    copy: bool = False
    void: bool = False
    number: str = ""
    qr: str | None = None  # the fiscal QR's text (ru)
    tenders: tuple[tuple[str, int], ...] = field(default=())


def _amount(price: int, qty_milli: int) -> int:
    return (price * qty_milli + 500) // 1000


def _digits(minor: int, *, comma: bool = False, thousands: str = "") -> str:
    whole, frac = divmod(abs(minor), 100)
    w = f"{whole:,}".replace(",", thousands) if thousands else str(whole)
    return f"{'-' if minor < 0 else ''}{w}{',' if comma else '.'}{frac:02d}"


def _qty(milli: int, *, comma: bool = False, always3: bool = False) -> str:
    if milli % 1000 == 0 and not always3:
        return str(milli // 1000)
    s = f"{milli // 1000}.{milli % 1000:03d}"
    return s.replace(".", ",") if comma else s


def _pad(left: str, right: str, width: int) -> str:
    return left + " " * max(width - len(left) - len(right), 1) + right


@dataclass(frozen=True, slots=True)
class _RuStyle:
    width: int
    comma: bool  # decimal comma
    thousands: str  # "" or " "
    eq: str  # "=" or "≡"
    times: str  # "x", "х", "X", "*"
    units: bool  # FFD 1.2: the unit of measure is printed
    numbered: bool
    item_lines: int  # 1: all on one line; 2: name / qty x price =amount; 3: ... / =amount
    price_first: bool  # "89.90 х 2 шт." (Evotor-class)
    vat_per_item: bool
    method_lines: bool  # ПОЛНЫЙ РАСЧЕТ / ТОВАР under each item
    total_word: str  # ИТОГ / ИТОГО / ИТОГО:
    always3: bool  # quantities always with three decimals ("1.000")


def _ru_style(layout: str, rng: random.Random) -> _RuStyle:
    comma = rng.random() < 0.4
    thousands = " " if rng.random() < 0.5 else ""
    eq = rng.choice(("=", "≡"))
    times = rng.choice(("x", "х", "X", "*"))
    total_word = rng.choice(("ИТОГ", "ИТОГО", "ИТОГО:"))
    if layout == "ru-ffd105-shtrih":
        return _RuStyle(rng.choice((32, 36, 40)), comma, thousands, eq, times, False, False, 2,
                        False, rng.random() < 0.5, False, total_word, rng.random() < 0.5)
    if layout == "ru-ffd12-atol":
        return _RuStyle(rng.choice((42, 48)), comma, thousands, eq, times, True, True,
                        rng.choice((2, 3)), False, True, True, total_word, False)
    if layout == "ru-ffd12-wide":
        return _RuStyle(rng.choice((48, 56)), comma, thousands, eq, times, True, False, 1,
                        False, rng.random() < 0.5, rng.random() < 0.3, total_word, False)
    return _RuStyle(rng.choice((32, 42)), comma, thousands, eq, times, True,
                    rng.random() < 0.5, 2, True, True, rng.random() < 0.5, total_word, False)


def _ru_receipt(layout: str, rng: random.Random, number: int) -> GenReceipt:
    st = _ru_style(layout, rng)
    w = st.width

    def money(minor: int) -> str:
        return st.eq + _digits(minor, comma=st.comma, thousands=st.thousands)

    is_return = rng.random() < 0.04
    cashier = rng.choice(_CASHIERS)
    lines = [_center('ООО "Ромашка"', w), _center("г. Москва, ул. Ленина, д. 1", w),
             "ИНН 7701234567", _center("КАССОВЫЙ ЧЕК", w),
             _center("ВОЗВРАТ ПРИХОДА" if is_return else "ПРИХОД", w),
             _pad(rng.choice(("ЧЕК №", "Чек №")) + f" {number}", "28.11.26 10:15", w),
             f"Смена № {number // 100 + 1}",
             rng.choice(("Кассир: ", "Кассир ", "КАССИР: ")) + cashier]
    items: list[TrueItem] = []
    vat: dict[int, int] = {}
    for k in range(rng.randint(1, 9)):
        name, price, unit, weighed, rate, marked = rng.choice(_RU_GOODS)
        q = rng.randint(120, 2500) if weighed else \
            1000 * rng.choice((1, 1, 1, 1, 2, 2, 3, 5, 10))
        amount = _amount(price, q)
        disc = 0
        if rng.random() < 0.15 and amount >= 100:
            disc = amount * rng.choice((5, 10, 15, 20)) // 100
        items.append(TrueItem(name, q, price, amount, disc))
        vat[rate] = vat.get(rate, 0) + (amount - disc) * rate // (100 + rate)
        mark = ""
        if marked and st.units:
            mark = rng.choice(("[М] ", "[М+] ", "[M] "))
        label = (f"{k + 1}. " if st.numbered else "") + mark + name
        qty = _qty(q, comma=st.comma, always3=st.always3 or weighed)
        unit_s = f" {unit}" if st.units else ""
        price_s = _digits(price, comma=st.comma, thousands=st.thousands)
        calc = (f"{price_s} {st.times} {qty}{unit_s}" if st.price_first
                else f"{qty}{unit_s} {st.times} {price_s}")
        if st.item_lines == 1:
            left = f"{label} {calc}"
            if len(left) + len(money(amount)) + 1 > w:  # too long: the name wraps
                lines.append(label)
                lines.append(_pad("  " + calc, money(amount), w))
            else:
                lines.append(_pad(left, money(amount), w))
        elif st.item_lines == 2:
            lines.append(label)
            lines.append(_pad("  " + calc, money(amount), w))
        else:
            lines.append(label)
            lines.append("  " + calc)
            lines.append(_pad("", money(amount), w))
        if disc:
            digits = _digits(disc, comma=st.comma, thousands=st.thousands)
            lines.append(_pad(rng.choice(("  Скидка", "СКИДКА", "  скидка")),
                              rng.choice(("-" + digits, money(disc), st.eq + "-" + digits)),
                              w))
        if st.vat_per_item:
            lines.append(_pad(f"  НДС {rate}%", money((amount - disc) * rate // (100 + rate)),
                              w))
        if st.method_lines:
            lines.append("  " + rng.choice(("ПОЛНЫЙ РАСЧЕТ", "Полный расчет")))
            lines.append("  " + rng.choice(("ТОВАР", "Товар")))
    receipt_disc = 0
    subtotal = sum(i.amount_minor - i.discount_minor for i in items)
    lines.append("-" * w)
    if rng.random() < 0.1 and subtotal > 1000:
        receipt_disc = subtotal * 5 // 100
        lines.append(_pad("ПОДЫТОГ", money(subtotal), w))
        lines.append(_pad(rng.choice(("СКИДКА НА ЧЕК", "Скидка на чек")), money(receipt_disc),
                          w))
    total = subtotal - receipt_disc
    lines.append(_pad(st.total_word, money(total), w))
    tenders: list[tuple[str, int]] = []
    change = 0
    if rng.random() < 0.45 and not is_return:
        cash = (total + 9999) // 10000 * 10000 if rng.random() < 0.5 else total
        tenders.append(("cash", cash))
        change = cash - total
        lines.append(_pad("НАЛИЧНЫМИ", money(cash), w))
    else:
        tenders.append(("card", total))
        lines.append(_pad(rng.choice(("БЕЗНАЛИЧНЫМИ", "ЭЛЕКТРОННЫМИ")), money(total), w))
    if change:
        lines.append(_pad("СДАЧА", money(change), w))
    for rate in sorted(vat, reverse=True):
        lines.append(_pad(rng.choice((f"СУММА НДС {rate}%", f"НДС {rate}%",
                                      f"в т.ч. НДС {rate}%")), money(vat[rate]), w))
    if rng.random() < 0.5:
        lines.append(f"Карта: {rng.randrange(10 ** 12, 10 ** 13)}")
    fn = f"{rng.randrange(10 ** 15, 10 ** 16)}"
    fd, fp = str(rng.randrange(1, 99999)), f"{rng.randrange(10 ** 9, 10 ** 10)}"
    lines += [rng.choice(("СНО: ОСН", "СНО ОСН")), f"РН ККТ: {rng.randrange(10 ** 15):016d}",
              f"ЗН ККТ: {rng.randrange(10 ** 13):014d}", f"ФН: {fn}", f"ФД: {fd}",
              f"ФП: {fp}", "Сайт ФНС: www.nalog.gov.ru", _center("СПАСИБО ЗА ПОКУПКУ!", w)]
    qr = (f"t=20261128T1015&s={_digits(total)}&fn={fn}&i={fd}&fp={fp}"
          f"&n={2 if is_return else 1}")
    return GenReceipt("ru", layout, tuple(lines), tuple(items), total, receipt_disc, 0,
                      "return" if is_return else "sale", number=str(number), qr=qr,
                      tenders=tuple(tenders))


def _center(text: str, width: int) -> str:
    return text.center(width).rstrip()


def _en_receipt(layout: str, rng: random.Random, number: int) -> GenReceipt:
    eu = layout.startswith("en-eu")
    w = rng.choice((40, 42, 48))
    sign = rng.choice(("£", "€")) if eu else rng.choice(("", "", "$"))

    def money(minor: int) -> str:
        return ("-" if minor < 0 else "") + sign + _digits(abs(minor), thousands=",")

    is_return = rng.random() < 0.03
    lines = [_center(rng.choice(("WALLY'S MART", "CORNER PHARMACY", "FRESHWAY FOODS")), w),
             _center("123 MAIN ST, SPRINGFIELD", w)]
    if is_return:
        lines.append(_center(rng.choice(("*** REFUND ***", "RETURN")), w))
    trans = f"{number:06d}"
    if layout == "en-us-grocery":
        lines.append(f"ST# 0042 OP# {rng.randrange(1000):06d} TE# 07 TR# {trans}")
    else:
        lines.append(rng.choice(("RECEIPT NO: ", "RECEIPT #", "TRANS #")) + trans)
        lines.append(rng.choice(("CASHIER: ", "OPERATOR: ")) + rng.choice(_EN_CASHIERS))
    lines.append("-" * w)
    items: list[TrueItem] = []
    taxable = 0
    for _ in range(rng.randint(1, 10)):
        name, price, unit, weighed = rng.choice(_EN_GOODS)
        flag = rng.choice((" F", " T", " N")) if not eu else rng.choice((" A", " B", ""))
        if eu and unit == "lb":
            unit, price = "kg", price * 2
        if weighed:
            q = rng.randint(150, 3000)
            amount = _amount(price, q)
            lines.append(name)
            lines.append(f"  {_qty(q, always3=True)} {unit} @ {money(price)}/{unit}")
            lines.append(_pad("", money(amount) + flag, w))
        else:
            q = 1000 * rng.choice((1, 1, 1, 1, 2, 2, 3, 4))
            amount = _amount(price, q)
            if q != 1000 and (eu or rng.random() < 0.5):
                if eu:
                    lines.append(_pad(f"{q // 1000} x {name} @ {money(price)}",
                                      money(amount) + flag, w))
                else:
                    lines.append(f"  {q // 1000} @ {money(price)}")
                    lines.append(_pad(name, money(amount) + flag, w))
            elif q != 1000:
                lines.append(_pad(f"{name}  {q // 1000} @ {money(price)}", money(amount) + flag,
                                  w))
            else:
                lines.append(_pad(name, money(amount) + flag, w))
        disc = 0
        if rng.random() < 0.12 and amount >= 200:
            disc = rng.choice((50, 100, amount // 10))
            word = rng.choice(("MULTIBUY SAVING", "PROMO SAVING")) if eu else \
                rng.choice(("COUPON", "SAVINGS", "INSTANT SAVINGS"))
            lines.append(_pad(f"  {word}", money(-disc) if rng.random() < 0.6
                              else money(disc) + "-", w))
        if flag == " T":
            taxable += amount - disc
        items.append(TrueItem(name, q, price, amount, disc))
    subtotal = sum(i.amount_minor - i.discount_minor for i in items)
    tax = 0 if eu else (taxable * 7 + 50) // 100
    total = subtotal + tax
    lines.append(_pad(rng.choice(("SUBTOTAL", "SUB TOTAL", "  SUBTOTAL")), money(subtotal), w))
    if not eu:
        lines.append(_pad(rng.choice(("TAX 1 7.000 %", "SALES TAX 7%", "TAX")), money(tax), w))
    lines.append(_pad(rng.choice(("TOTAL", "TOTAL TO PAY", "BALANCE DUE", "  TOTAL"))
                      if eu else rng.choice(("TOTAL", "  TOTAL", "TOTAL DUE")), money(total), w))
    tenders: list[tuple[str, int]] = []
    if rng.random() < 0.4:
        cash = (total + 999) // 1000 * 1000 if rng.random() < 0.7 else total
        tenders.append(("cash", cash))
        lines.append(_pad("CASH", money(cash), w))
        lines.append(_pad(rng.choice(("CHANGE", "CHANGE DUE")), money(cash - total), w))
    else:
        brand = rng.choice(("VISA", "MASTERCARD", "AMEX", "DEBIT"))
        pan = "*" * rng.choice((12, 4)) + f"{rng.randrange(10000):04d}"
        tenders.append(("card", total))
        if layout == "en-us-grocery":
            lines.append(_pad(f"{brand} TEND", money(total), w))
            lines.append(f"{brand}  {pan}")
            lines.append(f"APPROVAL # {rng.randrange(10 ** 6):06d}")
        else:
            lines.append(_pad(f"{brand} {pan}", money(total), w))
            lines.append(f"AUTH CODE: {rng.randrange(10 ** 6):06d}")
        if rng.random() < 0.5:
            lines.append(_pad("CHANGE DUE", money(0), w))
    if eu:
        vat = total * 20 // 120
        lines.append(_pad("VAT 20.00% INCLUDED", money(vat), w))
    if rng.random() < 0.5:
        lines.append(f"MEMBER # {rng.randrange(10 ** 9, 10 ** 10)}")
    lines += [f"# ITEMS SOLD {len(items)}", "11/28/26 10:15:07",
              _center("THANK YOU FOR SHOPPING", w)]
    return GenReceipt("en", layout, tuple(lines), tuple(items), total, 0, tax,
                      "return" if is_return else "sale", number=trans, tenders=tuple(tenders))


def generate(family: Family, n: int, seed: int, *, reprints: float = 0.02,
             voids: float = 0.01) -> list[GenReceipt]:
    """``n`` receipts of ``family``, every layout of it, the same for the same seed. About
    ``reprints`` of them are followed by their reprint and ``voids`` are cancelled."""
    rng = random.Random(f"{family}:{seed}")
    out: list[GenReceipt] = []
    layouts = LAYOUTS[family]
    make = _ru_receipt if family == "ru" else _en_receipt
    for k in range(n):
        layout = layouts[k % len(layouts)] if k < len(layouts) else rng.choice(layouts)
        r = make(layout, rng, 1000 + k)
        roll = rng.random()
        if roll < voids:
            r = _voided(r)
        out.append(r)
        if voids <= roll < voids + reprints:
            out.append(_reprint(r))
    return out


def _reprint(r: GenReceipt) -> GenReceipt:
    word = "КОПИЯ ЧЕКА" if r.family == "ru" else "*** DUPLICATE RECEIPT ***"
    return GenReceipt(r.family, r.layout, (word, *r.lines), r.items, r.total_minor,
                      r.discount_minor, r.tax_added_minor, r.kind, True, r.void, r.number, r.qr,
                      r.tenders)


def _voided(r: GenReceipt) -> GenReceipt:
    word = "ЧЕК АННУЛИРОВАН" if r.family == "ru" else "VOIDED TRANSACTION"
    cut = max(1, len(r.lines) // 2)
    return GenReceipt(r.family, r.layout, (*r.lines[:cut], word), r.items, r.total_minor,
                      r.discount_minor, r.tax_added_minor, r.kind, False, True, r.number, None,
                      r.tenders)


def escpos(r: GenReceipt, rng: random.Random | None = None) -> bytes:
    """The bytes the POS sends the printer for this receipt: init, code page, a raster
    logo, bold header, double-size total, the fiscal QR (ru), feed and cut."""
    rng = rng or random.Random(r.number)
    enc = ENCODING[r.family]
    out = bytearray(ESC + b"@" + ESC + b"t" + bytes((_CODE_PAGE[enc],)))
    w, h = 8, 16
    out += GS + b"v0\x00" + bytes((w, 0, h, 0)) + bytes(rng.randrange(256) for _ in range(w * h))
    out += ESC + b"E\x01"
    for n, line in enumerate(r.lines):
        if n == 2:
            out += ESC + b"E\x00"
        big = line.lstrip().startswith(("ИТОГ", "TOTAL"))
        if big:
            out += GS + b"!\x11"
        # CP866 has no '≡' (0xF0 is 'Ё'): a driver sending ESC/POS text prints '='
        out += line.replace("≡", "=").encode(enc, "replace") + b"\n"
        if big:
            out += GS + b"!\x00"
    if r.qr:
        qr = r.qr.encode()
        size = len(qr) + 3
        out += GS + b"(k" + bytes((size & 0xFF, size >> 8)) + b"\x31\x50\x30" + qr
        out += GS + b"(k\x03\x00\x31\x51\x30"
    out += b"\n\n\n" + GS + b"V\x42\x03"
    return bytes(out)
