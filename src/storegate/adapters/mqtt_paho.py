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

Every event taken out of the outbox and not yet acknowledged is in exactly one place:
in flight, in the send buffer, in the re-send set, held after a refusal, or above the
cursor (where the outbox itself remembers it). A dropped link moves what only memory
remembers (in flight, and re-sends waiting in the buffer) back into the re-send set, so
the gateway recovers without a restart.

An event the broker refuses (an MQTT 5 PUBACK reason code of 0x80 or more, e.g. 0x87
not authorised) stays in the outbox and is held back with a capped exponential backoff
per event while the others flow on. MQTT 3.1.1 has no such reason codes (mosquitto
acknowledges a publish its ACL denied), so under 3.1.1 the publisher checks once per
connection that its own retained birth certificate comes back from the broker, and says
permanently in its status that refusals cannot be seen.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import queue
import random
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from storegate.adapters.mqtt_client import MqttSettings, base_client
from storegate.adapters.outbox import OutboxReader, StoredEvent
from storegate.adapters.plumbing import describe_error
from storegate.core.histogram import Histogram, HistogramSnapshot

log = logging.getLogger(__name__)

FETCH_BATCH: Final = 1000
IDLE_TICK_S: Final = 1.0
STATUS_ACK_WAIT_S: Final = 2.0
# stop() waits this long beyond the drain deadline, a connection attempt and the death
# certificate before it reports the publisher thread as hung.
STOP_GRACE_S: Final = 5.0
# MQTT 3.1.1: how long after the SUBACK the retained birth may take to come back.
ECHO_WAIT_S: Final = 5.0
# A broker that accepts the connection and drops it before any event is acknowledged
# (mosquitto does after a publish its ACL denied) would otherwise be reconnected to in a
# loop: such a connection counts as a failed attempt for the reconnect backoff.
STABLE_CONNECTION_S: Final = 10.0
ECHO_INTERRUPTIONS: Final = 3  # connections lost in a row right after the birth's PUBACK
PROTOCOL_311_WARNING: Final = (
    "protocol 3.1.1: the broker cannot report refused publishes; events denied by its "
    "ACL are lost (use mqtt.protocol = \"5\")"
)
CLOUDEVENTS_CONTENT_TYPE: Final = "application/cloudevents+json; charset=UTF-8"


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
    """The publisher's connection to the broker: the status file's ``broker`` object
    (field names and order are its keys)."""

    url: str
    connected: bool
    since: float | None  # wall time of the last connect or disconnect
    last_error: str | None
    in_flight: int
    published_total: int
    rejected_total: int  # refusals (PUBACK reason code >= 0x80), every attempt counted
    refused_held: int  # events whose last attempt was refused, waiting in the outbox
    last_refusal: str | None
    warnings: tuple[str, ...]  # conditions an operator must see (e.g. MQTT 3.1.1)
    birth_check: str | None  # MQTT 3.1.1: did our retained birth come back from the broker
    reconnects_total: int
    connect_failures: int
    # publish -> PUBACK, seconds (None: not measured); last, so older files parse
    publish_latency: HistogramSnapshot | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PublisherStatus:
        """Parsed back from the status file; a missing key takes its empty value."""
        return cls(
            url=str(d.get("url")), connected=bool(d.get("connected")), since=d.get("since"),
            last_error=d.get("last_error"), in_flight=int(d.get("in_flight", 0)),
            published_total=int(d.get("published_total", 0)),
            rejected_total=int(d.get("rejected_total", 0)),
            refused_held=int(d.get("refused_held", 0)), last_refusal=d.get("last_refusal"),
            warnings=tuple(d.get("warnings") or ()), birth_check=d.get("birth_check"),
            reconnects_total=int(d.get("reconnects_total", 0)),
            connect_failures=int(d.get("connect_failures", 0)),
            publish_latency=HistogramSnapshot.from_json(lat)
            if isinstance(lat := d.get("publish_latency"), Mapping) else None,
        )


@dataclass(slots=True)
class _Refusal:
    """An event the broker refused, and when to offer it again (None: offered now)."""

    attempts: int
    retry_at: float | None
    reason: str


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


def _puback_reasons() -> dict[int, ReasonCode]:
    reasons: dict[int, ReasonCode] = {}
    for code in ReasonCode.names:
        with contextlib.suppress(KeyError, ValueError):  # a code no PUBACK carries
            reasons[code] = ReasonCode(PacketTypes.PUBACK, identifier=code)
    return reasons


# Made once and shared (nothing mutates them): see _decode_pubacks_fast.
_PUBACK_REASONS: Final = _puback_reasons()
_PUBACK_SUCCESS: Final = _PUBACK_REASONS[0]
_NO_PROPERTIES: Final = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]


def _decode_pubacks_fast(client: mqtt.Client) -> None:
    """Let ``client`` take the short PUBACKs, nearly all of them, without paho's decoder.

    paho decodes every PUBACK into a new ReasonCode (found by a linear search of all
    reason names) and a new Properties: measured 40 % of the publisher thread's CPU
    (py-spy --gil, bench_outbox --events 50000), CPU it shares, under the GIL, with
    the accepting side (skipping it: durable FULL from 0.70 to 1.12 of raw paho in
    one bench run, the publisher's Python time halved). A PUBACK of 2 bytes (message
    id: success) or, under MQTT 5, of 3 (message id and reason code, no properties:
    mosquitto's form) becomes here the values paho's decoder would make, and goes
    into paho's own bookkeeping as in its handler (which only adds a debug log line
    storegate never enables). Anything else (properties, an unknown code, a bad
    length, PUBCOMP) goes to paho's handler, which also raises for a malformed
    packet. paho 2.x internals: tests/test_puback_fast.py compares both handlers
    packet by packet."""
    slow = client._handle_pubackcomp
    longest = 3 if client._protocol == mqtt.MQTTv5 else 2

    def handle(cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = client._in_packet["packet"]
        n = len(packet)
        if cmd != "PUBACK" or n < 2 or n > longest:
            return slow(cmd)
        reason = _PUBACK_REASONS.get(packet[2]) if n == 3 else _PUBACK_SUCCESS
        if reason is None:
            return slow(cmd)
        mid = (packet[0] << 8) | packet[1]
        with client._out_message_mutex:
            if mid in client._out_messages:
                return client._do_on_publish(mid, reason, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    client._handle_pubackcomp = handle  # type: ignore[method-assign]


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
        measure_latency: bool = True,
    ) -> None:
        self.settings = settings
        self._outbox_path = outbox_path
        self._ack = ack
        self._status_msgs = status
        self._subscriptions = subscriptions
        self._on_command = on_command
        self._resend_inbox: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        self._wall = wall_clock
        # The wake-up pipe is the only wake-up state: no "already woken" flag beside it
        # (one cleared before the drain read swallowed a wake-up landing in between, and
        # every later one was skipped). Closed once, by the thread that used it, on its
        # way out; the lock keeps a concurrent _wake from writing to a closed descriptor,
        # or to another file that reused its number.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()
        self._wake_open = True
        self._committed = 0
        self._stop_at: float | None = None  # monotonic deadline for draining
        self._thread: threading.Thread | None = None
        self.drained = threading.Event()
        # state owned by the publisher thread
        self._client: mqtt.Client | None = None
        self._connack: ReasonCode | None = None
        self._receive_max = settings.window
        self._in_flight: dict[int, int] = {}  # mid -> sequence
        # mid -> monotonic time of its publish, for the latency histogram: one clock read
        # per fill of the window and one per PUBACK (bench_publish_latency.py: the cost)
        self._sent_at: dict[int, float] = {}
        self._resend: set[int] = set()  # at or below the cursor: to fetch and send again
        self._buffer: deque[StoredEvent] = deque()  # fetched, to publish next, in order
        self._refused: dict[int, _Refusal] = {}  # sequence -> last refusal
        self._next_retry: float | None = None  # earliest retry_at among the held
        self._cursor = 0  # every sequence above it not in flight is fetched from the outbox
        self._acked: list[int] = []
        self._status_mid: int | None = None
        self._publish_props: Properties | None = None
        self._status_acked = False
        # MQTT 3.1.1 only: the birth certificate we wait to see come back from the broker
        self._echo_payload: bytes | None = None
        self._echo_mid: int | None = None
        self._echo_deadline: float | None = None
        self._echo_interrupted = 0  # connections lost in a row before the check ended
        self._logged_once: set[str] = set()
        # observable state (written by the thread, read by anyone)
        self.connected = False
        self.since: float | None = None
        self.last_error: str | None = None
        self.published_total = 0
        self.rejected_total = 0
        self.last_refusal: str | None = None
        self.reconnects_total = 0
        self.connect_failures = 0
        # publish -> PUBACK of events (not the status certificates); written by the
        # thread, snapshot() from anywhere without a lock (core/histogram.py)
        self.publish_latency: Histogram | None = Histogram() if measure_latency else None
        self._ever_connected = False
        self._rejected_logged: set[str] = set()
        # Replaced whole (never mutated) so readers on other threads see a consistent tuple.
        self._permanent: tuple[str, ...] = (
            (PROTOCOL_311_WARNING,) if settings.protocol == "3.1.1" else ())
        self._broker_warning: str | None = None
        self.warnings: tuple[str, ...] = self._permanent
        # MQTT 3.1.1: did the broker return our retained birth? None under MQTT 5 (not
        # needed: refusals have reason codes); "pending", "confirmed", "missing",
        # "unreadable" (the SUBACK refused our own status topic), "interrupted".
        self.birth_check: str | None = "pending" if settings.protocol == "3.1.1" else None

    # --- other threads ---------------------------------------------------------------

    def start(self, committed: int) -> None:
        self._committed = committed
        if self.settings.protocol == "3.1.1":
            log.warning("%s", PROTOCOL_311_WARNING)
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
        """One byte per wake-up, always: a syscall per commit is nothing beside the
        commit, and the thread's one drain reads them all."""
        with self._wake_lock:
            if not self._wake_open:
                return  # the thread has ended: nobody to wake
            with contextlib.suppress(BlockingIOError):  # full pipe: a wake-up is pending
                os.write(self._wake_w, b"!")

    def _close_wake(self) -> None:
        with self._wake_lock:
            if self._wake_open:
                self._wake_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)

    def stop(self, drain_timeout_s: float) -> bool:
        """Drain what the outbox holds for up to ``drain_timeout_s``, publish the death
        certificate, disconnect. Returns True if everything committed was acknowledged.

        Returns once the publisher thread has ended, which it does at the drain deadline
        give or take one connection attempt and the death certificate's wait. A thread
        still running long after that (hung in a DNS lookup, say) is logged as an error
        and stop() returns False rather than wait without end: the events stay in the
        outbox, and the thread closes its pipe itself when it ends."""
        self._stop_at = time.monotonic() + drain_timeout_s
        self._wake()
        thread = self._thread
        if thread is None:  # never started
            self._close_wake()
            return self.drained.is_set()
        limit_s = (drain_timeout_s + self.settings.connect_timeout_s + STATUS_ACK_WAIT_S
                   + STOP_GRACE_S)
        thread.join(limit_s)
        if thread.is_alive():
            log.error("the MQTT publisher is still running %g s after it was asked to stop "
                      "(drain deadline %g s); stopping without it: what it has not had "
                      "acknowledged stays in the outbox", limit_s, drain_timeout_s)
            return False
        self._thread = None
        return self.drained.is_set()

    def snapshot(self) -> PublisherStatus:
        return PublisherStatus(
            url=self.settings.url,
            connected=self.connected,
            since=self.since,
            last_error=self.last_error,
            in_flight=len(self._in_flight),
            published_total=self.published_total,
            rejected_total=self.rejected_total,
            refused_held=len(self._refused),
            last_refusal=self.last_refusal,
            reconnects_total=self.reconnects_total,
            connect_failures=self.connect_failures,
            warnings=self.warnings,
            birth_check=self.birth_check,
            publish_latency=None if self.publish_latency is None
            else self.publish_latency.snapshot(),
        )

    # --- publisher thread ----------------------------------------------------------

    def _stopping(self) -> bool:
        return self._stop_at is not None

    def _past_deadline(self) -> bool:
        return self._stop_at is not None and time.monotonic() >= self._stop_at

    def _is_drained(self) -> bool:
        """Nothing left anywhere: every container of the pending set is empty (a held
        refusal is pending too), and nothing committed lies beyond the cursor."""
        return (
            not self._in_flight and not self._resend and not self._buffer
            and not self._refused and not self._acked
            and self._resend_inbox.empty() and self._cursor >= self._committed
        )

    def _done(self) -> bool:
        """Stop requested, and either nothing is left to publish or time is up."""
        return self._stopping() and (self._is_drained() or self._past_deadline())

    def _run(self) -> None:
        """The publisher thread. It alone reads the wake-up pipe, so it closes it, last:
        a wake-up after that (a late commit, stop() itself) is a no-op."""
        try:
            self._publish()
        finally:
            self._close_wake()

    def _publish(self) -> None:
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
            self._flush_acks()
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
            published, since = self.published_total, time.monotonic()
            try:
                self._serve(reader)
            except _Disconnected:
                self._on_lost()
                if (self.published_total > published
                        or time.monotonic() - since >= STABLE_CONNECTION_S):
                    attempt = 0
                else:  # dropped before doing any work: a failed attempt, not a new start
                    self._sleep(self.settings.backoff.delay(attempt, random.random()))
                    attempt += 1
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
        """Empty the pipe before looking at what the wake-ups were for. A byte written
        during the read is either read here (and its cause seen right after) or left
        to wake the next select: none is lost."""
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
        _decode_pubacks_fast(client)
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
        client.on_subscribe = self._on_subscribe
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
            self._error(f"cannot reach broker {s.url}: {describe_error(exc, terse=True)}")
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
        # Commands first: the broker handles one connection's packets in order, so once
        # anyone sees this birth, the command subscription is in place (central may
        # answer a birth with commands; on a first connection they would otherwise
        # match no subscription and be dropped).
        for topic in self._subscriptions:
            self._client.subscribe(topic, qos=1)
        birth = self._status_msgs.birth()
        info = self._client.publish(
            self._status_msgs.topic, birth, qos=1, retain=True,
            properties=self._publish_props,
        )
        self._status_mid = info.mid
        if self.settings.protocol == "3.1.1":
            # 3.1.1 PUBACKs carry no reason code, and mosquitto acknowledges a publish
            # its ACL denied. The one check the protocol allows: a retained message we
            # were allowed to write comes back when we subscribe to it (sent after the
            # PUBLISH on the same connection, so the broker has handled it by then).
            self._echo_payload = birth
            self._echo_deadline = None
            _, self._echo_mid = self._client.subscribe(self._status_msgs.topic, qos=1)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = next((r for r in reasons if r.is_failure), None)
        if mid != self._echo_mid:
            if refused is not None:  # commands cannot reach this gateway
                self._once(f"sub:{refused}", logging.ERROR,
                           f"broker {self.settings.url} refused the command subscription: "
                           f"{refused}")
            return
        self._echo_mid = None
        if refused is not None:
            self._echo_payload = None
            self.birth_check = "unreadable"
            self._warn_broker(
                f"cannot read its own status topic {self._status_msgs.topic} ({refused}), "
                "so publishes the broker's ACL denies cannot be detected under MQTT 3.1.1")
        else:
            self._echo_deadline = time.monotonic() + ECHO_WAIT_S

    def _check_echo(self, client: mqtt.Client) -> None:
        """MQTT 3.1.1: the birth did not come back in time: the broker dropped it."""
        if self._echo_deadline is None or time.monotonic() < self._echo_deadline:
            return
        self._end_echo(client)
        self._echo_interrupted = 0
        self.birth_check = "missing"
        self._warn_broker(
            f"the retained birth certificate did not come back on {self._status_msgs.topic} "
            f"within {ECHO_WAIT_S:g} s: the broker's ACL denies this gateway writing (or "
            "reading) it; under MQTT 3.1.1 the broker acknowledges denied publishes, so "
            "events it denies are deleted from the outbox undelivered")

    def _end_echo(self, client: mqtt.Client) -> None:
        self._echo_payload = None
        self._echo_deadline = None
        with contextlib.suppress(Exception):  # a dead socket: the next connection redoes it
            client.unsubscribe(self._status_msgs.topic)

    def _warn_broker(self, problem: str | None) -> None:
        """Set (or clear, with None) the broker condition shown beside the permanent
        warnings; logged once per distinct problem."""
        if problem is not None:
            self._once(problem, logging.ERROR, f"broker {self.settings.url}: {problem}")
        self._broker_warning = problem
        self.warnings = self._permanent + ((problem,) if problem else ())

    def _once(self, key: str, level: int, message: str) -> None:
        if key not in self._logged_once:
            self._logged_once.add(key)
            log.log(level, "%s", message)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._status_msgs.topic:  # our own status: never a command
            if self._echo_payload is not None and bytes(msg.payload) == self._echo_payload:
                self._end_echo(client)
                if self._broker_warning is not None:
                    log.info("broker %s keeps this gateway's birth certificate again",
                             self.settings.url)
                self.birth_check = "confirmed"
                self._echo_interrupted = 0
                self._warn_broker(None)
            return
        if self._on_command is None:
            return
        try:
            self._on_command(msg.topic, bytes(msg.payload))
        except Exception:  # a bad command must not take the publisher down
            log.exception("command handler failed on %s", msg.topic)

    def _note_connect_failure(self) -> None:
        self.connect_failures += 1

    def _on_lost(self) -> None:
        """Connection dropped: everything taken out of the outbox and not acknowledged is
        sent again, in order, on reconnect.

        What was in flight, and re-sends waiting in the buffer, sit at or below the
        cursor, where nothing but these containers remembers them: they go back into the
        re-send set. The buffer's rows above the cursor are simply fetched again."""
        cursor = self._cursor
        self._resend.update(self._in_flight.values())
        self._resend.update(row.sequence for row in self._buffer if row.sequence <= cursor)
        self._in_flight.clear()
        self._sent_at.clear()  # re-sent later: timed from then
        self._buffer.clear()
        if self._echo_payload is not None and self._status_acked:
            # mosquitto 2.0.11 with max_queued_messages 0 (the shipped store broker)
            # drops a client right after acknowledging a publish its ACL denied.
            self._echo_interrupted += 1
            if self._echo_interrupted >= ECHO_INTERRUPTIONS:
                self.birth_check = "interrupted"
                self._warn_broker(
                    "the broker dropped the connection right after acknowledging the birth "
                    f"certificate {ECHO_INTERRUPTIONS} times in a row: most likely its "
                    "ACL denies this gateway's publishes (mosquitto then disconnects), and "
                    "under MQTT 3.1.1 it acknowledges them anyway, so events it denies "
                    "are deleted from the outbox undelivered")
        self._echo_payload = self._echo_mid = self._echo_deadline = None
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
            # On every pass, not only when the window has room: a retry that fell due
            # while the window was full would otherwise keep the wait at zero and spin
            # the loop (measured: 436,191 passes, a whole CPU, until keepalive dropped
            # the link). Released, it waits in the re-send set for a PUBACK like any.
            self._release_held(time.monotonic())
            self._fill_window(client, reader)
            self._io(client, self._tick())
            self._flush_acks()
            self._check_echo(client)

    def _tick(self) -> float:
        """How long to wait for the socket: wake for the next held event's retry (one
        in the future: the due ones were released at the start of this pass)."""
        if self._next_retry is None:
            return IDLE_TICK_S
        return min(IDLE_TICK_S, max(self._next_retry - time.monotonic(), 0.0))

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

    def _window_room(self) -> int:
        """Publishes that may go out now: the birth certificate, until acknowledged,
        takes one place of the window (with a window of 1, none is left)."""
        return self._receive_max - (0 if self._status_acked else 1) - len(self._in_flight)

    def _fill_window(self, client: mqtt.Client, reader: OutboxReader) -> None:
        # One clock read per fill: the publishes of one fill leave within microseconds.
        timed = self.publish_latency is not None
        sent_at = time.monotonic() if timed else 0.0
        while self._window_room() > 0:
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
            if timed:
                self._sent_at[info.mid] = sent_at
            self._cursor = max(self._cursor, row.sequence)

    def _next_batch(self, reader: OutboxReader) -> bool:
        while True:
            try:
                replay = self._resend_inbox.get_nowait()
            except queue.Empty:
                break
            # Beyond the cursor they are published in the normal course anyway.
            self._resend.update(s for s in replay if s <= self._cursor)
        while self._resend:
            # Oldest first, a batch at a time (a replay can ask for more sequences than
            # one SQL statement may carry). They leave the set only once fetched: a failed
            # read must not forget them.
            batch = heapq.nsmallest(FETCH_BATCH, self._resend)
            rows = reader.fetch(batch)
            self._resend.difference_update(batch)
            if len(rows) < len(batch) and self._refused:
                found = {row.sequence for row in rows}
                for seq in batch:  # dropped by retention or purged: nothing left to hold
                    if seq not in found:
                        self._refused.pop(seq, None)
            if rows:
                self._buffer.extend(rows)
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
            if reason.is_failure:
                self._warn_broker(f"refused this gateway's status certificate on "
                                  f"{self._status_msgs.topic}: {reason}")
            elif self.settings.protocol == "5" and self._broker_warning is not None:
                self._warn_broker(None)  # accepted again (3.1.1 answers through the echo)
            return
        seq = self._in_flight.pop(mid, None)
        if seq is None:
            return
        sent_at = self._sent_at.pop(mid, None)
        if sent_at is not None and self.publish_latency is not None:
            self.publish_latency.observe(time.monotonic() - sent_at)
        if reason.is_failure:
            self._refuse(seq, reason)
            return
        self.published_total += 1
        self._acked.append(seq)
        if self._refused:
            refusal = self._refused.pop(seq, None)
            if refusal is not None:
                log.info("broker %s accepted event seq %d after %d refusal(s)",
                         self.settings.url, seq, refusal.attempts)

    def _refuse(self, seq: int, reason: ReasonCode) -> None:
        """The broker refused this event (e.g. 0x87 not authorised on its topic). It
        stays in the outbox (purchases are never dropped) and is held back with a capped
        exponential backoff of its own, while the events behind it flow on."""
        self.rejected_total += 1
        text = f"{reason} (0x{reason.value:02X})"
        previous = self._refused.get(seq)
        attempts = 1 if previous is None else previous.attempts + 1
        delay = self.settings.refusal_backoff.delay(attempts - 1, random.random())
        retry_at = time.monotonic() + delay
        self._refused[seq] = _Refusal(attempts, retry_at, text)
        if self._next_retry is None or retry_at < self._next_retry:
            self._next_retry = retry_at
        self.last_refusal = f"seq {seq}: {text}"
        if text not in self._rejected_logged:
            self._rejected_logged.add(text)
            log.error("broker %s refused event seq %d: %s; it stays in the outbox and is "
                      "retried with backoff (up to %g s) while later events go on",
                      self.settings.url, seq, text, self.settings.refusal_backoff.max_s)

    def _release_held(self, now: float) -> None:
        """Held events whose time has come go back to the re-send set."""
        if self._next_retry is None or now < self._next_retry:
            return
        upcoming: float | None = None
        for seq, refusal in self._refused.items():
            at = refusal.retry_at
            if at is None:
                continue
            if at <= now:
                refusal.retry_at = None
                self._resend.add(seq)
            elif upcoming is None or at < upcoming:
                upcoming = at
        self._next_retry = upcoming

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
