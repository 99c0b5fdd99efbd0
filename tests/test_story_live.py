"""Issue 11's story, end to end on real parts: a real `storegate run` (HTTP on a free
port), a real mosquitto, a pty lane (printer and scanner), an ESP32 scanner node
publishing a phone's Eddystone-EID adverts over MQTT, the customer's app on Server-Sent
Events, and central played by this test (signed commands, the identity key sealed to
the gateway's seal key from its birth certificate).

1. Central enrols a customer (presence, marketing and staff_view consent, a loyalty
   pseudonym, a sealed identity) and sends a store_entered campaign; both answered.
2. The customer walks in: their phone is heard at the entrance, then in the lane's
   checkout zone.
3. Store and zone visits are published; an offer is issued to them.
4. Their app receives the offer live, with its token, which verifies with the offer key
   of the gateway's birth certificate.
5. The token is scanned at the till, the receipt printed: reserved, a purchase stitched
   to the customer by the token (their store visit, the offer redeemed), redeemed; the
   app is told.
6. They leave: the store visit's exit carries its outcome (converted, basket, time to
   serve, the offer redeemed).
7. Central saw it all in causal order, with no gap in the gateway's sequence.
8. Central erases them: answered, and no byte of them is left in the gateway's storage
   (running and stopped); their app inbox is empty.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from storegate.core.ble.eid import Identity
from storegate.core.personal.tokens import VerifiedToken, verify_token
from storegate.core.pseudonyms import pseudonym
from storegate.core.trust import load_public_key
from storegate.sim.lane import escpos_job, random_receipt
from tests.support.bytescan import needles_for, scan
from tests.support.central import CENTRAL, customer_record, topic
from tests.support.gateway_proc import write_config
from tests.support.http import app_http_toml, customer_token
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.pty_lane import PtyDevice
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for
from tests.test_app_channel_live import Stream
from tests.test_commands_live import Gw
from tests.test_erasure_live import lane, one
from tests.test_pos_live import KEY
from tests.test_presence_live import Node, eid_advert

pytestmark = pytest.mark.e2e

CUSTOMER = "cust-story-maria"
CARD = "LOY000031337"
IK = bytes.fromhex("5107a5107a5107a5107a5107a5107a01")
CAMPAIGN = {"id": "welcome", "version": 1, "trigger": {"kind": "store_entered"},
            "priority": 50, "control_share": 0.0, "offer_ttl_s": 600,
            "content": {"title": "Welcome back", "text": "10 % off today",
                        "discount": {"kind": "percent", "value": 10}}}
NODES = {"entrance": "node-a", "checkout": "node-b"}

ENTERED = "storegate.visit.entered.v1"
EXITED = "storegate.visit.exited.v1"
ISSUED = "storegate.offer.issued.v1"
RESERVED = "storegate.offer.reserved.v1"
REDEEMED = "storegate.offer.redeemed.v1"
PURCHASE = "storegate.purchase.completed.v1"


def config(http_port: int) -> str:
    # presence shortened (the defaults are 20 s / 15 s / 10 s) to keep the story short
    return f"""
[sources.scanner_nodes]
enabled = true
[presence]
min_presence_s = 2
zone_min_presence_s = 2
exit_after_s = 4
[[presence.zones]]
id = "entrance"
scanners = ["{NODES['entrance']}"]
[[presence.zones]]
id = "checkout"
scanners = ["{NODES['checkout']}"]
{app_http_toml(http_port)}
"""


class Phone(threading.Thread):
    """The customer's phone advertising its EID, heard by the node of the zone it is in
    (none: it has left). Each advert is computed from the identity key at the current
    time, as the phone computes it."""

    def __init__(self, node: Node, identity: Identity) -> None:
        super().__init__(daemon=True)
        self.node, self.identity = node, identity
        self.zone: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):  # a phone advertises a few times a second
            zone = self.zone
            if zone is not None:
                self.node.raw(NODES[zone], [eid_advert(self.identity, -55)])


def mine(sub: Subscriber, type_: str, **match: Any) -> list[dict[str, Any]]:
    """This customer's events of a type (data fields matching ``match``)."""
    return [e for e in sub.of_type(type_) if e["data"].get("customer") == CUSTOMER
            and all(e["data"].get(k) == v for k, v in match.items())]


def the(sub: Subscriber, type_: str, what: str, timeout: float = 30,
        **match: Any) -> dict[str, Any]:
    wait_for(lambda: mine(sub, type_, **match), timeout, what)
    [event] = mine(sub, type_, **match)
    return event


def test_a_customer_is_enrolled_walks_in_gets_an_offer_redeems_it_and_is_erased(
        tmp_path: Path, broker: Mosquitto, subscriber: Subscriber) -> None:
    started = time.monotonic()
    printer = PtyDevice(tmp_path / "dev", "usb-Epson_TM-T20-if00")
    scanner = PtyDevice(tmp_path / "dev", "usb-Zebra_DS2208-if00")
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    gw = Gw(tmp_path, broker)
    # the lane's buyers queue and pay in the checkout zone (a key of the lane's table)
    till = lane(printer, scanner).replace('id = "lane-1"\n',
                                          'id = "lane-1"\ncheckout_zone = "checkout"\n', 1)
    write_config(gw.config, port=broker.port, storage=gw.storage,
                 extra=till + config(http_port))
    state = gw.storage.parent
    identity = Identity(CUSTOMER, IK, 4, 1000, time.time() - 3600)
    card = pseudonym(KEY, "loyalty", CARD)
    traces = needles_for(CUSTOMER, loyalty=[card], key=IK)
    node = Node(broker.port)
    phone = Phone(node, identity)
    app: Stream | None = None
    gw.start()
    try:
        wait_for(lambda: subscriber.retained_state() == "online", 15, "birth certificate")
        birth = subscriber.status[-1]["data"]
        pub = subscriber.client

        # 1. central enrols the customer and sends a campaign
        pub.publish(topic("customers"), CENTRAL.customers("upsert", [customer_record(
            CUSTOMER, 1, identity=identity, loyalty_ids=[card])],
            gateways={"g1": birth["seal_key"]}, request_id="enrol"), qos=1)
        enrolled = one(subscriber, "storegate.gateway.customers_applied.v1", "enrol")
        assert enrolled["applied"] and enrolled["known"] == 1, enrolled
        pub.publish(topic("campaigns"), CENTRAL.sign("campaigns", {
            "op": "upsert", "request_id": "welcome", "campaigns": [CAMPAIGN]}), qos=1)
        campaigns = one(subscriber, "storegate.gateway.campaigns_applied.v1", "welcome")
        assert campaigns["applied"] and campaigns["active"] == 1, campaigns
        wait_for(lambda: gw.status()["presence"]["enrolled"] == 1, 10,
                 "the sealed identity enrolled")

        # the customer's app is open before they arrive
        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
        wait_for(up, 20, "the HTTP surface")
        app = Stream(base, CUSTOMER).start()
        wait_for(lambda: app.status == 200, 10, "the app's stream open")

        # 2-3. they walk in: the entrance, an offer, then the checkout zone
        phone.zone = "entrance"
        phone.start()
        store_visit = the(subscriber, ENTERED, "the store visit entered", zone=None)
        the(subscriber, ENTERED, "the entrance zone visit", zone="entrance")
        issued = the(subscriber, ISSUED, "the offer issued")
        offer = issued["data"]
        offer_id = offer["offer_id"]
        assert offer["campaign"] == "welcome" and offer["trigger"] == "store_entered"
        assert offer["visit_id"] == store_visit["data"]["visit_id"]
        phone.zone = "checkout"
        at_checkout = the(subscriber, ENTERED, "the checkout zone visit", zone="checkout")

        # 4. the app has the offer live, its token verifies with the birth certificate's key
        wait_for(lambda: offer_id in app.offers(), 15, "the offer on the phone")
        [pushed] = [d for _, kind, d in app.got if kind == "offer"]
        token = pushed["token"]
        assert pushed["title"] == "Welcome back" and pushed["text"] == "10 % off today"
        offer_key = birth["offer_key"]
        verified = verify_token(token, keys={offer_key["kid"]: load_public_key(
            offer_key["public_key"])}, store="s1", now=time.time(), customer=CUSTOMER)
        assert isinstance(verified, VerifiedToken), verified
        assert verified.token_hex == offer_id
        other = verify_token(token, keys={offer_key["kid"]: load_public_key(
            offer_key["public_key"])}, store="s1", now=time.time(), customer="cust-other")
        assert not isinstance(other, VerifiedToken)  # the check can fail

        # 5. at the till: the token scanned from the phone, then the receipt printed
        scanner.write(token.encode() + b"\r")
        reserved = the(subscriber, RESERVED, "the token reserved", offer_id=offer_id)
        assert reserved["data"]["lane"] == "lane-1"
        receipt = dataclasses.replace(random_receipt(random.Random(11), 7001),
                                      loyalty=None, offers=())
        printer.write(escpos_job(receipt))
        purchase = the(subscriber, PURCHASE, "the purchase stitched")
        bought = purchase["data"]
        assert bought["attribution"]["method"] == "token", bought["attribution"]
        assert bought["visit_id"] == store_visit["data"]["visit_id"]
        assert offer_id in bought["offers_redeemed"]
        assert bought["total_minor"] == receipt.total_minor
        assert bought["loyalty_id"] is None  # the token alone
        redeemed = the(subscriber, REDEEMED, "the offer redeemed", offer_id=offer_id)
        assert redeemed["data"]["transaction_id"] == reserved["data"]["transaction_id"]
        wait_for(lambda: any(kind == "redemption" and d["offer_id"] == offer_id
                             and d["state"] == "redeemed" for _, kind, d in app.got),
                 15, "the redemption on the phone")

        # 6. they leave: the phone goes unheard
        phone.zone = None
        exit_ = the(subscriber, EXITED, "the store visit exited", timeout=30, zone=None)
        outcome = exit_["data"]
        assert outcome["visit_id"] == store_visit["data"]["visit_id"]
        assert outcome["converted"] is True
        assert outcome["basket_minor"] == receipt.total_minor
        assert outcome["time_to_serve_s"] is not None and outcome["time_to_serve_s"] > 0
        assert offer_id in outcome["offers_redeemed"]

        # 7. central saw it in causal order, and every sequence number of the run
        answer = next(e for e in subscriber.of_type("storegate.gateway.customers_applied.v1")
                      if e["data"]["request_id"] == "enrol")
        chain = [answer, store_visit, issued, at_checkout, reserved, purchase, redeemed, exit_]
        seqs = [int(e["sequence"]) for e in chain]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs

        # 8. erasure: the box holds them everywhere until central says otherwise
        app.stop()
        held = {h.needle for h in scan(state, traces)}
        assert {"customer", "loyalty0", "key"} <= held, held  # the scan can fail
        pub.publish(topic("erase"), CENTRAL.sign("erase", {
            "customers": [CUSTOMER], "request_id": "erase"}), qos=1)
        erased = one(subscriber, "storegate.gateway.erased.v1", "erase")
        assert erased["applied"] and erased["error"] is None, erased
        assert erased["customers"] == 1 and erased["registry_records"] == 1
        assert erased["identity_keys"] == 1
        assert scan(state, traces) == [], "erased customer still on the box (running)"
        mine_now = {"Authorization": f"Bearer {customer_token(CUSTOMER, issued_at=time.time())}"}
        offers = httpx.get(f"{base}/app/offers", headers=mine_now, timeout=5)
        assert offers.status_code == 200 and offers.json()["offers"] == [], offers.text
        assert httpx.get(f"{base}/app/offers/{offer_id}/qr.png", headers=mine_now,
                         timeout=5).status_code == 404
        last = int(next(e for e in subscriber.of_type("storegate.gateway.erased.v1")
                        if e["data"]["request_id"] == "erase")["sequence"])
        wait_for(lambda: not subscriber.gaps(last), 15, "every sequence up to the erasure")
        assert gw.commands()["rejected_total"] == 0
    finally:
        phone.stop.set()
        if phone.is_alive():
            phone.join(5)
        node.close()
        if app is not None:
            app.stop()
        gw.stop()
        for dev in (printer, scanner):
            dev.close()

    assert scan(state, traces) == [], "erased customer still on the box (stopped)"
    log = gw.log.read_text()
    assert "Traceback" not in log
    for trace in (CUSTOMER, card, IK.hex()):
        assert trace not in log
    print(f"\nthe story, enrolment to erasure and stop: {time.monotonic() - started:.1f} s")
