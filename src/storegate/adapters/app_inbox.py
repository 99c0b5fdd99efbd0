"""The app inbox: what each customer's phone is sent, kept so a phone that was offline
gets it when it comes back (docs/http.md, "The app channel").

Every message has a **cursor**: one global, monotonically increasing number
(``INTEGER PRIMARY KEY AUTOINCREMENT``: SQLite never hands out a number again, even
after the newest rows are deleted), so a client resumes with "everything after N" and
nothing is sent twice. Three kinds:

    offer       an offer issued to the customer: content, the token's text (what the
                QR code carries), issued and expiry times
    redemption  the state of one of their offers: reserved, redeemed, released
    pickup      "your order is ready at counter N", when they entered the store

Beside the messages, ``offers`` holds each live offer's current state (what
``GET /app/offers`` lists, and whose token a QR code is drawn from) and ``pickups``
the notices sent (one per order per day).

Bounded: :data:`MAX_PER_CUSTOMER` messages per customer (the oldest go first),
:data:`MAX_TOTAL` in all; an offer's messages go when it expires, a pickup notice
after a day. Private like the registry: created 0600, ``secure_delete`` on, and
:meth:`AppInbox.erase` rebuilds the file and truncates its WAL, so an erased customer
leaves no copy (tokens are bearer coupons: they must not outlive erasure either).

Called one call at a time (the app channel holds a lock): from worker threads, and
from the event loop for a customer's reads and for staging a write
(:meth:`AppInbox.stage`) whose commit, the fsync, runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from storegate.adapters.private_sqlite import open_private, scrub, transaction

MAX_PER_CUSTOMER: Final = 200  # a phone needs the live offers and a little history
MAX_OFFERS_PER_CUSTOMER: Final = 100
MAX_TOTAL: Final = 200_000  # ~100 MB at the largest offer body; a store has far fewer
PICKUP_KEEP_S: Final = 86_400.0  # "ready at counter 3" is stale the next day
# A client resuming from a cursor beyond the newest (a file rebuilt from scratch, a
# client of another box) is sent everything held rather than nothing.

Kind = Literal["offer", "redemption", "pickup"]
RedemptionState = Literal["reserved", "redeemed", "released"]
OfferState = Literal["issued", "reserved", "redeemed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    customer TEXT NOT NULL,
    kind TEXT NOT NULL,
    offer_id TEXT,
    body TEXT NOT NULL,
    at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_customer ON messages (customer, cursor);
CREATE INDEX IF NOT EXISTS messages_expiry ON messages (expires_at);
CREATE INDEX IF NOT EXISTS messages_offer ON messages (offer_id);
CREATE TABLE IF NOT EXISTS offers (
    offer_id TEXT PRIMARY KEY,
    customer TEXT NOT NULL,
    body TEXT NOT NULL,
    token TEXT NOT NULL,
    state TEXT NOT NULL,
    state_at REAL NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS offers_customer ON offers (customer, issued_at);
CREATE TABLE IF NOT EXISTS pickups (
    customer TEXT NOT NULL,
    order_id TEXT NOT NULL,
    day TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (customer, order_id, day)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class OfferEntry:
    """An issued offer, as the phone shows it."""

    customer: str
    offer_id: str
    campaign: str
    title: str
    text: str
    image: str | None
    discount: dict[str, Any] | None  # {"kind": "percent", "value": 10}
    token: str
    issued_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class RedemptionEntry:
    """A state change of an offer (its customer is the offer's)."""

    offer_id: str
    state: RedemptionState
    at: float


@dataclass(frozen=True, slots=True)
class PickupEntry:
    customer: str
    order_id: str
    counter: str | None
    entered_at: float
    day: str  # the store's local date: one notice per order per day


Entry = OfferEntry | RedemptionEntry | PickupEntry


@dataclass(frozen=True, slots=True)
class Staged:
    """A transaction written, not yet committed (:meth:`AppInbox.stage`)."""

    messages: list[InboxMessage]  # with their cursors: shown only once committed
    dropped: int  # messages deleted by the bounds
    held: int  # messages held once it commits
    customers: frozenset[str]  # whose messages or offers it changes


@dataclass(frozen=True, slots=True)
class InboxMessage:
    """One message as stored and sent: ``data`` is its JSON body."""

    cursor: int
    customer: str
    kind: Kind
    data: dict[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class OfferRow:
    """An offer the customer holds now, with its state."""

    offer_id: str
    customer: str
    data: dict[str, Any]  # the offer message's body (token included)
    token: str
    state: OfferState
    state_at: float
    issued_at: float
    expires_at: float


def _offer_body(e: OfferEntry) -> dict[str, Any]:
    return {"offer_id": e.offer_id, "campaign": e.campaign, "title": e.title,
            "text": e.text, "image": e.image, "discount": e.discount, "token": e.token,
            "issued_at": e.issued_at, "expires_at": e.expires_at}


class InboxLocked(sqlite3.OperationalError):
    """Another connection (another process) holds the file's write lock: a stage asked
    not to wait (:meth:`AppInbox.stage`) began nothing."""


class AppInbox:
    def __init__(self, path: Path, *, max_per_customer: int = MAX_PER_CUSTOMER,
                 max_total: int = MAX_TOTAL,
                 max_offers_per_customer: int = MAX_OFFERS_PER_CUSTOMER) -> None:
        self.path = path
        self.max_per_customer = max_per_customer
        self.max_total = max_total
        self.max_offers_per_customer = max_offers_per_customer
        self._db = open_private(path, _SCHEMA, what="the app inbox", secure_delete=True)
        self._busy_timeout_ms = int(self._db.execute("PRAGMA busy_timeout").fetchone()[0])
        # observable state (counters since start)
        self.appended_total = 0
        self.dropped_over_bound_total = 0
        self.unknown_offer_total = 0  # redemption of an offer this inbox never held
        # messages held, as of the last write, prune or erasure (the writes count them
        # anyway, for the bound; read by the status without touching the connection)
        self.messages = int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        # which customers' rows changed, for readers that keep what they read
        # (offers_version): a count of commits, the last one that touched each customer
        # since the last prune or erasure, and a count of those (which may touch anyone)
        self._changes = 0
        self._changed: dict[str, int] = {}
        self._epoch = 0

    def close(self) -> None:
        self._db.close()

    # --- writing ---------------------------------------------------------------------

    def append(self, entries: Sequence[Entry], now: float) -> list[InboxMessage]:
        """Store ``entries`` in one transaction (one fsync for a burst); returns the
        messages stored, with their cursors, in order. A redemption of an unknown
        offer and a pickup already notified today are skipped."""
        staged = self.stage(entries, now)
        self.commit(staged)
        return staged.messages

    def stage(self, entries: Sequence[Entry], now: float, *, wait: bool = True) -> Staged:
        """:meth:`append` up to its commit: the transaction begun and written (SQLite's
        page cache: tens of µs an entry, no fsync), not yet durable, so nothing of it
        may be shown to anyone before :meth:`commit` returns. Exactly one of
        :meth:`commit` or :meth:`rollback` must follow, on this connection, before any
        other call. The app channel stages on the event loop and commits (the fsync)
        in a worker thread: the thread then needs the interpreter once, not once per
        statement while the loop is busy (measured: 4 ms p50 for one offer's append in
        a thread under the bench's load, most of it waiting for the GIL).

        ``wait=False`` (the event loop's call): if another connection holds the write
        lock, :class:`InboxLocked` at once and nothing begun, rather than SQLite's busy
        wait (up to the connection's timeout, 5 s) blocking the caller."""
        out: list[InboxMessage] = []
        touched: set[str] = set()
        if wait:
            self._db.execute("BEGIN IMMEDIATE")
        else:
            self._begin_now()
        try:
            for e in entries:
                msg = self._append_one(e, now)
                if msg is not None:
                    out.append(msg)
                    touched.add(msg.customer)
            over = sum(self._bound_customer(c) for c in touched)
            held = self.messages + len(out) - over
            if held > self.max_total:
                gone = self._drop_oldest(held - self.max_total)
                over += gone
                held -= gone
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return Staged(out, over, held, frozenset(touched))

    def _begin_now(self) -> None:
        """``BEGIN IMMEDIATE`` without SQLite's busy wait (two PRAGMAs, µs)."""
        db = self._db
        db.execute("PRAGMA busy_timeout = 0")
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise InboxLocked(f"the app inbox is locked by another connection: "
                                  f"{exc}") from exc
            raise
        finally:
            db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms:d}")

    def commit(self, staged: Staged) -> None:
        """Make a staged transaction durable (COMMIT: the WAL's fsync). Rolled back if
        that fails, and the error raised: none of its messages may be shown."""
        try:
            self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self.messages = staged.held
        self.appended_total += len(staged.messages)
        self.dropped_over_bound_total += staged.dropped
        self._changes += 1
        for c in staged.customers:
            self._changed[c] = self._changes

    def rollback(self) -> None:
        """Abandon a staged transaction (nothing of it was shown)."""
        self._db.execute("ROLLBACK")

    def _insert(self, customer: str, kind: Kind, offer_id: str | None,
                body: dict[str, Any], *, at: float, expires_at: float) -> InboxMessage:
        cur = self._db.execute(
            "INSERT INTO messages (customer, kind, offer_id, body, at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (customer, kind, offer_id, json.dumps(body, separators=(",", ":")), at,
             expires_at))
        cursor = cur.lastrowid
        assert cursor is not None
        return InboxMessage(cursor, customer, kind, body, at)

    def _append_one(self, e: Entry, now: float) -> InboxMessage | None:
        db = self._db
        if isinstance(e, OfferEntry):
            body = _offer_body(e)
            db.execute(
                "INSERT OR REPLACE INTO offers (offer_id, customer, body, token, state, "
                "state_at, issued_at, expires_at) VALUES (?, ?, ?, ?, 'issued', ?, ?, ?)",
                (e.offer_id, e.customer, json.dumps(body, separators=(",", ":")), e.token,
                 e.issued_at, e.issued_at, e.expires_at))
            return self._insert(e.customer, "offer", e.offer_id, body, at=e.issued_at,
                                expires_at=e.expires_at)
        if isinstance(e, RedemptionEntry):
            row = db.execute("SELECT customer, expires_at FROM offers WHERE offer_id = ?",
                             (e.offer_id,)).fetchone()
            if row is None:
                self.unknown_offer_total += 1
                return None
            customer, expires_at = str(row[0]), float(row[1])
            state: OfferState = "issued" if e.state == "released" else e.state
            db.execute("UPDATE offers SET state = ?, state_at = ? WHERE offer_id = ?",
                       (state, e.at, e.offer_id))
            body = {"offer_id": e.offer_id, "state": e.state, "at": e.at}
            # a redeemed offer's message outlives the offer a little: the phone shows
            # "redeemed" even when it was scanned in its last minute
            return self._insert(customer, "redemption", e.offer_id, body, at=e.at,
                                expires_at=max(expires_at, e.at + PICKUP_KEEP_S))
        try:
            db.execute("INSERT INTO pickups (customer, order_id, day, at) VALUES (?, ?, ?, ?)",
                       (e.customer, e.order_id, e.day, e.entered_at))
        except sqlite3.IntegrityError:
            return None  # notified already today
        body = {"order_id": e.order_id, "counter": e.counter, "entered_at": e.entered_at}
        return self._insert(e.customer, "pickup", None, body, at=e.entered_at,
                            expires_at=max(e.entered_at, now) + PICKUP_KEEP_S)

    def _bound_customer(self, customer: str) -> int:
        db = self._db
        dropped = 0
        n = db.execute("SELECT COUNT(*) FROM messages WHERE customer = ?",
                       (customer,)).fetchone()[0]
        if n > self.max_per_customer:
            dropped += db.execute(
                "DELETE FROM messages WHERE cursor IN (SELECT cursor FROM messages WHERE "
                "customer = ? ORDER BY cursor LIMIT ?)",
                (customer, n - self.max_per_customer)).rowcount
        k = db.execute("SELECT COUNT(*) FROM offers WHERE customer = ?",
                       (customer,)).fetchone()[0]
        if k > self.max_offers_per_customer:
            db.execute("DELETE FROM offers WHERE offer_id IN (SELECT offer_id FROM offers "
                       "WHERE customer = ? ORDER BY issued_at LIMIT ?)",
                       (customer, k - self.max_offers_per_customer))
        return dropped

    def _drop_oldest(self, n: int) -> int:
        """The ``n`` oldest messages of anyone's deleted (the total bound). The count
        held is kept exactly (``messages``: every insert and delete goes through this
        class) rather than counted: ``COUNT(*)`` walks the whole table, milliseconds
        at 200,000 rows, and ran on every append."""
        return int(self._db.execute("DELETE FROM messages WHERE cursor IN (SELECT cursor "
                                    "FROM messages ORDER BY cursor LIMIT ?)", (n,)).rowcount)

    def offers_version(self, customer: str) -> tuple[int, int]:
        """Changes whenever what :meth:`offers` returns for ``customer`` may have
        changed, other than by time passing (an offer reaching its expiry): bumped by
        each commit that touches the customer, and for everyone by a prune or an
        erasure. Read it before reading the offers: then what was read is at least as
        new as the version it is kept under."""
        return self._epoch, self._changed.get(customer, 0)

    def _changed_all(self) -> None:
        self._epoch += 1
        self._changed.clear()  # bounded: the customers changed since the last prune

    def prune(self, now: float) -> int:
        """Expired offers and their messages, stale pickup notices; returns the
        messages deleted."""
        try:
            with transaction(self._db):
                expired = self._db.execute("DELETE FROM messages WHERE expires_at <= ?",
                                           (now,)).rowcount
                self._db.execute("DELETE FROM offers WHERE expires_at <= ?", (now,))
                self._db.execute("DELETE FROM pickups WHERE at <= ?",
                                 (now - 2 * PICKUP_KEEP_S,))
        finally:
            self._changed_all()
        self.messages = max(self.messages - int(expired), 0)
        return int(expired)

    def erase(self, customers: Iterable[str]) -> int:
        """Every row of ``customers`` deleted, the file rebuilt and its WAL truncated
        (no free page or WAL frame keeps a token or a pseudonym). Returns the rows."""
        names = list(dict.fromkeys(customers))
        removed = 0
        try:
            with transaction(self._db):
                for c in names:
                    for table in ("messages", "offers", "pickups"):
                        n = self._db.execute(
                            f"DELETE FROM {table} WHERE customer = ?",  # noqa: S608
                            (c,)).rowcount
                        removed += n
                        if table == "messages":
                            self.messages = max(self.messages - n, 0)
        finally:
            self._changed_all()
        scrub(self._db, vacuum=True)
        return removed

    # --- reading ---------------------------------------------------------------------

    def last_cursor(self) -> int:
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'"
                               ).fetchone()
        return int(row[0]) if row is not None else 0

    def since(self, customer: str, cursor: int, *, limit: int = MAX_PER_CUSTOMER) -> (
        list[InboxMessage]
    ):
        """The customer's messages after ``cursor``, oldest first. A cursor beyond the
        newest this file ever gave is from elsewhere: everything held is sent."""
        if cursor > self.last_cursor():
            cursor = 0
        rows = self._db.execute(
            "SELECT cursor, kind, body, at FROM messages WHERE customer = ? AND cursor > ? "
            "ORDER BY cursor LIMIT ?", (customer, cursor, limit)).fetchall()
        return [InboxMessage(int(r[0]), customer, r[1], json.loads(r[2]), float(r[3]))
                for r in rows]

    def offers(self, customer: str, now: float) -> list[OfferRow]:
        """The customer's offers not yet expired, newest first."""
        rows = self._db.execute(
            "SELECT offer_id, body, token, state, state_at, issued_at, expires_at FROM "
            "offers WHERE customer = ? AND expires_at > ? ORDER BY issued_at DESC",
            (customer, now)).fetchall()
        return [OfferRow(r[0], customer, json.loads(r[1]), r[2], r[3], float(r[4]),
                         float(r[5]), float(r[6])) for r in rows]

    def offer(self, customer: str, offer_id: str, now: float) -> OfferRow | None:
        """One offer of this customer's (None for another customer's, or expired)."""
        r = self._db.execute(
            "SELECT offer_id, body, token, state, state_at, issued_at, expires_at FROM "
            "offers WHERE offer_id = ? AND customer = ? AND expires_at > ?",
            (offer_id, customer, now)).fetchone()
        if r is None:
            return None
        return OfferRow(r[0], customer, json.loads(r[1]), r[2], r[3], float(r[4]),
                        float(r[5]), float(r[6]))

    def count(self, customer: str | None = None) -> int:
        if customer is None:
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM messages WHERE customer = ?",
                                    (customer,)).fetchone()[0])
