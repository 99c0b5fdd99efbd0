"""The engine decides with the calibration fit (core/presence/correction.py): scanner
offsets taken out before comparisons, zone floors derived from the fitted exponent and
the plan, nothing used from a fit that cannot be trusted.

The scenarios are geometric (a hot scanner, a steep store against an open one); no
number here is tuned to a simulated store."""

from __future__ import annotations

import dataclasses
import math

from storegate.core import events as ev
from storegate.core.ble.eid import EidResolver
from storegate.core.presence.calibration import (
    TYPICAL_PHONE_AT_1M_DBM,
    CalibrationFit,
    Calibrator,
    fit_prepared,
)
from storegate.core.presence.correction import (
    NONE,
    PHONE_SPREAD_DB,
    Correction,
    derive,
    zone_radius_m,
)
from storegate.core.presence.engine import PresenceEngine
from storegate.core.presence.pipeline import PresencePipeline
from storegate.core.presence.settings import PresenceSettings, Zone

T0 = 1_795_000_000.0
SETTINGS = PresenceSettings(zones=(Zone("aisle-a", ("sa",)), Zone("aisle-b", ("sb",))))
POSITIONS = {"sa": (0.0, 0.0), "sb": (10.0, 0.0)}
ZONE_OF = {"sa": "aisle-a", "sb": "aisle-b"}


def engine(settings: PresenceSettings = SETTINGS) -> PresenceEngine:
    counter = iter(range(10**9))
    return PresenceEngine(settings, lambda n: next(counter).to_bytes(n, "big"))


def zones_entered(e: PresenceEngine, sightings: list[tuple[str, int]], seconds: int) -> (
        list[str | None]):
    out: list[ev.EventDraft] = []
    for k in range(seconds * 2):
        ts = T0 + k / 2
        out += e.tick(ts)
        for scanner, rssi in sightings:
            out += e.observe("c-1", scanner, rssi, ts)
    return [d.data.zone for d in out  # type: ignore[attr-defined]
            if d.type is ev.VISIT_ENTERED and d.data.zone is not None]  # type: ignore[attr-defined]


def fit(n: float, offsets: dict[str, float], **kw: object) -> CalibrationFit:
    return CalibrationFit(state="fitted", fitted_at=T0, exponent=n, exponent_se=0.05,
                          offsets_db=offsets, pairs=4, **kw)  # type: ignore[arg-type]


def test_a_hot_scanner_no_longer_wins_its_neighbours_zone() -> None:
    # The phone stands in aisle A: A's scanner hears it at -70 (A reads 4 dB cold: a
    # true -66); B's scanner is farther (a true -68) but reads 4 dB hot, so it reports
    # -64 and takes the zone over uncorrected.
    heard = [("sa", -70), ("sb", -64)]
    assert zones_entered(engine(), heard, 40) == ["aisle-b"]
    e = engine()
    e.use(Correction(offsets_db={"sa": -4.0, "sb": 4.0}))
    assert zones_entered(e, heard, 40) == ["aisle-a"]


def test_floors_follow_the_fitted_exponent_at_the_zones_radius() -> None:
    open_store = derive(fit(2.0, {"sa": 0.0, "sb": 0.0}), POSITIONS, ZONE_OF)
    steep_store = derive(fit(2.8, {"sa": 0.0, "sb": 0.0}), POSITIONS, ZONE_OF)
    r = zone_radius_m("sa", POSITIONS, ZONE_OF)
    assert 0 < r < 10  # short of the other zone's scanner
    assert open_store.zone_floor_dbm["aisle-a"] == TYPICAL_PHONE_AT_1M_DBM \
        - 20.0 * math.log10(r) - PHONE_SPREAD_DB
    # the same distance is weaker where the radio falls off faster
    assert steep_store.zone_floor_dbm["aisle-a"] < open_store.zone_floor_dbm["aisle-a"]
    assert steep_store.inside_floor_dbm["aisle-a"] < steep_store.zone_floor_dbm["aisle-a"]


def test_a_phone_at_a_steep_stores_zone_edge_is_placed_once_calibrated() -> None:
    # n = 3.5: a typical phone 4 m from the scanner reads about -80 dBm, below the
    # fixed -80 floor once it is a little weak; the derived floor places it.
    n = 3.5
    level = round(TYPICAL_PHONE_AT_1M_DBM - 10 * n * math.log10(4.0) - 3.0)  # a weak phone
    assert level < -80
    assert zones_entered(engine(), [("sa", level)], 40) == []
    e = engine()
    e.use(derive(fit(n, {"sa": 0.0, "sb": 0.0}), POSITIONS, ZONE_OF))
    assert zones_entered(e, [("sa", level)], 40) == ["aisle-a"]


def test_a_configured_zone_floor_wins_over_the_derived_one() -> None:
    settings = PresenceSettings(zones=(Zone("aisle-a", ("sa",), min_rssi_dbm=-65.0),
                                       Zone("aisle-b", ("sb",))))
    e = engine(settings)
    e.use(derive(fit(3.5, {"sa": 0.0, "sb": 0.0}), POSITIONS, ZONE_OF))
    assert zones_entered(e, [("sa", -75)], 40) == []  # the checkout lane stays strict


def test_an_untrustworthy_fit_corrects_nothing() -> None:
    good = fit(2.5, {"sa": 3.0, "sb": -3.0})
    assert derive(good, POSITIONS, ZONE_OF).offsets_db == {"sa": 3.0, "sb": -3.0}
    assert derive(CalibrationFit(state="waiting"), POSITIONS, ZONE_OF) is NONE
    assert derive(dataclasses.replace(good, at_bounds=("exponent",)), POSITIONS,
                  ZONE_OF) is NONE
    assert derive(dataclasses.replace(good, exponent_se=2.0), POSITIONS, ZONE_OF) is NONE
    # a scanner whose offset cannot be told from its beacon's power keeps 0
    c = derive(dataclasses.replace(good, unlinked=("sb",)), POSITIONS, ZONE_OF)
    assert c.offset("sb") == 0.0 and c.offset("sa") == 3.0
    # a scanner without a position: no offset, the configured floor
    c = derive(fit(2.5, {"sa": 3.0}), {"sa": (0.0, 0.0)}, ZONE_OF)
    assert "aisle-b" not in c.zone_floor_dbm and c.offset("sb") == 0.0


def _fed_calibrator() -> Calibrator:
    # two scanners, beacons near and far: scanner b reads 6 dB hotter than a
    beacons = {"ba": (1.0, 0.0), "bb": (9.0, 0.0), "bc": (5.0, 3.0), "bd": (2.0, 4.0)}
    cal = Calibrator(POSITIONS, beacons, interval_s=30)
    for k in range(120):
        for s, sp in POSITIONS.items():
            for b, bp in beacons.items():
                d = math.dist(sp, bp)
                r = -59 - 25 * math.log10(d) + (3.0 if s == "sb" else -3.0) + (k % 3 - 1)
                cal.observe(s, b, round(r), T0 + k)
    return cal


def test_the_pipeline_decides_with_each_new_fit_inline_or_adopted() -> None:
    inline = PresencePipeline(SETTINGS, EidResolver(), bytes, calibrator=_fed_calibrator())
    assert inline.engine.correction is NONE
    inline.tick(T0 + 121)
    assert inline.engine.correction.offset("sb") > inline.engine.correction.offset("sa") + 4

    cal = _fed_calibrator()
    off_loop = PresencePipeline(SETTINGS, EidResolver(), bytes, calibrator=cal,
                                fit_inline=False)
    off_loop.tick(T0 + 121)
    assert off_loop.engine.correction is NONE  # tick fits nothing: the caller does
    assert cal.due(T0 + 121)
    made, censored = fit_prepared(cal.prepare(T0 + 121))
    off_loop.adopt_fit(made, censored)
    assert off_loop.engine.correction == inline.engine.correction
    assert not cal.due(T0 + 122)  # the next one is interval_s on

    measured_only = PresencePipeline(SETTINGS, EidResolver(), bytes,
                                     calibrator=_fed_calibrator(), use_calibration=False)
    measured_only.tick(T0 + 121)
    assert measured_only.calibrator is not None
    assert measured_only.calibrator.fit.state == "fitted"
    assert measured_only.engine.correction is NONE


def test_a_fit_that_disagrees_with_the_recent_ones_is_not_used() -> None:
    pipe = PresencePipeline(SETTINGS, EidResolver(), bytes, calibrator=_fed_calibrator(),
                            fit_inline=False)
    pipe.adopt_fit(fit(2.5, {"sa": -3.0, "sb": 3.0}))
    before = pipe.engine.correction
    assert before.offset("sb") == 3.0
    pipe.adopt_fit(dataclasses.replace(fit(2.5, {"sa": 3.0, "sb": -3.0}), disagrees=True))
    assert pipe.engine.correction == before
