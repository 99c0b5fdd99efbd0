"""No silent loss between the sources and the outbox: events the outbox refuses are held
in memory under a bound that never drops a purchase, and retried until accepted.

The disk-full case end to end (a real lane, a real full filesystem) is in
test_pos_live.py; here the outbox refuses because it is not open yet."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from storegate.adapters.outbox import OutboxReader
from storegate.app.intake import Intake
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.backoff import Backoff
from storegate.core.holding import HeldEvents
from tests.support.outbox import make_outbox, purchase, telemetry, visit


def test_held_events_never_drop_purchases_and_count_what_they_drop() -> None:
    held = HeldEvents(max_droppable=3)
    assert held.hold([purchase(i) for i in range(50)]) == 0  # purchases: not bounded
    assert held.hold([visit(1), telemetry(1), visit(2)]) == 0
    assert held.hold([telemetry(2), visit(3)]) == 2  # over by two: telemetry first...
    assert held.dropped == {"storegate.gateway.telemetry.v1": 2}
    assert held.hold([visit(4)]) == 1  # ...then the oldest visit
    assert held.dropped["storegate.visit.entered.v1"] == 1
    assert len(held) == 53 and held.critical == 50 and held.dropped_total == 3
    first = held.take(2)
    assert [d.subject for d in first] == ["receipt/R0", "receipt/R1"]
    held.put_back(first)  # a failed retry: back at the front, in order
    everything = held.take(1000)
    assert [d.subject for d in everything[:3]] == ["receipt/R0", "receipt/R1", "receipt/R2"]
    assert [d.subject for d in everything[50:]] == ["visit/v2", "visit/v3", "visit/v4"]
    assert len(held) == 0 and held.critical == 0
    assert held.held_total == 56


def test_refused_events_are_held_and_accepted_in_order_once_the_outbox_accepts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "o.db"
    box = make_outbox(db)
    intake = Intake(box, max_droppable=1, backoff=Backoff(0.01, 0.05), uniform01=lambda: 0.0)
    caplog.set_level(logging.WARNING, logger="storegate.app.intake")

    async def main() -> None:
        intake.bind(asyncio.get_running_loop())
        stop = asyncio.Event()
        retry = asyncio.create_task(intake.run(stop))
        # not open: the outbox refuses (as when closing or when the disk is full)
        intake.submit([purchase(1), visit(1)])
        intake.submit([purchase(2)])
        intake.submit([telemetry(1), visit(2)])  # over the bound of 1: telemetry, visit go
        assert intake.pending == 3 and intake.pending_purchases == 2
        assert intake.dropped == {"storegate.gateway.telemetry.v1": 1,
                                  "storegate.visit.entered.v1": 1}
        box.open()
        while intake.pending:  # the retry loop takes them in
            await asyncio.sleep(0.01)
        intake.submit([purchase(3)])  # and new events go straight in again
        assert await intake.drain(10) == 0
        stop.set()
        await retry

    asyncio.run(asyncio.wait_for(main(), 30))
    box.close()
    with OutboxReader(db) as reader:
        subjects = [json.loads(e.payload)["subject"] for e in reader.fetch_after(0, 100)]
    assert subjects == ["receipt/R1", "receipt/R2", "visit/v2", "receipt/R3"]
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("not accepting" in m for m in warnings) == 1  # once, not per event
    assert sum("accepts again" in m for m in warnings) == 1
    assert intake.snapshot()["held_total"] == 5


def test_what_is_still_refused_at_shutdown_is_logged_in_full(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    box = make_outbox(tmp_path / "o.db")  # never opened: refuses to the end
    intake = Intake(box, backoff=Backoff(0.01, 0.02), uniform01=lambda: 0.0)

    async def main() -> int:
        intake.bind(asyncio.get_running_loop())
        intake.submit([purchase(7), visit(7)])
        return await intake.drain(0.2)

    assert asyncio.run(main()) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("2 event(s) could not be accepted" in m for m in errors)
    assert any('"receipt":"R7"' in m for m in errors)  # the journal keeps the purchase


def test_erasure_rewrites_the_events_held_in_memory(tmp_path: Path) -> None:
    """Review 11, item 2: events held while the outbox refuses are not in the outbox
    its redaction reaches: the intake rewrites them in place, in order, and what is
    accepted later names nobody erased."""
    db = tmp_path / "o.db"
    box = make_outbox(db)
    intake = Intake(box, backoff=Backoff(0.01, 0.05), uniform01=lambda: 0.0)
    card = "ps1:" + "c1" * 16
    theirs = purchase(1)
    assert isinstance(theirs.data, p.PurchaseCompleted)
    theirs = ev.EventDraft(theirs.type, theirs.subject, theirs.time, theirs.data.model_copy(
        update={"customer": "c1", "loyalty_id": card}))

    async def main() -> None:
        intake.bind(asyncio.get_running_loop())
        intake.submit([visit(1), theirs, visit(2)])  # refused: the outbox is not open
        assert intake.redact(["c1"], [card]) == 2
        assert intake.pending == 3 and intake.pending_purchases == 1
        box.open()
        assert await intake.drain(10) == 0

    asyncio.run(asyncio.wait_for(main(), 30))
    box.close()
    with OutboxReader(db) as reader:
        stored = [json.loads(e.payload) for e in reader.fetch_after(0, 100)]
    assert [e["subject"] for e in stored] == ["visit/v1", "receipt/R1", "visit/v2"]
    assert stored[0]["data"]["customer"] is None and stored[2]["data"]["customer"] == "c2"
    assert stored[1]["data"]["customer"] is None and stored[1]["data"]["loyalty_id"] is None
