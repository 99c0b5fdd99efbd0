"""The people's pages in a real browser: Playwright drives Debian's chromium
(``/usr/bin/chromium``; a browser is never downloaded) against a real `storegate run`
with its HTTP surface on a free port, a real mosquitto, an ESP32 scanner node publishing
phones' Eddystone-EID adverts over MQTT, and a pty lane (printer and scanner) whose
checkout zone the node covers. Central is played by this test (signed commands, the
identity keys sealed to the gateway's seal key).

(a) The till screen: the cashier signs in with the lane's PIN on the sign-in page and
    lands on ``/lanes/lane-1``; without a reload, the customer's name appears when their
    phone is heard in the checkout zone, goes when the receipt prints, comes back when
    their loyalty card is scanned and goes with the next receipt.
(b) The customer's web app (``/app#token=…``): an offer arrives live, its QR code (read
    back from a screenshot) is the offer's token; scanned at the till it shows reserved,
    and redeemed once the receipt prints.

Every wait is on something the page shows (Playwright's ``expect``), never a sleep. A
screenshot of each page at each step is kept: under ``$TEST_ARTIFACTS_DIR/browser/<test>/``
when that is set (CI uploads it), else in the test's tmp_path. (Not ``STOREGATE_…``:
that prefix is the config's environment override, and the gateways the tests start
inherit the environment.)
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import zxingcpp
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from storegate.core.ble.eid import Identity
from storegate.core.pseudonyms import pseudonym
from storegate.sim.lane import escpos_job, random_receipt
from tests.support.central import CENTRAL, customer_record, topic
from tests.support.gateway_proc import write_config
from tests.support.http import (
    CASHIER_PIN,
    app_http_toml,
    customer_token,
    pin_hash,
)
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.pty_lane import PtyDevice
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for
from tests.test_commands_live import Gw
from tests.test_erasure_live import lane, one
from tests.test_pos_live import KEY
from tests.test_presence_live import Node, eid_advert

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHECKOUT_NODE = "node-c"
WAIT_MS = 30_000  # presence needs zone_min_presence_s of adverts first
CAMPAIGN = {"id": "welcome", "version": 1, "trigger": {"kind": "store_entered"},
            "priority": 50, "control_share": 0.0, "offer_ttl_s": 600,
            "content": {"title": "Fresh bread", "text": "10 % off any loaf today",
                        "discount": {"kind": "percent", "value": 10}}}


def extra_config(http_port: int) -> str:
    # presence shortened (defaults 20 s / 15 s / 10 s) to keep the test short
    return f"""
[sources.scanner_nodes]
enabled = true
[presence]
min_presence_s = 1
zone_min_presence_s = 1
exit_after_s = 6
[[presence.zones]]
id = "entrance"
scanners = ["node-a"]
[[presence.zones]]
id = "checkout"
scanners = ["{CHECKOUT_NODE}"]
{app_http_toml(http_port)}
[[http.staff]]
lane = "lane-1"
role = "cashier"
name = "till-1"
pin_hash = "{pin_hash(CASHIER_PIN)}"
"""


class Phone(threading.Thread):
    """A customer's phone in the checkout zone, advertising its EID a few times a
    second (computed from the identity key at the current time, as the phone does)."""

    def __init__(self, node: Node, identity: Identity) -> None:
        super().__init__(daemon=True)
        self.node, self.identity = node, identity
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.node.raw(CHECKOUT_NODE, [eid_advert(self.identity, -55)])


@dataclass
class Store:
    """The running store, as a test uses it."""

    base: str
    gw: Gw
    subscriber: Subscriber
    node: Node
    printer: PtyDevice
    scanner: PtyDevice
    artifacts: Path
    receipts: int = 0

    def enrol(self, *records: dict[str, object], request_id: str) -> None:
        seal_key = self.subscriber.status[-1]["data"]["seal_key"]
        self.subscriber.client.publish(topic("customers"), CENTRAL.customers(
            "upsert", list(records), gateways={"g1": seal_key}, request_id=request_id),
            qos=1)
        assert one(self.subscriber, "storegate.gateway.customers_applied.v1",
                   request_id)["applied"]

    def receipt(self) -> None:
        self.receipts += 1
        self.printer.write(escpos_job(random_receipt(random.Random(self.receipts),
                                                     8000 + self.receipts)))

    def shot(self, page: Page, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    root = os.environ.get("TEST_ARTIFACTS_DIR")
    out = (Path(root) / "browser" / request.node.name) if root else tmp_path / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def store(tmp_path: Path, broker: Mosquitto, subscriber: Subscriber,
          artifacts: Path) -> Iterator[Store]:
    printer = PtyDevice(tmp_path / "dev", "usb-Epson_TM-T20-if00")
    scanner = PtyDevice(tmp_path / "dev", "usb-Zebra_DS2208-if00")
    http_port = free_port()
    gw = Gw(tmp_path, broker)
    # the lane section ends with [privacy]: the lane's checkout zone goes after its id
    extra = lane(printer, scanner).replace(
        'id = "lane-1"\n', 'id = "lane-1"\ncheckout_zone = "checkout"\n', 1)
    write_config(gw.config, port=broker.port, storage=gw.storage,
                 extra=extra + extra_config(http_port))
    base = f"http://127.0.0.1:{http_port}"
    node = Node(broker.port)
    gw.start()
    try:
        wait_for(lambda: subscriber.retained_state() == "online", 15, "birth certificate")

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
        wait_for(up, 20, "the HTTP surface")
        subscriber.client.publish(topic("campaigns"), CENTRAL.sign("campaigns", {
            "op": "upsert", "request_id": "welcome", "campaigns": [CAMPAIGN]}), qos=1)
        assert one(subscriber, "storegate.gateway.campaigns_applied.v1",
                   "welcome")["applied"]
        yield Store(base, gw, subscriber, node, printer, scanner, artifacts)
    finally:
        node.close()
        gw.stop()
    log = gw.log.read_text()
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture
def browser() -> Iterator[Browser]:
    # never a downloaded browser: Debian's, which scripts/setup installs
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run scripts/setup"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def no_reloads(page: Page) -> list[str]:
    """Every navigation of the page's main frame from now on (a live page has none)."""
    seen: list[str] = []
    page.on("framenavigated", lambda f: seen.append(f.url) if f == page.main_frame else None)
    return seen


def till_page(browser: Browser, store: Store) -> tuple[BrowserContext, Page]:
    """A till-sized page, the cashier signed in at lane-1's sign-in page with the PIN."""
    context = browser.new_context(viewport={"width": 800, "height": 480})
    page = context.new_page()
    page.goto(f"{store.base}/staff/sign-in?lane=lane-1")
    page.fill("input[name=pin]", CASHIER_PIN)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/lanes/lane-1$"))
    expect(page.locator("#status")).to_have_text("live")
    return context, page


def test_till_screen_follows_the_customer_live(store: Store,
                                               browser: Browser) -> None:
    name, card = "Zoë", "LOY000005151"
    identity = Identity("cust-browser-zoe", bytes.fromhex("20e020e020e020e020e020e020e020e0"),
                        4, 1000, time.time() - 3600)
    store.enrol(customer_record(identity.customer, 1, identity=identity,
                                loyalty_ids=[pseudonym(KEY, "loyalty", card)],
                                greeting_name=name), request_id="zoe")
    wait_for(lambda: store.gw.status()["presence"]["enrolled"] == 1, 10, "enrolled")

    context = browser.new_context(viewport={"width": 800, "height": 480})  # a till screen
    page = context.new_page()
    # the cashier signs in at the lane's page (a wrong PIN first: refused, said so)
    page.goto(f"{store.base}/staff/sign-in?lane=lane-1")
    store.shot(page, "1-signin")
    page.fill("input[name=pin]", "0000")
    page.click("button[type=submit]")
    expect(page.locator("#msg")).to_have_text("Wrong PIN")
    page.fill("input[name=pin]", CASHIER_PIN)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/lanes/lane-1$"))
    expect(page.locator("#status")).to_have_text("live")
    expect(page.locator("#screen")).to_contain_text("Nobody identified")
    navigations = no_reloads(page)
    store.shot(page, "2-till-idle")

    # the customer walks up to the till: their phone is heard in the checkout zone
    phone = Phone(store.node, identity)
    phone.start()
    try:
        expect(page.locator("#screen .name")).to_have_text(name, timeout=WAIT_MS)
        expect(page.locator("#screen .tier")).to_have_text("gold")
        # the store_entered campaign made them an offer: the till sees it, titled
        expect(page.locator("#screen")).to_contain_text(CAMPAIGN["content"]["title"])
        store.shot(page, "3-till-customer-present")

        # the receipt prints: the screen clears (served), the phone still in the zone
        store.receipt()
        expect(page.locator("#screen")).to_contain_text("Nobody identified")
        expect(page.locator("#screen .name")).to_have_count(0)
        store.shot(page, "4-till-cleared-after-receipt")

        # their loyalty card scanned for the next sale: back on screen
        store.scanner.write(card.encode() + b"\r")
        expect(page.locator("#screen .name")).to_have_text(name)
        store.shot(page, "5-till-loyalty-card")
        store.receipt()
        expect(page.locator("#screen")).to_contain_text("Nobody identified")
        store.shot(page, "6-till-cleared-again")
    finally:
        phone.stopped.set()
        phone.join(5)
    assert navigations == []  # every change arrived live, no reload
    views = store.subscriber.of_type("storegate.staff.viewed.v1")
    assert views and {v["data"]["customer"] for v in views} == {identity.customer}
    context.close()


def test_customer_app_gets_the_offer_live_and_sees_it_redeemed(
        store: Store, browser: Browser) -> None:
    identity = Identity("cust-browser-ana", bytes.fromhex("a4a4a4a4a4a4a4a4a4a4a4a4a4a4a401"),
                        4, 1000, time.time() - 3600)
    store.enrol(customer_record(identity.customer, 1, identity=identity,
                                greeting_name="Ana"), request_id="ana")
    wait_for(lambda: store.gw.status()["presence"]["enrolled"] == 1, 10, "enrolled")
    token = customer_token(identity.customer, issued_at=time.time())

    # a phone-sized page; the app opened from the retailer's app with its token
    context = browser.new_context(viewport={"width": 390, "height": 844},
                                  device_scale_factor=2, is_mobile=True)
    page = context.new_page()
    page.goto(f"{store.base}/app#token={token}")
    expect(page.locator("#connection")).to_have_text("Live")
    expect(page.locator("#empty")).to_be_visible()
    assert "token=" not in page.url  # the fragment is cleared at once
    navigations = no_reloads(page)
    store.shot(page, "1-app-no-offers")
    till_context, till = till_page(browser, store)
    expect(till.locator("#screen")).to_contain_text("Nobody identified")

    phone = Phone(store.node, identity)
    phone.start()
    try:
        offer = page.locator("#offers .offer")
        expect(offer.locator(".title")).to_have_text(CAMPAIGN["content"]["title"],
                                                     timeout=WAIT_MS)
        expect(offer.locator(".discount")).to_have_text("\u221210 %")
        expect(offer.locator(".state")).to_have_text("Ready to use: show the code at the till")
        expect(offer.locator(".qr img")).to_have_attribute("src", re.compile(r"^data:image/png"))
        page.wait_for_function(
            "() => { const i = document.querySelector('#offers .qr img');"
            " return i && i.complete && i.naturalWidth > 0; }")
        shot = store.shot(page, "2-app-offer-live")

        # the QR on screen is the offer's token, read back from the screenshot
        listed = httpx.get(f"{store.base}/app/offers", timeout=5,
                           headers={"Authorization": f"Bearer {token}"}).json()["offers"]
        assert len(listed) == 1
        codes = [r.text for r in zxingcpp.read_barcodes(Image.open(shot))]
        assert codes == [listed[0]["token"]]
        assert codes[0].startswith("SGO1.")

        # shown at the till: scanned, reserved; the receipt prints: redeemed
        store.scanner.write(codes[0].encode() + b"\r")
        expect(offer.locator(".state")).to_have_text(
            "Scanned at the till: finishing your purchase\u2026")
        store.shot(page, "3-app-offer-reserved")
        # the till sees the token's state and whose it is, live
        expect(till.locator("#screen .token")).to_have_text(
            "Valid: offer reserved for this sale")
        expect(till.locator("#screen .name")).to_have_text("Ana")
        store.shot(till, "3-till-token-reserved")
        store.receipt()
        expect(offer.locator(".state")).to_have_text("Used \u2014 thank you!")
        expect(till.locator("#screen")).to_contain_text("Nobody identified")
        store.shot(till, "4-till-cleared-after-receipt")
        expect(offer).to_have_class(re.compile(r"\bredeemed\b"))
        expect(offer.locator(".qr")).to_be_hidden()  # a used code is not shown again
        store.shot(page, "4-app-offer-redeemed")
    finally:
        phone.stopped.set()
        phone.join(5)
    assert navigations == []
    till_context.close()
    assert [e["data"]["offer_id"] for e in store.subscriber.of_type(
        "storegate.offer.redeemed.v1")] == [listed[0]["offer_id"]]
    context.close()
