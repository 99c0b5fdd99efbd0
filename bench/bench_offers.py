"""Benchmark: offer decisions with 10,000 customers and 500 active campaigns, against a
naive scan over every campaign in the same run.

    storegate   OfferEngine.decide: campaigns indexed by trigger kind and zone /
                category / n, then by the segments they require
    baseline    the same engine with its candidate step replaced by a scan of all 500
                campaigns, matching trigger and audience from the campaign models (what
                one writes first); the policies after it are the same code

Both decide the same triggers on the same state (3,000 customers holding offers and
issue history loaded, as after a restart) and must give the same decisions: the run
asserts it. Two campaign sets: a store's realistic mix (triggers spread over zones,
categories and kinds, audiences by segment; triggers 40 % zone entries, 30 % dwells,
20 % store entries, 10 % purchases), and the worst case for the index (all 500
campaigns on store entry, no audience, and every trigger a store entry).

    .venv/bin/python bench/bench_offers.py [--decisions 20000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storegate.core.personal.campaigns import Campaign  # noqa: E402
from storegate.core.personal.offers import (  # noqa: E402
    CustomerFacts,
    HeldOffer,
    OfferEngine,
    OfferPolicy,
    Prepared,
    Trigger,
)

T0 = 1_796_040_000.0  # a Monday, 12:00 in Moscow
TZ = timezone(timedelta(hours=3))
ZONES = ["entrance", "produce", "bakery", "dairy", "household", "clothing", "checkout"]
CATEGORIES = [f"cat-{n}" for n in range(20)]
SEGMENTS = [f"seg-{n}" for n in range(30)]
TIERS = ["bronze", "silver", "gold", "platinum"]
TAGS = [f"tag-{n}" for n in range(40)]


class NaiveEngine(OfferEngine):
    """The baseline: every decision scans every campaign's model."""

    def targeted(self, trigger: Trigger, facts: CustomerFacts, month: int, *,
                 audience: bool = True) -> tuple[list[Prepared], list[Prepared]]:
        hit = []
        for p in self.campaigns.values():
            c = p.campaign
            t = c.trigger
            if t.kind == "store_entered":
                ok = trigger.kind == "store_entered"
            elif t.kind == "nth_visit":
                ok = trigger.kind == "store_entered" and facts.store_visits == t.n
            elif t.kind == "birthday_month":
                ok = trigger.kind == "store_entered" and facts.birthday_month == month
            elif t.kind == "pickup_ready":
                ok = trigger.kind == "store_entered" and facts.pickups_ready > 0
            elif t.kind == "zone_entered":
                ok = trigger.kind == "zone_entered" and trigger.zone == t.zone
            elif t.kind == "zone_dwelled":
                ok = (trigger.kind == "zone_dwelled" and trigger.zone == t.zone
                      and trigger.dwell_s >= t.min_dwell_s)
            else:
                ok = trigger.kind == "purchase_category" and t.category in trigger.categories
            if not ok:
                continue
            a = c.audience
            if audience and not (
                    (not a.segments or set(a.segments) & facts.segments)
                    and (not a.tiers or facts.tier in a.tiers)
                    and (not a.preferences or set(a.preferences) & facts.preferences)
                    and (a.customers == "any" or (a.customers == "new")
                         == (facts.store_visits <= 1))):
                continue
            hit.append(p)
        hit.sort(key=lambda p: p.order)
        return hit, []


def campaigns(rng: random.Random, n: int, *, worst: bool) -> list[Campaign]:
    out = []
    for i in range(n):
        if worst:
            trigger: dict[str, Any] = {"kind": "store_entered"}
        else:
            trigger = rng.choices([
                {"kind": "zone_entered", "zone": rng.choice(ZONES)},
                {"kind": "zone_dwelled", "zone": rng.choice(ZONES),
                 "min_dwell_s": rng.choice([30, 60, 120, 300])},
                {"kind": "purchase_category", "category": rng.choice(CATEGORIES)},
                {"kind": "store_entered"}, {"kind": "nth_visit", "n": rng.randint(1, 10)},
                {"kind": "birthday_month"}, {"kind": "pickup_ready"},
            ], weights=[30, 30, 20, 10, 5, 3, 2])[0]
        audience: dict[str, Any] = {} if worst else {
            "segments": rng.sample(SEGMENTS, rng.choice([0, 1, 1, 2, 3])),
            "tiers": rng.sample(TIERS, rng.choice([0, 0, 0, 1, 2])),
            "preferences": rng.sample(TAGS, rng.choice([0, 0, 0, 1, 2])),
            "customers": rng.choice(["any", "any", "any", "new", "returning"])}
        raw: dict[str, Any] = {
            "id": f"camp-{i:04d}", "version": 1, "trigger": trigger, "audience": audience,
            "priority": rng.randint(0, 100), "control_share": rng.choice([0.0, 0.1, 0.2]),
            "max_per_customer_per_day": rng.choice([1, 2]),
            "content": {"title": f"Offer {i}", "tags": rng.sample(TAGS, 3),
                        "discount": {"kind": "percent", "value": rng.randint(5, 50)}}}
        if rng.random() < 0.2:
            raw["hours"] = {d: [{"start": "08:00", "end": "22:00"}]
                            for d in ("mon", "tue", "wed", "thu", "fri")}
        if rng.random() < 0.2:
            raw["variants"] = [{"id": "a", "content": {"title": "A", "tags": ["tag-1"]}},
                               {"id": "b", "weight": 2, "content": {"title": "B"}}]
        out.append(Campaign.model_validate(raw))
    return out


def customers(rng: random.Random, n: int) -> list[CustomerFacts]:
    return [CustomerFacts(
        f"cust-{i:05d}", marketing=rng.random() < 0.9, tier=rng.choice([*TIERS, None]),
        segments=frozenset(rng.sample(SEGMENTS, rng.randint(0, 4))),
        preferences=frozenset(rng.sample(TAGS, rng.randint(0, 5))),
        favourite_categories=frozenset(rng.sample(TAGS, rng.randint(0, 3))),
        birthday_month=rng.randint(1, 12), store_visits=rng.randint(1, 12),
        pickups_ready=int(rng.random() < 0.05)) for i in range(n)]


def history(rng: random.Random, people: list[CustomerFacts], cs: list[Campaign]) -> (
    list[HeldOffer]
):
    out = []
    for f in rng.sample(people, 3000):
        for k in range(rng.randint(1, 3)):
            c = rng.choice(cs)
            at = T0 - rng.uniform(10, 20_000)
            out.append(HeldOffer(f"tok-{f.customer}-{k}", f.customer, c.id, 1, None,
                                 f"visit-{f.customer}", at, at + 14_400))
    return out


def triggers(rng: random.Random, people: list[CustomerFacts], n: int, *,
             entries_only: bool = False) -> list[tuple[Trigger, CustomerFacts]]:
    out = []
    for _ in range(n):
        f = rng.choice(people)
        kind = rng.choices(["zone_entered", "zone_dwelled", "store_entered",
                            "purchase_category"], weights=[40, 30, 20, 10])[0]
        if entries_only:
            kind = "store_entered"
        visit = f"visit-{f.customer}"
        if kind == "store_entered":
            t = Trigger("store_entered", f.customer, T0, visit)
        elif kind == "purchase_category":
            t = Trigger("purchase_category", f.customer, T0, visit,
                        categories=frozenset(rng.sample(CATEGORIES, 3)))
        else:
            t = Trigger(kind, f.customer, T0, visit, rng.choice(ZONES),  # type: ignore[arg-type]
                        dwell_s=rng.choice([30.0, 60.0, 120.0, 300.0]))
        out.append((t, f))
    return out


def run(engine: OfferEngine, work: list[tuple[Trigger, CustomerFacts]]) -> (
    tuple[list[int], float]
):
    """Timed: each decision on its own; the results are dropped as the service drops
    them once turned into events (keeping 400,000 of them makes the GC the figure)."""
    lat = []
    clock = time.perf_counter_ns
    decide = engine.decide
    gc.collect()
    start = time.perf_counter()
    for t, f in work:
        t0 = clock()
        decide(t, f, T0 + 5)
        lat.append(clock() - t0)
    return lat, time.perf_counter() - start


def pct(lat: list[int], q: float) -> float:
    s = sorted(lat)
    return s[min(len(s) - 1, int(len(s) * q))] / 1e6


def scenario(name: str, *, worst: bool, n_decisions: int) -> dict[str, Any]:
    rng = random.Random(11)
    cs = campaigns(rng, 500, worst=worst)
    people = customers(rng, 10_000)
    past = history(rng, people, cs)
    engines = []
    for cls in (OfferEngine, NaiveEngine):
        e = cls(OfferPolicy(), tz=TZ)
        e.upsert(cs)
        e.load(past, T0)
        engines.append(e)
    work = triggers(rng, people, n_decisions, entries_only=worst)
    res: dict[str, Any] = {}
    # untimed: both give the same decisions for every trigger
    decisions = {label: [e.decide(t, f, T0 + 5) for t, f in work]
                 for label, e in (("storegate", engines[0]), ("baseline", engines[1]))}
    assert decisions["storegate"] == decisions["baseline"], "the index changed decisions"
    for label, e in (("baseline", engines[1]), ("storegate", engines[0])):
        lat, wall = run(e, work)
        res[label] = {"decisions_per_s": len(work) / wall, "p50_ms": pct(lat, 0.5),
                      "p99_ms": pct(lat, 0.99), "max_ms": max(lat) / 1e6}
    flat = [d for ds in decisions["storegate"] for d in ds]
    reasons: dict[str, int] = {}
    for d in flat:
        reasons[d.reason or "issued"] = reasons.get(d.reason or "issued", 0) + 1
    res["outcomes"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
    res["ratio"] = res["storegate"]["decisions_per_s"] / res["baseline"]["decisions_per_s"]
    print(f"{name}: 10,000 customers, 500 campaigns, {len(work):,} triggers, "
          f"{len(flat):,} decisions (same in both)")
    for label in ("baseline", "storegate"):
        r = res[label]
        print(f"  {label:<10} {r['decisions_per_s']:>10,.0f} triggers/s   p50 "
              f"{r['p50_ms']:.3f} ms   p99 {r['p99_ms']:.3f} ms   max {r['max_ms']:.2f} ms")
    print(f"  ratio {res['ratio']:.1f}x   outcomes {res['outcomes']}")
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", type=int, default=20_000)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "offers.json"))
    args = ap.parse_args()
    res: dict[str, Any] = {"cpus": os.cpu_count()}
    res["mix"] = scenario("store mix", worst=False, n_decisions=args.decisions)
    res["worst"] = scenario("worst case (all on store entry, no segments)", worst=True,
                            n_decisions=args.decisions // 4)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
