"""The demo's two tills: the lane simulator's byte streams (ESC/POS, pole display,
scanner, Shtrih-M) on real ptys that the gateway's serial taps read, run by the demo
process so that the demo, not the gateway, decides when the producers stop.

A till stops between customers (a receipt half rung up would stay open at the lane)
and keeps its ptys open until the gateway has stopped, as a real till stays plugged in
while the gateway drains; then :meth:`DemoTill.close` unplugs it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from storegate.adapters.plumbing import sleep_until_stopped
from storegate.app.sim_lane import SimulatedLane
from storegate.config import PosLaneConfig

TOKENS_HELD_MAX = 64  # offers waiting for a till; older ones go first


class TokenBox:
    """Offer tokens customers hold, handed to the next till that rings them up. Filled
    by the demo's app reader (a worker thread), taken by the tills (the loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: deque[str] = deque(maxlen=TOKENS_HELD_MAX)
        self.scanned_total = 0

    def put(self, token: str) -> None:
        with self._lock:
            self._tokens.append(token)

    def take(self) -> str | None:
        with self._lock:
            if not self._tokens:
                return None
            self.scanned_total += 1
            return self._tokens.popleft()

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokens)


class DemoTill(SimulatedLane):
    def __init__(self, lane: PosLaneConfig, *, every_s: float, seed: int,
                 tokens: TokenBox) -> None:
        super().__init__(ports={d.role: d.port for d in lane.devices}, every_s=every_s,
                         seed=seed, encoding=next(
                             (d.encoding for d in lane.devices if d.role != "fiscal"),
                             "cp866"), tokens=tokens.take)
        self.lane = lane.id
        self.opened = False

    def open(self) -> None:
        """The pty links exist from now on (before the gateway starts, so its taps find
        their ports at once)."""
        self._open()
        self.opened = True

    async def run(self, stop: asyncio.Event) -> None:
        """Customers until ``stop``; the one being rung up is finished."""
        if not self.opened:
            self.open()
        finish = asyncio.Event()  # never set: a customer is never cut short
        while not stop.is_set():
            if await sleep_until_stopped(stop, self.every_s):
                return
            await self._customer(finish)

    def close(self) -> None:
        self._close()
        self.opened = False
