"""`storegate simulate` and `storegate replay` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.gateway_proc import storegate

pytestmark = pytest.mark.e2e


def test_simulate_then_replay_writes_cloudevents(tmp_path: Path) -> None:
    r = storegate("simulate", "--out-dir", str(tmp_path), "--duration", "600",
                  "--app-users", "6", "--passers-by", "3", "--other-devices", "4")
    assert r.returncode == 0, r.stderr
    capture = tmp_path / "capture.jsonl"
    with capture.open("a") as f:  # damage: bad lines must be reported, never fatal
        f.write("{broken\n")
        f.write('{"ts": 1795000000, "scanner": "x", "address": "y", "rssi": "loud"}\n')
    n_lines = len(capture.read_text().splitlines())
    out = tmp_path / "events.jsonl"
    r = storegate("replay", str(capture), "-c", str(tmp_path / "store.toml"),
                  "--events-out", str(out))
    assert r.returncode == 0, r.stderr
    assert "2 bad line(s)" in r.stderr
    assert f"bad line {n_lines - 1}: not JSON" in r.stderr
    assert f"bad line {n_lines}: rssi must be an integer" in r.stderr
    all_events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [int(e["sequence"]) for e in all_events] == list(range(1, len(all_events) + 1))
    events = [e for e in all_events if e["type"].startswith("storegate.visit.")]
    types = {e["type"] for e in events}
    assert {"storegate.visit.entered.v1", "storegate.visit.exited.v1"} <= types
    customers = {e["data"]["customer"] for e in events}
    assert customers and all(c.startswith("cust-") for c in customers)  # no passers-by
    # every store visit that entered also exited, at or after its entry
    entered = {e["data"]["visit_id"]: e for e in events
               if e["type"] == "storegate.visit.entered.v1"}
    exited = {e["data"]["visit_id"]: e for e in events
              if e["type"] == "storegate.visit.exited.v1"}
    assert entered.keys() == exited.keys()
    for vid, e in exited.items():
        assert e["data"]["exited_at"] >= entered[vid]["data"]["entered_at"]
    # nothing resembling a MAC address leaves in an event
    assert ":" not in "".join(str(e["data"].get("customer")) for e in events)


def test_replay_without_identities_counts_everyone_as_anonymous(tmp_path: Path) -> None:
    storegate("simulate", "--out-dir", str(tmp_path), "--duration", "300",
              "--app-users", "3", "--passers-by", "0", "--other-devices", "2")
    (tmp_path / "none.json").write_text("[]")
    out = tmp_path / "events.jsonl"
    r = storegate("replay", str(tmp_path / "capture.jsonl"), "-c", str(tmp_path / "store.toml"),
                  "--identities", str(tmp_path / "none.json"), "--events-out", str(out))
    assert r.returncode == 0, r.stderr
    assert "(0 of enrolled customers" in r.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert {e["type"] for e in events} == {  # aggregates only: no visits
        "storegate.footfall.counted.v1", "storegate.occupancy.measured.v1"}
    store = [e["data"]["devices"] for e in events if e["data"]["zone"] is None]
    assert max(store) >= 1  # the phones were still counted, anonymously
    assert "AA:" not in out.read_text() and "address" not in out.read_text()


def test_bad_identity_registry_is_a_data_file_error(tmp_path: Path) -> None:
    storegate("simulate", "--out-dir", str(tmp_path), "--duration", "60",
              "--app-users", "1", "--passers-by", "0", "--other-devices", "0")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"customer": "c1", "identity_key": "00" * 16,
                                "rotation_exponent": 10, "beacon_time_at_registration": 0,
                                "registered_at": 1_795_000_000},
                               {"customer": "c2", "identity_key": "xyz",
                                "rotation_exponent": 10, "beacon_time_at_registration": 0,
                                "registered_at": 1_795_000_000}]))
    r = storegate("replay", str(tmp_path / "capture.jsonl"), "-c", str(tmp_path / "store.toml"),
                  "--identities", str(bad), "--events-out", str(tmp_path / "o.jsonl"))
    assert r.returncode == 2
    assert f"bad data file {bad}: [1].identity_key:" in r.stderr
    assert "config error" not in r.stderr  # the config is fine; the registry is not
    assert "Traceback" not in r.stderr


def test_adversarial_identities_replay_in_bounded_time_or_are_refused(tmp_path: Path) -> None:
    # K = 0 and a registration 120 years off once held replay for 30 s and 540 MB per
    # three records; NaN crashed it. Refused by the record's bounds, or enrolled at a
    # bounded cost (the resolver caps every identity at 33 EIDs): never a hang or a crash.
    storegate("simulate", "--out-dir", str(tmp_path), "--duration", "60",
              "--app-users", "1", "--passers-by", "0", "--other-devices", "0")
    for registered_at in ("-2e9", "NaN", "1e300"):
        ids = tmp_path / "ids.json"
        ids.write_text("[" + ", ".join(
            f'{{"customer": "x-{i}", "identity_key": "{i:032x}", "rotation_exponent": 0, '
            f'"beacon_time_at_registration": 0, "registered_at": {registered_at}}}'
            for i in range(3)) + "]")
        r = storegate("replay", str(tmp_path / "capture.jsonl"), "-c",
                      str(tmp_path / "store.toml"), "--identities", str(ids),
                      "--events-out", str(tmp_path / "o.jsonl"), timeout=60)
        assert "Traceback" not in r.stderr, r.stderr
        if r.returncode == 2:
            assert f"bad data file {ids}: [0]" in r.stderr
        else:
            assert r.returncode == 0, r.stderr
