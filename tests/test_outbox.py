"""The SQLite outbox: acceptance is a commit, sequences are never reused, retention is
explicit, and foreign, corrupt, unwritable or full storage fails loudly and safely."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from storegate.adapters.outbox import Accepted, Outbox, OutboxReader, purge
from storegate.core.retention import RetentionBudget
from storegate.errors import (
    OutboxClosedError,
    OutboxFullError,
    OutboxNotOursError,
    OutboxUnavailableError,
)
from tests.support.outbox import (
    TOPICS,
    FakeClock,
    make_outbox,
    purchase,
    telemetry,
    visit,
)
from tests.support.tmpfs import tmpfs
from tests.support.waiting import wait_for


def test_accept_commits_with_monotonic_sequences_that_survive_restarts(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    box = make_outbox(db)
    box.open()
    first = box.accept_blocking([purchase(i) for i in range(5)])
    assert [a.sequence for a in first] == [1, 2, 3, 4, 5]
    assert len({a.id for a in first}) == 5
    box.ack([1, 2, 3, 4, 5])  # broker acknowledged everything: the table is empty
    box.accept_blocking([visit(0)])  # a commit after the acks
    box.close()
    assert box.session == 1

    reader = OutboxReader(db)
    rows = reader.fetch_after(0, 100)
    assert [r.sequence for r in rows] == [6]
    ce = json.loads(rows[0].payload)
    assert ce["sequence"] == "00000000000000000006"
    assert rows[0].topic == "storegate/v1/s1/g1/events/visit"
    reader.close()

    box = make_outbox(db)
    box.open()
    box.ack([6])
    again = box.accept_blocking([purchase(9)])
    box.close()
    assert again[0].sequence == 7  # never reused, even though every row was deleted
    assert box.session == 2


def test_the_commit_is_announced_before_the_producer_hears_accepted(tmp_path: Path) -> None:
    """``on_commit`` (the publisher's ``notify_committed``) runs before the producer's
    accept returns. The other way round, the gateway's shutdown (last events accepted,
    then the publisher stopped at once) found the publisher "drained" while it had not
    yet heard of them: they stayed in the outbox ("reported drained but 17 event(s) are
    still pending"), seen under load in the demo."""
    submitted: list[Future[list[Accepted]]] = []
    handed = threading.Event()
    resolved_when_announced: list[bool] = []

    def on_commit(sequence: int) -> None:
        assert handed.wait(10)
        resolved_when_announced.append(submitted[0].done())

    outbox = Outbox(tmp_path / "outbox.db", source=TOPICS.source,
                    topic_for=lambda t: TOPICS.events(t.kind), budget=RetentionBudget(),
                    clock=FakeClock(), on_commit=on_commit)
    outbox.open()
    try:
        submitted.append(outbox.submit([purchase(1)]))
        handed.set()
        [accepted] = submitted[0].result(10)
    finally:
        outbox.close()
    assert resolved_when_announced == [False]
    assert accepted.sequence == 1


def test_async_accept_from_many_tasks(tmp_path: Path) -> None:
    box = make_outbox(tmp_path / "o.db")
    box.open()

    async def go() -> list[int]:
        res = await asyncio.gather(*(box.accept(visit(i)) for i in range(2000)))
        return [a.sequence for a in res]

    seqs = asyncio.run(go())
    assert sorted(seqs) == list(range(1, 2001))
    assert box.depth == 2000
    box.close()
    with pytest.raises(OutboxClosedError):
        box.accept_blocking([visit(1)])


def test_retention_drops_lowest_priority_first_never_purchases(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    box = make_outbox(db, RetentionBudget(max_rows=100))
    box.open()
    box.accept_blocking([telemetry(i) for i in range(50)])
    box.accept_blocking([visit(i) for i in range(50)])
    box.accept_blocking([purchase(i) for i in range(30)])  # 130 rows: 30 + 1 % over
    reader = OutboxReader(db)
    stats = reader.stats()
    counts = reader.count_by_type()
    assert counts["storegate.gateway.telemetry.v1"] == 50 - 31
    assert counts["storegate.visit.entered.v1"] == 50
    assert counts["storegate.purchase.completed.v1"] == 30
    assert stats.dropped == {"storegate.gateway.telemetry.v1/rows": 31}
    # the oldest telemetry went first
    seqs = [e.sequence for e in reader.pending(200, "storegate.gateway.telemetry.v1")]
    assert seqs == list(range(32, 51))

    # Purchases beyond the budget: everything droppable goes, purchases all stay.
    box.accept_blocking([purchase(100 + i) for i in range(150)])
    counts = reader.count_by_type()
    assert counts == {"storegate.purchase.completed.v1": 180}
    assert reader.stats().dropped_total == 50 + 50
    box.close()
    reader.close()


def test_retention_by_bytes_and_age(tmp_path: Path) -> None:
    clock = FakeClock()
    db = tmp_path / "o.db"
    box = make_outbox(db, RetentionBudget(max_bytes=20_000, max_age_s=60), clock)
    box.open()
    box.accept_blocking([visit(i) for i in range(10)])
    clock.now += 61
    box.accept_blocking([purchase(0)])  # the visits are now over the age limit
    reader = OutboxReader(db)
    assert reader.count_by_type() == {"storegate.purchase.completed.v1": 1}
    assert reader.stats().dropped == {"storegate.visit.entered.v1/age": 10}
    clock.now += 2
    box.accept_blocking([telemetry(i) for i in range(200)])  # ~60 KB, over 20 KB
    st = reader.stats()
    assert st.bytes <= 20_000
    assert st.dropped["storegate.gateway.telemetry.v1/bytes"] > 100
    box.close()
    reader.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_refuses_a_foreign_file_without_touching_it(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    db.write_text("these are somebody's notes, not a database\n" * 100)
    before = _sha(db)
    with pytest.raises(OutboxNotOursError, match="not a storegate outbox.*refusing"):
        make_outbox(db).open()
    assert _sha(db) == before
    assert not (tmp_path / "o.db-wal").exists()


def test_refuses_another_applications_sqlite_database(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE customers (name TEXT)")
    conn.execute("INSERT INTO customers VALUES ('precious')")
    conn.commit()
    conn.close()
    before = _sha(db)
    with pytest.raises(OutboxNotOursError, match="another application"):
        make_outbox(db).open()
    assert _sha(db) == before


def test_refuses_a_corrupt_outbox(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    box = make_outbox(db)
    box.open()
    box.accept_blocking([purchase(i, items=20) for i in range(200)])
    box.close()
    raw = bytearray(db.read_bytes())
    for off in range(4096 * 2, len(raw), 4096):  # scribble over every page but the first
        raw[off + 8 : off + 200] = os.urandom(192)
    db.write_bytes(bytes(raw))
    before = _sha(db)
    with pytest.raises(OutboxNotOursError, match="corrupt"):
        make_outbox(db).open()
    assert _sha(db) == before


def test_refuses_a_directory_at_the_path(tmp_path: Path) -> None:
    (tmp_path / "o.db").mkdir()
    with pytest.raises(OutboxNotOursError, match="not a regular file"):
        make_outbox(tmp_path / "o.db").open()


def test_unwritable_storage_path_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutboxUnavailableError, match="cannot create storage directory"):
        make_outbox(tmp_path / "file" / "sub" / "o.db").open()


@pytest.mark.e2e
def test_unwritable_storage_path_read_only_filesystem(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        with pytest.raises(OutboxUnavailableError, match="cannot write in storage directory"):
            make_outbox(ro / "o.db").open()


def test_outbox_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """Purchases and loyalty ids at rest: no other local user may read them."""
    db = tmp_path / "new-dir" / "o.db"
    files = [db, *(db.with_name(db.name + s) for s in ("-wal", "-shm", ".lock"))]
    old = os.umask(0o022)  # what a shell or service usually has
    try:
        box = make_outbox(db)
        box.open()
        box.accept_blocking([purchase(1)])
        assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} \
            == {f.name: "0o600" for f in files}
        assert db.parent.stat().st_mode & 0o077 == 0  # a directory it made: owner only
        box.close()
        # an outbox an older storegate left readable is closed up when opened
        for f in (db, files[3]):
            f.chmod(0o644)
        box = make_outbox(db)
        box.open()
        box.accept_blocking([purchase(2)])
        assert all(f.stat().st_mode & 0o077 == 0 for f in files)
        box.close()
    finally:
        os.umask(old)


def test_second_writer_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    box = make_outbox(db)
    box.open()
    try:
        with pytest.raises(OutboxUnavailableError, match="in use by another storegate"):
            make_outbox(db).open()
    finally:
        box.close()


@pytest.mark.e2e
def test_disk_full_fails_loudly_and_corrupts_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "2m") as disk:
        db = disk / "o.db"
        box = make_outbox(db)
        box.open()
        accepted = box.accept_blocking([purchase(i) for i in range(20)])
        ballast = disk / "ballast"
        with ballast.open("wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        failed = 0
        for i in range(2000):  # WAL pages already allocated may take a few more first
            try:
                accepted += box.accept_blocking([purchase(100 + i, items=30)])
            except OutboxFullError as exc:
                assert "NOT accepted" in str(exc)
                failed += 1
                break
        assert failed == 1, "filling the disk never made accepting fail"
        assert box.last_error is not None
        assert "full" in box.last_error
        ballast.unlink()
        after = box.accept_blocking([purchase(9999)])
        # the failed commit's sequence numbers were never handed out: no gap
        assert after[0].sequence == accepted[-1].sequence + 1
        box.close()
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        reader = OutboxReader(db)
        stored = {r.sequence: json.loads(r.payload) for r in reader.fetch_after(0, 10_000)}
        reader.close()
        for a in [*accepted, *after]:
            assert stored[a.sequence]["id"] == a.id


def test_purge_counts_as_dropped_and_refuses_while_running(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    box = make_outbox(db)
    box.open()
    box.accept_blocking([telemetry(i) for i in range(5)] + [purchase(1)])
    with pytest.raises(OutboxUnavailableError, match="in use"):
        purge(db, event_type=None)
    box.close()
    assert purge(db, event_type="storegate.gateway.telemetry.v1") == 5
    reader = OutboxReader(db)
    assert reader.count_by_type() == {"storegate.purchase.completed.v1": 1}
    assert reader.stats().dropped == {"storegate.gateway.telemetry.v1/purge": 5}
    reader.close()


def test_a_reader_racing_the_creation_never_calls_the_outbox_foreign(tmp_path: Path) -> None:
    """`storegate status` may read while the gateway creates its outbox: the schema and
    the application id appear in one transaction and are read in one snapshot."""
    import threading

    from storegate.errors import OutboxNotOursError, OutboxUnavailableError

    foreign = 0
    for i in range(40):
        db = tmp_path / f"o{i}.db"
        stop = threading.Event()
        opened = [0]

        def poll(db: Path = db, stop: threading.Event = stop, opened: list[int] = opened,
                 ) -> None:
            nonlocal foreign
            while not stop.is_set():
                try:
                    with OutboxReader(db) as r:
                        r.stats()
                    opened[0] += 1
                except OutboxUnavailableError:
                    pass
                except OutboxNotOursError:
                    foreign += 1

        t = threading.Thread(target=poll)
        t.start()
        o = make_outbox(db)
        o.open()
        wait_for(lambda opened=opened: opened[0] > 0, 10, "the reader had its look")
        o.close()
        stop.set()
        t.join()
    assert foreign == 0
