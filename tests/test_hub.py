"""The live fan-out hub: in order, per topic, never blocking the producer; a reader
that falls behind is cut off (and counted), the others go on."""

from __future__ import annotations

import asyncio

from storegate.app.http.hub import Hub, Message


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_each_subscriber_of_a_topic_gets_every_message_in_order() -> None:
    async def main() -> None:
        hub = Hub()
        a, b = hub.subscribe("lane:1"), hub.subscribe("lane:1")
        other = hub.subscribe("lane:2")
        for n in range(5):
            assert hub.publish("lane:1", Message("lane", {"n": n})) == 2
        assert [(await a.next(1)).data["n"] for _ in range(5)] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
        assert [(await b.next(1)).data["n"] for _ in range(5)] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
        assert await other.next(0.01) is None  # nothing for another topic: a keep-alive
        assert hub.delivered_total == 10
    run(main())


def test_a_slow_reader_is_cut_off_and_the_others_keep_receiving() -> None:
    async def main() -> None:
        hub = Hub(maxsize=3)
        slow, fast = hub.subscribe("floor"), hub.subscribe("floor")
        got = []
        for n in range(10):
            hub.publish("floor", Message("floor", {"n": n}))
            got.append((await fast.next(1)).data["n"])  # type: ignore[union-attr]
        assert got == list(range(10))
        assert slow.cut_off and hub.cut_off_total == 1
        assert hub.subscribers("floor") == 1
        # what it had queued is still read, then its stream ends
        seen = [m.data["n"] async for m in slow]
        assert seen == [0, 1, 2]
    run(main())


def test_closing_unsubscribes_and_close_all_ends_every_stream() -> None:
    async def main() -> None:
        hub = Hub()
        a = hub.subscribe("customer:c1")
        a.close()
        assert hub.subscribers() == 0
        assert hub.publish("customer:c1", Message("offer", {}, cursor=1)) == 0
        b = hub.subscribe("customer:c1")
        task = asyncio.ensure_future(_collect(b))
        hub.publish("customer:c1", Message("offer", {"x": 1}, cursor=7))
        await asyncio.sleep(0)
        hub.close_all()
        assert await asyncio.wait_for(task, 1) == [7]
        assert hub.subscribers() == 0
    run(main())


async def _collect(sub: object) -> list[int | None]:
    return [m.cursor async for m in sub]  # type: ignore[attr-defined]
