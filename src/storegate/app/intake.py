"""From the sources into the outbox without waiting, and without losing an event.

The sources (lanes, presence, command answers) hand events over and go on; the commit
happens on the outbox's writer thread. When the outbox refuses (disk full, closing),
the events are held in memory (:class:`~storegate.core.holding.HeldEvents`: purchases
never dropped by its bound) and retried with backoff until it accepts them again, in
the order they came; while anything is held, new events queue behind it, so the
outbox's sequence still follows arrival. Said once at warning when holding starts and
once when it ends; counted while waiting (``pending``: status and telemetry).

At shutdown :meth:`drain` gets what is still held or in flight committed before the
outbox stops accepting; anything the outbox still refuses after that is logged at
error, purchases in full, so they can be recovered from the journal.

Everything but the commit's completion runs on the event loop: completions arrive on
the writer thread and are handed over with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Collection
from typing import Final

from storegate.adapters.outbox import Accepted, Outbox
from storegate.core import events as ev
from storegate.core.backoff import Backoff
from storegate.core.holding import MAX_DROPPABLE, HeldEvents
from storegate.core.personal.erasure import redact_draft
from storegate.errors import OutboxError

log = logging.getLogger(__name__)

RETRY_BATCH: Final = 5000  # the outbox's own batch limit
# Disk space comes back when an operator frees it: a retry every few seconds notices
# soon enough, and costs one failed transaction each.
RETRY_BACKOFF: Final = Backoff(0.5, 5.0)
DRAIN_POLL_S: Final = 0.02

_Future = concurrent.futures.Future[list[Accepted]]


class Intake:
    """Owned by the event loop thread (:meth:`submit` may be called from others)."""

    def __init__(self, outbox: Outbox, *, max_droppable: int = MAX_DROPPABLE,
                 backoff: Backoff = RETRY_BACKOFF,
                 uniform01: Callable[[], float] = random.random) -> None:
        self._outbox = outbox
        self._backoff = backoff
        self._uniform01 = uniform01
        self._held = HeldEvents(max_droppable)
        self._inflight: dict[_Future, list[ev.EventDraft]] = {}
        self._retrying = 0  # events taken from the held queue for a retry in progress
        # erasures applied while a retry was out (rewritten if it comes back refused)
        self._retry_erasures: list[tuple[frozenset[str], frozenset[str]]] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._holding_since: float | None = None  # monotonic; None: not holding
        self._warned_drops = False
        self._episode_accepted = 0
        self._drained = False  # after drain nobody retries: a refusal is a loss, logged
        self.accepted_after_hold_total = 0

    # --- observable state ------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events handed over but refused so far, waiting in memory to be accepted."""
        return len(self._held) + self._retrying

    @property
    def pending_purchases(self) -> int:
        return self._held.critical

    @property
    def held_total(self) -> int:
        return self._held.held_total

    @property
    def dropped(self) -> dict[str, int]:
        """Non-purchase events dropped by the memory bound while the outbox refused."""
        return dict(self._held.dropped)

    def snapshot(self) -> dict[str, object]:
        return {"pending": self.pending, "pending_purchases": self.pending_purchases,
                "held_total": self.held_total, "dropped": self.dropped,
                "accepted_after_hold_total": self.accepted_after_hold_total}

    # --- producers -------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop that owns this intake (the gateway's, from its start)."""
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()

    def submit(self, drafts: list[ev.EventDraft]) -> None:
        """Hand events over; they are committed, or held and retried."""
        if not drafts:
            return
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self.submit, drafts)
            return
        if self._held or self._retrying:  # keep arrival order behind what is held
            self._hold(drafts, None)
            return
        try:
            fut = self._outbox.submit(drafts)
        except OutboxError as exc:
            self._hold(drafts, exc)
            return
        self._inflight[fut] = drafts
        fut.add_done_callback(self._completed)

    def _completed(self, fut: _Future) -> None:
        """On the writer thread (or at once): hand the outcome to the loop."""
        loop = self._loop
        try:
            if loop is None:
                raise RuntimeError("no loop")  # noqa: TRY301
            loop.call_soon_threadsafe(self._settle, fut)
        except RuntimeError:  # the loop is gone: nobody can retry any more
            drafts = self._inflight.pop(fut, [])
            if fut.exception() is not None:
                _lost(drafts, fut.exception())

    def _settle(self, fut: _Future) -> None:
        drafts = self._inflight.pop(fut, [])
        exc = fut.exception()
        if exc is not None:
            self._hold(drafts, exc)

    def _hold(self, drafts: list[ev.EventDraft], exc: BaseException | None) -> None:
        if self._drained:
            _lost(drafts, exc or "after the shutdown drain")
            return
        if self._holding_since is None:
            self._holding_since = time.monotonic()
            log.warning("the outbox is not accepting (%s): holding events in memory and "
                        "retrying until it does; purchases are never dropped, other events "
                        "beyond %d are (counted)", exc or "retrying",
                        self._held.max_droppable)
        self._note_drops(self._held.hold(drafts))
        self._wake.set()

    def _note_drops(self, n: int) -> None:
        if n and not self._warned_drops:
            self._warned_drops = True
            log.warning("holding more than %d events while the outbox refuses: dropping "
                        "the least valuable (never purchases); counted by type in status",
                        self._held.max_droppable)

    # --- erasure ---------------------------------------------------------------------

    def redact(self, customers: Collection[str], loyalty_ids: Collection[str]) -> int:
        """Erasure (app/erasure.py): the events held in memory (the outbox refusing)
        rewritten without these customers and cards, by the rule the outbox's stored
        events get (core/personal/erasure.py), in their place in the order. On the loop,
        in one step: nothing is taken for a retry meanwhile. A retry in progress is left
        alone (the writer thread may be encoding it): if it is accepted, the outbox's
        own redaction, queued behind it, covers it; if it fails, it is rewritten as it
        is put back. Returns the events changed; one whose payload cannot be kept
        without them is dropped (counted with the bound's drops; none today)."""
        erasure = (frozenset(customers), frozenset(loyalty_ids))
        if self._retrying:
            self._retry_erasures.append(erasure)
        held, changed = self._rewrite(self._held.take(len(self._held)), [erasure])
        self._held.put_back(held)
        return changed

    def _rewrite(self, drafts: list[ev.EventDraft],
                 erasures: list[tuple[frozenset[str], frozenset[str]]]) -> (
        tuple[list[ev.EventDraft], int]
    ):
        changed = 0
        kept: list[ev.EventDraft] = []
        for d in drafts:
            out: ev.EventDraft | None = d
            for gone, cards in erasures:
                try:
                    r = redact_draft(out, gone, cards) if out is not None else None
                except ValueError:
                    dropped = self._held.dropped
                    dropped[d.type.name] = dropped.get(d.type.name, 0) + 1
                    out = None
                    break
                if r is not None:
                    out = r
            if out is None:
                continue
            changed += out is not d
            kept.append(out)
        return kept, changed

    # --- retrying --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Retry what is held, with backoff, until ``stop`` (then :meth:`drain`)."""
        failures = 0
        while not stop.is_set():
            if not self._held:
                self._wake.clear()
                await _first(stop, self._wake, None)
                continue
            if await self._retry():
                failures = 0
                continue
            delay = self._backoff.delay(failures, self._uniform01())
            failures += 1
            await _first(stop, None, delay)

    async def _retry(self) -> bool:
        """Offer the held events to the outbox again; True once all were accepted.

        One event goes first: while the disk is still full each probe fails the same
        way (the outbox logs a repeated error once), instead of a batch of a different
        size every time."""
        size = 1
        while self._held:
            batch = self._held.take(size)
            self._retrying = len(batch)
            try:
                await self._outbox.accept_many(batch)
            except OutboxError:
                self._retrying = 0
                if self._retry_erasures:  # erased while it was out: not back as it was
                    batch, _ = self._rewrite(batch, self._retry_erasures)
                    self._retry_erasures.clear()
                self._note_drops(self._held.put_back(batch))
                return False
            self._retrying = 0
            self._retry_erasures.clear()  # accepted: the outbox's redaction covers it
            self.accepted_after_hold_total += len(batch)
            self._episode_accepted += len(batch)
            size = RETRY_BATCH
        if self._holding_since is not None:
            log.warning("the outbox accepts again: %d held event(s) accepted after %.1f s",
                        self._episode_accepted, time.monotonic() - self._holding_since)
            self._holding_since = None
            self._episode_accepted = 0
            self._warned_drops = False
        return True

    async def drain(self, timeout_s: float) -> int:
        """At shutdown, before the outbox stops accepting: get what is in flight or held
        committed, for up to ``timeout_s``. Returns how many events are left; those are
        logged (purchases in full) and lost."""
        deadline = time.monotonic() + timeout_s
        failures = 0
        while time.monotonic() < deadline:
            if self._inflight:  # their completions arrive through the loop
                await asyncio.sleep(DRAIN_POLL_S)
                continue
            if not self._held:
                self._drained = True
                return 0
            if await self._retry():
                continue
            delay = self._backoff.delay(failures, self._uniform01())
            failures += 1
            await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
        self._drained = True
        left = self._held.take(len(self._held))
        for drafts in self._inflight.values():
            left += drafts
        self._inflight.clear()
        if left:
            _lost(left, "shutdown while the outbox still refused")
        return len(left)


async def _first(stop: asyncio.Event, wake: asyncio.Event | None,
                 timeout: float | None) -> None:
    """Wait for ``stop``, ``wake`` or the timeout, whichever comes first."""
    waits = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waits.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await w


def _lost(drafts: list[ev.EventDraft], why: object) -> None:
    """The last resort: the journal is the only copy left of these events."""
    purchases = [d for d in drafts if d.type.priority == ev.Priority.CRITICAL]
    log.error("%d event(s) could not be accepted (%s), %d of them purchases; the "
              "purchases follow in full", len(drafts), why, len(purchases))
    for d in purchases:
        log.error("not accepted: %s %s %s", d.type.name, d.subject,
                  d.data.model_dump_json())
