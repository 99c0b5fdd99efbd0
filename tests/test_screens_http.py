"""Staff screens over HTTP (app/http/screens.py), in process: roles and lane scoping, the
JSON state, escaping of customer data in the pages, the page's CSP, the SSE stream
(snapshot on connect, then each change, the end of the session ends it) driven as
ASGI on one loop, and access events emitted once."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from storegate.app.http.hub import Hub
from storegate.app.http.screens import SCREEN_JS, SIGNIN_JS
from storegate.app.http.security import new_session_cookie
from storegate.app.screens import ScreenService, session_pseudonym
from storegate.core import events as ev
from storegate.core import payloads as p
from tests.support.http import CASHIER_PIN, MANAGER_PIN, NOW, http_settings, make_client
from tests.test_screens import (
    CARD_ANNA,
    completed,
    entered,
    loyalty,
    record,
    registry,
    rejected,
    state,
)

EVIL = "<script>alert(1)</script>"


class _Emitted(list[ev.EventDraft]):
    def __call__(self, drafts: list[ev.EventDraft]) -> None:
        self.extend(drafts)


def setup(tmp_path: Path, **profile: Any) -> tuple[TestClient, FastAPI, ScreenService,
                                                   _Emitted]:
    client, app, _ = make_client(tmp_path)
    emitted = _Emitted()
    svc = ScreenService(state(registry(record("anna", **profile))), Hub(), emit=emitted,
                        clock=lambda: NOW)
    app.state.screens = svc
    return client, app, svc, emitted


def signed_in(app: FastAPI, lane: str, pin: str) -> TestClient:
    c = TestClient(app, base_url="https://testserver")
    r = c.post("/staff/signin", json={"lane": lane, "pin": pin})
    assert r.status_code == 200, r.text
    return c


def test_lane_scoping_and_roles(tmp_path: Path) -> None:
    client, app, _, _ = setup(tmp_path)
    cashier = signed_in(app, "lane-1", CASHIER_PIN)
    manager = signed_in(app, "lane-7", MANAGER_PIN)
    floor = signed_in(app, "floor", "5555")
    for suffix in ("", "/state", "/events"):
        assert cashier.get(f"/lanes/lane-1{suffix}").status_code == 200
        r = cashier.get(f"/lanes/lane-2{suffix}")  # a cashier at lane-1 cannot see lane-2
        assert (r.status_code, r.json()["detail"]) == (403, "forbidden_lane")
        assert manager.get(f"/lanes/lane-2{suffix}").status_code == 200
        assert floor.get(f"/lanes/lane-1{suffix}").status_code == 403
        assert client.get(f"/lanes/lane-1{suffix}").status_code == 401
        assert floor.get(f"/floor{suffix}").status_code == 200
        assert manager.get(f"/floor{suffix}").status_code == 200
        assert cashier.get(f"/floor{suffix}").status_code == 403
    assert manager.get("/lanes/lane-9/state").status_code == 404  # not a configured lane
    assert manager.get("/lanes/..%2Fadmin/state").status_code in (404, 422)


def test_state_json_follows_the_events(tmp_path: Path) -> None:
    _, app, svc, _ = setup(tmp_path)
    cashier = signed_in(app, "lane-1", CASHIER_PIN)
    assert cashier.get("/lanes/lane-1/state").json() == {
        "lane": "lane-1", "present": False, "source": None, "candidates": 0,
        "transaction": False, "customer": None, "token": None}
    svc.on_processed([loyalty(CARD_ANNA), rejected("expired")])
    body = cashier.get("/lanes/lane-1/state").json()
    assert body["present"] and body["source"] == "loyalty"
    assert body["customer"]["greeting_name"] == "Anna"
    assert body["customer"]["tier"] == "gold"
    assert "lifetime_spend_minor" not in {k for k, v in body["customer"].items() if v}
    assert body["token"]["state"] == "rejected" and body["token"]["reason"] == "expired"
    svc.on_processed([completed()])
    assert cashier.get("/lanes/lane-1/state").json()["present"] is False


def test_customer_data_is_escaped_in_the_pages(tmp_path: Path) -> None:
    _, app, svc, _ = setup(tmp_path, greeting_name=EVIL, tier="<b>gold</b>")
    svc.on_processed([entered("anna", None), entered("anna", "dairy"), loyalty(CARD_ANNA)])
    cashier = signed_in(app, "lane-1", CASHIER_PIN)
    page = cashier.get("/lanes/lane-1")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert EVIL not in page.text and "<b>gold</b>" not in page.text
    floor = signed_in(app, "floor", "5555").get("/floor")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in floor.text and EVIL not in floor.text
    # the only script on the page is ours; the stream carries JSON (applied as text)
    assert page.text.count("<script>") == 1
    state_json = cashier.get("/lanes/lane-1/state").json()
    assert state_json["customer"]["greeting_name"] == EVIL


def test_pages_allow_only_their_own_inline_script(tmp_path: Path) -> None:
    _, app, _, _ = setup(tmp_path)
    cashier = signed_in(app, "lane-1", CASHIER_PIN)
    for url, script in (("/lanes/lane-1", SCREEN_JS), ("/staff/sign-in?lane=lane-1",
                                                        SIGNIN_JS)):
        r = cashier.get(url)
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        csp = r.headers["content-security-policy"]
        assert f"script-src 'self' 'sha256-{digest}'" in csp
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert f"<script>{script}</script>" in r.text
        assert "http://" not in r.text and "https://" not in r.text  # no CDN
    assert "innerHTML" not in SCREEN_JS


def test_sign_in_page_is_public_and_escapes_the_lane(tmp_path: Path) -> None:
    client, _, _, _ = setup(tmp_path)
    r = client.get("/staff/sign-in?lane=lane-1")
    assert r.status_code == 200 and 'value="lane-1"' in r.text
    assert client.get("/staff/sign-in?lane=%3Cscript%3E").status_code == 422
    assert 'name=lane placeholder' in client.get("/staff/sign-in").text


def test_access_events_once_per_session_customer_and_transaction(tmp_path: Path) -> None:
    _, app, svc, emitted = setup(tmp_path)
    svc.on_processed([loyalty(CARD_ANNA)])
    cashier = signed_in(app, "lane-1", CASHIER_PIN)
    for url in ("/lanes/lane-1", "/lanes/lane-1/state", "/lanes/lane-1/events",
                "/lanes/lane-1/state"):
        assert cashier.get(url).status_code == 200
    assert len(emitted) == 1
    data = emitted[0].data
    assert isinstance(data, p.StaffViewed)
    assert data.session == session_pseudonym(cashier.cookies["sg_session"])
    assert (data.lane, data.staff_role, data.customer) == ("lane-1", "cashier", "anna")
    assert CASHIER_PIN not in data.model_dump_json()
    assert cashier.cookies["sg_session"] not in data.model_dump_json()
    signed_in(app, "lane-3", MANAGER_PIN).get("/lanes/lane-1/state")  # another session
    assert len(emitted) == 2
    manager_view = emitted[1].data
    assert isinstance(manager_view, p.StaffViewed) and manager_view.staff_role == "manager"
    assert manager_view.fields == [  # every field it holds (no offers: no engine here)
        "greeting_name", "tier", "segments", "preferences", "sizes", "favourite_categories",
        "recent_purchases", "lifetime_spend_minor", "pickup"]


# --- the stream, as ASGI on one loop -----------------------------------------------------


class _Stream:
    """One SSE request driven directly: what the app sends, and a disconnect switch."""

    def __init__(self, app: FastAPI, path: str, cookie: str, accept: str) -> None:
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()
        self._asked = False
        scope = {"type": "http", "http_version": "1.1", "method": "GET",
                 "scheme": "https", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
                 "server": ("testserver", 443),
                 "headers": [(b"host", b"testserver"), (b"accept", accept.encode()),
                             (b"cookie", f"sg_session={cookie}".encode())]}
        self.task = asyncio.ensure_future(app(scope, self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: MutableMapping[str, Any]) -> None:
        await self.sent.put(dict(message))

    async def start(self) -> int:
        m = await asyncio.wait_for(self.sent.get(), 5)
        assert m["type"] == "http.response.start"
        return int(m["status"])

    async def frame(self) -> dict[str, Any] | None:
        """The next state frame's JSON; None when the stream ended."""
        while True:
            m = await asyncio.wait_for(self.sent.get(), 5)
            body = m.get("body", b"").decode()
            if body:
                found = re.search(r"^data: (.*)$", body, re.M)
                if found:
                    parsed: dict[str, Any] = json.loads(found.group(1))
                    return parsed
            if not m.get("more_body", False):
                return None


def _session(app: FastAPI, lane: str, role: str) -> str:
    cookie = new_session_cookie()
    cred = next(c for c in http_settings().staff if c.role == role)
    app.state.auth.sessions.create(cookie, cred, lane, NOW)
    return cookie


def test_sse_snapshot_then_each_change_then_the_session_ends_it(tmp_path: Path) -> None:
    _, app, svc, emitted = setup(tmp_path)
    cookie = _session(app, "lane-1", "cashier")

    async def run() -> None:
        s = _Stream(app, "/lanes/lane-1/events", cookie, "text/event-stream")
        assert await s.start() == 200
        first = await s.frame()
        assert first is not None and first["present"] is False  # the snapshot
        svc.on_processed([loyalty(CARD_ANNA)])
        second = await s.frame()
        assert second is not None and second["customer"]["greeting_name"] == "Anna"
        svc.on_processed([completed()])
        third = await s.frame()
        assert third is not None and third["present"] is False and third["customer"] is None
        svc.on_processed([loyalty(CARD_ANNA, tx="tx-2")])
        assert (await s.frame() or {}).get("present") is True
        svc.forget(["anna"])  # erasure / withdrawal: gone from the screen at once
        assert (await s.frame() or {}).get("customer") is None
        app.state.auth.sessions.end(cookie)  # signed out: the next notice ends it
        svc.on_processed([loyalty(CARD_ANNA, tx="tx-3")])
        assert await s.frame() is None
        await asyncio.wait_for(s.task, 5)
        assert svc.hub.subscribers() == 0

    asyncio.run(run())
    assert [getattr(d.data, "customer", None) for d in emitted] == ["anna", "anna"]


def test_sse_without_event_stream_accept_is_one_snapshot(tmp_path: Path) -> None:
    _, app, _, _ = setup(tmp_path)
    cookie = _session(app, "floor", "floor")

    async def run() -> None:
        s = _Stream(app, "/floor/events", cookie, "*/*")
        assert await s.start() == 200
        assert await s.frame() == {"waiting": []}
        assert await s.frame() is None
        await asyncio.wait_for(s.task, 5)

    asyncio.run(run())


def test_a_client_going_away_unsubscribes(tmp_path: Path) -> None:
    _, app, svc, _ = setup(tmp_path)
    cookie = _session(app, "lane-1", "cashier")

    async def run() -> None:
        s = _Stream(app, "/lanes/lane-1/events", cookie, "text/event-stream")
        await s.start()
        await s.frame()
        assert svc.hub.subscribers("lane:lane-1") == 1
        s.gone.set()
        await asyncio.wait_for(s.task, 5)
        assert svc.hub.subscribers("lane:lane-1") == 0

    asyncio.run(run())


def test_shutdown_ends_live_streams(tmp_path: Path) -> None:
    _, app, svc, _ = setup(tmp_path)
    cookie = _session(app, "lane-1", "cashier")

    async def run() -> None:
        s = _Stream(app, "/lanes/lane-1/events", cookie, "text/event-stream")
        await s.start()
        await s.frame()
        svc.hub.close_all()  # what the server does when the gateway stops
        assert await s.frame() is None
        await asyncio.wait_for(s.task, 5)

    asyncio.run(run())
