"""Keep Python's cyclic garbage collector off the event loop during bulk work.

Measured (bench/bench_commands.py): while a 100,000-record identities sync is parsed,
validated and enrolled, the interpreter runs full (generation 2) collections over
every object the gateway holds, up to ~300 ms each, and no thread — the event loop
included — runs meanwhile. Bulk work pauses the collector; when the last one ends,
what it built is long-lived (the enrolled identities), so it is moved out of the
collector's sight (``gc.freeze``) instead of being traversed again and again.
No collection runs first: a full one is the very pause this avoids (measured: 340 ms on
the event loop after a 100,000-record sync; a young-generation one 130-190 ms; none:
the loop held at most 55-75 ms). The price is that cyclic garbage already dead when it
freezes is kept: measured, 65 objects per 100,000-record sync. Reference counting
still frees every frozen object that dies later without a cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Final

from storegate.adapters.plumbing import sleep_until_stopped

_lock = threading.Lock()
_depth = 0  # bulk jobs running, in any thread


@contextlib.contextmanager
def paused() -> Iterator[None]:
    global _depth  # noqa: PLW0603 - one collector per process: its pause is too
    with _lock:
        _depth += 1
        if _depth == 1:
            gc.disable()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.freeze()
                gc.enable()


# --- the long-lived heap of a running gateway ------------------------------------------

SETTLE_S: Final = 10.0  # start-up (imports, config, registry, the HTTP app) is done by then
CHECK_S: Final = 1.0  # how often the thaw is looked at
THAW_S: Final = 3600.0  # frozen objects that died in a cycle since are freed this often
# Young collections between full ones (CPython's default: 10). With the survivors of
# each full collection frozen, a full one traverses what the young ones promoted since
# the last: ~74,000 objects at 10 while 1,000 phones connect (40 ms of CPU each,
# bench/bench_http.py --gc-log), a fifth of that at 2: as much work, in short pauses.
FULL_EVERY: Final = 2


def _note_full(phase: str, info: dict[str, int]) -> None:
    """A full collection's survivors frozen the moment it ends, in the collector's own
    callback (the interpreter held: nothing allocated between). Frozen a second later
    instead (a task's turn), the 1,000 connections a store's phones open in a few
    seconds piled up unfrozen meanwhile, and each full collection of the connect
    traversed more of them: 47, 89, 139 ms in one second (bench/bench_http.py
    --gc-log). Not during bulk work: it freezes what it built when it ends."""
    if phase == "stop" and info.get("generation") == 2 and _depth == 0:
        gc.freeze()


async def tend(stop: asyncio.Event, *, settle_s: float = SETTLE_S, check_s: float = CHECK_S,
               thaw_s: float = THAW_S, clock: Callable[[], float] = time.monotonic) -> None:
    """Keep full collections short while the gateway runs.

    Measured (bench/bench_http.py, 1,000 phones and 50 screens connected): left alone,
    every full collection traverses the whole heap (modules, classes, pydantic and
    FastAPI schemas, the registry, every connection) and holds the event loop 150-250
    ms, 8-10 times in two minutes: a push or a till frame caught behind one is late by
    that much. So what start-up built is frozen once it settles, and so is whatever
    survives a full collection, as it ends (just collected: no garbage among it;
    long-lived by then: connections, customers, campaigns): the next full collections
    traverse only what came since, and they come every :data:`FULL_EVERY` young ones
    (CPython also waits until a quarter of the last survivors' count was promoted
    since: small, once they are frozen), so they stay short. The price: an
    object frozen while alive that later dies *in a cycle* is not freed until the
    next thaw, every ``thaw_s`` (reference counting still frees everything else at
    once); the full collection after a thaw is the one long pause of the hour. What
    start-up built that no full collection has seen yet is frozen ``settle_s`` in.
    """
    gc.callbacks.append(_note_full)  # at once: a restarted gateway's phones all
    # reconnect within seconds of its start (bench/bench_http.py: the connect began
    # before a 10 s settle ended, and its full collections took 147-367 ms)
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], FULL_EVERY)
    try:
        if await sleep_until_stopped(stop, settle_s):
            return
        _freeze()
        thawed_at = clock()
        while not await sleep_until_stopped(stop, check_s):
            if clock() - thawed_at >= thaw_s:
                gc.unfreeze()  # the next full collection sees (and frees) everything
                thawed_at = clock()
    finally:
        gc.callbacks.remove(_note_full)
        gc.set_threshold(*thresholds)
        gc.unfreeze()  # stopped: a process that goes on (tests) frees its cycles again


def _freeze() -> None:
    with _lock:
        if _depth == 0:  # a bulk job freezes on its own when it ends
            gc.freeze()
