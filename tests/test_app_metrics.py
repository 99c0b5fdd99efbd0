"""The app inbox's counters in the gateway's Prometheus /metrics: a staged commit that
met a locked inbox file (``staged_busy_total``, from the app channel's status) and a
GET /app/offers that failed on the fast path (``failed_total``, passed to the route)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from storegate.app.status import AppChannelStatus
from tests.support.http import METRICS_TOKEN, NOW, bearer, customer_token
from tests.test_app_channel import ALICE, BOB, World, offer
from tests.test_http_ops import _samples


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.inbox.close()


def _metrics(w: World) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    client = TestClient(w.app, base_url="https://testserver")
    return _samples(client.get("/metrics", headers=bearer(METRICS_TOKEN)).text)


def test_a_staged_commit_on_a_locked_inbox_is_counted_in_metrics(world: World) -> None:
    other = sqlite3.connect(world.inbox.path, isolation_level=None)  # another process's

    async def run() -> None:
        other.execute("BEGIN IMMEDIATE")
        world.channel._put(offer(ALICE, 1))
        flushing = asyncio.create_task(world.channel.flush())
        for _ in range(10_000):
            if world.channel.staged_busy_total == 1:
                break
            await asyncio.sleep(0.001)
        other.execute("ROLLBACK")
        assert await flushing == 1

    try:
        asyncio.run(run())
    finally:
        other.close()
    snap = world.channel.snapshot()
    assert snap.staged_busy_total == 1
    # the status travels as JSON (the status file): the counter survives the round trip
    assert AppChannelStatus.from_json(dataclasses.asdict(snap)).staged_busy_total == 1
    world.gateway.current = dataclasses.replace(world.gateway.current, app_channel=snap)
    assert _metrics(world)[("storegate_app_staged_busy_total", ())] == 1


def test_a_fast_path_failure_is_counted_in_metrics(world: World) -> None:
    before = _metrics(world)
    assert before[("storegate_app_fast_offers_failed_total", ())] == 0
    world.inbox.append([offer(BOB, 7)], NOW)
    world.inbox._db.execute("UPDATE offers SET body = '[1,2]' WHERE customer = ?", (BOB,))
    client = TestClient(world.app, base_url="https://testserver",
                        raise_server_exceptions=False)
    assert client.get("/app/offers", headers=bearer(customer_token(BOB))).status_code == 500
    after = _metrics(world)
    assert after[("storegate_app_fast_offers_failed_total", ())] == 1
    assert after[("storegate_app_fast_offers_answered_total", ())] == 0
    ok = client.get("/app/offers", headers=bearer(customer_token(ALICE)))
    assert ok.status_code == 200
    assert _metrics(world)[("storegate_app_fast_offers_answered_total", ())] == 1
