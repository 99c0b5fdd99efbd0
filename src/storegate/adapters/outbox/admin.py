"""Outbox administration, on a stopped gateway's file: :func:`purge`."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from storegate.adapters.outbox.file import _connect, _validate, check_file, take_writer_lock
from storegate.errors import OutboxError, OutboxUnavailableError


def purge(path: Path, *, event_type: str | None) -> int:
    """Delete pending events (all, or of one type) from a stopped gateway's outbox.

    Takes the single-writer lock, so it refuses while a gateway runs on the file. Every
    purged event is counted in the drops table with reason ``purge``.
    """
    if not path.exists():
        raise OutboxUnavailableError(f"no outbox at {path}")
    check_file(path)
    lock = take_writer_lock(path)
    try:
        conn = _connect(path, readonly=False)
        try:
            _validate(conn, path)
            conn.execute("BEGIN IMMEDIATE")
            where = "WHERE acked_at IS NULL" + (" AND type = ?" if event_type else "")
            params = [event_type] if event_type else []
            counts = conn.execute(
                f"SELECT type, count(*) FROM events {where} GROUP BY type", params  # noqa: S608
            ).fetchall()
            conn.execute(f"DELETE FROM events {where}", params)  # noqa: S608
            conn.executemany(
                "INSERT INTO drops (type, reason, count) VALUES (?, 'purge', ?) "
                "ON CONFLICT (type, reason) DO UPDATE SET count = count + excluded.count",
                counts,
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise OutboxError(f"purge of {path} failed: {exc}") from exc
        finally:
            conn.close()
    finally:
        os.close(lock)
    return sum(n for _, n in counts)
