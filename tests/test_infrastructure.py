"""Infrastructure beacons: the store's beacons.toml, classification, and the pipeline
keeping them out of footfall."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storegate.app.presence_files import load_beacons
from storegate.config import defaults_dir
from storegate.core.ble.capture import Advert
from storegate.core.ble.decoders import EDDYSTONE_UUID
from storegate.core.ble.eid import EidResolver
from storegate.core.presence.infrastructure import Infrastructure
from storegate.core.presence.pipeline import PresencePipeline
from storegate.core.presence.settings import PresenceSettings, Zone
from storegate.errors import DataFileError

UUID = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"
NS = "5d3a7c2e9b1f04a6e8c0"


def ibeacon(major: int, minor: int, uuid: str = UUID) -> dict[int, bytes]:
    return {0x004C: bytes.fromhex("0215" + uuid.replace("-", "")) + major.to_bytes(2, "big")
            + minor.to_bytes(2, "big") + b"\xc5"}


def uid(namespace: str, instance: str) -> dict[str, bytes]:
    return {EDDYSTONE_UUID: bytes.fromhex("00ec" + namespace + instance + "0000")}


def demo() -> Infrastructure:
    return Infrastructure(load_beacons(defaults_dir() / "demo-store" / "beacons.toml"))


def test_demo_store_beacons_file_is_valid_and_linked_from_firmware_configs() -> None:
    repo = Path(__file__).resolve().parents[1]
    linked = repo / "firmware-configs" / "demo-store" / "beacons.toml"
    assert linked.read_text() == (defaults_dir() / "demo-store" / "beacons.toml").read_text()
    assert {b.kind for b in demo().beacons} == {"zone", "staff", "trolley"}


def test_exact_fleet_and_namespace_rules() -> None:
    infra = demo()
    zone = infra.classify(ibeacon(100, 1), {})
    assert zone is not None and zone.label == "zone-entrance" and zone.zone == "entrance"
    badge = infra.classify(ibeacon(200, 40123), {})  # any minor of major 200
    assert badge is not None and badge.kind == "staff"
    tag = infra.classify({}, uid(NS, "0000000000ab"))  # any instance of the namespace
    assert tag is not None and tag.kind == "trolley"
    assert infra.classify(ibeacon(100, 2), {}) is None  # not listed
    assert infra.classify(ibeacon(100, 1, "e2c56db5-dffb-48d2-b060-d0f5a71096e0"), {}) is None
    assert infra.classify({}, uid("00" * 10, "0000000000ab")) is None
    # a stale foreign key in BlueZ's dict does not hide the beacon
    assert infra.classify({0x0059: b"\x01\x02", **ibeacon(100, 7)}, {}) is not None


def test_altbeacon_rule(tmp_path: Path) -> None:
    beacon_id = "11" * 20
    f = tmp_path / "b.toml"
    f.write_text('[[beacon]]\nlabel = "door"\nkind = "fixture"\n'
                 f'altbeacon = {{ id = "{beacon_id}" }}\n')
    infra = Infrastructure(load_beacons(f))
    data = bytes.fromhex("beac" + beacon_id) + b"\xc5\x00"
    hit = infra.classify({0x0118: data}, {})
    assert hit is not None and hit.label == "door"
    assert infra.classify({0x1234: data}, {}) is not None  # under any company id


@pytest.mark.parametrize(("text", "key", "problem"), [
    ('[[beacon]]\nlabel = "a"\nkind = "zone"\n', "beacon[0]", "exactly one"),
    ('[[beacon]]\nlabel = "a"\nkind = "robot"\nibeacon = { uuid = "' + UUID + '" }\n',
     "beacon[0].kind", "Input should be"),
    ('[[beacon]]\nlabel = "a"\nkind = "zone"\nibeacon = { uuid = "nope" }\n',
     "beacon[0].ibeacon.uuid", "badly formed"),
    ('[[beacon]]\nlabel = "a"\nkind = "zone"\nibeacon = { uuid = "' + UUID + '", minor = 1 }\n',
     "beacon[0].ibeacon", "minor without major"),
    ('[[beacon]]\nlabel = "a"\nkind = "zone"\nibeacon = { uuid = "' + UUID + '" }\n'
     '[[beacon]]\nlabel = "a"\nkind = "zone"\nibeacon = { uuid = "' + UUID + '" }\n',
     "beacon[1]", "used twice"),
    ("[[beacons]]\n", None, "unknown table"),
    ("[[beacon]\n", None, "not valid TOML"),
])
def test_broken_beacons_file_names_file_entry_and_problem(
        tmp_path: Path, text: str, key: str | None, problem: str) -> None:
    f = tmp_path / "beacons.toml"
    f.write_text(text)
    with pytest.raises(DataFileError) as err:  # a data file, not the config, is wrong
        load_beacons(f)
    assert err.value.source == str(f)
    assert err.value.key == key
    assert problem in str(err.value)


def test_pipeline_counts_beacons_by_kind_and_keeps_them_out_of_footfall() -> None:
    settings = PresenceSettings(zones=(Zone("entrance", ("sc-a",)),))
    pipe = PresencePipeline(settings, EidResolver(), os.urandom, infrastructure=demo(),
                            footfall_period_s=60)
    t = 1_795_000_020.0
    for i in range(20):
        pipe.feed(Advert(t + i, "sc-a", "AC:23:3F:00:00:01", -50, ibeacon(100, 1)))
        pipe.feed(Advert(t + i, "sc-a", "AC:23:3F:00:00:02", -50, ibeacon(200, i)))
        pipe.feed(Advert(t + i, "sc-a", "5A:00:00:00:00:09", -50))  # a shopper's phone
    c = pipe.counters
    assert c.infrastructure == {"zone": 20, "staff": 20}
    assert c.anonymous == 20
    assert pipe.beacons_last_heard == {"zone-entrance": t + 19, "staff-badges": t + 19}
    counted = pipe.tick(t + 120)
    store = [d.data for d in counted if d.type.name == "storegate.footfall.counted.v1"
             and getattr(d.data, "zone", "x") is None]
    assert [getattr(s, "devices", None) for s in store] == [1]  # the phone, not the beacons
