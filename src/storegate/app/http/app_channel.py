"""The customer app channel over HTTP: the offers a customer holds, their QR codes, and
the push streams (Server-Sent Events and WebSocket) with resume by cursor; the
reference web app at ``/app``; the demo's token page (docs/http.md, "The app channel").

Every route is the ``customer`` role and reads only the caller's own rows: the
pseudonym comes from the verified token, never from the request, so another
customer's offer id is simply not found (404, the same answer as an id that never
existed: an id tells nothing).

Streams: first the inbox rows after the client's cursor, then live from the hub (the
subscription is taken *before* the inbox is read, so nothing committed in between is
lost), each message once: the cursor is the SSE ``id`` (and the WebSocket message's
``id``), and a live message at or below the last cursor sent is skipped. When the hub
cuts a slow client off, or the gateway stops, the stream ends; the client reconnects
with its last cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated, Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    Header,
    HTTPException,
    Path,
    Query,
    Request,
    WebSocket,
)
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Route
from starlette.websockets import WebSocketDisconnect

from storegate.adapters import qr
from storegate.adapters.app_inbox import MAX_PER_CUSTOMER, InboxMessage, OfferRow
from storegate.app.app_channel import AppChannel, topic
from storegate.app.http.hub import Message, Subscription
from storegate.app.http.models import AUTH_ERRORS, errors
from storegate.app.http.security import (
    Authenticator,
    CustomerPrincipal,
    authenticator,
    public,
)
from storegate.core.webauth import TokenRejected, sign_app_token

log = logging.getLogger(__name__)

KEEPALIVE_S: Final = 15.0  # a comment line: proxies and phones keep an idle stream open
RETRY_MS: Final = 2000  # the EventSource reconnect delay the stream suggests
WS_PROTOCOL: Final = "storegate.v1"  # the WebSocket subprotocol the server selects
WS_TOKEN_PREFIX: Final = "bearer."  # noqa: S105 - a prefix, not a secret; Sec-WebSocket-Protocol: storegate.v1, bearer.<JWS>
MAX_CURSOR: Final = (1 << 63) - 1
OFFER_ID: Final = r"^[0-9a-f]{32}$"
DEMO_KID: Final = "demo-local"
DEMO_TOKEN_LIFETIME_S: Final = 12 * 3600.0
DEMO_USERS_MAX: Final = 100
LOOPBACK: Final = frozenset({"127.0.0.1", "::1", "localhost"})

router = APIRouter(prefix="/app", tags=["customer"])
demo_router = APIRouter(prefix="/app", tags=["demo"])


# --- bodies --------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Discount(_Body):
    kind: Literal["percent", "amount_minor"]
    value: int


class OfferView(_Body):
    """An offer the customer holds, and where it stands."""

    offer_id: str = Field(pattern=OFFER_ID)
    campaign: str
    title: str
    text: str
    image: str | None = Field(description="An https image the app may show.")
    discount: Discount | None
    token: str = Field(description="What the QR code carries: shown at the till.")
    state: Literal["issued", "reserved", "redeemed"] = Field(
        description="issued: redeemable; reserved: scanned at a lane, the transaction "
        "open; redeemed: used.")
    state_at: float
    issued_at: float
    expires_at: float


class OfferList(_Body):
    offers: list[OfferView]


def _view(row: OfferRow) -> OfferView:
    d = row.data
    return OfferView(offer_id=row.offer_id, campaign=str(d.get("campaign", "")),
                     title=str(d.get("title", "")), text=str(d.get("text", "")),
                     image=d.get("image"), discount=d.get("discount"), token=row.token,
                     state=row.state, state_at=row.state_at, issued_at=row.issued_at,
                     expires_at=row.expires_at)


def offer_list(rows: list[OfferRow]) -> OfferList:
    """The body of ``GET /app/offers``: the route's and its fast path's (fast.py)."""
    return OfferList(offers=[_view(r) for r in rows])


# --- helpers -------------------------------------------------------------------------


def channel_of(request: Request | WebSocket) -> AppChannel:
    """The gateway's app channel; 404 where it has none (HTTP on a gateway whose
    personalisation is not running, a test stand-in): there is no such resource here,
    and a phone treats it like any 404 (try later) rather than as a server fault."""
    channel = getattr(request.app.state.gateway, "app_channel", None)
    if not isinstance(channel, AppChannel):
        raise HTTPException(404, detail="the app channel is not available on this gateway")
    return channel


def resume_cursor(last_event_id: str | None, since: int | None) -> int:
    """Where a stream starts: ``Last-Event-ID`` (what a reconnecting EventSource sends:
    the newest) wins over ``?since=``; neither: from the oldest message held."""
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > MAX_CURSOR:
            raise HTTPException(400, detail="Last-Event-ID is not a cursor (a number)")
        return int(text)
    return since or 0


def sse_frame(kind: str, data: dict[str, Any], cursor: int | None) -> str:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"id: {cursor}\n" if cursor is not None else ""
    return f"{head}event: {kind}\ndata: {body}\n\n"


async def messages(channel: AppChannel, customer: str, cursor: int, sub: Subscription,
                   *, keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[
                       InboxMessage | Message | None]:
    """The stream of one client: the inbox after ``cursor``, then live; ``None`` is a
    keep-alive. Ends when the hub ends the subscription (cut off, shutdown). ``sub`` is
    taken by the caller before this reads the inbox."""
    last = cursor
    while True:  # the backlog, a page at a time
        page = await channel.since(customer, last)
        for m in page:
            last = m.cursor
            yield m
        if len(page) < MAX_PER_CUSTOMER:
            break
    while True:
        live = await sub.next(keepalive_s)
        if live is None:
            if sub.cut_off:
                return
            yield None
            continue
        if live.cursor is not None:
            if live.cursor <= last:
                continue  # sent from the inbox already
            last = live.cursor
        yield live


# --- routes --------------------------------------------------------------------------


@router.get("/offers", response_model=OfferList, responses={**AUTH_ERRORS, **errors(404)})
async def list_offers(customer: CustomerPrincipal, request: Request) -> OfferList:
    """The caller's offers that have not expired, newest first, with their state."""
    return offer_list(await channel_of(request).offers(customer.subject))


OfferId = Annotated[str, Path(pattern=OFFER_ID, description="32 hex digits.")]


async def _token_of(request: Request, customer: str, offer_id: str) -> str:
    row = await channel_of(request).offer(customer, offer_id)
    if row is None:  # another customer's, expired, or never: the same answer
        raise HTTPException(404, detail="no such offer")
    return row.token


@router.get("/offers/{offer_id}/qr.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "The QR code."},
                       **AUTH_ERRORS, **errors(404)})
async def offer_qr_png(offer_id: OfferId, customer: CustomerPrincipal,
                       request: Request) -> Response:
    """The offer's QR code as PNG (error correction M, 8 px a module, quiet zone)."""
    token = await _token_of(request, customer.subject, offer_id)
    return Response(await asyncio.to_thread(qr.png, token), media_type="image/png")


@router.get("/offers/{offer_id}/qr.svg", response_class=Response,
            responses={200: {"content": {"image/svg+xml": {}}, "description": "The QR code."},
                       **AUTH_ERRORS, **errors(404)})
async def offer_qr_svg(offer_id: OfferId, customer: CustomerPrincipal,
                       request: Request) -> Response:
    """The offer's QR code as SVG (scales to any screen)."""
    token = await _token_of(request, customer.subject, offer_id)
    return Response(await asyncio.to_thread(qr.svg, token), media_type="image/svg+xml")


@router.get("/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "Server-Sent Events: `offer`, `redemption`, "
                             "`pickup`; `id` is the cursor."},
                       **AUTH_ERRORS, **errors(400, 404)})
async def events(customer: CustomerPrincipal, request: Request,
                 since: Annotated[int | None, Query(ge=0, le=MAX_CURSOR)] = None,
                 last_event_id: Annotated[str | None, Header(
                     alias="Last-Event-ID", max_length=32)] = None) -> StreamingResponse:
    """Server-Sent Events: the inbox after the cursor (``Last-Event-ID``, else
    ``?since=``), then live. Keep-alive comments every 15 s. Ends when the client is too
    slow or the gateway stops: reconnect with the last ``id``."""
    channel = channel_of(request)
    cursor = resume_cursor(last_event_id, since)

    async def stream() -> AsyncIterator[str]:
        # subscribed here, not in the route: a client gone before the body starts
        # never runs this generator, and must leave no subscription behind
        sub = channel.hub.subscribe(topic(customer.subject))
        try:
            yield f"retry: {RETRY_MS}\n\n"
            async for m in messages(channel, customer.subject, cursor, sub,
                                    keepalive_s=getattr(request.app.state, "keepalive_s",
                                                        KEEPALIVE_S)):
                if m is None:
                    yield ": keep-alive\n\n"
                else:
                    yield sse_frame(m.kind, m.data, m.cursor)
        finally:
            sub.close()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"X-Accel-Buffering": "no"})


def _ws_token(ws: WebSocket) -> tuple[str | None, bool]:
    """The token a WebSocket client presented, and whether it offered our subprotocol.
    Browsers cannot set headers on a WebSocket, so the token rides in
    ``Sec-WebSocket-Protocol`` (``storegate.v1, bearer.<JWS>``); native apps may send
    ``Authorization: Bearer`` instead. Never a query parameter: URLs end up in proxy
    and server logs, and in the browser's history."""
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",")
               if p.strip()]
    token = next((p[len(WS_TOKEN_PREFIX):] for p in offered
                  if p.startswith(WS_TOKEN_PREFIX)), None)
    if token is None:
        scheme, _, value = ws.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
    return token, WS_PROTOCOL in offered


def _ws_customer(ws: WebSocket, auth: Authenticator) -> str:
    """The pseudonym of a WebSocket's verified token; HTTPException(401) otherwise
    (counted and logged once by reason, like every refusal)."""
    token, _ = _ws_token(ws)
    if token is None:
        raise auth.reject("unauthenticated")
    if len(token) > 8192 or token.count(".") != 2:
        raise auth.reject("malformed_token")
    try:
        claims = auth.customer_claims(token)
    except TokenRejected as exc:
        raise auth.reject(f"token_{exc.reason}") from None
    return claims.subject


@router.websocket("/ws")
async def websocket_stream(ws: WebSocket,
                           since: Annotated[int, Query(ge=0, le=MAX_CURSOR)] = 0) -> None:
    """The same stream as ``/app/events`` over WebSocket: JSON text messages
    ``{"id": cursor, "kind": ..., "data": {...}}`` (``{"kind": "keepalive"}`` every
    15 s). Closes 1008 for a missing or bad token, 1013 when the client fell behind or
    the gateway stops (reconnect with ``?since=<last id>``)."""
    auth: Authenticator = ws.app.state.auth
    try:
        customer = _ws_customer(ws, auth)
        channel = channel_of(ws)
    except HTTPException as exc:
        await ws.close(code=1008 if exc.status_code in (401, 403) else 1013,
                       reason=str(exc.detail)[:100])
        return
    _, offered = _ws_token(ws)
    await ws.accept(subprotocol=WS_PROTOCOL if offered else None)
    sub = channel.hub.subscribe(topic(customer))
    keepalive = getattr(ws.app.state, "keepalive_s", KEEPALIVE_S)

    async def send_all() -> None:
        async for m in messages(channel, customer, since, sub, keepalive_s=keepalive):
            if m is None:
                await ws.send_text('{"kind":"keepalive"}')
            else:
                await ws.send_text(json.dumps({"id": m.cursor, "kind": m.kind,
                                               "data": m.data}, separators=(",", ":")))
        await ws.close(code=1013, reason="reconnect with since=<last id>")

    async def until_gone() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:  # the client has nothing to say; its frames are read and dropped
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return

    sender = asyncio.create_task(send_all())
    reader = asyncio.create_task(until_gone())
    try:
        await asyncio.wait((sender, reader), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, reader):
            task.cancel()
        for task in (sender, reader):
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect,
                                     RuntimeError):
                await task
        sub.close()


# --- the reference web app (static, public: it holds nothing until given a token) ----

_STATIC: Final = {"app.js": "text/javascript; charset=utf-8",
                  "app.css": "text/css; charset=utf-8"}


def _static(name: str) -> bytes:
    return resources.files("storegate.app.http").joinpath("static", name).read_bytes()


async def _page(request: Request) -> Response:
    del request
    return HTMLResponse(_static("app.html"))


async def _asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _STATIC:
        return Response(b'{"detail":"Not Found"}', 404, media_type="application/json")
    # cached for a day by name; the page itself is no-store (the security headers)
    return Response(_static(name), media_type=_STATIC[name],
                    headers={"Cache-Control": "public, max-age=86400"})


# Plain routes, outside the API (no OpenAPI operation, no access rule to declare): the
# page and its two files carry no data; everything the page shows comes from the
# customer routes above with the token it is given.
static_routes: Final = (Route("/app", _page, methods=["GET"]),
                        Route("/app/static/{name}", _asset, methods=["GET"]))


# --- the demo's tokens -----------------------------------------------------------------


def enable_demo(app: FastAPI) -> None:
    """``[http] demo_app_tokens``: a key pair made now (the demo has no central) is
    trusted for customer tokens, and ``/app/demo`` lists the simulated app users with
    links carrying tokens it signs."""
    key = Ed25519PrivateKey.generate()
    auth: Authenticator = app.state.auth
    auth.app_keys[DEMO_KID] = key.public_key()
    app.state.demo_app_key = key
    app.include_router(demo_router)


def _loopback_only(request: Request) -> None:
    """The token page hands out working tokens: only to this box, asked by its own
    name (the Host check stops a DNS-rebinding page from reading it)."""
    client = request.client.host if request.client is not None else ""
    host = request.headers.get("host", "")
    hostname = host.rsplit(":", 1)[0].strip("[]") if not host.startswith("[") else \
        host[1:].split("]", 1)[0]
    if client not in LOOPBACK or hostname not in LOOPBACK:
        raise HTTPException(404, detail="Not Found")


@demo_router.get("/demo", response_class=HTMLResponse, include_in_schema=False,
                 dependencies=[Depends(public), Depends(_loopback_only)])
async def demo_users(request: Request) -> HTMLResponse:
    """The demo's app users, each a link to the reference app with a token (fragment:
    never sent to a server)."""
    key: Ed25519PrivateKey = request.app.state.demo_app_key
    auth = authenticator(request)
    registry = getattr(request.app.state.gateway, "registry", None)
    customers: list[str] = []
    if registry is not None:
        customers = sorted(registry.customers())[:DEMO_USERS_MAX]
    now = auth.clock()
    items = []
    for c in customers:
        token = sign_app_token(key, kid=DEMO_KID, subject=c, audience=auth.settings.app_audience,
                               issued_at=now, lifetime_s=DEMO_TOKEN_LIFETIME_S)
        items.append(f'<li><a href="/app#token={token}">{_esc(c)}</a></li>')
    body = "\n".join(items) or "<li>No app users yet: the simulated store starts them.</li>"
    return HTMLResponse(
        "<!doctype html><html lang=en><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<title>storegate demo: app users</title>"
        "<link rel=stylesheet href='/app/static/app.css'>"
        "<main><h1>Demo app users</h1><p>Each link opens the reference app as that "
        "customer (a demo token, valid 12 hours).</p>"
        f"<ul class=users>{body}</ul></main></html>")


def _esc(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))
