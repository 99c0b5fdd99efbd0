"""The customer app channel, in process on a real inbox file: the offers list and QR
codes (decoded back with zxing), the SSE and WebSocket streams resuming by cursor with
each missed message exactly once, the customer seeing only their own, foreign tokens
refused, the bounds, erasure (a byte scan), and the feed from the real personalisation
service (offer, redemption states, the pickup notice once a day)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw
from starlette.websockets import WebSocketDisconnect

from storegate.adapters.app_inbox import (
    AppInbox,
    InboxMessage,
    OfferEntry,
    PickupEntry,
    RedemptionEntry,
)
from storegate.app.app_channel import AppChannel, topic
from storegate.app.erasure import erase
from storegate.app.http.app_channel import (
    WS_PROTOCOL,
    messages,
    resume_cursor,
    sse_frame,
)
from storegate.app.http.hub import Hub, Message
from storegate.app.http.server import build_app
from storegate.app.redemption import IssuedToken
from storegate.core.personal.offers import Decision
from storegate.core.personal.registry import Registry
from storegate.core.personal.tokens import TokenSigner
from tests import test_personal as tp
from tests.support.bytescan import scan
from tests.support.http import (
    APP_KID,
    NOW,
    Clock,
    StatusGateway,
    bearer,
    customer_token,
    http_settings,
    make_config,
)
from tests.support.waiting import wait_for

ALICE, BOB = "cust-alice", "cust-bob"
SIGNER = TokenSigner(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))), "s1")


def offer(customer: str, n: int, *, issued_at: float = NOW, ttl: float = 3600) -> OfferEntry:
    token_id = bytes([n]) * 16
    text = SIGNER.sign(token_id=token_id, offer="welcome", customer=customer,
                       issued_at=int(issued_at), expires_at=int(issued_at + ttl))
    return OfferEntry(customer=customer, offer_id=token_id.hex(), campaign="welcome",
                      title=f"Offer {n}", text="10 % off bread", image=None,
                      discount={"kind": "percent", "value": 10}, token=text,
                      issued_at=issued_at, expires_at=issued_at + ttl)


@dataclass
class ChannelGateway(StatusGateway):
    app_channel: AppChannel | None = None
    registry: Registry | None = None


@dataclass
class World:
    tmp: Path
    clock: Clock = field(default_factory=Clock)
    hub: Hub = field(default_factory=Hub)

    def __post_init__(self) -> None:
        self.inbox = AppInbox(self.tmp / "outbox.inbox.db")
        self.registry = Registry(tomb_key=b"k" * 32, keep_s=86400)
        self.channel = AppChannel(self.inbox, self.hub, self.registry,
                                  tz=ZoneInfo("UTC"), wall_clock=self.clock)
        settings = http_settings()
        self.gateway = ChannelGateway(make_config(self.tmp, settings),
                                      app_channel=self.channel, registry=self.registry)
        self.app = build_app(self.gateway, settings, self.clock)

    def client(self) -> TestClient:
        return TestClient(self.app, base_url="https://testserver")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.inbox.close()


# --- the inbox -------------------------------------------------------------------------


def test_cursors_grow_across_customers_and_never_come_back(tmp_path: Path) -> None:
    inbox = AppInbox(tmp_path / "inbox.db")
    a = inbox.append([offer(ALICE, 1), offer(BOB, 2), offer(ALICE, 3)], NOW)
    assert [m.cursor for m in a] == [1, 2, 3]
    inbox.erase([ALICE, BOB])  # every row gone, the numbers are not handed out again
    b = inbox.append([offer(ALICE, 4)], NOW)
    assert b[0].cursor == 4
    inbox.close()
    again = AppInbox(tmp_path / "inbox.db")
    assert again.append([offer(BOB, 5)], NOW)[0].cursor == 5  # across a restart too
    assert (tmp_path / "inbox.db").stat().st_mode & 0o777 == 0o600
    again.close()


def test_redemption_states_follow_the_offer_and_unknown_offers_are_skipped(
        tmp_path: Path) -> None:
    inbox = AppInbox(tmp_path / "inbox.db")
    o = offer(ALICE, 1)
    inbox.append([o], NOW)
    out = inbox.append([RedemptionEntry(o.offer_id, "reserved", NOW + 5),
                        RedemptionEntry("ff" * 16, "redeemed", NOW + 6)], NOW)
    assert [(m.kind, m.customer, m.data["state"]) for m in out] == [
        ("redemption", ALICE, "reserved")]  # the owner found from the offer
    assert inbox.unknown_offer_total == 1
    assert inbox.offers(ALICE, NOW)[0].state == "reserved"
    inbox.append([RedemptionEntry(o.offer_id, "released", NOW + 7)], NOW)
    assert inbox.offers(ALICE, NOW)[0].state == "issued"  # redeemable again
    inbox.append([RedemptionEntry(o.offer_id, "redeemed", NOW + 8)], NOW)
    assert inbox.offers(ALICE, NOW)[0].state == "redeemed"
    assert inbox.offers(BOB, NOW) == []
    inbox.close()


def test_bounds_per_customer_total_and_expiry(tmp_path: Path) -> None:
    inbox = AppInbox(tmp_path / "inbox.db", max_per_customer=5, max_total=8,
                     max_offers_per_customer=3)
    inbox.append([offer(ALICE, n) for n in range(1, 8)], NOW)  # 7 for one customer
    assert [m.cursor for m in inbox.since(ALICE, 0)] == [3, 4, 5, 6, 7]  # newest 5
    assert len(inbox.offers(ALICE, NOW)) == 3
    assert inbox.dropped_over_bound_total == 2
    inbox.append([offer(BOB, n, ttl=60) for n in range(10, 14)], NOW)  # 9 in all
    assert inbox.count() == 8  # the oldest went first, whoever's
    assert [m.cursor for m in inbox.since(ALICE, 0)] == [4, 5, 6, 7]
    assert inbox.prune(NOW + 61) == 4  # Bob's expired offers and their messages
    assert inbox.count(BOB) == 0 and inbox.offers(BOB, NOW + 61) == []
    assert inbox.count(ALICE) == 4
    inbox.close()


def test_a_pickup_notice_is_stored_once_per_order_per_day(tmp_path: Path) -> None:
    inbox = AppInbox(tmp_path / "inbox.db")
    notice = PickupEntry(ALICE, "W-1", "3", NOW, "2026-11-18")
    assert len(inbox.append([notice, notice], NOW)) == 1
    assert inbox.append([dataclasses.replace(notice, entered_at=NOW + 600)], NOW) == []
    assert len(inbox.append([dataclasses.replace(notice, day="2026-11-19")], NOW)) == 1
    [m, _] = inbox.since(ALICE, 0)
    assert m.kind == "pickup" and m.data == {"order_id": "W-1", "counter": "3",
                                             "entered_at": NOW}
    inbox.close()


def test_a_cursor_from_elsewhere_gets_everything_held(tmp_path: Path) -> None:
    inbox = AppInbox(tmp_path / "inbox.db")
    inbox.append([offer(ALICE, 1), offer(ALICE, 2)], NOW)
    assert [m.cursor for m in inbox.since(ALICE, 1)] == [2]
    assert [m.cursor for m in inbox.since(ALICE, 2)] == []
    assert [m.cursor for m in inbox.since(ALICE, 9999)] == [1, 2]  # a rebuilt file
    inbox.close()


# --- the routes: list and QR ----------------------------------------------------------


def test_the_list_holds_only_the_callers_live_offers(world: World) -> None:
    a1, a2, b1 = offer(ALICE, 1), offer(ALICE, 2, issued_at=NOW + 10), offer(BOB, 3)
    gone = offer(ALICE, 4, issued_at=NOW - 7200)  # expired an hour ago
    world.inbox.append([a1, a2, b1, gone, RedemptionEntry(a1.offer_id, "reserved", NOW)],
                       NOW)
    r = world.client().get("/app/offers", headers=bearer(customer_token(ALICE)))
    assert r.status_code == 200
    listed = r.json()["offers"]
    assert [(o["offer_id"], o["state"]) for o in listed] == [
        (a2.offer_id, "issued"), (a1.offer_id, "reserved")]  # newest first
    assert listed[0]["token"] == a2.token and listed[0]["discount"] == {
        "kind": "percent", "value": 10}
    r = world.client().get("/app/offers", headers=bearer(customer_token(BOB)))
    assert [o["offer_id"] for o in r.json()["offers"]] == [b1.offer_id]


def test_qr_codes_are_well_formed_and_decode_to_the_token(world: World) -> None:
    zxingcpp = pytest.importorskip("zxingcpp")
    o = offer(ALICE, 1)
    world.inbox.append([o], NOW)
    client, auth = world.client(), bearer(customer_token(ALICE))

    r = client.get(f"/app/offers/{o.offer_id}/qr.png", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    Image.open(io.BytesIO(r.content)).verify()
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(r.content)))
    assert [f.text for f in found] == [o.token]

    r = client.get(f"/app/offers/{o.offer_id}/qr.svg", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(r.text)  # well-formed
    found = zxingcpp.read_barcodes(rasterise(root))
    assert [f.text for f in found] == [o.token]


def rasterise(root: ET.Element, px: int = 6) -> Image.Image:
    """qrcode's SVG path is one ``Mx,yHx2Vy2Hxz`` square per dark module: drawn here."""
    size = int(root.get("viewBox", "0 0 0 0").split()[2])
    img = Image.new("L", (size * px, size * px), 255)
    draw = ImageDraw.Draw(img)
    [path] = root.findall(".//{http://www.w3.org/2000/svg}path")
    squares = path.get("d", "").split("z")
    for sq in filter(None, squares):
        x, y = (float(v) for v in sq[1:].split("H")[0].split(","))
        draw.rectangle((x * px, y * px, (x + 1) * px - 1, (y + 1) * px - 1), fill=0)
    assert len(squares) > 100
    return img


def test_another_customers_offer_is_not_found(world: World) -> None:
    o = offer(BOB, 1)
    world.inbox.append([o], NOW)
    client, alice = world.client(), bearer(customer_token(ALICE))
    for suffix in ("qr.png", "qr.svg"):
        r = client.get(f"/app/offers/{o.offer_id}/{suffix}", headers=alice)
        assert (r.status_code, r.json()["detail"]) == (404, "no such offer")
        assert o.token not in r.text
        unknown = client.get(f"/app/offers/{'ab' * 16}/{suffix}", headers=alice)
        assert unknown.status_code == 404  # the same answer as an id that never was
        bad = client.get(f"/app/offers/not-an-id/{suffix}", headers=alice)
        assert bad.status_code == 422
        assert client.get(f"/app/offers/{o.offer_id}/{suffix}",
                          headers=bearer(customer_token(BOB))).status_code == 200


def test_a_token_of_a_foreign_key_is_refused(world: World) -> None:
    world.inbox.append([offer(ALICE, 1)], NOW)
    foreign = customer_token(ALICE, key=Ed25519PrivateKey.generate())  # same kid, not ours
    client = world.client()
    for path in ("/app/offers", "/app/events", f"/app/offers/{'01' * 16}/qr.png"):
        r = client.get(path, headers=bearer(foreign))
        assert (r.status_code, r.json()["detail"]) == (401, "token_bad_signature")
        assert client.get(path).status_code == 401
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(
            "/app/ws", subprotocols=[WS_PROTOCOL, f"bearer.{foreign}"]) as ws:
        ws.receive_text()
    assert refused.value.code == 1008
    with pytest.raises(WebSocketDisconnect) as anonymous, client.websocket_connect(
            "/app/ws") as ws:
        ws.receive_text()
    assert anonymous.value.code == 1008
    counts = world.app.state.auth.rejected
    assert counts["token_bad_signature"] >= 4 and counts["unauthenticated"] >= 1


def test_without_an_app_channel_the_routes_say_so(tmp_path: Path) -> None:
    settings = http_settings()
    app = build_app(StatusGateway(make_config(tmp_path, settings)), settings, Clock())
    r = TestClient(app, base_url="https://testserver").get(
        "/app/offers", headers=bearer(customer_token(ALICE)))
    assert (r.status_code, r.json()["detail"]) == (
        404, "the app channel is not available on this gateway")


# --- streams ------------------------------------------------------------------------


def sse_events(text: str) -> list[tuple[int | None, str, dict[str, object]]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if line and not line.startswith(":") and ": " in line)
        if "data" in fields:
            cursor = int(fields["id"]) if "id" in fields else None
            out.append((cursor, fields["event"], json.loads(fields["data"])))
    return out


def test_sse_frames_carry_the_cursor_as_id() -> None:
    frame = sse_frame("offer", {"title": "Brød\nny"}, 42)
    assert frame == 'id: 42\nevent: offer\ndata: {"title":"Brød\\nny"}\n\n'
    assert sse_frame("lane", {}, None) == "event: lane\ndata: {}\n\n"


def test_the_resume_cursor_prefers_last_event_id() -> None:
    assert resume_cursor("17", 3) == 17
    assert resume_cursor(None, 3) == 3 and resume_cursor(None, None) == 0
    assert resume_cursor(" ", 5) == 5
    for bad in ("x", "-1", "1e3", "9" * 20):
        with pytest.raises(Exception, match="not a cursor"):
            resume_cursor(bad, None)


def test_sse_resume_by_last_event_id_sends_each_missed_message_once(world: World) -> None:
    stored = world.inbox.append([offer(ALICE, n) for n in range(1, 5)]
                                + [offer(BOB, 9)], NOW)
    seen_by_phone = stored[1].cursor  # it had offers 1 and 2, then went offline
    body: dict[str, str] = {}
    with world.client() as client:
        def get() -> None:
            r = client.get("/app/events", headers={**bearer(customer_token(ALICE)),
                                                     "Last-Event-ID": str(seen_by_phone)})
            body["status"], body["type"], body["text"] = (
                str(r.status_code), r.headers["content-type"], r.text)

        reader = threading.Thread(target=get)
        reader.start()
        wait_for(lambda: world.hub.subscribers(topic(ALICE)) == 1, 10, "the subscription")
        # offer 3 again (as the writer would publish a message racing the backlog read),
        # then a new one live; then the gateway stops and the stream ends
        client.portal.call(world.hub.publish, topic(ALICE), Message(
            "offer", stored[2].data, stored[2].cursor))
        client.portal.call(lambda: world.channel._put(offer(ALICE, 7)))
        client.portal.call(world.channel.flush)
        client.portal.call(world.hub.close_all)
        reader.join(10)
    assert body["status"] == "200" and body["type"].startswith("text/event-stream")
    got = sse_events(body["text"])
    assert [c for c, _, _ in got] == [3, 4, 6]  # the two missed, then the live one: once
    assert [d["title"] for _, _, d in got] == ["Offer 3", "Offer 4", "Offer 7"]
    assert body["text"].startswith("retry: ")
    assert world.hub.subscribers() == 0  # the subscription closed with the stream


def test_since_query_and_keep_alives(world: World) -> None:
    world.inbox.append([offer(ALICE, 1), offer(ALICE, 2)], NOW)
    world.app.state.keepalive_s = 0.01
    body: list[str] = []
    with world.client() as client:
        def get() -> None:
            body.append(client.get("/app/events?since=1",
                                   headers=bearer(customer_token(ALICE))).text)

        reader = threading.Thread(target=get)
        reader.start()
        wait_for(lambda: world.hub.subscribers(topic(ALICE)) == 1, 10, "the subscription")
        wait_for(lambda: world.app.state.auth is not None, 10, "app")
        client.portal.call(asyncio.sleep, 0.1)  # time for a few keep-alives
        client.portal.call(world.hub.close_all)
        reader.join(10)
    assert [c for c, _, _ in sse_events(body[0])] == [2]
    assert ": keep-alive" in body[0]


def test_a_cut_off_stream_ends_and_resumes_from_its_cursor(world: World) -> None:
    async def run() -> tuple[list[int | None], list[int]]:
        hub = Hub(maxsize=2)
        channel = AppChannel(world.inbox, hub, world.registry, tz=ZoneInfo("UTC"),
                             wall_clock=world.clock)
        sub = hub.subscribe(topic(ALICE))
        got: list[int | None] = []

        async def read() -> None:
            async for m in messages(channel, ALICE, 0, sub, keepalive_s=0.05):
                if m is not None:
                    got.append(m.cursor)

        reader = asyncio.create_task(read())
        channel._put(offer(ALICE, 1))
        await channel.flush()
        while got != [1]:  # live: past the (empty) inbox
            await asyncio.sleep(0.01)
        for n in range(2, 7):  # a burst of five into a queue of two: cut off
            channel._put(offer(ALICE, n))
        await channel.flush()
        await asyncio.wait_for(reader, 10)  # the stream ended by itself
        assert sub.cut_off and hub.cut_off_total == 1
        # the phone reconnects with the last cursor it saw: the rest, once
        last = got[-1]
        assert last is not None
        rest: list[int] = []
        async for m in messages(channel, ALICE, last, hub.subscribe(topic(ALICE)),
                                keepalive_s=5):
            assert isinstance(m, InboxMessage)
            rest.append(m.cursor)
            if m.cursor == 6:
                break
        return got, rest

    got, rest = asyncio.run(run())
    assert got == [1, 2, 3]  # what was queued before the cut
    assert got + rest == [1, 2, 3, 4, 5, 6]


def test_websocket_auth_by_subprotocol_and_resume(world: World) -> None:
    world.inbox.append([offer(ALICE, 1), offer(ALICE, 2), offer(BOB, 3)], NOW)
    token = customer_token(ALICE)
    with world.client() as client:
        with client.websocket_connect("/app/ws?since=1",
                                      subprotocols=[WS_PROTOCOL, f"bearer.{token}"]) as ws:
            assert ws.accepted_subprotocol == WS_PROTOCOL  # never the token echoed
            first = ws.receive_json()
            assert (first["id"], first["kind"], first["data"]["title"]) == (
                2, "offer", "Offer 2")
            wait_for(lambda: world.hub.subscribers(topic(ALICE)) == 1, 10, "subscription")
            client.portal.call(lambda: world.channel._put(offer(ALICE, 4)))
            client.portal.call(world.channel.flush)
            live = ws.receive_json()
            assert (live["id"], live["data"]["title"]) == (4, "Offer 4")
            client.portal.call(world.hub.close_all)  # the gateway stops
            with pytest.raises(WebSocketDisconnect) as ended:
                ws.receive_json()
            assert ended.value.code == 1013
        # a native client's Authorization header works too
        with client.websocket_connect("/app/ws?since=2",
                                      headers=bearer(token)) as ws:
            assert ws.receive_json()["id"] == 4
    wait_for(lambda: world.hub.subscribers() == 0, 10, "the subscriptions to close")


# --- the feed from the personalisation service -------------------------------------------


def test_the_personal_flow_feeds_offer_redemption_and_pickup(tmp_path: Path) -> None:
    box = tp.Box(tmp_path)
    box.know(tp.record(pickup=True))
    box.campaigns("upsert", tp.WELCOME)
    inbox = AppInbox(tmp_path / "outbox.inbox.db")
    hub = Hub()
    channel = AppChannel(inbox, hub, box.registry, tz=ZoneInfo("Europe/Moscow"),
                         wall_clock=lambda: tp.T0)
    record = box.svc.on_offer  # the test box keeps the tokens too

    def on_offer(decision: Decision, token: IssuedToken) -> None:
        if record is not None:
            record(decision, token)
        channel.on_offer(decision, token)
    box.svc.on_offer = on_offer

    async def flow() -> list[Message]:
        sub = hub.subscribe(topic(tp.CUSTOMER))
        channel.observe(await box.svc.process([tp.entered()], tp.T0))
        await channel.flush()
        [token] = box.tokens
        channel.observe(await box.svc.process([tp.scanned(token.text)], tp.T0 + 60))
        channel.observe(await box.svc.process([tp.completed()], tp.T0 + 90))
        # back in the store later the same day: no second pickup notice
        channel.observe(await box.svc.process([tp.entered(visit="v-2", at=tp.T0 + 600)],
                                              tp.T0 + 600))
        await channel.flush()
        got = []
        while (m := await sub.next(0.01)) is not None:
            got.append(m)
        return got

    live = asyncio.run(flow())
    assert [(m.kind, m.cursor) for m in live] == [
        ("offer", 1), ("pickup", 2), ("redemption", 3), ("redemption", 4)]
    issued = live[0].data
    assert issued["title"] == "Welcome" and issued["token"] == box.tokens[0].text
    assert issued["discount"] == {"kind": "percent", "value": 10}
    assert issued["expires_at"] == tp.T0 + 3600
    assert live[1].data["order_id"] == "W-1"
    assert [m.data["state"] for m in live[2:]] == ["reserved", "redeemed"]
    assert [o.state for o in inbox.offers(tp.CUSTOMER, tp.T0 + 100)] == ["redeemed"]
    inbox.close()
    box.svc.close()


# --- erasure ------------------------------------------------------------------------


def test_erasure_leaves_no_byte_of_the_customer_in_the_inbox(tmp_path: Path) -> None:
    from tests import test_erasure as te  # the box with every other store

    box = te.Box(tmp_path)
    box.fill()
    inbox = AppInbox(tmp_path / "outbox.inbox.db")
    channel = AppChannel(inbox, Hub(), box.registry, tz=ZoneInfo("UTC"),
                         wall_clock=lambda: te.T0)
    mine, theirs = offer(te.TARGET, 1), offer(te.OTHER, 2)
    inbox.append([mine, theirs, PickupEntry(te.TARGET, "W-77", "2", te.T0, "d"),
                  RedemptionEntry(mine.offer_id, "reserved", te.T0)], te.T0)
    needles = {**te.target_needles(), "token": mine.token.encode()}
    assert {"customer", "token"} <= {h.needle for h in scan(tmp_path, needles)}

    targets = dataclasses.replace(box.targets(), app_channel=channel)
    counts = asyncio.run(erase([te.TARGET], targets, te.T0 + 5000))

    assert counts.errors == []
    assert scan(tmp_path, needles) == []  # every file, the inbox's WAL included
    assert inbox.count(te.TARGET) == 0 and inbox.offers(te.TARGET, te.T0) == []
    assert [o.offer_id for o in inbox.offers(te.OTHER, te.T0)] == [theirs.offer_id]
    assert {h.needle for h in scan(tmp_path, {"token": theirs.token.encode()})} == {"token"}
    box.close()
    inbox.close()
    assert scan(tmp_path, needles) == []


def test_a_stop_while_a_batch_is_being_written_still_ends_the_writer(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop's wake-up came while the writer was inside a write (nothing idle to
    wake): it then went idle for good, and the gateway hung at SIGTERM until killed
    (the demo's "gateway did not stop"). The write finishes, the writer ends."""
    channel = world.channel
    real_write = channel._write
    writing, release = threading.Event(), threading.Event()

    async def slow_write(batch: list[OfferEntry]) -> int:
        writing.set()
        await asyncio.to_thread(release.wait, 30)
        return await real_write(batch)

    monkeypatch.setattr(channel, "_write", slow_write)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(channel.run(stop))
        channel._put(offer(ALICE, 1))
        await asyncio.to_thread(writing.wait, 30)
        stop.set()
        for _ in range(10):  # the stop's wake-up runs now, while the write is on
            await asyncio.sleep(0)
        release.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(main())
    assert channel.published_total == 1  # the batch in hand was written, then it ended


def test_erase_drops_queued_entries_too(world: World) -> None:
    world.channel._put(offer(ALICE, 1))
    world.channel._put(offer(BOB, 2))
    assert asyncio.run(world.channel.erase([ALICE])) == 0
    assert asyncio.run(world.channel.flush()) == 1
    assert world.inbox.count(ALICE) == 0 and world.inbox.count(BOB) == 1


# --- the reference app and the demo page ------------------------------------------------


def test_the_reference_app_is_served_without_any_outside_resource(world: World) -> None:
    client = world.client()
    page = client.get("/app")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/app/static/app.js", "/app/static/app.css"):
        r = client.get(asset)
        assert r.status_code == 200, asset
        assert "http://" not in r.text and "https://" not in r.text  # no CDN, nothing
    assert "https://" not in page.text and "http://" not in page.text
    assert client.get("/app/static/secrets.txt").status_code == 404
    js = client.get("/app/static/app.js").text
    assert "sessionStorage" in js and "Last-Event-ID" in js and "location.hash" in js
    assert client.get("/app/demo").status_code == 404  # off unless the demo flag


def test_the_demo_page_signs_tokens_for_loopback_only(tmp_path: Path) -> None:
    settings = http_settings(demo_app_tokens=True)
    box = tp.Box(tmp_path)
    box.know(tp.record(), tp.record("cust-bob"))
    gateway = ChannelGateway(make_config(tmp_path, settings), registry=box.registry)
    clock = Clock()
    app = build_app(gateway, settings, clock)
    remote = TestClient(app, base_url="https://testserver")  # client "testclient"
    assert remote.get("/app/demo").status_code == 404
    local = TestClient(app, base_url="http://127.0.0.1:8080", client=("127.0.0.1", 5000))
    r = local.get("/app/demo")
    assert r.status_code == 200
    tokens = [part.split('"', 1)[0] for part in r.text.split("/app#token=")[1:]]
    assert len(tokens) == 2
    me = local.get("/app/me", headers=bearer(tokens[0]))
    assert me.status_code == 200 and me.json()["customer"] == tp.CUSTOMER
    rebinding = TestClient(app, base_url="http://evil.example:8080",
                           client=("127.0.0.1", 5000))
    assert rebinding.get("/app/demo").status_code == 404  # Host is not this box
    assert APP_KID in app.state.auth.app_keys  # central's keys stay trusted beside it
    box.svc.close()
