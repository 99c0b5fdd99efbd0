"""Benchmark: self-calibration from the zone beacons (core/presence/calibration.py).

  accuracy   fitted vs true path-loss exponent and scanner offsets on the generated
             stores of ``sim/stores.py`` (offsets compared after fixing both to mean
             zero: only their differences are observable)
  cost       the full presence pipeline over one store's adverts with calibration on
             (fitted every 30 s of the store's time, inline, and used by the engine),
             against the same pipeline without it, in the same run; the fit's cost per
             update
  accuracy   zone precision/recall, wrong-zone time and passers-by of both runs

    .venv/bin/python bench/bench_calibration.py [--stores 20] [--small] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from storegate.core.presence.calibration import Calibrator  # noqa: E402
from storegate.core.presence.infrastructure import Infrastructure  # noqa: E402
from storegate.sim.accuracy import evaluate, replay  # noqa: E402
from storegate.sim.family_report import HELD_OUT_SEEDS  # noqa: E402
from storegate.sim.stores import FULL, SMALL, adverts, generate  # noqa: E402


def calibrator_of(store, interval_s: float) -> Calibrator:  # type: ignore[no-untyped-def]
    return store.plan.calibrator(interval_s)  # type: ignore[no-any-return]


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
        infra = Infrastructure(store.plan.infrastructure())  # with beacon positions
        settings = store.plan.settings()
        fed = {}
        acc = {}
        # the whole pipeline (enrol, feed, tick) over the store's adverts; "on" fits every
        # 30 s of the store's time, as live, so its per-advert cost includes the fits
        for label, cal in (("off", None), ("on", calibrator_of(store, 30.0))):
            t0 = time.perf_counter()
            events, n = replay(store.sim, settings, iter(ads), infra, cal)
            fed[label] = time.perf_counter() - t0
            acc[label] = evaluate(store.sim, events, n)
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
            "us_per_advert_on": fed["on"] / len(ads) * 1e6, "fit_ms": fit_ms,
            **{f"{k}_{label}": getattr(acc[label], k) for label in acc
               for k in ("zone_precision", "zone_recall", "wrong_zone_time",
                         "passers_by_counted")}})
        r = rows[-1]
        print(f"store {seed}: S{r['scanners']} B{r['beacons']} n {r['n_true']:.2f} fit "
              f"{r['n_fit']:.2f} ({r['n_err']:+.3f}); offsets rms {r['offset_rms_db']:.2f} "
              f"max {r['offset_max_db']:.2f} dB over {r['scored_scanners']} scanners; "
              f"{r['pairs']} pairs; flags {len(r['flags'])}; "
              f"pipeline {r['us_per_advert_off']:.2f} -> {r['us_per_advert_on']:.2f} us/advert;"
              f" fit {r['fit_ms']:.1f} ms; zone P {r['zone_precision_off']:.3f} -> "
              f"{r['zone_precision_on']:.3f}, R {r['zone_recall_off']:.3f} -> "
              f"{r['zone_recall_on']:.3f}, wrong zone {100 * r['wrong_zone_time_off']:.1f} -> "
              f"{100 * r['wrong_zone_time_on']:.1f} %", flush=True)
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
    for k, best in (("zone_precision", min), ("zone_recall", min), ("wrong_zone_time", max),
                    ("passers_by_counted", max)):
        for label in ("off", "on"):
            vals = [r[f"{k}_{label}"] for r in rows]
            print(f"{k} calibration {label}: median {statistics.median(vals):.3f}, worst "
                  f"{best(vals):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
