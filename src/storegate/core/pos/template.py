"""Receipt templates: printed receipt lines in, the purchase they describe out.

A template is data (a TOML file per POS vendor or layout, in
``firmware-configs/pos/templates/``), a set of regular expressions with named groups:

    name = "ru-generic"
    currency = "RUB"
    [defines]                     # reusable pieces: "{{money}}" in any pattern below
    money = '[=≡]?\\s*\\d{1,3}(?:[ \\u00a0]?\\d{3})*[.,]\\d{2}'
    [fields]                      # one value each; group "value"
    receipt = '^\\s*ЧЕК\\s*№\\s*(?P<value>\\d+)'
    cashier = '...'  loyalty = '...'  total = '...'  subtotal = '...'  change = '...'
    void = '...'                  # matched anywhere: the receipt was cancelled
    copy = '...'                  # a reprint: not a new purchase
    return = '...'                # the calculation sign says return (ВОЗВРАТ ПРИХОДА)
    [[items]]                     # tried in order; each "\\n" in a pattern spans one
    pattern = '...'               # more line; groups name, amount (+ qty, price, unit)
    [[discounts]]                 # group "amount"; applies_to "item" (the one above) or
    pattern = '...'               # "receipt"
    [[markups]]                   # group "amount": a markup (НАДБАВКА, НАЦЕНКА) on the
    pattern = '...'               # item above, added to its amount (a payload has no
                                  # markup field; a receipt-level one is not modelled)
    [[taxes]]                     # group "amount"; added = true: a sales tax added on top
    pattern = '...'               # of the items (US); false (default): VAT included
    [[tenders]]                   # kind cash | card | voucher | other; group "amount"
    kind = "cash"
    pattern = '...'
    ignore = ['...']              # lines that are neither (headers, footers)

Money is parsed exactly into integer minor units ("1 234,50", "≡1 234.50", "$1,234.50"
-> 123450); a line that looks like money but does not parse is counted, never guessed.
A receipt *adds up* when it has items, a total, and the items minus their discounts,
minus receipt discounts, plus added taxes equal the total (:func:`arithmetic`). Pure:
the file itself is read by ``storegate.app.pos.read_template``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from re import _parser as _sre  # type: ignore[attr-defined]  # the pattern's own parse tree
from typing import Any, Final, Literal

from storegate.core.pos.frames import TenderKind
from storegate.core.pos.pan import has_card_number

FIELDS: Final = ("receipt", "cashier", "loyalty", "total", "void", "copy", "return",
                 "subtotal", "change")
_FLAG_FIELDS: Final = ("void", "copy", "return")
TENDER_KINDS: Final = ("cash", "card", "voucher", "other")
MAX_ITEM_LINES: Final = 6
# Bounds on what a template is applied to. The widest till paper (80 mm at font B) holds
# 64 characters and an A4 "receipt" from a back-office printer 136; a longer line is not
# a receipt line (noise, a binary dump read as text) and no pattern is tried on it, so a
# pattern's backtracking is bounded by the line, not by what a lane sends. A receipt is
# rarely over 300 lines; a job of thousands is a report or a stream without cuts.
MAX_LINE_CHARS: Final = 256
MAX_RECEIPT_LINES: Final = 2000
# An amount beyond 12 integer digits (a trillion roubles) is not a till's: not parsed
MAX_AMOUNT_DIGITS: Final = 12
MAX_QUANTITY_DIGITS: Final = 7  # ten million pieces or kilograms
MAX_PATTERN_CHARS: Final = 4000  # after {{defines}} are expanded
_MONEY: Final = re.compile(r"^([+-]?)(\d+)(?:[.,](\d{1,2}))?$")
_QTY: Final = re.compile(r"^(\d+)(?:[.,](\d{1,3}))?$")
_THOUSANDS: Final = re.compile(r"^\d{1,3}(?:[.,]\d{3})+$")
_DEFINE: Final = re.compile(r"\{\{([a-z_][a-z0-9_]*)\}\}")
# what precedes or follows an amount on a printed line and is not part of the number
_MONEY_NOISE: Final = str.maketrans("", "", " \u00a0'=≡$£€₽")

Category = Literal["item", "discount", "markup", "tender", "tax", "field", "ignored",
                   "unmatched"]


class TemplateError(ValueError):
    """A template file that cannot be used: the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def parse_money(text: str, minor_digits: int = 2) -> int | None:
    """'1 234,50' -> 123450 (minor units); None if it is not an amount.

    Spaces, a leading '=' or '≡' (Russian fiscal receipts) and currency signs are not
    part of the number. With both '.' and ',' the last one is the decimal separator and
    the others must group thousands ('1,234.50', '1.234,50'); one separator alone is
    always decimal ('12.345' is not an amount: three decimals)."""
    s = text.translate(_MONEY_NOISE)
    sign = ""
    if s[:1] in "+-" and s:
        sign, s = s[0], s[1:]
    elif s[-1:] == "-":  # "1.79-": a negative amount, as US tills print credits
        sign, s = "-", s[:-1]
    if "." in s and "," in s:
        cut = max(s.rfind("."), s.rfind(","))
        if not _THOUSANDS.match(s[:cut]):
            return None
        s = s[:cut].replace(".", "").replace(",", "") + "." + s[cut + 1:]
    m = _MONEY.match(sign + s)
    if m is None:
        return None
    sign, whole, frac = m.groups()
    if len(whole.lstrip("0")) > MAX_AMOUNT_DIGITS:
        return None
    frac = (frac or "").ljust(minor_digits, "0")[:minor_digits]
    value = int(whole) * (1, 10, 100, 1000)[minor_digits] + (int(frac) if frac else 0)
    return -value if sign == "-" else value


def parse_quantity(text: str) -> int | None:
    """'1.500' -> 1500 thousandths; '2' -> 2000."""
    m = _QTY.match(text.strip())
    if m is None:
        return None
    whole, frac = m.groups()
    if len(whole.lstrip("0")) > MAX_QUANTITY_DIGITS:
        return None
    return int(whole) * 1000 + int((frac or "").ljust(3, "0") or "0")


@dataclass(frozen=True, slots=True)
class ParsedItem:
    name: str
    quantity_milli: int
    unit_price_minor: int
    amount_minor: int
    discount_minor: int = 0


@dataclass(frozen=True, slots=True)
class LineTrace:
    """What one printed line became (``storegate pos template check``)."""

    line: int  # index in the job's lines
    category: Category
    rule: str  # e.g. "items[1]", "fields.total", "ignore[3]", "" when unmatched
    lines: int = 1  # lines the rule consumed (multi-line items)


@dataclass(slots=True)
class ParsedReceipt:
    receipt: str | None = None
    cashier: str | None = None
    loyalty: str | None = None
    total_minor: int | None = None
    subtotal_minor: int | None = None
    change_minor: int | None = None
    items: list[ParsedItem] = field(default_factory=list)
    discount_minor: int = 0  # receipt level
    tax_added_minor: int = 0  # sales tax added on top of the items
    tax_included_minor: int = 0  # VAT printed for information (already in the prices)
    tenders: list[tuple[TenderKind, int]] = field(default_factory=list)
    void: bool = False
    copy: bool = False
    is_return: bool = False
    bad_amounts: int = 0  # lines that matched a pattern but whose money did not parse
    unmatched: int = 0  # lines no pattern claimed
    long_lines: int = 0  # lines over MAX_LINE_CHARS: no pattern tried (also unmatched)
    dropped_lines: int = 0  # lines after MAX_RECEIPT_LINES: not read
    card_lines: int = 0  # lines with a card number (full or masked): never an item
    trace: list[LineTrace] | None = None  # only when asked for


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """The totals check of a parsed receipt."""

    items_minor: int  # sum of item amounts minus item discounts
    discount_minor: int  # receipt level
    tax_added_minor: int
    computed_minor: int  # items - receipt discount + added tax
    total_minor: int | None  # printed (or the fiscal QR's when none was printed)
    tendered_minor: int
    adds_up: bool  # items, a total, and computed == total (== the QR's, when there is one)
    problem: str  # "" when it adds up


def arithmetic(r: ParsedReceipt, fiscal_total_minor: int | None = None) -> Arithmetic:
    items = sum(i.amount_minor - i.discount_minor for i in r.items)
    computed = items - r.discount_minor + r.tax_added_minor
    total = r.total_minor if r.total_minor is not None else fiscal_total_minor
    tendered = sum(a for _, a in r.tenders) - (r.change_minor or 0)
    if not r.items:
        problem = "no items"
    elif total is None:
        problem = "no total"
    elif computed != total:
        problem = f"items {_fmt(computed)} != total {_fmt(total)}"
    elif fiscal_total_minor is not None and fiscal_total_minor != total:
        problem = f"fiscal QR total {_fmt(fiscal_total_minor)} != printed {_fmt(total)}"
    else:
        problem = ""
    return Arithmetic(items, r.discount_minor, r.tax_added_minor, computed, total, tendered,
                      not problem, problem)


def _fmt(minor: int) -> str:
    return f"{'-' if minor < 0 else ''}{abs(minor) // 100}.{abs(minor) % 100:02d}"


@dataclass(frozen=True, slots=True)
class _Rule:
    regex: re.Pattern[str]
    lines: int  # how many printed lines the pattern spans
    kind: str = ""  # tender kind, discount scope, "added" / "included" for taxes
    key: str = ""


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    currency: str
    minor_digits: int
    fields: dict[str, re.Pattern[str]]
    items: tuple[_Rule, ...]
    discounts: tuple[_Rule, ...]
    tenders: tuple[_Rule, ...]
    ignore: tuple[re.Pattern[str], ...]
    taxes: tuple[_Rule, ...] = ()
    description: str = ""
    # every pattern but the items' in one alternation (None when they cannot be joined):
    # one search instead of one per pattern, where only "does any claim it" matters
    any_ignore: re.Pattern[str] | None = None
    any_claim: re.Pattern[str] | None = None
    markups: tuple[_Rule, ...] = ()

    @classmethod
    def from_toml(cls, text: str) -> Template:
        try:
            data = tomllib.loads(text)
        # ValueError: also an integer over Python's 4300-digit limit; RecursionError:
        # arrays nested thousands deep. Both are a bad file, not a crash.
        except (ValueError, RecursionError) as exc:
            problem = "nested too deeply" if isinstance(exc, RecursionError) \
                else str(exc).split(";")[0]
            raise TemplateError("(file)", f"not valid TOML: {problem}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Template:
        known = {"name", "description", "currency", "minor_digits", "fields", "items",
                 "discounts", "tenders", "ignore", "taxes", "defines", "markups"}
        for key in data:
            if key not in known:
                raise TemplateError(key, "unknown key")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise TemplateError("name", "a template needs a name")
        currency = data.get("currency", "")
        if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
            raise TemplateError("currency", "an ISO 4217 code such as RUB or EUR")
        digits = data.get("minor_digits", 2)
        if not isinstance(digits, int) or not 0 <= digits <= 3:
            raise TemplateError("minor_digits", "0..3")
        defines = _defines(data.get("defines", {}))
        fields_raw = data.get("fields", {})
        if not isinstance(fields_raw, dict):
            raise TemplateError("fields", "a table of patterns")
        fields: dict[str, re.Pattern[str]] = {}
        for key, pattern in fields_raw.items():
            if key not in FIELDS:
                raise TemplateError(f"fields.{key}", f"unknown field (known: {FIELDS})")
            needs = () if key in _FLAG_FIELDS else ("value",)
            fields[key] = _compile(f"fields.{key}", pattern, needs, defines)
        items = tuple(_rule(f"items[{i}]", r, ("name", "amount"), defines)
                      for i, r in enumerate(_list(data, "items")))
        if not items:
            raise TemplateError("items", "at least one item pattern")
        discounts = tuple(_rule(f"discounts[{i}]", r, ("amount",), defines,
                                extra="applies_to", allowed=("item", "receipt"),
                                default="item")
                          for i, r in enumerate(_list(data, "discounts")))
        taxes = tuple(_rule(f"taxes[{i}]", r, ("amount",), defines, extra="added",
                            allowed=(True, False), default=False)
                      for i, r in enumerate(_list(data, "taxes")))
        tenders = tuple(_rule(f"tenders[{i}]", r, ("amount",), defines, extra="kind",
                              allowed=TENDER_KINDS)
                        for i, r in enumerate(_list(data, "tenders")))
        ignore_raw = data.get("ignore", [])
        if not isinstance(ignore_raw, list):
            raise TemplateError("ignore", "a list of patterns")
        ignore = tuple(_compile(f"ignore[{i}]", p, (), defines)
                       for i, p in enumerate(ignore_raw))
        description = data.get("description", "")
        if not isinstance(description, str):
            raise TemplateError("description", "a string")
        markups = tuple(_rule(f"markups[{i}]", r, ("amount",), defines)
                        for i, r in enumerate(_list(data, "markups")))
        claims = [*fields.values(),
                  *(r.regex for r in (*tenders, *discounts, *taxes, *markups)), *ignore]
        return cls(name, currency, digits, fields, items, discounts, tenders, ignore, taxes,
                   description, _joined(ignore), _joined(claims), markups)

    # --- applying ------------------------------------------------------------------

    def parse(self, lines: tuple[str, ...] | list[str], *, trace: bool = False) \
            -> ParsedReceipt:
        """The receipt these printed lines describe; with ``trace``, what each line
        became (``out.trace``)."""
        out = ParsedReceipt(trace=[] if trace else None)
        n = min(len(lines), MAX_RECEIPT_LINES)
        out.dropped_lines = len(lines) - n
        # dot leaders between a name and its price ("COFFEE ....... 2.75") read as the
        # spaces other layouts print there
        lines = [_LEADERS.sub(_blank, ln)
                 if len(ln) <= MAX_LINE_CHARS and ("..." in ln or ". . ." in ln) else ln
                 for ln in lines[:n]]
        # where the next over-long line is: no multi-line pattern reaches into it
        wall = [n] * (n + 1)
        for k in range(n - 1, -1, -1):
            wall[k] = k if len(lines[k]) > MAX_LINE_CHARS else wall[k + 1]
        i = 0
        while i < n:
            line = lines[i]
            if not line.strip():
                i += 1
                continue
            if wall[i] == i:
                out.long_lines += 1
                out.unmatched += 1
                if out.trace is not None:
                    out.trace.append(LineTrace(i, "unmatched", "too long"))
                i += 1
                continue
            hit = self._field(line, out) or self._tender(line, out) or \
                self._discount(line, out) or self._markup(line, out) or \
                self._tax(line, out) or self._ignored(line)
            if hit:
                if out.trace is not None:
                    out.trace.append(LineTrace(i, hit[0], hit[1]))
                i += 1
                continue
            if has_card_number(line):  # never an item, whatever a pattern makes of it
                out.card_lines += 1
                if out.trace is not None:
                    out.trace.append(LineTrace(i, "ignored", "card number"))
                i += 1
                continue
            used, key = self._item(lines, i, wall[i], out)
            if used:
                if out.trace is not None:
                    out.trace.append(LineTrace(i, "item", key, used))
                i += used
                continue
            out.unmatched += 1
            if out.trace is not None:
                out.trace.append(LineTrace(i, "unmatched", ""))
            i += 1
        return out

    def _money(self, text: str, out: ParsedReceipt) -> int | None:
        value = parse_money(text, self.minor_digits)
        if value is None:
            out.bad_amounts += 1
        return value

    def _ignored(self, line: str) -> tuple[Category, str] | None:
        if self.any_ignore is not None and not self.any_ignore.search(line):
            return None
        for k, p in enumerate(self.ignore):
            if p.search(line):
                return "ignored", f"ignore[{k}]"
        return None

    def _field(self, line: str, out: ParsedReceipt) -> tuple[Category, str] | None:
        for key, regex in self.fields.items():
            m = regex.search(line)
            if m is None:
                continue
            if key == "void":
                out.void = True
            elif key == "copy":
                out.copy = True
            elif key == "return":
                out.is_return = True
            elif key == "total":
                # the first total is the receipt's: a "BAL DUE 0.00" after the tender
                # is what is left to pay, not a second total
                value = self._money(m.group("value"), out)
                if out.total_minor is None:
                    out.total_minor = value
            elif key == "subtotal":
                out.subtotal_minor = self._money(m.group("value"), out)
            elif key == "change":
                out.change_minor = self._money(m.group("value"), out)
            elif has_card_number(m.group("value")):  # a card number is never published
                out.card_lines += 1
            elif key == "receipt":
                out.receipt = m.group("value").strip()
            elif key == "cashier":
                out.cashier = m.group("value").strip()
            else:
                out.loyalty = m.group("value").strip()
            return "field", f"fields.{key}"
        return None

    def _amount(self, category: Category, rules: tuple[_Rule, ...], line: str,
                out: ParsedReceipt, apply: _Apply) -> tuple[Category, str] | None:
        """The first of ``rules`` that matches ``line``, its amount applied to ``out`` (an
        amount that does not parse is counted, not applied)."""
        for rule in rules:
            m = rule.regex.search(line)
            if m is not None:
                amount = self._money(m.group("amount"), out)
                if amount is not None:
                    apply(out, rule, amount)
                return category, rule.key
        return None

    def _tender(self, line: str, out: ParsedReceipt) -> tuple[Category, str] | None:
        return self._amount("tender", self.tenders, line, out, _add_tender)

    def _tax(self, line: str, out: ParsedReceipt) -> tuple[Category, str] | None:
        return self._amount("tax", self.taxes, line, out, _add_tax)

    def _markup(self, line: str, out: ParsedReceipt) -> tuple[Category, str] | None:
        if not out.items:  # a markup before any item is not one this template reads
            return None
        return self._amount("markup", self.markups, line, out, _add_markup)

    def _discount(self, line: str, out: ParsedReceipt) -> tuple[Category, str] | None:
        return self._amount("discount", self.discounts, line, out, _add_discount)

    def _claims(self, line: str) -> bool:
        """Some other rule (a field, tender, discount, tax, ignore) or a card number
        claims this line: it cannot be the second or later line of an item."""
        if self.any_claim is not None:
            return self.any_claim.search(line) is not None or has_card_number(line)
        return (any(r.search(line) for r in self.fields.values())
                or any(r.regex.search(line) for r in (*self.tenders, *self.discounts,
                                                      *self.taxes, *self.markups))
                or any(r.search(line) for r in self.ignore) or has_card_number(line))

    def _item(self, lines: tuple[str, ...] | list[str], i: int, wall: int,
              out: ParsedReceipt) -> tuple[int, str]:
        """The item starting at line ``i`` (lines consumed, rule), 0 when none.

        Rules are tried in order. A match whose quantity x price is not its amount (a
        quantity line that belongs to the next item, a name read as a number) is kept
        only as a fallback while a later rule may read the lines consistently: layouts
        with the quantity line before and after the item can then share a template."""
        fallback: tuple[int, _Rule, re.Match[str]] | None = None
        for rule in self.items:
            span = rule.lines
            if i + span > wall:
                continue
            text = lines[i] if span == 1 else "\n".join(lines[i:i + span])
            m = rule.regex.search(text)
            if m is None:
                continue
            if span > 1 and any(self._claims(lines[k]) for k in range(i, i + span)):
                continue
            if _consistent(m, self.minor_digits):
                return self._take(span, rule, m, out)
            if fallback is None:
                fallback = (span, rule, m)
        if fallback is not None:
            return self._take(*fallback, out)
        return 0, ""

    def _take(self, span: int, rule: _Rule, m: re.Match[str],
              out: ParsedReceipt) -> tuple[int, str]:
        groups = m.groupdict()
        amount = self._money(groups["amount"], out)
        if amount is None:
            return span, rule.key
        qty = parse_quantity(groups["qty"]) if groups.get("qty") else 1000
        if qty is None or qty == 0:
            out.bad_amounts += 1
            return span, rule.key
        price = parse_money(groups["price"], self.minor_digits) \
            if groups.get("price") else None
        if price is None:  # unit price from the amount, exactly when it divides
            price = amount * 1000 // qty
        name = " ".join(groups["name"].split())  # a wrapped name is one name
        out.items.append(ParsedItem(name, qty, price, amount))
        return span, rule.key


def _consistent(m: re.Match[str], minor_digits: int) -> bool:
    """Quantity x price is the amount (to the minor unit, as registers round), or the
    match has no quantity and price to check."""
    groups = m.groupdict()
    if not groups.get("qty") or not groups.get("price") or not groups.get("amount"):
        return True
    qty = parse_quantity(groups["qty"])
    price = parse_money(groups["price"], minor_digits)
    amount = parse_money(groups["amount"], minor_digits)
    if qty is None or price is None or amount is None:
        return False
    if qty % 1000 == 0:  # whole pieces: exactly (2 @ 2.99 is 5.98, never the 5.99 above)
        return price * qty // 1000 == abs(amount)
    # a weight: registers round half up, down or to even; one minor unit either way
    return abs((price * qty + 500) // 1000 - abs(amount)) <= 1


_LEADERS: Final = re.compile(r"(?:\.\s?){3,}")


def _blank(m: re.Match[str]) -> str:
    return " " * len(m.group())


_NAMED_GROUP: Final = re.compile(r"\(\?P<[A-Za-z_][A-Za-z0-9_]*>")


def _joined(patterns: Sequence[re.Pattern[str]]) -> re.Pattern[str] | None:
    """The patterns as one alternation, their group names dropped (they would clash);
    None when they cannot be joined (a global flag such as (?i) inside one)."""
    if not patterns:
        return None
    try:
        return re.compile("|".join(f"(?:{_NAMED_GROUP.sub('(?:', p.pattern)})"
                                   for p in patterns))
    except re.error:
        return None


_Apply = Callable[[ParsedReceipt, _Rule, int], None]


def _add_tender(out: ParsedReceipt, rule: _Rule, amount: int) -> None:
    out.tenders.append((_tender_kind(rule.kind), amount))


def _add_tax(out: ParsedReceipt, rule: _Rule, amount: int) -> None:
    if rule.kind == "True":
        out.tax_added_minor += abs(amount)
    else:
        out.tax_included_minor += abs(amount)


def _add_markup(out: ParsedReceipt, rule: _Rule, amount: int) -> None:
    out.items[-1] = replace(out.items[-1], amount_minor=out.items[-1].amount_minor + abs(amount))


def _add_discount(out: ParsedReceipt, rule: _Rule, amount: int) -> None:
    if rule.kind == "item" and out.items:
        last = out.items[-1]
        out.items[-1] = ParsedItem(last.name, last.quantity_milli, last.unit_price_minor,
                                   last.amount_minor, last.discount_minor + abs(amount))
    else:
        out.discount_minor += abs(amount)


def _tender_kind(kind: str) -> TenderKind:
    if kind == "cash":
        return "cash"
    if kind == "card":
        return "card"
    if kind == "voucher":
        return "voucher"
    return "other"


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise TemplateError(key, f"[[{key}]] tables")
    return value


def _defines(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise TemplateError("defines", "a table of named pattern pieces")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
            raise TemplateError(f"defines.{key}", "a name of a-z, 0-9 and _")
        if not isinstance(value, str) or not value:
            raise TemplateError(f"defines.{key}", "a regular expression (string)")
        out[key] = _expand(f"defines.{key}", value, out)  # earlier defines may be used
    return out


def _expand(key: str, pattern: str, defines: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        try:
            return defines[m.group(1)]
        except KeyError:
            raise TemplateError(key, f"{{{{{m.group(1)}}}}} is not in [defines]") from None
    return _DEFINE.sub(sub, pattern) if "{{" in pattern else pattern


def _compile(key: str, pattern: Any, needs: tuple[str, ...],
             defines: dict[str, str]) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern:
        raise TemplateError(key, "a regular expression (string)")
    expanded = _expand(key, pattern, defines)
    if len(expanded) > MAX_PATTERN_CHARS:
        raise TemplateError(key, f"over {MAX_PATTERN_CHARS} characters with its "
                            "{{defines}} expanded")
    try:
        regex = re.compile(expanded)
        problem = _backtracking(_sre.parse(expanded), inside=False)
    except re.error as exc:
        raise TemplateError(key, f"bad regular expression: {exc}") from exc
    if problem:
        raise TemplateError(key, problem)
    missing = [g for g in needs if g not in regex.groupindex]
    if missing:
        raise TemplateError(key, f"needs the named group(s) {missing}")
    return regex


_REPEATS: Final = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})
_UNBOUNDED_OVER: Final = 64  # a repeat allowing more than this counts as unbounded


def _backtracking(tree: Any, *, inside: bool) -> str:
    """Why a pattern can backtrack exponentially ("" when it cannot this way): a
    repeated group that itself repeats, as in ``(a+)+`` or ``(?:\\s*x?)*`` (the engine
    tries every way of splitting the run between the two), or a backreference. Python's
    engine has no time limit, so the loader refuses them; a receipt line is bounded
    (MAX_LINE_CHARS), which keeps the polynomial cases small."""
    for op, arg in tree:
        name = str(op)
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            return "a backreference: not allowed in a receipt template"
        if name in _REPEATS:
            low, high, sub = arg
            unbounded = high > _UNBOUNDED_OVER
            if inside and high > 1 and high != low:  # \\d{3} inside (...)+ is one way
                return ("a repeated group that itself repeats (like (a+)+) can backtrack "
                        "exponentially: write the run once, e.g. (?:a|b)+")
            problem = _backtracking(sub, inside=inside or unbounded)
        elif name == "SUBPATTERN":
            problem = _backtracking(arg[-1], inside=inside)
        elif name == "BRANCH" and inside and not _distinct_starts(arg[1]):
            problem = ("alternatives inside a repeat that can start alike (like (a|ab)+) "
                       "can backtrack exponentially: use a character class, [ab]+")
        elif name == "BRANCH":
            problem = next((q for q in (_backtracking(b, inside=inside) for b in arg[1])
                            if q), "")
        elif name in ("ASSERT", "ASSERT_NOT"):
            problem = _backtracking(arg[1], inside=inside)
        elif name == "ATOMIC_GROUP":
            problem = _backtracking(arg, inside=inside)
        else:
            problem = ""
        if problem:
            return problem
    return ""


def _newlines(tree: Any) -> int:
    """How many literal newlines a parsed pattern matches (each joins one more line)."""
    n = 0
    for op, arg in tree:
        name = str(op)
        if name == "LITERAL":
            n += arg == 10
        elif name in _REPEATS:
            n += _newlines(arg[2])
        elif name == "SUBPATTERN":
            n += _newlines(arg[-1])
        elif name == "ASSERT":  # a lookahead into the next line needs it; (?!...) not
            n += _newlines(arg[1])
        elif name == "ATOMIC_GROUP":
            n += _newlines(arg)
        elif name == "BRANCH":
            n += max(_newlines(b) for b in arg[1])
    return n


def _distinct_starts(branches: Any) -> bool:
    """Every alternative starts with its own literal character: only one can go on."""
    firsts = []
    for b in branches:
        if not b or str(b[0][0]) != "LITERAL":
            return False
        firsts.append(b[0][1])
    return len(set(firsts)) == len(firsts)


def _rule(key: str, raw: Any, needs: tuple[str, ...], defines: dict[str, str], *,
          extra: str | None = None, allowed: tuple[Any, ...] = (),
          default: Any = None) -> _Rule:
    if not isinstance(raw, dict):
        raise TemplateError(key, "a table with a pattern")
    unknown = set(raw) - {"pattern", *([extra] if extra else [])}
    if unknown:
        raise TemplateError(key, f"unknown key(s) {sorted(unknown)}")
    pattern = raw.get("pattern")
    regex = _compile(f"{key}.pattern", pattern, needs, defines)
    kind = ""
    if extra:
        value = raw.get(extra, default)
        if value not in allowed or type(value) is not type(allowed[0]):
            raise TemplateError(f"{key}.{extra}", f"one of {allowed}")
        kind = str(value)
    # each newline the pattern matches (not one a class excludes, as in [^\n]) joins one
    # more line
    spans = 1 + _newlines(_sre.parse(regex.pattern))
    if spans > MAX_ITEM_LINES:
        raise TemplateError(f"{key}.pattern", f"spans {spans} lines, at most "
                            f"{MAX_ITEM_LINES}")
    return _Rule(regex, spans, kind, key)
