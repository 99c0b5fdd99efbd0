"""Central's storage: one schema, two dialects (SQLite by default, PostgreSQL from a URL).

The schema is written once, in SQLite's and PostgreSQL's common SQL; a dialect only
swaps the placeholders and three column types (auto-increment key, float, bytes). Every
write is one transaction, committed before the call returns, so a caller that
acknowledges to its source afterwards (an MQTT PUBACK, a JetStream ack) never
acknowledges what is not on disk.

Threads: one connection, guarded by one lock (``_lock``); callers in several threads
(the MQTT source's thread, the HTTP server's workers, the gap scanner) take turns.
Several central *processes* may share one PostgreSQL database (or one SQLite file on
one host): deduplication is the primary key on the event id, so it holds across them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from storegate.adapters.central.tombstones import (
    TombstoneKeyError,
    Tombstones,
    create_key,
    new_key,
    read_key,
)
from storegate.errors import StoregateError

log = logging.getLogger(__name__)

Dialect = Literal["sqlite", "postgresql"]
# 2: events keyed by (store, gateway, id); erased tombstones. 3: tombstones keyed
# (HMAC under central's tombstone key; adapters/central/tombstones.py): ``erased.keyed``;
# a registry sync is done on the gateway's answer: ``syncs`` (``gateways.synced_key``
# is read once, by the migration)
SCHEMA_VERSION: Final = 3
SCHEMA_LOCK: Final = 0x5347_4345  # "SGCE": the advisory lock around schema creation

# {serial}: an auto-increment key; {float}: a double; {blob}: bytes.
_TYPES: Final[dict[str, dict[str, str]]] = {
    "sqlite": {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "float": "REAL",
               "blob": "BLOB"},
    "postgresql": {"serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                   "float": "DOUBLE PRECISION", "blob": "BYTEA"},
}

# CloudEvents identity is source + id: two gateways may both use one id, so the key is
# (store, gateway, id), never id alone (a store's event would be dropped as another's).
EVENTS_TABLE: Final = """CREATE TABLE IF NOT EXISTS {name} (
    id TEXT NOT NULL, store TEXT NOT NULL, gateway TEXT NOT NULL,
    sequence BIGINT NOT NULL, type TEXT NOT NULL, time TEXT NOT NULL,
    subject TEXT NOT NULL, customer TEXT, received_at {float} NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (store, gateway, id));"""
EVENTS_INDEXES: Final = """
CREATE INDEX IF NOT EXISTS events_by_sequence ON events (store, gateway, sequence);
CREATE INDEX IF NOT EXISTS events_by_customer ON events (customer);"""

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{events_table}
{events_indexes}
CREATE TABLE IF NOT EXISTS rejects (
    n {serial}, received_at {float} NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL,
    detail TEXT NOT NULL, store TEXT, gateway TEXT, event_id TEXT, payload {blob});
CREATE TABLE IF NOT EXISTS gateways (
    store TEXT NOT NULL, gateway TEXT NOT NULL, watermark BIGINT NOT NULL DEFAULT 0,
    state TEXT, session BIGINT, seal_key TEXT, status_at {float},
    synced_key TEXT, PRIMARY KEY (store, gateway));
CREATE TABLE IF NOT EXISTS syncs (
    store TEXT NOT NULL, gateway TEXT NOT NULL, seal_key TEXT NOT NULL,
    commands TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, sent_at {float} NOT NULL, answered_at {float},
    PRIMARY KEY (store, gateway));
CREATE TABLE IF NOT EXISTS heads (
    store TEXT NOT NULL, gateway TEXT NOT NULL, announced BIGINT NOT NULL,
    PRIMARY KEY (store, gateway));
CREATE TABLE IF NOT EXISTS gaps (
    store TEXT NOT NULL, gateway TEXT NOT NULL, first BIGINT NOT NULL,
    last BIGINT NOT NULL, found_at {float} NOT NULL, requested_at {float},
    attempts INTEGER NOT NULL DEFAULT 0, command_id TEXT,
    state TEXT NOT NULL, closed_at {float},
    PRIMARY KEY (store, gateway, first, last, found_at));
CREATE TABLE IF NOT EXISTS lost (
    store TEXT NOT NULL, gateway TEXT NOT NULL, first BIGINT NOT NULL,
    last BIGINT NOT NULL, at {float} NOT NULL, command_id TEXT,
    PRIMARY KEY (store, gateway, first, last));
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY, store TEXT NOT NULL, name TEXT NOT NULL, request_id TEXT,
    purpose TEXT, issued_at {float} NOT NULL, sent_at {float}, wire {blob} NOT NULL);
CREATE INDEX IF NOT EXISTS commands_by_request ON commands (request_id);
CREATE TABLE IF NOT EXISTS answers (
    command_id TEXT NOT NULL, store TEXT NOT NULL, gateway TEXT NOT NULL,
    type TEXT NOT NULL, applied INTEGER NOT NULL, event_id TEXT NOT NULL,
    data TEXT NOT NULL, at {float} NOT NULL,
    PRIMARY KEY (command_id, gateway, type));
CREATE TABLE IF NOT EXISTS customers (
    customer TEXT PRIMARY KEY, version BIGINT NOT NULL, record TEXT NOT NULL,
    created_at {float} NOT NULL, updated_at {float} NOT NULL);
CREATE TABLE IF NOT EXISTS customer_sent (
    customer TEXT NOT NULL, store TEXT NOT NULL, digest TEXT NOT NULL,
    version BIGINT NOT NULL, PRIMARY KEY (customer, store));
CREATE TABLE IF NOT EXISTS consents (
    n {serial}, customer TEXT NOT NULL, purpose TEXT NOT NULL, granted INTEGER NOT NULL,
    at {float} NOT NULL, source TEXT NOT NULL, store TEXT, proof TEXT NOT NULL,
    recorded_at {float} NOT NULL);
CREATE INDEX IF NOT EXISTS consents_by_customer ON consents (customer);
CREATE TABLE IF NOT EXISTS loyalty (
    loyalty_id TEXT PRIMARY KEY, customer TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS campaigns (
    id TEXT PRIMARY KEY, version BIGINT NOT NULL, body TEXT NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0, updated_at {float} NOT NULL);
CREATE TABLE IF NOT EXISTS pickups (
    order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, store TEXT NOT NULL,
    state TEXT NOT NULL, counter TEXT, items INTEGER NOT NULL,
    created_at {float} NOT NULL, ready_at {float}, collected_at {float},
    updated_at {float} NOT NULL);
CREATE TABLE IF NOT EXISTS erasures (
    id TEXT PRIMARY KEY, customers TEXT NOT NULL, loyalty_ids TEXT NOT NULL,
    requested_at {float} NOT NULL, done_at {float});
CREATE TABLE IF NOT EXISTS command_customers (
    command_id TEXT NOT NULL, customer TEXT NOT NULL, PRIMARY KEY (customer, command_id));
CREATE TABLE IF NOT EXISTS erased (
    digest TEXT PRIMARY KEY, erasure_id TEXT NOT NULL, at {float} NOT NULL,
    keyed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS erasure_stores (
    erasure_id TEXT NOT NULL, store TEXT NOT NULL, command_id TEXT NOT NULL,
    PRIMARY KEY (erasure_id, store));
"""


class StorageError(StoregateError):
    """Central's storage cannot be opened or used at run time (the server is down or
    went away, the disk failed): exit code 1; the message names the remedy."""


class StorageConfigError(StorageError):
    """The storage as given cannot work whatever the retries (not a path or URL central
    knows, a directory that does not exist, a file that is not a database, a login or
    database the server refuses, another schema version): exit code 2, like a broken
    config."""

    exit_code = 2


# what a PostgreSQL server says when the URL itself is wrong (not that it is down)
_PG_CONFIG_PROBLEMS: Final = ("authentication failed", "does not exist", "invalid dsn",
                              "invalid connection option", "invalid integer value",
                              "missing \"=\"", "password", "role ", "no pg_hba.conf",
                              "permission denied", "read-only", "readonly")


class _Cursor(Protocol):
    rowcount: int

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...


class Conn(Protocol):
    def execute(self, sql: Any, params: Sequence[Any] = ...) -> Any: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Target:
    """Where the storage lives, from the one string users give (a path or a URL)."""

    dialect: Dialect
    where: str  # a file path, or the postgresql:// URL

    @staticmethod
    def parse(url: str) -> Target:
        if url.startswith(("postgresql://", "postgres://")):
            return Target("postgresql", url)
        if url.startswith("sqlite:///"):
            return Target("sqlite", url[len("sqlite:///") - 1:])
        if "://" in url:
            shown = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
            raise StorageConfigError(f"central storage {shown!r}: give a SQLite file path "
                                     "or a postgresql:// URL")
        return Target("sqlite", url)

    def redacted(self) -> str:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.where)


class Database:
    """One connection in one dialect; ``tx()`` is one committed transaction.

    ``tombstone_key``: the file of the key erasure tombstones are kept under
    (adapters/central/tombstones.py), made on first use; default: beside a SQLite
    file (``<file>.tombstone-key``); for PostgreSQL without one, the key is kept in
    the database itself (a warning: give every instance the same file instead)."""

    def __init__(self, target: Target, *, synchronous: str = "FULL",
                 tombstone_key: Path | None = None) -> None:
        self.target = target
        self.dialect: Dialect = target.dialect
        self._lock = threading.Lock()
        self._synchronous = synchronous
        self._conn: Conn = self._open(synchronous)
        try:
            self._create_schema()
            self.tombstones = self._open_tombstones(tombstone_key)
        except StorageError:
            self._conn.close()
            raise
        except Exception as exc:  # the driver's own error: one clear line, classified
            self._conn.close()
            raise self.error(exc, "creating the schema") from exc

    def error(self, exc: BaseException, doing: str) -> StorageError:
        """The driver's error as :class:`StorageError` (runtime, exit 1) or
        :class:`StorageConfigError` (the storage as given cannot work, exit 2)."""
        lines = str(exc).strip().splitlines()
        text = lines[0][:300] if lines else repr(exc)
        wrong = (type(exc).__name__ == "ProgrammingError"
                 or any(s in str(exc).lower() for s in _PG_CONFIG_PROBLEMS))
        kind = StorageConfigError if wrong else StorageError
        hint = "" if wrong else " (is the server up, the disk writable?)"
        return kind(f"central storage {self.target.redacted()}: {doing}: {text}{hint}")

    def _create_schema(self) -> None:
        target = self.target
        types = _TYPES[self.dialect]
        with self.tx() as db:
            if self.dialect == "postgresql":
                # instances starting together would race on CREATE TABLE IF NOT EXISTS
                db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            schema = SCHEMA.format(events_table=EVENTS_TABLE.format(name="events", **types),
                                   events_indexes=EVENTS_INDEXES, **types)
            for statement in schema.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = ?",
                             ("schema_version",)).fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                           ("schema_version", str(SCHEMA_VERSION)))
            elif int(row[0]) in (1, 2):
                if int(row[0]) == 1:
                    self._migrate_1_to_2(db, types)
                self._migrate_2_to_3(db)
                db.execute("UPDATE meta SET value = ? WHERE key = ?",
                           (str(SCHEMA_VERSION), "schema_version"))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StorageConfigError(f"central storage {target.redacted()} has schema "
                                         f"{row[0]}, this storegate writes "
                                         f"{SCHEMA_VERSION}")

    @staticmethod
    def _migrate_1_to_2(db: Conn, types: dict[str, str]) -> None:
        """Schema 1 keyed events by id alone: the same rows under (store, gateway, id)."""
        cols = ("id, store, gateway, sequence, type, time, subject, customer, "
                "received_at, data")
        db.execute(EVENTS_TABLE.format(name="events_v2", **types))
        db.execute(f"INSERT INTO events_v2 ({cols}) SELECT {cols} FROM events")  # noqa: S608 - fixed names
        db.execute("DROP TABLE events")
        db.execute("ALTER TABLE events_v2 RENAME TO events")
        for statement in EVENTS_INDEXES.split(";"):
            if statement.strip():
                db.execute(statement)

    @staticmethod
    def _migrate_2_to_3(db: Conn) -> None:
        """Schema 2's tombstones are unkeyed SHA-256 digests: marked ``keyed = 0``
        (the column's default), recognised in that form from now on; those of an
        erasure under way are re-keyed once the key exists (:meth:`_open_tombstones`)."""
        def columns(table: str) -> list[str]:
            return [d[0] for d in db.execute(
                f"SELECT * FROM {table} WHERE 1 = 0").description]  # noqa: S608 - fixed names

        if "keyed" not in columns("erased"):  # a schema-1 database got it as written now
            db.execute("ALTER TABLE erased ADD COLUMN keyed INTEGER NOT NULL DEFAULT 0")
        if "synced_key" not in columns("gateways"):
            return
        # schema 2 marked a gateway synced on the broker's acknowledgement: kept as
        # synced (not sent again), with no commands to wait for
        db.execute("INSERT INTO syncs (store, gateway, seal_key, commands, state, reason, "
                   "attempts, sent_at) SELECT store, gateway, seal_key, '[]', 'synced', "
                   "NULL, 1, 0 FROM gateways WHERE seal_key IS NOT NULL AND synced_key = "
                   "seal_key ON CONFLICT (store, gateway) DO NOTHING")

    def _open_tombstones(self, key_file: Path | None) -> Tombstones:
        """The tombstone key: read (or made, the first time) and checked against the
        one this database's tombstones were made with (``meta.tombstone_check``)."""
        if key_file is None and self.dialect == "sqlite":
            key_file = Path(f"{self.target.where}.tombstone-key")
        with self.tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?",
                             ("tombstone_check",)).fetchone()
        expected = None if row is None else str(row[0])
        created = False
        try:
            if key_file is None:
                key = self._key_in_database(expected)
            elif key_file.exists():
                key = read_key(key_file)
            elif expected is not None:
                raise StorageConfigError(
                    f"central storage {self.target.redacted()}: its erasure tombstones "
                    f"are kept under a key, and the key file {key_file} does not exist: "
                    "restore it (every instance sharing the database uses the same "
                    "file)")
            else:
                key, created = create_key(key_file)
        except TombstoneKeyError as exc:
            raise StorageConfigError(f"central storage {self.target.redacted()}: "
                                     f"{exc}") from exc
        t = Tombstones(key)
        with self.tx() as db:
            if self.dialect == "postgresql":  # instances starting together: one sets it
                db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            row = db.execute("SELECT value FROM meta WHERE key = ?",
                             ("tombstone_check",)).fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                           ("tombstone_check", t.check()))
                self._rekey_pending(db, t)
            elif str(row[0]) != t.check():
                where = "kept in the database" if key_file is None else str(key_file)
                if created and key_file is not None:
                    key_file.unlink(missing_ok=True)
                raise StorageConfigError(
                    f"central storage {self.target.redacted()}: its erasure tombstones "
                    f"were made with another key than the one {where} (key check "
                    f"{row[0]}, this one {t.check()}): give every instance the same "
                    "--tombstone-key file")
        return t

    def _key_in_database(self, expected: str | None) -> bytes:
        """PostgreSQL without a key file: the key in ``meta`` (the same for every
        instance; but whoever reads the database reads the key too)."""
        with self.tx() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            row = db.execute("SELECT value FROM meta WHERE key = ?",
                             ("tombstone_key",)).fetchone()
            if row is None and expected is not None:
                raise StorageConfigError(
                    f"central storage {self.target.redacted()}: its erasure tombstones "
                    "are kept under a key file: give it with --tombstone-key")
            if row is None:
                key = new_key()
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                           ("tombstone_key", key.hex()))
            else:
                key = bytes.fromhex(str(row[0]))
        log.warning("central storage %s: the erasure tombstones' key is kept in the "
                    "database itself; give --tombstone-key FILE (the same file to every "
                    "instance) to keep it out of it", self.target.redacted())
        return key

    @staticmethod
    def _rekey_pending(db: Conn, t: Tombstones) -> None:
        """The key's first use on this database: schema 2's SHA-256 tombstones of an
        erasure under way (its ids still kept) become keyed ones; those of finished
        erasures cannot (a digest cannot be inverted) and stay, recognised as they
        are."""
        rekeyed = 0
        for customers, loyalty in db.execute(
                "SELECT customers, loyalty_ids FROM erasures WHERE done_at IS NULL "
                "ORDER BY id").fetchall():
            for pseudonym in [*json.loads(customers), *json.loads(loyalty)]:
                old = t.legacy_digest(pseudonym)
                row = db.execute("SELECT erasure_id, at FROM erased WHERE digest = ? AND "
                                 "keyed = 0", (old,)).fetchone()
                if row is None:
                    continue
                db.execute("INSERT INTO erased (digest, erasure_id, at, keyed) VALUES "
                           "(?, ?, ?, 1) ON CONFLICT (digest) DO NOTHING",
                           (t.digest(pseudonym), row[0], row[1]))
                db.execute("DELETE FROM erased WHERE digest = ?", (old,))
                rekeyed += 1
        left = int(db.execute("SELECT COUNT(*) FROM erased WHERE keyed = 0").fetchone()[0])
        if rekeyed or left:
            log.info("erasure tombstones: %d re-keyed; %d of finished erasures kept as "
                     "unkeyed digests (recognised; they cannot be re-keyed)", rekeyed, left)

    def _open(self, synchronous: str) -> Conn:
        if self.dialect == "sqlite":
            path = Path(self.target.where)
            if not path.parent.is_dir():
                raise StorageConfigError(f"central storage {path}: directory "
                                         f"{path.parent} does not exist")
            _private_file(path)
            try:
                conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                       timeout=30)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {synchronous}")
            except sqlite3.DatabaseError as exc:
                # not a database, or one it may not open: the path is wrong, not the time
                raise StorageConfigError(f"central storage {path}: {exc}") from exc
            return _SqliteConn(conn)
        try:
            import psycopg  # noqa: PLC0415 - only when a PostgreSQL URL is given
        except ImportError as exc:
            raise StorageConfigError("a postgresql:// storage needs psycopg "
                                     "(pip install 'psycopg[binary]')") from exc
        try:
            return _PgConn(psycopg.connect(self.target.where, autocommit=False))
        except psycopg.Error as exc:
            raise self.error(exc, "connecting") from exc

    @contextmanager
    def tx(self) -> Iterator[Conn]:
        with self._lock:
            if self.dialect == "sqlite":
                self._conn.execute("BEGIN IMMEDIATE")
            elif getattr(self._conn, "broken", False):
                # the server went away (restart, failover): a new connection; what
                # the failed transaction held was never committed, so never acked
                with suppress(Exception):
                    self._conn.close()
                self._conn = self._open(self._synchronous)
            try:
                yield self._conn
            except BaseException:
                with suppress(Exception):
                    self._conn.rollback()
                raise
            self._conn.commit()

    def retryable(self, exc: BaseException) -> bool:
        """Whether the database aborted the transaction for another's sake (deadlock,
        serialization failure; SQLite busy past its timeout): run it again."""
        if self.dialect == "sqlite":
            return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
        return getattr(exc, "sqlstate", None) in ("40P01", "40001")

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.tx() as db:
            return [tuple(r) for r in db.execute(sql, params).fetchall()]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _SqliteConn:
    """sqlite3 in autocommit mode with explicit BEGIN (isolation_level None)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    def execute(self, sql: Any, params: Sequence[Any] = ()) -> Any:
        return self._c.execute(sql, params)

    def commit(self) -> None:
        if self._c.in_transaction:
            self._c.execute("COMMIT")

    def rollback(self) -> None:
        if self._c.in_transaction:
            self._c.execute("ROLLBACK")

    def close(self) -> None:
        self._c.close()


class _PgConn:
    """psycopg 3 with SQLite's ``?`` placeholders translated once per statement."""

    def __init__(self, conn: Any) -> None:
        self._c = conn
        self._sql: dict[str, str] = {}

    def execute(self, sql: Any, params: Sequence[Any] = ()) -> Any:
        text = self._sql.get(sql)
        if text is None:
            text = self._sql[sql] = sql.replace("%", "%%").replace("?", "%s")
        return self._c.execute(text, params, prepare=True)

    @property
    def broken(self) -> bool:
        return bool(self._c.broken or self._c.closed)

    def commit(self) -> None:
        self._c.commit()

    def rollback(self) -> None:
        self._c.rollback()

    def close(self) -> None:
        self._c.close()


def _private_file(path: Path) -> None:
    """The database holds customers' identity keys: created 0600 (SQLite gives its
    -wal and -shm files the main file's mode); an existing file readable by others is
    named in a warning (the operator's choice, not changed behind their back)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("central storage %s is readable by others (mode %o): it holds "
                        "identity keys; chmod 600 it", path, mode)
        return
    except OSError as exc:
        raise StorageConfigError(f"central storage {path}: {exc}") from exc
    os.close(fd)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
