"""Scanner-node messages (pure): ESPresense reports and raw adverts in, adverts out."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from storegate.core.ble.capture import Advert
from storegate.core.ble.decoders import EDDYSTONE_UUID, EddystoneUid, decode_advert
from storegate.core.ble.nodes import (
    MAX_PAYLOAD_BYTES,
    NodeRejected,
    parse_espresense,
    parse_raw_adverts,
)

NOW = 1_795_000_000.0
RAW = "storegate/v1/s1/scanners/esp-entrance/adverts"
UUID = "e2c56db5-dffb-48d2-b060-d0f5a71096e0"


def test_raw_single_list_and_wrapped_forms() -> None:
    one = {"address": "5A:00:00:00:00:01", "rssi": -60,
           "service_data": {EDDYSTONE_UUID.upper(): "30f40001020304050607"}}
    for body in (one, [one, one], {"adverts": [one]}):
        adverts, bad = parse_raw_adverts(RAW, json.dumps(body).encode(), NOW)
        assert not bad and adverts
        a = adverts[0]
        assert a.scanner == "esp-entrance" and a.ts == NOW and a.rssi == -60
        assert a.service_data[EDDYSTONE_UUID][:1] == b"\x30"  # uuid keys normalised


def test_raw_node_time_used_only_within_the_skew() -> None:
    ok = {"address": "a", "rssi": -60, "ts": NOW - 2}
    rebooted = {"address": "a", "rssi": -60, "ts": 12.5}  # an ESP32 back in 1970
    adverts, _ = parse_raw_adverts(RAW, json.dumps([ok, rebooted]).encode(), NOW, 5.0)
    assert [a.ts for a in adverts] == [NOW - 2, NOW]


def test_raw_bad_items_are_rejected_one_by_one_with_reasons() -> None:
    body = [{"address": "a", "rssi": -60}, {"address": "b", "rssi": 99}, "x",
            {"address": "c", "rssi": -60, "manufacturer_data": {"apple": "00"}}]
    adverts, bad = parse_raw_adverts(RAW, json.dumps(body).encode(), NOW)
    assert [a.address for a in adverts] == ["a"]
    assert [b.reason.split(":")[0] for b in bad] == ["advert 1", "advert 2", "advert 3"]
    assert all(b.node == "esp-entrance" for b in bad)
    assert "rssi" in bad[0].reason and "company id" in bad[2].reason


def test_raw_garbage_payloads() -> None:
    for payload in (b"\xff\xfe", b"", b"42", b'"x"', b"[" * 100_000):
        adverts, bad = parse_raw_adverts(RAW, payload, NOW)
        assert adverts == [] and len(bad) == 1 and bad[0].reason


def test_espresense_ibeacon_is_rebuilt_into_bytes_our_decoders_read() -> None:
    report = {"id": f"iBeacon:{UUID}-1-40000", "rssi@1m": -59, "rssi": -71,
              "mac": "ac233f000001", "distance": 2.1}
    a = parse_espresense("espresense/devices/x/checkout", json.dumps(report).encode(), NOW)
    assert isinstance(a, Advert)
    assert a.scanner == "checkout" and a.rssi == -71 and a.address == "ac233f000001"
    frames = decode_advert(a.manufacturer_data, a.service_data)
    assert len(frames) == 1
    f = frames[0]
    assert getattr(f, "uuid", None) == UUID and getattr(f, "minor", None) == 40000
    assert getattr(f, "power_1m", None) == -59


def test_espresense_undashed_uuid_altbeacon_and_eddystone_uid() -> None:
    hexuuid = UUID.replace("-", "")
    a = parse_espresense("espresense/devices/i/room",
                         json.dumps({"id": f"iBeacon:{hexuuid}-7-8", "rssi": -60}).encode(), NOW)
    assert isinstance(a, Advert) and a.manufacturer_data
    alt = parse_espresense("espresense/devices/i/room", json.dumps(
        {"id": f"altBeacon:{UUID}-1-2", "rssi": -60, "rssi@1m": -60}).encode(), NOW)
    assert isinstance(alt, Advert)
    frames = decode_advert(alt.manufacturer_data, alt.service_data)
    assert len(frames) == 1 and getattr(frames[0], "power_1m", None) == -60
    uid = parse_espresense("espresense/devices/i/room", json.dumps(
        {"id": "eddy:00112233445566778899-aabbccddeeff", "rssi": -60, "rssi@1m": -61}).encode(),
        NOW)
    assert isinstance(uid, Advert)
    frame = decode_advert(uid.manufacturer_data, uid.service_data)[0]
    assert isinstance(frame, EddystoneUid)
    assert frame.namespace == "00112233445566778899" and frame.power_1m == -61


def test_espresense_other_ids_are_anonymous_devices() -> None:
    a = parse_espresense("espresense/devices/apple:1005:9-26/aisle",
                         json.dumps({"id": "apple:1005:9-26", "rssi": -80.0}).encode(), NOW)
    assert isinstance(a, Advert)
    assert a.address == "apple:1005:9-26" and not a.manufacturer_data and a.rssi == -80


def test_espresense_rejections() -> None:
    cases = {
        ("espresense/devices/x/r", b"{"): "not JSON",
        ("espresense/devices/x/r", b"[]"): "not a JSON object",
        ("espresense/devices/x/r", b'{"id": "a", "rssi": "near"}'): "rssi",
        ("espresense/devices/x/r", b'{"id": "iBeacon:' + UUID.encode() + b'-70000-1", '
                                   b'"rssi": -50}'): "out of range",
        ("espresense/r", b'{"id": "a", "rssi": -50}'): "not an ESPresense device topic",
    }
    for (topic, payload), reason in cases.items():
        r = parse_espresense(topic, payload, NOW)
        assert isinstance(r, NodeRejected), (topic, payload)
        assert reason in r.reason


@given(st.binary(max_size=300), st.text(max_size=40))
def test_node_parsers_never_raise(payload: bytes, level: str) -> None:
    parse_raw_adverts(f"storegate/v1/s/scanners/{level}/adverts", payload, NOW)
    parse_espresense(f"espresense/devices/x/{level}", payload, NOW)


def test_poison_timestamps_and_addresses_are_rejected_not_raised() -> None:
    huge = b'[{"address": "a", "rssi": -60, "ts": 1' + b"0" * 400 + b"}]"
    adverts, bad = parse_raw_adverts(RAW, huge, NOW)
    assert adverts == [] and len(bad) == 1  # rejected with its reason, never raised
    ahead = json.dumps([{"address": "a", "rssi": -60, "ts": NOW + 3}]).encode()
    adverts, _ = parse_raw_adverts(RAW, ahead, NOW)
    assert adverts[0].ts == NOW  # never ahead of the gateway's clock
    odd = json.dumps([{"address": "D4:A1\ud800", "rssi": -60},
                      {"address": "x" * 65, "rssi": -60}]).encode()
    adverts, bad = parse_raw_adverts(RAW, odd, NOW)
    assert adverts == [] and all("printable ASCII" in b.reason for b in bad)


def test_raw_payload_over_the_size_bound_is_refused_unread() -> None:
    one = {"address": "a", "rssi": -60, "name": "x" * 200}
    payload = json.dumps([one] * 2000).encode()
    assert len(payload) > MAX_PAYLOAD_BYTES
    adverts, bad = parse_raw_adverts(RAW, payload, NOW)
    assert adverts == [] and [b.reason for b in bad] == [
        f"payload over {MAX_PAYLOAD_BYTES} bytes"]


def test_raw_non_finite_or_absurd_node_times_use_the_receive_time() -> None:
    items = [{"address": "a", "rssi": -60, "ts": ts} for ts in
             (float("nan"), float("inf"), 1e300, -1e300)]
    adverts, bad = parse_raw_adverts(RAW, json.dumps(items).encode(), NOW)
    assert not bad and [a.ts for a in adverts] == [NOW] * 4


def test_espresense_values_out_of_bounds_are_rejected_or_defaulted() -> None:
    topic = "espresense/devices/x/checkout"
    for report, reason in (
        ({"id": "x", "rssi": float("nan")}, "rssi"),
        ({"id": "x", "rssi": 1e300}, "rssi"),
        ({"id": "x" * 65, "rssi": -60}, "id must be at most 64"),
        ({"id": "x", "mac": "m" * 65, "rssi": -60}, "mac must be at most 64"),
    ):
        r = parse_espresense(topic, json.dumps(report).encode(), NOW)
        assert isinstance(r, NodeRejected) and reason in r.reason, report
    long_room = parse_espresense("espresense/devices/x/" + "r" * 65,
                                 b'{"id": "x", "rssi": -60}', NOW)
    assert isinstance(long_room, NodeRejected) and "room" in long_room.reason
    # a NaN measured power falls back to the default; a huge name is dropped
    a = parse_espresense(topic, json.dumps(
        {"id": f"iBeacon:{UUID}-1-2", "rssi": -60, "rssi@1m": float("nan"),
         "name": "n" * 1000}).encode(), NOW)
    assert isinstance(a, Advert) and a.name is None
    assert a.manufacturer_data[0x004C][-1] == (-59) & 0xFF
