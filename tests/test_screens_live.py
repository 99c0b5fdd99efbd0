"""The till screen, live: a real `storegate run` with its HTTP surface on a free port, a
pty lane (printer and scanner), a real mosquitto and a customer central enrolled by
signed command (staff_view consent, a loyalty card).

A cashier signs in at the lane and holds the screen's SSE stream open; each scan of the
customer's card brings their greeting name on screen, each printed receipt clears it,
and the view is logged as ``storegate.staff.viewed.v1`` once per transaction; central
withdrawing staff_view empties the screen at once. Measured:
scan written to the pty → SSE frame received, p50/p99 over the scans (printed, no
threshold: timing belongs to bench/, not to a pass/fail test).
"""

from __future__ import annotations

import json
import queue
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from storegate.core.pseudonyms import pseudonym
from storegate.sim.lane import escpos_job, random_receipt
from tests.support.central import CENTRAL, customer_record, topic
from tests.support.gateway_proc import write_config
from tests.support.http import CASHIER_PIN, pin_hash
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.pty_lane import PtyDevice
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for
from tests.test_commands_live import Gw
from tests.test_erasure_live import lane, one
from tests.test_pos_live import KEY

pytestmark = pytest.mark.e2e

SCANS = 50
NAME = "Zoë <b>"  # shown as text; arrives in JSON exactly as central sent it
CUSTOMER = "cust-screen-zoe"
CARD = "LOY000004242"
VIEWED = "storegate.staff.viewed.v1"


class SseReader(threading.Thread):
    """Holds one SSE stream open; every 'state' frame, stamped on arrival."""

    def __init__(self, url: str, cookie: str) -> None:
        super().__init__(daemon=True)
        self.url, self.cookie = url, cookie
        self.frames: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.stop = threading.Event()
        self.status = 0

    def run(self) -> None:
        headers = {"Accept": "text/event-stream", "Cookie": f"sg_session={self.cookie}"}
        with httpx.stream("GET", self.url, headers=headers, timeout=httpx.Timeout(
                5, read=30)) as r:
            self.status = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: "):
                    self.frames.put((time.perf_counter(), json.loads(line[6:])))
                if self.stop.is_set():
                    return

    def until(self, check: Any, timeout: float = 10.0) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching screen frame in time")
            at, frame = self.frames.get(timeout=left)
            if check(frame):
                return at, frame


def test_till_screen_follows_the_lane_live(
        tmp_path: Path, broker: Mosquitto, subscriber: Subscriber) -> None:
    printer = PtyDevice(tmp_path / "dev", "usb-Epson_TM-T20-if00")
    scanner = PtyDevice(tmp_path / "dev", "usb-Zebra_DS2208-if00")
    port = free_port()
    gw = Gw(tmp_path, broker)
    write_config(gw.config, port=broker.port, storage=gw.storage, extra=lane(
        printer, scanner) + f"""
[http]
enabled = true
host = "127.0.0.1"
port = {port}
[[http.staff]]
lane = "lane-1"
role = "cashier"
name = "till-1"
pin_hash = "{pin_hash(CASHIER_PIN)}"
""")
    base = f"http://127.0.0.1:{port}"
    gw.start()
    reader: SseReader | None = None
    try:
        wait_for(lambda: subscriber.retained_state() == "online", 10, "birth certificate")
        subscriber.client.publish(topic("customers"), CENTRAL.customers("upsert", [
            customer_record(CUSTOMER, 1, loyalty_ids=[pseudonym(KEY, "loyalty", CARD)],
                            presence=False, greeting_name=NAME)],
            gateways={"g1": subscriber.status[-1]["data"]["seal_key"]},
            request_id="enrol"), qos=1)
        assert one(subscriber, "storegate.gateway.customers_applied.v1", "enrol")["applied"]

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
        wait_for(up, 20, "the HTTP surface")
        signin = httpx.post(f"{base}/staff/signin", json={"lane": "lane-1",
                                                          "pin": CASHIER_PIN}, timeout=10)
        assert signin.status_code == 200, signin.text
        cookie = signin.cookies["sg_session"]
        # another lane's screen is not this cashier's
        assert httpx.get(f"{base}/lanes/lane-2/state", timeout=5,
                         headers={"Cookie": f"sg_session={cookie}"}).status_code == 403

        reader = SseReader(f"{base}/lanes/lane-1/events", cookie)
        reader.start()
        _, snapshot = reader.until(lambda f: True)
        assert snapshot["present"] is False and reader.status == 200

        latencies: list[float] = []
        for n in range(SCANS):
            sent = time.perf_counter()
            scanner.write(CARD.encode() + b"\r")
            at, frame = reader.until(lambda f: (f.get("customer") or {}).get(
                "greeting_name") == NAME)
            latencies.append(at - sent)
            assert frame["source"] == "loyalty" and frame["customer"]["tier"] == "gold"
            printer.write(escpos_job(random_receipt(random.Random(n), 7000 + n)))
            reader.until(lambda f: f["present"] is False and f["customer"] is None)

        ms = sorted(x * 1000 for x in latencies)
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        print(f"\nscan written to the pty -> till screen frame over SSE, {len(ms)} scans: "
              f"p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")

        # the access log: once per transaction (each scan opened one), never the PIN
        wait_for(lambda: len(subscriber.of_type(VIEWED)) >= SCANS, 20, "the access events")
        views = subscriber.of_type(VIEWED)
        assert len(views) == SCANS
        data = views[0]["data"]
        assert (data["lane"], data["staff_role"], data["customer"]) == (
            "lane-1", "cashier", CUSTOMER)
        assert "greeting_name" in data["fields"] and len(data["session"]) == 32
        assert len({v["data"]["session"] for v in views}) == 1
        assert CASHIER_PIN not in json.dumps(views) and cookie not in json.dumps(views)

        # consent withdrawn by central while the customer stands at the till: the
        # customer leaves the screen at once (forgotten by the screens, not just hidden)
        scanner.write(CARD.encode() + b"\r")
        reader.until(lambda f: (f.get("customer") or {}).get("greeting_name") == NAME)
        subscriber.client.publish(topic("customers"), CENTRAL.customers("upsert", [
            customer_record(CUSTOMER, 2, loyalty_ids=[pseudonym(KEY, "loyalty", CARD)],
                            presence=False, staff_view=False, greeting_name=NAME)],
            gateways={"g1": subscriber.status[-1]["data"]["seal_key"]},
            request_id="withdraw"), qos=1)
        _, frame = reader.until(lambda f: f["customer"] is None)
        assert frame["present"] is False and frame["source"] is None
    finally:
        if reader is not None:
            reader.stop.set()
        gw.stop()
