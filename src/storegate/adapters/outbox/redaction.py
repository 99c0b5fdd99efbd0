"""Erasure in the outbox: stored events that name erased customers are rewritten, and
no old copy is left in the file or its write-ahead log.

Runs on the writer thread (:meth:`Outbox.redact`), the only one that writes the file.
Every stored event, pending or kept for replay, whose payload names an erased customer
or one of their loyalty pseudonyms is rewritten by :func:`core.personal.erasure.
redact_event` (personal fields null, id and sequence kept, so central sees no gap).
Then the file is wiped: ``VACUUM`` rebuilds it, so no free page or free block keeps a
copy (of these rows, or of events deleted long ago: the outbox runs without
``secure_delete``, its deletes are the publisher's hot path), and the WAL is
checkpointed and truncated.

The publisher reads through its own connection. It holds no snapshot between its
statements (autocommit, every result fetched whole), so ``VACUUM`` runs beside it; the
TRUNCATE checkpoint waits for a reader in the middle of a statement (busy timeout) and
is retried if one was still there (tests/test_erasure.py opens a reader mid-statement).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from storegate.adapters.private_sqlite import rebuild
from storegate.core.personal.erasure import redact_event

# Up to this many ids, SQLite finds the rows that mention one (instr over the payloads:
# one pass per id, in C); beyond, one pass in Python decodes the events that can carry
# personal data and looks every string up in a set.
INSTR_MAX_NEEDLES: Final = 32
# Event types that cannot name a customer or a loyalty card (anonymous aggregates, the
# gateway's own figures and answers, which name nobody): the Python pass skips only
# these, so a new event type that carries a customer is redacted without anyone
# remembering to list it here.
IMPERSONAL_TYPE_PREFIXES: Final = ("storegate.footfall.", "storegate.occupancy.",
                                   "storegate.gateway.")
CHECKPOINT_ATTEMPTS: Final = 20
CHECKPOINT_RETRY_S: Final = 0.25


@dataclass(frozen=True, slots=True)
class Redacted:
    """What one redaction did. ``error`` set: nothing was changed (rolled back), or the
    rows were rewritten but the wipe did not complete (``wiped`` False)."""

    unsent: int = 0  # pending events rewritten
    replay: int = 0  # acknowledged events kept for replay, rewritten
    bytes_delta: int = 0  # change of the stored payload bytes (negative: smaller)
    wiped: bool = False  # VACUUM done and the WAL truncated
    error: str | None = None


def redact(conn: sqlite3.Connection, customers: Collection[str],
           loyalty: Collection[str]) -> Redacted:
    """Rewrite the events naming ``customers`` or ``loyalty`` in one transaction, then
    wipe the file. Raises nothing: a failure is in :attr:`Redacted.error`."""
    cust, cards = frozenset(customers), frozenset(loyalty)
    unsent = replay = delta = 0
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            updates: list[tuple[bytes, int, int]] = []
            for seq, payload, acked_at in _candidates(conn, cust, cards):
                new = redact_event(bytes(payload), cust, cards)
                if new is None:
                    continue
                updates.append((new, len(new), seq))
                delta += len(new) - len(payload)
                if acked_at is None:
                    unsent += 1
                else:
                    replay += 1
            conn.executemany("UPDATE events SET payload = ?, size = ? WHERE seq = ?", updates)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        return Redacted(error=f"outbox redaction failed: {exc}")
    try:
        wipe(conn)
    except sqlite3.Error as exc:
        return Redacted(unsent, replay, delta, False, f"outbox wipe failed: {exc}")
    return Redacted(unsent, replay, delta, True)


def _candidates(conn: sqlite3.Connection, customers: frozenset[str],
                loyalty: frozenset[str]) -> list[tuple[int, bytes, float | None]]:
    # as the payload spells them: JSON escapes a quote or backslash a pseudonym may hold
    needles = [json.dumps(n)[1:-1].encode() for n in (*customers, *loyalty)]
    if len(needles) <= INSTR_MAX_NEEDLES:
        if not needles:
            return []
        where = " OR ".join(["instr(payload, ?) > 0"] * len(needles))
        return conn.execute(
            f"SELECT seq, payload, acked_at FROM events WHERE {where}",  # noqa: S608 - placeholders only
            needles).fetchall()
    unlikes = " AND ".join(["type NOT LIKE ?"] * len(IMPERSONAL_TYPE_PREFIXES))
    return conn.execute(
        f"SELECT seq, payload, acked_at FROM events WHERE {unlikes}",  # noqa: S608 - placeholders only
        [p + "%" for p in IMPERSONAL_TYPE_PREFIXES]).fetchall()


def wipe(conn: sqlite3.Connection) -> None:
    """Rebuild the file (no free page or block keeps old bytes) and truncate the WAL,
    retrying the checkpoint while a reader is in the middle of a statement."""
    rebuild(conn)
    for _ in range(CHECKPOINT_ATTEMPTS):
        busy, _log, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return
        time.sleep(CHECKPOINT_RETRY_S)
    raise sqlite3.OperationalError(
        "the write-ahead log could not be truncated: a reader kept it busy")
