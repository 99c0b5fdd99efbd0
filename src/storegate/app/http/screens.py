"""The staff screens over HTTP: the till (``/lanes/{lane}``) and the floor (``/floor``),
each as a page, its state as JSON and a live Server-Sent Events stream; and the staff
sign-in page.

A page is rendered on the server (every value escaped: customer data comes from
outside) with one small inline script, allowed by its hash in the page's own CSP, that
applies the stream's frames with ``textContent`` only (no HTML is ever built from
data). The stream sends a full state frame on connect and one on every change (the hub
says *that* a screen changed; the frame is recomputed for the viewer's role, once per
change and role for all the screens that share them, so a withdrawal or an erasure
is on screen at the next frame), and a comment every
:data:`KEEPALIVE_S` so proxies and the browser keep it open. It ends when the session
does (signed out, expired) or the hub cuts it off; ``EventSource`` reconnects and gets a
fresh snapshot. A request that does not ask for ``text/event-stream`` (curl, probes,
schema tools) gets the snapshot frame and the stream ends.

Access: the till's routes take cashiers of that lane and managers (a cashier signed in
at lane-1 asking for lane-2: 403 ``forbidden_lane``); the floor's take floor staff and
managers. What a role sees of a customer is core/personal/screens.py's ROLE_FIELDS.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Final

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, StreamingResponse

from storegate.app.http.hub import Message
from storegate.app.http.models import AUTH_ERRORS, errors
from storegate.app.http.security import (
    CSP,
    SESSION_COOKIE,
    Principal,
    authenticator,
    public,
    staff,
)
from storegate.app.screens import ScreenService, session_pseudonym
from storegate.core.personal.screens import (
    FloorScreen,
    LaneScreen,
    ScreenCustomer,
    StaffRole,
)

KEEPALIVE_S: Final = 15.0
RETRY_MS: Final = 1000  # EventSource reconnects this soon after a stream ends
LANE_RE: Final = r"^[A-Za-z0-9._-]{1,64}$"

router = APIRouter(tags=["staff screens"])

TillStaff = Annotated[Principal, Depends(staff("cashier", "manager"))]
FloorStaff = Annotated[Principal, Depends(staff("floor", "manager"))]
LaneId = Annotated[str, PathParam(min_length=1, max_length=64, pattern=LANE_RE)]

_HTML_200: Final = {"content": {"text/html": {"schema": {"type": "string"}}},
                    "description": "The page."}
# Each event of the stream (OpenAPI 3.2 style: the schema describes one event).
_SSE_200: Final = {"content": {"text/event-stream": {"schema": {
    "type": "object", "required": ["event", "data"], "properties": {
        "event": {"type": "string", "enum": ["state"]},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "description": "The whole state, as the /state route returns it."},
        "retry": {"type": "integer", "description": "Reconnect delay, ms."}}}}},
    "description": "Server-Sent Events: a 'state' event on connect and on every change; "
    "keep-alive comments every 15 s."}


def screens_of(request: Request) -> ScreenService:
    """The gateway's screen service; an app without one (tests of other surfaces)
    gets an empty one: every screen shows nobody."""
    svc: ScreenService | None = getattr(request.app.state, "screens", None)
    if svc is None:
        svc = getattr(request.app.state.gateway, "screens", None) or ScreenService.empty(
            request.app.state.clock)
        request.app.state.screens = svc
    return svc


def _role(principal: Principal) -> StaffRole:
    assert principal.staff_role is not None  # a staff principal has one
    return principal.staff_role


def _session(request: Request) -> str:
    return session_pseudonym(request.cookies.get(SESSION_COOKIE, ""))


def _lane_allowed(request: Request, principal: Principal, lane: str) -> None:
    """Cashiers see their own lane only; managers any. Unknown lanes (when lanes are
    configured): 404."""
    if principal.staff_role != "manager" and principal.lane not in (lane, "*"):
        raise authenticator(request).reject("forbidden_lane", status=403)
    state = screens_of(request).state
    if state.lanes and not state.has_lane(lane):
        raise HTTPException(404, detail="no such lane")


# --- state (JSON) ---------------------------------------------------------------------


@router.get("/lanes/{lane}/state", response_model=LaneScreen,
            responses={**AUTH_ERRORS, **errors(404)})
async def lane_state(lane: LaneId, request: Request, who: TillStaff) -> LaneScreen:
    """Who is at the lane and what this role may see of them (a view: an access event
    if it shows anything personal)."""
    _lane_allowed(request, who, lane)
    return screens_of(request).lane(lane, _role(who), _session(request))


@router.get("/floor/state", response_model=FloorScreen, responses=AUTH_ERRORS)
async def floor_state(request: Request, who: FloorStaff) -> FloorScreen:
    """Customers with a pickup order ready who are in the store, by zone."""
    return screens_of(request).floor(_role(who), _session(request))


# --- live (SSE) -------------------------------------------------------------------------


def _frame(data: str) -> str:
    return f"event: state\ndata: {data}\n\n"


def _stream(request: Request, topic: str,
            render: Callable[[Message | None], str]) -> StreamingResponse:
    svc = screens_of(request)
    auth = authenticator(request)
    cookie = request.cookies.get(SESSION_COOKIE, "")
    live = "text/event-stream" in request.headers.get("accept", "")

    async def frames() -> AsyncIterator[str]:
        sub = svc.hub.subscribe(topic)  # before the snapshot: no change falls between
        try:
            last = render(None)
            yield f"retry: {RETRY_MS}\n" + _frame(last)
            if not live:
                return
            while True:
                message = await sub.next(KEEPALIVE_S)
                if auth.sessions.get(cookie, auth.clock()) is None:
                    return  # signed out or expired: the screen stops showing anything
                if message is None:
                    if sub.cut_off:
                        return  # too far behind, or shutting down: reconnect, snapshot
                    yield ": keep-alive\n\n"
                    continue
                text = render(message)  # shared by every screen of this topic and role
                if text != last:
                    last = text
                    yield _frame(text)
        finally:
            sub.close()

    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store",
                                      "X-Accel-Buffering": "no"})


@router.get("/lanes/{lane}/events", responses={200: _SSE_200, **AUTH_ERRORS, **errors(404)})
async def lane_events(lane: LaneId, request: Request, who: TillStaff) -> StreamingResponse:
    """The lane's state, live: a snapshot on connect, then each change."""
    _lane_allowed(request, who, lane)
    svc, role, session = screens_of(request), _role(who), _session(request)
    return _stream(request, f"lane:{lane}",
                   lambda notice: svc.lane_frame(lane, role, session, notice))


@router.get("/floor/events", responses={200: _SSE_200, **AUTH_ERRORS})
async def floor_events(request: Request, who: FloorStaff) -> StreamingResponse:
    """The floor's state, live: a snapshot on connect, then each change."""
    svc, role, session = screens_of(request), _role(who), _session(request)
    return _stream(request, "floor", lambda notice: svc.floor_frame(role, session, notice))


# --- pages ------------------------------------------------------------------------------

# Applies a 'state' frame: rebuilds the screen with textContent only (never innerHTML),
# so whatever a name or an order id contains is shown as text.
SCREEN_JS: Final = """(function () {
"use strict";
var root = document.getElementById("screen");
var status = document.getElementById("status");
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) { e.className = cls; }
  if (text !== undefined && text !== null) { e.textContent = String(text); }
  return e;
}
function money(m) { return (m / 100).toFixed(2); }
function customer(c) {
  var box = el("div", "customer");
  if (c.greeting_name) { box.appendChild(el("div", "name", c.greeting_name)); }
  if (c.tier) { box.appendChild(el("div", "tier", c.tier)); }
  var rows = [];
  if (c.pickup) { c.pickup.forEach(function (o) {
    rows.push(["Pickup", o.order_id + (o.counter ? " at " + o.counter : "") + ", " +
               o.items + " item(s)"]); }); }
  if (c.offers) { c.offers.forEach(function (o) { rows.push(["Offer", o.title]); }); }
  if (c.preferences) { rows.push(["Likes", c.preferences.join(", ")]); }
  if (c.sizes) { rows.push(["Sizes", Object.keys(c.sizes).map(function (k) {
    return k + " " + c.sizes[k]; }).join(", ")]); }
  if (c.favourite_categories) { rows.push(["Favourites", c.favourite_categories.join(", ")]); }
  if (c.segments) { rows.push(["Segments", c.segments.join(", ")]); }
  if (c.lifetime_spend_minor) { rows.push(["Lifetime", money(c.lifetime_spend_minor)]); }
  if (c.recent_purchases) { c.recent_purchases.forEach(function (p) {
    rows.push(["Bought", p.name + " (" + p.channel + ", " + money(p.amount_minor) + ")"]);
  }); }
  rows.forEach(function (r) {
    var row = el("div", "row");
    row.appendChild(el("span", "label", r[0]));
    row.appendChild(el("span", "value", r[1]));
    box.appendChild(row);
  });
  return box;
}
function lane(s) {
  var out = el("div", "state");
  if (s.token) { out.appendChild(el("div", "token " + s.token.state, s.token.text)); }
  if (s.customer) { out.appendChild(customer(s.customer)); }
  else if (s.present) { out.appendChild(el("div", "present", "Customer present")); }
  else if (s.source === "ambiguous") {
    out.appendChild(el("div", "present", s.candidates + " customers at the till")); }
  else { out.appendChild(el("div", "idle", "Nobody identified")); }
  return out;
}
function floor(s) {
  var out = el("div", "state");
  if (!s.waiting.length) { out.appendChild(el("div", "idle", "No pickups waiting")); }
  s.waiting.forEach(function (w) {
    var item = el("div", "waiting");
    item.appendChild(el("div", "zone", w.zone || "in the store"));
    item.appendChild(customer(w.customer));
    out.appendChild(item);
  });
  return out;
}
var render = root.dataset.kind === "floor" ? floor : lane;
var source = new EventSource(root.dataset.events);
source.addEventListener("state", function (e) {
  root.replaceChildren(render(JSON.parse(e.data)));
  status.textContent = "live";
  status.className = "live";
});
source.onerror = function () { status.textContent = "reconnecting"; status.className = "down"; };
}());
"""

SIGNIN_JS: Final = """(function () {
"use strict";
var form = document.getElementById("signin");
var msg = document.getElementById("msg");
form.addEventListener("submit", function (e) {
  e.preventDefault();
  var lane = form.elements.lane.value;
  msg.textContent = "";
  fetch("/staff/signin", {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({lane: lane, pin: form.elements.pin.value})})
  .then(function (r) {
    if (!r.ok) { throw new Error(r.status === 429 ? "Too many tries: wait a minute" :
                                 "Wrong PIN"); }
    return r.json();
  })
  .then(function (s) {
    window.location.assign(s.role === "floor" ? "/floor" :
                           "/lanes/" + encodeURIComponent(s.lane));
  })
  .catch(function (err) { form.elements.pin.value = ""; msg.textContent = err.message; });
});
}());
"""


def _hash(script: str) -> str:
    return base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


def _csp(script: str) -> str:
    # The app-wide CSP allows scripts from 'self' only; this page's one inline script is
    # allowed by its hash, nothing else inline.
    return CSP.replace("script-src 'self'", f"script-src 'self' 'sha256-{_hash(script)}'")


SCREEN_CSP: Final = _csp(SCREEN_JS)
SIGNIN_CSP: Final = _csp(SIGNIN_JS)

# Arm's length on a small touch screen: large type, high contrast, nothing to tap but
# sign-out.
STYLE: Final = """
*{box-sizing:border-box}
body{margin:0;background:#000;color:#fff;font:28px/1.3 system-ui,sans-serif}
header{display:flex;justify-content:space-between;align-items:center;padding:.4em .6em;
background:#222;font-size:22px}
#status.live{color:#7CFC00}#status.down{color:#ff6b6b}
main{padding:.6em}
.name{font-size:64px;font-weight:700;line-height:1.1}
.tier{display:inline-block;margin:.2em 0;padding:.05em .5em;background:#ffd400;color:#000;
font-weight:700;border-radius:.3em}
.row{display:flex;gap:.6em;margin:.25em 0}.label{min-width:6.5em;color:#bbb}
.value{font-weight:600}
.token{font-size:40px;font-weight:700;padding:.3em .5em;margin-bottom:.4em;border-radius:.3em}
.token.reserved,.token.redeemed{background:#0a7a0a}.token.rejected{background:#b00020}
.token.released{background:#555}
.present,.idle{font-size:40px;color:#bbb;padding:1em 0}
.waiting{border-bottom:2px solid #444;padding:.4em 0}.zone{color:#ffd400;font-weight:700}
form{display:flex;flex-direction:column;gap:.6em;max-width:16em}
input,button{font:inherit;padding:.4em;border-radius:.3em;border:2px solid #fff}
button{background:#ffd400;color:#000;font-weight:700}
#msg{color:#ff6b6b;min-height:1.3em}
"""


def _page(title: str, body: str, script: str) -> str:
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>{body}<script>{script}</script></body></html>")


def _e(value: object) -> str:
    return html.escape(str(value))


def _money(minor: int) -> str:
    return f"{minor / 100:.2f}"


def render_customer(c: ScreenCustomer) -> str:
    """The customer block, as the script builds it (every value escaped)."""
    parts = ['<div class="customer">']
    if c.greeting_name:
        parts.append(f'<div class="name">{_e(c.greeting_name)}</div>')
    if c.tier:
        parts.append(f'<div class="tier">{_e(c.tier)}</div>')
    rows: list[tuple[str, str]] = []
    for o in c.pickup or ():
        at = f" at {o.counter}" if o.counter else ""
        rows.append(("Pickup", f"{o.order_id}{at}, {o.items} item(s)"))
    rows += [("Offer", o.title) for o in c.offers or ()]
    if c.preferences:
        rows.append(("Likes", ", ".join(c.preferences)))
    if c.sizes:
        rows.append(("Sizes", ", ".join(f"{k} {v}" for k, v in c.sizes.items())))
    if c.favourite_categories:
        rows.append(("Favourites", ", ".join(c.favourite_categories)))
    if c.segments:
        rows.append(("Segments", ", ".join(c.segments)))
    if c.lifetime_spend_minor:
        rows.append(("Lifetime", _money(c.lifetime_spend_minor)))
    rows += [("Bought", f"{p.name} ({p.channel}, {_money(p.amount_minor)})")
             for p in c.recent_purchases or ()]
    parts += [f'<div class="row"><span class="label">{_e(k)}</span>'
              f'<span class="value">{_e(v)}</span></div>' for k, v in rows]
    parts.append("</div>")
    return "".join(parts)


def render_lane(s: LaneScreen) -> str:
    out = ['<div class="state">']
    if s.token is not None:
        out.append(f'<div class="token {_e(s.token.state)}">{_e(s.token.text)}</div>')
    if s.customer is not None:
        out.append(render_customer(s.customer))
    elif s.present:
        out.append('<div class="present">Customer present</div>')
    elif s.source == "ambiguous":
        out.append(f'<div class="present">{s.candidates} customers at the till</div>')
    else:
        out.append('<div class="idle">Nobody identified</div>')
    out.append("</div>")
    return "".join(out)


def render_floor(s: FloorScreen) -> str:
    out = ['<div class="state">']
    if not s.waiting:
        out.append('<div class="idle">No pickups waiting</div>')
    for w in s.waiting:
        out.append(f'<div class="waiting"><div class="zone">{_e(w.zone or "in the store")}'
                   f"</div>{render_customer(w.customer)}</div>")
    out.append("</div>")
    return "".join(out)


def _screen(title: str, kind: str, events: str, state_html: str, who: Principal) -> str:
    body = (f"<header><span>{_e(title)}</span><span>{_e(who.subject)} ({_e(who.staff_role)})"
            f'</span><span id="status">connecting</span></header>'
            f'<main id="screen" data-kind="{_e(kind)}" data-events="{_e(events)}">'
            f"{state_html}</main>")
    return _page(title, body, SCREEN_JS)


@router.get("/lanes/{lane}", responses={200: _HTML_200, **AUTH_ERRORS, **errors(404)})
async def lane_page(lane: LaneId, request: Request, who: TillStaff) -> HTMLResponse:
    """The till screen: who is at this lane, live."""
    _lane_allowed(request, who, lane)
    state = screens_of(request).lane(lane, _role(who), _session(request))
    page = _screen(f"Till {lane}", "lane", f"/lanes/{lane}/events", render_lane(state), who)
    return HTMLResponse(page, headers={"Content-Security-Policy": SCREEN_CSP})


@router.get("/floor", responses={200: _HTML_200, **AUTH_ERRORS})
async def floor_page(request: Request, who: FloorStaff) -> HTMLResponse:
    """The floor screen: pickups waiting, by zone, live."""
    state = screens_of(request).floor(_role(who), _session(request))
    page = _screen("Floor: pickups", "floor", "/floor/events", render_floor(state), who)
    return HTMLResponse(page, headers={"Content-Security-Policy": SCREEN_CSP})


@router.get("/staff/sign-in", dependencies=[Depends(public)], responses={200: _HTML_200})
async def signin_page(lane: Annotated[str | None, Query(max_length=64, pattern=LANE_RE)]
                      = None) -> HTMLResponse:
    """The staff sign-in page (PIN) for a lane, chosen by the URL
    (``/staff/sign-in?lane=lane-1``); it posts to ``POST /staff/signin``."""
    lane_field = (f'<input type=hidden name=lane value="{_e(lane)}">'
                  f"<div>Lane {_e(lane)}</div>" if lane else
                  '<input name=lane placeholder="lane" required maxlength=64 '
                  'pattern="[A-Za-z0-9._-]+" autocomplete=off>')
    body = ("<header><span>Staff sign-in</span></header><main>"
            f'<form id="signin">{lane_field}'
            '<input name=pin type=password inputmode=numeric autocomplete=off '
            'placeholder="PIN" required maxlength=64>'
            '<button type=submit>Sign in</button><div id="msg"></div></form></main>')
    return HTMLResponse(_page("Staff sign-in", body, SIGNIN_JS),
                        headers={"Content-Security-Policy": SIGNIN_CSP})

