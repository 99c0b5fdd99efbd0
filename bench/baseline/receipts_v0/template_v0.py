"""Receipt templates: printed receipt lines in, the purchase they describe out.

A template is data (a TOML file per POS vendor or store, in
``firmware-configs/pos/templates/``), a set of regular expressions with named groups:

    name = "ru-generic"
    currency = "RUB"
    [fields]                      # one value each; group "value"
    receipt = '^\\s*ЧЕК\\s*№\\s*(?P<value>\\d+)'
    cashier = '...'  loyalty = '...'  total = '...'
    void = '...'                  # matched anywhere: the receipt was cancelled
    copy = '...'                  # a reprint: not a new purchase
    [[items]]                     # tried in order; "\\n" in a pattern spans two lines
    pattern = '^(?P<name>.+)\\n(?P<qty>[\\d.,]+)\\s*[xX*]\\s*(?P<price>...)=(?P<amount>...)$'
    [[discounts]]                 # group "amount"; applies_to "item" (the one above) or
    pattern = '...'               # "receipt"
    [[tenders]]                   # kind cash | card | voucher | other; group "amount"
    kind = "cash"
    pattern = '...'
    ignore = ['...']              # lines that are neither (headers, footers)

Money is parsed exactly into integer minor units ("1 234,50" -> 123450); a line that
looks like money but does not parse is counted, never guessed. Pure: the file itself is
read by ``storegate.app.pos.read_template``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Final

from storegate.core.pos.frames import TenderKind

FIELDS: Final = ("receipt", "cashier", "loyalty", "total", "void", "copy")
TENDER_KINDS: Final = ("cash", "card", "voucher", "other")
_MONEY: Final = re.compile(r"^([+-]?)(\d+)(?:[.,](\d{1,2}))?$")
_QTY: Final = re.compile(r"^(\d+)(?:[.,](\d{1,3}))?$")


class TemplateError(ValueError):
    """A template file that cannot be used: the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def parse_money(text: str, minor_digits: int = 2) -> int | None:
    """'1 234,50' -> 123450 (minor units); None if it is not an amount."""
    m = _MONEY.match(text.replace(" ", "").replace("\u00a0", "").replace("'", ""))
    if m is None:
        return None
    sign, whole, frac = m.groups()
    frac = (frac or "").ljust(minor_digits, "0")[:minor_digits]
    value = int(whole) * (1, 10, 100, 1000)[minor_digits] + (int(frac) if frac else 0)
    return -value if sign == "-" else value


def parse_quantity(text: str) -> int | None:
    """'1.500' -> 1500 thousandths; '2' -> 2000."""
    m = _QTY.match(text.strip())
    if m is None:
        return None
    whole, frac = m.groups()
    return int(whole) * 1000 + int((frac or "").ljust(3, "0") or "0")


@dataclass(frozen=True, slots=True)
class ParsedItem:
    name: str
    quantity_milli: int
    unit_price_minor: int
    amount_minor: int
    discount_minor: int = 0


@dataclass(slots=True)
class ParsedReceipt:
    receipt: str | None = None
    cashier: str | None = None
    loyalty: str | None = None
    total_minor: int | None = None
    items: list[ParsedItem] = field(default_factory=list)
    discount_minor: int = 0  # receipt level
    tenders: list[tuple[TenderKind, int]] = field(default_factory=list)
    void: bool = False
    copy: bool = False
    bad_amounts: int = 0  # lines that matched a pattern but whose money did not parse
    unmatched: int = 0  # lines no pattern claimed


@dataclass(frozen=True, slots=True)
class _Rule:
    regex: re.Pattern[str]
    two_lines: bool
    kind: str = ""  # tender kind, or discount scope


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
                 "discounts", "tenders", "ignore"}
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
        fields_raw = data.get("fields", {})
        if not isinstance(fields_raw, dict):
            raise TemplateError("fields", "a table of patterns")
        fields: dict[str, re.Pattern[str]] = {}
        for key, pattern in fields_raw.items():
            if key not in FIELDS:
                raise TemplateError(f"fields.{key}", f"unknown field (known: {FIELDS})")
            needs = () if key in ("void", "copy") else ("value",)
            fields[key] = _compile(f"fields.{key}", pattern, needs)
        items = tuple(_rule(f"items[{i}]", r, ("name", "amount"))
                      for i, r in enumerate(_list(data, "items")))
        if not items:
            raise TemplateError("items", "at least one item pattern")
        discounts = tuple(_rule(f"discounts[{i}]", r, ("amount",), extra="applies_to",
                                allowed=("item", "receipt"), default="item")
                          for i, r in enumerate(_list(data, "discounts")))
        tenders = tuple(_rule(f"tenders[{i}]", r, ("amount",), extra="kind",
                              allowed=TENDER_KINDS)
                        for i, r in enumerate(_list(data, "tenders")))
        ignore_raw = data.get("ignore", [])
        if not isinstance(ignore_raw, list):
            raise TemplateError("ignore", "a list of patterns")
        ignore = tuple(_compile(f"ignore[{i}]", p, ()) for i, p in enumerate(ignore_raw))
        return cls(name, currency, digits, fields, items, discounts, tenders, ignore)

    # --- applying ------------------------------------------------------------------

    def parse(self, lines: tuple[str, ...] | list[str]) -> ParsedReceipt:
        out = ParsedReceipt()
        n = len(lines)
        i = 0
        while i < n:
            line = lines[i]
            if not line.strip():
                i += 1
                continue
            if self._field(line, out) or self._tender(line, out) or \
                    self._discount(line, out) or any(p.search(line) for p in self.ignore):
                i += 1
                continue
            used = self._item(lines, i, out)
            if used:
                i += used
                continue
            out.unmatched += 1
            i += 1
        return out

    def _money(self, text: str, out: ParsedReceipt) -> int | None:
        value = parse_money(text, self.minor_digits)
        if value is None:
            out.bad_amounts += 1
        return value

    def _field(self, line: str, out: ParsedReceipt) -> bool:
        for key, regex in self.fields.items():
            m = regex.search(line)
            if m is None:
                continue
            if key == "void":
                out.void = True
            elif key == "copy":
                out.copy = True
            elif key == "total":
                out.total_minor = self._money(m.group("value"), out)
            elif key == "receipt":
                out.receipt = m.group("value").strip()
            elif key == "cashier":
                out.cashier = m.group("value").strip()
            else:
                out.loyalty = m.group("value").strip()
            return True
        return False

    def _tender(self, line: str, out: ParsedReceipt) -> bool:
        for rule in self.tenders:
            m = rule.regex.search(line)
            if m is not None:
                amount = self._money(m.group("amount"), out)
                if amount is not None:
                    out.tenders.append((_tender_kind(rule.kind), amount))
                return True
        return False

    def _discount(self, line: str, out: ParsedReceipt) -> bool:
        for rule in self.discounts:
            m = rule.regex.search(line)
            if m is None:
                continue
            amount = self._money(m.group("amount"), out)
            if amount is not None:
                amount = abs(amount)
                if rule.kind == "item" and out.items:
                    last = out.items[-1]
                    out.items[-1] = ParsedItem(last.name, last.quantity_milli,
                                               last.unit_price_minor, last.amount_minor,
                                               last.discount_minor + amount)
                else:
                    out.discount_minor += amount
            return True
        return False

    def _item(self, lines: tuple[str, ...] | list[str], i: int, out: ParsedReceipt) -> int:
        for rule in self.items:
            if rule.two_lines:
                if i + 1 >= len(lines):
                    continue
                text = lines[i] + "\n" + lines[i + 1]
            else:
                text = lines[i]
            m = rule.regex.search(text)
            if m is None:
                continue
            groups = m.groupdict()
            amount = self._money(groups["amount"], out)
            if amount is None:
                return 2 if rule.two_lines else 1
            qty = parse_quantity(groups["qty"]) if groups.get("qty") else 1000
            if qty is None or qty == 0:
                out.bad_amounts += 1
                return 2 if rule.two_lines else 1
            price = parse_money(groups["price"], self.minor_digits) \
                if groups.get("price") else None
            if price is None:  # unit price from the amount, exactly when it divides
                price = amount * 1000 // qty
            out.items.append(ParsedItem(groups["name"].strip(), qty, price, amount))
            return 2 if rule.two_lines else 1
        return 0


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


def _compile(key: str, pattern: Any, needs: tuple[str, ...]) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern:
        raise TemplateError(key, "a regular expression (string)")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise TemplateError(key, f"bad regular expression: {exc}") from exc
    missing = [g for g in needs if g not in regex.groupindex]
    if missing:
        raise TemplateError(key, f"needs the named group(s) {missing}")
    return regex


def _rule(key: str, raw: Any, needs: tuple[str, ...], *, extra: str | None = None,
          allowed: tuple[str, ...] = (), default: str | None = None) -> _Rule:
    if not isinstance(raw, dict):
        raise TemplateError(key, "a table with a pattern")
    unknown = set(raw) - {"pattern", *([extra] if extra else [])}
    if unknown:
        raise TemplateError(key, f"unknown key(s) {sorted(unknown)}")
    pattern = raw.get("pattern")
    regex = _compile(f"{key}.pattern", pattern, needs)
    kind = ""
    if extra:
        value = raw.get(extra, default)
        if value not in allowed:
            raise TemplateError(f"{key}.{extra}", f"one of {allowed}")
        kind = str(value)
    return _Rule(regex, "\n" in str(pattern) or "\\n" in str(pattern), kind)

