"""What the store publishes, counted as a consumer sees it: the demo's own MQTT
subscriber on the gateway's topics (events deduplicated by CloudEvents id: delivery is
at least once) and its retained status."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from storegate.core.topics import Topics

log = logging.getLogger(__name__)

VISIT = "storegate.visit.entered.v1"
OCCUPANCY = "storegate.occupancy.measured.v1"
PURCHASE = "storegate.purchase.completed.v1"
ISSUED = "storegate.offer.issued.v1"
SUPPRESSED = "storegate.offer.suppressed.v1"
REDEEMED = "storegate.offer.redeemed.v1"
REJECTED = "storegate.offer.rejected.v1"
CUSTOMERS_APPLIED = "storegate.gateway.customers_applied.v1"


@dataclass(frozen=True, slots=True)
class StatusSeen:
    state: str
    reason: str
    session: int
    retained: bool


@dataclass(slots=True)
class TallyCounts:
    """A copy of the counts at one moment (for the view and the JSON line)."""

    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    store_visits: int = 0
    purchases_by_lane: Counter[str] = field(default_factory=Counter)
    occupancy: dict[str, tuple[int, int]] = field(default_factory=dict)  # zone -> (dev, cust)
    pickups_collected: int = 0
    undecodable: int = 0
    status: StatusSeen | None = None
    connected: bool = False


class Tally:
    """Owned by paho's network thread (``_on_*``); ``counts()`` copies under the lock."""

    def __init__(self, port: int, topics: Topics, host: str = "127.0.0.1") -> None:
        self._topics = topics
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._c = TallyCounts()
        self._issued: list[tuple[str, str]] = []  # (customer, offer_id), in order
        self._entered: list[str] = []  # customers whose store visit began, in order
        # central's customers commands the gateway applied (nothing stale), and those
        # the order desk's "collected" made central send: a pickup counts when both
        self._applied: set[str] = set()
        self._pickup_commands: set[str] = set()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=f"storegate-demo-tally-{topics.store}",
                                   protocol=mqtt.MQTTv5)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._sub_mid: int | None = None
        self._client.reconnect_delay_set(1, 2)
        self._host, self._port = host, port

    def start(self) -> None:
        self._client.connect(self._host, self._port, keepalive=15)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes) -> None:
        """The demo's one MQTT connection also carries the order desk's commands."""
        self._client.publish(topic, payload, qos=1)

    def wait_connected(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._c.connected:
                    return True
            time.sleep(0.05)
        return False

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        _, self._sub_mid = client.subscribe([(f"{self._topics.prefix}/events/#", 1),
                                             (self._topics.status, 1)])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      props: Any) -> None:
        # connected once subscribed: an event published before the SUBACK would match
        # no subscription, and the counts would not add up (events_seen < events_acked)
        if mid == self._sub_mid and not any(r.is_failure for r in reasons):
            with self._lock:
                self._c.connected = True

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any) -> None:
        with self._lock:
            self._c.connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            event = json.loads(msg.payload)
            kind, event_id, data = event["type"], event["id"], event.get("data") or {}
        except (ValueError, KeyError, TypeError):
            with self._lock:
                self._c.undecodable += 1
            log.warning("undecodable message on %s (%d bytes)", msg.topic, len(msg.payload))
            return
        with self._lock:
            if msg.topic == self._topics.status:
                self._c.status = StatusSeen(str(data.get("state")), str(data.get("reason")),
                                            int(data.get("session") or 0), bool(msg.retain))
                return
            if event_id in self._seen:
                return  # at least once: a re-send of one already counted
            self._seen.add(event_id)
            self._count(kind, data)

    def _count(self, kind: str, data: dict[str, Any]) -> None:
        c = self._c
        c.events += 1
        c.by_type[kind] += 1
        if kind == VISIT and data.get("zone") is None:
            c.store_visits += 1
            if data.get("customer"):
                self._entered.append(str(data["customer"]))
        elif kind == OCCUPANCY and data.get("zone") is not None:
            c.occupancy[str(data["zone"])] = (int(data.get("devices", 0)),
                                              int(data.get("customers", 0)))
        elif kind == PURCHASE:
            c.purchases_by_lane[str(data.get("lane"))] += 1
        elif kind == ISSUED and data.get("customer"):
            self._issued.append((str(data["customer"]), str(data.get("offer_id"))))
        elif kind == CUSTOMERS_APPLIED and data.get("applied") is True \
                and not data.get("stale") and isinstance(data.get("command_id"), str):
            self._applied.add(data["command_id"])
            if data["command_id"] in self._pickup_commands:
                c.pickups_collected += 1

    def pickup_sent(self, command_id: str) -> None:
        """Central sent the store ``command_id`` because an order was collected: it
        counts once the gateway answers that it applied it (before or after this)."""
        with self._lock:
            if command_id in self._pickup_commands:
                return
            self._pickup_commands.add(command_id)
            if command_id in self._applied:
                self._c.pickups_collected += 1

    def counts(self) -> TallyCounts:
        with self._lock:
            c = self._c
            return TallyCounts(events=c.events, by_type=Counter(c.by_type),
                               store_visits=c.store_visits,
                               purchases_by_lane=Counter(c.purchases_by_lane),
                               occupancy=dict(c.occupancy),
                               pickups_collected=c.pickups_collected,
                               undecodable=c.undecodable, status=c.status,
                               connected=c.connected)

    def issued_since(self, n: int) -> list[tuple[str, str]]:
        """Offers issued after the first ``n`` (customer, offer id), in order."""
        with self._lock:
            return self._issued[n:]

    def entered_since(self, n: int) -> list[str]:
        """Customers whose store visit began after the first ``n``."""
        with self._lock:
            return self._entered[n:]
