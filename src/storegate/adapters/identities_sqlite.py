"""The box's copy of consenting customers' identity keys, and the footfall secret.

SQLite, file mode 0600, ``secure_delete`` on: when a customer withdraws consent or is
erased, the key's bytes are overwritten in the file, and the write-ahead log is
truncated, so no copy is left behind on the box.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from storegate.adapters.private_sqlite import open_private, scrub, transaction
from storegate.core.ble.eid import Identity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    customer TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    rotation_exponent INTEGER NOT NULL,
    beacon_time_at_registration INTEGER NOT NULL,
    registered_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"""
_UPSERT = "INSERT OR REPLACE INTO identities VALUES (?, ?, ?, ?, ?)"


def _row(i: Identity) -> tuple[str, bytes, int, int, float]:
    return (i.customer, i.identity_key, i.rotation_exponent, i.beacon_time_at_registration,
            i.registered_at)


class IdentityStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_private(path, _SCHEMA, what="the identity store", secure_delete=True)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def load(self) -> tuple[list[Identity], int]:
        """The stored identities, and how many rows were skipped: a row saved by an
        older version that today's bounds refuse is never enrolled (it is kept, so
        central's next full sync replaces or removes it)."""
        out: list[Identity] = []
        skipped = 0
        for c, k, r, b, t in self._db.execute("SELECT * FROM identities ORDER BY customer"):
            try:
                out.append(Identity(c, bytes(k), r, b, t))
            except (TypeError, ValueError):
                skipped += 1
        return out, skipped

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM identities").fetchone()[0])

    def upsert(self, identities: Iterable[Identity]) -> None:
        with self._tx():
            self._db.executemany(_UPSERT, (_row(i) for i in identities))
        self._scrub()  # a re-keyed customer's old key must not linger in the WAL

    def remove(self, customers: Iterable[str]) -> int:
        with self._tx():
            cur = self._db.executemany("DELETE FROM identities WHERE customer = ?",
                                       ((c,) for c in customers))
            removed = cur.rowcount
        self._scrub()
        return removed

    def replace(self, identities: Iterable[Identity]) -> list[str]:
        """Exactly these afterwards; returns the customers that were removed."""
        new = list(identities)
        keep = {i.customer for i in new}
        with self._tx():
            old = [c for (c,) in self._db.execute("SELECT customer FROM identities")]
            gone = [c for c in old if c not in keep]
            self._db.executemany("DELETE FROM identities WHERE customer = ?",
                                 ((c,) for c in gone))
            self._db.executemany(_UPSERT, (_row(i) for i in new))
        self._scrub()
        return gone

    def apply(self, op: str, given: list[Identity], customers: list[str]) -> None:
        """An identities command's change, on disk: upsert ``given``, remove
        ``customers``, or replace everything with ``given``."""
        if op == "upsert":
            self.upsert(given)
        elif op == "remove":
            self.remove(customers)
        else:
            self.replace(given)

    def secret(self, name: str, size: int = 32) -> bytes:
        """A random secret created on first use and kept (e.g. the footfall hash key)."""
        row = self._db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return bytes(row[0])
        value = os.urandom(size)
        with self._tx():
            self._db.execute("INSERT OR IGNORE INTO secrets VALUES (?, ?)", (name, value))
        return self.secret(name, size)

    def _scrub(self) -> None:
        scrub(self._db)  # deleted keys leave no copy in the WAL

    def _tx(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._db)
