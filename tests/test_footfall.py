"""Anonymous footfall: counts per zone and period, no identifiers, daily key rotation."""

from __future__ import annotations

from storegate.core import payloads as p
from storegate.core.presence.footfall import Footfall
from storegate.core.presence.settings import PresenceSettings, Zone

SETTINGS = PresenceSettings(zones=(Zone("a", ("sa",)), Zone("b", ("sb",))))
T0 = 1_795_000_200.0  # inside a 300 s period


def test_counts_distinct_devices_per_zone_and_store() -> None:
    f = Footfall(SETTINGS, b"k" * 32)
    out = []
    for i in range(5):
        out += f.observe("AA:00:00:00:00:01", "sa", -60, T0 + i)  # 5 hits in a
        out += f.observe("AA:00:00:00:00:02", "sb", -65, T0 + i)  # 5 hits in b
        out += f.observe("AA:00:00:00:00:03", "sa", -95, T0 + i)  # outside
    out += f.observe("AA:00:00:00:00:04", "sb", -60, T0 + 1)  # a single sample: noise
    assert out == []
    events = f.flush(T0 + 300)
    counts = {e.data.zone: e.data.devices for e in events}  # type: ignore[attr-defined]
    assert counts == {None: 2, "a": 1, "b": 1}
    assert all(isinstance(e.data, p.FootfallCounted) for e in events)
    assert "AA:" not in repr(events)
    assert f.flush(T0 + 301) == []  # nothing twice


def test_hash_key_rotates_daily_and_depends_on_the_secret() -> None:
    f = Footfall(SETTINGS, b"k" * 32)
    g = Footfall(SETTINGS, b"j" * 32)
    day1, day2 = f.day_key(T0), f.day_key(T0 + 86400)
    assert day1 != day2
    assert g.day_key(T0) != day1


def test_a_late_clock_never_re_emits_a_period() -> None:
    f = Footfall(PresenceSettings(zones=(Zone("a", ("s",)),)), b"k" * 32, period_s=300,
                 occupancy_s=60)
    for i in range(10):
        f.observe("AA", "s", -50, 290 + i)
    first = f.flush(300.1) + f.occupancy(300.1, {})
    assert first
    assert f.flush(299.8) == [] and f.occupancy(299.8, {}) == []  # a clock 0.3 s behind
    assert f.flush(300.5) == [] and f.occupancy(300.5, {}) == []  # same period: nothing
