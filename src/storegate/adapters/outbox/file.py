"""The outbox file: its format, the checks that a file is ours, and the writer lock.

A storegate outbox is a SQLite database marked with :data:`APPLICATION_ID` and
:data:`SCHEMA_VERSION`. Whatever opens one (the writer, the reader, purge) goes through
:func:`check_file`, :func:`_connect` and :func:`_validate` first, so a foreign, corrupt
or newer file is refused with the remedy in the message; whatever writes to one holds
:func:`take_writer_lock` and keeps it owner-only (:func:`make_private`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Final

from storegate.errors import OutboxNotOursError, OutboxUnavailableError

APPLICATION_ID: Final = 0x53475442  # "SGTB": marks a file as a storegate outbox
SCHEMA_VERSION: Final = 1
SQLITE_MAGIC: Final = b"SQLite format 3\x00"
FILE_MODE: Final = 0o600  # the outbox, its WAL, SHM and lock file: owner only
DIR_MODE: Final = 0o700  # a storage directory storegate creates

_SCHEMA: Final = """
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    priority    INTEGER NOT NULL,
    topic       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    size        INTEGER NOT NULL,
    accepted_at REAL    NOT NULL,
    acked_at    REAL                -- NULL: pending; else kept for replay until trimmed
);
CREATE INDEX events_droppable ON events (priority, seq) WHERE priority > 0 AND acked_at IS NULL;
CREATE TABLE drops (
    type   TEXT    NOT NULL,
    reason TEXT    NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (type, reason)
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


def check_file(path: Path) -> None:
    """Refuse a file at ``path`` that is not a SQLite database, without touching it."""
    if not path.exists():
        return
    if not path.is_file():
        raise OutboxNotOursError(f"outbox path {path} exists and is not a regular file")
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise OutboxUnavailableError(f"cannot read outbox {path}: {exc.strerror}") from exc
    if head and head != SQLITE_MAGIC:
        raise OutboxNotOursError(
            f"{path} is not a storegate outbox (not a SQLite database); refusing to "
            "overwrite it. Move it away or set storage.path to another file."
        )


def make_private(path: Path) -> None:
    """Create the outbox file owner-only, or close up one made by an older storegate.

    The outbox holds purchases (and, by opt-in, loyalty ids): no other local user may
    read it. SQLite creates the ``-wal`` and ``-shm`` files with the database file's
    mode, so setting it on the database (before SQLite creates it) covers them; the
    ones an older version left open are closed up too.
    """
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        for p in (path, _wal(path), _shm(path)):
            with contextlib.suppress(FileNotFoundError):
                if p.stat().st_mode & 0o077:
                    os.chmod(p, FILE_MODE)
    except OSError as exc:
        raise OutboxUnavailableError(
            f"cannot make outbox {path} private ({exc.strerror}); check the owner and "
            "permissions of the file and its directory"
        ) from exc


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _shm(path: Path) -> Path:
    return path.with_name(path.name + "-shm")


def take_writer_lock(path: Path) -> int:
    """Take the single-writer lock beside ``path``; the fd holds it until closed."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        with contextlib.suppress(OSError):  # left open by an older storegate (empty)
            os.fchmod(fd, FILE_MODE)
    except OSError as exc:
        raise OutboxUnavailableError(
            f"cannot write in storage directory {path.parent}: {exc.strerror}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise OutboxUnavailableError(
            f"outbox {path} is in use by another storegate process "
            "(stop it first, or give this one its own storage.path)"
        ) from exc
    return fd


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None,
                check_same_thread=False,
            )
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
    except sqlite3.Error as exc:
        raise OutboxUnavailableError(f"cannot open outbox {path}: {exc}") from exc
    return conn


def _validate(conn: sqlite3.Connection, path: Path) -> bool:
    """Check an opened database is ours; return False if it is new (empty)."""
    try:
        # One statement, one snapshot: read apart, a gateway creating the file between
        # the reads made it look foreign to `storegate status`.
        app_id, version, tables = conn.execute(
            "SELECT a.application_id, v.user_version, "
            "(SELECT count(*) FROM sqlite_master) "
            "FROM pragma_application_id() AS a, pragma_user_version() AS v").fetchone()
    except sqlite3.DatabaseError as exc:
        raise OutboxNotOursError(
            f"{path} is corrupt or not a storegate outbox ({exc}); refusing to use it. "
            "Move it away or set storage.path to another file."
        ) from exc
    if app_id == 0 and tables == 0:
        return False
    if app_id != APPLICATION_ID:
        raise OutboxNotOursError(
            f"{path} is a SQLite database of another application (application_id "
            f"{app_id:#x}); refusing to overwrite it. Set storage.path to another file."
        )
    if version > SCHEMA_VERSION:
        raise OutboxNotOursError(
            f"{path} was written by a newer storegate (schema {version}, this one reads "
            f"{SCHEMA_VERSION}); upgrade storegate or move the file away."
        )
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        check = str(exc)
    if check != "ok":
        raise OutboxNotOursError(
            f"{path} is corrupt ({check}); refusing to use it. Keep it for recovery "
            "(sqlite3 .recover) and set storage.path to another file."
        )
    return True
