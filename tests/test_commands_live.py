"""Who may command a gateway: a real `storegate run`, a real mosquitto, forged commands.

An attacker here holds a login on the store broker (any login: the broker is not
trusted with authority) and publishes on command topics. Only commands signed by a key
in the gateway's [trust] config are acted on; identity keys travel sealed to the
gateway, so the broker's database never holds them in clear.
"""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storegate.adapters import gateway_key
from storegate.core import seal
from storegate.core.ble.eid import Identity
from storegate.core.commands import (
    IdentitiesCommand,
    IdentityChange,
    open_identities,
    validate_payload,
)
from storegate.core.trust import TrustPolicy, Verified, load_public_key, verify
from tests.support.central import CENTRAL, Central, topic
from tests.support.gateway_proc import live_status, start_run, storegate, write_config
from tests.support.mosquitto import Mosquitto
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

BOB = Identity("cust-bob", bytes.fromhex("b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b1"), 8, 7000,
               1_790_000_000.0)
CAROL = Identity("cust-carol", bytes.fromhex("ca201ca201ca201ca201ca201ca201c2"), 8, 9000,
                 1_790_000_000.0)
APPLIED = "storegate.gateway.identities_applied.v1"
REJECTED = "storegate.gateway.command_rejected.v1"


class Gw:
    def __init__(self, tmp_path: Path, broker: Mosquitto) -> None:
        self.storage = tmp_path / "state" / "outbox.db"
        self.config = write_config(tmp_path / "gw.toml", port=broker.port,
                                   storage=self.storage)
        self.log = tmp_path / "gw.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = start_run(self.config, stderr=self.log)
        wait_for(lambda: self.status().get("commands") is not None, 20, "gateway up")
        # a tap flushes the port's input when it opens it (pyserial): bytes a test
        # writes to a lane before then are lost
        wait_for(self.taps_open, 20, "the lanes' serial taps open")

    def taps_open(self) -> bool:
        lanes = (self.status().get("pos") or {}).get("lanes") or {}
        return all(d["tap"]["state"] == "open" for lane in lanes.values()
                   for d in lane["devices"] if d.get("tap"))

    def status(self) -> dict[str, Any]:
        try:
            return live_status(self.storage)
        except (OSError, ValueError):
            return {}

    def commands(self) -> dict[str, Any]:
        return dict(self.status().get("commands") or {})

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(30) == 0
        self.proc = None


@pytest.fixture
def gw(tmp_path: Path, broker: Mosquitto) -> Iterator[Gw]:
    g = Gw(tmp_path, broker)
    g.start()
    yield g
    g.stop()


def answers(sub: Subscriber, type_: str) -> list[dict[str, Any]]:
    return [e["data"] for e in sub.of_type(type_)]


def test_only_central_commands_the_gateway(
        gw: Gw, broker: Mosquitto, subscriber: Subscriber) -> None:
    wait_for(lambda: subscriber.retained_state() == "online", 10, "birth certificate")
    seal_key = subscriber.status[-1]["data"]["seal_key"]  # what central reads
    assert seal_key == gw.status()["seal_key"]
    key_file = gw.storage.with_name("outbox.seal.key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    gateways = {"g1": seal_key}
    pub = subscriber.client

    # central enrols bob
    enrol = CENTRAL.identities("upsert", [BOB], gateways=gateways, request_id="enrol-bob")
    pub.publish(topic("identities"), enrol, qos=1)
    wait_for(lambda: answers(subscriber, APPLIED), 10, "bob enrolled")
    assert answers(subscriber, APPLIED)[0]["applied"]
    assert answers(subscriber, APPLIED)[0]["enrolled"] == 1

    attacker = Central(CENTRAL.kid)  # same key id, the attacker's own key
    forged = [
        # a full sync with nobody: would erase every enrolled customer
        (topic("identities"), attacker.sign("identities", {"op": "replace"})),
        # an invented customer, keys sealed properly to the gateway's public key
        (topic("identities"), attacker.identities("upsert", [CAROL], gateways=gateways)),
        # a key the gateway has never heard of
        (topic("identities"), Central("rogue").sign("identities", {"op": "replace"})),
        # central's own command, replayed by someone who captured it
        (topic("identities"), enrol),
        # central's own command (fresh), through the gateway-position trick
        ("storegate/v1/s1/commands/events/identities",
         CENTRAL.sign("identities", {"op": "replace"})),
        # an old command of central's, kept until it is stale
        (topic("identities"), CENTRAL.sign("identities", {"op": "replace"},
                                           issued_at=1_700_000_000.0)),
        # signed for another store
        (topic("identities"), CENTRAL.sign("identities", {"op": "replace"}, store="s2")),
        # unsigned, as main used to accept
        (topic("identities"), json.dumps({"op": "replace"}).encode()),
    ]
    for t, payload in forged:
        pub.publish(t, payload, qos=1)
    wait_for(lambda: gw.commands().get("rejected_total") == len(forged), 15,
             "every forgery rejected")
    assert gw.commands()["rejected_by_reason"] == {
        "bad_signature": 2, "unknown_key": 1, "duplicate": 1, "wrong_topic": 1,
        "expired": 1, "mismatch": 1, "malformed": 1}
    # a fresh, genuine command after the forgeries proves they had their chance
    pub.publish(topic("identities"), CENTRAL.sign(
        "identities", {"op": "remove", "customers": ["nobody"], "request_id": "marker"}),
        qos=1)
    wait_for(lambda: any(a["request_id"] == "marker" for a in answers(subscriber, APPLIED)),
             10, "the marker command applied")
    marker = next(a for a in answers(subscriber, APPLIED) if a["request_id"] == "marker")
    assert marker["enrolled"] == 1  # bob is still there, carol never came
    wait_for(lambda: len(answers(subscriber, REJECTED)) == len(forged), 10, "answers")
    rejected = answers(subscriber, REJECTED)
    by_reason = {a["reason"]: a for a in rejected}
    assert by_reason["bad_signature"]["command_id"] is None  # forgeries are never echoed
    assert by_reason["duplicate"]["command_id"] is not None
    assert all(a["command"] in (None, "identities") for a in rejected)
    assert gw.proc is not None and gw.proc.poll() is None
    shown = storegate("status", "-c", str(gw.config)).stdout
    assert f"seal key  {seal_key}" in shown
    assert "rejected bad_signature: 2" in shown and "central keys: central-test" in shown

    # the gateway restarts: a captured command is still a duplicate
    gw.stop()
    gw.start()
    pub.publish(topic("identities"), enrol, qos=1)
    wait_for(lambda: gw.commands().get("rejected_by_reason", {}).get("duplicate") == 1, 15,
             "the replay rejected after a restart")
    assert "cust-bob" not in gw.log.read_text()  # pseudonyms stay out of the log too


def test_identity_keys_never_sit_in_clear_in_the_broker(
        gw: Gw, broker: Mosquitto, subscriber: Subscriber) -> None:
    wait_for(lambda: subscriber.retained_state() == "online", 10, "birth certificate")
    gateways = {"g1": subscriber.status[-1]["data"]["seal_key"]}
    gw.stop()  # offline: the broker queues the command in its persistent session
    command = CENTRAL.identities("upsert", [BOB, CAROL], gateways=gateways,
                                 request_id="queued")
    subscriber.client.publish(topic("identities"), command, qos=1).wait_for_publish(5)
    broker.stop()  # SIGTERM: mosquitto writes its database
    db = (broker.workdir / "mosquitto.db").read_bytes()
    assert command in db  # the command is in there, queued for the gateway...
    for i in (BOB, CAROL):  # ...but not the keys, in any form
        assert i.identity_key not in db
        assert i.identity_key.hex().encode() not in db
    broker.start()
    gw.start()
    wait_for(lambda: any(a["request_id"] == "queued" for a in answers(subscriber, APPLIED)),
             20, "the queued command applied when the gateway came back")
    [done] = [a for a in answers(subscriber, APPLIED) if a["request_id"] == "queued"]
    assert done["applied"] and done["enrolled"] == 2


def test_keys_cli_makes_commands_the_gateway_accepts(tmp_path: Path) -> None:
    key = tmp_path / "central.key"
    made = storegate("keys", "new-central", "--out", str(key), "--kid", "central-9")
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert 'kid = "central-9"' in made.stdout
    public = storegate("keys", "public", str(key)).stdout.strip()
    assert f'public_key = "{public}"' in made.stdout
    again = storegate("keys", "new-central", "--out", str(key), "--kid", "central-9")
    assert again.returncode == 2 and "never overwritten" in again.stderr

    cfg = write_config(tmp_path / "gw.toml", port=1, storage=tmp_path / "s" / "outbox.db")
    key_file = tmp_path / "s" / "outbox.seal.key"
    none_yet = storegate("keys", "gateway", "-c", str(cfg))  # read-only: never makes one
    assert none_yet.returncode == 2 and "first start" in none_yet.stderr
    assert not key_file.exists()
    made_by_gateway = gateway_key.load_or_create(key_file)  # as the gateway's start does
    seal_key = storegate("keys", "gateway", "-c", str(cfg)).stdout.strip()
    assert seal_key == seal.public_text(made_by_gateway.public_key())
    payload = tmp_path / "upsert.json"
    payload.write_text(json.dumps({"op": "upsert", "identities": [{
        "customer": BOB.customer, "identity_key": BOB.identity_key.hex(),
        "rotation_exponent": 8, "beacon_time_at_registration": 7000,
        "registered_at": 1_790_000_000.0}]}))
    signed = storegate("keys", "sign", "--key", str(key), "--kid", "central-9", "--store",
                       "s1", "--seal-to", f"g1={seal_key}", "identities", str(payload))
    assert signed.returncode == 0, signed.stderr
    assert "topic: storegate/v1/s1/commands/identities" in signed.stderr
    assert BOB.identity_key.hex() not in signed.stdout

    # what the gateway does with it: verify with the public key, open with its seal key
    checked = verify(signed.stdout.strip().encode(), name="identities", store="s1",
                     policy=TrustPolicy({"central-9": load_public_key(public)}, 60, 60),
                     now=time.time())
    assert isinstance(checked, Verified)
    cmd = validate_payload("identities", checked.payload, now=checked.issued_at)
    assert isinstance(cmd, IdentitiesCommand)
    gkey = gateway_key.load_or_create(tmp_path / "s" / "outbox.seal.key")
    opened = open_identities(cmd, key=gkey, store="s1", gateway="g1")
    assert isinstance(opened, IdentityChange) and opened.identities == (BOB,)

    for bad_args, message in (
        (["--store", "s1", "identities", str(payload)], "--seal-to"),
        (["--store", "s1", "self-destruct", str(payload)], "unknown command"),
        (["--store", "no/such", "replay", str(payload)], "not a store id"),
        (["--store", "s1", "replay", str(tmp_path / "missing.json")], "missing.json"),
    ):
        r = storegate("keys", "sign", "--key", str(key), "--kid", "central-9", *bad_args)
        assert r.returncode == 2 and message in r.stderr, (bad_args, r.stderr)
        assert "Traceback" not in r.stderr
