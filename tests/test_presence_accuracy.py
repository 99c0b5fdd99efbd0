"""Accuracy on a simulated store hour with ground truth (issue 4's scenario): 30 app
users, 7 zones, noise sigma 4 dB, fades, 20 passers-by, 40 phones without the app.

Deterministic (fixed seeds), so the targets are asserted, not timings."""

from __future__ import annotations

import pytest

from storegate.sim.accuracy import Accuracy, evaluate, run_pipeline
from storegate.sim.store import build


@pytest.fixture(scope="module")
def hour() -> Accuracy:
    sim = build(11, duration_s=3600, app_users=30, passers_by=20, other_devices=40)
    assert sim.radio.noise_db == 4.0
    assert len(sim.zones) == 7
    events, n = run_pipeline(sim)
    acc = evaluate(sim, events, n)
    print(f"\naccuracy: {acc}")
    return acc


def test_zone_visits(hour: Accuracy) -> None:
    assert hour.zone_visits_true >= 100
    assert hour.zone_precision >= 0.95
    assert hour.zone_recall >= 0.95
    assert hour.wrong_zone_time <= 0.05


def test_store_visits_and_passers_by(hour: Accuracy) -> None:
    assert hour.store_precision >= 0.95
    assert hour.store_recall >= 0.95
    assert hour.passers_by_counted <= 0.05


def test_exit_is_noticed_fast(hour: Accuracy) -> None:
    assert hour.exit_latency_p50_s <= 15.0  # peers: 30-120 s
    assert hour.exit_latency_p95_s <= 20.0
