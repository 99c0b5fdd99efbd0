"""The outbox read side: a read-only view of the file and the rows and stats it returns.

The publisher reads with its own connection (WAL lets readers run beside the writer),
and so does the CLI; neither ever writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from storegate.adapters.outbox.file import _connect, _validate, check_file
from storegate.errors import OutboxUnavailableError


class StoredEvent(NamedTuple):
    """An event as the publisher reads it (a tuple: cheap on the per-event path)."""

    sequence: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PendingEvent:
    sequence: int
    id: str
    type: str
    priority: int
    topic: str
    size: int
    accepted_at: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int  # pending: accepted, not yet acknowledged by the broker
    bytes: int  # of the pending events
    retained: int  # acknowledged, kept for replay requests
    oldest_accepted_at: float | None
    last_sequence: int
    dropped: dict[str, int]  # "type/reason" -> count

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class OutboxReader:
    """A read-only view of an outbox file: the publisher's feed and the CLI's window.

    Never creates, locks or modifies the file.
    """

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise OutboxUnavailableError(f"no outbox at {path} (has the gateway run yet?)")
        check_file(path)
        self.path = path
        self._conn = _connect(path, readonly=True)
        try:
            initialised = _validate(self._conn, path)
        except BaseException:
            self._conn.close()
            raise
        if not initialised:
            self._conn.close()
            raise OutboxUnavailableError(f"outbox {path} is not initialised yet")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> OutboxReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch_after(self, sequence: int, limit: int) -> list[StoredEvent]:
        rows = self._conn.execute(
            "SELECT seq, topic, payload FROM events WHERE seq > ? AND acked_at IS NULL "
            "ORDER BY seq LIMIT ?",
            (sequence, limit),
        ).fetchall()
        return list(map(StoredEvent._make, rows))

    def fetch(self, sequences: Sequence[int]) -> list[StoredEvent]:
        if not sequences:
            return []
        marks = ",".join("?" * len(sequences))
        rows = self._conn.execute(
            f"SELECT seq, topic, payload FROM events WHERE seq IN ({marks}) ORDER BY seq",  # noqa: S608
            list(sequences),
        ).fetchall()
        return list(map(StoredEvent._make, rows))

    def stats(self) -> OutboxStats:
        c = self._conn
        depth, size, retained = c.execute(
            "SELECT count(*) - count(acked_at), "
            "coalesce(sum(CASE WHEN acked_at IS NULL THEN size END), 0), count(acked_at) "
            "FROM events"
        ).fetchone()
        oldest = c.execute(
            "SELECT accepted_at FROM events WHERE acked_at IS NULL ORDER BY seq LIMIT 1"
        ).fetchone()
        last = c.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        dropped = {
            f"{t}/{r}": n for t, r, n in c.execute("SELECT type, reason, count FROM drops")
        }
        return OutboxStats(
            depth=depth,
            bytes=size,
            retained=retained,
            oldest_accepted_at=oldest[0] if oldest else None,
            last_sequence=last[0] if last else 0,
            dropped=dropped,
        )

    def pending(self, limit: int, event_type: str | None = None) -> list[PendingEvent]:
        sql = ("SELECT seq, id, type, priority, topic, size, accepted_at FROM events "
               "WHERE acked_at IS NULL")
        params: list[object] = []
        if event_type:
            sql += " AND type = ?"
            params.append(event_type)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [PendingEvent(*row) for row in self._conn.execute(sql, params)]

    def count_by_type(self) -> dict[str, int]:
        return dict(self._conn.execute(
            "SELECT type, count(*) FROM events WHERE acked_at IS NULL GROUP BY type"
        ))
