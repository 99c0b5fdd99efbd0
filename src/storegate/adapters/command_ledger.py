"""The ids of commands this gateway applied, so a captured command cannot be replayed.

Kept in SQLite beside the identity store, across restarts: a command replayed after a
reboot is still a duplicate. The memory is measured on *central's* clock, never the
box's: the newest ``issued_at`` ever applied is kept, commands issued more than the age
window before it are refused as expired, and ids are forgotten only once they are that
old. A box whose clock is set back (a Pi without a battery-backed clock booting before
NTP, or NTP spoofed on the store LAN) therefore still refuses every captured command.

Safe to call from several threads (the command thread checks; the event loop records
an identities command once it is applied).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from storegate.adapters.private_sqlite import open_private
from storegate.errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands_seen (
    id TEXT PRIMARY KEY,
    issued_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_meta (name TEXT PRIMARY KEY, value REAL NOT NULL)
    WITHOUT ROWID;
"""
PRUNE_EVERY: int = 256


class CommandLedger:
    def __init__(self, path: Path, *, keep_s: float) -> None:
        self.path = path
        self._keep_s = keep_s
        self._since_prune = 0
        self._lock = threading.Lock()
        self._db = open_private(path, _SCHEMA, what="the command ledger", timeout_s=30)
        try:
            row = self._db.execute(
                "SELECT value FROM ledger_meta WHERE name = 'newest'").fetchone()
        except sqlite3.Error as exc:
            raise ConfigError(str(path), f"cannot open the command ledger: {exc}") from exc
        self.newest: float | None = None if row is None else float(row[0])

    def seen(self, command_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM commands_seen WHERE id = ?",
                                    (command_id,)).fetchone() is not None

    def stale(self, issued_at: float) -> bool:
        """Issued longer before the newest applied command than ids are kept."""
        return self.newest is not None and issued_at < self.newest - self._keep_s

    def record(self, command_id: str, issued_at: float) -> None:
        """``command_id`` took effect: never again (committed before returning)."""
        with self._lock:
            newest = max(self.newest or issued_at, issued_at)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR IGNORE INTO commands_seen VALUES (?, ?)",
                             (command_id, issued_at))
            self._db.execute("INSERT INTO ledger_meta VALUES ('newest', ?) ON CONFLICT "
                             "(name) DO UPDATE SET value = excluded.value", (newest,))
            self._db.execute("COMMIT")
            self.newest = newest
            self._since_prune += 1
            if self._since_prune >= PRUNE_EVERY:
                self._prune()

    def prune(self) -> None:
        with self._lock:
            self._prune()

    def _prune(self) -> None:
        """Forget ids too old to pass :meth:`stale` anyway (on central's clock)."""
        self._since_prune = 0
        if self.newest is not None:
            self._db.execute("DELETE FROM commands_seen WHERE issued_at < ?",
                             (self.newest - self._keep_s,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM commands_seen").fetchone()[0])

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
