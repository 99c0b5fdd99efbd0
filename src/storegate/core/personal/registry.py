"""The customers the store knows, from central: records, consent, versions.

Central sends, per store, the customers it wants the box to know (the ``customers``
command): consents, loyalty pseudonyms, a sealed presence identity, a profile snapshot,
pickup orders and wishlist. Everything is bounded where it enters, so one record is a few
KiB at most (``MAX_RECORD_CHARS`` of JSON, checked by the tests against the worst case).

:class:`Registry` is the box's state of them, pure and in memory: per-customer versions
(central's counter) so out-of-order and duplicate messages never regress it, tombstones
so an older upsert arriving after a newer remove never resurrects a customer, and
:meth:`Registry.allows`, **the one consent check** every feature calls. The registry never
holds an identity key: an applied record's opened identity goes out in the delta (to the
identity store and the presence pipeline) and the record is kept without it.

Tombstones carry a keyed hash of the customer, never the id, so a removed customer
leaves no readable trace. Pure: time and the hash key come in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from storegate.core.ble.eid import Identity
from storegate.core.identity_records import (
    CUSTOMER_PATTERN,
    MAX_GATEWAYS_PER_STORE,
    REQUEST_ID_PATTERN,
    SealedIdentityRecord,
    check_pseudonym,
    check_sealed_to,
)
from storegate.core.payloads import Payload

# A full sync of a large store. Records are bigger than identities (about 1 KiB typical,
# MAX_RECORD_CHARS at most): trust.max_command_bytes is the bound that bites first.
MAX_CUSTOMERS: Final = 100_000
MAX_RECORD_CHARS: Final = 8192  # JSON of the largest record the bounds below allow
MAX_VERSION: Final = (1 << 63) - 1
# Times central gives (consents, purchases, pickups): anything outside is garbage.
EARLIEST_AT: Final = 946_684_800.0  # 2000-01-01
LATEST_AT: Final = 4_102_444_800.0  # 2100-01-01
MAX_MINOR: Final = 10**11  # one amount: a billion in major units
MAX_LIFETIME_MINOR: Final = 10**13
MAX_TAGS: Final = 16
MAX_FAVOURITES: Final = 12
MAX_SIZES: Final = 12
MAX_RECENT_PURCHASES: Final = 8
MAX_PICKUP_ORDERS: Final = 6
MAX_WISHLIST: Final = 12
MAX_LOYALTY_IDS: Final = 8
TOMBSTONE_KEY_BYTES: Final = 16

Purpose = Literal["presence", "marketing", "staff_view"]
PURPOSES: Final[tuple[Purpose, ...]] = ("presence", "marketing", "staff_view")

# No control characters (C0, DEL, C1): these strings reach screens and logs of staff.
_TEXT: Final = r"^[^\x00-\x1f\x7f-\x9f]+$"
Tag = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=_TEXT)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=80, pattern=_TEXT)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=40,
                                        pattern=r"^[\x21-\x7e]+$")]
SizeValue = Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=_TEXT)]
Source = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
LoyaltyPseudonym = Annotated[str, StringConstraints(pattern=r"^ps1:[0-9a-f]{32}$")]
Epoch = Annotated[float, Field(ge=EARLIEST_AT, le=LATEST_AT)]
Minor = Annotated[int, Field(ge=0, le=MAX_MINOR)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Consent(_Record):
    """One purpose's consent as central recorded it."""

    granted: bool
    at: Epoch = Field(description="Epoch seconds of central's record of it.")
    source: Source = Field(description="Where it was given or withdrawn: app, web, store, "
                           "call-centre...")


class Consents(_Record):
    """No entry, or not granted: not allowed."""

    presence: Consent | None = None
    marketing: Consent | None = None
    staff_view: Consent | None = None

    def allows(self, purpose: Purpose) -> bool:
        c: Consent | None = getattr(self, purpose)
        return c is not None and c.granted


class RecentPurchase(_Record):
    at: Epoch
    channel: Literal["online", "store"]
    category: Tag
    name: Name
    amount_minor: Minor


class Profile(_Record):
    """A snapshot for greeting, offers and staff screens (each only where consent
    allows)."""

    greeting_name: Name | None = None
    tier: Tag | None = None
    segments: list[Tag] = Field(default=[], max_length=MAX_TAGS)
    preferences: list[Tag] = Field(default=[], max_length=MAX_TAGS)
    sizes: dict[Tag, SizeValue] = Field(default={}, max_length=MAX_SIZES)
    favourite_categories: list[Tag] = Field(default=[], max_length=MAX_FAVOURITES)
    recent_purchases: list[RecentPurchase] = Field(default=[],
                                                   max_length=MAX_RECENT_PURCHASES)
    lifetime_spend_minor: int = Field(default=0, ge=0, le=MAX_LIFETIME_MINOR)
    birthday_month: int | None = Field(default=None, ge=1, le=12)
    store_visits: int = Field(default=0, ge=0, le=1_000_000)


class PickupOrder(_Record):
    """An online order waiting for pickup at this store (click and collect)."""

    order_id: Code
    state: Literal["preparing", "ready", "collected", "cancelled"]
    counter: Tag | None = Field(default=None, description="Where it is collected.")
    items: int = Field(ge=0, le=10_000)
    ready_at: Epoch | None = None


class WishlistItem(_Record):
    sku: Code
    name: Name
    category: Tag


class CustomerRecord(_Record):
    """What the box knows of one customer, as central sends it (a whole snapshot)."""

    customer: str = Field(pattern=CUSTOMER_PATTERN, description="A pseudonym.")
    version: int = Field(ge=1, le=MAX_VERSION, description="Central's counter for this "
                         "customer: only a newer version is applied.")
    consents: Consents = Consents()
    loyalty_ids: list[LoyaltyPseudonym] = Field(
        default=[], max_length=MAX_LOYALTY_IDS,
        description="Loyalty-id pseudonyms ('ps1:' + 32 hex, core/pseudonyms.py).")
    identity: SealedIdentityRecord | None = Field(
        default=None, description="The presence identity, its key sealed (as in the "
        "identities command). Null keeps the key the box holds, if any; it is used only "
        "while presence consent is granted.")
    profile: Profile = Profile()
    pickup_orders: list[PickupOrder] = Field(default=[], max_length=MAX_PICKUP_ORDERS)
    wishlist: list[WishlistItem] = Field(default=[], max_length=MAX_WISHLIST)

    @field_validator("customer")
    @classmethod
    def _pseudonym(cls, v: str) -> str:
        return check_pseudonym(v)

    @model_validator(mode="after")
    def _consistent(self) -> CustomerRecord:
        if self.identity is not None and self.identity.customer != self.customer:
            raise ValueError("identity.customer is not the record's customer")
        if len(set(self.loyalty_ids)) != len(self.loyalty_ids):
            raise ValueError("a loyalty id is listed twice")
        if len({o.order_id for o in self.pickup_orders}) != len(self.pickup_orders):
            raise ValueError("a pickup order is listed twice")
        return self

    def allows(self, purpose: Purpose) -> bool:
        return self.consents.allows(purpose)


class Removal(_Record):
    customer: str = Field(pattern=CUSTOMER_PATTERN)
    version: int = Field(ge=1, le=MAX_VERSION, description="At least the version held.")

    @field_validator("customer")
    @classmethod
    def _pseudonym(cls, v: str) -> str:
        return check_pseudonym(v)


class CustomersCommand(Payload):
    """The customers central wants this store to know
    (``storegate/v1/<store>/commands/customers``).

    ``upsert`` adds or updates the records given, ``remove`` forgets customers (their
    identity keys are deleted and tracking stops at once), ``replace`` is a full sync:
    exactly the records given are known afterwards (never older than held). A record is
    applied only if its version is newer than what the box holds or has held (a remove
    leaves a tombstone with its version). Identity keys are sealed as in ``identities``.
    """

    op: Literal["upsert", "remove", "replace"]
    customers: list[CustomerRecord] = Field(default=[], max_length=MAX_CUSTOMERS)
    remove: list[Removal] = Field(default=[], max_length=MAX_CUSTOMERS,
                                  description="Customers to forget (op remove).")
    sealed_to: dict[str, str] = Field(
        default={}, max_length=MAX_GATEWAYS_PER_STORE,
        description="Gateway id -> the content key sealed to that gateway, as in the "
        "identities command.")
    request_id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)

    @model_validator(mode="after")
    def _shape(self) -> CustomersCommand:
        if self.op == "remove" and (self.customers or not self.remove):
            raise ValueError("remove takes remove (a list of {customer, version}), not "
                             "customers")
        if self.op != "remove" and self.remove:
            raise ValueError(f"{self.op} takes customers, not remove")
        if self.op == "upsert" and not self.customers:
            raise ValueError("upsert without customers")
        if not self.sealed_to and any(r.identity is not None for r in self.customers):
            raise ValueError("identities without sealed_to: keys are never sent in clear")
        if len({r.customer for r in self.customers}) != len(self.customers):
            raise ValueError("a customer is listed twice")
        if len({r.customer for r in self.remove}) != len(self.remove):
            raise ValueError("a customer is listed twice in remove")
        check_sealed_to(self.sealed_to)
        return self


@dataclass(frozen=True, slots=True)
class CustomersChange:
    """A customers command, opened (core/commands.py ``open_customers``): what the
    registry applies. ``identities``: customer -> the identity unsealed from its record."""

    op: Literal["upsert", "remove", "replace"]
    records: tuple[CustomerRecord, ...]
    identities: Mapping[str, Identity]
    remove: tuple[Removal, ...]
    request_id: str | None
    command_id: str | None = None

    @property
    def received(self) -> int:
        return len(self.records) + len(self.remove)


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A removed customer's last version, kept ``keep_s`` so an older upsert still in
    flight is refused. ``key``: a keyed hash of the customer, never the id."""

    key: str
    version: int
    until: float


@dataclass(frozen=True, slots=True)
class RegistryDelta:
    """What one change did, for the rest of the box to follow.

    ``enroll``: identities to enrol (presence granted, identity given); ``withdraw``:
    customers whose key must go and tracking be forgotten (presence consent gone,
    removed); ``marketing_withdrawn`` / ``staff_withdrawn``: customers who lost that
    consent (or were removed holding it). The rest is for the registry's own store:
    ``written`` records to save, ``deleted`` customers to delete, ``tombstones`` to save,
    ``untombed`` tombstone keys to delete, and tombstones expire at ``at``."""

    at: float
    applied: int = 0
    stale: int = 0
    removed: int = 0
    enroll: tuple[Identity, ...] = ()
    withdraw: tuple[str, ...] = ()
    marketing_withdrawn: tuple[str, ...] = ()
    staff_withdrawn: tuple[str, ...] = ()
    written: tuple[CustomerRecord, ...] = ()
    deleted: tuple[str, ...] = ()
    tombstones: tuple[Tombstone, ...] = ()
    untombed: tuple[str, ...] = ()


@dataclass(slots=True)
class _Builder:
    at: float
    applied: int = 0
    stale: int = 0
    removed: int = 0
    enroll: list[Identity] = field(default_factory=list)
    withdraw: list[str] = field(default_factory=list)
    marketing: list[str] = field(default_factory=list)
    staff: list[str] = field(default_factory=list)
    written: list[CustomerRecord] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    tombstones: list[Tombstone] = field(default_factory=list)
    untombed: list[str] = field(default_factory=list)

    def build(self) -> RegistryDelta:
        return RegistryDelta(
            self.at, self.applied, self.stale, self.removed, tuple(self.enroll),
            tuple(self.withdraw), tuple(self.marketing), tuple(self.staff),
            tuple(self.written), tuple(self.deleted), tuple(self.tombstones),
            tuple(self.untombed))


class Registry:
    """The customers this store knows, in memory. Owned by the event loop."""

    def __init__(self, *, tomb_key: bytes, keep_s: float,
                 records: Iterable[CustomerRecord] = (),
                 tombstones: Iterable[Tombstone] = ()) -> None:
        self.keep_s = keep_s
        self._tomb_key = tomb_key
        self._records: dict[str, CustomerRecord] = {}
        self._tombs: dict[str, Tombstone] = {}
        self._loyalty: dict[str, str] = {}
        self._last_at: float | None = None
        self.restore(records, tombstones, tomb_key=tomb_key)

    def restore(self, records: Iterable[CustomerRecord], tombstones: Iterable[Tombstone],
                *, tomb_key: bytes) -> None:
        """Replace everything with what the store holds (start, or after a failed
        write: memory goes back to what the disk says)."""
        self._tomb_key = tomb_key
        self._records = {}
        self._loyalty = {}
        for r in records:
            self._put(r.model_copy(update={"identity": None}))
        self._tombs = {t.key: t for t in tombstones}

    # --- the reads every feature makes ---------------------------------------------

    def allows(self, customer: str, purpose: Purpose) -> bool:
        """THE consent check: a record held and that purpose granted. No record, no
        entry or not granted: no."""
        r = self._records.get(customer)
        return r is not None and r.consents.allows(purpose)

    def get(self, customer: str) -> CustomerRecord | None:
        """The record (without its identity: the key lives in the identity store)."""
        return self._records.get(customer)

    def customer_of_loyalty(self, pseudonym: str) -> str | None:
        return self._loyalty.get(pseudonym)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, customer: object) -> bool:
        return customer in self._records

    def customers(self) -> Iterator[str]:
        return iter(self._records)

    @property
    def tombstones(self) -> int:
        return len(self._tombs)

    def tomb_key_of(self, customer: str) -> str:
        mac = hmac.new(self._tomb_key, b"tombstone:" + customer.encode(), hashlib.sha256)
        return mac.digest()[:TOMBSTONE_KEY_BYTES].hex()

    # --- changes -------------------------------------------------------------------

    def apply(self, change: CustomersChange, now: float) -> RegistryDelta:
        """Apply an opened customers command; never regresses a customer."""
        out = _Builder(now)
        self._expire(now)
        if change.op == "remove":
            for rm in change.remove:
                self._remove(rm.customer, rm.version, out, now)
            return out.build()
        listed: set[str] = set()
        for r in change.records:
            listed.add(r.customer)
            self._upsert(r, change.identities.get(r.customer), out)
        if change.op == "replace":
            for c in [c for c in self._records if c not in listed]:
                self._remove(c, self._records[c].version, out, now)
        return out.build()

    def erase(self, customers: Iterable[str], now: float | None = None) -> int:
        """Erasure: forget the records, keep only a tombstone (a keyed hash), so nothing
        in flight brings them back. The tombstone has the highest version there is: a
        customers command signed before the erasure travels on another topic and may
        arrive after it with a higher version than the box held; it is stale whatever
        its version, for as long as any command signed before the erasure is valid
        (``keep_s``). An erased customer who registers again gets a new pseudonym.
        Returns how many records were forgotten. ``now`` defaults to the time of the
        last change applied."""
        at = now if now is not None else (self._last_at or 0.0)
        out = _Builder(at)
        for c in customers:
            self._remove(c, MAX_VERSION, out, at)
        return out.removed

    def tombstone_of(self, customer: str) -> Tombstone | None:
        return self._tombs.get(self.tomb_key_of(customer))

    def expire(self, now: float) -> int:
        """Drop tombstones past their time; returns how many."""
        return self._expire(now)

    # --- inside --------------------------------------------------------------------

    def _expire(self, now: float) -> int:
        self._last_at = now
        gone = [k for k, t in self._tombs.items() if t.until <= now]
        for k in gone:
            del self._tombs[k]
        return len(gone)

    def _known_version(self, customer: str) -> tuple[int, str]:
        """The newest version held or tombstoned (0: never seen), and the tomb key."""
        key = self.tomb_key_of(customer)
        held = self._records.get(customer)
        tomb = self._tombs.get(key)
        return max(held.version if held else 0, tomb.version if tomb else 0), key

    def _upsert(self, r: CustomerRecord, identity: Identity | None, out: _Builder) -> None:
        known, key = self._known_version(r.customer)
        if r.version <= known:
            out.stale += 1  # a duplicate or an older message: never regress
            return
        old = self._records.get(r.customer)
        new = r.model_copy(update={"identity": None}) if r.identity is not None else r
        self._put(new, old)
        if self._tombs.pop(key, None) is not None:
            out.untombed.append(key)
        out.applied += 1
        out.written.append(new)
        c = r.customer
        if new.allows("presence"):
            if identity is not None:
                out.enroll.append(identity)
        elif old is None or old.allows("presence"):
            out.withdraw.append(c)  # no record before: a key held from elsewhere goes too
        if old is not None and old.allows("marketing") and not new.allows("marketing"):
            out.marketing.append(c)
        if old is not None and old.allows("staff_view") and not new.allows("staff_view"):
            out.staff.append(c)

    def _remove(self, customer: str, version: int, out: _Builder, now: float) -> None:
        key = self.tomb_key_of(customer)
        held = self._records.get(customer)
        tomb = self._tombs.get(key)
        # A remove at the version held applies (privacy first: the tie goes to removal);
        # one not newer than a tombstone is a duplicate.
        if (held is not None and version < held.version) or \
                (tomb is not None and version <= tomb.version):
            out.stale += 1
            return
        if held is not None:
            self._drop(held)
            out.removed += 1
            out.deleted.append(customer)
            if held.allows("marketing"):
                out.marketing.append(customer)
            if held.allows("staff_view"):
                out.staff.append(customer)
        out.withdraw.append(customer)  # its key goes, whoever enrolled it
        t = Tombstone(key, version, now + self.keep_s)
        self._tombs[key] = t
        out.tombstones.append(t)

    def _put(self, r: CustomerRecord, old: CustomerRecord | None = None) -> None:
        if old is not None:
            self._unindex(old)
        self._records[r.customer] = r
        for p in r.loyalty_ids:
            self._loyalty[p] = r.customer

    def _drop(self, r: CustomerRecord) -> None:
        del self._records[r.customer]
        self._unindex(r)

    def _unindex(self, r: CustomerRecord) -> None:
        for p in r.loyalty_ids:
            if self._loyalty.get(p) == r.customer:
                del self._loyalty[p]
