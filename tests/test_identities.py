"""Consent on the box: the identities command, the identity store and the pipeline."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from storegate.adapters.identities_sqlite import IdentityStore
from storegate.core import seal
from storegate.core.ble.capture import Advert
from storegate.core.ble.decoders import EDDYSTONE_UUID
from storegate.core.ble.eid import EidResolver, Identity, compute_eid
from storegate.core.commands import (
    CommandRejected,
    IdentitiesCommand,
    IdentityChange,
    open_identities,
    validate_payload,
)
from storegate.core.events import rfc3339
from storegate.core.presence.pipeline import PresencePipeline
from storegate.core.presence.settings import PresenceSettings, Zone
from tests.support.central import Central

T0 = 1_795_000_000.0


def ident(n: int) -> Identity:
    return Identity(f"cust-{n}", bytes([n]) * 16, 8, 5000 + n, T0 - 86400)


def rec(i: Identity) -> dict[str, object]:
    return {"customer": i.customer, "identity_key": i.identity_key.hex(),
            "rotation_exponent": i.rotation_exponent,
            "beacon_time_at_registration": i.beacon_time_at_registration,
            "registered_at": i.registered_at}


def test_identities_command_validation() -> None:
    now = T0
    gw_key = X25519PrivateKey.generate()
    body = Central.identities_payload(
        "upsert", [ident(1)], gateways={"g1": seal.public_text(gw_key.public_key())},
        request_id="r")
    ok = validate_payload("identities", body, now=now)
    assert isinstance(ok, IdentitiesCommand)
    opened = open_identities(ok, key=gw_key, store="s1", gateway="g1")
    assert isinstance(opened, IdentityChange) and opened.identities == (ident(1),)
    sealed = body["identities"][0]
    bad: dict[str, tuple[dict[str, object], str]] = {
        "no identities": ({"op": "upsert"}, "upsert without identities"),
        "remove with identities": ({"op": "remove", "identities": []}, "remove takes customers"),
        "replace with customers": ({"op": "replace", "customers": ["a"]},
                                   "takes identities, not customers"),
        "unknown op": ({"op": "delete", "customers": ["a"]}, "op"),
        "MAC as customer": ({**body, "identities": [{**sealed, "customer": "AA:BB:CC:DD:EE:FF"}]},
                            "MAC address"),
        "key in clear": ({**body, "identities": [{**sealed, "identity_key": "00" * 16}]},
                         "Extra inputs"),
        "not sealed": ({"op": "upsert", "identities": [sealed]}, "never sent in clear"),
        "customer twice": ({**body, "identities": [sealed, sealed]}, "listed twice"),
        "customer with spaces": ({"op": "remove", "customers": ["a b"]}, "not a pseudonym"),
        # the records that once blocked the loop for 30 s and took 540 MB
        "registered in 1906": ({**body, "identities": [{**sealed, "registered_at": -2e9}]},
                               "greater than or equal"),
        "registered next year": (
            {**body, "identities": [{**sealed, "registered_at": now + 365 * 86400}]},
            "in the future"),
        "beacon clock past 32 bits": (
            {**body, "identities": [{**sealed, "beacon_time_at_registration": (1 << 32) - 10,
                                     "registered_at": now - 86400}]}, "32-bit counter"),
        "rotation exponent 16": ({**body, "identities": [{**sealed, "rotation_exponent": 16}]},
                                 "less than or equal"),
    }
    for what, (payload, reason) in bad.items():
        r = validate_payload("identities", payload, now=now)
        assert isinstance(r, CommandRejected), what
        assert r.reason == "invalid" and reason in r.detail, (what, r.detail)
    for value in ("NaN", "Infinity"):  # JSON as Python's json module writes it
        raw = json.loads(json.dumps({**body, "identities": [sealed]}).replace(
            str(sealed["registered_at"]), value))
        r = validate_payload("identities", raw, now=now)
        assert isinstance(r, CommandRejected) and r.reason == "invalid", value
    # a full sync with nobody is valid: everyone's consent is gone
    assert isinstance(validate_payload("identities", {"op": "replace"}, now=now),
                      IdentitiesCommand)


def test_store_persists_replaces_and_scrubs_removed_keys(tmp_path: Path) -> None:
    db = tmp_path / "state" / "ids.db"
    store = IdentityStore(db)
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    store.upsert([ident(1), ident(2), ident(3)])
    secret = store.secret("footfall")
    store.close()
    store = IdentityStore(db)  # a restart keeps consent and the footfall key
    assert store.load() == ([ident(1), ident(2), ident(3)], 0)
    assert store.secret("footfall") == secret and len(secret) == 32
    assert store.remove(["cust-2", "cust-nobody"]) == 1
    assert store.replace([ident(3), ident(4)]) == ["cust-1"]
    assert [i.customer for i in store.load()[0]] == ["cust-3", "cust-4"]
    store.close()
    on_disk = b"".join(p.read_bytes() for p in db.parent.iterdir())
    assert bytes([2]) * 16 not in on_disk and bytes([1]) * 16 not in on_disk  # overwritten
    assert bytes([3]) * 16 in on_disk


def test_rows_an_older_version_saved_out_of_bounds_are_skipped(tmp_path: Path) -> None:
    db = tmp_path / "ids.db"
    store = IdentityStore(db)
    store.upsert([ident(1)])
    store.close()
    import sqlite3
    with sqlite3.connect(db) as raw:  # as main used to save them, before enrolment
        raw.execute("INSERT INTO identities VALUES ('evil', ?, 0, -5, -2e9)", (b"k" * 16,))
        raw.execute("INSERT INTO identities VALUES ('nan', ?, 0, 5, 'NaN')", (b"n" * 16,))
    raw.close()
    store = IdentityStore(db)
    assert store.load() == ([ident(1)], 2)
    store.close()


def test_pipeline_enrol_and_withdraw() -> None:
    settings = PresenceSettings(zones=(Zone("z", ("sc",)),), min_presence_s=2,
                                zone_min_presence_s=2)
    pipe = PresencePipeline(settings, EidResolver(), os.urandom)
    alice = ident(7)
    pipe.enroll([alice], T0)

    def advert(t: float) -> Advert:
        eid = compute_eid(alice.identity_key, alice.rotation_exponent, alice.beacon_time(t))
        return Advert(t, "sc", "5A:00:00:00:00:07", -55,
                      service_data={EDDYSTONE_UUID: b"\x30\xf4" + eid})

    out = []
    for i in range(40):
        out += pipe.feed(advert(T0 + i * 0.25))
    assert any(d.type.name == "storegate.visit.entered.v1" for d in out)
    assert pipe.engine.present() == {None: 1, "z": 1}
    assert pipe.withdraw(["cust-7"]) == 1
    assert pipe.engine.present() == {None: 0}
    after = []
    for i in range(40):
        after += pipe.feed(advert(T0 + 10 + i * 0.25))
    after += pipe.tick(T0 + 60)
    # forgotten: no exit, no new visit; the phone is an unknown EID now
    assert not [d for d in after if d.type.kind == "visit"]
    assert pipe.counters.unresolved_eid == 40


def test_shutdown_ends_open_visits_and_counts_the_partial_period() -> None:
    settings = PresenceSettings(zones=(Zone("z", ("sc",)),), min_presence_s=2,
                                zone_min_presence_s=2)
    pipe = PresencePipeline(settings, EidResolver(), os.urandom, footfall_period_s=300)
    alice = ident(8)
    pipe.enroll([alice], T0)
    for i in range(40):
        t = T0 + i * 0.25
        eid = compute_eid(alice.identity_key, alice.rotation_exponent, alice.beacon_time(t))
        pipe.feed(Advert(t, "sc", "5A:00:00:00:00:08", -55,
                         service_data={EDDYSTONE_UUID: b"\x30\xf4" + eid}))
    out = pipe.close(T0 + 12)
    exits = [d for d in out if d.type.name == "storegate.visit.exited.v1"]
    assert {getattr(d.data, "zone", "?") for d in exits} == {None, "z"}
    assert all(getattr(d.data, "exited_at", "") == rfc3339(T0 + 39 * 0.25) for d in exits)
    counts = [d for d in out if d.type.name == "storegate.footfall.counted.v1"]
    assert counts and all(getattr(d.data, "period_end", "") == rfc3339(T0 + 12) for d in counts)
    assert pipe.close(T0 + 13) == []  # nothing twice
