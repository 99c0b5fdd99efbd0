"""``storegate calibrate CAPTURE -c CONFIG``: the store's radio model from a capture.

Reads an advert capture, keeps the adverts of the zone beacons the beacons file places
on the floor plan, fits the model of ``core/presence/calibration.py`` over the whole
capture and prints it with the thresholds it implies: per scanner, the RSSI a typical
phone gives at 1-5 m and at the scanner's zone radius (half the way to its nearest
positioned neighbour), and for neighbours the RSSI difference of a phone half-way
between them (where the phone's own transmit power cancels). The engine does not use
these yet: this is what a store's figures would be.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from storegate.config import Config
from storegate.core.ble.capture import MAX_LINE_CHARS, BadLine, bounded_lines, read_capture
from storegate.core.presence.calibration import (
    TYPICAL_PHONE_AT_1M_DBM,
    CalibrationFit,
    Calibrator,
    distance,
)
from storegate.core.presence.correction import NONE, Correction, derive
from storegate.errors import DataFileError, UsageError

DISTANCES_M: Final = (1.0, 2.0, 3.0, 5.0)
MAX_BEACON_ADVERTS: Final = 5_000_000  # held in memory to fit over the whole capture


@dataclass(frozen=True, slots=True)
class ScannerThresholds:
    scanner: str
    offset_db: float
    at_m: dict[str, float]  # "1", "2"... metres -> expected RSSI of a typical phone
    zone_radius_m: float | None  # half the way to the nearest positioned scanner
    at_radius_dbm: float | None


@dataclass(frozen=True, slots=True)
class NeighbourDifference:
    scanner_a: str
    scanner_b: str
    distance_m: float
    midpoint_difference_db: float  # RSSI at a - RSSI at b, phone half-way between


@dataclass(frozen=True, slots=True)
class CalibrationReport:
    capture: str
    beacon_adverts: int
    bad_lines: int
    censored_pairs: int
    fit: CalibrationFit
    tx_at_1m_dbm: float
    scanners: tuple[ScannerThresholds, ...]
    neighbours: tuple[NeighbourDifference, ...]
    # what the engine decides with (core/presence/correction.py): empty when the fit is
    # not usable (the configured floors, no offsets)
    engine: Correction = NONE


def calibrate(config: Config, capture: str, tx_at_1m: float) -> CalibrationReport:
    """The fit over the whole capture, and the thresholds for a phone of ``tx_at_1m``."""
    from storegate.app.presence_files import calibrator, config_beacons  # noqa: PLC0415

    beacons = config_beacons(config.presence)
    built = calibrator(config.calibration.model_copy(update={"enabled": True}),
                       config.presence, beacons)
    assert built is not None  # enabled above
    if not built:
        raise UsageError("nothing to calibrate: give scanner positions "
                         "([calibration.scanners]) and zone beacon positions (position = "
                         "[x, y] in the beacons file)")
    seen: list[tuple[float, str, str, int]] = []
    bad = 0
    try:
        src = open(capture, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError as exc:
        raise DataFileError(capture, f"cannot read the capture: {exc.strerror}") from exc
    with src:
        for item in read_capture(bounded_lines(src.readline, MAX_LINE_CHARS)):
            if isinstance(item, BadLine):
                bad += 1
                continue
            b = beacons.classify(item.manufacturer_data, item.service_data) \
                if item.manufacturer_data or item.service_data else None
            if b is None or b.position is None:
                continue
            if len(seen) >= MAX_BEACON_ADVERTS:
                raise DataFileError(capture, f"more than {MAX_BEACON_ADVERTS} beacon "
                                    "adverts: cut the capture shorter")
            seen.append((item.ts, item.scanner, b.label, item.rssi))
    seen.sort()
    if seen:  # one window over the whole capture, in as many buckets as the config's
        span = seen[-1][0] - seen[0][0]
        bucket = max(config.calibration.bucket_s, span / 256)
        built = Calibrator(built.scanners, built.beacons,
                           all_scanners=(*built.scanners, *built.uncalibrated),
                           window_s=span + 2 * bucket, bucket_s=bucket)
        for ts, scanner, label, rssi in seen:
            built.observe(scanner, label, rssi, ts)
        fit = built.refit(seen[-1][0] + bucket)
    else:
        fit = built.fit
    return CalibrationReport(
        capture=capture, beacon_adverts=len(seen), bad_lines=bad,
        censored_pairs=built.censored_pairs, fit=fit, tx_at_1m_dbm=tx_at_1m,
        scanners=_thresholds(fit, built.scanners, tx_at_1m),
        neighbours=_neighbours(fit, built.scanners),
        engine=derive(fit, built.scanners,
                      {s: z.id for z in config.presence.zones for s in z.scanners}))


def _nearest(scanners: dict[str, tuple[float, ...]]) -> dict[str, tuple[str, float]]:
    out = {}
    for s, p in scanners.items():
        others = [(distance(p, q), t) for t, q in scanners.items() if t != s]
        if others:
            d, t = min(others)
            out[s] = (t, d)
    return out


def _thresholds(fit: CalibrationFit, scanners: dict[str, tuple[float, ...]],
                tx: float) -> tuple[ScannerThresholds, ...]:
    if fit.state != "fitted":
        return ()
    near = _nearest(scanners)
    out = []
    for s in sorted({*scanners, *fit.uncalibrated}):
        radius = near[s][1] / 2 if s in near else None
        out.append(ScannerThresholds(
            scanner=s, offset_db=round(fit.offset(s), 2),
            at_m={f"{d:g}": round(fit.expected_rssi(s, d, tx), 1) for d in DISTANCES_M},
            zone_radius_m=None if radius is None else round(radius, 2),
            at_radius_dbm=None if radius is None else round(fit.expected_rssi(s, radius, tx),
                                                            1)))
    return tuple(out)


def _neighbours(fit: CalibrationFit,
                scanners: dict[str, tuple[float, ...]]) -> tuple[NeighbourDifference, ...]:
    if fit.state != "fitted":
        return ()
    pairs = {tuple(sorted((s, t))): d for s, (t, d) in _nearest(scanners).items()}
    return tuple(NeighbourDifference(a, b, round(d, 2), round(
        fit.difference_db(a, b, d / 2, d / 2), 2)) for (a, b), d in sorted(pairs.items()))


def _print(r: CalibrationReport) -> None:
    f = r.fit
    print(f"{r.capture}: {r.beacon_adverts} adverts of positioned beacons, {r.bad_lines} "
          f"bad line(s); fit: {f.state}")
    if f.state != "fitted" or f.exponent is None:
        print("  not enough beacon adverts heard by positioned scanners to fit")
        return
    se = f"±{f.exponent_se:.2f}" if f.exponent_se is not None else "(held at its bound)"
    print(f"  path-loss exponent n = {f.exponent:.2f} {se}; {f.pairs} scanner-beacon "
          f"pairs ({f.samples} adverts), {r.censored_pairs} left out near a scanner's "
          f"floor, {f.downweighted_pairs} down-weighted; residual rms "
          f"{f.residual_rms_db:.1f} dB")
    print(f"  flags: {', '.join(f.flags()) or 'none'}")
    if f.uncalibrated:
        print(f"  uncalibrated (no position, offset taken as 0): {', '.join(f.uncalibrated)}")
    print("  beacon RSSI at 1 m (dBm): " + ", ".join(
        f"{b} {p:.1f}" for b, p in f.powers_dbm.items()))
    dist = "  ".join(f"{d:>5g} m" for d in DISTANCES_M)
    print(f"  thresholds for a phone of {r.tx_at_1m_dbm:g} dBm at 1 m (expected RSSI):")
    print(f"    {'scanner':<20} {'offset':>7}  {dist}  {'radius':>7} {'at radius':>9}")
    for t in r.scanners:
        at = "  ".join(f"{v:>7.1f}" for v in t.at_m.values())
        rad = f"{t.zone_radius_m:>5.1f} m {t.at_radius_dbm:>9.1f}" \
            if t.zone_radius_m is not None and t.at_radius_dbm is not None else ""
        print(f"    {t.scanner:<20} {t.offset_db:>+7.1f}  {at}  {rad}")
    if r.engine is NONE:
        print("  the engine: this fit is not used (configured floors, no offsets)")
    else:
        offsets = ", ".join(f"{s} {o:+.1f}" for s, o in sorted(r.engine.offsets_db.items()))
        print(f"  the engine decides with: offsets {offsets or 'none'}")
        print("    zone floors (corrected dBm; a configured min_rssi_dbm wins): " + ", ".join(
            f"{z} {v:.1f}" for z, v in sorted(r.engine.zone_floor_dbm.items())))
    if r.neighbours:
        print("  neighbours: RSSI difference of any phone half-way between (a - b):")
        for nb in r.neighbours:
            print(f"    {nb.scanner_a} - {nb.scanner_b} ({nb.distance_m:.1f} m apart): "
                  f"{nb.midpoint_difference_db:+.1f} dB")


def _json(r: CalibrationReport) -> dict[str, Any]:
    f = r.fit
    return {"capture": r.capture, "beacon_adverts": r.beacon_adverts,
            "bad_lines": r.bad_lines, "state": f.state, "exponent": f.exponent,
            "exponent_se": f.exponent_se, "offsets_db": dict(f.offsets_db),
            "powers_dbm": dict(f.powers_dbm), "pairs": f.pairs, "samples": f.samples,
            "censored_pairs": r.censored_pairs, "residual_rms_db": f.residual_rms_db,
            "flags": f.flags(), "uncalibrated": list(f.uncalibrated),
            "tx_at_1m_dbm": r.tx_at_1m_dbm,
            "scanners": [{"scanner": t.scanner, "offset_db": t.offset_db, "at_m": t.at_m,
                          "zone_radius_m": t.zone_radius_m,
                          "at_radius_dbm": t.at_radius_dbm} for t in r.scanners],
            "neighbours": [{"a": n.scanner_a, "b": n.scanner_b, "distance_m": n.distance_m,
                            "midpoint_difference_db": n.midpoint_difference_db}
                           for n in r.neighbours],
            "engine": {"used": r.engine is not NONE,
                       "offsets_db": dict(r.engine.offsets_db),
                       "zone_floor_dbm": dict(r.engine.zone_floor_dbm),
                       "inside_floor_dbm": dict(r.engine.inside_floor_dbm)}}


def add_parser(sub: Any, add_config: Callable[[argparse.ArgumentParser], None],
               config_of: Callable[[argparse.Namespace], Config]) -> None:
    p = sub.add_parser("calibrate", help="fit the store's radio model (path-loss exponent, "
                       "scanner offsets) from a capture and print the thresholds it implies")
    p.add_argument("file", metavar="CAPTURE", help="capture (JSON lines)")
    add_config(p)
    p.add_argument("--tx-power", type=float, default=TYPICAL_PHONE_AT_1M_DBM,
                   metavar="DBM", help="a phone's RSSI at 1 m for the thresholds "
                   f"(default {TYPICAL_PHONE_AT_1M_DBM:g})")
    p.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        if not -100 <= args.tx_power <= 0 or math.isnan(args.tx_power):
            raise UsageError(f"--tx-power {args.tx_power}: must be between -100 and 0 dBm")
        report = calibrate(config_of(args), args.file, args.tx_power)
        if args.json:
            json.dump(_json(report), sys.stdout, indent=2)
            print()
        else:
            _print(report)
        return 0 if report.fit.state == "fitted" else 1

    p.set_defaults(func=run)
