"""An independent subscriber: its own paho client with a persistent session, recording
every event that reaches it, keyed by CloudEvents id."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from storegate.core.commands import ranges
from tests.support.central import CENTRAL


class Subscriber:
    def __init__(self, port: int, topic: str = "storegate/#", client_id: str = "test-sub"):
        self.topic = topic
        self.lock = threading.Lock()
        self.events: dict[str, list[bytes]] = defaultdict(list)  # id -> payloads
        self.retained: dict[str, bytes] = {}
        self.status: list[dict[str, Any]] = []
        self.by_topic: dict[str, int] = defaultdict(int)
        self.connects = 0
        self.content_types: dict[str, int] = defaultdict(int)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(0.01, 0.05)
        # set by the SUBACK: from then on every matching publish reaches this session
        self.subscribed = threading.Event()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, keepalive=10, clean_start=False,
                            properties=props)
        self.client.loop_start()
        # A test publishes (or starts a gateway) right after: before the SUBACK its
        # messages would match no subscription and be dropped.
        if not self.subscribed.wait(30):
            self.close()
            raise AssertionError(f"subscriber: no SUBACK for {topic} within 30 s")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        self.connects += 1
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      props: Any) -> None:
        if not any(r.is_failure for r in reasons):
            self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.by_topic[msg.topic] += 1
            self.content_types[str(getattr(msg.properties, "ContentType", None))] += 1
            if msg.topic.endswith("/status"):
                self.status.append(json.loads(msg.payload))
                if msg.retain:
                    self.retained[msg.topic] = msg.payload
                return
            parts = msg.topic.split("/")  # exactly storegate/v1/<store>/<gw>/events/<kind>
            if len(parts) != 6 or parts[4] != "events" or parts[3] == "commands":
                return  # e.g. commands we sent ourselves
            try:
                event_id = json.loads(msg.payload)["id"]
            except (ValueError, KeyError):
                event_id = "<unparseable>"
            self.events[event_id].append(msg.payload)

    def decoded(self) -> list[dict[str, Any]]:
        """Every distinct event received, as JSON objects."""
        with self.lock:
            payloads = [v[0] for v in self.events.values()]
        return [json.loads(b) for b in payloads]

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.decoded() if e["type"] == type_]

    def ids(self) -> set[str]:
        with self.lock:
            return set(self.events)

    def count(self) -> int:
        with self.lock:
            return len(self.events)

    def duplicates(self) -> int:
        with self.lock:
            return sum(len(v) - 1 for v in self.events.values())

    def retained_state(self) -> str | None:
        """The state in the latest status message (birth 'online' / death 'offline')."""
        with self.lock:
            return self.status[-1]["data"]["state"] if self.status else None

    def sequences(self) -> set[int]:
        with self.lock:
            payloads = [v[0] for v in self.events.values()]
        return {int(json.loads(b)["sequence"]) for b in payloads}

    def gaps(self, last: int) -> list[int]:
        """Sequence numbers up to ``last`` never received: what central would replay."""
        have = self.sequences()
        return [s for s in range(1, last + 1) if s not in have]

    def request_replay(self, store: str, gateway: str, missing: list[int]) -> None:
        """Ask for every gap, one command per contiguous range, like central does."""
        for first, last in ranges(missing):
            body = {"gateway": gateway, "from_sequence": first, "to_sequence": last,
                    "request_id": f"gap-{first}"}
            self.client.publish(f"storegate/v1/{store}/commands/replay",
                                CENTRAL.sign("replay", body, store=store), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
