"""Personalisation in the event flow: redemption, stitching and offers between the
sources and the intake (docs/personalisation.md).

    sources ──► submit ──► [queue] ──► process ──► intake
                 │ nothing personal in the batch (footfall, anonymous visits...)
                 └───────────────────────────────────────► intake

``process(drafts, now)``, in this order, because each step needs the one before:

1. **redemption** (``RedemptionService.process_async``): ``pos.scanned`` offer tokens
   verified and reserved, purchases confirm them, voids release them. The ledger's
   fsyncs run in a worker thread; its callbacks tell the stitcher which customer's
   token a transaction holds (``note_token``), and the redeemed offers are noted
   before the purchase is stitched (``note_redeemed``);
2. **stitching**: purchases get their customer, visit and attribution, store-visit
   exits their outcome;
3. **offers**: a store visit entered (also nth_visit, birthday_month, pickup_ready), a
   zone entered or dwelled in, a purchase of a known customer whose lines match the
   ``[offers] categories`` keywords: the engine decides; an issued offer gets its
   signed token (ledger row written off the loop) before its ``offer.issued`` goes
   out, right after the event that caused it; suppressed ones become
   ``offer.suppressed``.

Batches are processed one at a time in arrival order (a lane's scan before its
receipt); those queued together form a group whose offers' ledger rows are written
in one transaction (:meth:`PersonalService.process_group`). Owned by the event loop;
nothing here is touched from another thread.
Consent follows the registry: :meth:`follow` after a customers change,
:meth:`forget` for erasure.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from storegate.adapters import gateway_key
from storegate.adapters.campaigns_sqlite import CampaignStore
from storegate.adapters.plumbing import sleep_until_stopped, wait_for_either
from storegate.adapters.redemption_sqlite import Offer, RedemptionStore
from storegate.app.campaign_files import load_campaigns
from storegate.app.redemption import IssuedToken, RedemptionService, SignedToken
from storegate.app.status import PersonalStatus
from storegate.config import Config
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.personal.campaigns import Campaign, CampaignRef, CampaignsCommand
from storegate.core.personal.erasure import redact_draft
from storegate.core.personal.offers import (
    HISTORY_S,
    CampaignsApplied,
    CustomerFacts,
    Decision,
    HeldOffer,
    OfferEngine,
    Trigger,
    decision_draft,
)
from storegate.core.personal.registry import (
    CustomersChange,
    Registry,
    RegistryDelta,
    Removal,
)
from storegate.core.personal.stitching import Stitcher
from storegate.core.personal.tokens import TokenSigner, offer_ref
from storegate.core.trust import load_public_key
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

Emit = Callable[[list[ev.EventDraft]], None]

TICK_S = 1.0  # reservations time out and offers expire to the second
# Batches waiting for process(). A stalled ledger (a dying SD card) must not grow memory
# without bound: past this, batches go to the intake unprocessed (counted, logged once)
# rather than being held, since an accepted event is never dropped.
MAX_QUEUED_BATCHES = 10_000
# Customers whose store visits since start are counted (nth_visit) and whose open store
# visit is remembered: the registry's bound.
MAX_TRACKED = 100_000
REVOKE_BATCH = 500  # customers per slice of a revocation or erasure, the loop let go between
REDACT_SLICE = 200  # queued batches rewritten by an erasure between yields
# Queued batches processed as one group: their offers' tokens go into the ledger in one
# transaction (one fsync), then out. A burst of check-ins was one fsync per offer, each
# waited for by every offer queued behind it (bench/bench_http.py: docs/http.md).
GROUP_MAX = 64


def campaigns_path(config: Config) -> Path:
    """The store's campaigns, beside the outbox."""
    path = config.storage.path
    return path.with_name(path.stem + ".campaigns.db")


@dataclass(frozen=True, slots=True)
class CampaignsReloaded:
    """What :meth:`PersonalService.reload_campaigns` did: campaign ids and counts (a
    campaign carries no customer)."""

    file: str
    applied: tuple[str, ...]  # new, or a newer version than the one in force
    unchanged: int  # this very version already in force
    stale: tuple[str, ...]  # older than the version in force (central's newer one wins)
    removed: tuple[str, ...]  # left the file, and the file's version was in force
    kept: tuple[str, ...]  # left the file, but central's newer version is in force
    active: int

    def describe(self) -> str:
        def ids(xs: tuple[str, ...]) -> str:
            return ", ".join(xs[:20]) + (f" (+{len(xs) - 20})" if len(xs) > 20 else "")
        parts = [f"{len(self.applied)} applied" + (f" ({ids(self.applied)})"
                                                   if self.applied else ""),
                 f"{self.unchanged} unchanged"]
        if self.stale:
            parts.append(f"{len(self.stale)} older than the version in force, not "
                         f"applied ({ids(self.stale)})")
        if self.removed:
            parts.append(f"{len(self.removed)} removed ({ids(self.removed)})")
        if self.kept:
            parts.append(f"{len(self.kept)} left the file but kept: central's newer "
                         f"version is in force ({ids(self.kept)})")
        return f"{self.file}: " + "; ".join(parts) + f"; {self.active} active"


class NoCampaignsFile(Exception):  # noqa: N818 - a condition the caller answers
    """``[offers] campaigns_file`` is not set: there is nothing to reload."""


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What :meth:`PersonalService.forget` removed: counts only."""

    offers_dropped: int  # unredeemed offers the engine held
    tokens_revoked: int  # ledger rows revoked (issued or reserved)
    stitcher_states: int = 0  # customers the stitcher held state of
    queued_redacted: int = 0  # events queued for processing, rewritten without them


class PersonalService:
    """The service in the event flow (module doc). ``engine``, ``redemption`` and
    ``stitcher`` are public: erasure (app/erasure.py) reaches them directly."""

    def __init__(self, *, registry: Registry, engine: OfferEngine,
                 redemption: RedemptionService, stitcher: Stitcher,
                 campaigns: CampaignStore | None, categories: Mapping[str, str],
                 emit: Emit, offer_key: p.OfferKey,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.engine = engine
        self.redemption = redemption
        self.stitcher = stitcher
        self.offer_key = offer_key
        self._campaign_store = campaigns
        # [offers] campaigns_file and the versions it gave, for reload_campaigns
        self.campaigns_file: Path | None = None
        self._file_versions: dict[str, int] = {}
        self._categories = tuple(categories.items())  # (keyword casefolded, category)
        self._emit = emit
        self._wall = wall_clock
        redemption.on_reserved = self._on_reserved
        self._lanes: dict[str, str] = {}  # lane -> its customer, for the batch in process
        redemption.lane_customer = self._lane_customer
        # Issue 12 (staff screens) plugs in here: customers who lost staff_view.
        self.on_staff_withdrawn: Callable[[Sequence[str]], None] | None = None
        # The staff screens (app/screens.py) see every processed batch and tick (who is
        # at a lane, token states) and each customers change (profiles, pickups).
        self.on_processed: Callable[[Sequence[ev.EventDraft]], None] | None = None
        self.on_registry_changed: Callable[[], None] | None = None
        # The token's text (what the QR code carries) and the offer's content (title,
        # text, image, discount) are in no event: they reach the customer's phone through
        # this hook (the app channel, app/app_channel.py), with the whole decision.
        self.on_offer: Callable[[Decision, IssuedToken], None] | None = None
        # observable state (counters since start; no ids)
        self.issued_total = 0
        self.suppressed: Counter[str] = Counter()
        self.errors_total = 0  # campaign store and offer issuing failures
        self.unprocessed_total = 0  # batches passed on unprocessed (queue full, a bug)
        self.decision_errors_total = 0  # offer decisions that failed (a bug), contained
        # event-loop state
        self._visits_seen: Counter[str] = Counter()  # store visits since start
        self._store_visit: dict[str, str] = {}  # customer -> open store visit id
        self._queue: deque[list[ev.EventDraft]] = deque()
        # taken from the queue, in process (a group of batches)
        self._current: list[list[ev.EventDraft]] | None = None
        # offers decided in the group in process: signed, held by the engine, not yet in
        # the ledger, so not yet shown to anyone (_record_signed)
        self._signed: list[_Signed] = []
        self.redaction_drops_total = 0  # queued events dropped by erasure (none today)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one batch, consent change or campaign change at a time
        self._busy = False
        self._closed = False
        self._warn = LogOnce(log)

    # --- construction ----------------------------------------------------------------

    @classmethod
    def build(cls, config: Config, registry: Registry, *, stitcher: Stitcher, emit: Emit,
              file_campaigns: Sequence[Campaign] | None = None,
              wall_clock: Callable[[], float] = time.time) -> PersonalService:
        """Open the ledger and the campaign store, load the offer key (made on first
        start), rebuild the engine (campaigns, then the offers issued lately).
        ``file_campaigns``: ``offers.campaigns_file`` as preflight read it (None: read
        it here)."""
        key = gateway_key.load_or_create_offer_key(config.offer_key_path)
        signer = TokenSigner(key, config.store_id)
        r = config.redemption
        trusted = {k.kid: load_public_key(k.public_key) for k in r.trusted_token_keys}
        o = config.offers
        engine = OfferEngine(o.policy(), tz=ZoneInfo(o.timezone))
        ledger = RedemptionStore(config.redemption_path,
                                 reservation_timeout_s=r.reservation_timeout_s)
        store: CampaignStore | None = None
        try:
            store = CampaignStore(campaigns_path(config))
            refs: dict[bytes, str] = {}

            def campaign_of_ref(ref: bytes) -> str | None:
                return refs.get(ref)

            redemption = RedemptionService(ledger, signer, store=config.store_id,
                                           offer_ttl_s=r.offer_ttl_s, trusted=trusted,
                                           campaign_of_ref=campaign_of_ref,
                                           started_at=wall_clock())
            svc = cls(registry=registry, engine=engine, redemption=redemption,
                      stitcher=stitcher, campaigns=store, categories=o.categories,
                      emit=emit, offer_key=p.OfferKey(
                          kid=signer.kid,
                          public_key=_b64(signer.public_key.public_bytes_raw())),
                      wall_clock=wall_clock)
            svc._refs = refs
            loaded = store.load()
            if loaded.skipped:
                log.warning("campaigns: %d stored campaign(s) out of bounds skipped",
                            loaded.skipped)
            engine.remove(loaded.removed)
            engine.upsert(loaded.active)
            if file_campaigns is None and o.campaigns_file is not None:
                file_campaigns = load_campaigns(o.campaigns_file)
            engine.upsert(file_campaigns or ())  # central's newer versions win
            svc.campaigns_file = o.campaigns_file
            svc._file_versions = {c.id: c.version for c in file_campaigns or ()}
            svc._reindex_refs()
            now = wall_clock()
            kept = engine.load(svc._held(ledger.history(now - HISTORY_S, now)), now)
            log.info("offers: %d campaign(s) active, %d recent offer(s) reloaded",
                     len(engine.campaigns), kept)
        except BaseException:
            ledger.close()
            if store is not None:
                store.close()
            raise
        return svc

    _refs: dict[bytes, str]

    def _reindex_refs(self) -> None:
        """Token offer reference -> campaign id, for tokens this ledger has no row of."""
        self._refs.clear()
        self._refs.update({offer_ref(cid): cid for cid in self.engine.campaigns})

    def _held(self, offers: Iterable[Offer]) -> list[HeldOffer]:
        """The ledger's rows as the engine keeps them. The ledger has no campaign
        version, variant or visit: the caps and "already held" need none of them.
        Control-group hold-outs are not in the ledger (no token): after a restart a
        held-out customer is decided again, and held out again (the hash is stable)."""
        out = []
        for o in offers:
            if o.customer is None or o.state == "revoked":
                continue
            out.append(HeldOffer(o.token_id, o.customer, o.campaign,
                                 self.engine.version_of(o.campaign) or 1, None, None,
                                 float(o.issued_at), float(o.expires_at),
                                 redeemed=o.state == "redeemed"))
        return out

    def close(self) -> None:
        self._closed = True
        self.redemption.ledger.close()
        if self._campaign_store is not None:
            self._campaign_store.close()

    # --- the event flow --------------------------------------------------------------

    def submit(self, drafts: list[ev.EventDraft]) -> None:
        """From the sources (on the loop): batches that concern personalisation are
        queued for :meth:`process`, in order; the rest go straight to the intake."""
        if self._closed or not any(_concerns(d) for d in drafts):
            self._emit(drafts)
            return
        if len(self._queue) >= MAX_QUEUED_BATCHES and not any(_lane(d) for d in drafts):
            # Presence only: passing it on unprocessed costs offers and a visit's
            # outcome. A lane's batch always queues (a few a minute per lane): a purchase
            # overtaking its scan would never confirm the reservation, nor be stitched.
            self.unprocessed_total += 1
            self._warn("queue-full", "personalisation is %d batches behind: presence "
                       "events pass unprocessed (no offers, no stitching) until it "
                       "catches up", MAX_QUEUED_BATCHES)
            self._emit(drafts)
            return
        self._queue.append(drafts)
        self._wake.set()

    async def process(self, drafts: list[ev.EventDraft], now: float) -> list[ev.EventDraft]:
        """``drafts`` with what they cause, each after its cause (module doc)."""
        [out] = await self.process_group([drafts], now)
        return out

    async def process_group(self, batches: Sequence[list[ev.EventDraft]], now: float) -> (
        list[list[ev.EventDraft]]
    ):
        """Each batch with what it causes, in order, as :meth:`process` would; the
        offers the group issues are recorded in the ledger in one transaction (one
        fsync), and only then reach ``on_offer`` and the output. A batch that fails
        (a bug) passes unprocessed, counted and logged; its offers are not issued."""
        outs: list[list[ev.EventDraft]] = []
        async with self._lock:
            for batch in batches:
                mark = len(self._signed)
                try:
                    outs.append(await self._process_locked(batch, now))
                except Exception:  # a bug must not lose events: they pass unprocessed
                    self.unprocessed_total += 1
                    log.exception("personalisation failed on a batch; passed on "
                                  "unprocessed")
                    for s in self._signed[mark:]:
                        self.engine.redeemed(s.token.token.token_id)  # never shown
                    del self._signed[mark:]
                    outs.append(batch)
            dropped = await self._record_signed()
        if dropped:
            outs = [[d for d in out if id(d) not in dropped] for out in outs]
        return outs

    async def _process_locked(self, drafts: list[ev.EventDraft], now: float) -> (
        list[ev.EventDraft]
    ):
        # who each lane scanning a token serves, by loyalty card: a token of anyone
        # else is refused (customer_mismatch). A snapshot: the worker thread reads it.
        self._lanes = self.stitcher.lane_customers(drafts)
        out = await self.redemption.process_async(drafts, now)
        redeemed: dict[str, list[str]] = {}
        for d in out:
            if d.type is ev.OFFER_REDEEMED and isinstance(d.data, p.OfferRedeemed):
                redeemed.setdefault(d.data.transaction_id, []).append(d.data.offer_id)
                self.engine.redeemed(d.data.offer_id)
        for tx, ids in redeemed.items():
            self.stitcher.note_redeemed(tx, ids)
        out = self.stitcher.process(out, now)
        final: list[ev.EventDraft] = []
        for d in out:
            final.append(d)
            trigger = None if self._gone(d) else self._trigger(d)
            if trigger is not None:
                final.extend(self._decide(trigger, now))
        return final

    async def run(self, stop: asyncio.Event) -> None:
        """The queue worker and the one-second tick, until ``stop``."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._work(stop))
            tg.create_task(self._ticks(stop))

    async def flush(self) -> None:
        """At shutdown, after the sources stopped: process what is queued, then pass
        anything later straight to the intake."""
        await self._drain()
        self._closed = True

    async def tick(self, now: float) -> list[ev.EventDraft]:
        """Reservations past the timeout released, expired offers marked (ledger) and
        dropped (engine)."""
        drafts = await self.redemption.tick_async(now)
        self.engine.expire(now)
        return drafts

    # --- commands and consent --------------------------------------------------------

    async def apply_campaigns(self, cmd: CampaignsCommand) -> CampaignsApplied:
        """A campaigns command: the engine first, then the store (off the loop). If
        the store fails the error propagates (the answer says not applied; central's
        resend saves it, its versions then being unchanged in memory)."""
        async with self._lock:
            before = {cid: c.campaign.version for cid, c in self.engine.campaigns.items()}
            result = self.engine.apply(cmd)
            self._reindex_refs()
            after = self.engine.campaigns
            gone = {cid for cid in before if cid not in after}
            # a remove the engine refused as stale (a newer version is active) is no
            # removal: saved as one, the active campaign would be gone after a restart
            gone |= {r.id for r in cmd.remove if r.id not in after}
            removed = [CampaignRef(id=cid, version=v) for cid in sorted(gone)
                       if (v := self.engine.version_of(cid)) is not None]
            active = [c.campaign for c in after.values()]
            store = self._campaign_store
            if store is not None:
                try:
                    await asyncio.to_thread(store.save, active, removed)
                except sqlite3.Error:
                    self.errors_total += 1
                    raise
            return result

    async def reload_campaigns(self, path: Path | None = None) -> CampaignsReloaded:
        """Read ``[offers] campaigns_file`` again (``path``: a new one, from a config
        reload) and apply it as at start: validated whole first (a broken file raises
        :class:`DataFileError` and changes nothing), each campaign taken if newer than
        the version in force, so central's newer versions still win. A campaign that
        left the file is removed if the file's version is the one in force (recorded as
        removed at that version, like central's remove: bring it back with a higher
        version). Saved to the campaign store like a command."""
        path = path or self.campaigns_file
        if path is None:
            raise NoCampaignsFile("no [offers] campaigns_file is configured")
        campaigns = await asyncio.to_thread(load_campaigns, path)
        async with self._lock:
            engine = self.engine
            applied: list[str] = []
            stale: list[str] = []
            unchanged = 0
            for c in campaigns:
                held = engine.campaigns.get(c.id)
                if c.version > (engine.version_of(c.id) or 0):
                    applied.append(c.id)
                elif held is not None and held.campaign.version == c.version:
                    unchanged += 1
                else:
                    stale.append(c.id)
            listed = {c.id for c in campaigns}
            refs: list[CampaignRef] = []
            kept: list[str] = []
            for cid, version in sorted(self._file_versions.items()):
                if cid in listed:
                    continue
                held = engine.campaigns.get(cid)
                if held is not None and held.campaign.version == version:
                    refs.append(CampaignRef(id=cid, version=version))
                elif held is not None:
                    kept.append(cid)
            engine.upsert(campaigns)
            engine.remove(refs)
            self._reindex_refs()
            store = self._campaign_store
            if store is not None and (applied or refs):
                try:
                    await asyncio.to_thread(store.save,
                                            [c.campaign for c in engine.campaigns.values()],
                                            refs)
                except sqlite3.Error:
                    self.errors_total += 1
                    raise
            self.campaigns_file = path
            self._file_versions = {c.id: c.version for c in campaigns}
            return CampaignsReloaded(
                file=str(path), applied=tuple(applied), unchanged=unchanged,
                stale=tuple(stale), removed=tuple(r.id for r in refs), kept=tuple(kept),
                active=len(engine.campaigns))

    async def follow(self, delta: RegistryDelta) -> None:
        """After a customers change: marketing withdrawn → offers revoked (engine and
        ledger); presence withdrawn or removed → the stitcher forgets them;
        staff_view withdrawn → ``on_staff_withdrawn`` (staff screens, issue 12)."""
        if delta.marketing_withdrawn:
            await self._revoke(delta.marketing_withdrawn)
        if delta.withdraw:
            async with self._lock:
                await self._forget_tracking(delta.withdraw, ())
        if delta.staff_withdrawn and self.on_staff_withdrawn is not None:
            self.on_staff_withdrawn(delta.staff_withdrawn)
        if self.on_registry_changed is not None:
            self.on_registry_changed()

    async def forget(self, customers: Sequence[str],
                     loyalty_ids: Collection[str] = ()) -> Forgotten:
        """Erasure (app/erasure.py): the customers leave the engine, the stitcher and
        this service's counters; their unredeemed tokens are revoked in the ledger; the
        batches queued here (and the one waiting for the lock) are rewritten without
        them and their cards (``loyalty_ids``), so nothing processed after this names
        them or tracks them again. All of it under the lock: no batch runs between."""
        async with self._lock:
            stitched = await self._forget_tracking(customers, loyalty_ids)
            dropped, revoked = await self._revoke_locked(customers)
            # last, after the awaits: whatever was queued meanwhile is covered too
            redacted = await self._redact_queued(customers, loyalty_ids)
        return Forgotten(dropped, revoked, stitched, redacted)

    # --- status ------------------------------------------------------------------------

    def snapshot(self) -> PersonalStatus:
        r = self.redemption
        return PersonalStatus(
            customers_known=len(self.registry),
            campaigns_active=len(self.engine.campaigns),
            offers_issued_total=self.issued_total,
            offers_suppressed_by_reason=dict(self.suppressed),
            tokens_reserved_total=r.reserved_total,
            tokens_redeemed_total=r.redeemed_total,
            tokens_released_total=r.released_total,
            tokens_rejected_by_reason=dict(r.rejected),
            stitched_by_method=dict(self.stitcher.counters.purchases),
            ledger_errors_total=r.ledger_errors_total + self.errors_total,
            queued_batches=len(self._queue),
        )

    def health(self) -> p.PersonalHealth:
        s = self.snapshot()
        return p.PersonalHealth(
            customers_known=s.customers_known, campaigns_active=s.campaigns_active,
            offers_issued_total=s.offers_issued_total,
            offers_suppressed_total=dict(s.offers_suppressed_by_reason),
            tokens_reserved_total=s.tokens_reserved_total,
            tokens_redeemed_total=s.tokens_redeemed_total,
            tokens_released_total=s.tokens_released_total,
            tokens_rejected_total=dict(s.tokens_rejected_by_reason),
            stitched_total=dict(s.stitched_by_method), ledger_errors_total=s.ledger_errors_total)

    # --- inside ------------------------------------------------------------------------

    def _gone(self, d: ev.EventDraft) -> bool:
        """Whether the draft names a customer removed or erased: unknown from then on,
        so nothing is decided or counted about them (an event produced before the
        erasure reached the sources must not put them back into this service's memory)."""
        named = getattr(d.data, "customer", None)
        return isinstance(named, str) and self.registry.tombstone_of(named) is not None

    def _lane_customer(self, lane: str) -> str | None:
        return self._lanes.get(lane)

    def _on_reserved(self, transaction_id: str, lane: str, customer: str | None) -> None:
        del lane
        if customer is not None:
            self.stitcher.note_token(transaction_id, customer)

    def _trigger(self, d: ev.EventDraft) -> Trigger | None:
        data = d.data
        if isinstance(data, p.VisitEntered) and data.customer is not None:
            c = data.customer
            if data.zone is None:
                if c in self._store_visit or len(self._store_visit) < MAX_TRACKED:
                    self._store_visit[c] = data.visit_id
                if c in self._visits_seen or len(self._visits_seen) < MAX_TRACKED:
                    self._visits_seen[c] += 1
                return Trigger("store_entered", c, d.time, visit_id=data.visit_id)
            return Trigger("zone_entered", c, d.time, visit_id=self._store_visit.get(c),
                           zone=data.zone)
        if isinstance(data, p.VisitDwelled) and data.customer is not None and data.zone:
            return Trigger("zone_dwelled", data.customer, d.time,
                           visit_id=self._store_visit.get(data.customer), zone=data.zone,
                           dwell_s=data.dwell_s)
        if isinstance(data, p.VisitExited) and data.customer is not None and data.zone is None:
            if self._store_visit.get(data.customer) == data.visit_id:
                del self._store_visit[data.customer]
            return None
        if isinstance(data, p.PurchaseCompleted) and data.customer is not None \
                and data.kind == "sale" and self._categories:
            names = [item.name.casefold() for item in data.items]
            cats = frozenset(cat for kw, cat in self._categories
                             if any(kw in name for name in names))
            if cats:
                return Trigger("purchase_category", data.customer, d.time,
                               visit_id=data.visit_id, categories=cats)
        return None

    def _facts(self, customer: str) -> CustomerFacts:
        """The registry's record as the engine sees it; consent through the one check."""
        r = self.registry.get(customer)
        if r is None:
            return CustomerFacts(customer, marketing=False)
        prof = r.profile
        seen = self._visits_seen.get(customer, 0)
        return CustomerFacts(
            customer, marketing=self.registry.allows(customer, "marketing"),
            tier=prof.tier, segments=frozenset(prof.segments),
            preferences=frozenset(prof.preferences),
            favourite_categories=frozenset(prof.favourite_categories),
            birthday_month=prof.birthday_month,
            store_visits=max(prof.store_visits + seen, 1),
            pickups_ready=sum(1 for o in r.pickup_orders if o.state == "ready"))

    def _decide(self, trigger: Trigger, now: float) -> list[ev.EventDraft]:
        """The trigger's decisions as events. A failure is contained to its decision
        (counted, logged once): the batch's redemption and stitching output, and the
        other decisions, still go out (a batch passed on unprocessed would lose its
        offer.redeemed events)."""
        try:
            decisions = self.engine.decide(trigger, self._facts(trigger.customer), now)
        except Exception as exc:
            self._failed("decide", exc)
            return []
        out: list[ev.EventDraft] = []
        for decided in decisions:
            dec = decided
            try:
                if dec.outcome == "issued" and dec.expires_at is not None \
                        and int(dec.expires_at) <= int(now):
                    # a token's times are whole seconds: one expiring within the second
                    # it is issued cannot be signed (nor used)
                    dec = dataclasses.replace(dec, outcome="suppressed", reason="not_valid",
                                              detail="expires within the second of issue")
                if dec.outcome == "issued":
                    draft = self._issue(dec, now)
                    if draft is not None:
                        out.append(draft)
                    continue
                self.engine.record(dec)  # a control-group hold-out counts like an issue
                self.suppressed[dec.reason or "?"] += 1
                out.append(decision_draft(dec))
            except Exception as exc:
                self._failed("decision", exc)
        return out

    def _failed(self, where: str, exc: Exception) -> None:
        self.decision_errors_total += 1
        # the type only: a message may quote the data it failed on (a customer id)
        self._warn(f"{where}:{type(exc).__name__}", "an offer decision failed (%s: %s); "
                   "the events around it go on", where, type(exc).__name__)

    def _issue(self, dec: Decision, now: float) -> ev.EventDraft | None:
        """Sign the token and keep the offer in the engine (the group's later decisions
        see it held); it goes into the ledger with the group's (:meth:`_record_signed`)
        before anyone sees it."""
        camp = dec.campaign
        if camp is None or dec.expires_at is None:
            return None
        signed = self.redemption.sign_token(dec.customer, camp.id, now,
                                            expires_at=dec.expires_at)
        self.engine.record(dec, signed.token.token_id)
        draft = decision_draft(dec, signed.token.token_id)
        self._signed.append(_Signed(dec, signed, draft))
        return draft

    async def _record_signed(self) -> set[int]:
        """The group's tokens into the ledger, one transaction off the loop; then each
        offer counted and handed to ``on_offer``. No ledger row, no offer: a token the
        ledger does not know would still redeem, but without its customer. Returns the
        ids of the ``offer.issued`` drafts to take out (not issued after all)."""
        signed, self._signed = self._signed, []
        if not signed:
            return set()
        try:
            await asyncio.to_thread(self.redemption.record_tokens,
                                    [s.token for s in signed])
        except sqlite3.Error as exc:
            self.errors_total += len(signed)
            self._warn(f"issue:{type(exc).__name__}", "%d offer(s) not issued: the "
                       "redemption ledger failed: %s", len(signed), exc)
            for s in signed:
                self.engine.redeemed(s.token.token.token_id)  # no longer held
            return {id(s.draft) for s in signed}
        withdrawn = [s for s in signed
                     if not self.registry.allows(s.decision.customer, "marketing")]
        if withdrawn:
            # withdrawn while the tokens were written: revoke them, publish nothing
            await asyncio.to_thread(self.redemption.ledger.revoke_customers,
                                    sorted({s.decision.customer for s in withdrawn}))
            for s in withdrawn:
                self.engine.redeemed(s.token.token.token_id)
        gone = {id(s.draft) for s in withdrawn}
        for s in signed:
            if id(s.draft) in gone:
                continue
            self.issued_total += 1
            if self.on_offer is not None:
                self.on_offer(s.decision, s.token.token)
        if self.on_offer is not None and len(gone) < len(signed):
            # one loop turn, the lock still held (nothing is emitted meanwhile, no
            # erasure runs between): the app channel's writer stages the offers and
            # its commit's fsync starts in its thread while the staff screens render
            # this group's events, instead of after them
            await asyncio.sleep(0)
        return gone

    async def _revoke(self, customers: Sequence[str]) -> tuple[int, int]:
        async with self._lock:
            return await self._revoke_locked(customers)

    async def _revoke_locked(self, customers: Sequence[str]) -> tuple[int, int]:
        """Engine first, in slices with the loop let go between (one pass over the
        offers held per slice), then the ledger in one transaction off the loop."""
        dropped = 0
        names = list(customers)
        for i in range(0, len(names), REVOKE_BATCH):
            dropped += len(self.engine.revoke_customers(set(names[i:i + REVOKE_BATCH])))
            await asyncio.sleep(0)
        try:
            revoked = await asyncio.to_thread(self.redemption.ledger.revoke_customers, names)
        except sqlite3.Error as exc:
            self.errors_total += 1
            self._warn(f"revoke:{type(exc).__name__}", "tokens not revoked: the "
                       "redemption ledger failed: %s", exc)
            raise
        return dropped, revoked

    async def _forget_tracking(self, customers: Sequence[str],
                               loyalty_ids: Collection[str]) -> int:
        """Stitcher and counters, in slices (one pass over the stitcher's state each);
        the caller holds the lock. Returns how many the stitcher held."""
        names = list(customers)
        cards = set(loyalty_ids)
        held = 0
        for i in range(0, len(names), REVOKE_BATCH):
            part = set(names[i:i + REVOKE_BATCH])
            held += self.stitcher.forget_many(part, cards)
            for c in part:
                self._store_visit.pop(c, None)
                self._visits_seen.pop(c, None)
            await asyncio.sleep(0)
        return held

    async def _redact_queued(self, customers: Collection[str],
                             loyalty_ids: Collection[str]) -> int:
        """Rewrite the batches not processed yet without these customers and cards (in
        place: the worker holds the list of the batch it waits to process). The caller
        holds the lock, so no batch is processed meanwhile; a backed-up queue (up to
        10,000 batches) is done in slices with the loop let go between, batches queued
        meanwhile included. Returns the events changed; one whose payload cannot be
        kept without them is dropped (counted; none today)."""
        gone = set(customers)
        cards = set(loyalty_ids)
        changed = 0
        # By identity: while we yield, batches are appended and the worker may take
        # one (then it waits for the lock as _current). `done` keeps each list alive,
        # so no id is reused.
        done: list[list[ev.EventDraft]] = []
        seen: set[int] = set()
        while True:
            todo = [b for b in (*self._queue, *(self._current or ()))
                    if id(b) not in seen]
            if not todo:
                return changed
            for i in range(0, len(todo), REDACT_SLICE):
                part = todo[i:i + REDACT_SLICE]
                changed += self._redact_batches(part, gone, cards)
                done += part
                seen.update(id(b) for b in part)
                if len(todo) > REDACT_SLICE:
                    await asyncio.sleep(0)

    def _redact_batches(self, batches: list[list[ev.EventDraft]], gone: set[str],
                        cards: set[str]) -> int:
        changed = 0
        for batch in batches:
            kept: list[ev.EventDraft] = []
            for d in batch:
                try:
                    r = redact_draft(d, gone, cards)
                except ValueError:
                    self.redaction_drops_total += 1
                    continue
                changed += r is not None
                kept.append(d if r is None else r)
            batch[:] = kept
        return changed

    async def _work(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._drain()
            self._wake.clear()
            if self._queue:
                continue
            await wait_for_either(self._wake, stop)
        await self._drain()

    async def _drain(self) -> None:
        while self._queue:
            group = [self._queue.popleft() for _ in range(min(GROUP_MAX, len(self._queue)))]
            self._busy = True
            self._current = group  # erasure rewrites them while they wait for the lock
            try:
                outs = await self.process_group(group, self._wall())
            except Exception:  # a bug must not lose events: they pass unprocessed
                self.unprocessed_total += len(group)
                log.exception("personalisation failed on a group of batches; passed on "
                              "unprocessed")
                outs = group
            finally:
                self._busy = False
                self._current = None
            for out in outs:
                if self.on_processed is not None:
                    self.on_processed(out)
                self._emit(out)

    async def _ticks(self, stop: asyncio.Event) -> None:
        while not await sleep_until_stopped(stop, TICK_S):
            try:
                drafts = await self.tick(self._wall())
            except Exception:
                log.exception("personalisation tick failed; trying again in %g s", TICK_S)
                continue
            if drafts:
                if self.on_processed is not None:
                    self.on_processed(drafts)
                self._emit(drafts)


@dataclass(frozen=True, slots=True)
class _Signed:
    """An offer decided in the group in process, its token signed, not yet recorded."""

    decision: Decision
    token: SignedToken
    draft: ev.EventDraft  # its offer.issued


def _lane(d: ev.EventDraft) -> bool:
    return isinstance(d.data, p.PosScanned | p.PurchaseCompleted | p.PurchaseVoided)


def _concerns(d: ev.EventDraft) -> bool:
    """Whether a draft can matter to redemption, stitching or offers."""
    data = d.data
    if isinstance(data, p.VisitBase):
        return data.customer is not None
    return isinstance(data, p.PosScanned | p.PurchaseCompleted | p.PurchaseVoided)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- the registry, applied in slices -------------------------------------------------

REGISTRY_SLICE = 1_000  # records per slice: ~8 ms of the loop (100,000 in one call: 0.5-0.8 s)


async def apply_in_slices(registry: Registry, change: CustomersChange,
                          now: float) -> RegistryDelta:
    """``registry.apply(change, now)`` with the loop let go between slices of
    :data:`REGISTRY_SLICE` records: a 100,000-customer full sync no longer holds it for
    half a second. The same outcome as one call: a ``replace`` is its records upserted
    slice by slice, then the customers it does not list removed at the version held
    (exactly what ``Registry.apply`` does for them). Readers between slices see some
    records new and some old, each one whole; the caller holds the consent lock, so no
    other change interleaves."""
    if change.received <= REGISTRY_SLICE:
        return registry.apply(change, now)
    parts: list[RegistryDelta] = []
    if change.op == "remove":
        for i in range(0, len(change.remove), REGISTRY_SLICE):
            parts.append(registry.apply(dataclasses.replace(
                change, remove=change.remove[i:i + REGISTRY_SLICE]), now))
            await asyncio.sleep(0)
        return _merged(parts, now)
    listed: set[str] = set()  # built slice by slice too: 100,000 at once is ~40 ms
    for i in range(0, len(change.records), REGISTRY_SLICE):
        part = change.records[i:i + REGISTRY_SLICE]
        parts.append(registry.apply(dataclasses.replace(change, op="upsert", records=part),
                                    now))
        if change.op == "replace":
            listed.update(r.customer for r in part)
        await asyncio.sleep(0)
    if change.op == "replace":
        held = list(registry.customers())  # a copy: removals change the registry
        for i in range(0, len(held), REGISTRY_SLICE):
            removals = tuple(
                Removal.model_construct(customer=c, version=rec.version)
                for c in held[i:i + REGISTRY_SLICE]
                if c not in listed and (rec := registry.get(c)) is not None)
            if removals:
                parts.append(registry.apply(CustomersChange(
                    "remove", (), {}, removals, change.request_id, change.command_id), now))
            await asyncio.sleep(0)
    return _merged(parts, now)


def _merged(parts: Sequence[RegistryDelta], now: float) -> RegistryDelta:
    return RegistryDelta(
        now, applied=sum(d.applied for d in parts), stale=sum(d.stale for d in parts),
        removed=sum(d.removed for d in parts),
        **{f: tuple(x for d in parts for x in getattr(d, f)) for f in (
            "enroll", "withdraw", "marketing_withdrawn", "staff_withdrawn", "written",
            "deleted", "tombstones", "untombed")})
