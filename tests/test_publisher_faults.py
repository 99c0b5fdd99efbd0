"""The publisher recovers without a restart: re-sends survive a dropped link, refused
events back off and wait in the outbox, MQTT 3.1.1's hidden refusals are detected and
reported. Real mosquitto (with ACL files), real SQLite, the real Gateway."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from storegate.adapters import mqtt_paho
from storegate.adapters.mqtt_client import MqttSettings
from storegate.adapters.mqtt_paho import PROTOCOL_311_WARNING, MqttPublisher
from storegate.adapters.outbox import OutboxReader
from storegate.app.gateway import Gateway
from storegate.config import Config, load
from storegate.core.backoff import Backoff
from tests.support.gateway_proc import storegate, write_config
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.outbox import purchase, visit
from tests.support.publisher import Pass, PublisherRig
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


def config(tmp_path: Path, port: int, env: dict[str, str] | None = None) -> Config:
    path = write_config(tmp_path / "gw.toml", port=port, storage=tmp_path / "data" / "outbox.db")
    return load(path, environ=env or {})


def test_resends_taken_out_of_the_outbox_survive_a_dropped_link(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    """Events taken out of the outbox for a re-send and not yet acknowledged when the link
    drops are sent again on the next connection, while the gateway keeps running. (Main
    kept them in memory only and forgot them on the drop: below the cursor, they stayed
    pending until a restart, and the shutdown still said "drained".)"""
    n = 20_000
    gw = Gateway(config(tmp_path, broker.port, {"STOREGATE_MQTT__MAX_INFLIGHT": "1"}))
    gw.start()
    try:
        pub = gw.publisher
        assert pub is not None
        for start in range(0, n, 5000):
            gw.outbox.accept_blocking([visit(start + k) for k in range(5000)])
        wait_for(lambda: gw.outbox.depth == 0, 60, "first delivery acknowledged")
        # What a replay command does (app/commands.py): make them pending again, re-send.
        gw.outbox.requeue(1, n, lambda requeued, _missing: pub.resend(requeued))
        wait_for(lambda: subscriber.duplicates() >= 100, 30, "the re-send under way")
        broker.kill()
        pending_at_drop = gw.outbox.depth
        assert pending_at_drop > 0  # the drop caught re-sends in the publisher's hands
        broker.start()
        wait_for(lambda: pub.connected, 10, "reconnected")
        wait_for(lambda: gw.outbox.depth == 0, 60,
                 f"the {pending_at_drop} re-sends pending at the drop to be acknowledged")
        assert pub.connected
    finally:
        drained = gw.stop()
    assert drained


# Anonymous clients may read everything, and the gateway may write all but purchases.
ACL_DENYING_PURCHASES = (
    "topic read #\n"
    "topic write storegate/v1/s1/g1/status\n"
    "topic write storegate/v1/s1/g1/events/visit\n"
)
ACL_OPEN = "topic readwrite #\n"
PURCHASES = "storegate/v1/s1/g1/events/purchase"


def acl_broker(workdir: Path, acl: str, extra: str = "") -> tuple[Mosquitto, Path]:
    """A broker enforcing ``acl``, logging every packet (denials are logged at debug).

    Like the shipped store broker it has ``max_queued_messages 0``, with which
    mosquitto 2.0.11 drops a client right after refusing one of its publishes."""
    acl_file = workdir / "acl"
    workdir.mkdir(parents=True, exist_ok=True)
    acl_file.write_text(acl)
    return (Mosquitto(workdir, extra=f"acl_file {acl_file}\nlog_type debug\n{extra}"),
            acl_file)


def denied(broker: Mosquitto, topic: str) -> int:
    """Publishes to ``topic`` the broker refused, counted from its own log."""
    text = broker.log.read_text(errors="replace") if broker.log.exists() else ""
    return sum(1 for line in text.splitlines()
               if "Denied PUBLISH" in line and f"'{topic}'" in line)


def test_a_refused_event_backs_off_stays_in_the_outbox_and_arrives_once_allowed(
    tmp_path: Path,
) -> None:
    """A purchase the broker's ACL refuses (MQTT 5 PUBACK 0x87) is neither dropped nor
    re-published in a loop (main: 6,123 attempts in 8 s): it waits in the outbox with a
    backoff of its own, the events behind it flow on, status shows it, and it arrives
    once the ACL allows it."""
    broker, acl = acl_broker(tmp_path / "broker", ACL_DENYING_PURCHASES)
    broker.start()
    sub = Subscriber(broker.port)
    cfg_path = write_config(tmp_path / "gw.toml", port=broker.port,
                            storage=tmp_path / "data" / "outbox.db")
    gw = Gateway(load(cfg_path, environ={}))
    gw.start()
    try:
        pub = gw.publisher
        assert pub is not None
        gw.outbox.accept_blocking([visit(0), purchase(1), visit(2)])
        wait_for(lambda: sub.count() == 2, 15, "the visits on either side of the refused one")
        wait_for(lambda: denied(broker, PURCHASES) >= 2, 30, "the refused purchase retried")

        # Attempts over a measured interval: every wait is at least the backoff's minimum
        # (full jitter never goes below it), so a hot loop cannot hide under this bound.
        first, t0 = denied(broker, PURCHASES), time.monotonic()
        gw.outbox.accept_blocking([visit(3 + i) for i in range(200)])
        wait_for(lambda: sub.count() == 202 and denied(broker, PURCHASES) >= first + 2, 60,
                 "later events delivered, the refused one retried twice more")
        attempts, elapsed = denied(broker, PURCHASES) - first, time.monotonic() - t0
        assert attempts <= elapsed / pub.settings.refusal_backoff.min_s + 1, (
            f"{attempts} attempts in {elapsed:.1f} s")
        # Counted by the publisher: each PUBACK 0x87 it read. mosquitto (with the shipped
        # max_queued_messages 0) drops the connection right after a denial, and the
        # PUBACK does not always make it out first: then the attempt counts as lost in
        # flight, not refused, so the publisher may count fewer than the broker denied.
        wait_for(lambda: pub.rejected_total >= 2, 10, "refusals counted by the publisher")
        assert pub.rejected_total <= denied(broker, PURCHASES)

        with OutboxReader(cfg_path.parent / "data" / "outbox.db") as reader:
            held = reader.pending(10)
        assert [(e.sequence, e.type) for e in held] == [(2, "storegate.purchase.completed.v1")]
        assert pub.snapshot().refused_held == 1
        assert pub.last_refusal is not None and "0x87" in pub.last_refusal
        gw.write_status()
        shown = storegate("status", "--config", str(cfg_path))
        assert "REFUSED by the broker: 1 event(s) held" in shown.stdout, shown.stdout

        # The operator fixes the ACL; the broker restarts with it.
        acl.write_text(ACL_OPEN)
        broker.stop()
        broker.start()
        wait_for(lambda: sub.count() == 203, 60, "the once-refused purchase delivered")
        wait_for(lambda: gw.outbox.depth == 0, 10, "the outbox emptied")
        assert pub.snapshot().refused_held == 0
        assert PURCHASES in sub.by_topic
    finally:
        drained = gw.stop()
        sub.close()
        broker.kill()
    assert drained


@pytest.mark.parametrize(("broker_extra", "verdict", "shown"), [
    # a broker that keeps the connection: the birth never comes back
    ("max_queued_messages 1000\n", "missing", "did not come back"),
    # the shipped store broker's setting: mosquitto drops us after each denied publish
    ("", "interrupted", "dropped the connection right after"),
])
def test_mqtt_311_cannot_see_refusals_and_says_so(
    tmp_path: Path, broker_extra: str, verdict: str, shown: str
) -> None:
    """Under MQTT 3.1.1 mosquitto acknowledges a publish its ACL denied. The publisher
    checks that its retained birth comes back, flags the broker that does not, and
    status carries the protocol's permanent warning."""
    broker, _ = acl_broker(tmp_path / "broker", "topic read #\n",  # the gateway may not write
                           extra=broker_extra)
    broker.start()
    cfg_path = write_config(tmp_path / "gw.toml", port=broker.port,
                            storage=tmp_path / "data" / "outbox.db")
    gw = Gateway(load(cfg_path, environ={"STOREGATE_MQTT__PROTOCOL": "3.1.1"}))
    gw.start()
    try:
        pub = gw.publisher
        assert pub is not None
        assert PROTOCOL_311_WARNING in pub.warnings  # permanent under 3.1.1
        wait_for(lambda: pub.birth_check == verdict, 20, "the broker's refusals detected")
        assert any(shown in w for w in pub.warnings)
        if verdict == "missing":  # the connection holds: show what the warning is about
            gw.outbox.accept_blocking([purchase(1)])
            wait_for(lambda: gw.outbox.depth == 0, 20, "the denied purchase 'acknowledged'")
            wait_for(lambda: denied(broker, PURCHASES) == 1, 10, "the broker's denial")
            assert pub.rejected_total == 0  # the protocol hid it: deleted, never delivered
        gw.write_status()
        out = storegate("status", "--config", str(cfg_path)).stdout
        assert f"WARNING   {PROTOCOL_311_WARNING}" in out, out
        assert shown in out
    finally:
        gw.stop()
        broker.kill()


def test_mqtt_311_birth_check_passes_on_an_open_broker(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    gw = Gateway(config(tmp_path, broker.port, {"STOREGATE_MQTT__PROTOCOL": "3.1.1"}))
    gw.start()
    try:
        pub = gw.publisher
        assert pub is not None
        wait_for(lambda: pub.birth_check == "confirmed", 10, "the birth came back")
        assert pub.warnings == (PROTOCOL_311_WARNING,)
        gw.outbox.accept_blocking([purchase(1)])
        wait_for(lambda: subscriber.count() == 1, 10, "delivered")
        assert gw.commands is None or gw.commands.rejected_total == 0  # status echo not a command
    finally:
        gw.stop()


def test_a_held_refusal_is_pending_so_the_shutdown_is_not_drained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """"Drained" means the pending set is empty: a refused event still held at shutdown
    is pending, stays in the outbox for the next start, and the log says so."""
    broker, _ = acl_broker(tmp_path / "broker", ACL_DENYING_PURCHASES)
    broker.start()
    cfg = config(tmp_path, broker.port, {"STOREGATE_STORAGE__SHUTDOWN_DRAIN_S": "1"})
    gw = Gateway(cfg)
    gw.start()
    try:
        pub = gw.publisher
        assert pub is not None
        gw.outbox.accept_blocking([purchase(1), visit(2)])
        wait_for(lambda: pub.snapshot().refused_held == 1 and pub.published_total == 1, 15,
                 "the purchase refused and held, the visit delivered")
    finally:
        caplog.set_level("INFO", logger="storegate.app.gateway")
        drained = gw.stop()
        broker.kill()
    assert not drained
    assert "gateway stopped (not drained, 1 event(s) left in the outbox)" in caplog.text
    with OutboxReader(cfg.storage.path) as reader:
        assert [e.type for e in reader.pending(10)] == ["storegate.purchase.completed.v1"]


def test_a_due_retry_behind_a_full_window_waits_for_the_broker_not_the_cpu(
    tmp_path: Path,
) -> None:
    """A refused event whose retry time comes while the window is full cannot go out
    until a PUBACK frees a place: the loop must wait for the socket. (Main computed a
    zero wait from the due retry but released it only when the window had room: 436,191
    passes at 100 % CPU until keepalive dropped the link.) The broker is frozen
    (SIGSTOP) with one visit in flight, so no PUBACK can free the window."""
    broker, _ = acl_broker(tmp_path / "broker", ACL_DENYING_PURCHASES,
                           extra="max_queued_messages 1000\n")  # keep us after a denial
    broker.start()
    settings = MqttSettings("127.0.0.1", broker.port, "g1-faults", window=1,
                            refusal_backoff=Backoff(0.5, 0.5))
    rig = PublisherRig(tmp_path / "outbox.db", settings)
    rig.start()
    pub = rig.publisher
    frozen = False
    try:
        rig.outbox.accept_blocking([purchase(1)])
        wait_for(lambda: pub.snapshot().refused_held == 1, 15, "the purchase refused")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)
        frozen = True
        rig.outbox.accept_blocking([visit(2)])
        wait_for(lambda: pub.snapshot().in_flight == 1, 10, "the visit filling the window")

        def stuck() -> list[Pass]:
            return [p for p in pub.passes() if p.window_full and p.held_due]

        # Two waits behind the full window once the retry is due: the first right when
        # it falls due, the next only after the idle tick (or after a million passes).
        wait_for(lambda: len(stuck()) >= 2, 10, "two passes with the retry due")
        waits = stuck()
        busy = [p for p in waits if p.timeout == 0]
        assert len(busy) <= 1, f"{len(busy)} of {len(waits)} passes did not wait at all"

        broker.proc.send_signal(signal.SIGCONT)
        frozen = False
        wait_for(lambda: pub.published_total == 1 and pub.rejected_total >= 2, 15,
                 "the visit acknowledged, the due purchase offered (and refused) again")
    finally:
        if frozen and broker.proc is not None:
            broker.proc.send_signal(signal.SIGCONT)
        rig.stop(0.5)
        broker.kill()


class _OsWakingMidRead:
    """``os`` as the publisher module sees it, except that the first ``read`` of the
    wake-up pipe lets a commit land first: the writer thread's worst moment."""

    def __init__(self) -> None:
        self.publisher: MqttPublisher | None = None
        self.landed = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def read(self, fd: int, n: int) -> bytes:
        if self.publisher is not None and not self.landed.is_set():
            self.publisher.notify_committed(0)  # a commit's wake-up, during the drain
            self.landed.set()
        return os.read(fd, n)


def test_a_wake_up_landing_while_the_pipe_is_drained_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit's wake-up written while the publisher empties its wake-up pipe must not
    leave later wake-ups unsent. (Main cleared its "woken" flag before reading: the byte
    was read with the flag left set, every later wake-up was skipped, and stop() could
    not end a 30 s reconnect backoff: its join timed out, and it closed the pipe under
    the running thread.) stop() returns only once the thread is gone."""
    os_mid_read = _OsWakingMidRead()
    monkeypatch.setattr(mqtt_paho, "os", os_mid_read)
    settings = MqttSettings("127.0.0.1", free_port(), "g1-faults",  # nobody listening
                            backoff=Backoff(30.0, 30.0))
    rig = PublisherRig(tmp_path / "outbox.db", settings)
    rig.start()
    pub = rig.publisher
    wait_for(lambda: pub.connect_failures >= 1, 10, "the first connect refused")
    os_mid_read.publisher = pub
    pub.notify_committed(0)  # wakes the backoff sleep; its drain meets the commit
    wait_for(os_mid_read.landed.is_set, 10, "a commit landing during the drain")
    drained = rig.stop(0.2)
    assert pub.exited.is_set(), "stop() returned while the publisher thread still ran"
    assert drained  # nothing was committed: nothing left behind
    # A commit after the stop must not write into whatever reused the pipe's numbers.
    reused_r, reused_w = os.pipe()
    try:
        os.set_blocking(reused_r, False)
        pub.notify_committed(1)
        with pytest.raises(BlockingIOError):
            os.read(reused_r, 1)
    finally:
        os.close(reused_r)
        os.close(reused_w)
