"""Erasure, live: a real `storegate run` with a pty lane, a real mosquitto, signed commands.

Central enrols a customer (identity key, loyalty card); the customer's card is scanned
at the lane and a receipt printed, so the box holds them in its registry, identity
store and outbox (published, kept for replay). Central erases them by signed command
and waits for ``gateway.erased``; a replay then brings back the same ids and sequences,
redacted. The gateway is stopped and every file of its storage directory is scanned
byte by byte (databases, WAL, shared memory, status file, keys): neither the customer
id, nor the loyalty pseudonym, nor the identity key (raw or hex) is left. The other
customer is untouched. With presence off and on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from storegate.core.ble.eid import Identity
from storegate.core.pseudonyms import pseudonym
from storegate.sim.lane import escpos_job
from tests.support.bytescan import files_scanned, needles_for, scan
from tests.support.central import CENTRAL, customer_record, topic
from tests.support.gateway_proc import write_config
from tests.support.mosquitto import Mosquitto
from tests.support.pty_lane import PtyDevice
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for
from tests.test_commands_live import Gw, answers
from tests.test_pos_live import KEY, TEMPLATE, receipt_with_loyalty

pytestmark = pytest.mark.e2e

ERASED = "storegate.gateway.erased.v1"
CUSTOMERS_APPLIED = "storegate.gateway.customers_applied.v1"
ALICE = Identity("cust-erase-alice", bytes.fromhex("e5a5e5a5e5a5e5a5e5a5e5a5e5a5e501"), 8,
                 7000, 1_790_000_000.0)
BOB = Identity("cust-keep-bob", bytes.fromhex("b0b0b0b0b0b0b0b0b0b0b0b0b0b0b002"), 8, 7000,
               1_790_000_000.0)


def lane(printer: PtyDevice, scanner: PtyDevice) -> str:
    return f"""
[[pos.lanes]]
id = "lane-1"
template = "{TEMPLATE}"
loyalty_pattern = '^LOY\\d{{9}}$'
[[pos.lanes.devices]]
role = "printer"
dialect = "escpos"
port = "{printer.path}"
[[pos.lanes.devices]]
role = "scanner"
dialect = "scanner"
port = "{scanner.path}"
encoding = "ascii"
[privacy]
pseudonym_key = "{KEY.hex()}"
"""


# Presence on (scanner nodes: none report here): the keys leave the pipeline too.
PRESENCE = """
[sources.scanner_nodes]
enabled = true
[[presence.zones]]
id = "entrance"
scanners = ["node-a"]
"""


def one(sub: Subscriber, type_: str, request_id: str) -> dict[str, Any]:
    wait_for(lambda: any(a["request_id"] == request_id for a in answers(sub, type_)), 30,
             f"the answer to {request_id}")
    [a] = [a for a in answers(sub, type_) if a["request_id"] == request_id]
    return a


@pytest.mark.parametrize("presence", [False, True], ids=["presence-off", "presence-on"])
def test_erase_leaves_no_byte_of_the_customer_on_the_box(
        tmp_path: Path, broker: Mosquitto, subscriber: Subscriber, presence: bool) -> None:
    printer = PtyDevice(tmp_path / "dev", "usb-Epson_TM-T20-if00")
    scanner = PtyDevice(tmp_path / "dev", "usb-Zebra_DS2208-if00")
    gw = Gw(tmp_path, broker)
    write_config(gw.config, port=broker.port, storage=gw.storage,
                 extra=lane(printer, scanner) + (PRESENCE if presence else ""))
    state = gw.storage.parent
    r = receipt_with_loyalty(40, 4242)
    card = pseudonym(KEY, "loyalty", r.loyalty)
    other_card = pseudonym(KEY, "loyalty", "LOY000000002")
    alice = needles_for(ALICE.customer, loyalty=[card], key=ALICE.identity_key)
    gw.start()
    try:
        wait_for(lambda: subscriber.retained_state() == "online", 10, "birth certificate")
        gateways = {"g1": subscriber.status[-1]["data"]["seal_key"]}
        pub = subscriber.client
        pub.publish(topic("customers"), CENTRAL.customers("upsert", [
            customer_record(ALICE.customer, 1, identity=ALICE, loyalty_ids=[card]),
            customer_record(BOB.customer, 1, identity=BOB, loyalty_ids=[other_card])],
            gateways=gateways, request_id="enrol"), qos=1)
        enrolled = one(subscriber, CUSTOMERS_APPLIED, "enrol")
        assert enrolled["applied"] and enrolled["known"] == 2
        if presence:
            wait_for(lambda: gw.status()["presence"]["enrolled"] == 2, 10, "both enrolled")

        # alice at the lane: her card, then her receipt
        scanner.write(r.loyalty.encode() + b"\r")
        printer.write(escpos_job(r))
        wait_for(lambda: subscriber.of_type("storegate.purchase.completed.v1"), 20,
                 "the purchase")
        [scan_event] = subscriber.of_type("storegate.pos.scanned.v1")
        assert scan_event["data"]["value"] == card
        [purchase] = subscriber.of_type("storegate.purchase.completed.v1")
        assert purchase["data"]["loyalty_id"] == card
        # published and acknowledged: kept for replay; the box holds her everywhere
        wait_for(lambda: gw.status()["outbox"]["depth"] == 0, 10, "all acknowledged")
        held = {h.needle for h in scan(state, alice)}
        assert {"customer", "loyalty0", "key"} <= held  # the scan can fail

        pub.publish(topic("erase"), CENTRAL.sign("erase", {
            "customers": [ALICE.customer], "request_id": "erase-alice"}), qos=1)
        erased = one(subscriber, ERASED, "erase-alice")
        assert erased["applied"] and erased["error"] is None, erased
        assert erased["customers"] == 1
        assert erased["registry_records"] == 1 and erased["identity_keys"] == 1
        assert erased["outbox_replay_redacted"] >= 2  # the scan and the purchase
        assert erased["files_rewritten"] >= 3
        assert ALICE.customer not in json.dumps(erased)  # the answer names nobody
        # while the gateway runs: WAL, shared memory and status file included
        names = files_scanned(state)
        assert {"outbox.db-wal", "outbox.db.status.json"} <= set(names)
        assert scan(state, alice) == [], "erased customer still on the box (running)"
        # central asks for a replay: the same ids and sequences come back, redacted
        last = max(int(scan_event["sequence"]), int(purchase["sequence"]))
        pub.publish(topic("replay"), CENTRAL.sign("replay", {
            "gateway": "g1", "from_sequence": 1, "to_sequence": last}), qos=1)

        def copies(e: dict[str, Any]) -> list[dict[str, Any]]:
            with subscriber.lock:
                return [json.loads(b) for b in subscriber.events[e["id"]]]
        wait_for(lambda: len(copies(scan_event)) > 1 and len(copies(purchase)) > 1, 20,
                 "the replayed copies")
        scan_again, purchase_again = copies(scan_event)[-1], copies(purchase)[-1]
        assert scan_again["sequence"] == scan_event["sequence"]
        assert scan_again["data"]["value"] is None
        assert purchase_again["sequence"] == purchase["sequence"]
        assert purchase_again["data"]["loyalty_id"] is None
        assert purchase_again["data"]["customer"] is None
        assert purchase_again["data"]["total_minor"] == purchase["data"]["total_minor"]
        assert gw.commands()["rejected_total"] == 0
        if presence:
            wait_for(lambda: gw.status()["presence"]["enrolled"] == 1, 10, "alice withdrawn")
            assert erased["tracking_states"] == 1
        # an older identities command for her, signed before the erasure and still in its
        # time window (it waited in the broker), cannot bring her back
        pub.publish(topic("identities"), CENTRAL.identities(
            "upsert", [ALICE], gateways=gateways, request_id="late",
            issued_at=time.time() - 60), qos=1)
        wait_for(lambda: any(a["request_id"] == "late" for a in answers(
            subscriber, "storegate.gateway.identities_applied.v1")), 10, "late answered")
        [late] = [a for a in answers(subscriber, "storegate.gateway.identities_applied.v1")
                  if a["request_id"] == "late"]
        assert late["applied"] and late["enrolled"] == 1  # bob only
        assert scan(state, alice) == [], "an erased customer came back"
    finally:
        gw.stop()
        for dev in (printer, scanner):
            dev.close()

    # stopped: every file the box wrote, byte by byte
    assert scan(state, alice) == [], "erased customer still on the box (stopped)"
    bob = needles_for(BOB.customer, key=BOB.identity_key)
    assert {h.needle for h in scan(state, bob)} >= {"customer", "key"}  # untouched
    log = gw.log.read_text()
    assert ALICE.customer not in log and card not in log  # nor in the log
