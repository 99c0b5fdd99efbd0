"""Central's MQTT edge on the single-broker path: a shared subscription in, commands out.

Events arrive on the MQTT 5 shared subscription ``$share/<group>/storegate/v1/+/+/
events/#``: the broker gives each message to one member of the group, so several
central instances split the stream. Status certificates are retained, and retained
messages are not sent to shared subscriptions (MQTT 5, 4.8.2), so every instance also
subscribes to ``storegate/v1/+/+/status`` plainly (storing one is idempotent).

Acknowledgement is manual (paho's ``manual_ack``): a message is PUBACKed only after the
``handle`` callback stored it and returned, so a central killed mid-batch gets the
message again (the persistent session keeps it) and the id makes that harmless.

Threads: paho's network thread only appends to ``_inbox`` (under ``_cond``); one worker
thread takes batches, calls ``handle`` (one transaction per batch) and acks. ``publish``
may be called from any thread (paho's publish is thread-safe).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from storegate.adapters.mqtt_client import MqttSettings, base_client
from storegate.adapters.plumbing import describe_error
from storegate.core.topics import ROOT
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

EVENTS_FILTER: Final = f"{ROOT}/+/+/events/#"
STATUS_FILTER: Final = f"{ROOT}/+/+/status"
MAX_BATCH: Final = 500
MAX_INBOX_BYTES: Final = 64 << 20  # received, not yet stored: the network thread waits
RECEIVE_MAXIMUM: Final = 2000  # unacked deliveries the broker may have out to us


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    mid: int
    qos: int


Handler = Callable[[Sequence[tuple[str, bytes]], float], object]


class MqttSource:
    """Subscribe, hand batches to ``handle(messages, received_at)``, ack afterwards."""

    def __init__(self, settings: MqttSettings, handle: Handler, *, group: str = "central",
                 shared: bool = True) -> None:
        self._settings = settings
        self._handle = handle
        self.events_filter = f"$share/{group}/{EVENTS_FILTER}" if shared else EVENTS_FILTER
        # state shared between paho's thread and the worker, guarded by _cond
        self._cond = threading.Condition()
        self._inbox: list[Message] = []
        self._inbox_bytes = 0  # payload bytes in _inbox (bounded by MAX_INBOX_BYTES)
        self._log_once = LogOnce(log)
        self._stopping = False
        # observable state: set once the broker granted the subscriptions (SUBACK), so
        # "connected" means messages published from now on reach this source
        self.connected = threading.Event()
        self._sub_mid: int | None = None
        self.received = 0
        self.handled = 0
        self.failures = 0
        self.last_error: str | None = None
        self._client = base_client(settings, settings.client_id, reconnect_on_failure=True,
                                   clean_session=None)
        self._client.manual_ack_set(True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.reconnect_delay_set(max(1, round(settings.backoff.min_s)),
                                         max(1, round(settings.backoff.max_s)))
        self._worker = threading.Thread(target=self._work, name="central-ingest",
                                        daemon=True)

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._settings.session_expiry_s
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self._worker.start()
        self._client.connect_async(self._settings.host, self._settings.port,
                                   keepalive=self._settings.keepalive_s, clean_start=False,
                                   properties=props)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, timeout_s: float = 10.0) -> bool:
        """QoS 1; True once the broker acknowledged it within ``timeout_s``."""
        info = self._client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            self.last_error = describe_error(exc)
            return False
        return info.is_published()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._worker.join(30)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        if rc.is_failure:
            self.last_error = f"connect refused: {rc}"
            log.warning("central: broker %s refused the connection: %s",
                        self._settings.url, rc)
            return
        _, self._sub_mid = client.subscribe([(self.events_filter, 1), (STATUS_FILTER, 1)])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reasons: list[Any], props: Any) -> None:
        if mid != self._sub_mid:
            return
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self.last_error = f"subscription refused: {', '.join(refused)}"
            self._log_once("sub", "central: broker %s refused the subscription to %s (%s); "
                           "no events are read", self._settings.url, self.events_filter,
                           ", ".join(refused))
            return
        self.connected.set()
        log.info("central: subscribed to %s on %s", self.events_filter, self._settings.url)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any) -> None:
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            # QoS 0 is not bounded by Receive Maximum: past MAX_INBOX_BYTES the network
            # thread waits for the worker (the socket is not read meanwhile: TCP pushes
            # back on the broker) instead of holding an unbounded backlog in memory
            while (self._inbox_bytes > MAX_INBOX_BYTES and not self._stopping):
                self._cond.wait(1.0)
            self._inbox.append(Message(msg.topic, bytes(msg.payload), msg.mid, msg.qos))
            self._inbox_bytes += len(msg.payload)
            self.received += 1
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._inbox and not self._stopping:
                    self._cond.wait()
                if not self._inbox and self._stopping:
                    return
                batch, self._inbox = self._inbox[:MAX_BATCH], self._inbox[MAX_BATCH:]
            try:
                self._handle([(m.topic, m.payload) for m in batch], time.time())
            except Exception as exc:
                self.failures += 1
                self.last_error = describe_error(exc)
                self._log_once(f"store:{type(exc).__name__}", "central: storing %d "
                               "messages failed (%s); not acknowledged, retrying every 1 s",
                               len(batch), self.last_error)
                with self._cond:
                    self._inbox[:0] = batch
                    self._cond.wait(1.0)
                continue
            with self._cond:
                self._inbox_bytes -= sum(len(m.payload) for m in batch)
                self._cond.notify_all()
            for m in batch:
                if m.qos > 0:
                    self._client.ack(m.mid, m.qos)
            self.handled += len(batch)
