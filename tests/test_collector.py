"""The collector pause used around bulk command work (app/collector.py)."""

from __future__ import annotations

import gc
import threading

from storegate.app import collector


def test_nested_pauses_across_threads_end_with_the_collector_on_and_the_work_frozen() -> None:
    assert gc.isenabled()
    inside = threading.Event()
    release = threading.Event()

    def other_thread() -> None:
        with collector.paused():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other_thread)
    with collector.paused():
        t.start()
        assert inside.wait(10)
        assert not gc.isenabled()
        built = [[i] for i in range(1000)]  # long-lived, as enrolled identities are
    assert not gc.isenabled()  # the other thread's bulk work goes on
    release.set()
    t.join(10)
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(built)  # out of every later collection's sight
    gc.unfreeze()
