"""Eddystone-EID: vectors from an independent implementation, rotation, drift, scale."""

from __future__ import annotations

import os

from storegate.core.ble.eid import EidResolver, Identity, compute_eid

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
