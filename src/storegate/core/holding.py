"""Events the outbox could not accept yet (disk full, closing), held in memory in
arrival order until it can. Pure bookkeeping: the caller retries.

The sources hand events over without waiting, and a lane's serial bytes cannot be read
again: an event refused by the outbox and then forgotten is lost for good. So refused
events are held, under a clear bound:

* purchases (``Priority.CRITICAL``) are never dropped by the bound: a lane closes a
  receipt about once a minute, so even a day of full disk is a few thousand drafts;
* everything else counts against ``max_droppable``; beyond it the lowest priority goes
  first (telemetry, then status, then visits: the outbox's retention order), oldest
  first within a priority, and every drop is counted by event type.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Final

from storegate.core.events import EventDraft, Priority
from storegate.core.retention import DROP_ORDER

MAX_DROPPABLE: Final = 10_000  # non-purchase events held at most (a few MB)


class HeldEvents:
    def __init__(self, max_droppable: int = MAX_DROPPABLE) -> None:
        if max_droppable < 0:
            raise ValueError(f"max_droppable must be >= 0, got {max_droppable}")
        self.max_droppable = max_droppable
        self._queue: deque[EventDraft] = deque()
        self._by_priority: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self.held_total = 0  # events ever held (not counting put_back)
        self.dropped: dict[str, int] = {}  # event type -> dropped by the bound

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def critical(self) -> int:
        """Purchases held: these are never dropped."""
        return self._by_priority[Priority.CRITICAL]

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def hold(self, drafts: Iterable[EventDraft]) -> int:
        """Hold these after those already held; returns how many were dropped to stay
        within the bound (never a purchase)."""
        n = 0
        for d in drafts:
            self._queue.append(d)
            self._by_priority[d.type.priority] += 1
            n += 1
        self.held_total += n
        return self._enforce()

    def put_back(self, drafts: list[EventDraft]) -> int:
        """Events taken for a retry that failed: back at the front, in their order."""
        for d in reversed(drafts):
            self._queue.appendleft(d)
            self._by_priority[d.type.priority] += 1
        return self._enforce()

    def take(self, n: int) -> list[EventDraft]:
        """The ``n`` oldest held events, removed (the caller retries them)."""
        out: list[EventDraft] = []
        while self._queue and len(out) < n:
            d = self._queue.popleft()
            self._by_priority[d.type.priority] -= 1
            out.append(d)
        return out

    def _enforce(self) -> int:
        over = len(self._queue) - self.critical - self.max_droppable
        if over <= 0:
            return 0
        dropped = 0
        for priority in DROP_ORDER:
            while over > 0 and self._by_priority[priority]:
                # oldest of this priority: a scan, but only while over the bound
                i = next(i for i, d in enumerate(self._queue) if d.type.priority == priority)
                d = self._queue[i]
                del self._queue[i]
                self._by_priority[priority] -= 1
                self.dropped[d.type.name] = self.dropped.get(d.type.name, 0) + 1
                over -= 1
                dropped += 1
        return dropped
