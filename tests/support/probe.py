"""An MQTT 5 client for testing a broker's rules: it reports what the broker answered
(CONNACK, PUBACK and SUBACK reason codes) and every message that reached it, so a test
asserts positive signals instead of waiting for something not to happen."""

from __future__ import annotations

import socket
import ssl
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TIMEOUT_S = 10.0

# MQTT 5 reason codes the tests name.
SUCCESS = 0x00
NO_MATCHING_SUBSCRIBERS = 0x10  # accepted; nobody was subscribed
NOT_AUTHORIZED = 0x87


def token() -> bytes:
    """A payload no other message in the run carries."""
    return uuid.uuid4().hex.encode()


class Probe:
    """One connection. ``connect`` returns the CONNACK reason code, or None when the
    connection closed without one (e.g. plain MQTT sent to a TLS port)."""

    def __init__(self, name: str, port: int, *, username: str | None = None,
                 password: str | None = None, ca: Path | None = None,
                 will: tuple[str, bytes] | None = None,
                 client_id: str | None = None) -> None:
        self.name = name
        self.port = port
        self._cond = threading.Condition()
        # state written by paho's network thread, read by the test under _cond
        self.connack: int | None = None
        self.closed = False
        self._pubacks: dict[int, int] = {}
        self._subacks: dict[int, list[int]] = {}
        self._payloads: set[bytes] = set()
        self.client_id = client_id or f"probe-{name}-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=self.client_id)
        # A refused probe must not hammer the broker with retries while the test runs.
        self.client.reconnect_delay_set(60, 60)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # --- paho thread ---------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any) -> None:
        with self._cond:
            self.connack = int(reason.value)
            self._cond.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       props: Any) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    props: Any) -> None:
        with self._cond:
            self._pubacks[mid] = int(reason.value)
            self._cond.notify_all()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      props: Any) -> None:
        with self._cond:
            self._subacks[mid] = [int(r.value) for r in reasons]
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self._payloads.add(bytes(msg.payload))
            self._cond.notify_all()

    # --- test thread -----------------------------------------------------------------

    def _wait(self, done: Any, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(done, TIMEOUT_S):
                raise AssertionError(f"{self.name}: timed out after {TIMEOUT_S:g} s "
                                     f"waiting for {what}")

    def connect(self) -> int | None:
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return None  # refused before MQTT: TCP or the TLS handshake
        self.client.loop_start()
        self._wait(lambda: self.connack is not None or self.closed, "CONNACK")
        return self.connack

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """QoS 1; the PUBACK's reason code (MQTT 5 says why a publish was refused)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: publish not sent: {info.rc}"
        self._wait(lambda: info.mid in self._pubacks, f"PUBACK for {topic}")
        with self._cond:
            return self._pubacks[info.mid]

    def subscribe(self, topic_filter: str) -> list[int]:
        result, mid = self.client.subscribe(topic_filter, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"{self.name}: subscribe not sent"
        assert mid is not None
        self._wait(lambda: mid in self._subacks, f"SUBACK for {topic_filter}")
        with self._cond:
            return self._subacks[mid]

    def saw(self, payload: bytes) -> bool:
        with self._cond:
            return payload in self._payloads

    def wait_for_payload(self, payload: bytes, what: str) -> None:
        self._wait(lambda: payload in self._payloads, what)

    def drop(self) -> None:
        """End the connection the way a crash or a pulled cable does: no DISCONNECT, so
        the broker publishes the Will."""
        sock = self.client.socket()
        assert isinstance(sock, socket.socket), f"{self.name}: not connected"
        sock.shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()

    def close(self) -> None:
        # DISCONNECT first: the network thread then ends at once instead of at its next
        # one-second select timeout.
        self.client.disconnect()
        self.client.loop_stop()
