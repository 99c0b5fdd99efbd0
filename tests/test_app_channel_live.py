"""The app channel, live: a real `storegate run` (simulated store, real mosquitto, HTTP
on a free port). Central sends a signed campaigns command; Server-Sent Events clients
connected with customer tokens (signed by central's app key from the config) receive
an offer live; the one that got it disconnects, another offer is issued to that
customer meanwhile, and reconnecting with ``Last-Event-ID`` delivers exactly the
missed ones, once. The demo's token page answers on loopback and its tokens work."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.central import CENTRAL, topic
from tests.support.gateway_proc import write_config
from tests.support.http import app_http_toml, customer_token
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for
from tests.test_commands_live import Gw

pytestmark = pytest.mark.e2e

ISSUED = "storegate.offer.issued.v1"
APPLIED = "storegate.gateway.campaigns_applied.v1"


def campaign(cid: str, trigger: dict[str, str], priority: int) -> dict[str, Any]:
    return {"id": cid, "version": 1, "trigger": trigger, "priority": priority,
            "control_share": 0.0, "offer_ttl_s": 600, "max_per_customer_per_day": 1,
            "content": {"title": cid, "text": f"{cid} for you",
                        "discount": {"kind": "percent", "value": 5}}}


# one offer at the door, then one per zone entered: a customer gets several, apart
CAMPAIGNS = [campaign("hello", {"kind": "store_entered"}, 50),
             campaign("dairy", {"kind": "zone_entered", "zone": "dairy"}, 40),
             campaign("checkout", {"kind": "zone_entered", "zone": "checkout"}, 30),
             campaign("bakery", {"kind": "zone_entered", "zone": "bakery"}, 20)]


def store(http_port: int) -> str:
    return f"""
[sources.simulator]
enabled = true
app_users = 6
other_devices = 0
passers_by = 0
hour_s = 120
[presence]
beacons_file = "package:demo-store/beacons.toml"
[[presence.zones]]
id = "entrance"
scanners = ["sc-entrance"]
[[presence.zones]]
id = "dairy"
scanners = ["sc-dairy"]
[[presence.zones]]
id = "bakery"
scanners = ["sc-bakery"]
[[presence.zones]]
id = "checkout"
scanners = ["sc-checkout-1", "sc-checkout-2"]
[offers]
min_gap_s = 0
max_per_visit = 10
max_per_day = 10
{app_http_toml(http_port)}
demo_app_tokens = true
"""


@dataclass
class Stream:
    """One phone's SSE connection, read on a thread: (cursor, kind, data) as they come."""

    base: str
    customer: str
    last_event_id: int | None = None
    got: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    status: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _sock: socket.socket | None = None

    def start(self) -> Stream:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        """A plain socket (HTTP/1.1, chunked): stop() shuts it down under the reader,
        which a blocked httpx read would not notice until the next keep-alive."""
        token = customer_token(self.customer, issued_at=time.time())
        extra = f"Last-Event-ID: {self.last_event_id}\r\n" \
            if self.last_event_id is not None else ""
        host, port = self.base.removeprefix("http://").split(":")
        self._sock = sock = socket.create_connection((host, int(port)), timeout=10)
        sock.settimeout(None)
        sock.sendall(f"GET /app/events HTTP/1.1\r\nHost: {host}\r\n"
                     f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
                     f"{extra}\r\n".encode())
        f = sock.makefile("rb")
        try:
            self.status = int(f.readline().split()[1])
            while f.readline() not in (b"\r\n", b""):
                pass  # headers
            text = ""
            while not self._stop.is_set():
                size = int(f.readline().strip() or b"0", 16)
                if size == 0:
                    return  # the server ended the stream
                text += f.read(size).decode()
                f.readline()
                while "\n\n" in text:
                    block, text = text.split("\n\n", 1)
                    fields = dict(line.split(": ", 1) for line in block.split("\n")
                                  if ": " in line and not line.startswith(":"))
                    if "data" in fields and "id" in fields and not self._stop.is_set():
                        self.got.append((int(fields["id"]), fields["event"],
                                         json.loads(fields["data"])))
        except (OSError, ValueError):
            return  # hung up by stop()
        finally:
            f.close()

    def stop(self) -> None:
        """Hang up: the socket is shut down under the reader, which then ends."""
        self._stop.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive()

    def offers(self) -> list[str]:
        return [d["offer_id"] for _, kind, d in self.got if kind == "offer"]


@pytest.fixture
def gw(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[Gw, str]]:
    g = Gw(tmp_path, broker)
    port = free_port()
    write_config(g.config, port=broker.port, storage=g.storage, extra=store(port))
    g.start()
    yield g, f"http://127.0.0.1:{port}"
    g.stop()


def test_offers_arrive_live_and_a_reconnect_gets_exactly_the_missed_ones(
        gw: tuple[Gw, str], subscriber: Subscriber) -> None:
    g, base = gw
    wait_for(lambda: subscriber.retained_state() == "online", 15, "birth certificate")

    # the simulated app users, from the demo's token page (loopback only)
    def users() -> list[str]:
        try:
            page = httpx.get(f"{base}/app/demo", timeout=2).text
        except httpx.HTTPError:
            return []
        return [part.split(">", 1)[1].split("<", 1)[0]
                for part in page.split('<a href="/app#token=')[1:]]

    wait_for(lambda: len(users()) == 6, 30, "the simulated app users known")
    customers = users()
    page = httpx.get(f"{base}/app/demo", timeout=10).text
    demo_token = page.split("/app#token=", 1)[1].split('"', 1)[0]
    me = httpx.get(f"{base}/app/me", headers={"Authorization": f"Bearer {demo_token}"})
    assert me.status_code == 200 and me.json()["customer"] in customers

    streams = {c: Stream(base, c).start() for c in customers}
    wait_for(lambda: all(s.status == 200 for s in streams.values()), 10, "streams open")
    subscriber.client.publish(topic("campaigns"), CENTRAL.sign(
        "campaigns", {"op": "upsert", "request_id": "c-1", "campaigns": CAMPAIGNS}), qos=1)
    wait_for(lambda: subscriber.of_type(APPLIED), 15, "campaigns applied")

    # an offer arrives live on some phone; that phone goes offline at once
    wait_for(lambda: any(s.got for s in streams.values()), 90, "an offer pushed live")
    who, phone = next((c, s) for c, s in streams.items() if s.got)
    phone.stop()
    seen = set(phone.offers())
    last = max(cursor for cursor, _, _ in phone.got)

    def issued_to(customer: str) -> list[str]:
        return [e["data"]["offer_id"] for e in subscriber.of_type(ISSUED)
                if e["data"]["customer"] == customer]

    # the offer went out on MQTT too, with the same id
    wait_for(lambda: seen <= set(issued_to(who)), 10, "offer.issued for the pushed offers")
    # meanwhile another offer is issued to them (a zone entered)
    wait_for(lambda: set(issued_to(who)) - seen, 120, "another offer while offline")
    missed = [o for o in issued_to(who) if o not in seen]

    again = Stream(base, who, last_event_id=last).start()
    wait_for(lambda: set(missed) <= set(again.offers()), 15, "the missed offers")
    again.stop()
    got = again.offers()
    assert not seen & set(got)  # nothing pushed twice
    assert sorted(got[:len(missed)]) == sorted(missed)  # each missed one, once
    assert len(set(got)) == len(got)
    assert all(cursor > last for cursor, _, _ in again.got)

    # the QR of a pushed offer reads from the phone's own token only
    offer_id = phone.offers()[0]
    mine = {"Authorization": f"Bearer {customer_token(who, issued_at=time.time())}"}
    assert httpx.get(f"{base}/app/offers/{offer_id}/qr.png", headers=mine).status_code == 200
    other = next(c for c in customers if c != who)
    theirs = {"Authorization": f"Bearer {customer_token(other, issued_at=time.time())}"}
    assert httpx.get(f"{base}/app/offers/{offer_id}/qr.png",
                     headers=theirs).status_code == 404
    for s in streams.values():
        s.stop()
    log = g.log.read_text()
    assert "Traceback" not in log and who not in log
    assert "/app/demo" in log  # the demo's URL is printed
