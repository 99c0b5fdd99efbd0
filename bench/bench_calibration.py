"""Benchmark: self-calibration from the zone beacons (core/presence/calibration.py).

  accuracy   fitted vs true path-loss exponent and scanner offsets on the generated
             stores of ``sim/stores.py`` (offsets compared after fixing both to mean
             zero: only their differences are observable)
  cost       the full presence pipeline over one store's adverts with calibration on,
             against the same pipeline without it, in the same run; the fit's cost per
             update

    .venv/bin/python bench/bench_calibration.py [--stores 20] [--small] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from storegate.core.ble.eid import EidResolver  # noqa: E402
from storegate.core.presence.calibration import Calibrator  # noqa: E402
from storegate.core.presence.infrastructure import Infrastructure  # noqa: E402
from storegate.core.presence.pipeline import PresencePipeline  # noqa: E402
from storegate.sim.family_report import HELD_OUT_SEEDS  # noqa: E402
from storegate.sim.stores import FULL, SMALL, adverts, generate  # noqa: E402


def calibrator_of(store, interval_s: float) -> Calibrator:  # type: ignore[no-untyped-def]
    plan = store.plan
    return Calibrator({s.name: (s.x_m, s.y_m) for s in plan.scanners},
                      {b.label: (b.x_m, b.y_m) for b in plan.beacons}, interval_s=interval_s)


def infrastructure_of(store) -> Infrastructure:  # type: ignore[no-untyped-def]
    import dataclasses  # noqa: PLC0415
    pos = {b.label: (b.x_m, b.y_m) for b in store.plan.beacons}
    return Infrastructure(dataclasses.replace(b, position=pos.get(b.label))
                          for b in store.plan.infrastructure())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stores", type=int, default=20)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    size = SMALL if args.small else FULL
    rows = []
    timing: dict[str, float] = {}
    for seed in list(HELD_OUT_SEEDS)[:args.stores]:
        store = generate(seed, size)
        ads = list(adverts(store))
        infra = infrastructure_of(store)
        settings = store.plan.settings()
        fed = {}
        # "on": every advert of a zone beacon observed, no fit (a fit's cost is per update,
        # measured apart: simulated time runs ~1000x faster than a store's 30 s interval)
        for label, cal in (("off", None), ("on", calibrator_of(store, 1e9))):
            pipe = PresencePipeline(settings, EidResolver(), os.urandom,
                                    infrastructure=infra, calibrator=cal)
            t0 = time.perf_counter()
            for a in ads:
                pipe.feed(a)
            fed[label] = time.perf_counter() - t0
            if cal is not None:
                t1 = time.perf_counter()
                f = cal.refit(ads[-1].ts + 1)
                fit_ms = (time.perf_counter() - t1) * 1000
        # offsets compare within one linked group (each is fixed to mean zero on its own);
        # scanners the fit flags as not identified are left out and counted
        true = store.radio.scanner_offset_db
        scored = [s for s in f.offsets_db if s not in f.unlinked] if f.groups == 1 else []
        mean = sum(true[s] for s in scored) / len(scored) if scored else 0.0
        errs = [f.offsets_db[s] - (true[s] - mean) for s in scored] or [math.nan]
        rows.append({
            "seed": seed, "scanners": len(true), "beacons": len(store.plan.beacons),
            "n_true": store.radio.path_loss_n, "n_fit": f.exponent,
            "n_err": (f.exponent or 0) - store.radio.path_loss_n,
            "offset_rms_db": math.sqrt(sum(e * e for e in errs) / len(errs)),
            "offset_max_db": max(abs(e) for e in errs), "pairs": f.pairs,
            "scored_scanners": len(scored),
            "flags": f.flags(), "adverts": len(ads),
            "us_per_advert_off": fed["off"] / len(ads) * 1e6,
            "us_per_advert_on": fed["on"] / len(ads) * 1e6, "fit_ms": fit_ms})
        r = rows[-1]
        print(f"store {seed}: S{r['scanners']} B{r['beacons']} n {r['n_true']:.2f} fit "
              f"{r['n_fit']:.2f} ({r['n_err']:+.3f}); offsets rms {r['offset_rms_db']:.2f} "
              f"max {r['offset_max_db']:.2f} dB over {r['scored_scanners']} scanners; "
              f"{r['pairs']} pairs; flags {len(r['flags'])}; "
              f"pipeline {r['us_per_advert_off']:.2f} -> {r['us_per_advert_on']:.2f} us/advert;"
              f" fit {r['fit_ms']:.1f} ms", flush=True)
    for key in ("n_err", "offset_rms_db", "offset_max_db"):
        vals = [abs(r[key]) for r in rows if not math.isnan(r[key])]
        timing[key] = max(vals)
        print(f"{key}: median {statistics.median(vals):.3f}, worst {max(vals):.3f}")
    clean = [abs(r["n_err"]) for r in rows if not r["flags"]]
    if clean:
        print(f"n_err over the {len(clean)} unflagged stores: median "
              f"{statistics.median(clean):.3f}, worst {max(clean):.3f}")
    unscored = sum(1 for r in rows if not r["scored_scanners"])
    flagged = sum(1 for r in rows if r["flags"])
    print(f"stores flagged: {flagged}; stores whose offsets could not be scored "
          f"(scanners in unlinked groups): {unscored}")
    off = statistics.median(r["us_per_advert_off"] for r in rows)
    on = statistics.median(r["us_per_advert_on"] for r in rows)
    print(f"pipeline: {off:.2f} us/advert without calibration, {on:.2f} with "
          f"(x{on / off:.3f}); fit median {statistics.median(r['fit_ms'] for r in rows):.1f}"
          f" ms, worst {max(r['fit_ms'] for r in rows):.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
