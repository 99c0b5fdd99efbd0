"""The customer profile central keeps, computed from the events of every store.

Input: a customer's stored events (visits, purchases, offers), a category map and the
time. Output: visit frequency and recency, an RFM segment, favourite categories,
preferred store and zones, lifetime spend, time to serve, and offers issued / redeemed /
held out. Across customers, :func:`uplift` compares each campaign's treated visits with
its control group (the hold-out the gateway records as ``offer.suppressed`` with reason
``control_group``): conversion of the visit the decision was made in.

A profile is recomputed from the events when asked (no incremental state to drift);
one customer has at most a few thousand events. Pure: events and the time in.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

DAY_S: Final = 86_400.0
# RFM thresholds, a small chain's defaults: recency in days (lower is better),
# frequency in store visits or purchases over the window, monetary in minor units.
RECENCY_DAYS: Final = (7, 30, 90, 180)       # <=7: 5, <=30: 4, ... >180: 1
FREQUENCY: Final = (2, 4, 8, 16)             # >=16: 5, >=8: 4, ...
MONETARY_MINOR: Final = (10_000, 50_000, 200_000, 1_000_000)
FAVOURITES: Final = 5


def epoch(text: str) -> float:
    """RFC 3339 as the contract writes it (``...Z``) to epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event as the profile reads it."""

    type: str
    store: str
    time: float
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CategoryMap:
    """SKU -> category, and name keywords -> category (the catalogue file, or the
    gateway's ``[offers] categories`` map of receipt-line words)."""

    by_sku: Mapping[str, str] = field(default_factory=dict)
    by_keyword: Mapping[str, str] = field(default_factory=dict)

    def category(self, sku: str | None, name: str) -> str | None:
        if sku is not None and sku in self.by_sku:
            return self.by_sku[sku]
        words = set(re.findall(r"\w+", name.lower()))
        for keyword, category in self.by_keyword.items():
            if keyword.lower() in words:
                return category
        return None


@dataclass(frozen=True, slots=True)
class OfferCounts:
    issued: int = 0
    redeemed: int = 0
    control: int = 0


@dataclass(frozen=True, slots=True)
class Profile:
    customer: str
    store_visits: int
    purchases: int
    first_seen: float | None
    last_seen: float | None
    recency_days: float | None
    visits_per_30_days: float
    rfm: tuple[int, int, int]
    segment: str
    lifetime_spend_minor: int
    favourite_categories: list[str]
    preferred_store: str | None
    preferred_zones: list[str]
    time_to_serve_s_median: float | None
    offers: dict[str, OfferCounts]  # by campaign


def _score(value: float, bounds: tuple[int, ...], *, lower_is_better: bool) -> int:
    if lower_is_better:
        return 5 - sum(1 for b in bounds if value > b)
    return 1 + sum(1 for b in bounds if value >= b)


def segment(r: int, f: int, m: int) -> str:
    """The usual RFM names, from the three 1-5 scores."""
    if r >= 4 and f >= 4 and m >= 4:
        return "champion"
    if r >= 3 and f >= 3:
        return "loyal"
    if r >= 4 and f <= 2:
        return "new"
    if r <= 2 and f >= 3:
        return "at_risk"
    if r <= 2:
        return "hibernating"
    return "promising"


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def profile(customer: str, events: Iterable[StoredEvent], *, now: float,
            categories: CategoryMap = CategoryMap()) -> Profile:
    visits: dict[str, tuple[str, float]] = {}  # store visit id -> (store, time)
    zone_dwell: dict[str, float] = defaultdict(float)
    store_weight: Counter[str] = Counter()
    spend = 0
    purchases = 0
    category_spend: Counter[str] = Counter()
    serve: list[float] = []
    offers: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    times: list[float] = []
    for e in events:
        d = e.data
        if e.type == "storegate.visit.entered.v1" and d.get("zone") is None:
            visits.setdefault(str(d.get("visit_id")), (e.store, e.time))
            times.append(e.time)
        elif e.type == "storegate.visit.exited.v1":
            if d.get("zone") is None:
                visits.setdefault(str(d.get("visit_id")), (e.store, e.time))
                tts = d.get("time_to_serve_s")
                if isinstance(tts, int | float):
                    serve.append(float(tts))
            else:
                zone_dwell[str(d["zone"])] += float(d.get("dwell_s") or 0.0)
            times.append(e.time)
        elif e.type == "storegate.purchase.completed.v1":
            sign = -1 if d.get("kind") == "return" else 1
            total = int(d.get("total_minor") or 0)
            spend += sign * total
            if sign > 0:  # a refund is not a visit of interest: no recency, no store
                purchases += 1
                store_weight[e.store] += 1
                times.append(e.time)
            for item in d.get("items") or ():
                cat = categories.category(item.get("sku"), str(item.get("name", "")))
                if cat is not None:
                    category_spend[cat] += sign * int(item.get("amount_minor") or 0)
        elif e.type == "storegate.offer.issued.v1":
            offers[str(d.get("campaign"))][0] += 1
        elif e.type == "storegate.offer.redeemed.v1":
            offers[str(d.get("campaign"))][1] += 1
        elif (e.type == "storegate.offer.suppressed.v1"
              and d.get("reason") == "control_group" and d.get("campaign")):
            offers[str(d.get("campaign"))][2] += 1
    for store, _ in visits.values():
        store_weight[store] += 1
    first = min(times) if times else None
    last = max(times) if times else None
    recency = None if last is None else max(now - last, 0.0) / DAY_S
    window_days = max((now - first) / DAY_S, 30.0) if first is not None else 30.0
    n_visits = len(visits)
    activity = max(n_visits, purchases)
    r = _score(recency if recency is not None else 1e9, RECENCY_DAYS, lower_is_better=True)
    f = _score(activity, FREQUENCY, lower_is_better=False)
    m = _score(max(spend, 0), MONETARY_MINOR, lower_is_better=False)
    return Profile(
        customer=customer, store_visits=n_visits, purchases=purchases,
        first_seen=first, last_seen=last,
        recency_days=None if recency is None else round(recency, 2),
        visits_per_30_days=round(n_visits * 30.0 / window_days, 3),
        rfm=(r, f, m), segment=segment(r, f, m) if times else "unknown",
        lifetime_spend_minor=max(spend, 0),
        favourite_categories=[c for c, v in category_spend.most_common(FAVOURITES) if v > 0],
        preferred_store=store_weight.most_common(1)[0][0] if store_weight else None,
        preferred_zones=sorted(zone_dwell, key=lambda z: -zone_dwell[z])[:3],
        time_to_serve_s_median=_median(serve),
        offers={c: OfferCounts(*v) for c, v in sorted(offers.items())},
    )


@dataclass(frozen=True, slots=True)
class Uplift:
    campaign: str
    issued: int
    redeemed: int
    control: int
    treated_visits: int
    control_visits: int
    treated_converted: int
    control_converted: int

    @property
    def treated_rate(self) -> float | None:
        return self.treated_converted / self.treated_visits if self.treated_visits else None

    @property
    def control_rate(self) -> float | None:
        return self.control_converted / self.control_visits if self.control_visits else None

    @property
    def uplift(self) -> float | None:
        """Conversion of treated visits minus that of held-out visits (absolute)."""
        t, c = self.treated_rate, self.control_rate
        return None if t is None or c is None else round(t - c, 4)


def uplift(events: Iterable[StoredEvent]) -> list[Uplift]:
    """Per campaign over every customer: issued vs control visits and their conversion
    (``visit.exited`` of the store visit with ``converted``)."""
    treated: dict[str, set[str]] = defaultdict(set)
    control: dict[str, set[str]] = defaultdict(set)
    redeemed: Counter[str] = Counter()
    converted: set[str] = set()
    issued: Counter[str] = Counter()
    held: Counter[str] = Counter()
    for e in events:
        d = e.data
        if e.type == "storegate.offer.issued.v1":
            issued[str(d["campaign"])] += 1
            if d.get("visit_id"):
                treated[str(d["campaign"])].add(str(d["visit_id"]))
        elif e.type == "storegate.offer.suppressed.v1" and d.get("reason") == "control_group":
            held[str(d.get("campaign"))] += 1
            if d.get("visit_id"):
                control[str(d.get("campaign"))].add(str(d["visit_id"]))
        elif e.type == "storegate.offer.redeemed.v1":
            redeemed[str(d["campaign"])] += 1
        elif (e.type == "storegate.visit.exited.v1" and d.get("zone") is None
              and d.get("converted") is True):
            converted.add(str(d.get("visit_id")))
    out = []
    for c in sorted(set(issued) | set(held)):
        out.append(Uplift(c, issued[c], redeemed[c], held[c], len(treated[c]),
                          len(control[c]), len(treated[c] & converted),
                          len(control[c] & converted)))
    return out
