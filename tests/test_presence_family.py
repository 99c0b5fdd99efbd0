"""The family of simulated stores (issue 13): deterministic per seed, inside the stated
ranges, with sane ground truth; and the accuracy report runs end to end on small stores.

No test here asserts an accuracy figure: the report states them against the targets
(bench/bench_presence_family.py), tuned on one seed set and reported on another."""

from __future__ import annotations

import itertools
import math

import pytest

from storegate.core.ble.eid import EidResolver
from storegate.core.presence.infrastructure import Infrastructure
from storegate.core.presence.pipeline import PresencePipeline
from storegate.sim.family_report import (
    HELD_OUT_SEEDS,
    METRICS,
    TUNE_SEEDS,
    run,
    seed_set,
    summarise,
    table,
)
from storegate.sim.stores import (
    LINGERER,
    NOISE_DB,
    PATH_LOSS_N,
    PAVEMENT_M,
    PHONE_TX_SPREAD_DB,
    SCANNER_OFFSET_DB,
    SMALL,
    FamilyStore,
    adverts,
    generate,
)

SEEDS = list(TUNE_SEEDS[:12])


@pytest.fixture(scope="module")
def stores() -> list[FamilyStore]:
    return [generate(s, SMALL) for s in SEEDS]


def test_a_seed_is_one_store_and_seeds_differ() -> None:
    a, b, c = generate(1003, SMALL), generate(1003, SMALL), generate(1004, SMALL)
    assert a.plan == b.plan
    assert a.radio == b.radio
    assert [p.path for p in a.sim.people] == [p.path for p in b.sim.people]
    assert list(itertools.islice(adverts(a), 3000)) == list(itertools.islice(adverts(b), 3000))
    assert a.plan != c.plan
    assert a.radio.path_loss_n != c.radio.path_loss_n


def test_layouts_stay_in_the_stated_ranges(stores: list[FamilyStore]) -> None:
    seen_doors, seen_checkouts = set(), set()
    for st in stores:
        p = st.plan
        assert 5 <= len(p.zones) <= 12
        assert 1 <= len(p.checkouts) <= 3
        assert 1 <= len(p.doors) <= 2
        seen_doors.add(len(p.doors))
        seen_checkouts.add(len(p.checkouts))
        # the zones tile the floor: no gaps, no overlaps
        area = sum((z.x1 - z.x0) * (z.y1 - z.y0) for z in p.zones)
        assert area == pytest.approx(p.width_m * p.depth_m)
        for z1, z2 in itertools.combinations(p.zones, 2):
            assert min(z1.x1, z2.x1) <= max(z1.x0, z2.x0) + 1e-9 \
                or min(z1.y1, z2.y1) <= max(z1.y0, z2.y0) + 1e-9
        for door in p.doors:  # on the shop front, opening into its entrance zone
            assert 0 < door.x_m < p.width_m
            assert p.zone_at(door.x_m, 0.0) == door.zone
        for s in p.scanners:
            assert p.zone_at(s.x_m, s.y_m) == s.zone, s
            if s.entrance:
                door = next(d for d in p.doors if d.zone == s.zone)
                assert math.hypot(s.x_m - door.x_m, s.y_m) < 3.0
        zones = {z.id for z in p.zones}
        assert {s.zone for s in p.scanners} == zones  # every zone is covered
        assert {b.zone for b in p.beacons} == zones
        for b in p.beacons:
            assert p.zone_at(b.x_m, b.y_m) == b.zone
            assert p.distance_m(p.scanners[0].name, b.label) > 0
        r = st.radio
        assert PATH_LOSS_N[0] <= r.path_loss_n <= PATH_LOSS_N[1]
        assert NOISE_DB[0] <= r.noise_db <= NOISE_DB[1]
        assert set(r.scanner_offset_db) == {s.name for s in p.scanners}
        assert all(abs(v) <= SCANNER_OFFSET_DB for v in r.scanner_offset_db.values())
        assert all(abs(v) <= PHONE_TX_SPREAD_DB for v in st.phone_tx_offset_db.values())
        assert set(st.phone_tx_offset_db) == {x.id for x in st.sim.people}
    assert seen_doors == {1, 2}  # the family has both kinds
    assert len(seen_checkouts) >= 2


def test_ground_truth_is_what_a_person_watching_would_say(stores: list[FamilyStore]) -> None:
    lingered_after = 0
    for st in stores:
        plan = st.plan
        for person in st.sim.people:
            t0, t1 = person.path[0][0], person.path[-1][0]
            assert person.position(t0)[1] < 0  # everyone comes from the street
            if person.passer_by:
                assert not person.truth
                steps = [person.position(t0 + k) for k in range(int(t1 - t0))]
                assert all(-PAVEMENT_M[1] <= y < 0 for _, y in steps)  # never inside
                if not person.id.startswith(LINGERER):
                    assert all(-PAVEMENT_M[1] <= y <= -PAVEMENT_M[0] for _, y in steps)
                continue
            visit, *zone_visits = person.truth
            assert visit.zone is None and visit.start < visit.end
            assert abs(person.position(visit.start)[1]) < 1e-6  # the door
            assert abs(person.position(visit.end)[1]) < 1e-6
            assert zone_visits
            for iv in zone_visits:
                assert visit.start < iv.start < iv.end < visit.end
                assert iv.end - iv.start >= 30  # a stop, not a walk through
                assert not iv.zone.startswith("entrance")  # passed through, never visited
                t = iv.start
                while t <= iv.end:  # inside that zone all the while
                    assert plan.zone_at(*person.position(t)) == iv.zone
                    t += 5.0
            for a, b in itertools.pairwise(zone_visits):
                assert a.end <= b.start
            # inside between the doors, outside before and after
            assert person.position(visit.start - 1)[1] < 0 < person.position(visit.start + 1)[1]
            assert person.position(visit.end + 1)[1] < 0
            if person.id in st.pavement_after:
                lingered_after += 1
                assert t1 - visit.end > 20  # still heard from the pavement
        for badge in st.badges:  # staff are there for the whole simulation
            assert badge.person.path[0][0] <= st.sim.start
            assert badge.person.path[-1][0] >= st.sim.start + SMALL.duration_s
    assert lingered_after > 0


def test_the_gateway_config_classifies_the_stores_own_beacons() -> None:
    """Zone beacons and badges reach the pipeline as infrastructure, never as people;
    the app shoppers resolve."""
    st = generate(1001, SMALL)
    resolver = EidResolver()
    resolver.enroll_all(st.sim.identities(), st.sim.start)
    pipe = PresencePipeline(st.plan.settings(), resolver, bytes,
                            infrastructure=Infrastructure(st.plan.infrastructure()))
    for a in itertools.islice(adverts(st), 40_000):
        pipe.feed(a)
    c = pipe.counters
    assert c.unknown_scanner == 0
    assert c.infrastructure.get("zone", 0) > 0
    assert c.infrastructure.get("staff", 0) > 0
    assert c.resolved > 0
    assert c.unresolved_eid == 0


def test_seed_sets_are_disjoint_and_named() -> None:
    assert not set(TUNE_SEEDS) & set(HELD_OUT_SEEDS)
    assert seed_set(TUNE_SEEDS[:3]) == "tune"
    assert seed_set(HELD_OUT_SEEDS[:3]) == "held-out"
    assert seed_set([TUNE_SEEDS[0], HELD_OUT_SEEDS[0]]) == "ad hoc"


def test_the_report_runs_on_small_stores() -> None:
    """The CI smoke test of the report: two small stores through the real pipeline. It
    checks the report is whole and its figures are figures, not what they are."""
    results = run(list(HELD_OUT_SEEDS[:2]), SMALL)
    assert [r.seed for r in results] == list(HELD_OUT_SEEDS[:2])
    for r in results:
        a = r.accuracy
        assert a.zone_visits_true > 0 and a.adverts > 0
        for x in (a.zone_precision, a.zone_recall, a.wrong_zone_time, a.passers_by_counted,
                  r.walkers_counted, r.lingerers_counted):
            assert 0.0 <= x <= 1.0
        assert r.enter_error_p50_s >= 0 and r.exit_error_p50_s >= 0
    rows = summarise(results)
    assert [row.metric for row in rows] == list(METRICS)
    for row in rows:
        values = [r.value(row.metric.key) for r in results]
        if row.metric.higher_is_better:
            assert row.worst == min(values)
        else:
            assert row.worst == max(values)
        assert row.worst_seed in (r.seed for r in results)
    text = table(results)
    assert "held-out set" in text
    assert all(m.label in text for m in METRICS)
