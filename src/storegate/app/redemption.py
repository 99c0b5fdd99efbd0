"""Offer redemption at the lanes, in the event flow: scanned tokens in, ledger changes and
offer events out, with central unreachable or not.

    pos.scanned (offer)   verify (signature, store, validity, customer) → reserve
                          → offer.reserved, or offer.rejected with the reason
    purchase.completed    confirm its transaction's reservations → offer.redeemed
    purchase.voided       release them → offer.released (voided)
    tick                  release reservations past the timeout → offer.released
                          (timeout); mark unused offers past expiry

Runs on the event loop. Each scan, receipt and void is one SQLite transaction with
synchronous FULL (an fsync): well under a millisecond on an SSD, but tens of
milliseconds on a worn SD card, so :meth:`RedemptionService.process_async` does the
ledger work in a worker thread and runs the callbacks back on the loop;
:meth:`RedemptionService.process` is the same work inline (tests, replay).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from storegate.adapters.redemption_sqlite import IssueRow, Offer, RedemptionStore, Unlisted
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.personal.tokens import (
    TOKEN_ID_BYTES,
    TokenRejected,
    TokenSigner,
    verify_token,
)
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

LaneCustomer = Callable[[str], str | None]  # lane -> its customer pseudonym, if known
MAX_LISTED_TOKENS = 32  # offer tokens of one purchase looked at (a lane's list: bounded)
OnReserved = Callable[[str, str, str | None], None]  # transaction_id, lane, customer


class IssuedToken(NamedTuple):
    token_id: str  # 32 hex digits: offer.issued's offer_id
    text: str      # what the QR code carries
    expires_at: int


class SignedToken(NamedTuple):
    """A token signed, not yet in the ledger (:meth:`RedemptionService.sign_token`):
    nobody may see it before :meth:`RedemptionService.record_tokens` returns."""

    token: IssuedToken
    customer: str
    campaign: str
    issued_at: int


@dataclass(slots=True)
class _Work:
    """One batch's outcome, computed off the loop: drafts, and the callbacks to run on it."""

    drafts: list[ev.EventDraft] = field(default_factory=list)
    reserved: list[tuple[str, str, str | None]] = field(default_factory=list)


class RedemptionService:
    """Offer tokens of this gateway (issue, sign) and of the store (verify, redeem).

    ``keys`` beyond the signer's own: the store's other gateways (config
    redemption.trusted_token_keys). ``campaign_of_ref`` names the campaign of a token
    this ledger has no row for, from its 8-byte offer reference (the offer engine knows
    the store's campaigns); otherwise the event says ``ref:<hex>``."""

    def __init__(self, ledger: RedemptionStore, signer: TokenSigner, *, store: str,
                 offer_ttl_s: int, trusted: Mapping[str, Ed25519PublicKey] | None = None,
                 rand: Callable[[int], bytes] = os.urandom,
                 lane_customer: LaneCustomer | None = None,
                 on_reserved: OnReserved | None = None,
                 campaign_of_ref: Callable[[bytes], str | None] | None = None,
                 started_at: float | None = None) -> None:
        self.ledger = ledger
        self.signer = signer
        self.store = store
        self.offer_ttl_s = offer_ttl_s
        self.keys: dict[str, Ed25519PublicKey] = {**(trusted or {}),
                                                  signer.kid: signer.public_key}
        self.rand = rand
        self.lane_customer = lane_customer
        self.on_reserved = on_reserved
        self.campaign_of_ref = campaign_of_ref
        # When this process started (wall clock): a reservation older than it belongs
        # to a transaction the lane may have lost (see _completed). None: not looked at.
        self.started_at = started_at
        # observable state (counters since start, for status and telemetry)
        self.rejected: Counter[str] = Counter()
        self.reserved_total = 0
        self.redeemed_total = 0
        self.released_total = 0
        self.ledger_errors_total = 0
        self._warn = LogOnce(log)
        self._busy = asyncio.Lock()  # batches in order: a void never overtakes its scan

    # --- issuing ------------------------------------------------------------------

    def issue_token(self, customer: str, campaign: str, now: float, *,
                    expires_at: float | None = None) -> IssuedToken:
        """Sign a token for an offer the engine issued, and record it (before it is
        shown: a token the ledger does not know is still redeemable once, but its
        customer would not be on the redemption). ``expires_at``: the offer's own
        expiry (its campaign's TTL and validity), capped by ``offer_ttl_s``."""
        signed = self.sign_token(customer, campaign, now, expires_at=expires_at)
        self.record_tokens([signed])
        return signed.token

    def sign_token(self, customer: str, campaign: str, now: float, *,
                   expires_at: float | None = None) -> SignedToken:
        """:meth:`issue_token` up to the ledger: the token signed (no I/O, ~0.1 ms),
        not recorded. Nothing of it may be shown before :meth:`record_tokens` of it
        returns (the personalisation service records a whole group's in one go)."""
        token_id = self.rand(TOKEN_ID_BYTES)
        issued_at = int(now)
        expires_at = issued_at + self.offer_ttl_s if expires_at is None else \
            min(int(expires_at), issued_at + self.offer_ttl_s)
        text = self.signer.sign(token_id=token_id, offer=campaign, customer=customer,
                                issued_at=issued_at, expires_at=expires_at)
        return SignedToken(IssuedToken(token_id.hex(), text, expires_at), customer,
                           campaign, issued_at)

    def record_tokens(self, signed: Sequence[SignedToken]) -> None:
        """Signed tokens into the ledger in one transaction: one fsync (synchronous
        FULL) for a burst of offers instead of one each; durable when this returns,
        none of them recorded if it raises. Blocking: call it in a worker thread."""
        self.ledger.issue_many([
            IssueRow(s.token.token_id, s.campaign, s.customer, s.issued_at,
                     s.token.expires_at) for s in signed])

    # --- the event flow -------------------------------------------------------------

    def process(self, drafts: list[ev.EventDraft], now: float) -> list[ev.EventDraft]:
        """``drafts`` with the offer events they cause, each right after its cause."""
        work = self._work(drafts, now)
        self._callbacks(work)
        return work.drafts

    async def process_async(self, drafts: list[ev.EventDraft], now: float) -> (
        list[ev.EventDraft]
    ):
        """:meth:`process` with the ledger's fsyncs off the event loop; callbacks run
        on the loop. Batches are handled in the order they are awaited."""
        if not any(_concerns(d) for d in drafts):
            return drafts  # presence and most lane events: no thread hop
        async with self._busy:
            work = await asyncio.to_thread(self._work, drafts, now)
        self._callbacks(work)
        return work.drafts

    def tick(self, now: float) -> list[ev.EventDraft]:
        """Release reservations past the timeout; expire unused offers."""
        try:
            released = self.ledger.timeouts(now)
            self.ledger.expire(now)
        except sqlite3.Error as exc:
            self._ledger_error("tick", exc)
            return []
        return [self._released(o, "timeout", now) for o in released]

    async def tick_async(self, now: float) -> list[ev.EventDraft]:
        async with self._busy:
            return await asyncio.to_thread(self.tick, now)

    # --- internals ----------------------------------------------------------------

    def _work(self, drafts: Iterable[ev.EventDraft], now: float) -> _Work:
        work = _Work()
        for d in drafts:
            work.drafts.append(d)
            try:
                if d.type is ev.POS_SCANNED and isinstance(d.data, p.PosScanned):
                    if d.data.kind == "offer":
                        work.drafts.extend(self._scanned(d.data, d.time, work))
                elif d.type is ev.PURCHASE_COMPLETED and isinstance(d.data,
                                                                      p.PurchaseCompleted):
                    work.drafts.extend(self._completed(d.data, d.time))
                elif d.type is ev.PURCHASE_VOIDED and isinstance(d.data, p.PurchaseVoided):
                    work.drafts.extend(self._voided(d.data, d.time))
            except sqlite3.Error as exc:  # disk full, a lock held too long: the lane goes on
                self._ledger_error(d.type.kind, exc)
        return work

    def _scanned(self, s: p.PosScanned, at: float, work: _Work) -> list[ev.EventDraft]:
        customer = self.lane_customer(s.lane) if self.lane_customer is not None else None
        checked = verify_token(s.value, keys=self.keys, store=self.store, now=at,
                               customer=customer)
        if isinstance(checked, TokenRejected):
            return [self._rejected(s, at, checked.reason, checked.token_id)]
        tid = checked.token_hex
        ref = checked.offer_ref
        named = self.campaign_of_ref(ref) if self.campaign_of_ref is not None else None
        r = self.ledger.reserve(
            tid, s.lane, s.transaction_id, at,
            unlisted=Unlisted(named or f"ref:{ref.hex()}", checked.issued_at,
                              checked.expires_at))
        if r.outcome == "again":
            return []  # the same scan twice in one transaction: reserved already
        if r.outcome == "reserved" and r.offer is not None:
            self.reserved_total += 1
            work.reserved.append((s.transaction_id, s.lane, r.offer.customer))
            data = p.OfferReserved(offer_id=tid, campaign=r.offer.campaign,
                                   customer=r.offer.customer, lane=s.lane,
                                   transaction_id=s.transaction_id,
                                   reserved_at=ev.rfc3339(at))
            return [ev.EventDraft(ev.OFFER_RESERVED, f"offer/{tid}", at, data)]
        reason = r.outcome if r.outcome != "unknown" else "malformed"  # unknown: never here
        return [self._rejected(s, at, reason, tid)]

    def _completed(self, c: p.PurchaseCompleted, at: float) -> list[ev.EventDraft]:
        """The transaction's reservations redeemed. When the purchase lists the offer
        tokens it applied, those not on it are released (``not_on_receipt``); when the
        transaction has none (the gateway restarted mid-transaction: the lane's
        transaction id is new), this lane's reservations from before the start of
        tokens it lists are redeemed on it."""
        if c.transaction_id is None:
            return []
        listed = self._listed(c.offer_tokens, at)
        released: list[Offer] = []
        if c.offer_tokens:
            confirmed, released = self.ledger.confirm_listed(
                c.transaction_id, at, receipt=c.receipt, listed=listed)
        else:
            confirmed = self.ledger.confirm(c.transaction_id, at, receipt=c.receipt)
        if not confirmed and not released and listed and self.started_at is not None:
            confirmed = self.ledger.confirm_orphans(
                c.lane, sorted(listed), before=self.started_at, now=at,
                transaction_id=c.transaction_id, receipt=c.receipt)
        out = [self._released(o, "not_on_receipt", at) for o in released]
        for o in confirmed:
            self.redeemed_total += 1
            data = p.OfferRedeemed(offer_id=o.token_id, campaign=o.campaign,
                                   customer=o.customer, lane=o.lane or c.lane,
                                   transaction_id=c.transaction_id, receipt=c.receipt,
                                   redeemed_at=ev.rfc3339(at))
            out.append(ev.EventDraft(ev.OFFER_REDEEMED, f"offer/{o.token_id}", at, data))
        return out

    def _listed(self, tokens: list[str], at: float) -> set[str]:
        """The token ids of the offer tokens a purchase lists: authentic tokens of this
        store (expired since the scan is fine: the reservation was made in time), at
        most :data:`MAX_LISTED_TOKENS` (the list comes from a lane)."""
        ids: set[str] = set()
        for text in tokens[:MAX_LISTED_TOKENS]:
            r = verify_token(text, keys=self.keys, store=self.store, now=at)
            if isinstance(r, TokenRejected):
                if r.reason == "expired" and r.token_id is not None:
                    ids.add(r.token_id)
            else:
                ids.add(r.token_hex)
        return ids

    def _voided(self, v: p.PurchaseVoided, at: float) -> list[ev.EventDraft]:
        if v.transaction_id is None:
            return []
        return [self._released(o, "voided", at)
                for o in self.ledger.release(transaction_id=v.transaction_id)]

    def _released(self, o: Offer, reason: str, at: float) -> ev.EventDraft:
        self.released_total += 1
        data = p.OfferReleased.model_validate({
            "offer_id": o.token_id, "lane": o.lane or "", "transaction_id":
            o.transaction_id or "", "reason": reason})
        return ev.EventDraft(ev.OFFER_RELEASED, f"offer/{o.token_id}", at, data)

    def _rejected(self, s: p.PosScanned, at: float, reason: str, token_id: str | None) -> (
        ev.EventDraft
    ):
        self.rejected[reason] += 1
        # the reason only: the scanned text may be anything, and is in pos.scanned already
        self._warn(f"rejected:{reason}", "offer token rejected at a lane: %s", reason)
        data = p.OfferRejected.model_validate({
            "lane": s.lane, "transaction_id": s.transaction_id, "token_id": token_id,
            "reason": reason})
        return ev.EventDraft(ev.OFFER_REJECTED, f"lane/{s.lane}", at, data)

    def _callbacks(self, work: _Work) -> None:
        if self.on_reserved is not None:
            for transaction_id, lane, customer in work.reserved:
                self.on_reserved(transaction_id, lane, customer)

    def _ledger_error(self, where: str, exc: sqlite3.Error) -> None:
        self.ledger_errors_total += 1
        self._warn(f"ledger:{where}:{type(exc).__name__}",
                   "redemption ledger failed (%s): %s", where, exc)


def _concerns(d: ev.EventDraft) -> bool:
    return d.type is ev.PURCHASE_COMPLETED or d.type is ev.PURCHASE_VOIDED or (
        d.type is ev.POS_SCANNED and isinstance(d.data, p.PosScanned)
        and d.data.kind == "offer")
