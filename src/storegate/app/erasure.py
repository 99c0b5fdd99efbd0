"""Erasure: one command removes every trace of the customers it names from the box.

The order is the point. Memory first, so from the first step nothing new is decided,
tracked or stitched about them: the registry (the one consent check, the card lookup),
presence (keys and tracking), the personal service (offers, stitching, whatever it
caches for screens). Then the disk: the identity store, the registry's file (a
tombstone with a keyed hash only, so an older command still in flight never brings
them back), the redemption ledger (unredeemed offers revoked, every row's customer
replaced by a keyed hash), the app inbox (offers and their tokens, pickup notices:
deleted), the outbox (stored events redacted, pending and kept for
replay alike). Last, every SQLite file the box writes is rebuilt (``VACUUM``) and its
write-ahead log truncated, so no free page, free block or WAL frame keeps an old copy.

Runs on the event loop; the file work runs in worker threads (the outbox's on its
writer thread). What it returns is counts only (``gateway.erased`` names no customer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final

from storegate.adapters.identities_sqlite import IdentityStore
from storegate.adapters.outbox import Outbox, Redacted
from storegate.adapters.private_sqlite import rebuild
from storegate.adapters.redemption_sqlite import RedemptionStore
from storegate.adapters.registry_sqlite import RegistrySqlite
from storegate.app.app_channel import AppChannel
from storegate.app.intake import Intake
from storegate.app.personal import PersonalService
from storegate.app.screens import ScreenService
from storegate.core import payloads as p
from storegate.core.personal.registry import Registry, Tombstone
from storegate.core.presence.pipeline import PresencePipeline

log = logging.getLogger(__name__)

WIPE_BUSY_TIMEOUT_MS: Final = 10_000
# A ledger's reservation timeout, for a ledger opened only to erase (nothing reserves).
_UNUSED_TIMEOUT_S: Final = 300.0
LEDGER_HASH_PREFIX: Final = "erased:"
REGISTRY_SLICE: Final = 1_000  # customers erased from the registry between yields (~7 ms)


@dataclass(slots=True)
class ErasureCounts:
    """What one erasure removed, per store (the answer's figures)."""

    customers: int = 0
    registry_records: int = 0
    identity_keys: int = 0
    tracking_states: int = 0
    stitcher_states: int = 0
    offers_revoked: int = 0
    ledger_rows_pseudonymised: int = 0
    outbox_unsent_redacted: int = 0
    outbox_replay_redacted: int = 0
    files_rewritten: int = 0
    errors: list[str] = field(default_factory=list)

    def answer(self, request_id: str | None, command_id: str | None) -> p.Erased:
        counts = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "errors"}
        error = "; ".join(self.errors)[:300] or None
        return p.Erased(request_id=request_id, command_id=command_id,
                        applied=error is None, error=error, **counts)


@dataclass(slots=True)
class ErasureTargets:
    """Everything of the box erasure reaches. None: not running here (presence off, no
    personal service); a ledger file without its service is opened to be erased too."""

    registry: Registry
    registry_store: RegistrySqlite | None
    identities: IdentityStore | None
    outbox: Outbox
    pipeline: PresencePipeline | None = None
    personal: PersonalService | None = None
    ledger_path: Path | None = None  # the redemption ledger's file, whoever holds it
    files: Sequence[Path] = ()  # every other SQLite file the box writes (command ledger)
    app_channel: AppChannel | None = None  # the app inbox (offers with tokens, pickups)
    screens: ScreenService | None = None  # the staff screens (app/screens.py)
    intake: Intake | None = None  # events held in memory while the outbox refuses


async def erase(customers: Sequence[str], t: ErasureTargets, now: float, *,
                loyalty_ids: Sequence[str] = ()) -> ErasureCounts:
    """Erase ``customers`` from every store of ``t``; one failing store does not stop
    the others (each error is in the counts: the answer then says applied false, and
    central sends the command again — erasing twice is harmless). ``loyalty_ids``:
    their cards as central knows them (the command's), redacted with those the
    registry still holds."""
    out = ErasureCounts(customers=len(customers))
    names = list(dict.fromkeys(customers))
    # The cards the registry held for them, and those central named (a customer whose
    # record is gone still has cards in stored purchases and scans): stored events and
    # open transactions may carry them even where the customer field does not.
    loyalty = sorted({card for c in names if (r := t.registry.get(c)) is not None
                      for card in r.loyalty_ids} | set(loyalty_ids))

    # --- memory: nothing more is decided, tracked or stitched about them ----------
    # The registry first: from here `allows` says no and their cards map to nobody, so
    # whatever runs while the steps below wait (a lane's batch) finds no customer.
    # In slices, the loop let go between (10,000 at once held it ~70 ms): a batch
    # processed between slices may still see a later slice's customers, and whatever
    # it produced about them is covered by the steps below (queue, outbox).
    for i in range(0, len(names), REGISTRY_SLICE):
        out.registry_records += t.registry.erase(names[i:i + REGISTRY_SLICE], now)
        await asyncio.sleep(0)
    if t.pipeline is not None:
        # Customers whose ids resolved here, or (not enrolled, e.g. a key withdrawn
        # already) whose open visits went: the larger is the lower bound the answer gives.
        engine = t.pipeline.engine
        tracked = engine.tracked
        enrolled = set(t.pipeline.resolver.customers())
        t.pipeline.withdraw(names)
        out.tracking_states = max(sum(c in enrolled for c in names),
                                  tracked - engine.tracked)
    if t.screens is not None:  # off every staff screen at once, out of its caches
        t.screens.forget(names)
    if t.app_channel is not None:  # their offers and tokens read out to no phone now
        t.app_channel.withhold(names)
    if t.personal is not None:
        await _step(out, "personal service", _forget_personal(t.personal, names, loyalty,
                                                              out))
    # Not sent yet and not stored yet either: counted with the outbox's unsent below.
    unstored = out.outbox_unsent_redacted  # the personal service's queued batches
    if t.intake is not None:  # held in memory while the outbox refuses: rewritten
        unstored += t.intake.redact(names, loyalty)

    # --- disk ----------------------------------------------------------------------
    if t.identities is not None:
        ids = t.identities
        await _step(out, "identity store", _set(out, "identity_keys",
                                                asyncio.to_thread(ids.remove, names)))
    tombs = []  # a keyed hash each (~2 µs): sliced like the registry's erase
    for i in range(0, len(names), REGISTRY_SLICE):
        tombs += erased_tombstones(t.registry, names[i:i + REGISTRY_SLICE])
        await asyncio.sleep(0)
    if t.registry_store is not None:
        store = t.registry_store
        await _step(out, "registry", asyncio.to_thread(store.erase, names, tombs))
    await _step(out, "redemption ledger", _erase_ledger(t, names, out))
    if t.app_channel is not None:  # rows deleted, the file rebuilt, its WAL truncated
        await _step(out, "app inbox", _erase_inbox(t.app_channel, names, out))
    redacted = await _redact_outbox(t.outbox, names, loyalty)
    out.outbox_unsent_redacted = redacted.unsent + unstored
    out.outbox_replay_redacted = redacted.replay
    if redacted.error is not None:
        out.errors.append(redacted.error)
    out.files_rewritten += redacted.wiped

    # --- every other file rebuilt, its WAL truncated ------------------------------------
    for path in _files(t):
        await _step(out, path.name, _wipe(path, out))
    return out


async def _step(out: ErasureCounts, what: str, work: Awaitable[object]) -> None:
    try:
        await work
    except Exception as exc:
        log.exception("erasure: %s failed", what)
        out.errors.append(f"{what}: {type(exc).__name__}: {exc}"[:200])


async def _set(out: ErasureCounts, name: str, work: Awaitable[int]) -> None:
    setattr(out, name, await work)


async def _forget_personal(personal: PersonalService, names: list[str],
                           loyalty: list[str], out: ErasureCounts) -> None:
    """The service's own forget (engine, stitcher with the cards: a card scanned in an
    open transaction is dropped even if it no longer maps to the customer; its
    counters; its queued batches rewritten; unredeemed tokens revoked in the ledger),
    in slices with the loop let go between."""
    forgotten = await personal.forget(names, loyalty)
    out.stitcher_states = forgotten.stitcher_states
    out.outbox_unsent_redacted += forgotten.queued_redacted
    out.offers_revoked += forgotten.tokens_revoked


async def _erase_ledger(t: ErasureTargets, names: list[str], out: ErasureCounts) -> None:
    """Unredeemed offers revoked (a token shown later is refused), then every row keeps
    its history (caps, central's reconciliation) under a keyed hash instead of the
    customer."""
    redemption = t.personal.redemption if t.personal is not None else None
    ledger = redemption.ledger if redemption is not None else None
    opened = None
    if ledger is None and t.ledger_path is not None and t.ledger_path.exists():
        ledger = opened = await asyncio.to_thread(
            RedemptionStore, t.ledger_path, reservation_timeout_s=_UNUSED_TIMEOUT_S)
    if ledger is None:
        return
    registry = t.registry

    def keyed_hash(customer: str) -> str:
        return LEDGER_HASH_PREFIX + registry.tomb_key_of(customer)

    def work(store: RedemptionStore) -> tuple[int, int]:
        # (the service revoked them already when it runs: then none are left here)
        revoked = store.revoke_customers(names)  # one transaction, not one per customer
        return revoked, store.pseudonymise_all(names, keyed_hash)

    try:
        revoked, out.ledger_rows_pseudonymised = await asyncio.to_thread(work, ledger)
        out.offers_revoked += revoked
        out.files_rewritten += 1  # pseudonymise_all rebuilt it and truncated its WAL
    finally:
        if opened is not None:
            await asyncio.to_thread(opened.close)


async def _erase_inbox(channel: AppChannel, names: list[str], out: ErasureCounts) -> None:
    await channel.erase(names)
    out.files_rewritten += 1


async def _redact_outbox(outbox: Outbox, names: list[str], loyalty: list[str]) -> Redacted:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Redacted] = loop.create_future()

    def done(result: Redacted) -> None:  # on the writer thread
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(_settle, fut, result)

    outbox.redact(names, loyalty, done)
    return await fut


def _settle(fut: asyncio.Future[Redacted], result: Redacted) -> None:
    if not fut.done():
        fut.set_result(result)


def _files(t: ErasureTargets) -> list[Path]:
    """The SQLite files to rebuild here (the outbox's writer and the ledger's
    pseudonymise did their own)."""
    paths: list[Path | None] = [
        t.identities.path if t.identities is not None else None,
        t.registry_store.path if t.registry_store is not None else None,
        *t.files]
    return [q for q in dict.fromkeys(paths) if q is not None and q.exists()]


async def _wipe(path: Path, out: ErasureCounts) -> None:
    await asyncio.to_thread(wipe_file, path)
    out.files_rewritten += 1


def wipe_file(path: Path) -> None:
    """Rebuild a SQLite file through a connection of its own (its owner's stays open:
    SQLite serialises them) and truncate its write-ahead log."""
    db = sqlite3.connect(path, isolation_level=None, timeout=WIPE_BUSY_TIMEOUT_MS / 1000)
    try:
        rebuild(db)
        busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            raise sqlite3.OperationalError(f"{path.name}: write-ahead log still in use")
    finally:
        db.close()


def erased_tombstones(registry: Registry, customers: Iterable[str]) -> list[Tombstone]:
    """The tombstones erasure left: a keyed hash and a version each, no customer id."""
    return [tb for c in customers if (tb := registry.tombstone_of(c)) is not None]
