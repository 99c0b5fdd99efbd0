"""Identity stitching: who bought, and what each store visit came to. Pure, clock passed in.

A purchase gets a customer from the strongest evidence there is (docs/personalisation.md):

1. **loyalty**: a loyalty card on the receipt or scanned in the transaction, mapped to a
   known customer by its pseudonym;
2. **token**: an offer token reserved for the transaction (the redemption service says
   so with :meth:`Stitcher.note_token`);
3. **presence**: exactly one consenting customer in the lane's checkout zone when the
   receipt started printing (several: ``ambiguous``, nobody named).

The purchase then carries the customer's open store ``visit_id``, and the store visit's
``visit.exited`` carries its outcome (converted, basket, time to serve, offers
redeemed): the figures a retailer measures a store by, with no joins left to central.

The stitcher sees events only (visits from the presence engine, scans, purchases and
voids from the lanes); times come from the events and from ``now``, never from a clock.
State is what open visits and open transactions need, plus a short history of
checkout-zone stays; everything keyed by what arrives from outside is capped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from storegate.core import events as ev
from storegate.core import payloads as p

PresenceRule = Literal["sole_customer_in_checkout_zone", "off"]

# A receipt's first item can precede its completion by minutes (a full trolley, a price
# check, a card declined twice): checkout-zone stays are kept this long past lookback_s so
# a long receipt still finds who stood there when it started. A receipt that started
# longer ago than this is not attributed by presence: its history may be gone.
RECEIPT_SPAN_S: Final = 900.0
# Open transactions remembered. A store has tens of lanes with one open transaction each;
# the ids come from the lanes, so a till (or a bug) opening transactions without closing
# them must not grow memory: the oldest goes first beyond this, and after RECEIPT_SPAN_S.
MAX_TRANSACTIONS: Final = 512
MAX_ID_CHARS: Final = 128  # transaction ids, loyalty pseudonyms, offer ids
MAX_LOYALTY_PER_TRANSACTION: Final = 4  # cards scanned in one transaction, newest kept
MAX_OFFERS_PER_TRANSACTION: Final = 32
MAX_OFFERS_PER_VISIT: Final = 64
# Checkout-zone stays remembered per customer and zone (zone flapping at a busy till
# makes several short stays; the oldest beyond this cannot matter to a receipt).
MAX_STAYS_PER_CUSTOMER: Final = 16
# Customers tracked at once. The presence engine bounds them by enrolment; this bound
# holds even if visit events for unknown customers were fed in.
MAX_CUSTOMERS: Final = 50_000


@dataclass(frozen=True, slots=True)
class StitchingSettings:
    """The ``[stitching]`` section, as the stitcher needs it (config.StitchingConfig)."""

    presence_rule: PresenceRule = "sole_customer_in_checkout_zone"
    lookback_s: float = 30.0  # a stay that ended this long before the receipt started counts
    # Presence places a customer in a zone a few seconds late (median over the RSSI
    # window, then the switch hold): one entering this soon after the first item was
    # scanned was there already. Later arrivals are the next in the queue.
    entry_grace_s: float = 5.0
    loyalty_confidence: float = 0.99
    token_confidence: float = 0.95
    presence_confidence: float = 0.7

    def __post_init__(self) -> None:
        if not (self.lookback_s >= 0 and self.entry_grace_s >= 0):
            raise ValueError("lookback_s and entry_grace_s must be >= 0")
        for c in (self.loyalty_confidence, self.token_confidence, self.presence_confidence):
            if not 0 <= c <= 1:
                raise ValueError("confidences are between 0 and 1")


@dataclass(slots=True)
class StitchCounters:
    """Since start, for status and telemetry: no ids, only counts."""

    purchases: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("loyalty", "token", "presence", "ambiguous", "none"), 0))
    exits_enriched: int = 0
    inputs_rejected: int = 0  # ids too long or empty: ignored
    transactions_evicted: int = 0  # dropped unfinished (cap or age)
    customers_evicted: int = 0  # dropped at MAX_CUSTOMERS (their visit loses its outcome)


@dataclass(slots=True)
class _Stay:
    """One checkout-zone visit of a customer."""

    visit_id: str
    entered: float
    exited: float | None = None  # None: still there


@dataclass(slots=True)
class _StoreVisit:
    visit_id: str
    converted: bool = False
    basket_minor: int = 0
    served: bool = False  # the first attributed purchase was seen (time to serve set)
    time_to_serve_s: float | None = None
    offers: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Transaction:
    seen: float | None  # the `now` it was first noted at; None: before any process()
    loyalty: list[tuple[str, str | None]] = field(default_factory=list)  # (card, customer)
    token_customer: str | None = None
    offers: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Match:
    attribution: p.Attribution
    customer: str | None
    stays: deque[_Stay] | None = None  # the customer's stays in the lane's checkout zone


class Stitcher:
    """Enriches purchases and store-visit exits as they pass (see the module doc).

    ``lane_zones`` maps a lane to its checkout zone (lanes without one are left out);
    ``customer_of_loyalty`` maps a loyalty pseudonym to the customer it belongs to, or
    None (unknown card, or a customer the registry does not allow to be stitched).
    One owner calls it (the personal service, on the event loop): no locks.
    """

    def __init__(self, settings: StitchingSettings, lane_zones: Mapping[str, str],
                 customer_of_loyalty: Callable[[str], str | None]) -> None:
        self.settings = settings
        self.counters = StitchCounters()
        self._lane_zones = dict(lane_zones)
        self._checkout_zones = frozenset(self._lane_zones.values())
        self._customer_of_loyalty = customer_of_loyalty
        self._now: float | None = None
        # state: open store visits, checkout-zone stays per zone and customer, closed
        # stays in the order they closed (for eviction), open transactions by id
        self._visits: dict[str, _StoreVisit] = {}
        self._stays: dict[str, dict[str, deque[_Stay]]] = {
            z: {} for z in self._checkout_zones}
        self._closed: deque[tuple[float, str, str, str]] = deque()  # exited, zone, cust, visit
        self._transactions: dict[str, _Transaction] = {}

    # --- from the redemption service ------------------------------------------------

    def note_token(self, transaction_id: str, customer: str) -> None:
        """An offer token of ``customer`` was reserved in this transaction."""
        t = self._transaction(transaction_id)
        if t is not None:
            t.token_customer = customer

    def note_redeemed(self, transaction_id: str, offer_ids: Iterable[str]) -> None:
        """These offers were confirmed on the receipt that completes this transaction
        (call before the purchase passes through :meth:`process`)."""
        t = self._transaction(transaction_id)
        if t is None:
            return
        for offer in offer_ids:
            if not _valid_id(offer):
                self.counters.inputs_rejected += 1
            elif offer not in t.offers and len(t.offers) < MAX_OFFERS_PER_TRANSACTION:
                t.offers.append(offer)

    # --- the event flow --------------------------------------------------------------

    def process(self, drafts: list[ev.EventDraft], now: float) -> list[ev.EventDraft]:
        """The same drafts in the same order; purchases and store-visit exits enriched."""
        self._now = now
        out: list[ev.EventDraft] = []
        for draft in drafts:
            data = draft.data
            if isinstance(data, p.PurchaseCompleted):
                out.append(self._purchase(draft, data, now))
                continue
            if isinstance(data, p.VisitExited):
                out.append(self._exited(draft, data))
                continue
            if isinstance(data, p.VisitEntered):
                self._entered(data)
            elif isinstance(data, p.PosScanned):
                self._scanned(data)
            elif isinstance(data, p.PurchaseVoided) and data.transaction_id is not None:
                self._transactions.pop(data.transaction_id, None)
            out.append(draft)
        self._evict(now)
        return out

    def forget(self, customer: str, loyalty_ids: Iterable[str] = ()) -> None:
        """Consent withdrawn or erasure: every trace of the customer goes, including
        their loyalty pseudonyms noted in open transactions (``loyalty_ids``: the cards
        the registry held for them, as a card scanned earlier may no longer map)."""
        cards = set(loyalty_ids)
        self._visits.pop(customer, None)
        for per_zone in self._stays.values():
            per_zone.pop(customer, None)
        if any(c == customer for _, _, c, _ in self._closed):
            self._closed = deque(e for e in self._closed if e[2] != customer)
        for t in self._transactions.values():
            if t.token_customer == customer:
                t.token_customer = None
            t.loyalty = [(card, c) for card, c in t.loyalty
                         if c != customer and card not in cards]

    def forget_many(self, customers: Collection[str], loyalty_ids: Collection[str] = ()) -> (
        int
    ):
        """:meth:`forget` for many customers in one pass over the shared state (an
        erasure names up to 10,000: one pass each would be 10,000 walks of every open
        transaction and closed stay). Returns how many of them any state mentioned."""
        gone = set(customers)
        cards = set(loyalty_ids)
        held: set[str] = {c for c in gone if self._visits.pop(c, None) is not None}
        for per_zone in self._stays.values():
            for c in gone & per_zone.keys():
                del per_zone[c]
                held.add(c)
        if any(e[2] in gone for e in self._closed):
            held.update(e[2] for e in self._closed if e[2] in gone)
            self._closed = deque(e for e in self._closed if e[2] not in gone)
        for t in self._transactions.values():
            if t.token_customer in gone:
                held.add(t.token_customer)
                t.token_customer = None
            if any(c in gone or card in cards for card, c in t.loyalty):
                held.update(c for _, c in t.loyalty if c in gone)
                t.loyalty = [(card, c) for card, c in t.loyalty
                             if c not in gone and card not in cards]
        return len(held)

    def lane_customers(self, drafts: Iterable[ev.EventDraft]) -> dict[str, str]:
        """Who each lane scanning an offer token in ``drafts`` is serving, by the
        strongest evidence only: a loyalty card scanned in the token's transaction
        (before, or in the same batch), mapped to a known customer. Presence is not
        enough to refuse a token (a companion in the queue); a token whose customer is
        not the card's is then refused (``customer_mismatch``), so one forwarded token
        does not redeem for anyone. Lanes without a card are absent."""
        batch: dict[str, str] = {}  # transaction -> customer, from this batch's scans
        offers: list[p.PosScanned] = []
        for d in drafts:
            data = d.data
            if not isinstance(data, p.PosScanned) or data.value is None:
                continue
            if data.kind == "offer":
                offers.append(data)
            elif _valid_id(data.value):
                customer = self._customer_of_loyalty(data.value)
                if customer is not None:
                    batch[data.transaction_id] = customer
        out: dict[str, str] = {}
        for s in offers:
            customer = batch.get(s.transaction_id) or self._card_customer(s.transaction_id)
            if customer is not None:
                out[s.lane] = customer
        return out

    def _card_customer(self, transaction_id: str) -> str | None:
        t = self._transactions.get(transaction_id)
        if t is None:
            return None
        for card, _ in reversed(t.loyalty):  # the newest card that maps to someone now
            customer = self._customer_of_loyalty(card)
            if customer is not None:
                return customer
        return None

    @property
    def tracked(self) -> tuple[int, int, int]:
        """(open store visits, customers with checkout-zone stays, open transactions)."""
        with_stays = len({c for per_zone in self._stays.values() for c in per_zone})
        return len(self._visits), with_stays, len(self._transactions)

    def holds(self, customer: str) -> bool:
        """Whether any state mentions the customer (erasure is checked with this)."""
        return (customer in self._visits
                or any(customer in per_zone for per_zone in self._stays.values())
                or any(c == customer for _, _, c, _ in self._closed)
                or any(t.token_customer == customer or any(c == customer for _, c in t.loyalty)
                       for t in self._transactions.values()))

    # --- visits ----------------------------------------------------------------------

    def _entered(self, data: p.VisitEntered) -> None:
        customer = data.customer
        if customer is None:
            return
        if data.zone is None:
            if customer not in self._visits and len(self._visits) >= MAX_CUSTOMERS:
                del self._visits[next(iter(self._visits))]
                self.counters.customers_evicted += 1
            self._visits[customer] = _StoreVisit(data.visit_id)
        elif data.zone in self._checkout_zones:
            entered = _epoch(data.entered_at)
            if entered is not None:
                self._stays_of(data.zone, customer).append(_Stay(data.visit_id, entered))

    def _exited(self, draft: ev.EventDraft, data: p.VisitExited) -> ev.EventDraft:
        customer = data.customer
        if customer is None:
            return draft
        if data.zone is not None:
            if data.zone in self._checkout_zones:
                self._close_stay(data, customer)
            return draft
        visit = self._visits.get(customer)
        if visit is None or visit.visit_id != data.visit_id:
            return draft  # began before this stitcher saw it: the outcome is unknown
        del self._visits[customer]
        self.counters.exits_enriched += 1
        return ev.EventDraft(draft.type, draft.subject, draft.time, data.model_copy(update={
            "converted": visit.converted, "basket_minor": visit.basket_minor,
            "time_to_serve_s": visit.time_to_serve_s,
            "offers_redeemed": list(visit.offers)}))

    def _close_stay(self, data: p.VisitExited, customer: str) -> None:
        exited = _epoch(data.exited_at)
        if exited is None:
            return
        stays = self._stays_of(data.zone or "", customer)
        for stay in stays:
            if stay.visit_id == data.visit_id:
                stay.exited = exited
                break
        else:  # its entry came before this stitcher started: the exit says it all
            entered = _epoch(data.entered_at)
            if entered is None:
                return
            stays.append(_Stay(data.visit_id, entered, exited))
        self._closed.append((exited, data.zone or "", customer, data.visit_id))

    def _stays_of(self, zone: str, customer: str) -> deque[_Stay]:
        per_zone = self._stays[zone]
        stays = per_zone.get(customer)
        if stays is None:
            if len(per_zone) >= MAX_CUSTOMERS:
                del per_zone[next(iter(per_zone))]
                self.counters.customers_evicted += 1
            stays = per_zone[customer] = deque(maxlen=MAX_STAYS_PER_CUSTOMER)
        return stays

    # --- the lanes -------------------------------------------------------------------

    def _scanned(self, data: p.PosScanned) -> None:
        if data.kind != "loyalty" or data.value is None:
            return  # offer tokens reach the stitcher through note_token, once verified
        if not _valid_id(data.value):
            self.counters.inputs_rejected += 1
            return
        t = self._transaction(data.transaction_id)
        if t is None:
            return
        # Resolved now as well as at the purchase: forget() then knows whose card it was.
        t.loyalty.append((data.value, self._customer_of_loyalty(data.value)))
        del t.loyalty[:-MAX_LOYALTY_PER_TRANSACTION]

    def _transaction(self, transaction_id: str) -> _Transaction | None:
        if not _valid_id(transaction_id):
            self.counters.inputs_rejected += 1
            return None
        t = self._transactions.get(transaction_id)
        if t is None:
            while len(self._transactions) >= MAX_TRANSACTIONS:
                del self._transactions[next(iter(self._transactions))]
                self.counters.transactions_evicted += 1
            t = self._transactions[transaction_id] = _Transaction(self._now)
        return t

    def _purchase(self, draft: ev.EventDraft, data: p.PurchaseCompleted,
                  now: float) -> ev.EventDraft:
        if data.attribution is not None:
            return draft  # stitched already (a replayed or re-processed draft)
        t = (self._transactions.pop(data.transaction_id, None)
             if data.transaction_id is not None else None)
        completed = _epoch(data.completed_at)
        if completed is None:
            completed = draft.time
        started = _epoch(data.first_item_at) if data.first_item_at is not None else None
        if started is None:
            started = completed
        match = self._attribute(data, t, started, now)
        self.counters.purchases[match.attribution.method] += 1
        offers = list(t.offers) if t is not None else []
        update: dict[str, object] = {"customer": match.customer,
                                     "attribution": match.attribution,
                                     "offers_redeemed": offers}
        visit = self._visits.get(match.customer) if match.customer is not None else None
        if visit is not None:
            update["visit_id"] = visit.visit_id
            self._add_to_visit(visit, data, match, started=started, completed=completed,
                               offers=offers)
        return ev.EventDraft(draft.type, draft.subject, draft.time,
                             data.model_copy(update=update))

    def _add_to_visit(self, visit: _StoreVisit, data: p.PurchaseCompleted, match: _Match, *,
                      started: float, completed: float, offers: list[str]) -> None:
        if data.kind == "sale":
            visit.converted = True
            visit.basket_minor += data.total_minor
        else:  # tills print a return's total either signed or not: it is money back
            visit.basket_minor -= abs(data.total_minor)
        for offer in offers:
            if offer not in visit.offers and len(visit.offers) < MAX_OFFERS_PER_VISIT:
                visit.offers.append(offer)
        if not visit.served:
            visit.served = True
            stays = match.stays
            if stays is None and match.customer is not None:
                zone = self._lane_zones.get(data.lane)
                stays = self._stays[zone].get(match.customer) if zone is not None else None
            entry = self._checkout_entry(stays, started) if stays else None
            if entry is not None:
                visit.time_to_serve_s = round(max(0.0, completed - entry), 3)

    # --- attribution -----------------------------------------------------------------

    def _attribute(self, data: p.PurchaseCompleted, t: _Transaction | None, started: float,
                   now: float) -> _Match:
        s = self.settings
        cards = ([(data.loyalty_id, "on the receipt")] if data.loyalty_id is not None else [])
        if t is not None:
            cards += [(card, "scanned") for card, _ in reversed(t.loyalty)]
        for card, how in cards:
            customer = self._customer_of_loyalty(card) if _valid_id(card) else None
            if customer is not None:
                return _Match(p.Attribution(method="loyalty", confidence=s.loyalty_confidence,
                                            candidates=1, detail=f"loyalty card {how}"),
                              customer)
        if t is not None and t.token_customer is not None:
            return _Match(p.Attribution(method="token", confidence=s.token_confidence,
                                        candidates=1, detail="offer token reserved in this "
                                        "transaction"), t.token_customer)
        return self._by_presence(data.lane, started, now)

    def _by_presence(self, lane: str, started: float, now: float) -> _Match:
        s = self.settings
        zone = self._lane_zones.get(lane)
        if s.presence_rule == "off":
            return _none("no loyalty card or token; presence rule off")
        if zone is None:
            return _none("no loyalty card or token; the lane has no checkout zone")
        if now - started > RECEIPT_SPAN_S + s.lookback_s:
            return _none("receipt started too long ago for presence")
        found = [(c, stays) for c, stays in self._stays[zone].items()
                 if self._stay_at(stays, started) is not None]
        if not found:
            return _none(f"nobody in checkout zone {zone}")
        if len(found) > 1:
            return _Match(p.Attribution(method="ambiguous", confidence=0.0,
                                        candidates=len(found),
                                        detail=f"{len(found)} customers in checkout zone "
                                        f"{zone}"), None)
        customer, stays = found[0]
        return _Match(p.Attribution(method="presence", confidence=s.presence_confidence,
                                    candidates=1, detail=f"sole customer in checkout zone "
                                    f"{zone}"), customer, stays)

    def _stay_at(self, stays: deque[_Stay], started: float) -> _Stay | None:
        """The newest stay that places the customer in the zone when the receipt
        started: entered by then (give or take the grace), left no earlier than
        lookback_s before it."""
        s = self.settings
        for stay in reversed(stays):
            if (stay.entered <= started + s.entry_grace_s
                    and (stay.exited is None or stay.exited >= started - s.lookback_s)):
                return stay
        return None

    def _checkout_entry(self, stays: deque[_Stay], started: float) -> float | None:
        """When the customer came to the checkout for this receipt: the entry of the
        stay at the receipt's start, walked back over gaps no longer than lookback_s
        (presence flapping between neighbouring zones is not leaving the queue)."""
        stay = self._stay_at(stays, started)
        if stay is None:
            return None
        entry = stay.entered
        for earlier in sorted((x for x in stays if x.entered < entry),
                              key=lambda x: x.entered, reverse=True):
            if earlier.exited is not None and earlier.exited < entry - self.settings.lookback_s:
                break
            entry = min(entry, earlier.entered)
        return entry

    # --- bounds ----------------------------------------------------------------------

    def _evict(self, now: float) -> None:
        horizon = now - self.settings.lookback_s - RECEIPT_SPAN_S
        # Closed stays, in the order they closed (exits arrive in about that order).
        while self._closed and self._closed[0][0] < horizon:
            _, zone, customer, visit_id = self._closed.popleft()
            stays = self._stays[zone].get(customer)
            if stays is None:
                continue
            for stay in stays:
                if stay.visit_id == visit_id:
                    stays.remove(stay)
                    break
            if not stays:
                del self._stays[zone][customer]
        # Unfinished transactions, noted long ago and never completed. Insertion order is
        # age order, so the walk stops at the first young one (None: noted before the
        # first process() call, stamped now).
        stale: list[str] = []
        for tid, t in self._transactions.items():
            if t.seen is None:
                t.seen = now
            elif t.seen >= now - RECEIPT_SPAN_S:
                break
            else:
                stale.append(tid)
        for tid in stale:
            del self._transactions[tid]
        self.counters.transactions_evicted += len(stale)


def _none(detail: str) -> _Match:
    return _Match(p.Attribution(method="none", confidence=0.0, candidates=0, detail=detail),
                  None)


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_CHARS


def _epoch(stamp: str | None) -> float | None:
    """RFC 3339 (as storegate writes them) to epoch seconds; None if unreadable."""
    if stamp is None:
        return None
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None
