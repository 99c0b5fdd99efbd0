"""The presence engine on scripted sightings: passers-by, entry, dwell, exit at the last
evidence, zone hysteresis against noise and outliers, forgetting a customer."""

from __future__ import annotations

import random

from storegate.core import events as ev
from storegate.core.presence.engine import PresenceEngine
from storegate.core.presence.settings import PresenceSettings, Zone

T0 = 1_795_000_000.0
SETTINGS = PresenceSettings(zones=(Zone("aisle-a", ("sa",)), Zone("aisle-b", ("sb",)),
                                   Zone("checkout", ("sc",), min_rssi_dbm=-65.0)))


def engine() -> PresenceEngine:
    counter = iter(range(10**9))
    return PresenceEngine(SETTINGS, lambda n: next(counter).to_bytes(n, "big"))


def run(e: PresenceEngine, sightings: list[tuple[float, str, int]], until: float,
        customer: str = "c-1") -> list[ev.EventDraft]:
    out: list[ev.EventDraft] = []
    for ts, scanner, rssi in sorted(sightings):
        out += e.tick(ts)
        out += e.observe(customer, scanner, rssi, ts)
    t = sightings[-1][0] if sightings else T0
    while t < until:
        t += 1.0
        out += e.tick(t)
    return out


def kinds(events: list[ev.EventDraft]) -> list[tuple[str, str | None]]:
    return [(d.type.name.split(".")[2], d.data.zone) for d in events]  # type: ignore[attr-defined]


def test_passer_by_never_becomes_a_visit() -> None:
    e = engine()
    out = run(e, [(T0 + i, "sa", -70) for i in range(12)], until=T0 + 60)
    assert out == []
    assert e.tracked == 0


def test_store_and_zone_visit_with_dwell_and_exit_at_last_evidence() -> None:
    e = engine()
    out = run(e, [(T0 + i, "sa", -60) for i in range(91)], until=T0 + 120)
    assert kinds(out) == [("entered", None), ("entered", "aisle-a"), ("dwelled", None),
                          ("dwelled", "aisle-a"), ("exited", "aisle-a"), ("exited", None)]
    store_exit = out[-1]
    assert store_exit.data.exited_at == ev.rfc3339(T0 + 90)  # type: ignore[attr-defined]
    assert store_exit.data.entered_at == ev.rfc3339(T0)  # type: ignore[attr-defined]
    assert store_exit.data.dwell_s == 90.0  # type: ignore[attr-defined]
    assert store_exit.time == T0 + 90  # the event's own time is the exit, not the timeout
    entered = next(d for d in out if d.type is ev.VISIT_ENTERED and d.data.zone is None)  # type: ignore[attr-defined]
    assert entered.time == T0 + 20
    assert {d.data.visit_id for d in out if d.data.zone is None} == {  # type: ignore[attr-defined]
        entered.data.visit_id}  # type: ignore[attr-defined]


def test_weak_evidence_from_the_pavement_is_ignored() -> None:
    e = engine()
    assert run(e, [(T0 + i, "sa", -92) for i in range(120)], until=T0 + 140) == []


def test_noisy_equal_zones_do_not_flap_and_outliers_do_not_switch() -> None:
    rng = random.Random(7)
    e = engine()
    sightings = []
    for i in range(300):
        sightings.append((T0 + i, "sa", round(-62 + rng.gauss(0, 4))))
        sightings.append((T0 + i + 0.5, "sb", round(-64 + rng.gauss(0, 4))))
        if i % 37 == 0:  # a lone reflection: one very strong sample elsewhere
            sightings.append((T0 + i + 0.7, "sc", -40))
    out = run(e, sightings, until=T0 + 330)
    zone_entries = [z for k, z in kinds(out) if k == "entered" and z is not None]
    assert zone_entries == ["aisle-a"]  # one zone visit, no ping-pong, no checkout


def test_walking_from_one_zone_to_another() -> None:
    e = engine()
    walk = [(T0 + i, "sa", -55) for i in range(40)]
    walk += [(T0 + 40 + i, "sa", -80) for i in range(40)]
    walk += [(T0 + 40 + i + 0.5, "sc", -50) for i in range(40)]
    out = run(e, walk, until=T0 + 120)
    assert kinds(out)[:2] == [("entered", None), ("entered", "aisle-a")]
    a_exit = next(d for d in out if d.type is ev.VISIT_EXITED and d.data.zone == "aisle-a")  # type: ignore[attr-defined]
    # aisle A ends where the checkout began to lead (the median's lag taken out): about
    # the moment of the switch, within a second before it and the hold time after it
    assert T0 + 39 <= a_exit.time <= T0 + 40 + SETTINGS.switch_hold_s + 1
    assert ("entered", "checkout") in kinds(out)
    assert kinds(out)[-1] == ("exited", None)


def test_forget_drops_everything_silently() -> None:
    e = engine()
    out = [x for i in range(30) for x in e.observe("c-9", "sa", -60, T0 + i)]
    assert ("entered", None) in kinds(out)
    e.forget("c-9")
    assert e.tick(T0 + 100) == []
    assert e.tracked == 0


def test_a_switch_that_reverses_before_the_new_visit_is_entered_does_not_split() -> None:
    """Aisle B leads long enough to take over (past the hold), not long enough to be a
    visit: aisle A's visit goes on, one visit, not two."""
    e = engine()
    flap = SETTINGS.switch_hold_s + SETTINGS.window_s + 2  # a takeover, far from a visit
    assert flap < SETTINGS.zone_min_presence_s
    sightings = [(T0 + i / 2, "sa", -55) for i in range(80)]
    sightings += [(T0 + 40 + i / 2, "sb", -50) for i in range(round(2 * flap))]
    sightings += [(T0 + 40 + i / 2, "sa", -75) for i in range(round(2 * flap))]
    t1 = 40 + flap
    sightings += [(T0 + t1 + i / 2, "sa", -55) for i in range(80)]
    out = run(e, sightings, until=T0 + t1 + 80)
    assert kinds(out) == [("entered", None), ("entered", "aisle-a"), ("dwelled", None),
                          ("dwelled", "aisle-a"), ("exited", "aisle-a"), ("exited", None)]
    a_exit = next(d for d in out if d.type is ev.VISIT_EXITED and d.data.zone == "aisle-a")  # type: ignore[attr-defined]
    assert a_exit.data.dwell_s >= t1 + 30  # type: ignore[attr-defined]


def test_a_switch_that_holds_ends_the_visit_before_at_the_switch() -> None:
    e = engine()
    sightings = [(T0 + i / 2, "sa", -55) for i in range(80)]
    sightings += [(T0 + 40 + i / 2, "sb", -50) for i in range(120)]
    sightings += [(T0 + 40 + i / 2, "sa", -75) for i in range(120)]
    out = run(e, sightings, until=T0 + 160)
    zones = [(k, z) for k, z in kinds(out) if z is not None and k != "dwelled"]
    assert zones == [("entered", "aisle-a"), ("exited", "aisle-a"), ("entered", "aisle-b"),
                     ("exited", "aisle-b")]  # in order: A ends before B is said entered
    a_exit = next(d for d in out if d.type is ev.VISIT_EXITED and d.data.zone == "aisle-a")  # type: ignore[attr-defined]
    assert abs(a_exit.data.dwell_s - 40) <= SETTINGS.window_s  # type: ignore[attr-defined]


def test_a_slow_crossing_is_dated_to_where_the_levels_crossed() -> None:
    """Walking slowly from aisle A to aisle B: their levels cross half way, aisle B is
    clearly ahead (by the switch margin) only seconds later. The switch is dated to the
    crossing (less the median's lag), not to the margin; the minimum presence of the
    new visit still counts from the clear evidence, so the event comes no sooner."""
    e = engine()
    ramp = 60.0  # s: A falls -55 -> -75 while B rises -75 -> -55
    sightings = [(T0 + i / 2, "sa", -55) for i in range(80)]
    for i in range(round(2 * ramp)):
        t = i / 2
        sightings.append((T0 + 40 + t, "sa", round(-55 - 20 * t / ramp)))
        sightings.append((T0 + 40 + t + 0.25, "sb", round(-75 + 20 * t / ramp)))
    sightings += [(T0 + 40 + ramp + i / 2, "sb", -55) for i in range(120)]
    sightings += [(T0 + 40 + ramp + i / 2, "sa", -75) for i in range(120)]
    out = run(e, sightings, until=T0 + 40 + ramp + 90)
    crossed = T0 + 40 + ramp / 2
    margin_at = crossed + SETTINGS.switch_margin_db / (40 / ramp)  # B ahead by the margin
    a_exit = next(d for d in out if d.type is ev.VISIT_EXITED and d.data.zone == "aisle-a")  # type: ignore[attr-defined]
    b_in = next(d for d in out if d.type is ev.VISIT_ENTERED and d.data.zone == "aisle-b")  # type: ignore[attr-defined]
    assert b_in.data.entered_at == a_exit.data.exited_at  # type: ignore[attr-defined]
    assert abs(a_exit.time - crossed) <= 1.5  # at the crossing, not the margin's 4.5 s on
    assert b_in.time >= margin_at + SETTINGS.zone_min_presence_s - SETTINGS.window_s / 2 - 1
