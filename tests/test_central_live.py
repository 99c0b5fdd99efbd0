"""Two implementations of one contract, end to end: real gateways (tests/support/driver,
the real composition root) and a real ``storegate central`` process against one real
mosquitto. What the gateways publish, central reads and stores exactly once; what
central sends (signed, sealed), the gateways apply and answer, and central records the
answers: a gap closed by a signed replay, a registry snapshot with a sealed identity, a
click-and-collect order, a campaign, an erasure confirmed by every gateway; and two
central instances splitting the stream through an MQTT 5 shared subscription.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from storegate.adapters.central.mqtt_source import MqttSource
from storegate.adapters.central.storage import Database, Target
from storegate.adapters.mqtt_client import MqttSettings
from storegate.adapters.outbox import OutboxReader
from tests.support.central import CENTRAL
from tests.support.gateway_proc import REPO, env, read_log, start_driver, write_config
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.postgres import postgres_cluster, postgres_url  # noqa: F401 - fixtures
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

TOKEN = "central-live-test-token"
T0 = time.time()


class CentralProc:
    """``storegate central`` as a real process, and its API."""

    def __init__(self, tmp: Path, broker: Mosquitto, *, storage: Path | str, name: str,
                 key: Path) -> None:
        self.port = free_port()
        self.storage = storage
        self.log = tmp / f"{name}.log"
        e = env()
        e["STOREGATE_CENTRAL_TOKENS"] = TOKEN
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "storegate", "--log-format", "json", "central",
             "--storage", str(storage), "--mqtt-port", str(broker.port),
             "--client-id", name, "--key", str(key), "--kid", CENTRAL.kid,
             "--http-port", str(self.port), "--gap-interval", "0.2", "--gap-grace", "0.5"],
            cwd=REPO, env=e, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"),  # noqa: SIM115
            text=True)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                                 headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        wait_for(self._up, 30, f"central {name} connected")

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return bool(self.http.get("/status").json().get("connected"))
        except httpx.HTTPError:
            return False

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        assert r.status_code == 200, r.text
        return r.json()

    def send(self, method: str, path: str, body: Any = None, code: int = 200) -> Any:
        r = self.http.request(method, path, json=body)
        assert r.status_code == code, r.text
        return r.json()

    def kill(self) -> None:
        self.http.close()
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> int:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def key_file(tmp: Path) -> Path:
    path = tmp / "central.key"
    path.write_bytes(CENTRAL.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                               NoEncryption()))
    return path


def db_rows(storage: Path | str, sql: str,
            params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read central's storage as a separate client would (SQLite file or PostgreSQL)."""
    if isinstance(storage, Path):
        with sqlite3.connect(storage, timeout=30) as conn:
            return conn.execute(sql, params).fetchall()
    db = Database(Target.parse(storage))
    try:
        return db.read(sql, params)
    finally:
        db.close()


def answered(c: CentralProc, command_id: str, type_: str) -> dict[str, Any] | None:
    for a in c.get(f"/commands/{command_id}")["answers"]:
        if a["type"] == type_:
            return dict(a)
    return None


@pytest.fixture
def key(tmp_path: Path) -> Path:
    return key_file(tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    if request.param == "sqlite":
        return tmp_path / "central.db"
    return str(request.getfixturevalue("postgres_url"))


def test_gateway_and_central_read_each_other(tmp_path: Path, broker: Mosquitto,
                                            key: Path, storage: Path | str) -> None:
    cfg = write_config(tmp_path / "gw.toml", port=broker.port,
                       storage=tmp_path / "gw" / "outbox.db")
    (tmp_path / "gw").mkdir()
    log = tmp_path / "accepted.log"
    # 1..30 are published while no central listens: lost to central, held by the gateway
    first = start_driver(cfg, start=1, count=30, log=log, drain=True)
    assert first.wait(60) == 0
    c = CentralProc(tmp_path, broker, storage=storage, name="central-1", key=key)
    hold = tmp_path / "hold"
    second = start_driver(cfg, start=31, count=30, log=log, drain=True, hold=hold,
                          stderr=tmp_path / "driver.log")
    try:
        # central sees 31..60, asks for 1..30 by signed replay, the gap closes
        def caught_up() -> bool:
            gws = c.get("/gateways")
            # 60 purchases and the replay's answer (gateway.replayed, sequence 61)
            return bool(gws) and gws[0]["watermark"] == gws[0]["highest"] >= 61 \
                and not gws[0]["open_gaps"]

        try:
            wait_for(caught_up, 60, "the gap [1, 30] closed by replay")
        except AssertionError:
            raise AssertionError((c.get("/gateways"), c.log.read_text(),
                                  (tmp_path / "driver.log").read_text()[-3000:])) from None
        [gw] = c.get("/gateways")
        assert (gw["store"], gw["gateway"], gw["state"], gw["lost"]) == (
            "s1", "g1", "online", [])
        # the gateway's seal key announced: central synced the store's registry to it
        wait_for(lambda: db_rows(storage, "SELECT id FROM commands WHERE purpose = "
                                 "'customers:replace'"), 20, "the registry synced")
        [(sync_id,)] = db_rows(storage, "SELECT id FROM commands WHERE purpose = "
                               "'customers:replace'")
        wait_for(lambda: answered(c, sync_id, "storegate.gateway.customers_applied.v1"),
                 20, "the sync applied")
        accepted = read_log(log)
        stored = {r[0]: json.loads(r[1]) for r in db_rows(
            storage, "SELECT id, data FROM events WHERE type = ?",
            ("storegate.purchase.completed.v1",))}
        assert set(stored) == set(accepted)  # every accepted purchase, exactly once
        assert all(stored[i]["receipt"] == f"R{n}" for i, n in accepted.items())
        [(replay_id,)] = db_rows(storage, "SELECT id FROM commands WHERE name = 'replay'")
        replayed = answered(c, replay_id, "storegate.gateway.replayed.v1")
        assert replayed is not None and replayed["data"]["from_sequence"] == 1
        assert replayed["data"]["republished"] == 30
        assert replayed["data"]["unavailable"] == []

        # dedupe: the same event delivered again changes nothing
        some_id = next(iter(accepted))
        [(raw,)] = db_rows(storage, "SELECT data FROM events WHERE id = ?", (some_id,))
        before = c.get("/status")["ingest"].get("duplicate", 0)
        [(seq, t)] = db_rows(storage, "SELECT sequence, time FROM events WHERE id = ?",
                             (some_id,))
        again = json.dumps({"specversion": "1.0", "id": some_id,
                            "source": "storegate://s1/g1",
                            "type": "storegate.purchase.completed.v1",
                            "subject": "x", "time": t, "datacontenttype": "application/json",
                            "sequence": f"{seq:020d}", "data": json.loads(raw)})
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dup-pub",
                          protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("storegate/v1/s1/g1/events/purchase", again, qos=1).wait_for_publish(10)
        pub.publish("storegate/v1/s1/g1/events/purchase", b"not json", qos=1
                    ).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        wait_for(lambda: c.get("/status")["ingest"].get("duplicate", 0) > before, 15,
                 "the duplicate counted")
        wait_for(lambda: c.get("/status")["ingest"].get("rejected:malformed", 0) == 1, 15,
                 "the malformed message counted")
        assert db_rows(storage, "SELECT COUNT(*) FROM events WHERE id = ?",
                       (some_id,)) == [(1,)]

        # the other way: a customer with consent and a presence identity, sealed to g1
        consent = {"granted": True, "at": T0, "source": "app", "store": "s1",
                   "proof": {"method": "app_toggle", "reference": "app/privacy#3"}}
        c.send("PUT", "/customers/cust-1", {
            "consents": {"presence": consent, "marketing": consent},
            "loyalty_ids": ["ps1:" + "ab" * 16], "profile": {"greeting_name": "Alex"},
            "identity": {"customer": "cust-1", "identity_key": "a1" * 16,
                         "rotation_exponent": 8, "beacon_time_at_registration": 7000,
                         "registered_at": 1_790_000_000.0}})
        [(cust_cmd,)] = db_rows(storage, "SELECT id FROM commands WHERE purpose = "
                                "'customers:upsert'")
        wait_for(lambda: answered(c, cust_cmd, "storegate.gateway.customers_applied.v1"),
                 20, "customers applied")
        applied = answered(c, cust_cmd, "storegate.gateway.customers_applied.v1")
        assert applied is not None and applied["applied"], applied
        assert applied["data"]["enrolled"] == 1  # the sealed identity opened on the box

        # click and collect: created -> ready reaches the store
        c.send("POST", "/pickups", {"order_id": "o-1", "customer": "cust-1", "store": "s1",
                                    "items": 2, "counter": "desk"}, code=201)
        ready = c.send("POST", "/pickups/o-1/ready")
        wait_for(lambda: answered(c, ready["command_id"],
                                  "storegate.gateway.customers_applied.v1"), 20,
                 "pickup ready applied")

        # a campaign to every store
        camp = c.send("PUT", "/campaigns/welcome", {
            "id": "welcome", "version": 1, "trigger": {"kind": "store_entered"},
            "content": {"title": "Welcome back"}})
        wait_for(lambda: answered(c, camp["command_id"],
                                  "storegate.gateway.campaigns_applied.v1"), 20,
                 "campaign applied")
        camp_answer = answered(c, camp["command_id"], "storegate.gateway.campaigns_applied.v1")
        assert camp_answer is not None and camp_answer["applied"], camp_answer

        # erasure fans out and is tracked until the gateway confirms
        e = c.send("POST", "/erasures", {"customers": ["cust-1"]}, code=202)
        assert [s["store"] for s in e["stores"]] == ["s1"]
        wait_for(lambda: c.get(f"/erasures/{e['id']}")["done"], 30, "erasure confirmed")
        done = c.get(f"/erasures/{e['id']}")
        assert done["stores"][0]["confirmed"] == ["g1"]
        assert c.http.get("/customers/cust-1").status_code == 404

        # the gateway stops: its death certificate (retained) carries its last
        # sequence, the head central measures the tail of the stream against
        hold.touch()
        assert second.wait(60) == 0
        with OutboxReader(tmp_path / "gw" / "outbox.db") as reader:
            last = reader.stats().last_sequence
        wait_for(lambda: db_rows(storage, "SELECT announced FROM heads WHERE gateway = 'g1'")
                 == [(last,)], 20, f"the head {last} announced")
        wait_for(lambda: c.get("/gateways")[0]["watermark"] == last, 20,
                 "everything up to the head stored, no tail gap")
    finally:
        hold.touch()
        second.wait(60)
        assert c.stop() == 0, c.log.read_text()


def test_two_central_instances_share_one_stream(tmp_path: Path, broker: Mosquitto,
                                                key: Path) -> None:
    """MQTT 5 shared subscription: each event goes to one instance, both store."""
    storage = tmp_path / "central.db"
    a = CentralProc(tmp_path, broker, storage=storage, name="central-a", key=key)
    b = CentralProc(tmp_path, broker, storage=storage, name="central-b", key=key)
    try:
        cfg = write_config(tmp_path / "gw.toml", port=broker.port,
                           storage=tmp_path / "gw" / "outbox.db")
        (tmp_path / "gw").mkdir()
        log = tmp_path / "accepted.log"
        driver = start_driver(cfg, start=1, count=600, log=log, drain=True)
        assert driver.wait(120) == 0
        accepted = read_log(log)
        assert len(accepted) == 600

        purchases = "SELECT id FROM events WHERE type = 'storegate.purchase.completed.v1'"

        def all_stored() -> bool:
            return len(db_rows(storage, purchases)) == 600

        try:
            wait_for(all_stored, 60, "every event stored")
        except AssertionError:
            raise AssertionError((db_rows(storage, "SELECT COUNT(*) FROM events"),
                                  a.get("/status"), b.get("/status"),
                                  a.log.read_text()[-2000:], b.log.read_text()[-2000:])
                                 ) from None
        ids = {r[0] for r in db_rows(storage, purchases)}
        assert ids == set(accepted)

        def stored_by(c: CentralProc) -> int:
            return int(c.get("/status")["ingest"].get("stored", 0))

        # every stored event (the purchases, and the gateway's answer to the registry
        # sync central sent when it saw the gateway's key) by exactly one of them
        wait_for(lambda: stored_by(a) + stored_by(b) == db_rows(
            storage, "SELECT COUNT(*) FROM events")[0][0], 20, "the counts to settle")
        assert stored_by(a) > 0 and stored_by(b) > 0  # the stream was split
    finally:
        assert a.stop() == 0, a.log.read_text()
        assert b.stop() == 0, b.log.read_text()


def test_a_central_killed_mid_stream_loses_nothing(tmp_path: Path, broker: Mosquitto,
                                                  key: Path) -> None:
    """Acknowledged only after the commit: SIGKILL central while the gateway publishes,
    start it again with its client id (its persistent session kept what was not
    acknowledged): every accepted event stored, once."""
    storage = tmp_path / "central.db"
    c = CentralProc(tmp_path, broker, storage=storage, name="central-k", key=key)
    cfg = write_config(tmp_path / "gw.toml", port=broker.port,
                       storage=tmp_path / "gw" / "outbox.db")
    (tmp_path / "gw").mkdir()
    log = tmp_path / "accepted.log"
    driver = start_driver(cfg, start=1, count=1500, log=log, drain=True, rate=300)
    purchases = "SELECT COUNT(*) FROM events WHERE type = 'storegate.purchase.completed.v1'"
    wait_for(lambda: db_rows(storage, purchases)[0][0] >= 200, 30, "central ingesting")
    c.kill()
    killed_at = db_rows(storage, purchases)[0][0]
    c = CentralProc(tmp_path, broker, storage=storage, name="central-k", key=key)
    try:
        assert driver.wait(120) == 0
        accepted = read_log(log)
        assert len(accepted) == 1500
        wait_for(lambda: db_rows(storage, purchases)[0][0] == 1500, 60,
                 "every accepted purchase stored")
        assert killed_at < 1500  # the kill was mid-stream
        ids = {r[0] for r in db_rows(
            storage, "SELECT id FROM events WHERE type = 'storegate.purchase.completed.v1'")}
        assert ids == set(accepted)
        [gw] = c.get("/gateways")
        wait_for(lambda: not c.get("/gateways")[0]["open_gaps"], 30, "no gap left")
        assert gw["lost"] == []
    finally:
        assert c.stop() == 0, c.log.read_text()


class _Subscribing:
    """What the source's ``_on_connect`` needs of paho's client: ``subscribe``."""

    def subscribe(self, topics: Any, qos: int = 0) -> tuple[int, int]:
        return mqtt.MQTT_ERR_SUCCESS, 5


def test_the_source_is_connected_once_its_subscription_is_granted() -> None:
    """"connected" (central's /status, what tests and the demo wait for before
    publishing) means the broker granted the subscriptions: at CONNACK alone, messages
    published at once matched no subscription and were lost (a flaky CI run)."""
    source = MqttSource(MqttSettings("127.0.0.1", 1, "central-unit"), lambda b, t: None)
    client = _Subscribing()
    source._on_connect(client, None, None,  # type: ignore[arg-type]
                       ReasonCode(PacketTypes.CONNACK, "Success"), None)
    assert not source.connected.is_set()
    granted = [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")] * 2
    source._on_subscribe(client, None, 5, granted, None)  # type: ignore[arg-type]
    assert source.connected.is_set()

    refused = MqttSource(MqttSettings("127.0.0.1", 1, "central-unit-2"), lambda b, t: None)
    refused._on_connect(client, None, None,  # type: ignore[arg-type]
                        ReasonCode(PacketTypes.CONNACK, "Success"), None)
    refused._on_subscribe(client, None, 5, [  # type: ignore[arg-type]
        ReasonCode(PacketTypes.SUBACK, "Not authorized"), granted[0]], None)
    assert not refused.connected.is_set()
    assert refused.last_error is not None and "Not authorized" in refused.last_error


def test_the_source_acks_only_what_was_stored(broker: Mosquitto) -> None:
    """A storage failure: the batch is not acknowledged and is handed over again, in
    order, until it is stored; nothing is lost or skipped meanwhile."""
    seen: list[str] = []
    calls = [0]

    def handle(batch: Sequence[tuple[str, bytes]], received_at: float) -> None:
        calls[0] += 1
        if calls[0] <= 2:
            raise OSError("disk I/O error (the test's)")
        seen.extend(p.decode() for _, p in batch)

    source = MqttSource(MqttSettings("127.0.0.1", broker.port, "central-src"), handle)
    source.start()
    try:
        assert source.connected.wait(10)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="src-pub",
                          protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for n in range(50):
            pub.publish(f"storegate/v1/s1/g1/events/k{n % 3}", f"m{n}", qos=1
                        ).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        wait_for(lambda: len(seen) == 50, 30, "every message stored after the failures")
        assert seen == [f"m{n}" for n in range(50)]
        assert source.failures == 2 and source.handled == 50
    finally:
        source.stop()
