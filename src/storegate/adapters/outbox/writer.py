"""The outbox writer: an event is *accepted* once it is committed to SQLite on disk.

One writer thread owns the write connection and does **group commit**: whatever
producers submitted while the previous commit was running goes into the next
transaction, together with the deletions of events the broker acknowledged and any
retention drops. Latency stays at one commit when idle; throughput grows with load.

The publisher reads with its own connection (WAL lets readers run beside the writer)
and hands acknowledgements back through :meth:`Outbox.ack`.

Sequence numbers come from ``AUTOINCREMENT`` bookkeeping (``sqlite_sequence``), so a
number is never reused, even after the newest rows were deleted or the process died.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from storegate.adapters.outbox.file import (
    _SCHEMA,
    APPLICATION_ID,
    DIR_MODE,
    SCHEMA_VERSION,
    _connect,
    _validate,
    check_file,
    make_private,
    take_writer_lock,
)
from storegate.adapters.outbox.redaction import Redacted, redact
from storegate.core import events as ev
from storegate.core.ids import Uuid7Generator
from storegate.core.retention import DROP_ORDER, RetentionBudget, age_cutoff, excess
from storegate.errors import (
    OutboxClosedError,
    OutboxError,
    OutboxFullError,
    OutboxUnavailableError,
)

log = logging.getLogger(__name__)

MAX_BATCH_EVENTS: Final = 5000
AGE_CHECK_INTERVAL_S: Final = 1.0
ACK_COALESCE_S: Final = 0.05
ACK_BATCH: Final = 2000

Synchronous = Literal["full", "normal"]


@dataclass(frozen=True, slots=True)
class Accepted:
    """What an accepted event became: its sequence number and CloudEvents id."""

    sequence: int
    id: str


@dataclass(slots=True)
class _Submission:
    drafts: Sequence[ev.EventDraft]
    waiter: asyncio.Future[list[Accepted]] | concurrent.futures.Future[list[Accepted]]


@dataclass(slots=True)
class _Acks:
    sequences: list[int]


@dataclass(slots=True)
class _Requeue:
    first: int
    last: int
    done: Callable[[list[int], list[int]], None]


@dataclass(slots=True)
class _Redact:
    customers: frozenset[str]
    loyalty: frozenset[str]
    done: Callable[[Redacted], None]


@dataclass(slots=True)
class _Counts:
    """Rows and bytes held (pending + kept for replay), and how many are pending."""

    rows: int
    bytes: int
    pending: int


@dataclass(slots=True)
class _Stop:
    done: threading.Event = field(default_factory=threading.Event)


_Item = _Submission | _Acks | _Requeue | _Redact | _Stop


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc).lower()


_INSERT_CHUNKS: Final = (256, 32, 4, 1)


def _insert_sql(n: int) -> str:
    values = ",".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * n)  # placeholders only
    cols = "seq, id, type, priority, topic, payload, size, accepted_at"
    return f"INSERT INTO events ({cols}) VALUES {values}"  # noqa: S608


_INSERT_SQL: Final = {n: _insert_sql(n) for n in _INSERT_CHUNKS}


def _insert(conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """Insert with few multi-row statements: each statement is one trip into SQLite
    (one GIL release), where ``executemany`` makes one per row; a handful of fixed
    chunk sizes keeps every statement in the connection's cache."""
    i = 0
    for size in _INSERT_CHUNKS:
        while len(rows) - i >= size:
            conn.execute(_INSERT_SQL[size], [v for row in rows[i : i + size] for v in row])
            i += size


class Outbox:
    """The SQLite outbox. Thread-safe entry points: :meth:`accept`,
    :meth:`accept_blocking`, :meth:`submit`, :meth:`ack`, :meth:`close`."""

    def __init__(
        self,
        path: Path,
        *,
        source: str,
        topic_for: Callable[[ev.EventType], str],
        budget: RetentionBudget,
        clock: Callable[[], float],
        synchronous: Synchronous = "full",
        replay_window_s: float = 3600.0,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self._source = source
        self._source_json = json.dumps(source, ensure_ascii=False)
        self._topic_for = topic_for
        self._budget = budget
        self._clock = clock
        self._synchronous = synchronous
        self._replay_window_s = replay_window_s
        self._on_commit = on_commit
        # the hand-off: any thread puts, only the writer thread takes
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        # lifecycle, set by open(), stop_accepting() and close() on the owner's thread;
        # the entry points read them on any thread to refuse work once closed
        self._closed = False
        self._accepting = True
        self._lock_file: int | None = None
        self._thread: threading.Thread | None = None
        # opened by open(), then used only by the writer thread; close() closes it once
        # the thread has stopped
        self._conn: sqlite3.Connection | None = None
        # state owned by the writer thread (open() sets it up before the thread starts;
        # `depth` and `last_sequence` read _pending and _next_seq from any thread)
        self._ids = Uuid7Generator()
        self._pending_acks: list[int] = []
        self._next_seq = 1
        self._rows = 0
        self._bytes = 0
        self._pending = 0
        self._last_age_check = 0.0
        # observable state (written by open() and the writer thread, read by anyone)
        self.session = 0
        self.last_error: str | None = None
        self.accepted_total = 0
        self.failed_total = 0

    # --- lifecycle -----------------------------------------------------------------

    def open(self) -> None:
        """Validate or create the database, take the single-writer lock, start the
        writer thread. Raises an :class:`OutboxError` naming the path on any problem."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        except OSError as exc:
            raise OutboxUnavailableError(
                f"cannot create storage directory {path.parent}: {exc.strerror}"
            ) from exc
        check_file(path)
        self._lock_file = take_writer_lock(path)
        try:
            make_private(path)
            conn = _connect(path, readonly=False)
            is_ours = _validate(conn, path)
            self._init(conn, is_ours)
        except BaseException:
            self._release_lock()
            raise
        self._conn = conn
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None

    def _init(self, conn: sqlite3.Connection, existing: bool) -> None:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise OutboxUnavailableError(
                    f"cannot put {self.path} in WAL mode (got {mode!r}); is the "
                    "filesystem a network share?"
                )
            conn.execute(f"PRAGMA synchronous = {self._synchronous.upper()}")
            if not existing:
                # One transaction: a reader (`storegate status`) never sees the tables
                # without the application id, which would make the file look foreign.
                # (executescript commits whatever is pending first, so the BEGIN is
                # part of the script.)
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{_SCHEMA}\nPRAGMA application_id = {APPLICATION_ID};\n"
                    f"PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('session', 1) "
                "ON CONFLICT (key) DO UPDATE SET value = value + 1"
            )
            self.session = conn.execute("SELECT value FROM meta WHERE key='session'").fetchone()[0]
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if _is_full(exc):
                raise OutboxFullError(f"cannot start: disk holding {self.path} is full") from exc
            if "readonly" in str(exc) or "permission" in str(exc).lower():
                raise OutboxUnavailableError(
                    f"outbox {self.path} is not writable ({exc}); check the permissions "
                    "of the file and its directory"
                ) from exc
            raise OutboxUnavailableError(f"cannot initialise outbox {self.path}: {exc}") from exc
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        self._next_seq = (row[0] if row else 0) + 1
        self._rows, self._bytes, self._pending = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), count(*) - count(acked_at) FROM events"
        ).fetchone()

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, commit what was submitted, close the database cleanly."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            stop = _Stop()
            self._queue.put(stop)
            stop.done.wait(timeout)
            self._thread.join(timeout)
            self._thread = None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.close()
            self._conn = None
        self._release_lock()

    def stop_accepting(self) -> None:
        """Refuse new events from now on; acknowledgements are still processed."""
        self._accepting = False

    @property
    def depth(self) -> int:
        """Events committed and not yet acknowledged (or dropped)."""
        return self._pending

    @property
    def last_sequence(self) -> int:
        """The newest sequence number committed (0 when none ever was)."""
        return self._next_seq - 1

    # --- producers -----------------------------------------------------------------

    async def accept(self, draft: ev.EventDraft) -> Accepted:
        """Accept one event: returns once it is committed to disk."""
        return (await self.accept_many([draft]))[0]

    async def accept_many(self, drafts: Sequence[ev.EventDraft]) -> list[Accepted]:
        fut: asyncio.Future[list[Accepted]] = asyncio.get_running_loop().create_future()
        self._put(_Submission(drafts, fut))
        return await fut

    def submit(self, drafts: Sequence[ev.EventDraft]) -> concurrent.futures.Future[list[Accepted]]:
        """Thread-friendly form of :meth:`accept_many`."""
        fut: concurrent.futures.Future[list[Accepted]] = concurrent.futures.Future()
        self._put(_Submission(drafts, fut))
        return fut

    def accept_blocking(
        self, drafts: Sequence[ev.EventDraft], timeout: float | None = None
    ) -> list[Accepted]:
        return self.submit(drafts).result(timeout)

    def _put(self, item: _Submission) -> None:
        if self._closed or not self._accepting or self._thread is None:
            raise OutboxClosedError("the outbox is closed: event not accepted")
        self._queue.put(item)

    # --- publisher -----------------------------------------------------------------

    def ack(self, sequences: list[int]) -> None:
        """The broker acknowledged these: mark them (or delete them, with no replay
        window) in the next group commit."""
        if sequences and not self._closed:
            self._queue.put(_Acks(sequences))

    def requeue(
        self, first: int, last: int, done: Callable[[list[int], list[int]], None]
    ) -> None:
        """Make acknowledged events in [first, last] pending again (a replay request).

        ``done(requeued, missing)`` runs on the writer thread after the commit, with the
        sequences made pending again and those no longer held at all.
        """
        if not self._closed:
            self._queue.put(_Requeue(first, last, done))

    def redact(self, customers: Iterable[str], loyalty: Iterable[str],
               done: Callable[[Redacted], None]) -> None:
        """Erasure: rewrite every stored event (pending or kept for replay) naming these
        customers or loyalty pseudonyms, then wipe the file (adapters/outbox/
        redaction.py). Queued behind whatever was submitted before, so those events are
        committed first and redacted too. ``done(result)`` runs on the writer thread."""
        if self._closed:
            done(Redacted(error="the outbox is closed"))
            return
        self._queue.put(_Redact(frozenset(customers), frozenset(loyalty), done))

    # --- writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        stop: _Stop | None = None
        while stop is None:
            item = self._queue.get()
            subs: list[_Submission] = []
            requeues: list[_Requeue] = []
            redactions: list[_Redact] = []
            n_events = 0
            acks = self._pending_acks
            self._pending_acks = []
            ack_deadline: float | None = None
            while True:
                if isinstance(item, _Submission):
                    subs.append(item)
                    n_events += len(item.drafts)
                elif isinstance(item, _Acks):
                    acks.extend(item.sequences)
                elif isinstance(item, _Requeue):
                    requeues.append(item)
                elif isinstance(item, _Redact):
                    redactions.append(item)
                    break  # after this batch's commit: what came before is redacted too
                else:
                    stop = item
                    break
                if n_events >= MAX_BATCH_EVENTS:
                    break
                try:
                    item = self._queue.get_nowait()
                    continue
                except queue.Empty:
                    pass
                # Nothing queued. Events and replays commit now; acknowledgements alone
                # wait a little for more: losing them costs only a duplicate re-send,
                # and one commit per PUBACK would cost the publisher its CPU.
                if subs or requeues or len(acks) >= ACK_BATCH:
                    break
                now = time.monotonic()
                ack_deadline = ack_deadline or now + ACK_COALESCE_S
                if now >= ack_deadline:
                    break
                try:
                    item = self._queue.get(timeout=ack_deadline - now)
                except queue.Empty:
                    break
            try:
                self._commit(subs, acks, requeues)
            except Exception:  # a bug must not kill the writer: fail the batch loudly
                log.exception("outbox commit failed unexpectedly")
                self._fail(subs, OutboxError("outbox commit failed unexpectedly; see log"))
            for rd in redactions:
                self._redact(rd)
        # Closing: refuse what arrived after the stop.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Redact):
                self._answer(item, Redacted(error="the outbox is closed"))
            if isinstance(item, _Submission):
                self._fail([item], OutboxClosedError("the outbox is closed: event not accepted"))
        stop.done.set()

    def _commit(
        self, subs: list[_Submission], acks: list[int], requeues: list[_Requeue]
    ) -> None:
        conn = self._conn
        assert conn is not None
        now = self._clock()
        first_seq = self._next_seq
        rows: list[tuple[int, str, str, int, str, bytes, int, float]] = []
        results: list[list[Accepted]] = []
        unix_ms = int(now * 1000)
        rand = os.urandom(8 * sum(len(s.drafts) for s in subs))
        r = 0
        for sub in subs:
            accepted: list[Accepted] = []
            for draft in sub.drafts:
                seq = self._next_seq
                self._next_seq = seq + 1
                event_id = self._ids.next(unix_ms, rand[r : r + 8])
                r += 8
                payload = ev.encode_event(
                    draft, event_id=event_id, source_json=self._source_json, sequence=seq
                )
                t = draft.type
                rows.append(
                    (seq, event_id, t.name, int(t.priority), self._topic_for(t), payload,
                     len(payload), now)
                )
                accepted.append(Accepted(seq, event_id))
            results.append(accepted)
        c = _Counts(self._rows, self._bytes, self._pending)
        replies: list[tuple[_Requeue, list[int], list[int]]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._acknowledge(conn, acks, now, c)
            for rq in requeues:
                replies.append((rq, *self._requeue(conn, rq, c)))
            if rows:
                _insert(conn, rows)
                c.rows += len(rows)
                c.pending += len(rows)
                c.bytes += sum(row[6] for row in rows)
            self._enforce_budget(conn, now, c)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._next_seq = first_seq
            self._pending_acks = acks  # retry the acknowledgements with the next commit
            for rq in requeues:  # and the replay requests
                self._queue.put(rq)
            self.failed_total += len(rows)
            if _is_full(exc):
                err: OutboxError = OutboxFullError(
                    f"disk holding {self.path} is full: {len(rows)} event(s) NOT accepted"
                )
            else:
                err = OutboxError(f"outbox write to {self.path} failed: {exc}")
            if self.last_error != str(err):
                log.error("%s", err, extra={"outbox": str(self.path)})  # noqa: TRY400
            self.last_error = str(err)
            self._fail(subs, err)
            return
        self.last_error = None
        self._rows, self._bytes, self._pending = c.rows, c.bytes, c.pending
        self.accepted_total += len(rows)
        # The publisher hears of the commit before the producers hear "accepted": the
        # gateway's shutdown stops the publisher right after its last accept, and a
        # publisher not yet told would call itself drained with those events pending.
        if rows and self._on_commit is not None:
            try:
                self._on_commit(self._next_seq - 1)
            except Exception:  # committed all the same: the producers still hear so
                log.exception("outbox on_commit callback failed")
        self._resolve(subs, results)
        for rq, requeued, missing in replies:
            try:
                rq.done(requeued, missing)
            except Exception:
                log.exception("replay callback failed")

    def _redact(self, rd: _Redact) -> None:
        conn = self._conn
        assert conn is not None
        try:
            result = redact(conn, rd.customers, rd.loyalty)
        except Exception as exc:  # a bug must not kill the writer: answer it failed
            log.exception("outbox redaction failed unexpectedly")
            result = Redacted(error=f"outbox redaction failed: {type(exc).__name__}")
        self._bytes += result.bytes_delta
        self._answer(rd, result)

    @staticmethod
    def _answer(rd: _Redact, result: Redacted) -> None:
        try:
            rd.done(result)
        except Exception:
            log.exception("redaction callback failed")

    def _acknowledge(
        self, conn: sqlite3.Connection, seqs: list[int], now: float, c: _Counts
    ) -> None:
        """Acknowledged events leave the pending set: kept for replay, or deleted."""
        for i in range(0, len(seqs), 500):
            chunk = seqs[i : i + 500]
            marks = ",".join("?" * len(chunk))
            if self._replay_window_s > 0:
                cur = conn.execute(
                    f"UPDATE events SET acked_at = ? WHERE seq IN ({marks}) "  # noqa: S608
                    "AND acked_at IS NULL",
                    [now, *chunk],
                )
                c.pending -= cur.rowcount
            else:
                n, size = self._delete(conn, chunk)
                c.rows -= n
                c.pending -= n
                c.bytes -= size

    def _requeue(
        self, conn: sqlite3.Connection, rq: _Requeue, c: _Counts
    ) -> tuple[list[int], list[int]]:
        requeued = [
            seq for (seq,) in conn.execute(
                "UPDATE events SET acked_at = NULL WHERE seq BETWEEN ? AND ? "
                "AND acked_at IS NOT NULL RETURNING seq",
                (rq.first, rq.last),
            )
        ]
        c.pending += len(requeued)
        held = {seq for (seq,) in conn.execute(
            "SELECT seq FROM events WHERE seq BETWEEN ? AND ?", (rq.first, rq.last)
        )}
        top = min(rq.last, self._next_seq - 1)
        missing = [s for s in range(rq.first, top + 1) if s not in held]
        return sorted(requeued), missing

    @staticmethod
    def _delete(conn: sqlite3.Connection, seqs: list[int]) -> tuple[int, int]:
        """Delete by sequence; return (rows, bytes) deleted."""
        freed_rows = freed_bytes = 0
        for i in range(0, len(seqs), 500):
            chunk = seqs[i : i + 500]
            marks = ",".join("?" * len(chunk))
            sizes = conn.execute(
                f"DELETE FROM events WHERE seq IN ({marks}) RETURNING size", chunk  # noqa: S608
            ).fetchall()
            freed_rows += len(sizes)
            freed_bytes += sum(s for (s,) in sizes)
        return freed_rows, freed_bytes

    def _enforce_budget(self, conn: sqlite3.Connection, now: float, c: _Counts) -> None:
        """Trim the replay window, then drop pending events by age and by budget,
        lowest priority first (never CRITICAL). Drops are counted per type and reason."""
        dropped: dict[tuple[str, str], int] = {}
        if now - self._last_age_check >= AGE_CHECK_INTERVAL_S:
            self._last_age_check = now
            for (s,) in conn.execute(
                "DELETE FROM events WHERE acked_at IS NOT NULL AND acked_at < ? RETURNING size",
                (now - self._replay_window_s,),
            ).fetchall():
                c.rows -= 1
                c.bytes -= s
            cutoff = age_cutoff(self._budget, now)
            if cutoff is not None:
                for t, s in conn.execute(
                    "DELETE FROM events WHERE priority > 0 AND acked_at IS NULL "
                    "AND accepted_at < ? RETURNING type, size",
                    (cutoff,),
                ).fetchall():
                    dropped[(t, "age")] = dropped.get((t, "age"), 0) + 1
                    c.rows -= 1
                    c.pending -= 1
                    c.bytes -= s
        over = excess(c.rows, c.bytes, self._budget)
        if over:
            need = [over.rows, over.bytes]
            # Already delivered events (kept only for replay) go before anything pending.
            victims = _take(conn.execute(
                "SELECT seq, size, type FROM events WHERE acked_at IS NOT NULL ORDER BY seq"
            ), need)
            n, size = self._delete(conn, [seq for seq, _ in victims])
            c.rows -= n
            c.bytes -= size
            reason = "rows" if over.rows else "bytes"
            for priority in DROP_ORDER:
                if need[0] <= 0 and need[1] <= 0:
                    break
                victims = _take(conn.execute(
                    "SELECT seq, size, type FROM events WHERE priority = ? "
                    "AND acked_at IS NULL ORDER BY seq",
                    (int(priority),),
                ), need)
                for _, t in victims:
                    dropped[(t, reason)] = dropped.get((t, reason), 0) + 1
                n, size = self._delete(conn, [seq for seq, _ in victims])
                c.rows -= n
                c.pending -= n
                c.bytes -= size
        if dropped:
            conn.executemany(
                "INSERT INTO drops (type, reason, count) VALUES (?, ?, ?) "
                "ON CONFLICT (type, reason) DO UPDATE SET count = count + excluded.count",
                [(t, r, n) for (t, r), n in dropped.items()],
            )
            log.warning(
                "outbox over its retention budget: dropped %d pending event(s) (%s)",
                sum(dropped.values()),
                ", ".join(f"{t} by {r}: {n}" for (t, r), n in dropped.items()),
            )

    @staticmethod
    def _resolve(subs: list[_Submission], results: list[list[Accepted]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[list[Accepted]],
                                                           list[Accepted]]]] = {}
        for sub, result in zip(subs, results, strict=True):
            w = sub.waiter
            if isinstance(w, asyncio.Future):
                by_loop.setdefault(w.get_loop(), []).append((w, result))
            elif w.set_running_or_notify_cancel():
                w.set_result(result)
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, pairs)

    @staticmethod
    def _fail(subs: Iterable[_Submission], err: BaseException) -> None:
        for sub in subs:
            w = sub.waiter
            if isinstance(w, asyncio.Future):
                with contextlib.suppress(RuntimeError):
                    w.get_loop().call_soon_threadsafe(_settle_error, w, err)
            elif not w.done() and w.set_running_or_notify_cancel():
                w.set_exception(err)


def _take(cur: sqlite3.Cursor, need: list[int]) -> list[tuple[int, str]]:
    """Take (seq, type) rows from ``cur`` until ``need`` = [rows, bytes] is met (both
    counted down in place)."""
    out: list[tuple[int, str]] = []
    for seq, size, type_ in cur:
        if need[0] <= 0 and need[1] <= 0:
            break
        out.append((seq, type_))
        need[0] -= 1
        need[1] -= size
    cur.close()
    return out


def _settle(pairs: list[tuple[asyncio.Future[list[Accepted]], list[Accepted]]]) -> None:
    for fut, result in pairs:
        if not fut.done():
            fut.set_result(result)


def _settle_error(fut: asyncio.Future[list[Accepted]], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)
