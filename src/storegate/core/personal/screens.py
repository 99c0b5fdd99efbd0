"""Staff screens: who is at each lane, who waits for a pickup on the floor, and what a
staff member of a given role may see of them. Pure: events, the registry and ``now`` in,
views out.

**Who is at a lane**, strongest evidence first (the stitcher's order,
core/personal/stitching.py):

1. a loyalty card scanned in the lane's open transaction that maps to a known customer;
2. an offer token reserved in that transaction (``offer.reserved`` names its customer);
3. presence: exactly one consenting customer in the lane's checkout zone (several:
   ``ambiguous``, nobody named; the stitcher's rule for receipts).

The transaction part (card, token, token state) clears when the lane's receipt completes
or is voided; a customer served by that receipt is not shown again by presence until
they leave the checkout zone and come back; leaving the zone clears them.

**What is shown** is a projection by consent and role: nothing personal unless
``Registry.allows(customer, "staff_view")`` (the one consent check); then only the fields
:data:`ROLE_FIELDS` gives the staff member's role. The token state is about the token,
not the person: it is shown to the roles with ``token`` whatever the consent (the
cashier must know whether to apply the discount).

Bounded: lanes are the configured ones (or :data:`MAX_LANES` first seen), customers per
checkout zone :data:`MAX_IN_ZONE`, customers in the store :data:`MAX_IN_STORE`; ids from
outside longer than :data:`MAX_ID_CHARS` are ignored and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.personal.registry import CustomerRecord, Registry

StaffRole = Literal["cashier", "floor", "manager"]
ScreenField = Literal[
    "greeting_name", "tier", "segments", "preferences", "sizes", "favourite_categories",
    "recent_purchases", "lifetime_spend_minor", "offers", "pickup", "token"]

ALL_FIELDS: Final[tuple[ScreenField, ...]] = (
    "greeting_name", "tier", "segments", "preferences", "sizes", "favourite_categories",
    "recent_purchases", "lifetime_spend_minor", "offers", "pickup", "token")

# THE role -> fields table (docs/http.md repeats it). A field not listed is never sent
# to that role's screen, whatever the customer consented to.
ROLE_FIELDS: Final[Mapping[StaffRole, frozenset[ScreenField]]] = {
    "cashier": frozenset({"greeting_name", "tier", "offers", "pickup", "token"}),
    "floor": frozenset({"greeting_name", "preferences", "sizes", "favourite_categories",
                        "pickup"}),
    "manager": frozenset(ALL_FIELDS),
}

MAX_LANES: Final = 256  # when no lanes are configured: the first seen, then ignored
MAX_IN_ZONE: Final = 64  # customers in one checkout zone at once (a queue, not a crowd)
MAX_IN_STORE: Final = 50_000  # the stitcher's bound on tracked customers
MAX_ID_CHARS: Final = 128
MAX_OFFERS_SHOWN: Final = 8

Source = Literal["loyalty", "token", "presence", "ambiguous"]
TokenStateName = Literal["reserved", "rejected", "redeemed", "released"]

# Why a token was refused, in words a cashier can act on.
REJECTION_TEXT: Final[Mapping[str, str]] = {
    "malformed": "not an offer code",
    "unknown_key": "not an offer of this store",
    "bad_signature": "forged or altered code",
    "expired": "offer expired",
    "not_yet_valid": "offer not valid yet",
    "wrong_store": "offer of another store",
    "revoked": "offer withdrawn",
    "redeemed": "offer already used",
    "reserved_elsewhere": "offer in use at another till",
    "customer_mismatch": "offer belongs to another customer",
}


# --- what screens get (JSON) ------------------------------------------------------------


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScreenOffer(_View):
    """A redeemable offer the customer holds."""

    title: str
    expires_at: str


class ScreenPurchase(_View):
    at: str
    channel: Literal["online", "store"]
    category: str
    name: str
    amount_minor: int


class ScreenPickup(_View):
    """A pickup order ready to hand over."""

    order_id: str
    counter: str | None
    items: int


class TokenView(_View):
    """The state of the offer token scanned last in the open transaction."""

    state: TokenStateName
    reason: str | None = Field(default=None, description="rejected: the reason code "
                               "(offer.rejected's); released: voided, timeout...")
    text: str = Field(description="What it means, for the cashier.")


class ScreenCustomer(_View):
    """The customer as this role may see them: absent fields are not allowed to it (or
    empty)."""

    greeting_name: str | None = None
    tier: str | None = None
    segments: list[str] | None = None
    preferences: list[str] | None = None
    sizes: dict[str, str] | None = None
    favourite_categories: list[str] | None = None
    recent_purchases: list[ScreenPurchase] | None = None
    lifetime_spend_minor: int | None = None
    offers: list[ScreenOffer] | None = None
    pickup: list[ScreenPickup] | None = None


class LaneScreen(_View):
    """One lane's screen. ``present``: someone is identified at the lane (by card, token
    or as the only customer in the checkout zone); ``customer`` is null unless they
    consented to staff_view."""

    lane: str
    present: bool
    source: Source | None = Field(description="How the customer was found; ambiguous: "
                                  "several customers in the checkout zone, none named.")
    candidates: int = Field(ge=0, description="Customers in the checkout zone.")
    transaction: bool = Field(description="A transaction is open at the lane.")
    customer: ScreenCustomer | None
    token: TokenView | None


class FloorEntry(_View):
    zone: str | None = Field(description="The zone they are in; null: in the store, no "
                             "zone known.")
    customer: ScreenCustomer


class FloorScreen(_View):
    """Customers with a pickup order ready who are in the store (and consented to
    staff_view), by zone."""

    waiting: list[FloorEntry]


# --- projection ---------------------------------------------------------------------------


def fields_for(role: StaffRole) -> frozenset[ScreenField]:
    return ROLE_FIELDS[role]


def project(record: CustomerRecord | None, role: StaffRole, *, staff_view: bool,
            offers: Sequence[ScreenOffer] = (), epoch_text: Callable[[float], str]
            = ev.rfc3339) -> tuple[ScreenCustomer | None, tuple[ScreenField, ...]]:
    """The customer as ``role`` may see them, and the fields shown (for the access
    event). Nothing without a record or without ``staff_view`` (pass
    ``registry.allows(customer, "staff_view")``)."""
    if record is None or not staff_view:
        return None, ()
    allowed = ROLE_FIELDS[role]
    prof = record.profile
    values: dict[str, object] = {}
    if "greeting_name" in allowed and prof.greeting_name:
        values["greeting_name"] = prof.greeting_name
    if "tier" in allowed and prof.tier:
        values["tier"] = prof.tier
    if "segments" in allowed and prof.segments:
        values["segments"] = list(prof.segments)
    if "preferences" in allowed and prof.preferences:
        values["preferences"] = list(prof.preferences)
    if "sizes" in allowed and prof.sizes:
        values["sizes"] = dict(prof.sizes)
    if "favourite_categories" in allowed and prof.favourite_categories:
        values["favourite_categories"] = list(prof.favourite_categories)
    if "recent_purchases" in allowed and prof.recent_purchases:
        values["recent_purchases"] = [ScreenPurchase(
            at=epoch_text(rp.at), channel=rp.channel, category=rp.category, name=rp.name,
            amount_minor=rp.amount_minor) for rp in prof.recent_purchases]
    if "lifetime_spend_minor" in allowed and prof.lifetime_spend_minor:
        values["lifetime_spend_minor"] = prof.lifetime_spend_minor
    if "offers" in allowed and offers:
        values["offers"] = list(offers[:MAX_OFFERS_SHOWN])
    ready = ready_pickups(record)
    if "pickup" in allowed and ready:
        values["pickup"] = ready
    shown = tuple(f for f in ALL_FIELDS if f in values)
    return ScreenCustomer.model_validate(values), shown


def ready_pickups(record: CustomerRecord) -> list[ScreenPickup]:
    return [ScreenPickup(order_id=o.order_id, counter=o.counter, items=o.items)
            for o in record.pickup_orders if o.state == "ready"]


# --- lane and floor state -------------------------------------------------------------------


@dataclass(slots=True)
class _Token:
    state: TokenStateName
    reason: str | None = None
    offer_id: str | None = None


@dataclass(slots=True)
class _Lane:
    zone: str | None
    in_zone: dict[str, str] = field(default_factory=dict)  # customer -> zone visit id
    served: set[str] = field(default_factory=set)  # served by a receipt, still in zone
    transaction: str | None = None
    loyalty: str | None = None  # customer of a card scanned in the transaction
    token_customer: str | None = None
    token: _Token | None = None

    def clear_transaction(self) -> None:
        self.transaction = self.loyalty = self.token_customer = None
        self.token = None


@dataclass(frozen=True, slots=True)
class Who:
    """Who is at a lane now (internal: the pseudonym never reaches a screen)."""

    customer: str | None
    source: Source | None
    candidates: int
    transaction: str | None


@dataclass(slots=True)
class ScreenCounters:
    """Since start; no ids."""

    events: int = 0
    inputs_rejected: int = 0  # ids too long or empty, lanes beyond the bound
    evicted: int = 0  # customers dropped at a bound
    forgotten: int = 0


class ScreenState:
    """Per lane and for the floor, fed with the event flow's drafts (after stitching
    and redemption). ``lane_zones``: lane -> its checkout zone (lanes without one are
    listed with None); ``lanes``: every configured lane (empty: accept the first
    :data:`MAX_LANES` seen). One owner (the event loop): no locks.

    :meth:`feed` returns the topics whose state changed: ``lane:<id>`` and ``floor``.
    """

    def __init__(self, registry: Registry, *, lanes: Iterable[str] = (),
                 lane_zones: Mapping[str, str] | None = None) -> None:
        self.registry = registry
        self.counters = ScreenCounters()
        zones = dict(lane_zones or {})
        self._fixed = bool(set(lanes) | set(zones))
        self._lanes: dict[str, _Lane] = {
            lane: _Lane(zones.get(lane)) for lane in [*lanes, *zones]}
        self._zone_lanes: dict[str, list[str]] = {}
        for lane, zone in zones.items():
            self._zone_lanes.setdefault(zone, []).append(lane)
        self._store: dict[str, str | None] = {}  # customer in the store -> zone or None

    # --- reads -------------------------------------------------------------------------

    @property
    def lanes(self) -> list[str]:
        return list(self._lanes)

    def has_lane(self, lane: str) -> bool:
        return lane in self._lanes

    def who(self, lane: str) -> Who:
        st = self._lanes.get(lane)
        if st is None:
            return Who(None, None, 0, None)
        # customers a receipt served, still packing, do not count: the next one does
        here = [c for c in st.in_zone if c not in st.served]
        if st.loyalty is not None:
            return Who(st.loyalty, "loyalty", len(here), st.transaction)
        if st.token_customer is not None:
            return Who(st.token_customer, "token", len(here), st.transaction)
        if len(here) > 1:
            return Who(None, "ambiguous", len(here), st.transaction)
        if len(here) == 1:
            return Who(here[0], "presence", 1, st.transaction)
        return Who(None, None, 0, st.transaction)

    def lane_view(self, lane: str, role: StaffRole,
                  offers_of: Callable[[str], Sequence[ScreenOffer]] = lambda _: (),
                  ) -> tuple[LaneScreen, Who, tuple[ScreenField, ...]]:
        """The lane's screen for ``role``, who it is about, and the personal fields it
        shows (empty: nothing personal, no access to log)."""
        who = self.who(lane)
        st = self._lanes.get(lane)
        customer: ScreenCustomer | None = None
        shown: tuple[ScreenField, ...] = ()
        if who.customer is not None:
            c = who.customer
            allowed = self.registry.allows(c, "staff_view")
            offers = offers_of(c) if allowed and "offers" in ROLE_FIELDS[role] else ()
            customer, shown = project(self.registry.get(c), role, staff_view=allowed,
                                      offers=offers)
        token = None
        if st is not None and st.token is not None and "token" in ROLE_FIELDS[role]:
            token = _token_view(st.token)
        view = LaneScreen(lane=lane, present=who.customer is not None, source=who.source,
                          candidates=who.candidates,
                          transaction=st is not None and st.transaction is not None,
                          customer=customer, token=token)
        return view, who, shown

    def floor_view(self, role: StaffRole) -> tuple[FloorScreen, list[tuple[str, tuple[
            ScreenField, ...]]]]:
        """Customers with a pickup ready in the store, by zone (then name; those in no
        known zone last), and for each shown the (customer, fields) of the access."""
        rows: list[tuple[bool, str, str, FloorEntry]] = []
        access: list[tuple[str, tuple[ScreenField, ...]]] = []
        for c, zone in self._store.items():
            record = self.registry.get(c)
            if record is None or not ready_pickups(record):
                continue
            customer, shown = project(record, role,
                                      staff_view=self.registry.allows(c, "staff_view"))
            if customer is None or not shown:
                continue
            rows.append((zone is None, zone or "", customer.greeting_name or "",
                         FloorEntry(zone=zone, customer=customer)))
            access.append((c, shown))
        rows.sort(key=lambda r: r[:3])  # zones by name, then "somewhere in the store"
        return FloorScreen(waiting=[r[3] for r in rows]), access

    # --- the event flow -------------------------------------------------------------------

    def feed(self, drafts: Iterable[ev.EventDraft]) -> set[str]:
        """Apply the drafts; the topics whose screens may have changed."""
        changed: set[str] = set()
        for d in drafts:
            data = d.data
            if isinstance(data, p.VisitEntered | p.VisitExited):
                self._visit(data, changed)
            elif isinstance(data, p.PosScanned):
                self._scanned(data, changed)
            elif isinstance(data, p.OfferReserved):
                st = self._tx(data.lane, data.transaction_id, changed)
                if st is not None:
                    st.token = _Token("reserved", None, data.offer_id)
                    if data.customer is not None and _valid(data.customer):
                        st.token_customer = data.customer
            elif isinstance(data, p.OfferRejected):
                st = self._tx(data.lane, data.transaction_id, changed)
                if st is not None:
                    st.token = _Token("rejected", data.reason, data.token_id)
            elif isinstance(data, p.OfferReleased):
                st = self._lane(data.lane)
                if st is not None and st.transaction == data.transaction_id:
                    st.token = _Token("released", data.reason, data.offer_id)
                    changed.add(_topic(data.lane))
            elif isinstance(data, p.PurchaseCompleted | p.PurchaseVoided):
                self._closed(data, changed)
            else:
                continue
            self.counters.events += 1
        return changed

    def refresh(self) -> set[str]:
        """The registry changed (a customers command): every screen may have."""
        return {_topic(lane) for lane in self._lanes} | {"floor"}

    def forget(self, customers: Iterable[str]) -> set[str]:
        """Consent withdrawn or erasure: the customers leave every lane and the floor at
        once (whatever is shown of them is recomputed without them)."""
        names = set(customers)
        changed: set[str] = set()
        for lane, st in self._lanes.items():
            hit = bool(names & st.in_zone.keys()) or bool(names & st.served) \
                or st.loyalty in names or st.token_customer in names
            for c in names & st.in_zone.keys():
                del st.in_zone[c]
            st.served -= names
            if st.loyalty in names:
                st.loyalty = None
            if st.token_customer in names:
                st.token_customer = None
                st.token = None
            if hit:
                changed.add(_topic(lane))
                self.counters.forgotten += 1
        for c in names & self._store.keys():
            del self._store[c]
            changed.add("floor")
        return changed

    def holds(self, customer: str) -> bool:
        """Whether any state names the customer (erasure is checked with this)."""
        return customer in self._store or any(
            customer in st.in_zone or customer in st.served or customer in (
                st.loyalty, st.token_customer) for st in self._lanes.values())

    # --- inside --------------------------------------------------------------------------

    def _lane(self, lane: str) -> _Lane | None:
        st = self._lanes.get(lane)
        if st is not None:
            return st
        if self._fixed or len(self._lanes) >= MAX_LANES or not _valid(lane):
            self.counters.inputs_rejected += 1
            return None
        st = self._lanes[lane] = _Lane(None)
        return st

    def _tx(self, lane: str, transaction_id: str, changed: set[str]) -> _Lane | None:
        """The lane, its transaction set to ``transaction_id`` (a new one starts
        afresh: a transaction left open and never closed does not leak into it)."""
        st = self._lane(lane)
        if st is None:
            return None
        if not _valid(transaction_id):
            self.counters.inputs_rejected += 1
            return None
        if st.transaction != transaction_id:
            st.clear_transaction()
            st.transaction = transaction_id
        changed.add(_topic(lane))
        return st

    def _scanned(self, data: p.PosScanned, changed: set[str]) -> None:
        st = self._tx(data.lane, data.transaction_id, changed)
        if st is None or data.kind != "loyalty" or data.value is None:
            return  # offer tokens count once verified: offer.reserved / offer.rejected
        if not _valid(data.value):
            self.counters.inputs_rejected += 1
            return
        customer = self.registry.customer_of_loyalty(data.value)
        if customer is not None:
            st.loyalty = customer

    def _closed(self, data: p.PurchaseCompleted | p.PurchaseVoided,
                changed: set[str]) -> None:
        st = self._lane(data.lane)
        if st is None:
            return
        if isinstance(data, p.PurchaseCompleted):
            # served: presence no longer shows them, until they leave and come back
            st.served.update(st.in_zone)
        st.clear_transaction()
        changed.add(_topic(data.lane))

    def _visit(self, data: p.VisitEntered | p.VisitExited, changed: set[str]) -> None:
        c = data.customer
        if c is None:
            return
        if not _valid(c):
            self.counters.inputs_rejected += 1
            return
        entered = isinstance(data, p.VisitEntered)
        if data.zone is None:  # the store visit
            if entered:
                if c not in self._store and len(self._store) >= MAX_IN_STORE:
                    del self._store[next(iter(self._store))]
                    self.counters.evicted += 1
                self._store.setdefault(c, None)
                self._floor_changed(c, changed)
                return
            if c in self._store:
                del self._store[c]
                self._floor_changed(c, changed)
            for lane, st in self._lanes.items():  # left the store: left the lanes
                if st.in_zone.pop(c, None) is not None or c in st.served:
                    st.served.discard(c)
                    changed.add(_topic(lane))
            return
        if c in self._store:
            if entered:
                self._store[c] = data.zone
                self._floor_changed(c, changed)
            elif self._store[c] == data.zone:
                self._store[c] = None
                self._floor_changed(c, changed)
        for lane in self._zone_lanes.get(data.zone, ()):
            st = self._lanes[lane]
            if entered:
                if c not in st.in_zone and len(st.in_zone) >= MAX_IN_ZONE:
                    del st.in_zone[next(iter(st.in_zone))]
                    self.counters.evicted += 1
                st.in_zone[c] = data.visit_id
            elif st.in_zone.get(c) == data.visit_id:
                del st.in_zone[c]
                st.served.discard(c)
                # the customer left: a card or token of theirs in an open transaction
                # stays (the receipt is still theirs), their presence goes
            changed.add(_topic(lane))

    def _floor_changed(self, customer: str, changed: set[str]) -> None:
        record = self.registry.get(customer)
        if record is not None and ready_pickups(record):
            changed.add("floor")


def _token_view(t: _Token) -> TokenView:
    if t.state == "rejected":
        text = "Rejected: " + REJECTION_TEXT.get(t.reason or "", t.reason or "refused")
    elif t.state == "reserved":
        text = "Valid: offer reserved for this sale"
    elif t.state == "redeemed":
        text = "Redeemed"
    else:
        text = f"Released ({t.reason})" if t.reason else "Released"
    return TokenView(state=t.state, reason=t.reason, text=text)


def _topic(lane: str) -> str:
    return f"lane:{lane}"


def _valid(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_CHARS


def viewed_draft(*, lane: str | None, role: StaffRole, session: str, customer: str,
                 fields: Sequence[ScreenField], at: float) -> ev.EventDraft:
    """The access event of one view of a personal profile."""
    return ev.EventDraft(ev.STAFF_VIEWED, f"lane/{lane}" if lane else "floor", at,
                         p.StaffViewed(lane=lane, staff_role=role, session=session,
                                       customer=customer, fields=list(fields),
                                       viewed_at=ev.rfc3339(at)))
