"""Live fan-out to connected screens and apps, on the gateway's event loop.

A producer (the offer flow, the lane state, the floor) publishes a message on a topic
(``customer:<pseudonym>``, ``lane:<lane>``, ``floor``); every subscriber of that topic
gets it, in order, without the producer ever waiting. Each subscriber has a bounded
queue: one that falls that far behind (a phone on a dead link that TCP has not noticed
yet) is cut off, counted, and reconnects; what it missed is then read from the durable
source by cursor (the app inbox) or as a fresh snapshot (screens). So a slow reader
costs the store nothing and nothing is pushed twice: resume is by cursor, not by replay
of this hub.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

QUEUE_MAX: Final = 256


@dataclass(frozen=True, slots=True)
class Message:
    kind: str  # what the client switches on: offer, redemption, pickup, lane, floor...
    data: dict[str, Any]
    cursor: int | None = None  # durable position (app inbox); None: a live-only update


class Subscription:
    """One connected client's view of one topic; iterate it, close it when gone."""

    def __init__(self, hub: Hub, topic: str, maxsize: int) -> None:
        self._hub = hub
        self.topic = topic
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize)
        self.cut_off = False

    def offer(self, message: Message) -> bool:
        """From the hub: False when the queue is full (the subscriber is cut off)."""
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.cut_off = True
            return False
        return True

    def end(self) -> None:
        """Wake the reader with the end of the stream (queue full: it sees cut_off)."""
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[Message]:
        while not self.cut_off or not self._queue.empty():
            message = await self._queue.get()
            if message is None:
                return
            yield message

    async def next(self, timeout_s: float) -> Message | None:
        """The next message, or None after ``timeout_s`` (time for a keep-alive).
        Awaited in the caller's own task (``asyncio.timeout``, not ``wait_for``, which
        wraps the get in a new task: one more loop turn and a task per message on the
        way to 1,000 phones and 50 screens); one already queued is taken at once."""
        try:
            message = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            try:
                async with asyncio.timeout(timeout_s):
                    message = await self._queue.get()
            except TimeoutError:
                return None
        if message is None:
            self.cut_off = True
        return message

    def close(self) -> None:
        self._hub._drop(self)


@dataclass(slots=True)
class Hub:
    maxsize: int = QUEUE_MAX
    _topics: dict[str, set[Subscription]] = field(default_factory=dict)
    published_total: int = 0
    delivered_total: int = 0
    cut_off_total: int = 0

    def subscribe(self, topic: str) -> Subscription:
        sub = Subscription(self, topic, self.maxsize)
        self._topics.setdefault(topic, set()).add(sub)
        return sub

    def publish(self, topic: str, message: Message) -> int:
        """Hand ``message`` to every subscriber of ``topic``; returns how many got it.
        Never blocks; a subscriber whose queue is full is cut off."""
        self.published_total += 1
        subs = self._topics.get(topic)
        if not subs:
            return 0
        delivered = 0
        for sub in list(subs):
            if sub.offer(message):
                delivered += 1
            else:
                self.cut_off_total += 1
                self._drop(sub)
                sub.end()
        self.delivered_total += delivered
        return delivered

    def subscribers(self, topic: str | None = None) -> int:
        if topic is not None:
            return len(self._topics.get(topic, ()))
        return sum(len(s) for s in self._topics.values())

    def subscribers_under(self, prefix: str) -> int:
        """Subscribers of the topics starting with ``prefix`` (the app channel's
        ``customer:`` topics; the rest are staff screens), for the status."""
        return sum(len(s) for t, s in self._topics.items() if t.startswith(prefix))

    def close_all(self) -> None:
        """Shutting down: every stream ends (clients reconnect to the next process)."""
        for subs in list(self._topics.values()):
            for sub in list(subs):
                sub.end()
        self._topics.clear()

    def _drop(self, sub: Subscription) -> None:
        subs = self._topics.get(sub.topic)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._topics[sub.topic]
