"""Keep Python's cyclic garbage collector off the event loop during bulk work.

Measured (bench/bench_commands.py): while a 100,000-record identities sync is parsed,
validated and enrolled, the interpreter runs full (generation 2) collections over
every object the gateway holds, up to ~300 ms each, and no thread — the event loop
included — runs meanwhile. Bulk work pauses the collector; when the last one ends,
what it built is long-lived (the enrolled identities), so it is moved out of the
collector's sight (``gc.freeze``) instead of being traversed again and again.
A full collection runs first, so no garbage is frozen; reference counting still frees
every frozen object that dies later, and only one that dies in a reference cycle would
stay (the identities the bulk work builds hold none).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

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
                gc.collect()  # the pause's garbage, cycles included: none is frozen
                gc.freeze()
                gc.enable()
