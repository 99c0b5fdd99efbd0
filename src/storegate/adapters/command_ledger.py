"""The ids of commands this gateway accepted, so a captured command cannot be replayed.

Kept in SQLite beside the identity store for as long as a command can be valid (its
age window plus central's allowed clock skew), across restarts: a command replayed
after a reboot is still a duplicate. Owned by the command thread.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from storegate.errors import ConfigError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands_seen (
    id TEXT PRIMARY KEY,
    issued_at REAL NOT NULL
) WITHOUT ROWID;
"""
PRUNE_EVERY: int = 256


class CommandLedger:
    def __init__(self, path: Path, *, keep_s: float) -> None:
        self.path = path
        self._keep_s = keep_s
        self._since_prune = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                       timeout=30)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(str(path), f"cannot open the command ledger: {exc}") from exc

    def first_time(self, command_id: str, issued_at: float, now: float) -> bool:
        """Record ``command_id``; False if it was already recorded (a replay)."""
        cur = self._db.execute("INSERT OR IGNORE INTO commands_seen VALUES (?, ?)",
                               (command_id, issued_at))
        self._since_prune += 1
        if self._since_prune >= PRUNE_EVERY:
            self.prune(now)
        return cur.rowcount == 1

    def prune(self, now: float) -> None:
        """Forget ids of commands too old to pass the time check anyway."""
        self._since_prune = 0
        self._db.execute("DELETE FROM commands_seen WHERE issued_at < ?",
                         (now - self._keep_s,))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM commands_seen").fetchone()[0])

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
