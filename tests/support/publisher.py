"""The real MQTT publisher on a real outbox, wired as the gateway wires them, with a
record of every pass of the publisher's loop: how long it let ``select`` wait, and in
what state. Tests count passes and wake-ups instead of timing them."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storegate.adapters.mqtt_client import MqttSettings
from storegate.adapters.mqtt_paho import MqttPublisher, StatusMessages
from storegate.adapters.outbox import Outbox
from storegate.core.retention import RetentionBudget
from tests.support.outbox import TOPICS


@dataclass(frozen=True, slots=True)
class Pass:
    """One wait of the publisher's loop for its socket (or its wake-up pipe)."""

    timeout: float  # how long select was allowed to wait
    window_full: bool  # nothing more could be sent until a PUBACK
    held_due: bool  # a refused event's retry time had come and it was not in flight


class CountingPublisher(MqttPublisher):
    """The real publisher; it only records its passes and when its thread ended.

    Runs on the publisher thread, so it may read the thread's own state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._passes: list[Pass] = []
        self._passes_lock = threading.Lock()
        self.exited = threading.Event()

    def passes(self) -> list[Pass]:
        with self._passes_lock:
            return list(self._passes)

    def _io(self, client: Any, timeout: float) -> None:
        now = time.monotonic()
        flying = set(self._in_flight.values())
        due = any((r.retry_at is None or r.retry_at <= now) and seq not in flying
                  for seq, r in self._refused.items())
        with self._passes_lock:
            self._passes.append(Pass(timeout, self._window_room() <= 0, due))
        super()._io(client, timeout)

    def _run(self) -> None:
        try:
            super()._run()
        finally:
            self.exited.set()


class PublisherRig:
    """A real SQLite outbox feeding a :class:`CountingPublisher`."""

    def __init__(self, path: Path, settings: MqttSettings) -> None:
        self.outbox = Outbox(path, source=TOPICS.source,
                             topic_for=lambda t: TOPICS.events(t.kind),
                             budget=RetentionBudget(), clock=time.time,
                             on_commit=self._committed)
        self.publisher = CountingPublisher(
            settings, outbox_path=path, ack=self.outbox.ack,
            status=StatusMessages(TOPICS.status, lambda: b"{}", lambda: b"{}", lambda: b"{}"),
        )

    def _committed(self, sequence: int) -> None:
        self.publisher.notify_committed(sequence)

    def start(self) -> None:
        self.outbox.open()
        self.publisher.start(self.outbox.last_sequence)

    def stop(self, drain_timeout_s: float) -> bool:
        try:
            return self.publisher.stop(drain_timeout_s)
        finally:
            self.outbox.close()
