"""A poster check-in in the presence engine and pipeline: visits entered at once, held
open without Bluetooth, carried on by BLE, ended by BLE elsewhere or by withdrawal."""

from __future__ import annotations

import pytest

from storegate.core import events as ev
from storegate.core.ble.eid import EidResolver
from storegate.core.presence.engine import PresenceEngine
from storegate.core.presence.pipeline import PresencePipeline
from tests.test_presence_engine import SETTINGS, T0, engine, kinds

HOLD = 120.0


def ticks(e: PresenceEngine, start: float, until: float) -> list[ev.EventDraft]:
    out: list[ev.EventDraft] = []
    t = start
    while t < until:
        t += 1.0
        out += e.tick(t)
    return out


def test_a_check_in_enters_the_store_and_the_zone_at_once() -> None:
    e = engine()
    out = e.check_in("c-1", "aisle-b", T0, hold_s=HOLD)
    assert kinds(out) == [("entered", None), ("entered", "aisle-b")]
    assert all(d.time == T0 for d in out)  # at the scan, not after the minimum presence
    store, zone = e.visits("c-1")
    assert store is not None and zone is not None
    assert (zone.zone, zone.entered, zone.first, zone.held_until) == ("aisle-b", True, T0,
                                                                      T0 + HOLD)
    assert store.visit_id == out[0].data.visit_id  # type: ignore[attr-defined]
    assert e.present() == {None: 1, "aisle-b": 1}


def test_without_ble_the_visits_stay_open_for_the_hold_then_exit_at_the_scan() -> None:
    e = engine()
    e.check_in("c-1", "aisle-b", T0, hold_s=HOLD)
    assert ticks(e, T0, T0 + HOLD - 1) == []  # exit_after_s (10 s) does not end it
    assert e.present() == {None: 1, "aisle-b": 1}
    out = ticks(e, T0 + HOLD - 1, T0 + HOLD)
    assert kinds(out) == [("exited", "aisle-b"), ("exited", None)]
    # the exit's time is the last evidence (the scan): the hold invents no dwell time
    assert all(d.data.exited_at == ev.rfc3339(T0) for d in out)  # type: ignore[attr-defined]
    assert all(d.data.dwell_s == 0.0 for d in out)  # type: ignore[attr-defined]
    assert e.tracked == 0
    assert e.visits("c-1") == (None, None)


def test_ble_evidence_in_the_zone_carries_the_visit_on_past_the_hold() -> None:
    e = engine()
    out = e.check_in("c-1", "aisle-a", T0, hold_s=HOLD)
    for i in range(200):  # the phone advertises from the same zone for 200 s
        out += e.tick(T0 + i)
        out += e.observe("c-1", "sa", -60, T0 + i)
    out += ticks(e, T0 + 199, T0 + 230)
    assert kinds(out) == [("entered", None), ("entered", "aisle-a"), ("dwelled", None),
                          ("dwelled", "aisle-a"), ("exited", "aisle-a"), ("exited", None)]
    exits = [d for d in out if d.type is ev.VISIT_EXITED]
    assert all(d.data.exited_at == ev.rfc3339(T0 + 199) for d in exits)  # type: ignore[attr-defined]
    assert len({d.data.visit_id for d in out if d.data.zone == "aisle-a"}) == 1  # type: ignore[attr-defined]


def test_ble_placing_the_customer_elsewhere_ends_the_checked_in_zone() -> None:
    e = engine()
    out = e.check_in("c-1", "aisle-a", T0, hold_s=HOLD)
    for i in range(1, 30):
        out += e.observe("c-1", "sb", -60, T0 + i)
    assert ("exited", "aisle-a") in kinds(out)
    assert ("entered", "aisle-b") in kinds(out)
    _, zone = e.visits("c-1")
    assert zone is not None and zone.zone == "aisle-b"


def test_a_check_in_confirms_a_ble_candidate_at_once_and_keeps_its_start() -> None:
    e = engine()
    out: list[ev.EventDraft] = []
    for i in range(5):  # 5 s of BLE: below the 20 s minimum, not yet entered
        out += e.observe("c-1", "sa", -60, T0 + i)
    assert out == []
    out = e.check_in("c-1", "aisle-a", T0 + 5, hold_s=HOLD)
    assert kinds(out) == [("entered", None), ("entered", "aisle-a")]
    assert out[0].data.entered_at == ev.rfc3339(T0)  # type: ignore[attr-defined]


def test_a_check_in_at_another_zone_switches_zones_without_overlap() -> None:
    e = engine()
    e.check_in("c-1", "aisle-a", T0, hold_s=HOLD)
    out = e.check_in("c-1", "checkout", T0 + 40, hold_s=HOLD)
    assert kinds(out) == [("exited", "aisle-a"), ("entered", "checkout")]
    store, zone = e.visits("c-1")
    assert store is not None and store.last == T0 + 40 and store.held_until == T0 + 40 + HOLD
    assert zone is not None and zone.zone == "checkout"


def test_checking_in_again_at_the_same_zone_is_evidence_of_dwell_and_a_new_hold() -> None:
    e = engine()
    e.check_in("c-1", "aisle-a", T0, hold_s=HOLD)
    # still there 100 s later: the same visits dwell (60 s threshold), none is opened
    assert kinds(e.check_in("c-1", "aisle-a", T0 + 100, hold_s=HOLD)) == [
        ("dwelled", None), ("dwelled", "aisle-a")]
    assert ticks(e, T0, T0 + 100 + HOLD - 1) == []
    assert [k for k, _ in kinds(ticks(e, T0 + 100 + HOLD - 1, T0 + 100 + HOLD))] == [
        "exited", "exited"]


def test_forget_drops_a_checked_in_customer_without_an_event() -> None:
    e = engine()
    e.check_in("c-1", "aisle-a", T0, hold_s=HOLD)
    e.forget("c-1")
    assert e.visits("c-1") == (None, None)
    assert ticks(e, T0, T0 + HOLD + 5) == []
    assert e.close_all() == []


def test_an_unknown_zone_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="not one of this store's zones"):
        engine().check_in("c-1", "bakery", T0, hold_s=HOLD)


def test_the_pipeline_checks_in_a_customer_with_no_identity_and_withdrawal_drops_it(
) -> None:
    counter = iter(range(10**9))
    pipeline = PresencePipeline(SETTINGS, EidResolver(), lambda n: next(counter).to_bytes(
        n, "big"), footfall_secret=b"k" * 32)
    assert len(pipeline.resolver) == 0  # the phone never advertises: nobody enrolled
    out = pipeline.check_in("c-1", "checkout", T0, hold_s=HOLD)
    assert kinds(out) == [("entered", None), ("entered", "checkout")]
    out = pipeline.tick(T0 + 30)
    assert not [d for d in out if d.type is ev.VISIT_EXITED]
    assert pipeline.withdraw(["c-1"]) == 1
    assert pipeline.engine.visits("c-1") == (None, None)
    later = pipeline.tick(T0 + HOLD + 10)
    assert not [d for d in later if d.type in (ev.VISIT_EXITED, ev.VISIT_ENTERED)]
