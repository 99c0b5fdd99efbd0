"""A store's registry sync with a real gateway and a real ``storegate central`` (one
mosquitto): pending while the gateway is away (the broker holds the command for its
session), synced when the gateway comes back and answers ``customers_applied``; and a
gateway that refuses the sync (central sealed it to a key the box does not hold) shows
failed with the gateway's reason, to be sent again after a backoff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from storegate.core import seal
from storegate.core.central import sync
from tests.support.gateway_proc import start_driver, write_config
from tests.support.mosquitto import Mosquitto
from tests.support.waiting import wait_for
from tests.test_central_live import T0, CentralProc, answered, key  # noqa: F401 - fixture
from tests.test_central_storage import status

pytestmark = pytest.mark.e2e

APPLIED = "storegate.gateway.customers_applied.v1"


def _sync(c: CentralProc) -> dict[str, Any]:
    out: dict[str, Any] = c.get("/stores/s1/sync")
    return out


def test_a_store_is_synced_when_its_gateway_answers(tmp_path: Path, broker: Mosquitto,
                                                    key: Path) -> None:  # noqa: F811
    cfg = write_config(tmp_path / "gw.toml", port=broker.port,
                       storage=tmp_path / "gw" / "outbox.db")
    (tmp_path / "gw").mkdir()
    log = tmp_path / "accepted.log"
    # the gateway runs once (its session subscribes to its commands) and stops: its
    # death certificate, retained, carries its seal key
    assert start_driver(cfg, start=1, count=1, log=log, drain=True).wait(60) == 0
    c = CentralProc(tmp_path, broker, storage=tmp_path / "central.db", name="central-s",
                    key=key)
    hold = tmp_path / "hold"
    driver = None
    try:
        wait_for(lambda: c.http.get("/stores/s1/sync").status_code == 200
                 and _sync(c)["state"] != "none", 20, "the registry sent")
        pending = _sync(c)
        [gw] = pending["gateways"]
        # sent and acknowledged by the broker, but the gateway has not answered
        assert (pending["state"], gw["state"], gw["answered_at"]) == ("pending", "pending",
                                                                      None)
        assert c.get("/gateways")[0]["state"] == "offline"
        [cid] = gw["commands"]
        assert c.get(f"/commands/{cid}")["sent_at"] is not None
        assert answered(c, cid, APPLIED) is None
        # the gateway comes back: the broker hands it the command, it answers
        driver = start_driver(cfg, start=2, count=1, log=log, drain=True, hold=hold)
        wait_for(lambda: _sync(c)["state"] == "synced", 60, "synced on the answer")
        done = _sync(c)["gateways"][0]
        assert done["state"] == "synced" and done["reason"] is None
        assert done["answered_at"] is not None and done["answered_at"] >= gw["sent_at"]
        reply = answered(c, done["commands"][-1], APPLIED)
        assert reply is not None and reply["applied"] and reply["gateway"] == "g1"
        assert c.get("/gateways")[0]["sync"]["state"] == "synced"
    finally:
        hold.touch()
        if driver is not None:
            assert driver.wait(60) == 0
        assert c.stop() == 0, c.log.read_text()
    # the tombstone key central made beside its database is private and never logged
    tomb = tmp_path / "central.db.tombstone-key"
    assert tomb.stat().st_mode & 0o777 == 0o600
    assert tomb.read_text().strip() not in c.log.read_text()


def test_a_gateway_that_refuses_the_sync_shows_failed_with_its_reason(
        tmp_path: Path, broker: Mosquitto, key: Path) -> None:  # noqa: F811
    cfg = write_config(tmp_path / "gw.toml", port=broker.port,
                       storage=tmp_path / "gw" / "outbox.db")
    (tmp_path / "gw").mkdir()
    hold = tmp_path / "hold"
    c = CentralProc(tmp_path, broker, storage=tmp_path / "central.db", name="central-r",
                    key=key)
    driver = start_driver(cfg, start=1, count=1, log=tmp_path / "accepted.log",
                          drain=True, hold=hold)
    try:
        wait_for(lambda: c.http.get("/stores/s1/sync").status_code == 200
                 and _sync(c)["state"] == "synced", 60, "the first sync answered")
        # a customer whose presence identity travels sealed to the gateway's key
        consent = {"granted": True, "at": T0, "source": "app", "store": "s1",
                   "proof": {"method": "app_toggle", "reference": "app/privacy#3"}}
        c.send("PUT", "/customers/cust-1", {
            "consents": {"presence": consent, "marketing": consent},
            "loyalty_ids": [], "profile": {"greeting_name": "Alex"},
            "identity": {"customer": "cust-1", "identity_key": "a1" * 16,
                         "rotation_exponent": 8, "beacon_time_at_registration": 7000,
                         "registered_at": 1_790_000_000.0}})
        # central is told a key the box does not hold (a stale or forged certificate):
        # it syncs the store sealed to that key, and the real gateway cannot open it
        topic, payload = status(seal.public_text(X25519PrivateKey.generate().public_key()))
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="forger",
                          protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        wait_for(lambda: _sync(c)["state"] == "failed", 60, "the refusal recorded")
        failed = _sync(c)
        [gw] = failed["gateways"]
        assert gw["state"] == "failed" and gw["reason"].startswith("unsealable"), gw
        assert gw["attempts"] == 1
        assert gw["retry_at"] == gw["sent_at"] + sync.RETRY_FIRST_S
        [cid] = gw["commands"]
        [refusal] = [a for a in c.get(f"/commands/{cid}")["answers"]
                     if a["type"] == "storegate.gateway.command_rejected.v1"]
        assert refusal["gateway"] == "g1" and not refusal["applied"]
        assert refusal["data"]["reason"] == "unsealable"
        assert answered(c, cid, APPLIED) is None
        assert c.get("/gateways")[0]["sync"]["state"] == "failed"
    finally:
        hold.touch()
        assert driver.wait(60) == 0
        assert c.stop() == 0, c.log.read_text()
