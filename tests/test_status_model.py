"""The typed status model against the status file's JSON: the keys and their order are a
contract with operators' scripts (``storegate status --json``), and a file parses back to
the same typed view, each adapter's part told apart by its ``kind``."""

from __future__ import annotations

import json
from typing import Any

from storegate.adapters.ble_bleak import BleSourceStatus
from storegate.adapters.mqtt_nodes import NodeSourceStatus, NodeStatus
from storegate.adapters.mqtt_paho import PublisherStatus
from storegate.adapters.serial_tap import SerialTapStatus
from storegate.app.sim_store import SimSourceStatus
from storegate.app.status import (
    GatewayStatusView,
    LaneStatus,
    OutboxStatus,
    PosDeviceStatus,
    PosStatus,
    PresenceCounters,
    PresenceStatus,
)

BLE = BleSourceStatus(adapter="hci0", scanner="door", mode="passive", state="scanning",
                      adverts_total=12, last_advert_at=99.5, restarts_total=1,
                      failures_total=2, stalls_total=3, last_error="InProgress")
NODES = NodeSourceStatus(state="connected", last_error=None, adverts_total=40,
                         rejected_total=2, shed_total=0,
                         nodes={"esp-door": NodeStatus(last_seen=98.0, adverts=40, rejected=2,
                                                       silent=False)})
SIM = SimSourceStatus(state="running", runs=2, adverts_total=500)
TAP = SerialTapStatus.from_json({"name": "lane-1/printer", "port": "/dev/ttyUSB0",
                                 "line": "9600 8N1", "flow": "none", "state": "open",
                                 "since": 10.0, "bytes_total": 64, "last_byte_at": 97.0})


def view() -> GatewayStatusView:
    return GatewayStatusView(
        pid=42, state="running", store_id="s1", gateway_id="gw1", version="1.0", session=3,
        started_at=1.0, updated_at=100.0,
        broker=PublisherStatus.from_json({"url": "mqtt://broker:1883", "connected": True,
                                          "warnings": ["MQTT 3.1.1"]}),
        outbox=OutboxStatus.from_json({"path": "/var/lib/storegate/outbox.db"}),
        seal_key=None, commands=None,
        presence=PresenceStatus(enrolled=1, tracked=2, present={"store": 1},
                                counters=PresenceCounters.from_json({}),
                                beacons_last_heard={}, commands_applied=0, errors_total=0,
                                sources=(BLE, NODES, SIM)),
        pos=PosStatus(lanes={"lane-1": LaneStatus(counters={"purchases": 1}, devices=(
            PosDeviceStatus(role="printer", dialect="escpos", port="/dev/ttyUSB0",
                            frames_total=5, rejected={}, tap=TAP),
            PosDeviceStatus(role="display", dialect="pole", port="/dev/ttyUSB1",
                            frames_total=0, rejected={}, tap=None)))}, errors_total=0),
    )


def as_file(v: GatewayStatusView) -> dict[str, Any]:
    return json.loads(json.dumps(v.to_json()))  # type: ignore[no-any-return]


def test_the_files_keys_and_their_order() -> None:
    data = as_file(view())
    assert list(data["broker"]) == [
        "url", "connected", "since", "last_error", "in_flight", "published_total",
        "rejected_total", "refused_held", "last_refusal", "warnings", "birth_check",
        "reconnects_total", "connect_failures", "publish_latency"]  # new keys go last
    ble, nodes, sim = data["presence"]["sources"]
    assert list(ble) == ["kind", "adapter", "scanner", "mode", "state", "adverts_total",
                         "last_advert_at", "restarts_total", "failures_total",
                         "stalls_total", "last_error"]
    assert ble["kind"] == "ble"
    assert list(nodes) == ["kind", "state", "last_error", "adverts_total", "rejected_total",
                           "shed_total", "nodes"]
    assert nodes["kind"] == "scanner-nodes"
    assert nodes["nodes"] == {"esp-door": {"last_seen": 98.0, "adverts": 40, "rejected": 2,
                                           "silent": False}}
    assert sim == {"kind": "simulator", "state": "running", "runs": 2, "adverts_total": 500}
    tap = data["pos"]["lanes"]["lane-1"]["devices"][0]["tap"]
    assert list(tap) == [
        "kind", "name", "port", "line", "flow", "state", "since", "last_error", "bytes_total",
        "chunks_total", "last_byte_at", "opens_total", "last_open_at", "open_failures_total",
        "disconnects_total", "shed_bytes_total", "empty_reads_total",
        "callback_errors_total"]
    assert tap["kind"] == "serial"
    assert data["pos"]["lanes"]["lane-1"]["devices"][1]["tap"] is None


def test_a_file_parses_back_to_the_same_typed_view() -> None:
    v = view()
    back = GatewayStatusView.from_json(as_file(v))
    assert back == v
    assert back is not None and back.presence is not None and back.pos is not None
    assert [type(s) for s in back.presence.sources] == [
        BleSourceStatus, NodeSourceStatus, SimSourceStatus]
    assert isinstance(back.pos.lanes["lane-1"].devices[0].tap, SerialTapStatus)
    assert isinstance(back.broker, PublisherStatus)


def test_missing_keys_take_empty_values_and_unknown_kinds_are_left_out() -> None:
    data = as_file(view())
    data["presence"]["sources"] = [{"kind": "ble"}, {"kind": "from-a-newer-version"},
                                   {"kind": "scanner-nodes", "nodes": {"n1": {}}}, "junk"]
    data["pos"]["lanes"]["lane-1"]["devices"][0]["tap"] = {"kind": "serial"}
    del data["broker"]["connected"]
    back = GatewayStatusView.from_json(data)
    assert back is not None and back.presence is not None and back.pos is not None
    ble, nodes = back.presence.sources
    assert isinstance(ble, BleSourceStatus) and ble.adverts_total == 0
    assert ble.last_advert_at is None
    assert isinstance(nodes, NodeSourceStatus)
    assert nodes.nodes == {"n1": NodeStatus(last_seen=0.0, adverts=0, rejected=0,
                                            silent=False)}
    tap = back.pos.lanes["lane-1"].devices[0].tap
    assert tap is not None and tap.bytes_total == 0 and tap.state == ""
    assert back.broker is not None and back.broker.connected is False
