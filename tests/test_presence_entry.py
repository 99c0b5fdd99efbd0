"""Entry with a calibration (issue 13): a walker along the shop front stays outside
however the calibration corrects the scanners, and a shopper's entry is said within a
few evaluation steps of clear interior evidence, while weak evidence still waits.

Levels are scripted; timings are expressed in the settings (their windows, steps and
confirmations), never in seconds tuned to a simulated store."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from storegate.app.presence_files import presence_settings
from storegate.config import PresenceConfig
from storegate.core import events as ev
from storegate.core.presence.correction import Correction
from storegate.core.presence.engine import PresenceEngine
from storegate.core.presence.settings import PresenceSettings
from tests.test_presence_door import (
    SETTINGS,
    STEP,
    T0,
    Script,
    at,
    engine,
    run,
    store_events,
    stretch,
)

S = SETTINGS
# A calibration whose offsets favour the first checkout (its scanner reads 4 dB low, so
# 4 dB are added back) and whose floors, derived from an open store, reach far: the
# conditions in which a front scanner keeps leading for someone on the pavement.
GENEROUS = Correction(offsets_db={"s-c1": -4.0, "s-door": 2.0},
                      zone_floor_dbm={z.id: -88.0 for z in S.zones},
                      inside_floor_dbm={z.id: -90.0 for z in S.zones}, exponent=2.0)


def walk_past_the_end_of_the_front(seconds: float) -> Script:
    """From beyond the end of the store, along the first checkout's window, then on:
    only that checkout's scanner hears them well (it is the front's last), the
    entrance (at the far end) faintly at most; no pass under the entrance scanner."""
    n = round(seconds / STEP)
    out: Script = []
    for i in range(n):
        f = i / (n - 1)
        c1 = round(-88 + 16 * (1 - abs(2 * f - 1)))  # rises to -72 in front, falls again
        out.append((i * STEP, {"s-c1": c1, "s-c2": c1 - 8, "s-prod": c1 - 10}))
    return out


def test_a_walker_along_one_front_zone_is_not_counted_under_a_calibration() -> None:
    """Placed in the one front zone for longer than the front confirmation (the end of
    the front, or a wide checkout), never at the door: no visit, calibrated or not; a
    phone there for longer than ``front_only_confirm_s`` is someone at the checkout."""
    walk = (S.front_confirm_s + S.front_only_confirm_s) / 2
    assert walk > S.front_confirm_s
    script = walk_past_the_end_of_the_front(walk)
    for correction in (GENEROUS, None):
        e = engine()
        if correction is not None:
            e.use(correction)
        assert run(e, script, until=3 * S.front_only_confirm_s) == []
    stay = stretch(0, 2 * S.front_only_confirm_s, {"s-c1": -66, "s-c2": -74, "s-prod": -76})
    e = engine()
    e.use(GENEROUS)
    (emitted, _), = store_events(run(e, stay, until=4 * S.front_only_confirm_s),
                                 ev.VISIT_ENTERED)
    assert emitted - T0 >= S.front_only_confirm_s


def test_evidence_beyond_the_front_without_a_door_pass_still_opens_a_visit() -> None:
    """The door pass lost (a fade, a side door): placed beyond the front for the front
    confirmation is still a visit; only evidence on the shop front alone is not."""
    script = stretch(0, 2 * S.front_confirm_s, {"s-prod": -62, "s-c1": -75, "s-door": -80})
    e = engine()
    e.use(GENEROUS)
    (emitted, _), = store_events(run(e, script, until=4 * S.front_confirm_s), ev.VISIT_ENTERED)
    assert emitted - T0 >= S.front_confirm_s


def doorway() -> Script:
    """Walking up on the pavement, then under the entrance scanner."""
    return stretch(0, 8, {"s-door": -80, "s-c1": -85}) + \
        stretch(8, 3, {"s-door": -55, "s-c1": -75, "s-prod": -80})


def at_opening(e: PresenceEngine, attr: str) -> list[float]:
    """Spy on the door: the track's ``attr`` at the first evaluation with a store visit
    open (when it is set then); the list stays empty if it never is."""
    seen: list[float] = []
    original = e._door

    def spy(customer, track, medians, ts, out, *, se):  # type: ignore[no-untyped-def]
        original(customer, track, medians, ts, out, se=se)
        value = getattr(track, attr)
        if track.store is not None and not seen and value is not None:
            seen.append(value)

    e._door = spy  # type: ignore[method-assign]
    return seen


def test_clear_interior_evidence_is_said_within_a_few_steps() -> None:
    """Through the door, then heard far stronger beyond the front than the entrance
    heard them at any time lately (the phone much nearer the interior scanner, beyond
    the noise): the visit is said within ``entry_clear_s`` (and an evaluation step) of
    the interior evidence, not ``entry_confirm_s`` later; dated to the door pass."""
    script = doorway() + stretch(11, 3 * S.window_s, {"s-prod": -48, "s-door": -80})
    e = engine()
    inside = at_opening(e, "interior_since")  # the run of evidence that opened it
    out = run(e, script, until=200)
    (emitted, entered), = store_events(out, ev.VISIT_ENTERED)
    assert inside, "the interior evidence began"
    assert emitted - inside[0] <= S.entry_clear_s + 2 * S.evaluate_every_s
    assert emitted - inside[0] < S.entry_confirm_s
    assert at(entered.data.entered_at) - T0 <= 11  # type: ignore[attr-defined]


def test_clear_evidence_must_outlast_half_a_window() -> None:
    """Consecutive medians share most of their samples, so a second of clear medians is
    one lucky window (a passer-by's fade at the entrance), not a second look: clear
    evidence opens the visit only once it has held for ``entry_clear_s``, at least half
    a window, when the median rests on a majority of samples taken after it first
    looked clear."""
    assert S.entry_clear_s >= S.window_s / 2
    script = doorway() + stretch(11, 3 * S.window_s, {"s-prod": -48, "s-door": -80})
    e = engine()
    clear = at_opening(e, "clear_since")
    (emitted, _), = store_events(run(e, script, until=200), ev.VISIT_ENTERED)
    assert clear, "opened on clear evidence"
    assert emitted - clear[0] >= S.entry_clear_s
    assert emitted - clear[0] < S.entry_confirm_s


def test_weak_interior_evidence_waits_for_the_confirmation() -> None:
    """Inside, but only about as strong as the entrance, and noisy (a phone between the
    two): within the noise, no faster entry: ``entry_confirm_s`` of it."""
    noisy = itertools.cycle((-58, -70, -64, -61, -67))  # median -64, spread of 6 dB
    script = doorway()
    script += [(11 + i * STEP, {"s-prod": next(noisy), "s-door": -65})
               for i in range(round(4 * S.entry_confirm_s / STEP))]
    e = engine()
    since: list[float] = []
    original = e._door

    def spy(customer, track, medians, ts, out, *, se):  # type: ignore[no-untyped-def]
        original(customer, track, medians, ts, out, se=se)
        if track.store is not None and not since:  # the run of evidence that opened it
            since.append(track.interior_since)

    e._door = spy  # type: ignore[method-assign]
    (emitted, _), = store_events(run(e, script, until=300), ev.VISIT_ENTERED)
    assert since
    assert emitted - since[0] >= S.entry_confirm_s


def test_a_fade_on_the_entrance_link_is_no_clear_evidence() -> None:
    """Standing outside the door, an interior scanner behind the window hears them too;
    the entrance link fades for longer than a window (its held level runs out) but less
    than ``entry_confirm_s``: the interior looks far stronger meanwhile, yet the entrance
    heard them louder than that moments ago: no visit."""
    fade = 1.5 * S.window_s
    assert fade < S.entry_confirm_s
    script = stretch(0, 30, {"s-door": -62, "s-prod": -76})
    script += stretch(30, fade, {"s-door": -85, "s-prod": -76})
    script += stretch(30 + fade, 30, {"s-door": -62, "s-prod": -76})
    assert run(engine(), script, until=200) == []


def test_the_clear_evidence_settings_come_from_the_toml() -> None:
    defaults = presence_settings(PresenceConfig())
    engine_defaults = PresenceSettings(zones=())
    for key in ("entry_clear_z", "entry_clear_ratio", "entry_clear_s", "front_only_confirm_s"):
        assert getattr(defaults, key) == getattr(engine_defaults, key), key  # one default
    s = presence_settings(PresenceConfig.model_validate(
        {"entry_clear_z": 3, "entry_clear_ratio": 2, "entry_clear_s": 0.5}))
    assert (s.entry_clear_z, s.entry_clear_ratio, s.entry_clear_s) == (3, 2, 0.5)
    for bad in ({"entry_clear_ratio": 0.5}, {"entry_clear_z": -1}, {"entry_clear_s": -1}):
        with pytest.raises(ValidationError):
            PresenceConfig.model_validate(bad)
