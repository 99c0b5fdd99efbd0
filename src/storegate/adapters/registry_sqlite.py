"""The customer registry on disk: the records central sent, and tombstones.

SQLite, file mode 0600, ``secure_delete`` on, the write-ahead log truncated after each
change (``open_private``, as the identity store): a removed or erased customer's record
is overwritten in the file and no copy is left in the WAL. Records are stored as JSON
without their identity (identity keys live in the identity store only); tombstones hold a
keyed hash of the customer, never the id. The hash key is made here on first use.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from storegate.adapters.private_sqlite import open_private, scrub, transaction
from storegate.core.personal.registry import CustomerRecord, RegistryDelta, Tombstone

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    customer TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombstones (
    key TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"""
_TOMB_KEY = "tombstone-key"
_TOMB_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class Loaded:
    records: list[CustomerRecord]
    tombstones: list[Tombstone]
    skipped: int  # rows today's bounds refuse (kept: central's next sync replaces them)


def _json(r: CustomerRecord) -> str:
    return r.model_dump_json(exclude={"identity"})


class RegistrySqlite:
    """Called from a worker thread (``asyncio.to_thread``), one call at a time: the
    gateway applies one customers command at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_private(path, _SCHEMA, what="the customer registry",
                                secure_delete=True)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def load(self) -> Loaded:
        records: list[CustomerRecord] = []
        skipped = 0
        for (text,) in self._db.execute("SELECT record FROM customers ORDER BY customer"):
            try:
                records.append(CustomerRecord.model_validate_json(text))
            except (ValidationError, ValueError, TypeError):
                skipped += 1
        tombs = [Tombstone(str(k), int(v), float(u)) for k, v, u in
                 self._db.execute("SELECT key, version, until FROM tombstones")]
        return Loaded(records, tombs, skipped)

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM customers").fetchone()[0])

    def tomb_key(self) -> bytes:
        """The key tombstones are hashed with: random, made on first use, kept."""
        row = self._db.execute("SELECT value FROM secrets WHERE name = ?",
                               (_TOMB_KEY,)).fetchone()
        if row is not None:
            return bytes(row[0])
        with self._tx():
            self._db.execute("INSERT OR IGNORE INTO secrets VALUES (?, ?)",
                             (_TOMB_KEY, os.urandom(_TOMB_KEY_BYTES)))
        return self.tomb_key()

    def write(self, delta: RegistryDelta) -> None:
        """One change, in one transaction; expired tombstones go with it."""
        with self._tx():
            self._db.executemany(
                "INSERT OR REPLACE INTO customers VALUES (?, ?, ?)",
                ((r.customer, r.version, _json(r)) for r in delta.written))
            self._db.executemany("DELETE FROM customers WHERE customer = ?",
                                 ((c,) for c in delta.deleted))
            self._db.executemany("DELETE FROM tombstones WHERE key = ?",
                                 ((k,) for k in delta.untombed))
            self._put_tombstones(delta.tombstones)
            self._db.execute("DELETE FROM tombstones WHERE until <= ?", (delta.at,))
        self._scrub()

    def erase(self, customers: Iterable[str], tombstones: Iterable[Tombstone]) -> int:
        """Erasure: the records deleted (overwritten), their tombstones saved; returns
        how many records were deleted."""
        with self._tx():
            cur = self._db.executemany("DELETE FROM customers WHERE customer = ?",
                                       ((c,) for c in customers))
            deleted = cur.rowcount
            self._put_tombstones(tombstones)
        self._scrub()
        return deleted

    def vacuum(self) -> None:
        """Rebuild the file (erasure: no free page keeps an old copy) and truncate the
        WAL."""
        scrub(self._db, vacuum=True)

    def _put_tombstones(self, tombstones: Iterable[Tombstone]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO tombstones VALUES (?, ?, ?)",
                             ((t.key, t.version, t.until) for t in tombstones))

    def _scrub(self) -> None:
        scrub(self._db)  # deleted records leave no copy in the WAL

    def _tx(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._db)
