"""Central's one way in: a message a gateway published, stored exactly once.

Every source (the MQTT shared subscription in app/central/mqtt, a NATS JetStream
consumer for a fleet) hands each message it receives to :meth:`Ingest.handle` and
acknowledges it to its broker only after the call returns::

    from storegate.app.central.ingest import Ingest

    ingest = Ingest("central.db")                 # or "postgresql://user@host/db"
    outcome = ingest.handle(topic, payload, received_at=time.time())
    if outcome.stored or outcome.duplicate or outcome.rejected:
        msg.ack()                                 # every outcome is final: ack it
    ingest.close()

* ``topic`` is the MQTT topic (``storegate/v1/<store>/<gateway>/events/<kind>`` or
  ``.../status``); a NATS subject ``storegate.v1.<store>.<gateway>.events.<kind>`` is
  accepted too (dots become slashes; ids never contain '/').
* The outcome is committed before ``handle`` returns (SQLite WAL with
  ``synchronous=FULL``, or a PostgreSQL commit), so acking afterwards never loses an
  event. It is idempotent by CloudEvents identity (source + id: the store, the gateway
  and the ``id``): the same message again (redelivery, a second instance, a replay) is
  ``duplicate`` and changes nothing.
* ``rejected`` (with ``reason``/``detail``) means the message is not a valid event of
  the contract (wrong topic, not JSON, unknown type, data failing its schema...): it is
  kept in the ``rejects`` table, counted and logged once per reason; it is final, so
  ack it (a redelivery would be rejected again).
* ``handle`` raises :class:`~storegate.adapters.central.storage.StorageError` (or the
  driver's error) only when the storage itself fails: then do NOT ack; the broker
  redelivers and the id makes the retry safe. A message the database refuses (a data
  or integrity error) is not that: its batch is written again one by one and it is
  kept as an ``unstorable`` rejection, so one poison message never stops ingest.
* Thread-safe (one lock around the connection); several processes may share one
  PostgreSQL database: dedupe is the primary key, so it holds across instances.
* :meth:`handle_many` stores a batch in one transaction (one commit: the fast path
  for a source that receives in batches); same outcomes, in order.

Gap detection and replay (``app/central/gaps.py``) and the profile read what this
stores; they never run inside ``handle``.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from storegate.adapters.central import records
from storegate.adapters.central.storage import Conn, Database, StorageError, Target
from storegate.adapters.central.tombstones import Tombstones
from storegate.core import events as ev
from storegate.core.central.envelope import Event, Rejection, Status, clean_text, read
from storegate.core.personal.erasure import redact_event
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

ANSWER_TYPES: Final = frozenset({
    "storegate.gateway.replayed.v1", "storegate.gateway.identities_applied.v1",
    "storegate.gateway.customers_applied.v1", "storegate.gateway.campaigns_applied.v1",
    "storegate.gateway.erased.v1", "storegate.gateway.command_rejected.v1",
})

# its ``last_sequence`` is the gateway's head, like the status certificates'
TELEMETRY_TYPE: Final = ev.GATEWAY_TELEMETRY.name

__all__ = ["Ingest", "IngestOutcome", "StorageError"]


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What became of one message: ``stored``, ``duplicate`` or ``rejected`` (with
    the reason); status certificates are ``stored`` with ``event_id`` None."""

    result: Literal["stored", "duplicate", "rejected"]
    event_id: str | None = None
    store: str | None = None
    gateway: str | None = None
    sequence: int | None = None
    reason: str | None = None
    detail: str | None = None

    @property
    def stored(self) -> bool:
        return self.result == "stored"

    @property
    def duplicate(self) -> bool:
        return self.result == "duplicate"

    @property
    def rejected(self) -> bool:
        return self.result == "rejected"


def subject_to_topic(topic: str) -> str:
    """A NATS subject (``storegate.v1.s1.g1.events.visit``) as the MQTT topic."""
    if topic.startswith("storegate.v1."):
        # NATS's MQTT bridge writes an MQTT '.' as '//' (ids may contain dots)
        return topic.replace("//", "\0").replace(".", "/").replace("\0", ".")
    return topic


_PSEUDONYM: Final = re.compile(r"ps1:[0-9a-f]{32}")  # a loyalty pseudonym in an event
_unmatched_log = LogOnce(log)


def _unmatched(e: Event) -> None:
    _unmatched_log("unmatched_answer", "central: %s from %s/%s (event %s) answers no "
                   "command central sent to that store and gateway: not recorded as an "
                   "answer", e.type, e.store, e.gateway, e.id)


def refused_data(exc: BaseException) -> bool:
    """Whether the database refused what it was given (a value it cannot hold: too
    large a number, text it cannot encode, a constraint), not that it is unreachable:
    SQLite's and psycopg's data and integrity errors, and Python's own conversion
    errors raised while binding parameters."""
    if isinstance(exc, (UnicodeError, OverflowError, ValueError, TypeError, IndexError,
                        KeyError, sqlite3.DataError, sqlite3.IntegrityError)):
        return True
    # psycopg's (imported only for a PostgreSQL URL): their subclasses by name
    return any(c.__name__ in ("DataError", "IntegrityError") for c in type(exc).__mro__)


TX_ATTEMPTS: Final = 3  # a transaction the database aborted (deadlock) is run again


def _order_key(item: Event | Status | Rejection) -> tuple[int, str]:
    if isinstance(item, Event):
        return (0, f"{item.store}/{item.gateway}/{item.id}")
    if isinstance(item, Status):
        return (1, f"{item.store}/{item.gateway}")
    return (2, "")


class Ingest:
    """Store what gateways publish, exactly once by event id (see the module doc)."""

    def __init__(self, storage: str | Database, *, synchronous: str = "FULL") -> None:
        self.db = storage if isinstance(storage, Database) else Database(
            Target.parse(storage), synchronous=synchronous)
        # observable counters (read by status and the bench; written under the GIL)
        self.counts: Counter[str] = Counter()
        self._log_once = LogOnce(log)

    def handle(self, topic: str, payload: bytes, received_at: float) -> IngestOutcome:
        return self.handle_many([(topic, payload)], received_at)[0]

    def handle_many(self, messages: Iterable[tuple[str, bytes]],
                    received_at: float) -> list[IngestOutcome]:
        parsed = [(t, p, read(subject_to_topic(t), p)) for t, p in messages]
        try:
            slots = self._commit(parsed, received_at)
        except Exception as exc:
            if not refused_data(exc):
                raise  # the storage itself failed: nothing acked, the broker redelivers
            # One message the checks passed but the database refuses (a poison
            # message) must not hold back the others: each on its own, and the one
            # refused kept as a rejection (final: acked, never retried forever).
            slots = []
            for item in parsed:
                try:
                    slots += self._commit([item], received_at)
                except Exception as one:
                    if not refused_data(one):
                        raise
                    slots.append(self._unstorable(item, one, received_at))
        out = [o for o in slots if o is not None]
        for o in out:
            key = ("status" if o.stored and o.event_id is None else o.result
                   if o.reason is None else f"rejected:{o.reason}")
            self.counts[key] += 1
            if o.rejected:
                self._log_once(
                    o.reason or "rejected", "central rejected a message from %s/%s: %s "
                    "(%s); kept in the rejects table",
                    o.store, o.gateway, o.reason, o.detail)
        return out

    def _commit(self, parsed: list[tuple[str, bytes, Event | Status | Rejection]],
                received_at: float) -> list[IngestOutcome | None]:
        for attempt in range(TX_ATTEMPTS):
            try:
                with self.db.tx() as db:
                    return self._write(db, parsed, received_at)
            except Exception as exc:
                if attempt + 1 == TX_ATTEMPTS or not self.db.retryable(exc):
                    raise
                self.counts["retried"] += 1
        raise AssertionError("unreachable")  # pragma: no cover

    def _unstorable(self, item: tuple[str, bytes, Event | Status | Rejection],
                    exc: BaseException, received_at: float) -> IngestOutcome:
        topic, payload, parsed = item
        store, gateway = parsed.store, parsed.gateway
        event_id = parsed.id if isinstance(parsed, Event) else None
        safe_id = event_id if event_id is None or clean_text(event_id) else None
        r = Rejection("unstorable", f"{type(exc).__name__}: {exc}"[:200].encode(
            "utf-8", "replace").decode("utf-8").replace("\x00", ""), store, gateway, safe_id)
        with self.db.tx() as db:
            records.insert_reject(db, topic.encode("utf-8", "replace").decode("utf-8")
                                  .replace("\x00", ""), r, payload, received_at)
        return IngestOutcome("rejected", safe_id, store, gateway, None, r.reason, r.detail)

    def _write(self, db: Conn, parsed: list[tuple[str, bytes, Event | Status | Rejection]],
               received_at: float) -> list[IngestOutcome | None]:
        """One batch in one transaction. Events go in id order, whatever order they
        came in: two instances writing overlapping batches (a redelivery) then take
        their row locks in one order and do not deadlock each other on PostgreSQL."""
        slots: list[IngestOutcome | None] = [None] * len(parsed)
        first: dict[records.EventKey, int] = {}
        unique: list[Event] = []
        for n, (_, _, item) in enumerate(parsed):
            if isinstance(item, Event) and records.key_of(item) not in first:
                first[records.key_of(item)] = n
                unique.append(item)
        unique.sort(key=records.key_of)
        unique = Ingest._without_erased(db, self.db.tombstones, unique)
        stored = records.insert_events(db, unique, received_at)
        for store, gateway in sorted({(e.store, e.gateway) for e in unique
                                      if records.key_of(e) in stored}):
            records.ensure_gateway(db, store, gateway)
        for n, (topic, payload, item) in enumerate(parsed):
            if isinstance(item, Event):
                new = records.key_of(item) in stored and first[records.key_of(item)] == n
                if new and item.type in ANSWER_TYPES:
                    Ingest._answer(db, item, received_at)
                if new and item.type == TELEMETRY_TYPE:
                    Ingest._announce(db, item)
                slots[n] = IngestOutcome("stored" if new else "duplicate", item.id,
                                         item.store, item.gateway, item.sequence)
            else:
                slots[n] = Ingest._one(db, topic, payload, item, received_at)
        return slots

    @staticmethod
    def _without_erased(db: Conn, tombstones: Tombstones,
                        events: list[Event]) -> list[Event]:
        """A late or replayed event naming an erased customer or card (its tombstone
        is kept) is stored redacted, never bringing them back."""
        named: dict[int, set[str]] = {}
        for n, e in enumerate(events):
            found = set(_PSEUDONYM.findall(e.raw.decode("utf-8", "replace"))
                        if b"ps1:" in e.raw else ())
            if e.customer is not None:
                found.add(e.customer)
            if found:
                named[n] = found
        if not named:
            return events
        erased = records.erased_among(db, tombstones, set().union(*named.values()))
        if not erased:
            return events
        out = list(events)
        for n, found in named.items():
            hit = found & erased
            if not hit:
                continue
            e = events[n]
            ids = sorted(hit)
            new = redact_event(json.dumps({"subject": e.subject, "data": e.data}).encode(),
                               ids, ids)
            body: dict[str, Any] = (json.loads(new) if new is not None
                                    else {"subject": e.subject, "data": e.data})
            out[n] = replace(e, customer=None if e.customer in hit else e.customer,
                             subject=body["subject"], data=body["data"])
        return out

    @staticmethod
    def _one(db: Conn, topic: str, payload: bytes,
             item: Event | Status | Rejection, received_at: float) -> IngestOutcome:
        if isinstance(item, Rejection):
            records.insert_reject(db, topic, item, payload, received_at)
            return IngestOutcome("rejected", item.event_id, item.store, item.gateway,
                                 None, item.reason, item.detail)
        if isinstance(item, Status):
            records.upsert_status(db, item, received_at)
            if item.last_sequence is not None:
                records.ensure_gateway(db, item.store, item.gateway)
                records.announce(db, item.store, item.gateway, item.last_sequence)
            return IngestOutcome("stored", None, item.store, item.gateway)
        if not records.insert_event(db, item, received_at):
            return IngestOutcome("duplicate", item.id, item.store, item.gateway,
                                 item.sequence)
        records.ensure_gateway(db, item.store, item.gateway)
        if item.type in ANSWER_TYPES:
            Ingest._answer(db, item, received_at)
        if item.type == TELEMETRY_TYPE:
            Ingest._announce(db, item)
        return IngestOutcome("stored", item.id, item.store, item.gateway, item.sequence)

    @staticmethod
    def _answer(db: Conn, e: Event, received_at: float) -> None:
        if not records.record_answer(db, e, received_at):
            # stored as an event, but it answers nothing central asked this store
            _unmatched(e)

    @staticmethod
    def _announce(db: Conn, e: Event) -> None:
        last = e.data.get("last_sequence")
        if isinstance(last, int):
            records.announce(db, e.store, e.gateway, last)

    def close(self) -> None:
        self.db.close()
