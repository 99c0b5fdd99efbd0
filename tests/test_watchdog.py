"""The scan watchdog's decisions (pure, clock-injected)."""

from __future__ import annotations

from storegate.core.backoff import Backoff
from storegate.core.ble.watchdog import ScanWatchdog


def test_stall_counts_from_the_later_of_start_and_last_advert() -> None:
    wd = ScanWatchdog(Backoff(1, 60), stall_after_s=30)
    assert not wd.stalled(1000)  # not scanning yet
    wd.started(1000)
    assert not wd.stalled(1029.9)
    assert wd.stalled(1030)
    wd.advert(1025)
    assert not wd.stalled(1054) and wd.stalled(1055)


def test_zero_disables_stall_detection() -> None:
    wd = ScanWatchdog(Backoff(1, 60), stall_after_s=0)
    wd.started(0)
    assert not wd.stalled(1e9)


def test_failures_back_off_and_an_advert_resets_the_backoff() -> None:
    wd = ScanWatchdog(Backoff(1, 8), stall_after_s=30)
    delays = [wd.failed(i, "org.bluez.Error.InProgress", 1.0) for i in range(6)]
    assert delays == [1, 2, 4, 8, 8, 8]  # top of the jitter range: the ceiling
    assert wd.state == "restarting" and wd.failures_total == 6
    assert wd.last_error == "org.bluez.Error.InProgress"
    wd.restarting()
    wd.started(10)
    wd.advert(11)
    assert wd.failed(12, "adapter gone", 1.0) == 1  # afresh
    assert wd.restarts_total == 1
    assert len(wd.history) == 7 and wd.history[-1] == (12, "adapter gone")


def test_stall_is_a_failure_with_its_own_count() -> None:
    wd = ScanWatchdog(Backoff(1, 8), stall_after_s=5)
    wd.started(0)
    assert wd.stalled(5)
    assert wd.stall(5, 0.0) == 1
    assert wd.stalls_total == 1 and wd.failures_total == 1
    assert not wd.stalled(100)  # not scanning while restarting
    assert wd.last_error == "no adverts for 5 s"
    for i in range(20):
        wd.failed(200 + i, "x", 0.5)
    assert len(wd.history) == 10  # bounded
