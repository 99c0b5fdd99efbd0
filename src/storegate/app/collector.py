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
from collections.abc import Iterator
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

# Start-up (imports, config, registry, campaigns, the HTTP app) is done by then.
SETTLE_S: Final = 10.0


async def freeze_after_start(stop: asyncio.Event, settle_s: float = SETTLE_S) -> None:
    """Once start-up has settled, move everything it built out of the collector's sight.

    Measured (bench/bench_http.py, 1,000 phones and 50 screens connected): without it,
    every full collection traverses the whole start-up heap (modules, classes, pydantic
    and FastAPI schemas, the registry) and holds the event loop 150-250 ms, 8-10 times
    in two minutes: a push or a till frame caught behind one is late by that much. What
    start-up built lives as long as the process, so freezing it leaks nothing; objects
    made later (connections come and go) stay collectable.
    """
    if await sleep_until_stopped(stop, settle_s):
        return
    with _lock:
        if _depth == 0:  # a bulk job freezes on its own when it ends
            gc.freeze()
