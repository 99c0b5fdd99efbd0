"""Issued offers and the redemption ledger, on disk: what makes a token single-use.

One row per token, keyed by its id, through ``issued → reserved → redeemed`` (or back to
``issued`` when a reservation is released; ``revoked`` and ``expired`` are final). A
scan at a lane *reserves* in one ``BEGIN IMMEDIATE`` transaction, so two lanes (two
connections, two processes) racing for one token serialise on SQLite's write lock and
exactly one wins; the receipt *confirms*; a void or a timeout *releases*. A token that
another gateway of the store issued (verified with a trusted key) gets its row on its
first scan here, so it too is single-use at this gateway.

SQLite, 0600, WAL, synchronous FULL (a redemption acknowledged at the lane survives a
power cut), ``secure_delete`` on: erasure replaces a customer's pseudonym in place and
the old bytes are overwritten, and :meth:`RedemptionStore.scrub` leaves no copy in the
WAL.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

from storegate.adapters.private_sqlite import open_private, scrub, transaction

State = Literal["issued", "reserved", "redeemed", "revoked", "expired"]
ReserveOutcome = Literal[
    "reserved",            # this transaction holds it now
    "again",               # this transaction already held it (scanned twice): no change
    "reserved_elsewhere",  # another open transaction holds it
    "redeemed", "revoked", "expired",
    "unknown",             # not issued here and nothing said where it came from
]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS offers (
    token_id TEXT PRIMARY KEY,      -- 32 hex digits
    campaign TEXT NOT NULL,         -- a token of another gateway: 'ref:' + its offer ref
    customer TEXT,                  -- pseudonym; NULL: issued by another gateway
    issued_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('issued', 'reserved', 'redeemed', 'revoked',
                                         'expired')),
    lane TEXT,
    transaction_id TEXT,
    reserved_at REAL,
    redeemed_at REAL,
    receipt TEXT,
    issued_here INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS offers_by_transaction ON offers (transaction_id)
    WHERE transaction_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS offers_by_customer ON offers (customer) WHERE customer IS NOT NULL;
CREATE INDEX IF NOT EXISTS offers_reserved ON offers (reserved_at) WHERE state = 'reserved';
CREATE INDEX IF NOT EXISTS offers_by_issue ON offers (issued_at);
CREATE INDEX IF NOT EXISTS offers_to_expire ON offers (expires_at) WHERE state = 'issued';
"""
# the table's column order (an INSERT without a column list relies on it)
_COLUMNS: Final = ("token_id, campaign, customer, issued_at, expires_at, state, lane, "
                   "transaction_id, reserved_at, redeemed_at, receipt, issued_here")


@dataclass(frozen=True, slots=True)
class Offer:
    """One issued (or, from another gateway, scanned) offer, as the ledger holds it."""

    token_id: str
    campaign: str
    customer: str | None
    issued_at: int
    expires_at: int
    state: State
    lane: str | None
    transaction_id: str | None
    reserved_at: float | None
    redeemed_at: float | None
    receipt: str | None
    issued_here: bool


@dataclass(frozen=True, slots=True)
class Unlisted:
    """What a verified token says about itself, for a token this ledger has no row for
    (issued by another gateway of the store, or before this ledger was lost)."""

    campaign: str
    issued_at: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class IssueRow:
    """A token this gateway signed, as :meth:`RedemptionStore.issue_many` records it."""

    token_id: str
    campaign: str
    customer: str
    issued_at: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class Reservation:
    outcome: ReserveOutcome
    offer: Offer | None  # the row afterwards (None: unknown)


def _offer(row: Any) -> Offer:  # a row of _COLUMNS, as sqlite3 returns it
    t, c, cu, ia, ea, st, la, tx, ra, rd, rc, ih = row
    return Offer(t, c, cu, int(ia), int(ea), st, la, tx, ra, rd, rc, bool(ih))


class RedemptionStore:
    """The ledger. One connection; safe to call from the event loop and a worker thread
    (calls are serialised), and several stores (processes) may share the file."""

    def __init__(self, path: Path, *, reservation_timeout_s: float) -> None:
        self.path = path
        self.reservation_timeout_s = reservation_timeout_s
        self._db = open_private(path, _SCHEMA, what="the redemption ledger",
                                secure_delete=True)
        self._lock = threading.Lock()  # one statement sequence at a time on the connection

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()

    # --- issuing ------------------------------------------------------------------

    def issue(self, token_id: str, *, campaign: str, customer: str, issued_at: int,
              expires_at: int) -> Offer:
        [offer] = self.issue_many([IssueRow(token_id, campaign, customer, issued_at,
                                            expires_at)])
        return offer

    def issue_many(self, issued: Sequence[IssueRow]) -> list[Offer]:
        """Tokens issued here, in one transaction (one fsync for a burst of offers):
        all recorded, or none (the error raised)."""
        rows = [(i.token_id, i.campaign, i.customer, i.issued_at, i.expires_at, "issued",
                 None, None, None, None, None, 1) for i in issued]
        if not rows:
            return []
        with self._tx():
            self._db.executemany(
                "INSERT INTO offers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return [_offer(r) for r in rows]

    def get(self, token_id: str) -> Offer | None:
        with self._lock:
            return self._get(token_id)

    # --- at the lane --------------------------------------------------------------

    def reserve(self, token_id: str, lane: str, transaction_id: str, now: float, *,
                unlisted: Unlisted | None = None) -> Reservation:
        """Reserve the token for this transaction, atomically against every other
        connection to the ledger."""
        with self._tx():
            offer = self._get(token_id)
            if offer is None:
                if unlisted is None:
                    return Reservation("unknown", None)
                self._db.execute(
                    "INSERT INTO offers VALUES "
                    "(?, ?, NULL, ?, ?, 'reserved', ?, ?, ?, NULL, NULL, 0)",
                    (token_id, unlisted.campaign, unlisted.issued_at, unlisted.expires_at,
                     lane, transaction_id, now))
                return Reservation("reserved", self._get(token_id))
            if offer.state == "reserved":
                same = offer.transaction_id == transaction_id and offer.lane == lane
                return Reservation("again" if same else "reserved_elsewhere", offer)
            if offer.state != "issued":
                return Reservation(offer.state, offer)
            if offer.expires_at <= now:
                self._db.execute("UPDATE offers SET state = 'expired' WHERE token_id = ?",
                                 (token_id,))
                return Reservation("expired", self._get(token_id))
            self._db.execute(
                "UPDATE offers SET state = 'reserved', lane = ?, transaction_id = ?, "
                "reserved_at = ? WHERE token_id = ?", (lane, transaction_id, now, token_id))
            return Reservation("reserved", self._get(token_id))

    def confirm(self, transaction_id: str, now: float, *, receipt: str | None = None) -> (
        list[Offer]
    ):
        """The transaction's receipt completed: its reservations are redeemed."""
        with self._tx():
            held = self._select("transaction_id = ? AND state = 'reserved'",
                                (transaction_id,))
            self._db.execute(
                "UPDATE offers SET state = 'redeemed', redeemed_at = ?, receipt = ? "
                "WHERE transaction_id = ? AND state = 'reserved'",
                (now, receipt, transaction_id))
        return [replace(o, state="redeemed", redeemed_at=now, receipt=receipt) for o in held]

    def confirm_listed(self, transaction_id: str, now: float, *, receipt: str | None,
                       listed: Collection[str]) -> tuple[list[Offer], list[Offer]]:
        """The receipt listed the offer tokens it applied (``listed``: token ids): the
        transaction's reservations among them are redeemed, the others released (the
        receipt completed without them). One transaction. Returns (redeemed, released)."""
        with self._tx():
            held = self._select("transaction_id = ? AND state = 'reserved'",
                                (transaction_id,))
            used = [o for o in held if o.token_id in listed]
            self._db.executemany(
                "UPDATE offers SET state = 'redeemed', redeemed_at = ?, receipt = ? "
                "WHERE token_id = ? AND state = 'reserved'",
                ((now, receipt, o.token_id) for o in used))
            dropped = self._release(
                "transaction_id = ? AND state = 'reserved'", (transaction_id,))
        return ([replace(o, state="redeemed", redeemed_at=now, receipt=receipt) for o in used],
                dropped)

    def confirm_orphans(self, lane: str, token_ids: Collection[str], *, before: float,
                        now: float, transaction_id: str, receipt: str | None) -> list[Offer]:
        """After a restart the lane's transaction has a new id: reservations this lane
        made before ``before`` (the service's start) of the tokens the receipt lists are
        redeemed on it. Nothing else: a token not on the receipt, or reserved by another
        lane or since the start, stays as it is."""
        if not token_ids:
            return []
        with self._tx():
            marks = ", ".join("?" * len(token_ids))
            held = self._select(
                f"state = 'reserved' AND lane = ? AND reserved_at < ? AND token_id IN ({marks})",
                (lane, before, *token_ids))
            self._db.executemany(
                "UPDATE offers SET state = 'redeemed', redeemed_at = ?, receipt = ?, "
                "transaction_id = ? WHERE token_id = ? AND state = 'reserved'",
                ((now, receipt, transaction_id, o.token_id) for o in held))
        return [replace(o, state="redeemed", redeemed_at=now, receipt=receipt,
                        transaction_id=transaction_id) for o in held]

    def release(self, *, transaction_id: str | None = None, token_id: str | None = None) -> (
        list[Offer]
    ):
        """Drop reservations (of a transaction, or one token): the offers are redeemable
        again. Returns them as they were (lane and transaction still named)."""
        if (transaction_id is None) == (token_id is None):
            raise ValueError("release by transaction_id or by token_id, one of them")
        where, arg = (("transaction_id = ?", transaction_id) if token_id is None
                      else ("token_id = ?", token_id))
        with self._tx():
            return self._release(f"{where} AND state = 'reserved'", (arg,))

    def timeouts(self, now: float) -> list[Offer]:
        """Release reservations older than the timeout (a transaction never completed)."""
        with self._tx():
            return self._release("state = 'reserved' AND reserved_at <= ?",
                                 (now - self.reservation_timeout_s,))

    def expire(self, now: float) -> int:
        """Issued offers past their expiry become ``expired`` (reservations are left to
        complete: the token was valid when scanned)."""
        with self._tx():
            return self._db.execute("UPDATE offers SET state = 'expired' "
                                    "WHERE state = 'issued' AND expires_at <= ?",
                                    (now,)).rowcount

    # --- consent and erasure --------------------------------------------------------

    def revoke_customer(self, customer: str) -> list[Offer]:
        """Marketing consent withdrawn or erasure: every unredeemed offer of the customer
        is void, a reservation in progress too. Returns the offers revoked."""
        with self._tx():
            rows = self._select("customer = ? AND state IN ('issued', 'reserved')",
                                (customer,))
            self._db.execute("UPDATE offers SET state = 'revoked' "
                             "WHERE customer = ? AND state IN ('issued', 'reserved')",
                             (customer,))
        return rows

    def revoke_customers(self, customers: list[str]) -> int:
        """:meth:`revoke_customer` for many in one transaction (one fsync: a full sync
        withdrawing 100,000 customers is not 100,000 of them). Returns rows revoked."""
        with self._tx():
            return self._db.executemany(
                "UPDATE offers SET state = 'revoked' "
                "WHERE customer = ? AND state IN ('issued', 'reserved')",
                ((c,) for c in customers)).rowcount

    def pseudonymise(self, customer: str, keyed_hash: Callable[[str], str]) -> int:
        """Erasure: the customer's rows keep their history (caps, central's reconciliation)
        under ``keyed_hash(customer)`` instead of the pseudonym; no copy of it is left in
        the file or the WAL."""
        with self._tx():
            n = self._db.execute("UPDATE offers SET customer = ? WHERE customer = ?",
                                 (keyed_hash(customer), customer)).rowcount
        self.scrub()
        return n

    def pseudonymise_all(self, customers: Iterable[str],
                         keyed_hash: Callable[[str], str]) -> int:
        """:meth:`pseudonymise` for many (an erase command names up to 10,000): one
        transaction, one scrub. Returns rows changed."""
        with self._tx():
            n = sum(self._db.execute("UPDATE offers SET customer = ? WHERE customer = ?",
                                     (keyed_hash(c), c)).rowcount for c in customers)
        self.scrub()
        return n

    def scrub(self) -> None:
        """Rewrite the file and truncate the WAL: nothing deleted or replaced lingers."""
        with self._lock:
            scrub(self._db, vacuum=True)

    # --- for the offer engine -------------------------------------------------------

    def held(self, customer: str, now: float) -> list[Offer]:
        """The customer's offers still redeemable (issued or reserved, unexpired): the
        offer engine does not issue the same campaign again."""
        with self._lock:
            return self._select("customer = ? AND state IN ('issued', 'reserved') AND "
                                "expires_at > ?", (customer, now))

    def history(self, since: float, now: float | None = None) -> list[Offer]:
        """Offers this gateway issued since ``since``, and older ones still held at
        ``now`` (unexpired, unredeemed: a 7-day token issued 3 days ago must still count
        as held after a restart, or the same campaign would be issued twice), oldest
        first: rebuilds the engine's caps and what each customer holds."""
        with self._lock:
            if now is None:
                return self._select("issued_here = 1 AND issued_at >= ? ORDER BY issued_at",
                                    (since,))
            return self._select(
                "issued_here = 1 AND (issued_at >= ? OR (state IN ('issued', 'reserved') "
                "AND expires_at > ?)) ORDER BY issued_at", (since, now))

    # --- internals ----------------------------------------------------------------

    def _get(self, token_id: str) -> Offer | None:
        rows = self._select("token_id = ?", (token_id,))
        return rows[0] if rows else None

    def _select(self, where: str, args: tuple[object, ...]) -> list[Offer]:
        cur = self._db.execute(f"SELECT {_COLUMNS} FROM offers WHERE {where}", args)  # noqa: S608 -- our own fragments
        return [_offer(r) for r in cur]

    def _release(self, where: str, args: tuple[object, ...]) -> list[Offer]:
        rows = self._select(where, args)
        self._db.executemany(
            "UPDATE offers SET state = 'issued', lane = NULL, transaction_id = NULL, "
            "reserved_at = NULL WHERE token_id = ? AND state = 'reserved'",
            ((o.token_id,) for o in rows))
        return rows

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        with self._lock, transaction(self._db):  # the write lock at once: no lost race
            yield
