"""Accuracy across a family of stores: the real presence pipeline, defaults only, on
each generated store; per metric the median and the worst store, against the issue's
targets.

Seeds come in two sets: :data:`TUNE_SEEDS` may be looked at while tuning,
:data:`HELD_OUT_SEEDS` are only reported on. Nothing here asserts a target: the report
says which are met.

"Enter/exit error" is the reported timestamp against the truth (``entered_at`` and
``exited_at`` of the store visit, absolute seconds): what the targets are about, since
the engine may back-date an entry. "Latency" is when the event was *emitted* after the
true moment (``sim/accuracy.py``), shown beside it.

Pure: the caller prints and saves.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from storegate.core import events as ev
from storegate.core.presence.infrastructure import Infrastructure
from storegate.sim import stores_alt
from storegate.sim.accuracy import Accuracy, evaluate, predicted_visits, replay
from storegate.sim.stores import FULL, LINGERER, FamilyStore, StoreSize, adverts, generate

TUNE_SEEDS: Final = range(1000, 1100)
HELD_OUT_SEEDS: Final = range(9000, 9100)
# "main": sim/stores.py, the family the engine is tuned on; "alt": sim/stores_alt.py, an
# independent radio and behaviour model, to show overfitting to the first one
FAMILIES: Final = ("main", "alt")


def seed_set(seeds: Iterable[int]) -> str:
    """Which set a run drew from: "tune", "held-out" or "ad hoc" (mixed or neither)."""
    seeds = list(seeds)
    if seeds and all(s in TUNE_SEEDS for s in seeds):
        return "tune"
    if seeds and all(s in HELD_OUT_SEEDS for s in seeds):
        return "held-out"
    return "ad hoc"


@dataclass(frozen=True, slots=True)
class StoreResult:
    seed: int
    zones: int
    scanners: int
    doors: int
    path_loss_n: float
    noise_db: float
    accuracy: Accuracy
    enter_error_p50_s: float  # |entered_at - true entry| of matched store visits
    exit_error_p50_s: float  # |exited_at - true exit|
    store_visits_true: int
    passers_by: int  # walking past and lingering outside, all with the app
    walkers_counted: float  # share of those walking past given a store visit
    lingerers_counted: float  # share of those standing outside given a store visit

    def value(self, key: str) -> float:
        if not hasattr(self.accuracy, key):
            return float(getattr(self, key))
        return float(getattr(self.accuracy, key))


@dataclass(frozen=True, slots=True)
class Metric:
    key: str  # a field of StoreResult or Accuracy
    label: str
    higher_is_better: bool
    target: float | None  # for the worst store; None: shown, not targeted
    percent: bool = False

    def worst(self, values: Sequence[float]) -> float:
        vals = [v for v in values if not math.isnan(v)]
        if len(vals) < len(values):  # a store that could not be measured is the worst
            return float("nan")
        return min(vals) if self.higher_is_better else max(vals)

    def meets(self, value: float) -> bool | None:
        if self.target is None:
            return None
        if math.isnan(value):
            return False
        return value >= self.target if self.higher_is_better else value <= self.target

    def fmt(self, value: float) -> str:
        if math.isnan(value):
            return "n/a"
        return f"{100 * value:.1f} %" if self.percent else (
            f"{value:.3f}" if not self.key.endswith("_s") else f"{value:.1f} s")


METRICS: Final = (
    Metric("zone_precision", "zone-visit precision", True, 0.93),
    Metric("zone_recall", "zone-visit recall", True, 0.93),
    Metric("wrong_zone_time", "wrong-zone time", False, 0.05, percent=True),
    Metric("passers_by_counted", "passers-by counted as store visits", False, 0.05,
           percent=True),
    Metric("walkers_counted", "  of them walking past", False, None, percent=True),
    Metric("lingerers_counted", "  of them standing outside the door", False, None,
           percent=True),
    Metric("exit_error_p50_s", "exit error p50 (exited_at)", False, 10.0),
    Metric("enter_error_p50_s", "enter error p50 (entered_at)", False, 10.0),
    Metric("store_precision", "store-visit precision", True, None),
    Metric("store_recall", "store-visit recall", True, None),
    Metric("exit_latency_p50_s", "exit latency p50 (emitted)", False, None),
    Metric("enter_latency_p50_s", "enter latency p50 (emitted)", False, None),
)


def run_pipeline(store: FamilyStore, advert_seed: int | None = None, *,
                 calibrated: bool = True) -> tuple[list[tuple[float, ev.EventDraft]], int]:
    """The store's adverts through a pipeline built from its plan (zones, scanners,
    beacons, their positions) with every other setting at its default; events with
    emission times. ``calibrated=False``: no self-calibration (the engine as it was
    before it used one)."""
    stream = stores_alt.adverts(store, advert_seed) if isinstance(store, stores_alt.AltStore) \
        else adverts(store, advert_seed)
    return replay(store.sim, store.plan.settings(), stream,
                  Infrastructure(store.plan.infrastructure()),
                  store.plan.calibrator() if calibrated else None)


def _timestamp_errors(store: FamilyStore, events: list[tuple[float, ev.EventDraft]]) -> (
    tuple[list[float], list[float]]
):
    truth = {p.id: p.truth[0] for p in store.sim.people
             if p.identity is not None and not p.passer_by and p.truth}
    enter: list[float] = []
    exit_: list[float] = []
    for v in predicted_visits(events):
        iv = truth.get(v.customer)
        if v.zone is not None or iv is None:
            continue
        end = v.end if v.end is not None else store.sim.end
        if not (v.start < iv.end and iv.start < end):
            continue  # no match: counted against store precision, not here
        enter.append(abs(v.start - iv.start))
        if v.end is not None:
            exit_.append(abs(v.end - iv.end))
    return enter, exit_


def run_store(seed: int, size: StoreSize = FULL, *, calibrated: bool = True,
              family: str = "main") -> StoreResult:
    if family not in FAMILIES:
        raise ValueError(f"family: one of {', '.join(FAMILIES)}")
    store = stores_alt.generate(seed, size) if family == "alt" else generate(seed, size)
    events, n = run_pipeline(store, calibrated=calibrated)
    acc = evaluate(store.sim, events, n)
    enter, exit_ = _timestamp_errors(store, events)
    people = store.sim.people
    counted = {v.customer for v in predicted_visits(events) if v.zone is None}
    lingerers = [p.id for p in people if p.passer_by and p.id.startswith(LINGERER)]
    walkers = [p.id for p in people if p.passer_by and not p.id.startswith(LINGERER)]
    return StoreResult(
        seed=seed, zones=len(store.plan.zones), scanners=len(store.plan.scanners),
        doors=len(store.plan.doors), path_loss_n=store.radio.path_loss_n,
        noise_db=store.radio.noise_db, accuracy=acc,
        enter_error_p50_s=statistics.median(enter) if enter else float("nan"),
        exit_error_p50_s=statistics.median(exit_) if exit_ else float("nan"),
        store_visits_true=sum(1 for p in people if p.identity is not None and not p.passer_by),
        passers_by=sum(1 for p in people if p.passer_by),
        walkers_counted=_share(counted, walkers), lingerers_counted=_share(counted, lingerers))


def _share(counted: set[str], ids: list[str]) -> float:
    return sum(1 for i in ids if i in counted) / len(ids) if ids else float("nan")


def run(seeds: Sequence[int], size: StoreSize = FULL,
        progress: Callable[[StoreResult], None] | None = None, *,
        calibrated: bool = True, family: str = "main") -> list[StoreResult]:
    out = []
    for seed in seeds:
        r = run_store(seed, size, calibrated=calibrated, family=family)
        if progress is not None:
            progress(r)
        out.append(r)
    return out


@dataclass(frozen=True, slots=True)
class Row:
    metric: Metric
    median: float
    worst: float
    worst_seed: int | None
    meets: bool | None


def summarise(results: Sequence[StoreResult]) -> list[Row]:
    rows = []
    for m in METRICS:
        values = [r.value(m.key) for r in results]
        known = [v for v in values if not math.isnan(v)]
        worst = m.worst(values)
        worst_seed = next((r.seed for r, v in zip(results, values, strict=True)
                           if v == worst or (math.isnan(worst) and math.isnan(v))), None)
        rows.append(Row(m, statistics.median(known) if known else float("nan"), worst,
                        worst_seed, m.meets(worst)))
    return rows


def table(results: Sequence[StoreResult], title: str = "") -> str:
    """A markdown report: what ran, then median and worst store per metric."""
    seeds = [r.seed for r in results]
    lines = [title] if title else []
    lines += [
        f"{len(results)} stores, seeds {min(seeds)}-{max(seeds)} ({seed_set(seeds)} set); "
        "presence defaults only",
        f"zones {min(r.zones for r in results)}-{max(r.zones for r in results)}, "
        f"scanners {min(r.scanners for r in results)}-{max(r.scanners for r in results)}, "
        f"path-loss n {min(r.path_loss_n for r in results):.2f}-"
        f"{max(r.path_loss_n for r in results):.2f}, sigma "
        f"{min(r.noise_db for r in results):.1f}-{max(r.noise_db for r in results):.1f} dB; "
        f"{sum(r.store_visits_true for r in results)} app shoppers, "
        f"{sum(r.accuracy.zone_visits_true for r in results)} true zone visits, "
        f"{sum(r.passers_by for r in results)} passers-by/lingerers, "
        f"{sum(r.accuracy.adverts for r in results):,} adverts",
        "",
        "| metric | target (worst store) | median | worst | worst seed | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in summarise(results):
        m = row.metric
        target = "-" if m.target is None else \
            f"{'>=' if m.higher_is_better else '<='} {m.fmt(m.target)}"
        met = "-" if row.meets is None else ("yes" if row.meets else "**no**")
        lines.append(f"| {m.label} | {target} | {m.fmt(row.median)} | {m.fmt(row.worst)} | "
                     f"{row.worst_seed if row.worst_seed is not None else '-'} | {met} |")
    return "\n".join(lines) + "\n"


def per_store(results: Sequence[StoreResult]) -> str:
    """One line per store (markdown), for finding what the worst stores have in common."""
    lines = ["| seed | zones | scanners | doors | n | sigma | zone P | zone R | wrong zone "
             "| passers counted | enter err | exit err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        a = r.accuracy
        lines.append(
            f"| {r.seed} | {r.zones} | {r.scanners} | {r.doors} | {r.path_loss_n:.2f} | "
            f"{r.noise_db:.1f} | {a.zone_precision:.3f} | {a.zone_recall:.3f} | "
            f"{100 * a.wrong_zone_time:.1f} % | {100 * a.passers_by_counted:.0f} % | "
            f"{r.enter_error_p50_s:.1f} s | {r.exit_error_p50_s:.1f} s |")
    return "\n".join(lines) + "\n"
