"""Chaos: events accepted while the link drops, the broker crashes and the gateway is
SIGKILLed.

The gateway runs as real processes (tests/support/driver.py, the real Gateway); the
broker is a real mosquitto killed with SIGKILL and restarted; the link is a real TCP
forwarder cut at both ends (tests/support/link.py); an independent subscriber with a
persistent session checks that every accepted event arrived, intact. One test restarts
the gateway; the other never does, so it cannot pass on what a restart re-sends.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from storegate.adapters.outbox import OutboxReader
from tests.support.driver import expected_data
from tests.support.gateway_proc import read_log, start_driver, start_run, write_config
from tests.support.link import Link
from tests.support.mosquitto import Mosquitto
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

TOTAL = 20_000
BROKER_KILLS = 6
GATEWAY_KILLS = 2


class BrokerChaos(threading.Thread):
    """Kill and restart the broker every ``period`` seconds until stopped."""

    def __init__(self, broker: Mosquitto, period: float, down: float) -> None:
        super().__init__(daemon=True)
        self.broker, self.period, self.down = broker, period, down
        self.kills = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.period):
            self.broker.kill()
            self.kills += 1
            time.sleep(self.down)  # the outage itself, not a synchronisation
            self.broker.start()


def persist_subscription(broker: Mosquitto, subscriber: Subscriber) -> None:
    wait_for(lambda: subscriber.connects >= 1, 10, "subscriber connected")
    # A clean broker stop persists the subscriber's session, so that from here on every
    # crash-restart restores it (otherwise the first crash could lose the subscription).
    broker.stop()
    broker.start()
    wait_for(lambda: subscriber.connects >= 2, 10, "subscriber reconnected")


def check_deliveries(accepted: dict[str, int], subscriber: Subscriber) -> int:
    """Every payload intact; duplicates only as byte-identical re-sends of the same id;
    a sequence never reused for another id. Returns the number of duplicates."""
    with subscriber.lock:
        received = {k: list(v) for k, v in subscriber.events.items()}
    dups = 0
    for event_id, n in accepted.items():
        copies = received[event_id]
        assert all(c == copies[0] for c in copies), f"copies of {event_id} differ"
        dups += len(copies) - 1
        ce = json.loads(copies[0])
        assert ce["id"] == event_id
        assert ce["type"] == "storegate.purchase.completed.v1"
        assert ce["data"] == expected_data(n), f"payload of purchase {n} damaged"
    seqs: dict[str, str] = {}
    for event_id, copies in received.items():
        seq = json.loads(copies[0])["sequence"]
        assert seqs.setdefault(seq, event_id) == event_id, f"sequence {seq} reused"
    return dups


@pytest.mark.slow
def test_nothing_lost_under_broker_crashes_and_gateway_sigkill(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    persist_subscription(broker, subscriber)
    config = write_config(tmp_path / "gw.toml", port=broker.port,
                          storage=tmp_path / "data" / "outbox.db")
    log = tmp_path / "accepted.log"
    stderr = tmp_path / "gateway.log"
    chaos = BrokerChaos(broker, period=0.7, down=0.3)
    chaos.start()
    gateway_kills = 0
    try:
        # Two gateway processes SIGKILLed mid-stream, then one that finishes the job.
        for stop_at in (TOTAL // 4, TOTAL // 2):
            start = max(read_log(log).values(), default=-1) + 1
            proc = start_driver(config, start=start, count=TOTAL, log=log, rate=4000,
                                stderr=stderr)
            wait_for(lambda s=stop_at: len(read_log(log)) >= s, 60,
                     f"{stop_at} events accepted")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            gateway_kills += 1
        start = max(read_log(log).values()) + 1
        proc = start_driver(config, start=start, count=TOTAL - len(read_log(log)) + 1, log=log,
                            rate=4000, drain=True, stderr=stderr)
        wait_for(lambda: len(read_log(log)) >= TOTAL, 60, f"{TOTAL} events accepted")
        wait_for(lambda: chaos.kills >= BROKER_KILLS, 60, f"{BROKER_KILLS} broker kills")
    finally:
        chaos.halt.set()
        chaos.join(10)
    if not broker.running:
        broker.start()
    assert proc.wait(120) == 0, stderr.read_text()[-3000:]

    accepted = read_log(log)
    assert len(accepted) >= TOTAL
    assert gateway_kills >= GATEWAY_KILLS
    assert chaos.kills >= BROKER_KILLS
    reader = OutboxReader(tmp_path / "data" / "outbox.db")
    last = reader.stats().last_sequence
    reader.close()
    # Wait for the stream to settle, then do what central does with a sequence gap: a
    # crashed broker can lose messages it had already acknowledged, so ask the gateway
    # to replay them (it keeps acknowledged events for storage.replay_window_s).
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not subscriber.gaps(last), 15, "no sequence gaps")
    missing = subscriber.gaps(last)
    gw = start_run(config, stderr)
    try:
        wait_for(lambda: subscriber.retained_state() == "online", 30, "gateway online")
        if missing:
            subscriber.request_replay("s1", "g1", missing)
            wait_for(lambda: not subscriber.gaps(last), 60, "replayed gaps to arrive")
        wait_for(lambda: accepted.keys() <= subscriber.ids(), 30,
                 "every accepted event at the subscriber")
    except AssertionError:
        lost = sorted(n for i, n in accepted.items() if i not in subscriber.ids())
        raise AssertionError(
            f"{len(lost)} of {len(accepted)} accepted events never arrived, e.g. "
            f"{lost[:30]}; sequence gaps before replay: {missing[:30]}; gateway log tail: "
            f"{stderr.read_text()[-2000:]}"
        ) from None
    finally:
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) == 0

    dups = check_deliveries(accepted, subscriber)
    print(f"\nchaos: {len(accepted)} accepted, {subscriber.count()} distinct received, "
          f"{dups} duplicate deliveries, broker kills {chaos.kills}, "
          f"gateway SIGKILLs {gateway_kills}, {len(missing)} lost by the crashing broker "
          f"and replayed")


RECOVERY_TOTAL = 6_000
RECOVERY_RATE = 600  # events/s: about 10 s of faults
RECOVERY_FLAPS = 5
RECOVERY_KILLS = 5


class LinkChaos(threading.Thread):
    """Every ``period`` seconds, in turn: cut the link (and the next connection just
    after its CONNACK), or crash and restart the broker."""

    def __init__(self, link: Link, broker: Mosquitto, period: float, down: float) -> None:
        super().__init__(daemon=True)
        self.link, self.broker, self.period, self.down = link, broker, period, down
        self.flaps = 0
        self.kills = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.period):
            if self.flaps <= self.kills:
                self.link.flap(again_after_reply=True)
                self.flaps += 1
            else:
                self.broker.kill()
                self.kills += 1
                time.sleep(self.down)  # the outage itself, not a synchronisation
                self.broker.start()


def replay_gaps(subscriber: Subscriber, missing: list[int]) -> None:
    """What central does about sequence gaps: ask the gateway to replay them. The one
    place this test sends commands, so their envelope is decided in one place."""
    subscriber.request_replay("s1", "g1", missing)


def outbox_depth(db: Path) -> int:
    with OutboxReader(db) as reader:
        return reader.stats().depth


def last_sequence(db: Path) -> int:
    with OutboxReader(db) as reader:
        return reader.stats().last_sequence


@pytest.mark.slow
@pytest.mark.parametrize("max_inflight", [1, 20])
def test_nothing_lost_under_link_flaps_and_broker_crashes_without_a_restart(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber,
    monkeypatch: pytest.MonkeyPatch, max_inflight: int,
) -> None:
    """One gateway process, never restarted: the link is cut and the broker crashes
    while it accepts and publishes, and central keeps asking for the gaps it sees. The
    running process must drain its outbox and deliver every accepted event (a restart
    would re-send what the publisher forgot, so this test allows none)."""
    persist_subscription(broker, subscriber)
    link = Link(broker.port)
    db = tmp_path / "data" / "outbox.db"
    monkeypatch.setenv("STOREGATE_MQTT__MAX_INFLIGHT", str(max_inflight))
    config = write_config(tmp_path / "gw.toml", port=link.port, storage=db)
    log, stderr, hold = tmp_path / "accepted.log", tmp_path / "gateway.log", tmp_path / "hold"
    proc = start_driver(config, start=0, count=RECOVERY_TOTAL, log=log, rate=RECOVERY_RATE,
                        drain=True, stderr=stderr, hold=hold)
    chaos = LinkChaos(link, broker, period=0.5, down=0.3)
    try:
        wait_for(lambda: db.exists() and len(read_log(log)) > 0, 30, "the gateway accepting")
        chaos.start()
        while len(read_log(log)) < RECOVERY_TOTAL:  # central replays gaps, faults go on
            assert proc.poll() is None, stderr.read_text()[-3000:]
            # all but the newest (likely still on their way) that have not arrived
            replay_gaps(subscriber, subscriber.gaps(last_sequence(db) - 2 * RECOVERY_RATE))
            time.sleep(1.0)  # central's polling period
        wait_for(lambda: chaos.flaps >= RECOVERY_FLAPS and chaos.kills >= RECOVERY_KILLS, 30,
                 "link flaps and broker crashes")
    finally:
        chaos.halt.set()
        chaos.join(10)
    try:
        if not broker.running:
            broker.start()
        accepted = read_log(log)
        assert len(accepted) == RECOVERY_TOTAL
        # The same process, still running, empties its outbox: nothing forgotten.
        wait_for(lambda: outbox_depth(db) == 0, 60, "the running gateway to drain its outbox")
        last = last_sequence(db)
        # A crashed broker can lose what it had acknowledged: central asks for the gaps.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not subscriber.gaps(last), 15, "no sequence gaps")
        missing = subscriber.gaps(last)
        if missing:
            replay_gaps(subscriber, missing)
            wait_for(lambda: not subscriber.gaps(last), 60, "replayed gaps to arrive")
        wait_for(lambda: accepted.keys() <= subscriber.ids(), 30,
                 "every accepted event at the subscriber")
        assert proc.poll() is None, "the gateway process ended: it must never restart"
    except AssertionError as exc:
        lost = sorted(n for i, n in read_log(log).items() if i not in subscriber.ids())
        raise AssertionError(
            f"{exc}: {len(lost)} accepted events not at the subscriber, e.g. {lost[:30]}; "
            f"outbox depth {outbox_depth(db)}; gateway log tail: "
            f"{stderr.read_text()[-2000:]}") from None
    finally:
        hold.touch()
        code = proc.wait(60)
        link.close()
    assert code == 0, stderr.read_text()[-3000:]
    assert "gateway stopped (drained, 0 event(s) left in the outbox)" in stderr.read_text()
    dups = check_deliveries(accepted, subscriber)
    print(f"\nchaos without restarts (max_inflight {max_inflight}): {len(accepted)} accepted, "
          f"{dups} duplicate deliveries, {chaos.flaps} link flaps ({link.cut} connections "
          f"cut), {chaos.kills} broker kills, {len(missing)} lost by the crashing broker "
          f"and replayed, 0 gateway restarts")
