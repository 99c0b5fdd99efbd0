"""Erasure in a full outbox: what the wipe costs, and which wipe.

A 100,000-row outbox (synchronous FULL, as the gateway runs it), one customer named in
100 of its events (half sent and kept for replay). Measured, each on a fresh copy:

- ``vacuum``: what storegate does: rewrite the rows, ``VACUUM``, truncate the WAL;
- ``secure_delete``: the rows rewritten with ``PRAGMA secure_delete = ON`` for that
  transaction and the WAL truncated, no rebuild (cheaper, but it only overwrites what
  this transaction frees: bytes of events deleted earlier stay in free pages on a
  SQLite built without SQLITE_SECURE_DELETE; tests/test_erasure.py shows it);
- the search for 10,000 customers (the Python pass) against 1 (SQLite's instr).

The writer thread is busy for the whole redaction: that is how long event commits wait.

    .venv/bin/python bench/bench_erasure.py      # ~1 minute
"""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from storegate.adapters.outbox import Outbox
from storegate.adapters.outbox.redaction import redact
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.retention import RetentionBudget

ROWS = 100_000
TARGET_EVERY = 1_000  # 100 events of the erased customer
AT = ev.rfc3339(1_795_000_000.0)


def build(path: Path) -> None:
    ob = Outbox(path, source="storegate://s1/g1", topic_for=lambda t: f"e/{t.kind}",
                budget=RetentionBudget(max_rows=10 * ROWS, max_bytes=1 << 32),
                clock=time.time, synchronous="full")
    ob.open()
    drafts = [ev.EventDraft(ev.VISIT_ENTERED, f"visit/v{i}", time.time(), p.VisitEntered(
        visit_id=f"v{i:08d}", customer="cust-erased" if i % TARGET_EVERY == 0 else f"c{i}",
        zone="shoes", entered_at=AT)) for i in range(ROWS)]
    for i in range(0, ROWS, 5000):
        ob.accept_blocking(drafts[i:i + 5000])
    ob.ack(list(range(1, ROWS // 2)))
    ob.accept_blocking(drafts[:1])  # the acknowledgements committed
    ob.close()


def run(src: Path, how: str, customers: list[str]) -> tuple[float, int]:
    work = Path(tempfile.mkdtemp())
    try:
        db = work / "o.db"
        shutil.copy(src, db)
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        t0 = time.perf_counter()
        if how == "vacuum":
            r = redact(conn, customers, [])
            n = r.unsent + r.replay
        else:
            conn.execute("PRAGMA secure_delete = ON")
            rows = conn.execute("SELECT seq, payload FROM events WHERE instr(payload, ?) > 0",
                                (b"cust-erased",)).fetchall()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("UPDATE events SET payload = ? WHERE seq = ?", [
                (bytes(pl).replace(b'"cust-erased"', b"null"), s) for s, pl in rows])
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            n = len(rows)
        dt = time.perf_counter() - t0
        conn.close()
        return dt, n
    finally:
        shutil.rmtree(work)


def main() -> None:
    base = Path(tempfile.mkdtemp())
    src = base / "outbox.db"
    build(src)
    print(f"outbox: {ROWS} rows, {src.stat().st_size / 1e6:.1f} MB")
    many = ["cust-erased", *(f"x{i}" for i in range(9_999))]
    for how, customers in (("secure_delete", ["cust-erased"]), ("vacuum", ["cust-erased"]),
                           ("vacuum", many)):
        runs = [run(src, how, customers) for _ in range(3)]
        med = statistics.median(dt for dt, _ in runs)
        print(f"{how:14s} {len(customers):6d} customer(s): {runs[0][1]} events redacted, "
              f"median {med * 1000:.0f} ms (writer busy that long)")
    shutil.rmtree(base)


if __name__ == "__main__":
    main()
