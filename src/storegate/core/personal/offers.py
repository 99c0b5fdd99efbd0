"""The offer engine: a trigger and what the box knows about a customer in, one ranked
:class:`Decision` per campaign the trigger concerns out, issued or suppressed with the
reason; every decision becomes an event (``offer.issued`` / ``offer.suppressed``).

Pure: the time is passed in, the store's ``tzinfo`` is given at construction, the
state (offers held, issue times) changes only through the ``record*`` methods, so a
restart rebuilds it with :meth:`OfferEngine.load`. Not thread-safe: one owner (the
personal service on the event loop).

Why the order of checks is what it is:

1. **Consent first**, before the profile is looked at: without marketing consent the
   customer's segments and preferences are not evaluated against any campaign; one
   ``no_consent`` decision (no campaign) records the missed reach.
2. **Trigger and audience** select the campaigns aimed at this customer, through an
   index (trigger kind and zone or category, then segment): 500 campaigns cost what
   the handful that match cost. Audience misses are not events by default (a store
   entry would otherwise publish one per campaign in the store).
3. **Rank** every campaign aimed at the customer by priority, then affinity (the
   campaign's tags against the customer's preferences and favourite categories), then
   id (every gateway ranks alike), and walk down the ranking:
4. **per campaign**: validity, opening hours, already held, the campaign's daily cap;
5. **per customer**, for the first campaign that passes: quiet hours, then the caps
   (per day, per visit, minimum gap: defaults from Braze's one in-app message per
   30 s, and 3 a visit). If they pass it wins: issued, unless the customer is in its
   control group (a stable hash: the same customer is always in or out), in which
   case nothing is sent and the hold-out is recorded like an issue (so control and
   treatment meet the same caps and central's uplift compares like with like). The
   campaigns below it are ``lower_rank``.

At most ``max_reported_per_trigger`` decisions come out of one trigger (the winner
always among them); the rest are counted, not built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Final, Literal

from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.payloads import OfferSuppressionReason, OfferTriggerKind
from storegate.core.personal.campaigns import (
    WEEKDAYS,
    Campaign,
    CampaignRef,
    CampaignsCommand,
    Content,
    Variant,
    minutes,
)

TriggerKind = Literal["store_entered", "zone_entered", "zone_dwelled", "purchase_category"]
Outcome = Literal["issued", "suppressed"]

# Issue times are kept this long: enough for the per-day caps whatever the store's
# offset from UTC (a local day is at most 25 h long, DST included).
HISTORY_S: Final = 2 * 86_400.0
_CONTROL_SALT: Final = b"storegate offer control v1\x00"
_VARIANT_SALT: Final = b"storegate offer variant v1\x00"
_UNIT: Final = float(1 << 64)


# --- what comes in -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trigger:
    """Something a customer did: a store visit started (``store_entered`` also drives
    the nth_visit, birthday_month and pickup_ready campaigns), a zone was entered or
    dwelled in, a purchase with these categories completed."""

    kind: TriggerKind
    customer: str
    at: float  # epoch s when it happened
    visit_id: str | None = None
    zone: str | None = None
    dwell_s: float = 0.0
    categories: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.kind in ("zone_entered", "zone_dwelled") and not self.zone:
            raise ValueError(f"a {self.kind} trigger needs its zone")
        if self.zone is not None:
            object.__setattr__(self, "zone", self.zone.lower())
        object.__setattr__(self, "categories", _lowered(self.categories))


@dataclass(frozen=True, slots=True)
class CustomerFacts:
    """What the engine needs to know about a customer; the integrator maps the
    registry's record to it. Tags are compared case-insensitively."""

    customer: str  # pseudonym
    marketing: bool  # marketing consent granted now
    tier: str | None = None
    segments: frozenset[str] = frozenset()
    preferences: frozenset[str] = frozenset()
    favourite_categories: frozenset[str] = frozenset()
    birthday_month: int | None = None  # 1..12
    store_visits: int = 1  # visits to this store, the current one included
    pickups_ready: int = 0  # online orders waiting for pickup at this store

    def __post_init__(self) -> None:
        if self.birthday_month is not None and not 1 <= self.birthday_month <= 12:
            raise ValueError("birthday_month is 1..12")
        if self.store_visits < 0 or self.pickups_ready < 0:
            raise ValueError("store_visits and pickups_ready are counts")
        if self.tier is not None:
            object.__setattr__(self, "tier", self.tier.lower())
        for name in ("segments", "preferences", "favourite_categories"):
            object.__setattr__(self, name, _lowered(getattr(self, name)))

    @property
    def new(self) -> bool:
        return self.store_visits <= 1


def _lowered(tags: Iterable[str]) -> frozenset[str]:
    return frozenset(t.lower() for t in tags)


@dataclass(frozen=True, slots=True)
class OfferPolicy:
    """The store's rules over every campaign. ``quiet_hours`` is ``("21:00", "09:00")``
    in local time, [start, end), and may cross midnight."""

    enabled: bool = True
    min_gap_s: float = 30.0
    max_per_visit: int = 3
    max_per_day: int = 5
    quiet_hours: tuple[str, str] | None = None
    max_issued_per_trigger: int = 1
    report_audience: bool = False  # audience misses as events: for small tests only
    max_reported_per_trigger: int = 8  # decisions (events) a trigger may produce

    def __post_init__(self) -> None:
        if not 0 <= self.min_gap_s <= 86_400:
            raise ValueError("min_gap_s is 0..86400")
        if not (1 <= self.max_per_visit <= 100 and 1 <= self.max_per_day <= 1000
                and 1 <= self.max_issued_per_trigger <= 10
                and 1 <= self.max_reported_per_trigger <= 1000):
            raise ValueError("caps: max_per_visit 1..100, max_per_day 1..1000, "
                             "max_issued_per_trigger 1..10, max_reported_per_trigger "
                             "1..1000")
        if self.quiet_hours is not None:
            start, end = (_hhmm(t) for t in self.quiet_hours)
            if start == end:
                raise ValueError("quiet_hours: start and end are equal")

    def quiet_range(self) -> tuple[int, int] | None:
        if self.quiet_hours is None:
            return None
        return _hhmm(self.quiet_hours[0]), _hhmm(self.quiet_hours[1])


def _hhmm(text: str) -> int:
    h, sep, m = text.partition(":")
    if not (sep and h.isdigit() and m.isdigit() and len(m) == 2
            and 0 <= int(h) <= 23 and 0 <= int(m) <= 59):
        raise ValueError(f"{text!r} is not a time HH:MM")
    return minutes(text)


# --- what goes out -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """One campaign's fate for one trigger. ``campaign`` is None only for
    ``no_consent`` (the profile was not evaluated against any campaign)."""

    outcome: Outcome
    customer: str
    trigger: OfferTriggerKind  # the campaign's trigger (or the trigger's own kind)
    zone: str | None
    visit_id: str | None
    decided_at: float
    campaign: Campaign | None
    variant: Variant | None = None
    reason: OfferSuppressionReason | None = None
    detail: str = ""
    why: tuple[str, ...] = ()
    expires_at: float | None = None  # issued and control_group: until when it is held

    @property
    def content(self) -> Content | None:
        if self.variant is not None:
            return self.variant.content
        return None if self.campaign is None else self.campaign.content

    def held(self, offer_id: str | None) -> HeldOffer:
        """What the engine keeps of an issued (or held-out) decision."""
        if self.campaign is None or self.expires_at is None:
            raise ValueError("only issued and control_group decisions are held")
        return HeldOffer(offer_id, self.customer, self.campaign.id, self.campaign.version,
                         None if self.variant is None else self.variant.id, self.visit_id,
                         self.decided_at, self.expires_at,
                         control=self.reason == "control_group")


@dataclass(frozen=True, slots=True)
class HeldOffer:
    """An offer issued to a customer (``control``: a hold-out, recorded, never sent).
    The redemption store persists these; :meth:`OfferEngine.load` rebuilds from them."""

    offer_id: str | None  # the token id; None for a control-group hold-out
    customer: str
    campaign: str
    campaign_version: int
    variant: str | None
    visit_id: str | None
    issued_at: float
    expires_at: float
    control: bool = False
    redeemed: bool = False


@dataclass(frozen=True, slots=True)
class CampaignsApplied:
    """What a campaigns change did: the answer's figures."""

    applied: int  # campaigns added or replaced by a newer version
    stale: int  # older than what is held, or not newer than its removal
    removed: int  # active campaigns withdrawn
    active: int  # campaigns held afterwards


# --- stable hashes: control group and variants -------------------------------------


def _unit(salt: bytes, customer: str, campaign: str) -> float:
    digest = hashlib.sha256(salt + campaign.encode() + b"\x00" + customer.encode()).digest()
    return int.from_bytes(digest[:8], "big") / _UNIT


def in_control_group(customer: str, campaign: str, share: float) -> bool:
    """Stable: the same customer and campaign id always give the same answer, on every
    gateway and after every restart (the campaign's version does not move anyone)."""
    return share > 0 and _unit(_CONTROL_SALT, customer, campaign) < share


def pick_variant(customer: str, campaign: str, variants: Sequence[Variant]) -> Variant | None:
    """The customer's A/B variant by weight, stable like the control group and drawn
    independently of it (another salt)."""
    if not variants:
        return None
    point = _unit(_VARIANT_SALT, customer, campaign) * sum(v.weight for v in variants)
    for v in variants:
        point -= v.weight
        if point < 0:
            return v
    return variants[-1]


# --- campaigns, prepared for matching -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """A campaign in the shape the hot path wants: sets, epoch seconds, minutes."""

    campaign: Campaign
    kind: OfferTriggerKind
    key: str | int | None  # zone, category or n of its trigger
    min_dwell_s: float
    segments: frozenset[str]
    tiers: frozenset[str]
    preferences: frozenset[str]
    customers: Literal["new", "returning", "any"]
    tags: frozenset[str]
    valid_from: float
    valid_until: float
    hours: tuple[tuple[tuple[int, int], ...], ...] | None  # per weekday, Monday first
    order: tuple[int, str]  # output order of pre-rank decisions: priority, then id

    @classmethod
    def of(cls, c: Campaign) -> Prepared:
        t = c.trigger
        key: str | int | None = None
        if t.kind in ("zone_entered", "zone_dwelled"):
            key = t.zone
        elif t.kind == "purchase_category":
            key = t.category
        elif t.kind == "nth_visit":
            key = t.n
        hours = None if c.hours is None else tuple(
            tuple(sorted(s.range() for s in c.hours.get(day, []))) for day in WEEKDAYS)
        start, until = c.valid_span()
        a = c.audience
        return cls(c, t.kind, key, getattr(t, "min_dwell_s", 0.0), frozenset(a.segments),
                   frozenset(a.tiers), frozenset(a.preferences), a.customers,
                   frozenset(c.content.tags), start, until, hours, (-c.priority, c.id))

    def fits(self, facts: CustomerFacts, *, segments_checked: bool = False) -> bool:
        """The audience: every list given must match (segments any-of, tier, any of the
        preferences, new or returning)."""
        return ((segments_checked or not self.segments
                 or not self.segments.isdisjoint(facts.segments))
                and (not self.tiers or facts.tier in self.tiers)
                and (not self.preferences or not self.preferences.isdisjoint(
                    facts.preferences))
                and (self.customers == "any" or (self.customers == "new") == facts.new))


@dataclass(slots=True)
class _Slot:
    """The campaigns of one trigger key, split by the segments they require."""

    all: list[Prepared] = field(default_factory=list)
    open: list[Prepared] = field(default_factory=list)  # no segment required
    by_segment: dict[str, list[Prepared]] = field(default_factory=dict)

    def add(self, c: Prepared) -> None:
        self.all.append(c)
        if not c.segments:
            self.open.append(c)
        for s in c.segments:
            self.by_segment.setdefault(s, []).append(c)


@dataclass(frozen=True, slots=True)
class _Issue:
    at: float
    day: int  # local date ordinal
    campaign: str
    visit_id: str | None


@dataclass(slots=True)
class _CustomerState:
    held: dict[str, HeldOffer] = field(default_factory=dict)  # campaign id -> offer
    issues: list[_Issue] = field(default_factory=list)  # oldest first, HISTORY_S


@dataclass(frozen=True, slots=True)
class _Local:
    weekday: int
    minute: int
    day: int
    month: int


# --- the engine ----------------------------------------------------------------------


class OfferEngine:
    """Campaigns and the offers issued, in memory; :meth:`decide` on every trigger."""

    def __init__(self, policy: OfferPolicy | None = None, *, tz: tzinfo = UTC) -> None:
        self.policy = policy or OfferPolicy()
        self.tz = tz
        self._quiet = self.policy.quiet_range()
        self._quiet_text = "-".join(self.policy.quiet_hours or ())
        self._campaigns: dict[str, Prepared] = {}
        self._versions: dict[str, int] = {}  # held or removed: never regress
        self._slots: dict[tuple[str, str | int | None], _Slot] = {}
        self._customers: dict[str, _CustomerState] = {}
        self._offers: dict[str, HeldOffer] = {}  # offer id -> held (unredeemed)
        self.decisions_total = 0
        self.unreported_total = 0  # decisions past max_reported_per_trigger

    # campaigns ----------------------------------------------------------------------

    @property
    def campaigns(self) -> Mapping[str, Prepared]:
        return self._campaigns

    def version_of(self, campaign: str) -> int | None:
        """The newest version held or removed (None: never seen)."""
        return self._versions.get(campaign)

    def apply(self, cmd: CampaignsCommand) -> CampaignsApplied:
        if cmd.op == "upsert":
            return self.upsert(cmd.campaigns)
        if cmd.op == "remove":
            return self.remove(cmd.remove)
        return self.set_campaigns(cmd.campaigns)

    def upsert(self, campaigns: Iterable[Campaign]) -> CampaignsApplied:
        applied = stale = 0
        for c in campaigns:
            fate = self._offer(c)
            applied += fate == "applied"
            stale += fate == "stale"
        self._reindex()
        return CampaignsApplied(applied, stale, 0, len(self._campaigns))

    def remove(self, refs: Iterable[CampaignRef]) -> CampaignsApplied:
        removed = stale = 0
        for r in refs:
            held = self._versions.get(r.id, 0)
            if r.version < held:
                stale += 1  # a newer version arrived after central removed this one
                continue
            self._versions[r.id] = r.version
            if self._campaigns.pop(r.id, None) is not None:
                removed += 1
        self._reindex()
        return CampaignsApplied(0, stale, removed, len(self._campaigns))

    def set_campaigns(self, campaigns: Iterable[Campaign]) -> CampaignsApplied:
        """A full sync: afterwards exactly these are active, each at the newest version
        held (a listed campaign older than a removal stays removed)."""
        applied = stale = 0
        listed: set[str] = set()
        for c in campaigns:
            listed.add(c.id)
            fate = self._offer(c)
            applied += fate == "applied"
            stale += fate == "stale"
        gone = [cid for cid in self._campaigns if cid not in listed]
        for cid in gone:
            del self._campaigns[cid]
        self._reindex()
        return CampaignsApplied(applied, stale, len(gone), len(self._campaigns))

    def _offer(self, c: Campaign) -> Literal["applied", "unchanged", "stale"]:
        """Take the campaign if it is newer than what is held or was removed;
        ``unchanged``: this very version is active (a full sync repeats it)."""
        known = self._versions.get(c.id, 0)
        if c.version > known:
            self._versions[c.id] = c.version
            self._campaigns[c.id] = Prepared.of(c)
            return "applied"
        held = self._campaigns.get(c.id)
        if held is not None and held.campaign.version == c.version:
            return "unchanged"
        return "stale"

    def _reindex(self) -> None:
        slots: dict[tuple[str, str | int | None], _Slot] = {}
        for c in sorted(self._campaigns.values(), key=lambda c: c.order):
            slots.setdefault((c.kind, c.key), _Slot()).add(c)
        for slot in slots.values():  # dwell campaigns: lowest threshold first
            slot.all.sort(key=lambda c: (c.min_dwell_s, c.order))
        self._slots = slots

    # deciding -----------------------------------------------------------------------

    def local(self, now: float) -> _Local:
        t = datetime.fromtimestamp(now, self.tz)
        return _Local(t.weekday(), t.hour * 60 + t.minute, t.toordinal(), t.month)

    def slots_for(self, trigger: Trigger, facts: CustomerFacts, month: int) -> (
        list[tuple[str, str | int | None]]
    ):
        """The index keys a trigger concerns (a store entry also drives nth_visit,
        birthday_month and pickup_ready)."""
        if trigger.kind == "store_entered":
            keys: list[tuple[str, str | int | None]] = [
                ("store_entered", None), ("nth_visit", facts.store_visits)]
            if facts.birthday_month == month:
                keys.append(("birthday_month", None))
            if facts.pickups_ready > 0:
                keys.append(("pickup_ready", None))
            return keys
        if trigger.kind == "purchase_category":
            return [("purchase_category", cat) for cat in sorted(trigger.categories)]
        return [(trigger.kind, trigger.zone)]

    def targeted(self, trigger: Trigger, facts: CustomerFacts, month: int, *,
                 audience: bool = True) -> tuple[list[Prepared], list[Prepared]]:
        """The campaigns this trigger concerns, split into those whose audience the
        customer is in and (when the policy reports them) those it is not. With
        ``audience`` False: every campaign the trigger matches, unevaluated."""
        hit: dict[str, Prepared] = {}
        miss: list[Prepared] = []
        sources: list[list[Prepared]] = []  # the indexed lists, each in order
        dwell = trigger.dwell_s
        report = self.policy.report_audience
        for key in self.slots_for(trigger, facts, month):
            slot = self._slots.get(key)
            if slot is None:
                continue
            if not audience or report:
                for c in slot.all:
                    if c.min_dwell_s > dwell:
                        break  # sorted by threshold
                    if not audience or c.fits(facts):
                        hit[c.campaign.id] = c
                    elif c.campaign.id not in hit:
                        miss.append(c)
                continue
            sources.append(slot.open)
            sources += [slot.by_segment[s] for s in facts.segments if s in slot.by_segment]
        if sources:
            sources = [src for src in sources if src]
            if len(sources) == 1:  # one list, already in order and without repeats
                return [c for c in sources[0] if c.min_dwell_s <= dwell
                        and c.fits(facts, segments_checked=True)], []
            for src in sources:
                for c in src:
                    if c.min_dwell_s <= dwell and c.fits(facts, segments_checked=True):
                        hit[c.campaign.id] = c
        return sorted(hit.values(), key=_by_order), sorted(
            {c.campaign.id: c for c in miss if c.campaign.id not in hit}.values(),
            key=_by_order)

    def decide(self, trigger: Trigger, facts: CustomerFacts, now: float) -> list[Decision]:
        """The campaigns this trigger concerns, decided in rank order: at most
        ``policy.max_issued_per_trigger`` issued, the others suppressed with the reason,
        at most ``policy.max_reported_per_trigger`` in all."""
        if trigger.customer != facts.customer:
            raise ValueError("the trigger and the facts are about different customers")
        if not self.policy.enabled:
            return []
        local = self.local(now)
        out: list[Decision] = []
        self.decisions_total += 1
        if not facts.marketing:
            matched, _ = self.targeted(trigger, facts, local.month, audience=False)
            if matched:
                out.append(self._suppressed(trigger, now, None, "no_consent",
                                            "no marketing consent", kind=_own_kind(trigger)))
            return out
        hit, miss = self.targeted(trigger, facts, local.month)
        if hit:
            out = self._walk(trigger, facts, hit, now=now, local=local)
        limit = self.policy.max_reported_per_trigger
        for c in miss:  # audience misses (reported only on request), after the ranked
            if len(out) >= limit:
                self.unreported_total += 1
            else:
                out.append(self._suppressed(trigger, now, c, "audience",
                                            "not in the audience"))
        return out

    def _walk(self, trigger: Trigger, facts: CustomerFacts, hit: list[Prepared], *,
              now: float, local: _Local) -> list[Decision]:
        """The campaigns in rank order, each decided, until nothing more can be issued
        and ``max_reported_per_trigger`` decisions are out (the rest are counted in
        ``unreported_total``: 500 campaigns on a store entry must not publish 500
        events, nor spend a millisecond each building them)."""
        st = self._customers.get(facts.customer)
        limit = self.policy.max_reported_per_trigger
        slots = self._slots_left(trigger, st, local.day)
        blocked: tuple[OfferSuppressionReason, str] | None = None  # the customer's gate
        checked = False
        out: list[Decision] = []
        winners: list[str] = []
        n = len(hit)
        for rank, c in enumerate(_ranked(hit, facts), 1):
            cid = c.campaign.id
            if slots <= 0 and len(out) >= limit:
                self.unreported_total += n - rank + 1
                break
            gate = self._campaign_gate(c, st, now, local)
            if gate is None and not checked:  # once, for the first campaign that passes
                blocked, checked = self._customer_gate(trigger, st, now, local), True
                if blocked is not None:
                    slots = 0
            if gate is None and slots > 0:
                slots -= 1
                winners.append(cid)
                out.append(self._chosen(trigger, facts, c, rank=rank, n=n, now=now))
                continue
            if len(out) >= limit:
                self.unreported_total += 1
                continue
            if gate is not None:
                out.append(self._suppressed(trigger, now, c, *gate))
            elif blocked is not None:
                out.append(self._suppressed(trigger, now, c, *blocked,
                                            why=self._why(c, facts, rank, n)))
            else:
                out.append(self._suppressed(
                    trigger, now, c, "lower_rank", f"rank {rank} of {n}: "
                    + ", ".join(winners), why=self._why(c, facts, rank, n)))
        return out

    def _campaign_gate(self, c: Prepared, st: _CustomerState | None, now: float,
                       local: _Local) -> tuple[OfferSuppressionReason, str] | None:
        if not c.valid_from <= now < c.valid_until:
            return "not_valid", "outside the campaign's validity period"
        if c.hours is not None and not any(
                start <= local.minute < end for start, end in c.hours[local.weekday]):
            return "outside_hours", "outside the campaign's hours"
        if st is None:
            return None
        held = st.held.get(c.campaign.id)
        if held is not None and held.expires_at > now:
            return "already_held", "held out (control group)" if held.control else \
                "an unexpired offer of this campaign is held"
        cap = c.campaign.max_per_customer_per_day
        cid = c.campaign.id
        if sum(1 for i in st.issues if i.day == local.day and i.campaign == cid) >= cap:
            return "capped", f"campaign cap: {cap} a day"
        return None

    def _customer_gate(self, trigger: Trigger, st: _CustomerState | None, now: float,
                       local: _Local) -> tuple[OfferSuppressionReason, str] | None:
        q = self._quiet
        if q is not None and (q[0] <= local.minute < q[1] if q[0] < q[1]
                              else local.minute >= q[0] or local.minute < q[1]):
            return "quiet_hours", f"quiet hours {self._quiet_text}"
        if st is None or not st.issues:
            return None
        pol = self.policy
        if sum(1 for i in st.issues if i.day == local.day) >= pol.max_per_day:
            return "capped", f"{pol.max_per_day} a day"
        if trigger.visit_id is not None and sum(
                1 for i in st.issues if i.visit_id == trigger.visit_id) >= pol.max_per_visit:
            return "capped", f"{pol.max_per_visit} a visit"
        if now - st.issues[-1].at < pol.min_gap_s:
            return "capped", f"minimum gap {pol.min_gap_s:g} s"
        return None

    def _slots_left(self, trigger: Trigger, st: _CustomerState | None, day: int) -> int:
        pol = self.policy
        n = pol.max_issued_per_trigger if pol.min_gap_s == 0 else 1
        if st is not None:
            n = min(n, pol.max_per_day - sum(1 for i in st.issues if i.day == day))
            if trigger.visit_id is not None:
                n = min(n, pol.max_per_visit - sum(
                    1 for i in st.issues if i.visit_id == trigger.visit_id))
        return n

    @staticmethod
    def _why(c: Prepared, facts: CustomerFacts, rank: int, n: int) -> tuple[str, ...]:
        why = [f"priority {c.campaign.priority}"]
        prefs = sorted(c.tags & facts.preferences)
        favs = sorted(c.tags & facts.favourite_categories)
        if prefs:
            why.append("matches preferences: " + ", ".join(prefs))
        if favs:
            why.append("matches favourite categories: " + ", ".join(favs))
        why.append(f"rank {rank} of {n}")
        return tuple(why)

    def _chosen(self, trigger: Trigger, facts: CustomerFacts, c: Prepared, *, rank: int,
                n: int, now: float) -> Decision:
        """The campaign wins a slot: issued, or held out if the customer is in its
        control group (the slot is used either way: the hold-out gets nothing)."""
        camp = c.campaign
        why = self._why(c, facts, rank, n)
        expires = min(now + camp.offer_ttl_s, c.valid_until)
        variant = pick_variant(facts.customer, camp.id, camp.variants)
        if in_control_group(facts.customer, camp.id, camp.control_share):
            return self._suppressed(trigger, now, c, "control_group",
                                    f"held out: control share {camp.control_share:g}",
                                    why=why, variant=variant, expires_at=expires)
        return Decision("issued", trigger.customer, c.kind, trigger.zone, trigger.visit_id,
                        now, camp, variant, why=why, expires_at=expires)

    def _suppressed(self, trigger: Trigger, now: float, c: Prepared | None,
                    reason: OfferSuppressionReason, detail: str, *,
                    why: tuple[str, ...] = (), kind: OfferTriggerKind | None = None,
                    variant: Variant | None = None,
                    expires_at: float | None = None) -> Decision:
        return Decision("suppressed", trigger.customer,
                        kind or (c.kind if c is not None else _own_kind(trigger)),
                        trigger.zone, trigger.visit_id, now,
                        None if c is None else c.campaign, variant, reason, detail, why,
                        expires_at)

    # what was issued ----------------------------------------------------------------

    def record(self, decision: Decision, offer_id: str | None = None) -> HeldOffer | None:
        """After :meth:`decide`: keep an issued offer (its token id) or a control-group
        hold-out; other suppressions change nothing."""
        if decision.outcome == "issued":
            if not offer_id:
                raise ValueError("an issued offer is recorded with its offer id")
        elif decision.reason != "control_group":
            return None
        held = decision.held(offer_id if decision.outcome == "issued" else None)
        self.record_issued(held)
        return held

    def record_issued(self, offer: HeldOffer) -> None:
        st = self._customers.setdefault(offer.customer, _CustomerState())
        issue = _Issue(offer.issued_at, self.local(offer.issued_at).day, offer.campaign,
                       offer.visit_id)
        if st.issues and st.issues[-1].at > offer.issued_at:  # load() out of order
            st.issues.append(issue)
            st.issues.sort(key=lambda i: i.at)
        else:
            st.issues.append(issue)
        if offer.redeemed:
            return
        if offer.offer_id is not None:
            self._offers[offer.offer_id] = offer
        prev = st.held.get(offer.campaign)
        if prev is None or prev.expires_at <= offer.expires_at:  # the one held longest
            st.held[offer.campaign] = offer

    def held(self, customer: str, now: float) -> list[HeldOffer]:
        """The customer's unexpired, unredeemed offers (hold-outs excluded)."""
        st = self._customers.get(customer)
        return [] if st is None else [
            h for h in st.held.values() if not h.control and h.expires_at > now]

    def redeemed(self, offer_id: str) -> HeldOffer | None:
        """The offer was redeemed: no longer held (its campaign may be offered again
        within its caps). None: not an offer this engine holds."""
        offer = self._offers.pop(offer_id, None)
        if offer is None:
            return None
        st = self._customers.get(offer.customer)
        if st is not None and st.held.get(offer.campaign) is offer:
            del st.held[offer.campaign]
        return offer

    def revoke_customer(self, customer: str) -> list[str]:
        """Consent withdrawn or erasure: forget the customer; the offer ids returned
        are the tokens to revoke."""
        self._customers.pop(customer, None)
        ids = [oid for oid, h in self._offers.items() if h.customer == customer]
        for offer_id in ids:  # a scan: erasure is rare, a per-customer index is not free
            del self._offers[offer_id]
        return ids

    def revoke_customers(self, customers: Collection[str]) -> list[str]:
        """:meth:`revoke_customer` for many in one pass over the offers held (an
        erasure or a full sync names up to 10,000 or 100,000: a pass each would be
        quadratic). Returns the offer ids dropped."""
        gone = customers if isinstance(customers, set | frozenset) else set(customers)
        for c in gone:
            self._customers.pop(c, None)
        ids = [oid for oid, h in self._offers.items() if h.customer in gone]
        for offer_id in ids:
            del self._offers[offer_id]
        return ids

    def expire(self, now: float) -> list[HeldOffer]:
        """Drop offers past their expiry and issue times past the caps' horizon; the
        expired offers are returned (their tokens expire by themselves)."""
        expired: list[HeldOffer] = []
        horizon = now - HISTORY_S
        for customer in list(self._customers):
            st = self._customers[customer]
            for cid in [cid for cid, h in st.held.items() if h.expires_at <= now]:
                h = st.held.pop(cid)
                expired.append(h)
                if h.offer_id is not None:
                    self._offers.pop(h.offer_id, None)
            if st.issues and st.issues[0].at < horizon:
                st.issues = [i for i in st.issues if i.at >= horizon]
            if not st.held and not st.issues:
                del self._customers[customer]
        for offer_id in [oid for oid, h in self._offers.items() if h.expires_at <= now]:
            del self._offers[offer_id]  # superseded offers of a campaign (after load)
        return expired

    def load(self, history: Iterable[HeldOffer], now: float) -> int:
        """Rebuild after a restart from the offers the redemption store kept (issued,
        held out, redeemed): the caps and the held offers are as before. Returns how
        many were recent enough to matter."""
        kept = 0
        for h in history:
            if h.issued_at >= now - HISTORY_S or (h.expires_at > now and not h.redeemed):
                self.record_issued(h)
                kept += 1
        self.expire(now)
        return kept

    @property
    def customers_tracked(self) -> int:
        return len(self._customers)


def _by_order(c: Prepared) -> tuple[int, str]:
    return c.order


def _ranked(hit: list[Prepared], facts: CustomerFacts) -> Iterator[Prepared]:
    """``hit`` (in priority order, then id) by priority, then affinity, then id. Lazy:
    affinity is computed for one priority at a time, as far as the walk goes."""
    prefs, favs = facts.preferences, facts.favourite_categories
    i, n = 0, len(hit)
    while i < n:
        priority = hit[i].campaign.priority
        j = i + 1
        while j < n and hit[j].campaign.priority == priority:
            j += 1
        if j - i == 1 or not (prefs or favs):
            yield from hit[i:j]
        else:  # a stable sort: equal affinity keeps the id order
            yield from sorted(hit[i:j], key=lambda c: -len(c.tags & prefs)
                              - len(c.tags & favs))
        i = j


def _own_kind(trigger: Trigger) -> OfferTriggerKind:
    return trigger.kind


# --- events --------------------------------------------------------------------------


def decision_draft(d: Decision, offer_id: str | None = None) -> ev.EventDraft:
    """The event of one decision; an issued one needs its offer id (the token id)."""
    camp = d.campaign
    if d.outcome == "issued":
        content = d.content
        if camp is None or content is None or d.expires_at is None or not offer_id:
            raise ValueError("an issued decision needs its campaign and an offer id")
        return ev.EventDraft(ev.OFFER_ISSUED, f"offer/{offer_id}", d.decided_at,
                             p.OfferIssued(
            offer_id=offer_id, campaign=camp.id, campaign_version=camp.version,
            variant=None if d.variant is None else d.variant.id, customer=d.customer,
            visit_id=d.visit_id, trigger=d.trigger, zone=d.zone, title=content.title,
            discount=content.discount, issued_at=ev.rfc3339(d.decided_at),
            expires_at=ev.rfc3339(d.expires_at), why=list(d.why)))
    if d.reason is None:
        raise ValueError("a suppressed decision carries its reason")
    subject = f"campaign/{camp.id}" if camp is not None else f"visit/{d.visit_id or '-'}"
    return ev.EventDraft(ev.OFFER_SUPPRESSED, subject, d.decided_at, p.OfferSuppressed(
        campaign=None if camp is None else camp.id,
        campaign_version=None if camp is None else camp.version, customer=d.customer,
        visit_id=d.visit_id, trigger=d.trigger, zone=d.zone, reason=d.reason,
        detail=d.detail[:200], decided_at=ev.rfc3339(d.decided_at)))


def decision_drafts(decisions: Iterable[Decision], offer_ids: Iterable[str]) -> (
    list[ev.EventDraft]
):
    """Events of a decide() result: ``offer_ids`` are taken in order by the issued."""
    ids = iter(offer_ids)
    out = []
    for d in decisions:
        offer_id = next(ids, None) if d.outcome == "issued" else None
        out.append(decision_draft(d, offer_id))
    return out
