"""The customer registry, live: a real `storegate run`, a real mosquitto, signed commands.

Central sends customers with consents and sealed identities; the gateway answers each
command with ``gateway.customers_applied``. Presence consent withdrawn takes effect at
once (the key leaves the identity store's file), an older version never regresses what
the box holds, and the registry survives a restart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from storegate.core import seal
from storegate.core.ble.eid import Identity
from storegate.core.commands import open_customers, validate_payload
from storegate.core.personal.registry import CustomersChange, CustomersCommand
from storegate.core.trust import TrustPolicy, Verified, load_public_key, verify
from tests.support.central import CENTRAL, customer_record, topic
from tests.support.gateway_proc import storegate, write_config
from tests.support.mosquitto import Mosquitto
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for
from tests.test_commands_live import Gw, answers

pytestmark = pytest.mark.e2e

APPLIED = "storegate.gateway.customers_applied.v1"
IDENTITIES_APPLIED = "storegate.gateway.identities_applied.v1"
ALICE = Identity("cust-alice", bytes.fromhex("a11cea11cea11cea11cea11cea11ce01"), 8, 7000,
                 1_790_000_000.0)
LOYAL = "ps1:" + "a1" * 16


# Presence on (scanner nodes: none report here): withdrawals go through the pipeline.
PRESENCE = """
[sources.scanner_nodes]
enabled = true
[[presence.zones]]
id = "entrance"
scanners = ["node-a"]
"""


@pytest.fixture(params=["identity-store-only", "presence"])
def gw(request: pytest.FixtureRequest, tmp_path: Path, broker: Mosquitto) -> Iterator[Gw]:
    g = Gw(tmp_path, broker)
    if request.param == "presence":
        write_config(g.config, port=broker.port, storage=g.storage, extra=PRESENCE)
    g.start()
    yield g
    g.stop()


def answer(sub: Subscriber, request_id: str) -> dict[str, Any]:
    wait_for(lambda: any(a["request_id"] == request_id for a in answers(sub, APPLIED)),
             15, f"the answer to {request_id}")
    [a] = [a for a in answers(sub, APPLIED) if a["request_id"] == request_id]
    return a


def test_customers_consent_and_versions(gw: Gw, broker: Mosquitto,
                                        subscriber: Subscriber) -> None:
    wait_for(lambda: subscriber.retained_state() == "online", 10, "birth certificate")
    gateways = {"g1": subscriber.status[-1]["data"]["seal_key"]}
    pub = subscriber.client
    identities_db = gw.storage.with_name("outbox.identities.db")

    def send(request_id: str, *records: dict[str, Any], op: str = "upsert") -> dict[str, Any]:
        pub.publish(topic("customers"), CENTRAL.customers(
            op, records, gateways=gateways, request_id=request_id), qos=1)
        return answer(subscriber, request_id)

    # alice consents to presence and gives her identity; bob only to marketing
    first = send("first", customer_record("cust-alice", 1, identity=ALICE,
                                          loyalty_ids=[LOYAL]),
                 customer_record("cust-bob", 1, presence=False))
    assert first["applied"] and first["error"] is None
    assert (first["received"], first["stale"], first["removed"]) == (2, 0, 0)
    assert (first["known"], first["enrolled"]) == (2, 1)
    assert ALICE.identity_key in identities_db.read_bytes()
    presence = "presence" in gw.config.read_text()
    if presence:  # the pipeline's own count, in the status file
        wait_for(lambda: (gw.status().get("presence") or {}).get("enrolled") == 1, 10,
                 "alice enrolled in the pipeline")

    # alice withdraws presence consent: her key leaves the box at once
    withdrawn = send("withdrawn", customer_record("cust-alice", 2, presence=False))
    assert withdrawn["applied"] and (withdrawn["known"], withdrawn["enrolled"]) == (2, 0)
    assert ALICE.identity_key not in identities_db.read_bytes()
    if presence:
        wait_for(lambda: gw.status()["presence"]["enrolled"] == 0, 10, "alice withdrawn")
    wal = identities_db.with_name(identities_db.name + "-wal")
    assert not wal.exists() or ALICE.identity_key not in wal.read_bytes()

    # central's older message arrives late: stale, nothing regressed
    late = send("late", customer_record("cust-alice", 1, identity=ALICE))
    assert late["applied"] and late["stale"] == 1
    assert (late["known"], late["enrolled"]) == (2, 0)
    assert ALICE.identity_key not in identities_db.read_bytes()

    # the older identities command cannot enrol her either: consent is decided once
    pub.publish(topic("identities"), CENTRAL.identities(
        "upsert", [ALICE], gateways=gateways, request_id="legacy"), qos=1)
    wait_for(lambda: any(a["request_id"] == "legacy" for a in answers(
        subscriber, IDENTITIES_APPLIED)), 15, "the identities answer")
    [legacy] = [a for a in answers(subscriber, IDENTITIES_APPLIED)
                if a["request_id"] == "legacy"]
    assert legacy["applied"] and legacy["enrolled"] == 0
    assert ALICE.identity_key not in identities_db.read_bytes()

    # the registry survives a restart: the duplicate is still stale, bob goes on replace
    gw.stop()
    gw.start()
    again = send("after-restart", customer_record("cust-alice", 2, identity=ALICE),
                 op="replace")
    assert again["applied"] and (again["stale"], again["removed"]) == (1, 1)
    assert (again["known"], again["enrolled"]) == (1, 0)
    assert gw.commands()["rejected_total"] == 0
    assert "cust-alice" not in gw.log.read_text()  # pseudonyms stay out of the log


def test_keys_cli_seals_a_customers_command(tmp_path: Path) -> None:
    key = tmp_path / "central.key"
    assert storegate("keys", "new-central", "--out", str(key), "--kid", "c9").returncode == 0
    public = storegate("keys", "public", str(key)).stdout.strip()
    gkey = X25519PrivateKey.generate()
    payload = tmp_path / "customers.json"
    payload.write_text(json.dumps({"op": "upsert", "customers": [
        customer_record("cust-alice", 1, identity=ALICE), customer_record("cust-bob", 1)]}))
    signed = storegate("keys", "sign", "--key", str(key), "--kid", "c9", "--store", "s1",
                       "--seal-to", f"g1={seal.public_text(gkey.public_key())}",
                       "customers", str(payload))
    assert signed.returncode == 0, signed.stderr
    assert "topic: storegate/v1/s1/commands/customers" in signed.stderr
    assert ALICE.identity_key.hex() not in signed.stdout
    checked = verify(signed.stdout.strip().encode(), name="customers", store="s1",
                     policy=TrustPolicy({"c9": load_public_key(public)}, 60, 60),
                     now=time.time())
    assert isinstance(checked, Verified)
    cmd = validate_payload("customers", checked.payload, now=checked.issued_at)
    assert isinstance(cmd, CustomersCommand)
    opened = open_customers(cmd, key=gkey, store="s1", gateway="g1")
    assert isinstance(opened, CustomersChange)
    assert dict(opened.identities) == {"cust-alice": ALICE}
    unsealed = storegate("keys", "sign", "--key", str(key), "--kid", "c9", "--store", "s1",
                         "customers", str(payload))
    assert unsealed.returncode == 2 and "--seal-to" in unsealed.stderr
