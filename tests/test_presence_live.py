"""Presence end to end: `storegate run` as a real process, a real mosquitto, scanner
nodes publishing adverts over MQTT, central sending consent changes.

What central receives is checked on the wire; what the box keeps is checked on disk.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from storegate.core.ble.decoders import EDDYSTONE_UUID
from storegate.core.ble.eid import Identity, compute_eid
from tests.support.bluez import BluezMock
from tests.support.central import CENTRAL
from tests.support.gateway_proc import live_status, start_run, storegate, write_config
from tests.support.mosquitto import Mosquitto
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

IK = bytes.fromhex("00112233445566778899aabbccddeeff")
IK2 = bytes.fromhex("ffeeddccbbaa99887766554433221100")
ZONE_BEACON = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"
PRESENCE = """
[sources.scanner_nodes]
enabled = true
[presence]
min_presence_s = 2
zone_min_presence_s = 2
exit_after_s = 3
occupancy_interval_s = 5
{files}
[[presence.zones]]
id = "entrance"
scanners = ["node-a"]
[[presence.zones]]
id = "aisle"
scanners = ["node-b"]
"""


def identity(customer: str, key: bytes) -> Identity:
    return Identity(customer, key, 4, 1000, time.time() - 3600)


def record(i: Identity) -> dict[str, Any]:
    return {"customer": i.customer, "identity_key": i.identity_key.hex(),
            "rotation_exponent": i.rotation_exponent,
            "beacon_time_at_registration": i.beacon_time_at_registration,
            "registered_at": i.registered_at}


def eid_advert(i: Identity, rssi: int, address: str = "7A:00:00:00:00:01") -> dict[str, Any]:
    eid = compute_eid(i.identity_key, i.rotation_exponent, i.beacon_time(time.time()))
    return {"address": address, "rssi": rssi,
            "service_data": {EDDYSTONE_UUID: (b"\x30\xf4" + eid).hex()}}


class Node:
    """An ESP32 scanner node: a plain MQTT client publishing what it hears."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="esp32-test")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def raw(self, node: str, payload: Any) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        topic = f"storegate/v1/s1/scanners/{node}/adverts"
        self.client.publish(topic, body, qos=1).wait_for_publish(5)

    def espresense(self, room: str, device: str, payload: Any) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(f"espresense/devices/{device}/{room}", body, qos=1).wait_for_publish(5)

    def command(self, name: str, signed: bytes) -> None:
        """Central's role here: publish a signed command."""
        self.client.publish(f"storegate/v1/s1/commands/{name}", signed,
                            qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def gateway(tmp_path: Path, broker: Mosquitto) -> Any:
    alice = identity("cust-alice", IK)
    (tmp_path / "identities.json").write_text(json.dumps([record(alice)]))
    (tmp_path / "beacons.toml").write_text(
        f'[[beacon]]\nlabel = "zone-entrance"\nkind = "zone"\nzone = "entrance"\n'
        f'ibeacon = {{ uuid = "{ZONE_BEACON}", major = 100, minor = 1 }}\n')
    files = (f'identities_file = "{tmp_path / "identities.json"}"\n'
             f'beacons_file = "{tmp_path / "beacons.toml"}"')
    storage = tmp_path / "outbox.db"
    cfg = write_config(tmp_path / "gw.toml", port=broker.port, storage=storage,
                       extra=PRESENCE.format(files=files))
    proc = start_run(cfg, stderr=tmp_path / "gw.log")
    wait_for((storage.parent / "outbox.db.status.json").exists, 20, "gateway up")
    wait_for(lambda: live_status(storage).get("presence") is not None
             and live_status(storage)["presence"]["sources"][0]["state"] == "connected", 20,
             "scanner-nodes source connected")
    yield alice, storage, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_nodes_adverts_become_visits_and_bad_messages_are_counted(
        gateway: Any, broker: Mosquitto, subscriber: Subscriber, tmp_path: Path) -> None:
    alice, storage, proc = gateway
    node = Node(broker.port)
    try:
        # garbage first: it must be counted, logged once, and change nothing
        node.raw("node-a", b"\xff not json")
        node.raw("node-a", b"\xff not json")
        node.raw("node-a", {"address": "x", "rssi": "loud"})
        node.espresense("node-a", "phone", b"{")
        t_end = time.time() + 6
        while time.time() < t_end:  # Alice stands at the entrance, heard by node-a
            node.raw("node-a", {"adverts": [
                eid_advert(alice, -58),
                {"address": "5B:11:22:33:44:55", "rssi": -61,  # a phone without the app
                 "manufacturer_data": {"76": "1005031c0b2a55"}},
            ]})
            node.raw("node-b", [eid_advert(alice, -88)])
            node.espresense("node-a", f"iBeacon:{ZONE_BEACON}-100-1",
                            {"id": f"iBeacon:{ZONE_BEACON}-100-1", "rssi": -50,
                             "rssi@1m": -59, "mac": "c0ffee000001"})
            time.sleep(0.2)
        last_heard = time.time()
        wait_for(lambda: len(subscriber.of_type("storegate.visit.entered.v1")) >= 2, 10,
                 "store and zone visits entered")
        entered = subscriber.of_type("storegate.visit.entered.v1")
        assert {e["data"]["customer"] for e in entered} == {"cust-alice"}
        assert {e["data"]["zone"] for e in entered} == {None, "entrance"}
        wait_for(lambda: len(subscriber.of_type("storegate.visit.exited.v1")) >= 2, 15,
                 "visits exited")
        exited = subscriber.of_type("storegate.visit.exited.v1")
        for e in exited:
            # the exit time is the last evidence, not the moment the timeout fired
            exited_at = e["data"]["exited_at"]
            assert exited_at <= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(last_heard + 1))
        wait_for(lambda: subscriber.of_type("storegate.occupancy.measured.v1"), 15,
                 "an occupancy aggregate")
        occupancy = subscriber.of_type("storegate.occupancy.measured.v1")
        assert {e["data"]["zone"] for e in occupancy} >= {None, "entrance", "aisle"}
        st = live_status(storage)["presence"]
        nodes = st["sources"][0]
        assert nodes["rejected_total"] == 4
        assert set(nodes["nodes"]) >= {"node-a", "node-b"}
        assert st["counters"]["infrastructure"]["zone"] >= 10  # the beacon is no shopper
        assert "zone-entrance" in st["beacons_last_heard"]
        assert st["counters"]["anonymous"] >= 10
        assert st["enrolled"] == 1
        # nothing that identifies a device left the box
        with subscriber.lock:
            wire = b"".join(p for v in subscriber.events.values() for p in v)
        for secret in (b"5B:11:22", b"7A:00:00", b"c0ffee", IK.hex().encode()):
            assert secret not in wire
        log = (tmp_path / "gw.log").read_text()
        # the same problem twice: logged once (with node and topic), counted always
        assert log.count("can't decode byte 0xff") == 1
    finally:
        node.close()
    assert proc.poll() is None  # garbage never stopped the gateway


def test_identities_command_enrols_and_erasure_reaches_the_disk(
        gateway: Any, broker: Mosquitto, subscriber: Subscriber) -> None:
    _alice, storage, _proc = gateway
    bob = identity("cust-bob", IK2)
    node = Node(broker.port)
    try:
        gateways = {"g1": live_status(storage)["seal_key"]}  # as its birth certificate says
        node.command("identities", CENTRAL.identities("upsert", [bob], gateways=gateways,
                                                      request_id="r1"))
        node.command("identities", CENTRAL.sign("identities", {"op": "upsert",
                                                               "identities": []}))  # invalid
        wait_for(lambda: live_status(storage)["presence"]["enrolled"] == 2, 10, "bob enrolled")
        assert live_status(storage)["commands"]["rejected_total"] == 1
        db = storage.with_name("outbox.identities.db")
        assert IK2 in db.read_bytes() + _wal(db)
        assert os.stat(db).st_mode & 0o077 == 0  # keys are readable by the gateway only
        t_end = time.time() + 4
        while time.time() < t_end:
            node.raw("node-b", [eid_advert(bob, -55, "7A:00:00:00:00:02")])
            time.sleep(0.2)
        wait_for(lambda: [e for e in subscriber.of_type("storegate.visit.entered.v1")
                          if e["data"]["customer"] == "cust-bob"], 10, "bob's visit")
        node.command("identities", CENTRAL.identities("remove", customers=["cust-bob"],
                                                      gateways={}, request_id="erase-bob"))
        wait_for(lambda: live_status(storage)["presence"]["enrolled"] == 1, 10, "bob removed")
        wait_for(lambda: [e for e in subscriber.of_type("storegate.gateway.identities_applied.v1")
                          if e["data"]["request_id"] == "erase-bob"], 10, "the confirmation")
        [done] = [e["data"] for e in subscriber.of_type("storegate.gateway.identities_applied.v1")
                  if e["data"]["request_id"] == "erase-bob"]
        assert done["applied"] and done["enrolled"] == 1 and done["op"] == "remove"
        assert IK2 not in db.read_bytes() + _wal(db)  # overwritten, not just unlinked
        seen = len(subscriber.of_type("storegate.visit.entered.v1"))
        before = live_status(storage)["presence"]["counters"]
        sent = 0
        t_end = time.time() + 4
        while time.time() < t_end:  # bob's phone is now just an anonymous device
            node.raw("node-b", [eid_advert(bob, -55, "7A:00:00:00:00:02")])
            sent += 1
            time.sleep(0.2)  # pacing: a phone advertising for 4 s, not a wait
        # the positive signal that every one of them had its chance: each was counted as
        # an EID nobody owns (none resolved to bob, so no visit of his can follow)
        wait_for(lambda: live_status(storage)["presence"]["counters"]["unresolved_eid"]
                 >= before["unresolved_eid"] + sent, 10, "bob's adverts processed")
        after = live_status(storage)["presence"]["counters"]
        assert after["resolved"] == before["resolved"]
        assert len(subscriber.of_type("storegate.visit.entered.v1")) == seen
    finally:
        node.close()


def _wal(db: Path) -> bytes:
    wal = db.with_name(db.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


def test_bluetooth_adapter_to_visits_and_status(tmp_path: Path, broker: Mosquitto,
                                                subscriber: Subscriber, bluez: BluezMock) -> None:
    """`storegate run` scanning a (mocked) BlueZ adapter with real bleak."""
    alice = identity("cust-alice", IK)
    (tmp_path / "identities.json").write_text(json.dumps([record(alice)]))
    storage = tmp_path / "outbox.db"
    extra = ('[sources.ble]\nenabled = true\nstall_after_s = 5\n'
             '[[sources.ble.adapters]]\nadapter = "hci1"\nscanner = "node-a"\n'
             + PRESENCE.replace("[sources.scanner_nodes]\nenabled = true\n", "").format(
                 files=f'identities_file = "{tmp_path / "identities.json"}"'))
    cfg = write_config(tmp_path / "gw.toml", port=broker.port, storage=storage, extra=extra)
    proc = start_run(cfg, stderr=tmp_path / "gw.log")
    try:
        wait_for(lambda: bluez.discovering("hci1"), 20, "the gateway scanning hci1")
        t_end = time.time() + 5
        while time.time() < t_end:
            a = eid_advert(alice, -57)
            bluez.advertise(a["address"], rssi=-57, adapter="hci1",
                            service_data={EDDYSTONE_UUID: bytes.fromhex(
                                a["service_data"][EDDYSTONE_UUID])})
            time.sleep(0.1)
        wait_for(lambda: len(subscriber.of_type("storegate.visit.entered.v1")) >= 2, 10,
                 "store and zone visits from the adapter")
        assert {e["data"]["zone"] for e in subscriber.of_type("storegate.visit.entered.v1")} \
            == {None, "entrance"}
        r = storegate("status", "-c", str(cfg))
        assert "bluetooth hci1 (active, scanner node-a): scanning" in r.stdout, r.stdout
        assert "1 enrolled" in r.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    assert not bluez.discovering("hci1")  # the scan was stopped on the way out
