"""What every I/O edge needs, written once: hand items from a thread to the event loop,
sleep until stopped, and say in one line why something failed.

Nothing here knows about MQTT, Bluetooth or serial ports; ``app`` may use it too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class LoopHandoff(Generic[T]):
    """Items from one producer thread to the event loop, in order, in batches.

    The first item after a drain schedules ``drain`` on the loop with
    ``call_soon_threadsafe``; items arriving before it runs join the same batch, so a busy
    producer costs one loop wake-up per batch, not per item. ``drain`` runs on the loop
    and calls :meth:`take`. Beyond ``max_size`` (counted in ``size`` units: items, or
    bytes) the oldest are shed, never the newest, and never the last one.
    """

    def __init__(self, drain: Callable[[], None], *, max_size: int,
                 size: Callable[[T], int] | None = None) -> None:
        """``size`` measures an item (default: each counts one)."""
        self._drain = drain
        self._max_size = max_size
        self._size = size
        self._lock = threading.Lock()
        # guarded by the lock
        self._pending: collections.deque[T] = collections.deque()
        self._pending_size = 0
        self._scheduled = False
        self._shed_untaken = 0
        # Set by the loop's owner while it runs, None otherwise; read by the producer.
        self.loop: asyncio.AbstractEventLoop | None = None
        # observable state (written under the lock, read by anyone)
        self.shed_total = 0

    def put(self, items: Iterable[T]) -> int:
        """Queue ``items`` (producer thread); returns how much was shed to make room."""
        shed = 0
        with self._lock:
            pending = self._pending
            size = self._size
            if size is None:
                before = len(pending)
                pending.extend(items)
                self._pending_size += len(pending) - before
            else:
                for item in items:
                    pending.append(item)
                    self._pending_size += size(item)
            while self._pending_size > self._max_size and len(pending) > 1:
                old = pending.popleft()
                n = 1 if size is None else size(old)
                self._pending_size -= n
                shed += n
            self.shed_total += shed
            self._shed_untaken += shed
            if self._scheduled:
                return shed
            self._scheduled = True
        self.post(self._drain)
        return shed

    def post(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop, if there is one (any thread)."""
        loop = self.loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: shutting down
                loop.call_soon_threadsafe(callback, *args)

    def take(self) -> tuple[list[T], int]:
        """Everything queued, oldest first, and how much was shed since the last take."""
        with self._lock:
            batch = list(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._scheduled = False
            shed, self._shed_untaken = self._shed_untaken, 0
        return batch, shed


async def sleep_until_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set, whichever comes first; True if stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def wait_for_either(wake: asyncio.Event, stop: asyncio.Event) -> None:
    """A worker's idle wait: until there is work (``wake``) or it must stop."""
    waiter = asyncio.ensure_future(wake.wait())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((waiter, stopper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        stopper.cancel()


def describe_error(error: BaseException | str | None, *, terse: bool = False) -> str:
    """One line saying why, for a log or a status field (no traceback).

    A string is the reason already; a D-Bus error (bleak) is its name and details
    (``org.bluez.Error.InProgress: Operation already in progress``); anything else is its
    type and text (``SerialException: device reports readiness…``). ``terse`` drops the
    type, and an OSError is its ``strerror`` alone (``Connection refused``), for a message
    that already says what failed.
    """
    if error is None or isinstance(error, str):
        return error or "no reason given"
    name = getattr(error, "dbus_error", None)
    if isinstance(name, str):
        details = getattr(error, "dbus_error_details", None)
        return f"{name}: {details}" if details else name
    if terse:
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
        return str(error) or type(error).__name__
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
