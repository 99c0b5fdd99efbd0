"""Eddystone-EID: vectors from an independent implementation, rotation, drift, scale."""

from __future__ import annotations

import math
import os

import pytest

from storegate.core.ble.eid import MAX_DRIFT_PERIODS, EidResolver, Identity, compute_eid

IK = bytes.fromhex("0102030405060708090A111213141516")


def test_vectors_from_radiusnetworks_ephemeral_calc() -> None:
    # RadiusNetworks/ephemeral_calc spec/encryptor_spec.rb: K = 10, beacon time 0 and 2000
    assert compute_eid(IK, 10, 0).hex().upper() == "A9B76A71C5F89290"
    assert compute_eid(IK, 10, 2000).hex().upper() == "4144413E45FEFA58"
    assert compute_eid(IK, 10, 1024) == compute_eid(IK, 10, 2047)  # same period
    assert compute_eid(IK, 10, 2048) != compute_eid(IK, 10, 2047)


def ident(customer: str, key: bytes = IK, k: int = 10, bt0: int = 5000,
          t0: float = 1_795_000_000.0) -> Identity:
    return Identity(customer, key, k, bt0, t0)


def test_resolves_previous_current_and_next_period_and_rotates() -> None:
    t0 = 1_795_000_000.0
    r = EidResolver()
    r.enroll(ident("c-1"), t0)
    bt = 5000
    for delta in (-1024, 0, 1024):
        assert r.resolve(compute_eid(IK, 10, bt + delta)) == "c-1"
    assert r.resolve(compute_eid(IK, 10, bt + 3 * 1024)) is None
    # an hour later, after advancing, the current EID resolves and the old one does not
    later = t0 + 3600
    assert r.advance(later) == 1
    assert r.resolve(compute_eid(IK, 10, bt + 3600)) == "c-1"
    assert r.resolve(compute_eid(IK, 10, bt)) is None


def test_clock_drift_widens_the_window() -> None:
    t0 = 1_795_000_000.0
    year = 365 * 24 * 3600.0
    r = EidResolver()
    r.enroll(ident("c-2", k=8), t0)  # 256 s periods
    r.advance(t0 + year)
    # 150 ppm over a year is ~4700 s: a beacon 4000 s fast still resolves
    assert r.resolve(compute_eid(IK, 8, int(5000 + year + 4000))) == "c-2"


def test_remove_forgets_the_customer() -> None:
    r = EidResolver()
    r.enroll(ident("c-3"), 1_795_000_000.0)
    r.remove("c-3")
    assert r.resolve(compute_eid(IK, 10, 5000)) is None
    assert len(r) == 0


def test_many_identities_each_resolve_to_their_own_customer() -> None:
    t0 = 1_795_000_000.0
    r = EidResolver()
    keys = [os.urandom(16) for _ in range(2000)]
    r.enroll_all((ident(f"c{i}", key=k) for i, k in enumerate(keys)), t0)
    assert len(r) == 2000
    for i in (0, 777, 1999):
        assert r.resolve(compute_eid(keys[i], 10, 5000)) == f"c{i}"
    assert r.resolve(os.urandom(8)) is None


def test_window_slides_period_by_period_without_leaking() -> None:
    t0 = 1_795_000_000.0
    r = EidResolver()
    r.enroll(ident("c-5", k=4), t0)  # 16 s periods
    r.enroll(ident("c-6", key=bytes(16), k=6), t0)
    sizes = set()
    for step in range(1, 400):  # 400 s: 25 rollovers of c-5, 6 of c-6
        now = t0 + step
        r.advance(now)
        bt = 5000 + step
        for delta in (-16, 0, 16):  # previous, current and next period of c-5
            assert r.resolve(compute_eid(IK, 4, bt + delta)) == "c-5", (step, delta)
        assert r.resolve(compute_eid(IK, 4, bt - 48)) is None  # left the window
        assert r.resolve(compute_eid(bytes(16), 6, bt)) == "c-6"
        sizes.add(r.eid_count)
    assert sizes == {6}  # three per identity, always: old periods are dropped


def test_re_enrolling_does_not_multiply_rotation_work() -> None:
    t0 = 1_795_000_000.0
    r = EidResolver()
    for _ in range(50):  # e.g. repeated full syncs from central
        r.enroll(ident("c-7", k=4), t0)
    moved = sum(r.advance(t0 + s) for s in range(1, 161))  # 10 periods of 16 s
    assert moved == 10  # one window move per period, not fifty
    assert r.resolve(compute_eid(IK, 4, 5000 + 160)) == "c-7"


def test_adversarial_records_enrol_in_bounded_work() -> None:
    # The records that once blocked the loop for 30 s and took 540 MB: K = 0 and a
    # registration 120 years before now asked for 1.1 million periods each.
    now = 1_795_000_000.0
    r = EidResolver()
    bad = [Identity(f"x-{i}", os.urandom(16), 0, 0, -2e9) for i in range(3)]
    r.enroll_all(bad, now)
    window = 2 * MAX_DRIFT_PERIODS + 1
    assert r.periods_computed <= 3 * window
    assert r.eid_count <= 3 * window
    # every advance moves each identity at most once, by a bounded window
    for step in range(1, 11):
        r.advance(now + step * 1000.0)  # 1000 periods of 1 s jumped each time
    assert r.periods_computed <= 3 * window * 11
    assert r.eid_count <= 3 * window


def test_a_clock_beyond_the_32_bit_beacon_counter_computes_nothing() -> None:
    r = EidResolver()
    r.enroll(Identity("far", IK, 0, (1 << 32) - 1, -1e300), 1_795_000_000.0)
    r.enroll(Identity("future", IK, 0, 0, 1e300), 1_795_000_000.0)
    assert r.periods_computed == 0
    assert r.advance(1_795_000_001.0) == 2  # still scheduled, still free


@pytest.mark.parametrize(("field", "value"), [
    ("registered_at", math.nan), ("registered_at", math.inf), ("registered_at", -math.inf),
    ("beacon_time_at_registration", -1), ("beacon_time_at_registration", 1 << 32),
    ("rotation_exponent", 16), ("rotation_exponent", -1),
])
def test_identity_rejects_values_the_resolver_cannot_use(field: str, value: float) -> None:
    good = {"customer": "c", "identity_key": IK, "rotation_exponent": 10,
            "beacon_time_at_registration": 0, "registered_at": 1_795_000_000.0}
    with pytest.raises(ValueError, match=field):
        Identity(**{**good, field: value})  # type: ignore[arg-type]
