"""Lane transaction assembly: the frames of a lane's devices in, purchases out. Pure.

One lane has up to four taps: receipt printer (escpos, or stx-etx text frames), fiscal
register (shtrih-m, atol-v3), customer display, barcode scanner. Purchases are read
from one of them (``purchases_from``: the printer through a receipt template, or the
fiscal register's commands); the others enrich the open transaction:

* the first item shown on the display or scanned sets ``first_item_at`` (completed
  minus first item is the time to serve);
* a loyalty card or an offer token scanned becomes a ``pos.scanned`` event at once,
  and is attached to the purchase that follows, joined by ``transaction_id``.

Loyalty ids and cashier names are personal data: they leave the lane as keyed
pseudonyms (``core.pseudonyms``), as read only by explicit opt-in, else withheld and
counted (``loyalty-withheld``, ``operator-withheld``).

Every purchase is checked: items minus discounts must equal the total printed (or the
fiscal QR's total); a mismatch is published with ``totals_mismatch``, never "fixed".
Reprints and repeated receipts are recognised and not published twice. Money is exact
integer minor units throughout.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final, Literal

from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.ids import Uuid7Generator
from storegate.core.pos.fiscal_qr import parse_fiscal_qr
from storegate.core.pos.frames import (
    DisplayUpdate,
    FiscalCancel,
    FiscalClose,
    FiscalDiscount,
    FiscalItem,
    FiscalRejected,
    Frame,
    JobStarted,
    ReceiptText,
    Rejections,
    Scanned,
    TenderKind,
)
from storegate.core.pos.template import ParsedReceipt, Template, arithmetic
from storegate.core.pseudonyms import WITHHELD, Kind, PersonalData

Source = Literal["printer", "fiscal"]
STALE_S: Final = 30 * 60.0  # an open transaction idle this long is abandoned
SEEN_RECEIPTS: Final = 1000  # remembered per lane to recognise repeats
_PRICE: Final = re.compile(r"\d+[.,]\d{2}\s*$")
# The share of recent receipts whose items add up to their total, per lane: a printer
# firmware update or a new till layout shows as a fall. Over the last ADDS_UP_WINDOW
# receipts, once at least ADDS_UP_MIN were read; the alert rises below ALERT_BELOW and
# clears at CLEAR_AT (hysteresis: one bad receipt in a good stream does not flap it).
ADDS_UP_WINDOW: Final = 50
ADDS_UP_MIN: Final = 10
ALERT_BELOW: Final = 0.8
UNREADABLE_AMOUNTS: Final = 3  # a job with this many amounts and nothing read counts
_AMOUNT: Final = re.compile(r"\d[.,]\d{2}(?!\d)")
CLEAR_AT: Final = 0.95
# what a lane refuses to read on a receipt, with the words the log says once per lane
REFUSED_ON_RECEIPTS: Final = {
    "receipt-line-too-long": "a printed line too long to be a receipt's was not read",
    "receipt-lines-dropped": "a printed job too long to be a receipt: its rest was not read",
    "card-number-lines": "a line with a card number was skipped (never published)",
}


@dataclass(frozen=True, slots=True)
class LaneSettings:
    lane: str
    currency: str
    purchases_from: Source
    template: Template | None = None
    loyalty_pattern: re.Pattern[str] | None = None
    offer_pattern: re.Pattern[str] | None = None
    # loyalty ids and cashiers leave the lane as keyed pseudonyms (or withheld)
    personal: PersonalData = WITHHELD


@dataclass(slots=True)
class _Txn:
    id: str
    opened_at: float
    last_at: float
    first_item_at: float | None = None
    loyalty: str | None = None
    offers: list[str] = field(default_factory=list)
    items: list[FiscalItem] = field(default_factory=list)
    discounts: list[FiscalDiscount] = field(default_factory=list)


class LaneAssembler:
    def __init__(self, settings: LaneSettings, rand: Callable[[int], bytes]) -> None:
        self.settings = settings
        self._rand = rand
        self._ids = Uuid7Generator()
        self._txn: _Txn | None = None
        self._printing: _Txn | None = None  # the sale whose receipt is being printed
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.counters: dict[str, int] = {}
        self._count = Rejections(self.counters)
        self._adds_up: deque[bool] = deque(maxlen=ADDS_UP_WINDOW)
        self.layout_alert = False  # the share fell below ALERT_BELOW (a layout change?)

    @property
    def adds_up_share(self) -> float | None:
        """Of the last ADDS_UP_WINDOW receipts, the share whose items add up to the total;
        None until ADDS_UP_MIN were read."""
        if len(self._adds_up) < ADDS_UP_MIN:
            return None
        return sum(self._adds_up) / len(self._adds_up)

    def _record(self, adds_up: bool) -> None:
        self._adds_up.append(adds_up)
        share = self.adds_up_share
        if share is None:
            return
        if not self.layout_alert and share < ALERT_BELOW:
            self.layout_alert = True
            self._count("layout-alerts")
        elif self.layout_alert and share >= CLEAR_AT:
            self.layout_alert = False

    def _open(self, at: float) -> _Txn:
        t = self._txn
        if t is not None and at - t.last_at >= STALE_S:
            self._count("abandoned")
            t = None
        if t is None:
            t = self._txn = _Txn(self._ids.next(int(at * 1000), self._rand(8)), at, at)
        t.last_at = max(t.last_at, at)
        return t

    # --- input ---------------------------------------------------------------------

    def feed(self, frame: Frame) -> list[ev.EventDraft]:
        if isinstance(frame, Scanned):
            return self._scanned(frame)
        if isinstance(frame, DisplayUpdate):
            if _PRICE.search(frame.lower) or _PRICE.search(frame.upper):
                t = self._open(frame.at)
                if t.first_item_at is None:
                    t.first_item_at = frame.at
            return []
        if isinstance(frame, JobStarted):
            if self.settings.purchases_from == "printer" and self._txn is not None:
                # the till closed this sale; scans from now on are the next customer's
                self._printing, self._txn = self._txn, None
            return []
        if isinstance(frame, ReceiptText):
            drafts = self._printed(frame)
            if self._printing is not None:  # not a receipt after all (a report, noise)
                if self._txn is None:
                    self._txn = self._printing
                self._printing = None
            return drafts
        if self.settings.purchases_from != "fiscal":
            self._count("fiscal-ignored")
            return []
        return self._fiscal(frame)

    def _scanned(self, f: Scanned) -> list[ev.EventDraft]:
        t = self._open(f.at)
        kind: Literal["loyalty", "offer"]
        # Loyalty first: a code both patterns match is treated as personal (pseudonymised),
        # never published raw as an offer token.
        if (self.settings.loyalty_pattern is not None
                and self.settings.loyalty_pattern.search(f.code)):
            kind = "loyalty"
            t.loyalty = f.code
        elif self.settings.offer_pattern is not None and self.settings.offer_pattern.search(f.code):
            kind = "offer"
            t.offers.append(f.code)
        else:  # a product
            if t.first_item_at is None:
                t.first_item_at = f.at
            return []
        # an offer token is the campaign's, not a person's: published as scanned
        value = f.code if kind == "offer" else self._personal("loyalty", f.code)
        data = p.PosScanned(lane=self.settings.lane, kind=kind, value=value,
                            scanned_at=ev.rfc3339(f.at), transaction_id=t.id)
        return [ev.EventDraft(ev.POS_SCANNED, f"lane/{self.settings.lane}", f.at, data)]

    # --- printer -------------------------------------------------------------------

    def _printed(self, job: ReceiptText) -> list[ev.EventDraft]:
        if self.settings.purchases_from != "printer":
            self._count("printed")  # the register is the source; its printout is not
            return []
        if self.settings.template is None:
            self._count("no-template")
            return []
        r = self.settings.template.parse(job.lines)
        # bounded, counted, never silent: lines too long to be a receipt's, lines past a
        # receipt's length, card-number lines (never items, never published)
        for reason, n in (("receipt-line-too-long", r.long_lines),
                          ("receipt-lines-dropped", r.dropped_lines),
                          ("card-number-lines", r.card_lines),
                          ("bad-amounts", r.bad_amounts)):
            if n:
                self._count(reason, n)
        if r.total_minor is not None and r.total_minor < 0 \
                and sum(i.amount_minor for i in r.items) < 0:
            r = as_return(r)  # a refund printed with negative amounts ("TOTAL -9.60")
        fiscal = next((s for s in map(parse_fiscal_qr, job.qr) if s is not None), None)
        if r.copy:
            self._count("reprint")
            return []
        if r.void:
            return self._voided(r.receipt, job.at, "cancelled on the receipt")
        if not r.items and r.total_minor is None and fiscal is None:
            self._count("not-a-receipt")  # X/Z reports, slips, test prints
            if sum(1 for line in job.lines if _AMOUNT.search(line)) >= UNREADABLE_AMOUNTS:
                # amounts the template read none of: a receipt in a layout it no longer
                # knows, most likely (a rare report among receipts barely moves the share)
                self._count("unreadable-receipt")
                self._record(False)
            return []
        return self._completed_from_text(r, job, fiscal)

    def _completed_from_text(self, r: ParsedReceipt, job: ReceiptText,
                             fiscal: p.FiscalSign | None) -> list[ev.EventDraft]:
        t = self._printing
        self._printing = None
        if t is None:
            t = self._open(job.started_at if job.started_at is not None else job.at)
            self._txn = None
        items = [p.LineItem(name=i.name, quantity_milli=i.quantity_milli,
                            unit_price_minor=i.unit_price_minor, amount_minor=i.amount_minor,
                            discount_minor=i.discount_minor) for i in r.items]
        check = arithmetic(r, fiscal.total_minor if fiscal is not None else None)
        total = check.total_minor if check.total_minor is not None else check.computed_minor
        mismatch = check.computed_minor != total or (
            fiscal is not None and fiscal.total_minor != total)
        receipt = r.receipt or (fiscal.fd if fiscal is not None else None) \
            or f"{self.settings.lane}-{int(job.at * 1000)}"
        # the calculation sign printed (ВОЗВРАТ ПРИХОДА) or the fiscal QR's operation
        kind: Literal["sale", "return"] = "return" if r.is_return or (
            fiscal is not None and fiscal.operation in (2, 4)) else "sale"
        return self._completed(t, receipt, job.at, items=items, tenders=r.tenders,
                               discount=r.discount_minor, total=total, mismatch=mismatch,
                               operator=r.cashier, loyalty=r.loyalty, fiscal=fiscal,
                               kind=kind, source="printer", tax=r.tax_added_minor,
                               adds_up=check.adds_up)

    # --- fiscal register -----------------------------------------------------------

    def _fiscal(self, f: Frame) -> list[ev.EventDraft]:
        if isinstance(f, FiscalItem):
            t = self._open(f.at)
            t.items.append(f)
            if t.first_item_at is None:
                t.first_item_at = f.at
            return []
        if isinstance(f, FiscalDiscount):
            self._open(f.at).discounts.append(f)
            return []
        if isinstance(f, FiscalRejected):
            self._rejected(f)
            return []
        if isinstance(f, FiscalCancel):
            return self._voided(None, f.at, "cancelled on the register")
        if isinstance(f, FiscalClose):
            return self._closed(f)
        return []

    def _rejected(self, f: FiscalRejected) -> None:
        """The register refused an operation: it did not happen; undo the last one."""
        self._count("rejected-by-register")
        t = self._txn
        if t is None:
            return
        for ops in (t.items, t.discounts):
            for i in range(len(ops) - 1, -1, -1):
                if ops[i].command == f.command:
                    del ops[i]
                    return

    def _closed(self, f: FiscalClose) -> list[ev.EventDraft]:
        t = self._open(f.at)
        if not t.items:
            self._count("empty-close")
            self._txn = None
            return []
        items = [p.LineItem(name=i.name, quantity_milli=i.quantity_milli,
                            unit_price_minor=i.price_minor,
                            amount_minor=i.amount_minor if i.amount_minor is not None
                            else _extend(i.price_minor, i.quantity_milli))
                 for i in t.items]
        subtotal = sum(i.amount_minor for i in items) - sum(d.amount_minor for d in t.discounts)
        # a percentage discount on the close: of the subtotal, rounded half up, as registers
        percent = (subtotal * f.discount_percent_centi + 5000) // 10000
        discount = sum(d.amount_minor for d in t.discounts) + f.discount_minor + percent
        total = sum(i.amount_minor for i in items) - discount
        tenders = list(f.tenders)
        if f.rest is not None:  # "the receipt's sum": what the other tenders leave
            tenders.append((f.rest, max(total - sum(a for _, a in tenders), 0)))
        tendered = sum(amount for _, amount in tenders)
        kind: Literal["sale", "return"] = "return" if all(i.is_return for i in t.items) \
            else "sale"
        return self._completed(
            t, f"{self.settings.lane}-{int(f.at * 1000)}", f.at, items=items,
            tenders=tenders, discount=max(discount, 0), total=total,
            mismatch=tendered < total or discount < 0, operator=None, loyalty=None,
            fiscal=None, kind=kind, source="fiscal",
            adds_up=tendered >= total and discount >= 0)

    # --- output --------------------------------------------------------------------

    def _completed(self, t: _Txn, receipt: str, at: float, *, items: list[p.LineItem],
                   tenders: list[tuple[TenderKind, int]], discount: int, total: int,
                   mismatch: bool, operator: str | None, loyalty: str | None,
                   fiscal: p.FiscalSign | None, kind: Literal["sale", "return"],
                   source: Source, adds_up: bool, tax: int = 0) -> list[ev.EventDraft]:
        key = (receipt, total)
        if self._txn is t:
            self._txn = None
        if key in self._seen:
            self._count("duplicate")
            return []
        self._seen[key] = None
        while len(self._seen) > SEEN_RECEIPTS:
            self._seen.popitem(last=False)
        if mismatch:
            self._count("totals-mismatch")
        self._count("purchases")
        self._record(adds_up)
        data = p.PurchaseCompleted(
            receipt=receipt, lane=self.settings.lane, kind=kind, source=source,
            transaction_id=t.id, operator=self._personal("operator", operator), items=items,
            tenders=[p.Tender(kind=k, amount_minor=a) for k, a in tenders],
            discount_minor=discount, tax_minor=tax, total_minor=total,
            currency=self.settings.currency,
            loyalty_id=self._personal("loyalty", loyalty or t.loyalty),
            offer_tokens=list(t.offers), fiscal=fiscal,
            first_item_at=ev.rfc3339(t.first_item_at) if t.first_item_at is not None
            else None,
            completed_at=ev.rfc3339(at), totals_mismatch=mismatch,
        )
        return [ev.EventDraft(ev.PURCHASE_COMPLETED, f"receipt/{self.settings.lane}/{receipt}", at,
                              data)]

    def _personal(self, kind: Kind, value: str | None) -> str | None:
        """The pseudonym to publish for a personal value; a withheld one is counted."""
        out = self.settings.personal.loyalty(value) if kind == "loyalty" \
            else self.settings.personal.operator(value)
        if value is not None and out is None:
            self._count(f"{kind}-withheld")
        return out

    def _voided(self, receipt: str | None, at: float, reason: str) -> list[ev.EventDraft]:
        t = self._printing or self._txn
        if self._printing is not None:
            self._printing = None
        else:
            self._txn = None
        self._count("voided")
        data = p.PurchaseVoided(receipt=receipt, lane=self.settings.lane, voided_at=ev.rfc3339(at),
                                reason=reason, transaction_id=t.id if t else None)
        return [ev.EventDraft(ev.PURCHASE_VOIDED,
                              f"receipt/{self.settings.lane}/{receipt or 'open'}", at, data)]


def as_return(r: ParsedReceipt) -> ParsedReceipt:
    """A receipt printed with a negative total (US and EU refunds: "TOTAL  9.60-") as
    the return it is: amounts positive, kind return, as a fiscal ВОЗВРАТ ПРИХОДА is
    published. Discounts and taxes are read as magnitudes already."""
    out = replace(r, items=[replace(i, amount_minor=-i.amount_minor,
                                    unit_price_minor=abs(i.unit_price_minor))
                            for i in r.items],
                  tenders=[(k, -a) for k, a in r.tenders], is_return=True,
                  total_minor=-r.total_minor if r.total_minor is not None else None,
                  subtotal_minor=-r.subtotal_minor if r.subtotal_minor is not None else None)
    return out


def _extend(price_minor: int, quantity_milli: int) -> int:
    """price x quantity, rounded half up to the minor unit (as registers do)."""
    return (price_minor * quantity_milli + 500) // 1000
