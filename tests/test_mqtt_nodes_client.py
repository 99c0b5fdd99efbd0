"""The scanner-node MQTT client (``ScannerNodesSource``), directly.

Between the pure parsers (``test_nodes``) and the whole gateway (``test_presence_live``):
unit tests hand it messages the way paho's network thread does; e2e tests run it against
a real mosquitto. Its ``status()`` is the status model's business, not asserted here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from storegate.adapters import mqtt_nodes
from storegate.adapters.mqtt_client import MqttSettings
from storegate.adapters.mqtt_nodes import ScannerNodesSource
from storegate.core.backoff import Backoff
from storegate.core.ble.capture import Advert
from tests.support.mosquitto import Mosquitto
from tests.support.probe import Probe

NOW = 1_795_000_000.0
RAW = "storegate/v1/s1/scanners/+/adverts"
ESPRESENSE = "espresense/devices/#"
UUID = "e2c56db5-dffb-48d2-b060-d0f5a71096e0"
EDDYSTONE = "0000feaa-0000-1000-8000-00805f9b34fb"


def raw_advert(address: str, rssi: int = -60) -> dict[str, Any]:
    return {"address": address, "rssi": rssi,
            "service_data": {EDDYSTONE: "30f40001020304050607"}}


def ibeacon_report(minor: int, rssi: int = -71) -> dict[str, Any]:
    return {"id": f"iBeacon:{UUID}-1-{minor}", "rssi@1m": -59, "rssi": rssi,
            "mac": "ac233f000001"}


class Heard:
    """What reached ``on_advert``, and on which thread."""

    def __init__(self) -> None:
        self.adverts: list[Advert] = []
        self.threads: set[int] = set()

    def __call__(self, advert: Advert) -> None:
        self.adverts.append(advert)
        self.threads.add(threading.get_ident())


def source(port: int, heard: Heard, **kwargs: Any) -> ScannerNodesSource:
    settings = MqttSettings("127.0.0.1", port, "gw-test", backoff=Backoff(0.1, 1.0))
    return ScannerNodesSource(settings, raw_topic=RAW, espresense_topic=ESPRESENSE,
                              on_advert=heard, wall_clock=lambda: NOW, **kwargs)


async def until(predicate: Callable[[], object], what: str, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


# --- unit: messages handed over as paho's network thread does ---------------------------


def message(topic: str, payload: bytes | dict[str, Any] | list[Any]) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return msg


def deliver(src: ScannerNodesSource, *msgs: mqtt.MQTTMessage) -> None:
    """Each message from a thread of its own (paho's), then let the loop drain."""
    for msg in msgs:
        t = threading.Thread(target=src._on_message, args=(None, None, msg))
        t.start()
        t.join()


def on_a_loop(src: ScannerNodesSource, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` with ``src``'s hand-off pointed at a running loop (as ``run`` does)."""
    async def main() -> None:
        src._handoff.loop = asyncio.get_running_loop()
        try:
            await body()
        finally:
            src._handoff.loop = None
    asyncio.run(main())


def test_raw_and_espresense_messages_become_adverts_on_the_loop() -> None:
    heard = Heard()
    src = source(1883, heard)

    async def body() -> None:
        deliver(src,
                message("storegate/v1/s1/scanners/esp-door/adverts",
                        [raw_advert("5A:00:00:00:00:01"), raw_advert("5A:00:00:00:00:02")]),
                message("espresense/devices/ibeacon-x/checkout", ibeacon_report(7)))
        await until(lambda: len(heard.adverts) == 3, "three adverts on the loop")

    on_a_loop(src, body)
    assert [(a.scanner, a.address, a.ts) for a in heard.adverts] == [
        ("esp-door", "5A:00:00:00:00:01", NOW), ("esp-door", "5A:00:00:00:00:02", NOW),
        ("checkout", "ac233f000001", NOW)]
    assert heard.threads == {threading.get_ident()}  # the loop's, not paho's
    assert src.adverts_total == 3 and src.rejected_total == 0 and src.shed_total == 0
    assert set(src.nodes) == {"esp-door", "checkout"}


def test_bad_messages_are_counted_and_logged_once_and_good_ones_still_pass(
        caplog: pytest.LogCaptureFixture) -> None:
    heard = Heard()
    src = source(1883, heard)
    bad_raw = message("storegate/v1/s1/scanners/esp-door/adverts", b"{not json")
    bad_item = message("storegate/v1/s1/scanners/esp-door/adverts",
                       [raw_advert("5A:00:00:00:00:01"), {"address": "x", "rssi": 99}])
    bad_report = message("espresense/devices/phone/checkout", b"\xff\xfe")

    async def body() -> None:
        with caplog.at_level(logging.WARNING, logger=mqtt_nodes.__name__):
            deliver(src, bad_raw, bad_raw, bad_item, bad_report)
        await until(lambda: len(heard.adverts) == 1, "the one good advert")

    on_a_loop(src, body)
    assert src.rejected_total == 4  # two whole messages, one advert of three, one report
    assert [a.address for a in heard.adverts] == ["5A:00:00:00:00:01"]
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    not_json = [m for m in rejected if "esp-door" in m and "not JSON" in m]
    assert len(not_json) == 1, rejected  # the same problem twice: logged once


def test_without_a_running_loop_adverts_are_not_queued() -> None:
    """Before ``run`` starts or after it ends nobody drains: nothing may pile up."""
    heard = Heard()
    src = source(1883, heard)
    deliver(src, message("storegate/v1/s1/scanners/esp-door/adverts",
                         raw_advert("5A:00:00:00:00:01")))
    assert src._handoff.take() == ([], 0)
    assert heard.adverts == [] and src.adverts_total == 0
    assert "esp-door" in src.nodes  # the node was still seen


def test_invented_node_names_are_not_kept_beyond_the_bound(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqtt_nodes, "MAX_NODES", 5)
    src = source(1883, Heard())
    deliver(src, *(message(f"storegate/v1/s1/scanners/n{i}/adverts", b"[") for i in range(8)))
    assert len(src.nodes) == 5
    assert src.rejected_total == 8  # every one still counted


def test_a_refused_connection_is_reported_not_raised() -> None:
    src = source(1883, Heard())
    refused = ReasonCode(PacketTypes.CONNACK, "Not authorized")
    src._on_connect(mqtt.Client(CallbackAPIVersion.VERSION2), None, None, refused,
                    None)
    assert not src.connected
    assert src.last_error == "broker refused: Not authorized"


class SubscribingClient:
    """What ``_on_connect`` needs of paho's client: ``subscribe``, recorded."""

    def __init__(self) -> None:
        self.subscribed: list[Any] = []

    def subscribe(self, topics: Any, qos: int = 0) -> tuple[int, int]:
        self.subscribed.append(topics)
        return mqtt.MQTT_ERR_SUCCESS, 7


def test_connected_means_the_subscription_was_granted_not_just_the_connection() -> None:
    """A node's message published between CONNACK and SUBACK matches no subscription
    and is dropped by the broker: "connected" (the status a test or an operator waits
    for before relying on the nodes) comes with the SUBACK."""
    src = source(1883, Heard())
    client = SubscribingClient()
    granted = ReasonCode(PacketTypes.CONNACK, "Success")
    src._on_connect(client, None, None, granted, None)  # type: ignore[arg-type]
    assert client.subscribed == [[(RAW, 0), (ESPRESENSE, 0)]]
    assert not src.connected  # CONNACK only
    ok = [ReasonCode(PacketTypes.SUBACK, "Granted QoS 0")] * 2
    src._on_subscribe(client, None, 6, ok, None)  # type: ignore[arg-type]
    assert not src.connected  # another subscription's SUBACK
    src._on_subscribe(client, None, 7, ok, None)  # type: ignore[arg-type]
    assert src.connected and src.last_error is None
    assert src.status().state == "connected"


def test_a_refused_subscription_is_reported_and_never_connected() -> None:
    src = source(1883, Heard())
    client = SubscribingClient()
    src._on_connect(client, None, None, ReasonCode(PacketTypes.CONNACK, "Success"),
                    None)  # type: ignore[arg-type]
    src._on_subscribe(client, None, 7, [  # type: ignore[arg-type]
        ReasonCode(PacketTypes.SUBACK, "Granted QoS 0"),
        ReasonCode(PacketTypes.SUBACK, "Not authorized")], None)
    assert not src.connected
    assert src.last_error == "subscription refused: Not authorized"
    assert src.status().state == "connecting"


# --- e2e: a real mosquitto --------------------------------------------------------------


class Running:
    """The source's ``run`` as a task, stopped (and awaited) on exit."""

    def __init__(self, src: ScannerNodesSource) -> None:
        self.src = src
        self.stop = asyncio.Event()

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.src.run(self.stop))
        await until(lambda: self.src.connected or self.task.done(), "connected")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


async def publish(probe: Probe, topic: str, payload: bytes | dict[str, Any]) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await asyncio.to_thread(probe.publish, topic, body)


async def subscribed(probe: Probe, heard: Heard) -> None:
    """Publish until a report comes through, then forget the warm-up (for a retained
    replay or a reconnect, where the test needs to know adverts flow again)."""
    async with asyncio.timeout(20):
        while not heard.adverts:
            await publish(probe, "espresense/devices/x/warmup", ibeacon_report(1))
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)  # let any warm-up still in flight arrive
    heard.adverts.clear()


@pytest.mark.e2e
def test_published_node_messages_become_adverts(broker_session: Mosquitto) -> None:
    heard = Heard()
    src = source(broker_session.port, heard, client_suffix="nodes-e2e-1")
    probe = Probe("node", broker_session.port)
    assert probe.connect() == 0

    async def main() -> None:
        async with Running(src):
            assert src.connected and src.last_error is None
            # connected is subscribed: the first message is heard, no warm-up needed
            await publish(probe, "espresense/devices/ibeacon-x/checkout",
                          ibeacon_report(1))
            await until(lambda: len(heard.adverts) == 1, "the first message")
            heard.adverts.clear()
            await publish(probe, "storegate/v1/s1/scanners/esp-door/adverts",
                          {"adverts": [raw_advert("5A:00:00:00:00:01", -50)]})
            await publish(probe, "espresense/devices/ibeacon-x/checkout",
                          ibeacon_report(40000, -70))
            await until(lambda: len(heard.adverts) == 2, "both adverts")
            # another store's scanners are not this source's subscription
            await publish(probe, "storegate/v1/s2/scanners/esp-door/adverts",
                          raw_advert("5A:00:00:00:00:09"))
            await publish(probe, "espresense/devices/ibeacon-x/checkout", ibeacon_report(2))
            await until(lambda: len(heard.adverts) == 3, "the marker after it")

    try:
        asyncio.run(main())
    finally:
        probe.close()
    assert [(a.scanner, a.address, a.rssi) for a in heard.adverts] == [
        ("esp-door", "5A:00:00:00:00:01", -50), ("checkout", "ac233f000001", -70),
        ("checkout", "ac233f000001", -71)]
    assert not src.connected  # stopped: disconnected


@pytest.mark.e2e
def test_bad_payloads_are_counted_and_the_source_keeps_listening(
        broker_session: Mosquitto) -> None:
    heard = Heard()
    src = source(broker_session.port, heard, client_suffix="nodes-e2e-2")
    probe = Probe("bad-node", broker_session.port)
    assert probe.connect() == 0

    async def main() -> None:
        async with Running(src):
            await subscribed(probe, heard)
            before = src.rejected_total
            for bad in (b"", b"{", b"\x00" * 64, b"[" * 100_000, b'{"adverts": 5}'):
                await publish(probe, "storegate/v1/s1/scanners/esp-bad/adverts", bad)
            await publish(probe, "espresense/devices/phone/checkout", b"not json")
            await until(lambda: src.rejected_total - before == 6, "six rejections")
            await publish(probe, "storegate/v1/s1/scanners/esp-bad/adverts",
                          raw_advert("5A:00:00:00:00:01"))
            await until(lambda: len(heard.adverts) == 1, "a good advert after the bad")
            assert src.connected

    try:
        asyncio.run(main())
    finally:
        probe.close()
    assert heard.adverts[0].scanner == "esp-bad"


@pytest.mark.e2e
def test_after_the_broker_restarts_it_reconnects_and_subscribes_again(
        broker: Mosquitto) -> None:
    heard = Heard()
    src = source(broker.port, heard)

    async def main() -> None:
        async with Running(src):
            broker.restart()
            await until(lambda: not src.connected, "the loss noticed")
            await until(lambda: src.connected, "reconnected")
            probe = Probe("node", broker.port)
            assert probe.connect() == 0
            try:
                await subscribed(probe, heard)  # adverts flow again: subscribed anew
            finally:
                probe.close()

    asyncio.run(main())


@pytest.mark.e2e
def test_stop_ends_it_while_no_broker_answers(broker: Mosquitto) -> None:
    src = source(broker.port, Heard())
    broker.kill()

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(src.run(stop))
        await until(lambda: src._handoff.loop is not None, "run started")
        stop.set()
        await asyncio.wait_for(task, 15)

    asyncio.run(main())
    assert not src.connected and src._handoff.loop is None


@pytest.mark.e2e
def test_a_retained_advert_replayed_at_subscribe_is_no_sighting(
        broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    """A node that publishes retained leaves a sighting on the broker, replayed to the
    gateway at every (re)subscribe: a phone "seen" now that left long ago. Replays
    (retain flag set on delivery) are dropped and counted; the live messages pass."""
    heard = Heard()
    node = Probe("retaining-node", broker.port)
    assert node.connect() == 0
    ghost = "storegate/v1/s1/scanners/esp-ghost/adverts"
    try:
        node.publish(ghost, json.dumps(raw_advert("5A:00:00:00:00:66")).encode(),
                     retain=True)
        src = source(broker.port, heard, client_suffix="nodes-e2e-retained")

        async def main() -> None:
            async with Running(src):
                await subscribed(node, heard)  # the replay came before the warm-up
                assert src.rejected_total == 1
                await publish(node, "storegate/v1/s1/scanners/esp-live/adverts",
                              raw_advert("5A:00:00:00:00:01"))
                await until(lambda: len(heard.adverts) == 1, "the live advert")

        with caplog.at_level(logging.WARNING, logger=mqtt_nodes.__name__):
            asyncio.run(main())
    finally:
        node.publish(ghost, b"", retain=True)  # cleared
        node.close()
    assert [a.address for a in heard.adverts] == ["5A:00:00:00:00:01"]
    assert sum("retained message replayed" in r.getMessage() for r in caplog.records) == 1
