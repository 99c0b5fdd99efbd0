"""The review of GET /app/offers' fast path and the app inbox's staged writes (issue 12):
an erasure or withdrawal under way serves nothing of the customer's from any cache; a
locked inbox file never stalls the event loop and loses nothing; a refused token is
verified once; a failure inside the fast path is answered and measured by the route; a
campaign title that is no text is refused where it enters; a staged transaction is
never left open, nor published out of order, whatever happens to its writer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from storegate.adapters.app_inbox import InboxMessage
from storegate.app.app_channel import AppChannel
from storegate.app.erasure import erase
from storegate.app.http import security
from storegate.app.http.server import build_app
from storegate.core.commands import CommandRejected, validate_payload
from tests.support.http import METRICS_TOKEN, NOW, bearer, customer_token, http_settings
from tests.test_app_channel import ALICE, BOB, World, offer


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.inbox.close()


def _client(app: Any) -> httpx.AsyncClient:
    """Requests on the test's own loop (the app channel's locks belong to it)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="https://testserver")


async def _turns(until: Any, what: str, limit: int = 10_000) -> None:
    """Let the loop run until ``until()`` holds (a positive signal, no sleep)."""
    for _ in range(limit):
        if until():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


# --- 1. an erasure under way: nothing of theirs from the kept bodies -----------------------


def test_a_pending_erasure_serves_nothing_kept_and_keeps_nothing(world: World) -> None:
    mine = offer(ALICE, 1)
    world.inbox.append([mine, offer(BOB, 2)], NOW)
    bodies = world.app.state.fast.bodies
    alice = bearer(customer_token(ALICE))

    async def run() -> None:
        async with _client(world.app) as fast:
            assert mine.token in (await fast.get("/app/offers", headers=alice)).text
            assert mine.token in (await fast.get("/app/offers", headers=alice)).text
            assert bodies.hits_total == 1  # kept, answered from memory
            gate = threading.Event()  # a thread job holds the inbox (a backlog, a prune)
            busy = asyncio.create_task(world.channel._in_thread(gate.wait))
            try:
                await _turns(world.channel._db_busy.locked, "the thread job")
                erasing = asyncio.create_task(world.channel.erase([ALICE]))  # queued
                await _turns(lambda: world.channel.withheld(ALICE), "the erasure begun")
                r = await fast.get("/app/offers", headers=alice)
                assert (r.status_code, r.json()) == (200, {"offers": []})
                assert mine.token not in r.text and ALICE not in bodies._entries
                assert world.app.state.fast.answered_total == 3  # answered, not kept
            finally:
                gate.set()
            await busy
            assert await erasing >= 1
            assert not world.channel.withheld(ALICE)  # done: readable again (empty)
            r = await fast.get("/app/offers", headers=alice)
            assert r.json() == {"offers": []}
            bob = await fast.get("/app/offers", headers=bearer(customer_token(BOB)))
            assert len(bob.json()["offers"]) == 1  # another customer's list untouched

    asyncio.run(run())


def test_the_full_erasure_withholds_before_its_first_disk_step(tmp_path: Path) -> None:
    from tests import test_erasure as te  # the box with every other store

    box = te.Box(tmp_path)
    box.fill()
    w = World(tmp_path / "app")
    w.inbox.append([offer(te.TARGET, 1)], NOW)
    seen: list[bool] = []
    real_remove = box.identities.remove

    def remove(names: list[str]) -> int:  # the first disk step (a worker thread)
        seen.append(w.channel.withheld(te.TARGET))
        return real_remove(names)

    box.identities.remove = remove  # type: ignore[method-assign]
    targets = dataclasses.replace(box.targets(), app_channel=w.channel)
    try:
        counts = asyncio.run(erase([te.TARGET], targets, te.T0 + 5000))
        assert counts.errors == [] and seen == [True]
        assert w.inbox.offers(te.TARGET, NOW) == [] and not w.channel.withheld(te.TARGET)
    finally:
        box.close()
        w.inbox.close()


def recorded_publishes(world: World) -> list[InboxMessage]:
    """Every batch the app channel publishes, in order, appended to the list returned
    (the channel still publishes them)."""
    published: list[InboxMessage] = []
    real_publish = world.channel._publish

    def publish(messages: list[InboxMessage]) -> None:
        published.extend(messages)
        real_publish(messages)

    world.channel._publish = publish  # type: ignore[method-assign]
    return published


# --- 2. a locked inbox file: the loop never waits in SQLite's busy timeout ----------------


def test_a_write_lock_held_elsewhere_neither_stalls_the_loop_nor_drops(world: World) -> None:
    other = sqlite3.connect(world.inbox.path, isolation_level=None)  # another process's
    published = recorded_publishes(world)

    async def run() -> None:
        other.execute("BEGIN IMMEDIATE")
        world.channel._put(offer(ALICE, 1))
        flushing = asyncio.create_task(world.channel.flush())
        # the loop runs on while the write waits for the lock in a worker thread;
        # without that, staging blocked the loop until SQLite gave up ("locked")
        await _turns(lambda: world.channel.staged_busy_total == 1
                     and world.channel._db_busy.locked(), "the write waiting in a thread")
        assert not flushing.done()
        other.execute("ROLLBACK")  # the other connection lets go
        assert await flushing == 1

    try:
        asyncio.run(run())
    finally:
        other.close()
    assert world.channel.errors_total == 0 and world.inbox.count(ALICE) == 1
    assert [m.customer for m in published] == [ALICE]


# --- 3. a refused token: verified once, refused the route's way ------------------------


def test_a_refused_token_is_verified_once(world: World, monkeypatch: pytest.MonkeyPatch,
                                          ) -> None:
    calls: list[str] = []
    real = security.verify_app_token

    def counting(token: str, **kw: Any) -> Any:
        calls.append(token)
        return real(token, **kw)

    monkeypatch.setattr(security, "verify_app_token", counting)
    head, body, sig = customer_token(ALICE).split(".")
    forged = f"{head}.{body}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"
    routed_app = build_app(world.gateway, http_settings(), world.clock, fast_paths=False)
    fast, routed = world.client(), TestClient(routed_app, base_url="https://testserver")
    a = fast.get("/app/offers", headers=bearer(forged))
    assert len(calls) == 1  # the fast path's verdict reached the route
    b = routed.get("/app/offers", headers=bearer(forged))
    assert len(calls) == 2
    assert (a.status_code, a.content, sorted(a.headers.multi_items())) == (
        b.status_code, b.content, sorted(b.headers.multi_items()))
    assert (a.status_code, a.json()) == (401, {"detail": "token_bad_signature"})
    assert a.headers["www-authenticate"] == "Bearer"
    assert world.app.state.auth.rejected == routed_app.state.auth.rejected == {
        "token_bad_signature": 1}
    # another token in the same request's state is not taken for the refused one
    good = customer_token(ALICE)
    assert fast.get("/app/offers", headers=bearer(good)).status_code == 200


# --- 4. a failure inside the fast path: the route's 500, measured ------------------------


def test_a_failure_in_the_fast_path_is_answered_and_measured(world: World) -> None:
    world.inbox.append([offer(BOB, 7)], NOW)
    world.inbox._db.execute("UPDATE offers SET body = '[1,2]' WHERE customer = ?", (BOB,))
    client = TestClient(world.app, base_url="https://testserver",
                        raise_server_exceptions=False)
    r = client.get("/app/offers", headers=bearer(customer_token(BOB)))
    assert r.status_code == 500
    assert world.app.state.fast.failed_total == 1
    assert world.app.state.fast.answered_total == 0
    metrics = client.get("/metrics", headers=bearer(METRICS_TOKEN)).text
    line = next(x for x in metrics.splitlines() if x.startswith(
        "storegate_http_request_duration_seconds_count") and '"/app/offers"' in x
        and 'status="500"' in x)
    assert line.endswith(" 1.0")


# --- 5. a campaign title that is no text ----------------------------------------------------


@pytest.mark.parametrize("field", ["title", "text"])
def test_a_lone_surrogate_in_campaign_content_is_refused(field: str) -> None:
    """JSON may spell one (``"\\ud800"``, json.loads accepts it); pydantic's ``str``
    refuses it (no UTF-8 encodes it), so the command is refused and counted as invalid
    before any offer could carry it to a phone's list (where serialising it is a 500)."""
    content = {"title": "Shoes", "text": "ok", field: "x\ud800y"}
    payload = json.loads(json.dumps({"op": "upsert", "campaigns": [{
        "id": "shoes", "version": 1, "trigger": {"kind": "store_entered"},
        "content": content}]}))
    assert payload["campaigns"][0]["content"][field] == "x\ud800y"
    r = validate_payload("campaigns", payload, now=NOW, command_id="c1")
    assert isinstance(r, CommandRejected) and r.reason == "invalid", r
    assert r.detail.startswith(f"campaigns.0.content.{field}: ") and "unicode" in r.detail
    content[field] = "x\U0001f600y"  # a pair is a character: accepted
    ok = validate_payload("campaigns", {**payload, "campaigns": [
        {**payload["campaigns"][0], "content": content}]}, now=NOW, command_id="c2")
    assert not isinstance(ok, CommandRejected), ok


# --- 6. a staged transaction is never left open ----------------------------------------------


def test_a_commit_that_cannot_be_handed_to_a_thread_rolls_back(world: World) -> None:
    async def run() -> None:
        await asyncio.get_running_loop().shutdown_default_executor()
        world.channel._put(offer(ALICE, 1))
        with pytest.raises(RuntimeError):
            await world.channel.flush()

    asyncio.run(run())
    assert not world.channel._db_busy.locked()  # the connection given back
    assert not world.inbox._db.in_transaction  # rolled back, not left open
    assert world.inbox.count(ALICE) == 0
    world.inbox.append([offer(BOB, 2)], NOW)  # and usable
    assert world.inbox.count(BOB) == 1


def test_a_cancelled_writer_still_commits_and_publishes_what_it_staged(world: World,
                                                                       ) -> None:
    published = recorded_publishes(world)

    async def run() -> None:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        loop = asyncio.get_running_loop()
        loop.set_default_executor(pool)
        gate = threading.Event()
        blocker = loop.run_in_executor(None, gate.wait)  # the only worker, busy
        try:
            world.channel._put(offer(ALICE, 1))
            flushing = asyncio.create_task(world.channel.flush())
            await _turns(lambda: world.inbox._db.in_transaction, "the batch staged")
            flushing.cancel()  # its commit job is queued, not started
            with pytest.raises(asyncio.CancelledError):
                await flushing
        finally:
            gate.set()
        await blocker
        await _turns(lambda: bool(published), "the staged batch published")
        assert not world.channel._db_busy.locked()

    asyncio.run(run())
    assert world.inbox.count(ALICE) == 1 and not world.inbox._db.in_transaction
    assert [m.customer for m in published] == [ALICE]


# --- 7. published in commit order ---------------------------------------------------------


class _Recorded:
    """The connection's lock, recording when it is given back."""

    def __init__(self, events: list[str]) -> None:
        self._lock = threading.Lock()
        self._events = events

    def acquire(self, blocking: bool = True) -> bool:
        return self._lock.acquire(blocking)

    def release(self) -> None:
        self._events.append("released")
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_a_batch_is_scheduled_for_publication_before_the_connection_is_free(
        world: World) -> None:
    events: list[str] = []
    channel: AppChannel = world.channel
    channel._db_busy = _Recorded(events)  # type: ignore[assignment]

    async def run() -> None:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe

        def scheduled(cb: Any, *args: Any, **kw: Any) -> Any:
            if cb == channel._publish:  # (the pool's result comes this way too)
                events.append("scheduled")
            return real(cb, *args, **kw)

        loop.call_soon_threadsafe = scheduled  # type: ignore[method-assign]
        channel._put(offer(ALICE, 1))
        assert await channel.flush() == 1
        # a later batch may stage once it is free: this one's push is queued already
        assert events == ["scheduled", "released"]

    asyncio.run(run())
