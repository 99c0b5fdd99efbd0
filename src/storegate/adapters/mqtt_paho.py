"""The MQTT publisher: drains the outbox to the broker, in order, with QoS 1.

paho-mqtt is confined to one thread that owns it completely and drives it through
paho's external-loop API (``loop_read`` / ``loop_write`` / ``loop_misc`` around our own
``select``), so there are no locks around paho and no second network thread. Other
threads talk to it only through :meth:`MqttPublisher.notify_committed` (a wake-up byte
on a pipe) and :meth:`MqttPublisher.stop`.

What is in flight is bounded by ``window`` (and by the broker's Receive Maximum):
paho reuses message ids after 65,535 unacknowledged publishes and then loses messages
silently, so the outbox, not paho, is the only backlog. An event leaves the outbox only
after its PUBACK. A fresh paho client is made for every connection; after a drop the
unacknowledged events are re-sent from the outbox, oldest first, with their original
ids, so consumers deduplicate on the CloudEvents ``id``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import select
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from storegate.adapters.outbox_sqlite import OutboxReader, StoredEvent
from storegate.core.backoff import Backoff

log = logging.getLogger(__name__)

FETCH_BATCH: Final = 1000
IDLE_TICK_S: Final = 1.0
STATUS_ACK_WAIT_S: Final = 2.0
DEFAULT_BACKOFF: Final = Backoff(0.5, 30.0)
CLOUDEVENTS_CONTENT_TYPE: Final = "application/cloudevents+json; charset=UTF-8"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str
    port: int
    client_id: str
    protocol: Literal["5", "3.1.1"] = "5"
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    window: int = 20
    connect_timeout_s: float = 10.0
    backoff: Backoff = DEFAULT_BACKOFF
    tls: TlsSettings | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class StatusMessages:
    """Retained status certificates: ``birth`` on connect, ``will`` for an unexpected
    loss, ``death`` on a clean shutdown (each made fresh, with a new event id)."""

    topic: str
    birth: Callable[[], bytes]
    will: Callable[[], bytes]
    death: Callable[[], bytes]


@dataclass(frozen=True, slots=True)
class PublisherStatus:
    connected: bool
    broker: str
    since: float | None  # wall time of the last connect or disconnect
    last_error: str | None
    in_flight: int
    published_total: int
    rejected_total: int
    reconnects_total: int
    connect_failures: int


def base_client(s: MqttSettings, client_id: str, *, reconnect_on_failure: bool,
                clean_session: bool | None) -> mqtt.Client:
    """A paho client with the connection settings (protocol, credentials, TLS) applied."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311,
        clean_session=clean_session,
        reconnect_on_failure=reconnect_on_failure,
    )
    client.connect_timeout = s.connect_timeout_s
    if s.username is not None:
        client.username_pw_set(s.username, s.password)
    if s.tls is not None:
        t = s.tls
        client.tls_set(
            ca_certs=str(t.ca_file) if t.ca_file else None,
            certfile=str(t.cert_file) if t.cert_file else None,
            keyfile=str(t.key_file) if t.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        if t.insecure:
            client.tls_insecure_set(True)
    return client


class _PackedOnce(Properties):
    """Publish properties serialised once.

    paho re-serialises properties on every publish by walking all ~40 property names
    (measured: ~15 % of publishing throughput); ours never change after ``freeze``."""

    def freeze(self) -> _PackedOnce:
        packed = super().pack()  # type: ignore[no-untyped-call]
        object.__setattr__(self, "_packed", packed)  # paho guards __setattr__
        return self

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = bytes(super().pack())  # type: ignore[no-untyped-call]
        return packed


class _Disconnected(Exception):  # noqa: N818 - internal control flow, never escapes
    pass


class MqttPublisher:
    def __init__(
        self,
        settings: MqttSettings,
        *,
        outbox_path: Path,
        ack: Callable[[list[int]], None],
        status: StatusMessages,
        subscriptions: tuple[str, ...] = (),
        on_command: Callable[[str, bytes], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._outbox_path = outbox_path
        self._ack = ack
        self._status_msgs = status
        self._subscriptions = subscriptions
        self._on_command = on_command
        self._resend_inbox: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        self._wall = wall_clock
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_pending = False
        self._committed = 0
        self._stop_at: float | None = None  # monotonic deadline for draining
        self._thread: threading.Thread | None = None
        self.drained = threading.Event()
        # state owned by the publisher thread
        self._client: mqtt.Client | None = None
        self._connack: ReasonCode | None = None
        self._receive_max = settings.window
        self._in_flight: dict[int, int] = {}  # mid -> sequence
        self._resend: list[int] = []
        self._buffer: deque[StoredEvent] = deque()
        self._cursor = 0
        self._acked: list[int] = []
        self._status_mid: int | None = None
        self._publish_props: Properties | None = None
        self._status_acked = False
        # observable state (written by the thread, read by anyone)
        self.connected = False
        self.since: float | None = None
        self.last_error: str | None = None
        self.published_total = 0
        self.rejected_total = 0
        self.reconnects_total = 0
        self.connect_failures = 0
        self._ever_connected = False
        self._rejected_logged: set[str] = set()

    # --- other threads ---------------------------------------------------------------

    def start(self, committed: int) -> None:
        self._committed = committed
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()

    def notify_committed(self, sequence: int) -> None:
        """The outbox committed up to ``sequence`` (called from the writer thread)."""
        self._committed = max(self._committed, sequence)
        self._wake()

    def resend(self, sequences: list[int]) -> None:
        """Publish these again (a replay request); thread-safe."""
        if sequences:
            self._resend_inbox.put(sequences)
            self._wake()

    def _wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(OSError):  # full pipe: already woken; closed: stopped
                os.write(self._wake_w, b"!")

    def stop(self, drain_timeout_s: float) -> bool:
        """Drain what the outbox holds for up to ``drain_timeout_s``, publish the death
        certificate, disconnect. Returns True if everything committed was acknowledged."""
        self._stop_at = time.monotonic() + drain_timeout_s
        self._wake()
        if self._thread is not None:
            self._thread.join(drain_timeout_s + STATUS_ACK_WAIT_S + 5.0)
            self._thread = None
        os.close(self._wake_r)
        os.close(self._wake_w)
        return self.drained.is_set()

    def snapshot(self) -> PublisherStatus:
        return PublisherStatus(
            connected=self.connected,
            broker=self.settings.url,
            since=self.since,
            last_error=self.last_error,
            in_flight=len(self._in_flight),
            published_total=self.published_total,
            rejected_total=self.rejected_total,
            reconnects_total=self.reconnects_total,
            connect_failures=self.connect_failures,
        )

    # --- publisher thread ----------------------------------------------------------

    def _stopping(self) -> bool:
        return self._stop_at is not None

    def _past_deadline(self) -> bool:
        return self._stop_at is not None and time.monotonic() >= self._stop_at

    def _is_drained(self) -> bool:
        return (
            not self._in_flight and not self._resend and not self._buffer
            and self._resend_inbox.empty() and self._cursor >= self._committed
        )

    def _done(self) -> bool:
        """Stop requested, and either nothing is left to publish or time is up."""
        return self._stopping() and (self._is_drained() or self._past_deadline())

    def _run(self) -> None:
        reader = OutboxReader(self._outbox_path)
        try:
            while not self._done():
                try:
                    self._connect_and_serve(reader)
                except Exception:  # a bug must not stop publishing for good
                    log.exception("MQTT publisher failed; restarting it (events stay in "
                                  "the outbox)")
                    self.last_error = "publisher failed and restarted (see log)"
                    self._on_lost()
                    self._sleep(1.0)
        finally:
            if self._is_drained():
                self.drained.set()
            self._drop_client()
            reader.close()

    def _connect_and_serve(self, reader: OutboxReader) -> None:
        """Connect with backoff, publish until stopped; on stop say goodbye.

        While stopping, keep trying until the drain deadline: a broker that comes back
        during shutdown still gets what is pending."""
        attempt = 0
        while not self._done():
            try:
                self._connect()
            except _Disconnected:
                self._note_connect_failure()
                self._sleep(self.settings.backoff.delay(attempt, random.random()))
                attempt += 1
                continue
            attempt = 0
            try:
                self._serve(reader)
            except _Disconnected:
                self._on_lost()
                continue
            self._goodbye()
            return

    def _sleep(self, seconds: float) -> None:
        """Wait, waking early for a stop request and never past the drain deadline."""
        end = time.monotonic() + seconds
        while True:
            if self._stop_at is not None:
                end = min(end, self._stop_at)
            left = end - time.monotonic()
            if left <= 0:
                return
            select.select([self._wake_r], [], [], left)
            self._drain_wake()

    def _drain_wake(self) -> None:
        self._wake_pending = False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    # connection -------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        v5 = s.protocol == "5"
        client = base_client(s, s.client_id, reconnect_on_failure=False,
                             clean_session=None if v5 else False)
        client.max_inflight_messages_set(max(s.window, 1))
        client.max_queued_messages_set(0)
        will_props = None
        if v5:
            will_props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            will_props.ContentType = CLOUDEVENTS_CONTENT_TYPE
        client.will_set(self._status_msgs.topic, self._status_msgs.will(), qos=1, retain=True,
                        properties=will_props)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._publish_props = None
        if v5:
            # CloudEvents MQTT binding, structured mode: say so in the MQTT 5 properties.
            props = _PackedOnce(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = CLOUDEVENTS_CONTENT_TYPE
            props.PayloadFormatIndicator = 1  # UTF-8
            self._publish_props = props.freeze()
        return client

    def _connect(self) -> None:
        s = self.settings
        self._drop_client()
        self._connack = None
        client = self._make_client()
        self._client = client
        try:
            if s.protocol == "5":
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = s.session_expiry_s
                client.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=False,
                               properties=props)
            else:  # 3.1.1: the persistent session is clean_session=False on the client
                client.connect(s.host, s.port, keepalive=s.keepalive_s)
        except (OSError, ValueError) as exc:
            self._error(f"cannot reach broker {s.url}: {_describe(exc)}")
            raise _Disconnected from exc
        deadline = time.monotonic() + s.connect_timeout_s
        while self._connack is None:
            left = deadline - time.monotonic()
            if left <= 0 or self._past_deadline():
                self._error(f"broker {s.url} did not answer CONNECT within "
                            f"{s.connect_timeout_s:g} s")
                raise _Disconnected
            try:
                self._io(client, min(left, IDLE_TICK_S))
            except _Disconnected:
                if self._connack is None or not self._connack.is_failure:
                    raise
                break  # paho drops the connection after a refusing CONNACK: say why
        if self._connack.is_failure:
            self._error(f"broker {s.url} refused the connection: {self._connack} "
                        f"(code {self._connack.value})")
            raise _Disconnected
        self._on_connected()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connack = reason
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties else None
        self._receive_max = min(self.settings.window, receive_max or self.settings.window)

    def _on_connected(self) -> None:
        assert self._client is not None
        if self._ever_connected:
            self.reconnects_total += 1
        level = logging.INFO
        if self.connect_failures or self.last_error:
            log.log(level, "connected to %s after %d failed attempt(s)", self.settings.url,
                    self.connect_failures)
        else:
            log.log(level, "connected to %s", self.settings.url)
        self._ever_connected = True
        self.connected = True
        self.since = self._wall()
        self.last_error = None
        self.connect_failures = 0
        self._status_acked = False
        info = self._client.publish(
            self._status_msgs.topic, self._status_msgs.birth(), qos=1, retain=True,
            properties=self._publish_props,
        )
        self._status_mid = info.mid
        for topic in self._subscriptions:
            self._client.subscribe(topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._on_command is None:
            return
        try:
            self._on_command(msg.topic, bytes(msg.payload))
        except Exception:  # a bad command must not take the publisher down
            log.exception("command handler failed on %s", msg.topic)

    def _note_connect_failure(self) -> None:
        self.connect_failures += 1

    def _on_lost(self) -> None:
        """Connection dropped: what was in flight is re-sent, in order, on reconnect."""
        self._resend = sorted({*self._resend, *self._in_flight.values()})
        self._in_flight.clear()
        self._buffer.clear()
        self._flush_acks()
        if self.connected:
            log.warning("lost connection to %s (%s); %d event(s) to re-send",
                        self.settings.url, self.last_error or "closed", len(self._resend))
        self.connected = False
        self.since = self._wall()
        self._drop_client()

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                sock = client.socket()
                if sock is not None:
                    sock.close()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason is not None and reason.is_failure and reason.value != 0:
            self.last_error = f"disconnected by {self.settings.url}: {reason}"

    def _error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s", message)
        else:
            log.debug("%s", message)
        self.last_error = message

    # serving ----------------------------------------------------------------------

    def _serve(self, reader: OutboxReader) -> None:
        client = self._client
        assert client is not None
        while True:
            if self._done():
                return
            self._fill_window(client, reader)
            self._io(client, IDLE_TICK_S)
            self._flush_acks()

    def _io(self, client: mqtt.Client, timeout: float) -> None:
        sock = client.socket()
        if sock is None:
            raise _Disconnected
        if self._stop_at is not None:
            timeout = min(timeout, max(self._stop_at - time.monotonic(), 0.0) + 0.01)
        want_w = [sock] if client.want_write() else []
        rlist: list[Any] = [sock, self._wake_r]
        readable, writable, _ = select.select(rlist, want_w, [], timeout)
        if self._wake_r in readable:
            self._drain_wake()
        if sock in readable:
            self._check(client.loop_read())
            pending = getattr(sock, "pending", None)  # TLS: decrypted bytes not yet read
            while pending is not None and pending() and client.socket() is not None:
                self._check(client.loop_read())
        if writable or client.want_write():
            self._check(client.loop_write())
        self._check(client.loop_misc())

    def _check(self, rc: MQTTErrorCode) -> None:
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            if self.last_error is None or self.connected:
                self.last_error = f"connection to {self.settings.url} lost: {mqtt.error_string(rc)}"
            raise _Disconnected

    def _fill_window(self, client: mqtt.Client, reader: OutboxReader) -> None:
        limit = self._receive_max - (0 if self._status_acked else 1)
        while len(self._in_flight) < limit:
            if not self._buffer and not self._next_batch(reader):
                return
            row = self._buffer.popleft()
            info = client.publish(row.topic, row.payload, qos=1,
                                  properties=self._publish_props)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._buffer.appendleft(row)
                self._check(info.rc)
                return
            self._in_flight[info.mid] = row.sequence
            self._cursor = max(self._cursor, row.sequence)

    def _next_batch(self, reader: OutboxReader) -> bool:
        while True:
            try:
                replay = self._resend_inbox.get_nowait()
            except queue.Empty:
                break
            # Beyond the cursor they are published in the normal course anyway.
            self._resend.extend(s for s in replay if s <= self._cursor)
        if self._resend:
            resend, self._resend = sorted(set(self._resend)), []
            self._buffer.extend(reader.fetch(resend))  # dropped by retention: gone
            if self._buffer:
                return True
        committed = self._committed
        if self._cursor >= committed:
            return False
        rows = reader.fetch_after(self._cursor, FETCH_BATCH)
        if not rows:  # everything up to `committed` was acknowledged or dropped
            self._cursor = committed
            return False
        self._buffer.extend(rows)
        return True

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if mid == self._status_mid:
            # Forget the id at once: paho reuses message ids after 65,535 publishes.
            self._status_mid = None
            self._status_acked = True
            return
        seq = self._in_flight.pop(mid, None)
        if seq is None:
            return
        if reason.is_failure:
            # The broker refused this event (e.g. not authorised on the topic): keep it
            # in the outbox, count it, and try again after the next reconnect.
            self.rejected_total += 1
            self._resend.append(seq)
            text = str(reason)
            if text not in self._rejected_logged:
                self._rejected_logged.add(text)
                log.error("broker %s rejected event seq %d: %s (kept in the outbox)",
                          self.settings.url, seq, text)
            return
        self.published_total += 1
        self._acked.append(seq)

    def _flush_acks(self) -> None:
        if self._acked:
            acked, self._acked = self._acked, []
            self._ack(acked)

    def _goodbye(self) -> None:
        """Publish the death certificate (retained) and disconnect cleanly."""
        client = self._client
        if client is None:
            return
        try:
            info = client.publish(self._status_msgs.topic, self._status_msgs.death(), qos=1,
                                  retain=True, properties=self._publish_props)
            self._status_mid = info.mid
            self._status_acked = False
            end = time.monotonic() + STATUS_ACK_WAIT_S
            while not self._status_acked and time.monotonic() < end:
                self._io(client, 0.1)
            client.disconnect()
            with contextlib.suppress(_Disconnected):
                self._io(client, 0.1)
        except _Disconnected:
            pass
        self._flush_acks()
        self.connected = False
        self.since = self._wall()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
