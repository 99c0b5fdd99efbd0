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


class Subscriber:
    def __init__(self, port: int, topic: str = "storegate/#", client_id: str = "test-sub"):
        self.topic = topic
        self.lock = threading.Lock()
        self.events: dict[str, list[bytes]] = defaultdict(list)  # id -> payloads
        self.retained: dict[str, bytes] = {}
        self.status: list[dict[str, Any]] = []
        self.by_topic: dict[str, int] = defaultdict(int)
        self.connects = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.01, 0.05)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, keepalive=10, clean_start=False,
                            properties=props)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        self.connects += 1
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.by_topic[msg.topic] += 1
            if msg.topic.endswith("/status"):
                self.status.append(json.loads(msg.payload))
                if msg.retain:
                    self.retained[msg.topic] = msg.payload
                return
            try:
                event_id = json.loads(msg.payload)["id"]
            except (ValueError, KeyError):
                event_id = "<unparseable>"
            self.events[event_id].append(msg.payload)

    def ids(self) -> set[str]:
        with self.lock:
            return set(self.events)

    def count(self) -> int:
        with self.lock:
            return len(self.events)

    def duplicates(self) -> int:
        with self.lock:
            return sum(len(v) - 1 for v in self.events.values())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
