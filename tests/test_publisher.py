"""The gateway against a real mosquitto: order, birth/death/will, outages, credentials,
TLS, the in-flight bound, paho's message-id wrap, replay and bad commands, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from storegate.adapters.outbox import OutboxReader
from storegate.app import collector
from storegate.app import gateway as gateway_module
from storegate.app.gateway import Gateway
from storegate.config import Config, load
from storegate.errors import OutboxUnavailableError
from tests.support.central import CENTRAL
from tests.support.gateway_proc import start_run, storegate, write_config
from tests.support.mosquitto import Mosquitto
from tests.support.outbox import purchase, telemetry, visit
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


def config(tmp_path: Path, port: int, extra: str = "", env: dict[str, str] | None = None,
           name: str = "gw.toml") -> Config:
    path = write_config(tmp_path / name, port=port, storage=tmp_path / "data" / "outbox.db",
                        extra=extra)
    return load(path, environ=env or {})


@contextmanager
def running(cfg: Config) -> Iterator[Gateway]:
    gw = Gateway(cfg)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def arrival_sequences(sub: Subscriber) -> list[int]:
    with sub.lock:
        firsts = [v[0] for v in sub.events.values()]  # dict keeps first-arrival order
    return [int(json.loads(b)["sequence"]) for b in firsts]


def test_events_arrive_in_order_between_birth_and_death(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    with running(config(tmp_path, broker.port)) as gw:
        wait_for(lambda: subscriber.retained_state() == "online", 10, "birth certificate")
        birth = subscriber.status[-1]
        assert birth["type"] == "storegate.gateway.status.v1"
        assert birth["data"]["reason"] == "started"
        assert birth["data"]["session"] == gw.outbox.session
        gw.outbox.accept_blocking([purchase(i) for i in range(300)])
        wait_for(lambda: subscriber.count() == 300, 10, "300 events")
        wait_for(lambda: gw.outbox.depth == 0, 10, "outbox emptied by PUBACKs")
    assert arrival_sequences(subscriber) == list(range(1, 301))
    wait_for(lambda: subscriber.retained_state() == "offline", 10, "death certificate")
    death = subscriber.status[-1]
    assert death["data"]["reason"] == "shutdown"
    assert death["data"]["session"] == birth["data"]["session"]
    assert subscriber.by_topic["storegate/v1/s1/g1/events/purchase"] == 300
    # CloudEvents MQTT binding, structured mode, MQTT 5: the content type says so
    assert set(subscriber.content_types) == {"application/cloudevents+json; charset=UTF-8"}


def test_the_birth_follows_the_command_subscription(tmp_path: Path) -> None:
    """Whoever sees the birth may command the gateway at once (central answers a birth
    with commands): the broker handles a connection's packets in order, so the
    SUBSCRIBE goes first, or a command on a first connection matches no subscription
    and is dropped."""
    broker = Mosquitto(tmp_path / "broker", extra="log_type debug\n")
    broker.start()
    try:
        with running(config(tmp_path, broker.port)):
            wait_for(lambda: "Received PUBLISH from storegate-s1-g1" in broker.log.read_text(),
                     10, "the birth at the broker")
    finally:
        broker.kill()
    lines = broker.log.read_text().splitlines()
    subscribe = next(i for i, ln in enumerate(lines)
                     if "Received SUBSCRIBE from storegate-s1-g1" in ln)
    birth = next(i for i, ln in enumerate(lines)
                 if "Received PUBLISH from storegate-s1-g1" in ln and "/g1/status'" in ln)
    assert subscribe < birth, "\n".join(lines)


def test_mqtt_311_is_selectable(tmp_path: Path, broker: Mosquitto,
                                subscriber: Subscriber) -> None:
    cfg = config(tmp_path, broker.port, env={"STOREGATE_MQTT__PROTOCOL": "3.1.1"})
    with running(cfg) as gw:
        gw.outbox.accept_blocking([purchase(i) for i in range(50)])
        wait_for(lambda: gw.outbox.depth == 0, 10, "published over MQTT 3.1.1")
        wait_for(lambda: subscriber.retained_state() == "online", 10, "birth")
    assert arrival_sequences(subscriber) == list(range(1, 51))
    wait_for(lambda: subscriber.retained_state() == "offline", 10, "death")


def test_outage_backlog_drains_oldest_first(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    with running(config(tmp_path, broker.port)) as gw:
        wait_for(lambda: gw.publisher is not None and gw.publisher.connected, 10, "connected")
        broker.stop()
        wait_for(lambda: gw.publisher is not None and not gw.publisher.connected, 10,
                 "disconnect noticed")
        for i in range(20):
            gw.outbox.accept_blocking([visit(100 * i + k) for k in range(100)])
        assert gw.outbox.depth == 2000  # accepted while the broker is away
        assert gw.publisher is not None
        assert gw.publisher.last_error is not None
        broker.start()
        wait_for(lambda: subscriber.count() == 2000, 30, "backlog delivered")
        wait_for(lambda: gw.outbox.depth == 0, 10, "outbox empty")
        assert gw.publisher.reconnects_total >= 1
    assert arrival_sequences(subscriber) == list(range(1, 2001))


def test_more_unacknowledged_ids_than_paho_has_never_stalls(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """paho reuses message ids after 65,535 publishes (DOMAIN.md); more than that many
    events must all be acknowledged and leave the outbox."""
    n = 70_000
    with running(config(tmp_path, broker.port)) as gw:
        for start in range(0, n, 5000):
            gw.outbox.accept_blocking([telemetry(start + k) for k in range(5000)])
        wait_for(lambda: gw.outbox.depth == 0, 120, "all 70,000 events acknowledged")
        assert gw.publisher is not None
        assert gw.publisher.published_total == n


def test_in_flight_never_exceeds_the_broker_receive_maximum(
    tmp_path: Path, broker_session: Mosquitto
) -> None:
    small = Mosquitto(tmp_path / "small-broker", extra="")
    small.conf.write_text(small.conf.read_text().replace("max_inflight_messages 0",
                                                         "max_inflight_messages 5"))
    small.start()
    try:
        with running(config(tmp_path, small.port)) as gw:
            pub = gw.publisher
            assert pub is not None
            wait_for(lambda: pub.connected, 10, "connected")
            seen: list[int] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.0002):  # a busy loop would starve the publisher
                    seen.append(pub.snapshot().in_flight)

            t = threading.Thread(target=sample, daemon=True)
            t.start()
            gw.outbox.accept_blocking([visit(i) for i in range(5000)])
            wait_for(lambda: gw.outbox.depth == 0, 30, "drained")
            stop.set()
            t.join()
        assert max(seen) <= 5  # mqtt.max_inflight is 20; the broker said 5
        assert max(seen) >= 2  # and the window was used
    finally:
        small.kill()


def test_last_will_marks_a_killed_gateway_offline(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    cfg = write_config(tmp_path / "gw.toml", port=broker.port,
                       storage=tmp_path / "data" / "outbox.db")
    proc = start_run(cfg, tmp_path / "gw.log")
    try:
        wait_for(lambda: subscriber.retained_state() == "online", 20, "birth")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: subscriber.retained_state() == "offline", 20, "last will")
        assert subscriber.status[-1]["data"]["reason"] == "connection-lost"
    finally:
        proc.kill()


def test_broker_refusing_credentials_is_a_clear_error(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "gw", "right"], check=True)
    secure = Mosquitto(tmp_path / "secure-broker")
    secure.conf.write_text(secure.conf.read_text().replace(
        "allow_anonymous true", f"allow_anonymous false\npassword_file {pw}"))
    secure.start()
    try:
        cfg = config(tmp_path, secure.port, extra="", env={"STOREGATE_MQTT__PASSWORD": "wrong"})
        cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"username": "gw"})})
        with running(cfg) as gw:
            pub = gw.publisher
            assert pub is not None
            wait_for(lambda: pub.last_error is not None and "refused" in pub.last_error, 10,
                     "credentials refused")
            assert "Bad user name or password" in pub.last_error or (
                "Not authorized" in pub.last_error)
            assert not pub.connected
            gw.write_status()
            r = storegate("status", "--config", str(tmp_path / "gw.toml"))
            assert r.returncode == 1  # running but not connected
            assert "DISCONNECTED" in r.stdout
            assert "refused the connection" in r.stdout
        # the right secret from the environment connects
        cfg2 = config(tmp_path, secure.port, env={"STOREGATE_MQTT__PASSWORD": "right",
                                                  "STOREGATE_MQTT__USERNAME": "gw"})
        with running(cfg2) as gw2:
            assert gw2.publisher is not None
            wait_for(lambda: gw2.publisher is not None and gw2.publisher.connected, 10,
                     "connected with the right password")
    finally:
        secure.kill()


def _certs(d: Path) -> None:
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    for name, cn in (("server", "127.0.0.1"), ("client", "gw")):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout",
            f"{name}.key", "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext")


def test_tls_with_client_certificate(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    _certs(certs)
    tls = Mosquitto(tmp_path / "tls-broker",
                    extra=f"cafile {certs}/ca.pem\ncertfile {certs}/server.pem\n"
                          f"keyfile {certs}/server.key\nrequire_certificate true\n")
    tls.start()
    try:
        good = (f"[mqtt.tls]\nca_file = \"{certs}/ca.pem\"\ncert_file = \"{certs}/client.pem\"\n"
                f"key_file = \"{certs}/client.key\"\n")
        with running(config(tmp_path, tls.port, extra=good)) as gw:
            wait_for(lambda: gw.publisher is not None and gw.publisher.connected, 15,
                     "TLS connection")
            gw.outbox.accept_blocking([purchase(1)])
            wait_for(lambda: gw.outbox.depth == 0, 10, "published over TLS")
            assert gw.publisher is not None
            assert gw.publisher.settings.url.startswith("mqtts://")
        # a gateway that does not trust the broker's CA refuses to talk to it
        other = tmp_path / "other"
        other.mkdir()
        _certs(other)
        bad = (f"[mqtt.tls]\nca_file = \"{other}/ca.pem\"\ncert_file = \"{certs}/client.pem\"\n"
               f"key_file = \"{certs}/client.key\"\n")
        with running(config(tmp_path, tls.port, extra=bad, name="bad.toml")) as gw:
            pub = gw.publisher
            assert pub is not None
            wait_for(lambda: pub.last_error is not None, 15, "TLS failure reported")
            assert "certificate verify failed" in pub.last_error
            assert not pub.connected
    finally:
        tls.kill()


def test_replay_command_republishes_and_bad_commands_are_counted(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    with running(config(tmp_path, broker.port)) as gw:
        accepted = gw.outbox.accept_blocking([purchase(i) for i in range(10)])
        wait_for(lambda: subscriber.count() == 10, 10, "10 events")
        wait_for(lambda: gw.outbox.depth == 0, 10, "acknowledged")
        first_copies = {a.id: subscriber.events[a.id][0] for a in accepted}
        cmd = "storegate/v1/s1/commands/replay"
        bad = [
            (cmd, b"not json"),
            (cmd, CENTRAL.sign("replay", {"gateway": "g1", "from_sequence": 5})),
            (cmd, CENTRAL.sign("replay", {"gateway": "g1", "from_sequence": 9,
                                          "to_sequence": 3})),
            ("storegate/v1/s1/commands/self-destruct", CENTRAL.sign("self-destruct", {})),
        ]
        for topic, payload in bad:
            subscriber.client.publish(topic, payload, qos=1)
        subscriber.client.publish(cmd, CENTRAL.sign(
            "replay", {"gateway": "other-gw", "from_sequence": 1, "to_sequence": 10}), qos=1)
        subscriber.client.publish(cmd, CENTRAL.sign(
            "replay", {"gateway": "g1", "from_sequence": 3, "to_sequence": 5,
                       "request_id": "r1"}, command_id="cmd-r1"), qos=1)
        wait_for(lambda: all(len(subscriber.events[a.id]) == 2 for a in accepted[2:5]), 10,
                 "sequences 3..5 replayed")
        # byte-identical: same id, same sequence, same payload
        for a in accepted[2:5]:
            assert subscriber.events[a.id][1] == first_copies[a.id]
        assert all(len(subscriber.events[a.id]) == 1 for a in accepted[:2] + accepted[5:])
        answers = [json.loads(v[0]) for v in subscriber.events.values()
                   if json.loads(v[0])["type"] == "storegate.gateway.replayed.v1"]
        commands = gw.commands
        assert commands is not None
        wait_for(lambda: commands.rejected_total == 4, 10, "bad commands counted")
        assert commands.rejected_by_reason == {"malformed": 1, "invalid": 2,
                                               "unknown_command": 1}
        assert commands.accepted_total == 1  # the other gateway's replay is not ours
        assert gw.publisher is not None
        assert gw.publisher.connected  # nothing crashed
    assert len(answers) == 1
    assert answers[0]["data"] == {"request_id": "r1", "command_id": "cmd-r1",
                                  "from_sequence": 3, "to_sequence": 5,
                                  "republished": 3, "unavailable": []}


def test_replay_of_events_past_the_window_reports_them_unavailable(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    cfg = config(tmp_path, broker.port, env={"STOREGATE_STORAGE__REPLAY_WINDOW_S": "0"})
    with running(cfg) as gw:
        gw.outbox.accept_blocking([purchase(i) for i in range(4)])
        wait_for(lambda: gw.outbox.depth == 0, 10, "acknowledged (and deleted)")
        subscriber.client.publish("storegate/v1/s1/commands/replay", CENTRAL.sign(
            "replay", {"gateway": "g1", "from_sequence": 1, "to_sequence": 4,
                       "request_id": "r2"}, command_id="cmd-r2"), qos=1)

        def answer() -> dict[str, object] | None:
            for v in list(subscriber.events.values()):
                ce = json.loads(v[0])
                if ce["type"] == "storegate.gateway.replayed.v1":
                    return dict(ce["data"])
            return None

        wait_for(answer, 10, "replay answer")
    assert answer() == {"request_id": "r2", "command_id": "cmd-r2", "from_sequence": 1,
                        "to_sequence": 4, "republished": 0, "unavailable": [[1, 4]]}


def test_a_task_that_ignores_the_stop_is_cancelled_and_the_gateway_still_drains(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """One of the gateway's tasks not ending on the stop (the app channel's writer did,
    after a lost wake-up) kept it from ever reaching the drain: the process hung until
    killed. Now it is cancelled, named in the log, and the shutdown goes on."""
    async def deaf(stop: asyncio.Event, **_: object) -> None:
        await asyncio.Event().wait()  # never looks at ``stop``

    monkeypatch.setattr(collector, "tend", deaf)
    monkeypatch.setattr(gateway_module, "STOP_TASKS_S", 0.5)
    gw = Gateway(config(tmp_path, broker.port))

    async def main() -> bool:
        stop = asyncio.Event()
        run = asyncio.create_task(gw.run(stop))
        while not (gw.publisher is not None and gw.publisher.connected):
            assert not run.done(), run
            await asyncio.sleep(0.02)
        await gw.accept(purchase(1))
        stop.set()
        return await asyncio.wait_for(run, 60)

    with caplog.at_level(logging.ERROR, logger=gateway_module.__name__):
        assert asyncio.run(main()) is True  # drained
    assert any("deaf did not end within 0.5 s of the stop; cancelled" in r.getMessage()
               for r in caplog.records), caplog.text
    wait_for(lambda: subscriber.retained_state() == "offline", 10, "death certificate")
    assert subscriber.status[-1]["data"]["reason"] == "shutdown"
    assert len(subscriber.of_type("storegate.purchase.completed.v1")) == 1


def test_sigterm_drains_pending_events_and_closes_cleanly(
    tmp_path: Path, broker: Mosquitto, subscriber: Subscriber
) -> None:
    db = tmp_path / "data" / "outbox.db"
    cfg = write_config(tmp_path / "gw.toml", port=broker.port, storage=db, telemetry=True)
    broker.stop()
    proc = start_run(cfg, tmp_path / "gw.log")
    try:
        def pending() -> int:
            try:
                with OutboxReader(db) as r:
                    return r.stats().depth
            except OutboxUnavailableError:  # not created yet
                return 0

        wait_for(lambda: pending() >= 2, 20, "telemetry piling up while the broker is down")
        broker.start()
        proc.send_signal(signal.SIGTERM)  # at once: the drain happens during shutdown
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert pending() == 0
    # the subscriber reconnects to the restarted broker on its own schedule
    wait_for(lambda: subscriber.by_topic["storegate/v1/s1/g1/events/telemetry"] >= 2, 20,
             "drained telemetry at the subscriber")
    wait_for(lambda: subscriber.retained_state() == "offline", 10, "death certificate")
    assert subscriber.status[-1]["data"]["reason"] == "shutdown"
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    assert not (tmp_path / "data" / "outbox.db.status.json").exists()
