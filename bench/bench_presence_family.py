"""Presence accuracy across a family of generated stores (issue 13), defaults only.

Each store is drawn from its seed (``sim/stores.py``: layout, scanner and beacon
positions, path-loss exponent, offsets, people); the real presence pipeline runs on its
adverts with the store's zones, scanners and beacons and every other setting at its
default. The report gives, per metric, the median and the worst store against the
issue's targets, and says which seed set it ran: tune on ``--set tune``, report on
``--set held-out`` (the default).

    .venv/bin/python bench/bench_presence_family.py                  # 20 held-out, ~1.5 min
    .venv/bin/python bench/bench_presence_family.py --set tune --stores 30
    .venv/bin/python bench/bench_presence_family.py --seed-from 42 --stores 5 --small
    .venv/bin/python bench/bench_presence_family.py --family alt   # the independent family

``--family alt`` draws the stores from ``sim/stores_alt.py`` instead: a radio and
behaviour model written independently of the one the engine was tuned on (same seed
sets, same report; files named ``presence_family-alt...``).

Writes ``bench/results/presence_family[-tune].md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from storegate.sim.family_report import (  # noqa: E402
    FAMILIES,
    HELD_OUT_SEEDS,
    TUNE_SEEDS,
    StoreResult,
    per_store,
    run,
    seed_set,
    summarise,
    table,
)
from storegate.sim.stores import FULL, SMALL  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", type=int, default=20)
    ap.add_argument("--set", choices=("held-out", "tune"), default="held-out",
                    help="the seed set (default held-out: the one to report on)")
    ap.add_argument("--seed-from", type=int, default=None,
                    help="first seed (overrides --set; the report names the set it fell in)")
    ap.add_argument("--small", action="store_true", help="small stores (10 minutes, few people)")
    ap.add_argument("--out", default=None, help="markdown report (json beside it)")
    ap.add_argument("--uncalibrated", action="store_true",
                    help="no self-calibration from the zone beacons (the engine without it)")
    ap.add_argument("--family", choices=FAMILIES, default="main",
                    help="main: sim/stores.py (default); alt: sim/stores_alt.py, the "
                         "independently written family")
    args = ap.parse_args()
    if not 1 <= args.stores <= 100:
        ap.error("--stores: 1..100")
    pool = HELD_OUT_SEEDS if args.set == "held-out" else TUNE_SEEDS
    first = pool[0] if args.seed_from is None else args.seed_from
    seeds = list(range(first, first + args.stores))
    size = SMALL if args.small else FULL
    which = seed_set(seeds)

    started = time.perf_counter()

    def progress(r: StoreResult) -> None:
        a = r.accuracy
        print(f"  store {r.seed}: {r.zones} zones, n {r.path_loss_n:.2f}, sigma "
              f"{r.noise_db:.1f} dB: zone P/R {a.zone_precision:.2f}/{a.zone_recall:.2f}, "
              f"passers {100 * a.passers_by_counted:.0f} %, exit err {r.exit_error_p50_s:.1f} s "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    print(f"{len(seeds)} stores, {which} seeds {seeds[0]}-{seeds[-1]}")
    results = run(seeds, size, progress, calibrated=not args.uncalibrated, family=args.family)
    secs = time.perf_counter() - started
    cal = "uncalibrated" if args.uncalibrated else "self-calibrated"
    fam = "" if args.family == "main" else f", {args.family} family"
    report = table(results, f"## Presence accuracy across {len(results)} stores ({which}, "
                            f"{cal}{fam})")
    report += f"\n({secs:.0f} s, {'small' if args.small else 'full-size'} stores)\n\n"
    report += per_store(results)
    print()
    print(report)
    default = "presence_family" + ("" if args.family == "main" else f"-{args.family}")
    default += "" if which == "held-out" else "-" + which.replace(" ", "-")
    default += "-uncalibrated" if args.uncalibrated else ""
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"{default}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    rows = [{"metric": r.metric.key, "median": r.median, "worst": r.worst,
             "worst_seed": r.worst_seed, "target": r.metric.target, "meets": r.meets}
            for r in summarise(results)]
    out.with_suffix(".json").write_text(json.dumps(
        {"family": args.family, "set": which, "seeds": seeds,
         "size": dataclasses.asdict(size), "seconds": secs,
         "summary": rows, "stores": [dataclasses.asdict(r) for r in results]},
        indent=1, default=str))
    print(f"written: {out} and {out.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
