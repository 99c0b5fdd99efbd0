"""The shipped bridge lines do what they say: a real store broker bridged to a real
"central" broker, with the bridge topic lines exactly as deploy/ ships them. The whole
shipped config (logins, ACLs, TLS, Debian's main config) is tests/test_broker_acl.py."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.mosquitto import Mosquitto
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "deploy" / "mosquitto" / "store-broker.conf"


def shipped_bridge_lines() -> list[str]:
    """The bridge settings that decide what crosses and how (not address or TLS)."""
    lines = [ln.strip() for ln in SHIPPED.read_text().splitlines()]
    keep = ("topic ", "bridge_protocol_version ", "cleansession ", "queue_qos0_messages ")
    return [ln for ln in lines if ln.startswith(keep)]


def test_bridge_forwards_events_and_status_but_never_raw_adverts(tmp_path: Path) -> None:
    central = Mosquitto(tmp_path / "central")
    central.start()
    shipped = "\n".join(shipped_bridge_lines())
    assert "cleansession false" in shipped and "topic " in shipped
    store = Mosquitto(tmp_path / "store", extra=(
        f"connection central\naddress 127.0.0.1:{central.port}\nrestart_timeout 1 2\n"
        f"{shipped}\n"))
    store.start()
    sub = Subscriber(central.port, topic="#", client_id="central-sub")
    node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="esp32")
    node.connect("127.0.0.1", store.port)
    node.loop_start()
    try:
        wait_for(lambda: "$SYS" not in store.log.read_text() and "Connecting bridge"
                 in store.log.read_text(), 10, "bridge connecting")
        leak = {
            "storegate/v1/store-0042/scanners/esp-1/adverts": b'{"address":"5A:..."}',
            "espresense/devices/phone/entrance": b'{"mac":"5a0000000001"}',
        }
        ok = {
            "storegate/v1/store-0042/gw-1/events/visit": b'{"id":"e1"}',
            "storegate/v1/store-0042/gw-1/status": b'{"data":{"state":"online"}}',
        }
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the bridge is up and carrying
            for topic, body in {**leak, **ok}.items():
                node.publish(topic, body, qos=1).wait_for_publish(5)
            with sub.lock:
                if all(sub.by_topic.get(t) for t in ok):
                    break
            time.sleep(0.2)
        # The bridge is up. Device data once more, then a marker event: the marker
        # arriving means the adverts before it had their chance to cross.
        for topic, body in leak.items():
            node.publish(topic, body, qos=1).wait_for_publish(5)
        marker = "storegate/v1/store-0042/gw-1/events/marker"
        node.publish(marker, b'{"id":"marker"}', qos=1).wait_for_publish(5)
        wait_for(lambda: sub.by_topic.get(marker), 10, "the marker event at central")
        with sub.lock:
            seen = dict(sub.by_topic)
        assert all(seen.get(t) for t in ok), seen
        assert not any(t in seen for t in leak), seen  # device data stays in the store
        # down: commands for this store and for every store, not for other stores
        local = Subscriber(store.port, topic="storegate/v1/+/commands/#", client_id="gw")
        central_pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="central-pub")
        central_pub.connect("127.0.0.1", central.port)
        central_pub.loop_start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                for topic in ("storegate/v1/store-0042/commands/identities",
                              "storegate/v1/store-0099/commands/identities"):
                    central_pub.publish(topic, b"{}", qos=1).wait_for_publish(5)
                with local.lock:
                    if local.by_topic.get("storegate/v1/store-0042/commands/identities"):
                        break
                time.sleep(0.2)
            # Another store's command, then a marker for this store: once the marker is
            # here, the other store's command would be too if the bridge let it down.
            central_pub.publish("storegate/v1/store-0099/commands/identities", b"{}",
                                qos=1).wait_for_publish(5)
            marker = "storegate/v1/store-0042/commands/marker"
            central_pub.publish(marker, b"{}", qos=1).wait_for_publish(5)
            wait_for(lambda: local.by_topic.get(marker), 10, "the marker command locally")
            with local.lock:
                down = dict(local.by_topic)
            assert down.get("storegate/v1/store-0042/commands/identities")
            assert "storegate/v1/store-0099/commands/identities" not in down
        finally:
            central_pub.loop_stop()
            central_pub.disconnect()
            local.close()
    finally:
        node.loop_stop()
        node.disconnect()
        sub.close()
        store.kill()
        central.kill()
