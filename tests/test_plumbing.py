"""The shared adapter plumbing, directly: the thread-to-loop hand-off, sleep-until-stopped
and the one-line error describer (the serial tap and the node client use them end to end).
"""

from __future__ import annotations

import asyncio
import errno
import threading
import time

from bleak.exc import BleakDBusError

from storegate.adapters.plumbing import (
    LoopHandoff,
    describe_error,
    sleep_until_stopped,
    wait_for_either,
)

# --- LoopHandoff -------------------------------------------------------------------------


class Collector:
    """The loop side of a hand-off, as an adapter writes it: drain takes everything."""

    def __init__(self, max_size: int = 1000) -> None:
        self.handoff: LoopHandoff[int] = LoopHandoff(self.drain, max_size=max_size)
        self.batches: list[list[int]] = []
        self.shed: list[int] = []
        self.drain_threads: set[int] = set()

    def drain(self) -> None:
        self.drain_threads.add(threading.get_ident())
        batch, shed = self.handoff.take()
        self.batches.append(batch)
        self.shed.append(shed)

    @property
    def items(self) -> list[int]:
        return [i for b in self.batches for i in b]


def test_items_from_another_thread_arrive_in_order_on_the_loop() -> None:
    c = Collector(max_size=100_000)

    async def main() -> None:
        c.handoff.loop = asyncio.get_running_loop()
        producer = threading.Thread(
            target=lambda: [c.handoff.put(range(i, i + 10)) for i in range(0, 5000, 10)])
        producer.start()
        await asyncio.to_thread(producer.join)
        while len(c.items) < 5000:  # a drain may still be queued behind the join
            await asyncio.sleep(0.001)

    asyncio.run(main())
    assert c.items == list(range(5000))
    assert c.drain_threads == {threading.get_ident()}  # drained on the loop's thread
    assert all(c.batches) and sum(c.shed) == 0 and c.handoff.shed_total == 0


def test_items_queued_before_the_drain_runs_join_one_batch() -> None:
    c = Collector()
    loop = asyncio.new_event_loop()
    try:
        c.handoff.loop = loop  # set, but not running yet: drains wait in its queue
        for i in range(3):
            assert c.handoff.put([i]) == 0
        loop.run_until_complete(asyncio.sleep(0))
        assert c.batches == [[0, 1, 2]]  # one wake-up for three puts
        c.handoff.put([3])  # after a take, the next put schedules again
        loop.run_until_complete(asyncio.sleep(0))
        assert c.batches == [[0, 1, 2], [3]]
    finally:
        loop.close()


def test_beyond_max_size_the_oldest_are_shed_and_counted_once() -> None:
    c = Collector(max_size=3)  # no loop: nothing drains, the owner takes
    assert c.handoff.put([1, 2, 3, 4]) == 1
    assert c.handoff.put([5]) == 1
    assert c.handoff.shed_total == 2
    assert c.handoff.take() == ([3, 4, 5], 2)
    assert c.handoff.take() == ([], 0)  # shed is reported to one take only
    assert c.handoff.shed_total == 2  # the total keeps counting


def test_sizes_are_measured_by_the_size_function_and_the_newest_is_never_shed() -> None:
    h: LoopHandoff[bytes] = LoopHandoff(lambda: None, max_size=10, size=len)
    assert h.put([b"aaaa", b"bbbb", b"cccc"]) == 4  # 12 bytes > 10: the oldest 4 go
    assert h.put([b"x" * 50]) == 8  # larger than the bound alone: kept, all else shed
    assert h.take() == ([b"x" * 50], 12)
    assert h.shed_total == 12


def test_after_the_loop_is_gone_items_are_held_bounded_and_nothing_raises() -> None:
    c = Collector(max_size=5)
    loop = asyncio.new_event_loop()
    c.handoff.loop = loop
    loop.close()  # the loop stopped and closed while the producer still runs
    assert c.handoff.put([1, 2]) == 0  # call_soon_threadsafe's RuntimeError is swallowed
    c.handoff.loop = None  # the owner cleared it (run() returned)
    assert c.handoff.put(range(3, 10)) == 4
    c.handoff.post(c.drain)  # no loop: dropped, not run here
    assert c.batches == []
    assert c.handoff.take() == ([5, 6, 7, 8, 9], 4)


def test_post_runs_a_callback_on_the_loop_from_another_thread() -> None:
    c = Collector()
    seen: list[tuple[str, int]] = []

    async def main() -> None:
        c.handoff.loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def on_loop(what: str) -> None:
            seen.append((what, threading.get_ident()))
            done.set()

        threading.Thread(target=c.handoff.post, args=(on_loop, "opened")).start()
        await asyncio.wait_for(done.wait(), 10)

    asyncio.run(main())
    assert seen == [("opened", threading.get_ident())]


# --- sleep_until_stopped -----------------------------------------------------------------


def test_sleep_until_stopped_runs_out_its_time_when_not_stopped() -> None:
    async def main() -> tuple[bool, float]:
        t0 = time.monotonic()
        stopped = await sleep_until_stopped(asyncio.Event(), 0.05)
        return stopped, time.monotonic() - t0

    stopped, took = asyncio.run(main())
    assert stopped is False and took >= 0.04


def test_sleep_until_stopped_returns_early_when_stopped() -> None:
    async def main() -> tuple[bool, float]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # from another thread, as a signal handler or a test driver would
        threading.Timer(0.05, loop.call_soon_threadsafe, (stop.set,)).start()
        t0 = time.monotonic()
        stopped = await sleep_until_stopped(stop, 60)
        return stopped, time.monotonic() - t0

    stopped, took = asyncio.run(main())
    assert stopped is True and took < 30


def test_sleep_until_stopped_on_a_set_event_returns_at_once() -> None:
    async def main() -> tuple[bool, bool]:
        stop = asyncio.Event()
        stop.set()
        return await sleep_until_stopped(stop, 60), await sleep_until_stopped(stop, 0)

    assert asyncio.run(main()) == (True, True)


# --- describe_error ----------------------------------------------------------------------


def test_a_reason_given_as_text_is_the_reason() -> None:
    assert describe_error("port busy") == "port busy"
    assert describe_error(None) == "no reason given"
    assert describe_error("") == "no reason given"


def test_an_exception_is_its_type_and_text() -> None:
    assert describe_error(ValueError("bad baud rate")) == "ValueError: bad baud rate"
    assert describe_error(ValueError()) == "ValueError"
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert describe_error(refused) == "ConnectionRefusedError: [Errno 111] Connection refused"


def test_terse_drops_the_type_and_an_os_error_is_its_strerror() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert describe_error(refused, terse=True) == "Connection refused"
    assert describe_error(OSError("no route"), terse=True) == "no route"  # no strerror
    assert describe_error(ValueError("bad"), terse=True) == "bad"
    assert describe_error(TimeoutError(), terse=True) == "TimeoutError"
    assert describe_error("said already", terse=True) == "said already"


def test_a_dbus_error_is_its_name_and_details_terse_or_not() -> None:
    busy = BleakDBusError("org.bluez.Error.InProgress", ["Operation already in progress"])
    bare = BleakDBusError("org.bluez.Error.NotReady", [])
    for terse in (False, True):
        assert describe_error(busy, terse=terse) == (
            "org.bluez.Error.InProgress: Operation already in progress")
        assert describe_error(bare, terse=terse) == "org.bluez.Error.NotReady"


def test_the_description_is_one_line_without_a_traceback() -> None:
    try:
        raise RuntimeError("outer") from KeyError("inner")
    except RuntimeError as exc:
        assert describe_error(exc) == "RuntimeError: outer"


def test_wait_for_either_returns_on_work_or_on_stop_and_leaves_no_task() -> None:
    async def main() -> None:
        for which in ("wake", "stop"):
            wake, stop = asyncio.Event(), asyncio.Event()
            waiting = asyncio.ensure_future(wait_for_either(wake, stop))
            await asyncio.sleep(0)
            assert not waiting.done()  # neither set: it waits
            (wake if which == "wake" else stop).set()
            await asyncio.wait_for(waiting, 1)
            await asyncio.sleep(0)
            # its two helper waits were cancelled, not left pending on the loop
            assert len(asyncio.all_tasks()) == 1
    asyncio.run(main())
