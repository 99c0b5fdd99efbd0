"""Presence that survives phones and stores it was not tuned on (issue 13): phones that
go silent for tens of seconds, advertise slowly, or are heard weakly everywhere (a bag,
a body in the way). Judged as a person at the door would: silence is not an exit, a pass
at the door is; scanners compared with each other, not with absolute floors.

Timings come from the settings (fractions and multiples of them); levels are scripted."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from storegate.app.presence_files import presence_settings
from storegate.config import PresenceConfig
from storegate.core import events as ev
from storegate.core.presence.settings import PresenceSettings
from tests.test_presence_door import (
    SETTINGS,
    STEP,
    T0,
    Script,
    at,
    engine,
    run,
    shopper,
    store_events,
    stretch,
)

S = SETTINGS


def zone_events(out: list[tuple[float, ev.EventDraft]], t: ev.EventType, zone: str) -> (
    list[tuple[float, ev.EventDraft]]
):
    return [(a, d) for a, d in out if d.type is t and d.data.zone == zone]  # type: ignore[attr-defined]


def test_a_silence_deep_inside_does_not_split_the_visit() -> None:
    """Placed in produce, then not a single advert for longer than any exit timeout
    (a background phone), then heard in produce again: one visit, one zone visit."""
    silence = 0.5 * S.silence_hold_s
    assert silence > 2 * max(S.outside_after_s, S.exit_after_s)
    script, _, last_inside = shopper(inside_s=3 * S.entry_confirm_s)
    resume = last_inside + silence
    script += stretch(resume, 2 * S.zone_min_presence_s, {"s-prod": -60, "s-door": -75})
    out = run(engine(), script, until=resume + 2 * S.zone_min_presence_s + S.silence_hold_s + 60)
    assert len(store_events(out, ev.VISIT_ENTERED)) == 1
    assert len(store_events(out, ev.VISIT_EXITED)) == 1
    assert len(zone_events(out, ev.VISIT_ENTERED, "produce")) == 1
    assert len(zone_events(out, ev.VISIT_EXITED, "produce")) == 1
    (_, exited), = store_events(out, ev.VISIT_EXITED)
    exited_at = at(exited.data.exited_at) - T0  # type: ignore[attr-defined]
    assert exited_at > resume  # the visit went on through the silence


def test_a_silence_that_outlasts_the_hold_exits_at_the_last_evidence() -> None:
    script, _, last_inside = shopper(inside_s=3 * S.entry_confirm_s)
    out = run(engine(), script, until=last_inside + 2 * S.silence_hold_s)
    (emitted, exited), = store_events(out, ev.VISIT_EXITED)
    exited_at = at(exited.data.exited_at) - T0  # type: ignore[attr-defined]
    assert abs(exited_at - last_inside) <= S.window_s  # dated to the last evidence
    assert emitted - T0 >= last_inside + S.silence_hold_s - S.window_s  # held, not dropped
    (_, zone_exit), = zone_events(out, ev.VISIT_EXITED, "produce")
    assert at(zone_exit.data.exited_at) - T0 <= exited_at  # type: ignore[attr-defined]


def test_heard_at_the_door_then_silent_exits_quickly() -> None:
    """After interior evidence, a pass under the entrance scanner, then nothing: gone."""
    doorway = stretch(0, S.window_s / 2, {"s-door": -55, "s-prod": -78, "s-c1": -75})
    doorway += stretch(S.window_s / 2, S.window_s / 2, {"s-door": -70, "s-c1": -80})
    script, _, last_inside = shopper(inside_s=3 * S.entry_confirm_s, after=doorway)
    out = run(engine(), script, until=last_inside + 2 * S.silence_hold_s)
    (emitted, exited), = store_events(out, ev.VISIT_EXITED)
    exited_at = at(exited.data.exited_at) - T0  # type: ignore[attr-defined]
    assert abs(exited_at - last_inside) <= S.window_s
    assert emitted - T0 <= last_inside + S.window_s + S.outside_after_s + S.window_s
    assert emitted - T0 < last_inside + S.silence_hold_s  # not held as a silence


def test_heard_from_the_pavement_after_leaving_exits_quickly() -> None:
    """Not silent: heard strongest by the entrance scanner (outside) after the interior
    evidence, without a recorded pass under it (lost in a fade)."""
    pavement = stretch(0, 120, {"s-door": -84, "s-prod": -90})
    script, _, last_inside = shopper(inside_s=3 * S.entry_confirm_s, after=pavement)
    out = run(engine(), script, until=last_inside + 2 * S.silence_hold_s)
    (emitted, _), = store_events(out, ev.VISIT_EXITED)
    assert emitted - T0 <= last_inside + S.outside_after_s + 2 * S.window_s


def test_a_weak_phone_deep_inside_is_still_inside_and_in_its_zone() -> None:
    """In, then the phone goes into a bag: every scanner hears it below the absolute
    floors, the zone's own scanner clearly stronger than the entrance's. Still inside,
    still in that zone, until it leaves through the door."""
    door = S.store_min_rssi_dbm  # the entrance scanner hears it, just
    weak = door + S.clear_of_door_db
    assert weak < S.inside_min_rssi_dbm  # below the absolute floor
    script, _, last_strong = shopper(inside_s=S.zone_min_presence_s)
    t = last_strong + STEP
    bagged = S.silence_hold_s + S.zone_min_presence_s  # longer than any hold
    script += stretch(t, bagged, {"s-prod": int(weak), "s-door": int(door)})
    script += stretch(t + bagged, 3, {"s-door": -60, "s-prod": -85})  # out
    script += stretch(t + bagged + 3, 30, {"s-door": -80, "s-c1": -86})
    out = run(engine(), script, until=t + bagged + 33 + S.silence_hold_s)
    assert len(store_events(out, ev.VISIT_ENTERED)) == 1
    (_, exited), = store_events(out, ev.VISIT_EXITED)
    assert abs(at(exited.data.exited_at) - T0 - (t + bagged)) <= S.window_s  # type: ignore[attr-defined]
    assert len(zone_events(out, ev.VISIT_ENTERED, "produce")) == 1
    (_, zone_exit), = zone_events(out, ev.VISIT_EXITED, "produce")
    assert at(zone_exit.data.exited_at) - T0 >= t + bagged - S.window_s  # type: ignore[attr-defined]


def test_a_weak_phone_outside_a_window_by_an_inner_zone_is_no_visit() -> None:
    """Relative evidence keeps a visit, it does not open one: someone standing outside
    a window next to an inner zone is heard by its scanner a little stronger than by
    the entrance's, below the floors."""
    door = S.store_min_rssi_dbm
    weak = door + S.clear_of_door_db
    assert weak < S.inside_min_rssi_dbm
    script = stretch(0, 8, {"s-door": -70})  # walking past the door
    script += stretch(8, 300, {"s-prod": int(weak), "s-door": int(door)})
    assert run(engine(), script, until=308 + S.silence_hold_s) == []


def test_a_weak_phone_outside_the_shop_window_is_no_visit() -> None:
    """The relative rule is for zones beyond the shop front: someone standing at the
    window, heard weakly by a window checkout's scanner and not by the entrance, for
    minutes, is not placed inside."""
    weak = S.store_min_rssi_dbm + S.clear_of_door_db
    assert weak < S.inside_min_rssi_dbm
    script = stretch(0, 300, {"s-c1": int(weak)})
    assert run(engine(), script, until=300 + S.silence_hold_s) == []


def test_a_slow_phone_is_placed() -> None:
    """A phone advertising once per half window gives each scanner fewer than
    min_samples per window; its window reaches back and it is placed all the same."""
    interval = S.window_s / 2
    assert S.window_s / interval < S.min_samples
    assert 2 * S.min_samples * interval <= S.sparse_window_s
    fast, _, _ = shopper(inside_s=0)  # walking in, as always
    n = round(3 * S.zone_min_presence_s / interval)
    start = fast[-1][0] + STEP
    slow = [(start + i * interval, {"s-prod": -60, "s-door": -75}) for i in range(n)]
    out = run(engine(), fast + slow, until=start + n * interval + 2 * S.silence_hold_s)
    assert len(store_events(out, ev.VISIT_ENTERED)) == 1
    assert len(zone_events(out, ev.VISIT_ENTERED, "produce")) == 1


def test_a_scanner_hearing_few_adverts_of_a_fast_phone_does_not_count() -> None:
    """The reach-back follows the phone's own rate: a phone heard often by the entrance
    scanner, and only now and then (below min_samples per window) by produce's, stays
    outside however strong those few readings are."""
    script: Script = []
    for i in range(round(120 / STEP)):
        levels = {"s-door": -70}
        if i % round(S.window_s / STEP) == 0:  # one reading per window
            levels["s-prod"] = -55
        script.append((i * STEP, levels))
    assert run(engine(), script, until=120 + S.silence_hold_s) == []


def test_a_lone_weak_entrance_reading_after_a_silence_is_not_an_exit() -> None:
    """Back from a silence, the first readings are a few weak ones at the entrance
    scanner only (far, through shelves): no evidence of being at the door."""
    silence = 0.3 * S.silence_hold_s
    weak_door = {"s-door": int(S.store_min_rssi_dbm) + 1}
    assert weak_door["s-door"] < S.inside_min_rssi_dbm
    script, _, last_inside = shopper(inside_s=3 * S.entry_confirm_s)
    back = last_inside + silence
    script += [(back + i * STEP, weak_door) for i in range(round(S.window_s / STEP))]
    script += stretch(back + S.window_s, 2 * S.zone_min_presence_s,
                      {"s-prod": -60, "s-door": -75})
    out = run(engine(), script, until=back + 2 * S.zone_min_presence_s + 2 * S.silence_hold_s)
    assert len(store_events(out, ev.VISIT_ENTERED)) == 1
    assert len(store_events(out, ev.VISIT_EXITED)) == 1


def test_a_weak_phone_passing_the_door_is_a_door_pass() -> None:
    """A weak phone is heard at the entrance below the absolute floor, but clearly
    stronger than anything inside: a pass under the entrance scanner all the same, so
    the entry is confirmed as quickly as anyone's and dated to it."""
    door_level = int(S.inside_min_rssi_dbm) - 2
    faint = int(S.store_min_rssi_dbm)
    assert door_level >= faint + S.clear_of_door_db
    script = stretch(0, S.window_s, {"s-door": door_level, "s-prod": faint})  # the doorway
    door_pass = S.window_s / 2
    inside = {"s-prod": int(S.inside_min_rssi_dbm) + 2, "s-door": faint}
    script += stretch(S.window_s, 3 * S.front_confirm_s, inside)
    out = run(engine(), script, until=S.window_s + 3 * S.front_confirm_s + S.silence_hold_s)
    (emitted, entered), = store_events(out, ev.VISIT_ENTERED)
    assert emitted - T0 < S.window_s + S.front_confirm_s  # the quick confirmation
    assert door_pass - at(entered.data.entered_at) + T0 <= S.window_s  # type: ignore[attr-defined]


def test_a_silence_while_the_entry_is_being_confirmed_does_not_restart_it() -> None:
    """Interior evidence after a door pass, a silence (every sample ages out), then the
    first adverts again, too few for any scanner to count: no evidence either way, so
    the confirmation goes on from the first interior evidence instead of restarting."""
    script, _, _ = shopper(inside_s=0.6 * S.entry_confirm_s)
    resume = script[-1][0] + max(S.window_s, S.sparse_window_s) + 1
    script += stretch(resume, 3 * S.entry_confirm_s, {"s-prod": -60, "s-door": -75})
    out = run(engine(), script, until=resume + 3 * S.entry_confirm_s + S.silence_hold_s)
    (emitted, _), = store_events(out, ev.VISIT_ENTERED)
    assert emitted - T0 < resume + S.min_samples * STEP + S.entry_confirm_s


def test_the_new_settings_come_from_the_toml_with_one_default() -> None:
    keys = ("silence_hold_s", "sparse_window_s", "clear_of_door_db")
    defaults = presence_settings(PresenceConfig())
    engine_defaults = PresenceSettings(zones=())
    for key in keys:
        assert getattr(defaults, key) == getattr(engine_defaults, key), key
    s = presence_settings(PresenceConfig.model_validate(
        {"silence_hold_s": 60, "sparse_window_s": 12, "clear_of_door_db": 9}))
    assert (s.silence_hold_s, s.sparse_window_s, s.clear_of_door_db) == (60, 12, 9)
    for bad in ({"silence_hold_s": -1}, {"sparse_window_s": 121}, {"clear_of_door_db": -3}):
        with pytest.raises(ValidationError):
            PresenceConfig.model_validate(bad)


def test_heard_but_placed_nowhere_ends_the_zone_visit_not_the_store_visit() -> None:
    """Only a silence holds a zone visit: heard weakly by a front zone's scanner alone
    (placed in no zone, no evidence of the door) for longer than exit_after_s, the
    produce visit ends; the store visit goes on (nothing says the phone left)."""
    weak = {"s-c1": int(S.store_min_rssi_dbm) + 2}
    assert weak["s-c1"] < S.inside_min_rssi_dbm
    away = 3 * S.exit_after_s
    assert away < S.silence_hold_s
    script, _, last_inside = shopper(inside_s=2 * S.zone_min_presence_s)
    script += stretch(last_inside + STEP, away, weak)
    back = last_inside + STEP + away
    script += stretch(back, 2 * S.zone_min_presence_s, {"s-prod": -60, "s-door": -75})
    out = run(engine(), script, until=back + 2 * S.zone_min_presence_s + 2 * S.silence_hold_s)
    assert len(store_events(out, ev.VISIT_ENTERED)) == 1
    assert len(zone_events(out, ev.VISIT_ENTERED, "produce")) == 2
    assert len(zone_events(out, ev.VISIT_EXITED, "produce")) == 2


def through_the_door_then_dipping(up: dict[str, int], down: dict[str, int],
                                  each_s: float) -> tuple[Script, float]:
    """Under the entrance scanner for 3 s, then ``up`` and ``down`` levels in turn,
    ``each_s`` each, for 6 x entry_confirm_s; the script and when it ends."""
    script = stretch(0, 3, {"s-door": -55, "s-c1": -75, "s-prod": -80})  # the doorway
    t = 3.0
    while t < 6 * S.entry_confirm_s:
        script += stretch(t, each_s, up) + stretch(t + each_s, each_s, down)
        t += 2 * each_s
    return script, t


def test_dips_under_the_floor_while_the_entry_is_confirmed_do_not_restart_it() -> None:
    """After a door pass, a weak phone in produce: its median goes under the floor for a
    few seconds now and then (a body turns), never heard at the door or outside in
    between. The run goes on through the dips (each shorter than outside_after_s): the
    visit opens after entry_confirm_s from the first interior evidence, not never."""
    up = {"s-prod": int(S.inside_min_rssi_dbm) + 4}
    down = {"s-prod": int(S.store_min_rssi_dbm) + 3}
    assert down["s-prod"] < S.inside_min_rssi_dbm
    up_s = down_s = 0.5 * S.entry_confirm_s
    assert down_s < min(S.window_s, S.outside_after_s)  # a dip, not an absence
    script, end = through_the_door_then_dipping(up, down, up_s)
    out = run(engine(), script, until=end + S.silence_hold_s)
    (emitted, _), = store_events(out, ev.VISIT_ENTERED)
    assert emitted - T0 <= 3 + S.window_s + S.entry_confirm_s + up_s + down_s


def test_a_dip_in_which_a_front_zone_leads_restarts_the_confirmation() -> None:
    """The same dips, but in each a front zone leads (under its floor): that is what a
    walker going on past the store's side gives (an inner corner zone and the last front
    zone in turn), not a dip inside. The run restarts each time: no visit."""
    up = {"s-prod": int(S.inside_min_rssi_dbm) + 4}
    down = {"s-prod": int(S.store_min_rssi_dbm) + 1, "s-c1": int(S.store_min_rssi_dbm) + 3}
    assert down["s-c1"] < S.inside_min_rssi_dbm
    script, end = through_the_door_then_dipping(up, down, 0.5 * S.entry_confirm_s)
    out = run(engine(), script, until=end + S.silence_hold_s)
    assert store_events(out, ev.VISIT_ENTERED) == []
