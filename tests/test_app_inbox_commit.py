"""The app inbox's staged writes (adapters/app_inbox.py ``stage``/``commit``, used by the
app channel's writer): nothing of a transaction is readable or published before its
commit (synchronous FULL: the fsync), a failed commit leaves nothing and publishes
nothing, a process killed after a push finds the pushed message on restart, and the
count held stays exact without counting the table."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storegate.adapters.app_inbox import AppInbox
from storegate.app.app_channel import topic
from tests.support.http import NOW
from tests.test_app_channel import ALICE, BOB, World, offer


def test_a_staged_write_is_invisible_until_committed(tmp_path: Path) -> None:
    inbox = AppInbox(tmp_path / "inbox.db")
    other = sqlite3.connect(tmp_path / "inbox.db")
    try:
        assert inbox._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        staged = inbox.stage([offer(ALICE, 1), offer(BOB, 2)], NOW)
        assert [m.customer for m in staged.messages] == [ALICE, BOB]
        assert other.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
        assert inbox.messages == 0  # the count moves with the commit only
        inbox.commit(staged)
        assert other.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2
        assert inbox.messages == 2 and inbox.appended_total == 2
        staged = inbox.stage([offer(ALICE, 3)], NOW)
        inbox.rollback()
        assert inbox.count() == 2 and inbox.messages == 2
    finally:
        other.close()
        inbox.close()


def test_the_total_bound_keeps_an_exact_count(tmp_path: Path) -> None:
    inbox = AppInbox(tmp_path / "inbox.db", max_total=5)
    try:
        for n in range(1, 9):
            inbox.append([offer(f"cust-{n}", n)], NOW)
            assert inbox.messages == inbox.count() == min(n, 5)
        assert inbox.dropped_over_bound_total == 3
        inbox.prune(NOW + 7200)  # all expired
        assert inbox.messages == inbox.count() == 0
    finally:
        inbox.close()
    reopened = AppInbox(tmp_path / "inbox.db", max_total=5)
    assert reopened.messages == 0
    reopened.close()


def test_the_push_follows_the_commit_and_a_failed_commit_shows_nothing(
        tmp_path: Path) -> None:
    w = World(tmp_path)
    order: list[str] = []
    real_commit = w.inbox.commit

    def commit(staged):  # type: ignore[no-untyped-def]
        order.append("commit-start")
        real_commit(staged)
        order.append("committed")

    w.inbox.commit = commit  # type: ignore[method-assign]

    async def run() -> None:
        sub = w.hub.subscribe(topic(ALICE))
        w.channel._put(offer(ALICE, 1))
        assert await w.channel.flush() == 1
        message = sub._queue.get_nowait()
        assert message is not None and message.cursor == 1
        order.append("seen")
        assert order == ["commit-start", "committed", "seen"]

        def failing(staged):  # type: ignore[no-untyped-def]
            raise sqlite3.OperationalError("disk I/O error")

        w.inbox.commit = failing  # type: ignore[method-assign]
        w.channel._put(offer(ALICE, 2))
        assert await w.channel.flush() == 0
        assert sub._queue.empty() and w.channel.errors_total == 1
        w.inbox.rollback()  # what the real commit does when COMMIT fails
        w.inbox.commit = real_commit  # type: ignore[method-assign]
        assert [m.cursor for m in await w.channel.since(ALICE, 0)] == [1]
        w.channel._put(offer(ALICE, 3))  # the connection is usable again
        assert await w.channel.flush() == 1
        assert [m.data["offer_id"] for m in await w.channel.since(ALICE, 1)] == [
            offer(ALICE, 3).offer_id]

    try:
        asyncio.run(run())
    finally:
        w.inbox.close()


_CRASH = textwrap.dedent("""
    import asyncio, os, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from tests.test_app_channel import ALICE, World, offer
    from storegate.app.app_channel import topic

    async def main() -> None:
        w = World(Path(sys.argv[1]))
        sub = w.hub.subscribe(topic(ALICE))
        task = asyncio.create_task(w.channel.run(asyncio.Event()))
        w.channel._put(offer(ALICE, 7))
        message = await sub.next(120)
        print(message.cursor, message.data["offer_id"], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint
        await task

    asyncio.run(main())
""")


@pytest.mark.e2e
def test_an_offer_seen_live_is_there_after_the_process_is_killed(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", _CRASH, str(tmp_path), str(repo)],
                       check=False, capture_output=True, text=True, timeout=240,
                       env={**os.environ, "PYTHONPATH": str(repo)})
    assert r.returncode == -9, (r.returncode, r.stdout, r.stderr[-2000:])
    cursor, offer_id = r.stdout.split()
    inbox = AppInbox(tmp_path / "outbox.inbox.db")
    try:
        [held] = inbox.since(ALICE, 0)
        assert (held.cursor, held.data["offer_id"]) == (int(cursor), offer_id)
    finally:
        inbox.close()
