"""Accuracy of the presence pipeline against a simulation's ground truth.

A predicted visit matches a true one when it is the same person and zone (or both the
store visit) and their intervals overlap. Latencies compare when an event was *emitted*
(the pipeline's clock at that moment) with the true moment.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.ble.capture import Advert
from storegate.core.ble.eid import EidResolver
from storegate.core.presence.calibration import Calibrator
from storegate.core.presence.infrastructure import Infrastructure
from storegate.core.presence.pipeline import PresencePipeline
from storegate.core.presence.settings import PresenceSettings
from storegate.sim.store import Interval, Simulation, adverts


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


@dataclass(slots=True)
class Predicted:
    customer: str
    zone: str | None
    start: float
    end: float | None
    entered_emitted: float
    exited_emitted: float | None = None


@dataclass(frozen=True, slots=True)
class Accuracy:
    zone_precision: float
    zone_recall: float
    wrong_zone_time: float
    store_precision: float
    store_recall: float
    passers_by_counted: float
    enter_latency_p50_s: float
    enter_latency_p95_s: float
    exit_latency_p50_s: float
    exit_latency_p95_s: float
    zone_visits_true: int
    zone_visits_predicted: int
    adverts: int


def run_pipeline(sim: Simulation, seed: int = 2) -> tuple[list[tuple[float, ev.EventDraft]], int]:
    """Feed the simulation's adverts through a pipeline; events with emission times."""
    return replay(sim, sim.settings(), adverts(sim, seed))


def replay(sim: Simulation, settings: PresenceSettings, stream: Iterable[Advert],
           infrastructure: Infrastructure | None = None,
           calibrator: Calibrator | None = None) -> (
        tuple[list[tuple[float, ev.EventDraft]], int]):
    """``stream`` through a pipeline with ``settings`` and the simulation's customers
    enrolled, ticked a minute past its end; events with emission times, and how many
    adverts it read."""
    resolver = EidResolver()
    resolver.enroll_all(sim.identities(), sim.start)
    counter = iter(range(1 << 62))
    pipe = PresencePipeline(settings, resolver, lambda n: next(counter).to_bytes(n, "big"),
                            infrastructure=infrastructure, calibrator=calibrator)
    out: list[tuple[float, ev.EventDraft]] = []
    now = sim.start
    for a in stream:
        now = max(now, a.ts)
        out += [(now, d) for d in pipe.feed(a)]
    t = now
    while t < sim.end + 60:
        t += 1.0
        out += [(t, d) for d in pipe.tick(t)]
    return out, pipe.counters.adverts


def predicted_visits(events: list[tuple[float, ev.EventDraft]]) -> list[Predicted]:
    visits: dict[str, Predicted] = {}
    for emitted, d in events:
        data = d.data
        if isinstance(data, p.VisitEntered):
            visits[data.visit_id] = Predicted(data.customer or "", data.zone,
                                              _epoch(data.entered_at), None, emitted)
        elif isinstance(data, p.VisitExited) and data.visit_id in visits:
            v = visits[data.visit_id]
            v.end = _epoch(data.exited_at)
            v.exited_emitted = emitted
    return list(visits.values())


def _overlap(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 < b1 and b0 < a1


def _q(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(int(q * len(values)), len(values) - 1)]


def evaluate(sim: Simulation, events: list[tuple[float, ev.EventDraft]], n_adverts: int) -> (
    Accuracy
):
    pred = predicted_visits(events)
    people = {x.id: x for x in sim.people}
    shoppers = [x for x in sim.people if x.identity is not None and not x.passer_by]
    truth: dict[tuple[str, str | None], list[Interval]] = {}
    for s in shoppers:
        for iv in s.truth:
            truth.setdefault((s.id, iv.zone), []).append(iv)

    def matches(v: Predicted) -> list[Interval]:
        end = v.end if v.end is not None else sim.end
        return [iv for iv in truth.get((v.customer, v.zone), [])
                if _overlap(v.start, end, iv.start, iv.end)]

    zone_pred = [v for v in pred if v.zone is not None and not v.customer.startswith("pass")]
    store_pred = [v for v in pred if v.zone is None and not v.customer.startswith("pass")]
    zone_true = [(k, iv) for k, ivs in truth.items() if k[1] is not None for iv in ivs]
    store_true = [(k, iv) for k, ivs in truth.items() if k[1] is None for iv in ivs]

    def recall(items: list[tuple[tuple[str, str | None], Interval]], preds: list[Predicted]) -> (
        float
    ):
        hit = 0
        for (person, zone), iv in items:
            if any(v.customer == person and v.zone == zone and
                   _overlap(v.start, v.end or sim.end, iv.start, iv.end) for v in preds):
                hit += 1
        return hit / len(items) if items else float("nan")

    # time in a predicted zone visit while the person was truly elsewhere
    wrong = total = 0.0
    for v in zone_pred:
        person = people[v.customer]
        t = v.start
        while t < (v.end or sim.end):
            pos = person.position(t)
            if pos is not None:
                total += 1
                here = next((z.id for z in sim.zones if z.contains(*pos)), None)
                if here != v.zone:
                    wrong += 1
            t += 1.0

    passers = [x for x in sim.people if x.passer_by]
    counted = {v.customer for v in pred if v.zone is None and v.customer.startswith("pass")}
    enter_lat, exit_lat = [], []
    for v in store_pred:
        ivs = matches(v)
        if ivs:
            enter_lat.append(v.entered_emitted - ivs[0].start)
            if v.exited_emitted is not None:
                exit_lat.append(v.exited_emitted - ivs[-1].end)
    return Accuracy(
        zone_precision=sum(1 for v in zone_pred if matches(v)) / max(len(zone_pred), 1),
        zone_recall=recall(zone_true, zone_pred),
        wrong_zone_time=wrong / total if total else 0.0,
        store_precision=sum(1 for v in store_pred if matches(v)) / max(len(store_pred), 1),
        store_recall=recall(store_true, store_pred),
        passers_by_counted=len(counted) / max(len(passers), 1),
        enter_latency_p50_s=statistics.median(enter_lat) if enter_lat else float("nan"),
        enter_latency_p95_s=_q(enter_lat, 0.95),
        exit_latency_p50_s=statistics.median(exit_lat) if exit_lat else float("nan"),
        exit_latency_p95_s=_q(exit_lat, 0.95),
        zone_visits_true=len(zone_true),
        zone_visits_predicted=len(zone_pred),
        adverts=n_adverts,
    )
