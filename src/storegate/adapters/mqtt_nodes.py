"""ESP32 scanner nodes over MQTT: ESPresense reports and raw adverts in, adverts out.

A paho client of its own (QoS 0, clean session: adverts are perishable; a lost one is
replaced by the next within a second), on paho's network thread. Parsing is pure
(:mod:`storegate.core.ble.nodes`); adverts cross to the event loop in batches, so a
busy store costs one loop wake-up per batch, not per advert. A bad message is counted
per node and logged once with its reason; it never stops the source.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from storegate.adapters.mqtt_client import MqttSettings, base_client
from storegate.adapters.plumbing import LoopHandoff
from storegate.core.ble.capture import Advert
from storegate.core.ble.nodes import NodeRejected, parse_espresense, parse_raw_adverts
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

MAX_BACKLOG = 50_000  # adverts waiting for the loop; beyond, the oldest are shed (counted)
MAX_NODES = 1000


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One scanner node, as the status file shows it."""

    last_seen: float  # wall time of its last message
    adverts: int
    rejected: int
    silent: bool  # nothing heard for ``silent_after_s``

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NodeStatus:
        return cls(last_seen=float(d.get("last_seen", 0)), adverts=int(d.get("adverts", 0)),
                   rejected=int(d.get("rejected", 0)), silent=bool(d.get("silent")))


@dataclass(frozen=True, slots=True)
class NodeSourceStatus:
    """The scanner nodes' source, as the status file shows it (names and order are its
    keys)."""

    kind: Literal["scanner-nodes"] = field(default="scanner-nodes", init=False)
    state: str  # "connected" or "connecting"
    last_error: str | None
    adverts_total: int
    rejected_total: int
    shed_total: int
    nodes: Mapping[str, NodeStatus]  # by node name

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NodeSourceStatus:
        """Parsed back from the status file; a missing key takes its empty value."""
        nodes = d.get("nodes")
        return cls(state=str(d.get("state", "")), last_error=d.get("last_error"),
                   adverts_total=int(d.get("adverts_total", 0)),
                   rejected_total=int(d.get("rejected_total", 0)),
                   shed_total=int(d.get("shed_total", 0)),
                   nodes={str(k): NodeStatus.from_json(v) for k, v in nodes.items()
                          if isinstance(v, Mapping)} if isinstance(nodes, Mapping) else {})


def _node_of(topic: str) -> str:
    """The node a topic names: .../scanners/<node>/adverts or espresense/devices/<id>/<room>."""
    parts = topic.split("/")
    if len(parts) >= 2 and parts[-1] == "adverts":
        return parts[-2] or "?"
    return parts[-1] or "?"


class ScannerNodesSource:
    def __init__(
        self,
        settings: MqttSettings,
        *,
        raw_topic: str | None,
        espresense_topic: str | None,
        on_advert: Callable[[Advert], None],
        max_skew_s: float = 5.0,
        silent_after_s: float = 60.0,
        wall_clock: Callable[[], float] = time.time,
        client_suffix: str = "nodes",
    ) -> None:
        self.name = "scanner-nodes"
        self._client_suffix = client_suffix
        self._settings = settings
        self._raw_topic = raw_topic
        self._espresense_topic = espresense_topic
        self._on_advert = on_advert
        self._skew = max_skew_s
        self._silent_after = silent_after_s
        self._wall = wall_clock
        self._warn = LogOnce(log)
        self._backlog_warn = LogOnce(log)  # its own budget: never crowded out
        self._lock = threading.Lock()  # guards nodes
        self._handoff: LoopHandoff[Advert] = LoopHandoff(self._drain, max_size=MAX_BACKLOG)
        self.connected = False  # subscribed: the broker granted the subscriptions
        self._sub_mid: int | None = None
        self.last_error: str | None = None
        self.adverts_total = 0
        self.rejected_total = 0
        self.nodes: dict[str, dict[str, Any]] = {}  # node -> {last_seen, adverts, rejected}

    @property
    def shed_total(self) -> int:
        return self._handoff.shed_total

    # --- paho thread ---------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused: {reason}"
            return
        self.last_error = None
        topics = [t for t in (self._raw_topic, self._espresense_topic) if t]
        if not topics:
            self.connected = True
            return
        # "connected" waits for the SUBACK: before it, a node's message matches no
        # subscription and is dropped by the broker
        _, self._sub_mid = client.subscribe([(t, 0) for t in topics])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reasons: list[ReasonCode], properties: Any) -> None:
        if mid != self._sub_mid:
            return
        topics = ", ".join(t for t in (self._raw_topic, self._espresense_topic) if t)
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self.last_error = f"subscription refused: {', '.join(refused)}"
            self._warn("sub", "scanner nodes: broker refused the subscription to %s (%s); "
                       "no adverts are read", topics, ", ".join(refused))
            return
        self.connected = True
        log.info("scanner nodes: listening on %s", topics)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Any) -> None:
        if self.connected:
            log.warning("scanner nodes: broker connection lost (%s); reconnecting", reason)
        self.connected = False
        self.last_error = str(reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._message(msg)
        except Exception as exc:  # never let one message end paho's network thread
            self.rejected_total += 1
            self._warn(f"bug:{type(exc).__name__}", "scanner nodes: a message could not be "
                       "handled (%s); it is counted as rejected", type(exc).__name__)

    def _message(self, msg: mqtt.MQTTMessage) -> None:
        now = self._wall()
        topic = msg.topic
        if msg.retain:
            # A node published it retained: the broker replays it at every subscribe
            # (after each reconnect), a sighting from the past as if heard now. A live
            # retained publish reaches a connected subscriber without the flag, so only
            # replays are refused (counted as the node's rejects, logged once per node).
            node = _node_of(topic)
            with self._lock:
                stats = self.nodes.get(node)
                if stats is not None:
                    stats["rejected"] += 1
            self.rejected_total += 1
            self._warn(f"{node}:retained", "scanner node %s: a retained message replayed by "
                       "the broker is not a sighting; dropped (turn retain off in the "
                       "node, and clear it: mosquitto_pub -r -n -t TOPIC)", node)
            return
        payload = bytes(msg.payload)
        if self._espresense_topic and mqtt.topic_matches_sub(self._espresense_topic, topic):
            one = parse_espresense(topic, payload, now)
            adverts, bad = ([], [one]) if isinstance(one, NodeRejected) else ([one], [])
        else:
            adverts, bad = parse_raw_adverts(topic, payload, now, self._skew)
        node = adverts[0].scanner if adverts else (bad[0].node if bad else _node_of(topic))
        with self._lock:
            stats = self.nodes.get(node)
            if stats is None:
                if len(self.nodes) >= MAX_NODES:
                    # a flood of invented node names is not kept, but its rejects count
                    self.rejected_total += len(bad)
                    return
                stats = self.nodes[node] = {"last_seen": now, "adverts": 0, "rejected": 0}
                log.info("scanner node %s: first message", node)
            stats["last_seen"] = now
            stats["adverts"] += len(adverts)
            stats["rejected"] += len(bad)
        for b in bad:
            self.rejected_total += 1
            kind = re.sub(r"^advert \d+: ", "", b.reason).split(":")[0][:40]
            self._warn(f"{b.node}:{kind}", "scanner node %s: message rejected: %s",
                       b.node, b.reason[:200], bytes=len(msg.payload))
        if adverts:
            self._hand_over(adverts)

    def _hand_over(self, adverts: list[Advert]) -> None:
        if self._handoff.loop is None:
            return
        over = self._handoff.put(adverts)
        if over > 0:
            self._backlog_warn("backlog", "scanner nodes: the pipeline is behind; %d "
                               "advert(s) shed", over)

    # --- event loop ----------------------------------------------------------------

    def _drain(self) -> None:
        batch, _ = self._handoff.take()
        self.adverts_total += len(batch)
        for a in batch:
            self._on_advert(a)

    async def run(self, stop: asyncio.Event) -> None:
        self._handoff.loop = asyncio.get_running_loop()
        s = self._settings
        client = base_client(s, f"{s.client_id}-{self._client_suffix}",
                             reconnect_on_failure=True,
                             clean_session=True if s.protocol != "5" else None)
        client.reconnect_delay_set(int(max(s.backoff.min_s, 1)), int(max(s.backoff.max_s, 1)))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        client.suppress_exceptions = True  # a callback bug is logged by paho, not fatal
        client.loop_start()
        try:
            await stop.wait()
        finally:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
            self._handoff.loop = None

    def status(self) -> NodeSourceStatus:
        now = self._wall()
        with self._lock:
            nodes = {node: NodeStatus(last_seen=st["last_seen"], adverts=st["adverts"],
                                      rejected=st["rejected"],
                                      silent=now - st["last_seen"] >= self._silent_after)
                     for node, st in sorted(self.nodes.items())}
        return NodeSourceStatus(
            state="connected" if self.connected else "connecting",
            last_error=self.last_error, adverts_total=self.adverts_total,
            rejected_total=self.rejected_total, shed_total=self.shed_total, nodes=nodes,
        )
