"""The box's small private SQLite stores (identity keys, the customer registry, the
redemption ledger, command ids): one way to open them, one transaction, one scrub.

Each holds personal or secret data, so each is created owner-only before SQLite makes
it or its WAL, runs WAL with synchronous FULL, and after a deletion moves the WAL into
the file and truncates it (``scrub``): a deleted key or record leaves no copy behind.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from storegate.errors import ConfigError


def open_private(path: Path, schema: str, *, what: str, secure_delete: bool = False,
                 timeout_s: float = 5.0) -> sqlite3.Connection:
    """A small SQLite store of the box's own: created owner-only (0600, before SQLite
    makes it or its WAL), WAL, synchronous FULL, ``schema`` applied. ``secure_delete``
    overwrites deleted rows (keys must not linger in the file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                             timeout=timeout_s)
        if secure_delete:
            db.execute("PRAGMA secure_delete = ON")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.executescript(schema)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(str(path), f"cannot open {what}: {exc}") from exc
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (the write lock at once: two writers never both read-then-
    write), committed on success, rolled back on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def scrub(db: sqlite3.Connection, *, vacuum: bool = False) -> None:
    """Move the WAL into the file and truncate it; ``vacuum`` first rewrites the file,
    so free pages that held deleted rows are gone too (needed where ``secure_delete``
    is off). With ``vacuum`` (erasure) a WAL another reader kept from being truncated
    raises: the caller must not answer that the bytes are gone."""
    if vacuum:
        rebuild(db)
    busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    if busy and vacuum:
        raise sqlite3.OperationalError("the write-ahead log could not be truncated: "
                                       "another connection is reading it")


def rebuild(db: sqlite3.Connection) -> None:
    """``VACUUM``: the file rewritten, no free page or block keeps deleted bytes. Its
    scratch copy stays in memory: by default SQLite writes it to a temporary file,
    which would put the personal data being erased on disk once more."""
    db.execute("PRAGMA temp_store = MEMORY")
    db.execute("VACUUM")
