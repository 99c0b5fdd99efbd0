"""The customer app channel's service: what reaches each customer's phone, durably,
then live (docs/http.md, "The app channel").

    PersonalService.on_offer ──┐  (an issued offer: content and the token's text)
    emitted drafts ────────────┼─► queue ─► writer ─► AppInbox (SQLite, a cursor each)
      offer.reserved/redeemed/ │             │
      released; visit.entered  │             └─► Hub.publish("customer:<pseudonym>")
      (store) with a pickup    ┘

Nothing is published before it is committed: a phone that sees cursor N live can
always get N again from the inbox, and one that reconnects asks for "after N". The
writer takes everything queued at once (one transaction, one fsync for a burst of
offers); the commit (the fsync) runs in a worker thread, so a slow SD card delays the
push, never the event loop; a small batch's statements are staged on the loop first
(page cache, µs; ``_write``). Owned by the event loop; one lock serialises the inbox's
thread work (writes, prune, erase); a route's read of one customer's rows runs inline
when no thread job holds the connection (cheaper than the hop: ``_read``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Final, TypeVar
from zoneinfo import ZoneInfo

from storegate.adapters.app_inbox import (
    AppInbox,
    Entry,
    InboxLocked,
    InboxMessage,
    OfferEntry,
    OfferRow,
    PickupEntry,
    RedemptionEntry,
    Staged,
)
from storegate.adapters.plumbing import sleep_until_stopped
from storegate.app.http.hub import Hub, Message
from storegate.app.redemption import IssuedToken
from storegate.app.status import AppChannelStatus
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.personal.offers import Decision
from storegate.core.personal.registry import Registry
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_QUEUED: Final = 10_000  # entries waiting for the writer; past it the newest are dropped
MAX_BATCH: Final = 500  # entries per transaction
STAGE_INLINE_MAX: Final = 64  # a batch staged on the loop (~1.3 ms at most); larger: thread
PRUNE_EVERY_S: Final = 60.0


TOPIC_PREFIX: Final = "customer:"


def topic(customer: str) -> str:
    """The hub topic a customer's phone listens on."""
    return f"{TOPIC_PREFIX}{customer}"


def hub_message(m: InboxMessage) -> Message:
    return Message(m.kind, m.data, m.cursor)


class AppChannel:
    """The inbox, fed from the event flow, published on the hub. ``hub`` is shared with
    the staff screens (other topics)."""

    def __init__(self, inbox: AppInbox, hub: Hub, registry: Registry, *, tz: ZoneInfo,
                 wall_clock: Callable[[], float]) -> None:
        self.inbox = inbox
        self.hub = hub
        self.registry = registry
        self.tz = tz
        self._wall = wall_clock
        self._queue: deque[Entry] = deque()
        self._idle: asyncio.Future[None] | None = None  # the writer's wait for work
        self._lock = asyncio.Lock()
        # Held by whoever uses the inbox's connection right now (a worker thread, or the
        # loop reading inline): a thread job whose awaiting task was cancelled still
        # runs, and a read must never interleave with a write transaction.
        self._db_busy = threading.Lock()
        self._warn = LogOnce(log)
        # Customers being erased or withdrawing marketing consent, from the first
        # (in-memory) step until the inbox has deleted their rows (:meth:`withhold`,
        # :meth:`erase`): nothing of theirs is read out, or kept by a reader, meanwhile.
        self._withheld: set[str] = set()
        self._erasing: dict[str, int] = {}  # erase() calls running, per customer
        # observable state (counters since start)
        self.queued_dropped_total = 0
        self.errors_total = 0
        self.published_total = 0
        self.staged_busy_total = 0  # staging found the file locked: written in a thread

    # --- feeding (on the loop, never waits) -----------------------------------------

    def on_offer(self, decision: Decision, token: IssuedToken) -> None:
        """PersonalService's hook: an offer issued, its token signed and recorded."""
        camp, content = decision.campaign, decision.content
        if camp is None or content is None:
            return
        discount = content.discount.model_dump() if content.discount is not None else None
        self._put(OfferEntry(
            customer=decision.customer, offer_id=token.token_id, campaign=camp.id,
            title=content.title, text=content.text, image=content.image_url,
            discount=discount, token=token.text, issued_at=decision.decided_at,
            expires_at=float(token.expires_at)))

    def observe(self, drafts: Sequence[ev.EventDraft]) -> None:
        """The events the personalisation service emits: redemption state changes of
        offers, and store entries of customers with a pickup order ready."""
        for d in drafts:
            data = d.data
            if isinstance(data, p.OfferReserved):
                self._put(RedemptionEntry(data.offer_id, "reserved", d.time))
            elif isinstance(data, p.OfferRedeemed):
                self._put(RedemptionEntry(data.offer_id, "redeemed", d.time))
            elif isinstance(data, p.OfferReleased):
                self._put(RedemptionEntry(data.offer_id, "released", d.time))
            elif isinstance(data, p.VisitEntered) and data.zone is None \
                    and data.customer is not None:
                self._pickups(data.customer, d.time)

    def _pickups(self, customer: str, at: float) -> None:
        record = self.registry.get(customer)
        if record is None:
            return
        day = datetime.fromtimestamp(at, UTC).astimezone(self.tz).date().isoformat()
        for order in record.pickup_orders:
            if order.state == "ready":
                self._put(PickupEntry(customer, order.order_id, order.counter, at, day))

    def _put(self, entry: Entry) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self.queued_dropped_total += 1
            self._warn("queue-full", "app inbox writer is %d entries behind: new app "
                       "messages are dropped until it catches up", MAX_QUEUED)
            return
        self._queue.append(entry)
        self._nudge()

    def _nudge(self) -> None:
        """Wake the idle writer: its own task resumes on the next loop turn (an Event
        and ``wait_for_either`` took three: a waiter task, then ``asyncio.wait``)."""
        idle = self._idle
        if idle is not None and not idle.done():
            idle.set_result(None)

    # --- the writer ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Write and publish what is queued; prune expired messages every minute."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._writer(stop))
            tg.create_task(self._pruner(stop))

    async def _writer(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        stopper = asyncio.ensure_future(stop.wait())
        stopper.add_done_callback(lambda _: self._nudge())
        try:
            while not stop.is_set():
                await self.flush()
                # the stop may have come during the flush, when there was no idle
                # future for its wake-up to complete: look again before idling
                if self._queue or stop.is_set():
                    continue
                self._idle = loop.create_future()
                try:
                    await self._idle
                finally:
                    self._idle = None
        finally:
            stopper.cancel()
        await self.flush()

    async def flush(self) -> int:
        """Everything queued now written, then published; returns the messages stored."""
        stored = 0
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            try:
                stored += await self._write(batch)
            except sqlite3.Error as exc:
                self.errors_total += 1
                self._warn(f"append:{type(exc).__name__}", "app inbox write failed, %d "
                           "message(s) not sent to phones: %s", len(batch), exc)
        return stored

    async def _write(self, batch: list[Entry]) -> int:
        """One transaction, published once committed; returns the messages stored.

        A batch of up to :data:`STAGE_INLINE_MAX` entries (a burst's are a few) is
        staged on the loop (SQLite's page cache, ~20 µs an entry) and only its commit,
        the fsync, runs in a worker thread, which publishes it the moment it returns
        (``call_soon_threadsafe``, ahead of whatever the loop was given meanwhile):
        measured in bench/bench_http.py, an append run whole in a thread waited for
        the interpreter at every statement while the loop was busy (p50 4 ms for one
        offer, the fsync 0.5 ms), and its result waited a loop turn more. Larger
        batches (a backlog) are written whole in the thread as before, and so is a
        small one whose stage found the file locked by another connection (another
        process): the loop never waits in SQLite's busy timeout (5 s).

        Once staged, the commit job is handed to the thread pool and shielded: a
        cancelled writer does not cancel it (it would leave the transaction open and
        the connection held); if it cannot be handed over at all, the transaction is
        rolled back and the connection given back."""
        now = self._wall()
        if len(batch) <= STAGE_INLINE_MAX:
            async with self._lock:
                if self._db_busy.acquire(blocking=False):  # else a cancelled job's thread
                    try:
                        staged = self.inbox.stage(batch, now, wait=False)
                    except InboxLocked:
                        self._db_busy.release()
                        self.staged_busy_total += 1
                        staged = None  # below, in a thread, which may wait
                    except BaseException:
                        self._db_busy.release()
                        raise
                    if staged is not None:
                        return await self._commit_staged(staged)
        messages = await self._in_thread(self.inbox.append, batch, now)
        self._publish(messages)
        return len(messages)

    async def _commit_staged(self, staged: Staged) -> int:
        loop = asyncio.get_running_loop()
        try:
            job = loop.run_in_executor(None, self._commit, staged, loop)
        except BaseException:  # the pool shut down, ...: nothing will commit it
            try:
                with contextlib.suppress(sqlite3.Error):
                    self.inbox.rollback()
            finally:
                self._db_busy.release()
            raise
        job.add_done_callback(_retrieved)  # awaited by nobody once its writer is cancelled
        return await asyncio.shield(job)

    def _commit(self, staged: Staged, loop: asyncio.AbstractEventLoop) -> int:
        """In the worker thread: the commit, the messages' publication scheduled on
        the loop (committed: now they may be seen), then the connection given back:
        a later batch cannot commit, and be published, ahead of this one."""
        try:
            self.inbox.commit(staged)
            with contextlib.suppress(RuntimeError):  # the loop closed: phones resume by cursor
                loop.call_soon_threadsafe(self._publish, staged.messages)
        finally:
            self._db_busy.release()
        return len(staged.messages)

    def _publish(self, messages: list[InboxMessage]) -> None:
        for m in messages:
            self.hub.publish(topic(m.customer), hub_message(m))
        self.published_total += len(messages)

    async def _pruner(self, stop: asyncio.Event) -> None:
        while not await sleep_until_stopped(stop, PRUNE_EVERY_S):
            try:
                await self._in_thread(self.inbox.prune, self._wall())
            except sqlite3.Error as exc:
                self.errors_total += 1
                self._warn(f"prune:{type(exc).__name__}", "app inbox prune failed: %s", exc)

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        async with self._lock:
            return await asyncio.to_thread(self._exclusive, fn, *args)

    def _exclusive(self, fn: Callable[..., T], *args: object) -> T:
        with self._db_busy:
            return fn(*args)

    async def _read(self, fn: Callable[..., T], *args: object) -> T:
        """A read of one customer's rows (a few, by index, from the page cache: tens of
        µs) runs inline when no thread job holds the connection; the hop to a worker
        thread and back costs more than the read (~100 µs and GIL hand-offs, measured in
        bench/bench_http.py). While a write, prune or erasure runs, the read queues
        behind it in a thread as before, so it never sees a half-done transaction."""
        if not self._lock.locked() and self._db_busy.acquire(blocking=False):
            try:
                return fn(*args)
            finally:
                self._db_busy.release()
        return await self._in_thread(fn, *args)

    # --- reading (the routes) -------------------------------------------------------

    # A withheld customer's reads answer nothing, checked again after the read: one
    # queued behind a thread job may return after their erasure began.

    async def since(self, customer: str, cursor: int) -> list[InboxMessage]:
        if self.withheld(customer):
            return []
        got = await self._read(self.inbox.since, customer, cursor)
        return [] if self.withheld(customer) else got

    async def offers(self, customer: str) -> list[OfferRow]:
        if self.withheld(customer):
            return []
        got = await self._read(self.inbox.offers, customer, self._wall())
        return [] if self.withheld(customer) else got

    def now(self) -> float:
        """The wall clock the reads filter expiry by."""
        return self._wall()

    async def offer(self, customer: str, offer_id: str) -> OfferRow | None:
        if self.withheld(customer):
            return None
        got = await self._read(self.inbox.offer, customer, offer_id, self._wall())
        return None if self.withheld(customer) else got

    # --- consent and erasure --------------------------------------------------------

    def withhold(self, customers: Iterable[str]) -> None:
        """The first, in-memory step of an erasure or a marketing withdrawal: from now
        until :meth:`erase` of them completes, nothing of theirs is read out (the
        routes and the fast path answer an empty list) and no reader keeps what it
        read (fast.OfferBodies asks :meth:`withheld`). Their rows are still on disk
        until then; a failed erasure leaves them withheld (central sends it again)."""
        self._withheld.update(customers)

    def withheld(self, customer: str) -> bool:
        return customer in self._withheld or customer in self._erasing

    async def erase(self, customers: Sequence[str]) -> int:
        """Erasure (app/erasure.py) and a marketing withdrawal: withheld at once,
        their queued entries dropped, every row deleted, the file rebuilt. Returns the
        rows deleted. Once it has deleted the rows they are readable again (empty)."""
        names = set(customers)
        if not names:
            return 0
        for c in names:
            self._erasing[c] = self._erasing.get(c, 0) + 1
        kept = [e for e in self._queue if not _of(e, names)]
        # redemption entries carry no customer: the inbox drops them (offer unknown)
        self._queue.clear()
        self._queue.extend(kept)
        try:
            removed = await self._in_thread(self.inbox.erase, sorted(names))
        finally:
            for c in names:
                left = self._erasing.pop(c) - 1
                if left:
                    self._erasing[c] = left
        self._withheld.difference_update(names)  # erased: nothing left to withhold
        return removed

    def close(self) -> None:
        self.inbox.close()

    def snapshot(self) -> AppChannelStatus:
        """Counts only (the status, /metrics)."""
        return AppChannelStatus(
            inbox_messages=self.inbox.messages, queued=len(self._queue),
            published_total=self.published_total,
            queued_dropped_total=self.queued_dropped_total, errors_total=self.errors_total,
            streams=self.hub.subscribers_under(TOPIC_PREFIX),
            hub_cut_off_total=self.hub.cut_off_total,
            staged_busy_total=self.staged_busy_total)


def _retrieved(job: asyncio.Future[int]) -> None:
    """A commit job's outcome taken (its error is logged by the writer's flush, when
    the writer still waits for it), so asyncio does not report it as never retrieved."""
    if not job.cancelled():
        job.exception()


def _of(entry: Entry, names: set[str]) -> bool:
    return isinstance(entry, OfferEntry | PickupEntry) and entry.customer in names
