"""The gateway's collector tending (app/collector.py ``tend``): from its start (no
settle wait: a restarted gateway's phones reconnect at once), a full collection's
survivors are frozen as it ends and full collections come every ``FULL_EVERY`` young
ones; when it stops, the thresholds are CPython's again and nothing stays frozen."""

from __future__ import annotations

import asyncio
import gc

from storegate.app import collector


def test_tending_freezes_survivors_from_the_start_and_leaves_no_trace() -> None:
    before = gc.get_threshold()

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(collector.tend(stop, settle_s=3600))
        await asyncio.sleep(0)  # started, still settling
        assert gc.get_threshold() == (before[0], before[1], collector.FULL_EVERY)
        kept = [[n] for n in range(1000)]  # connections opened while it settles
        gc.collect()
        seen = {id(o) for o in gc.get_objects()}  # every generation but the frozen one
        assert all(gc.is_tracked(k) and id(k) not in seen for k in kept)
        stop.set()
        await task

    asyncio.run(run())
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert collector._note_full not in gc.callbacks
