"""The HTTP server: the app factory and uvicorn run as a task in the gateway's loop.

FastAPI is an adapter at the edge: routes are thin and call the gateway's services; the
decisions (token checks, rate limits, readiness) are pure functions elsewhere. The app
is assembled from one router per surface:

    ops.ops_router      /healthz /readyz /metrics           (public / metrics)
    ops.admin_router    /admin /admin/status /admin/events   (admin)
    staff.router        /staff/signin /staff/session ...     (public sign-in / staff)
    customer.router     /app/me /app/checkin                 (customer)
    app_channel.router  /app/offers /app/events /app/ws ...  (customer; /app: static)
    screens.router      /lanes/{lane} /floor (+ /state, /events), /staff/sign-in

A surface added later is one more router in :data:`ROUTERS` (or ``extra_routers``);
every route must declare its access rule or ``build_app`` refuses to build
(security.check_routes).

uvicorn runs inside the gateway's own event loop (``Server.serve()`` as a task of the
gateway's TaskGroup): one loop, one process, direct calls into the gateway's services,
no thread hand-off. The access log is off (it costs ~30 % of throughput, DOMAIN.md §4);
httptools is used when installed (≈2x h11). uvloop would have to be the whole gateway's
loop, chosen by the CLI, so it is not switched on here.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import uvicorn
from fastapi import APIRouter, FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storegate import __version__
from storegate.adapters.plumbing import describe_error, sleep_until_stopped
from storegate.app.http import app_channel, customer, ops, screens, staff
from storegate.app.http.fast import OFFERS_TEMPLATE, FastReads
from storegate.app.http.models import Health
from storegate.app.http.ops import GatewayLike, Metrics
from storegate.app.http.security import (
    Authenticator,
    BoundedBody,
    RateLimits,
    SecureHeaders,
    check_routes,
)
from storegate.config import HttpConfig
from storegate.core.backoff import Backoff

log = logging.getLogger(__name__)

Clock = Callable[[], float]

ROUTERS: Final[tuple[APIRouter, ...]] = (ops.ops_router, ops.admin_router, staff.router,
                                         customer.router, app_channel.router,
                                         screens.router)
GRACEFUL_SHUTDOWN_S: Final = 5.0  # open requests get this long once the gateway stops
RESTART_BACKOFF: Final = Backoff(1.0, 60.0)  # a port in use: try again, never give up


# /healthz answered here, before routing: a liveness probe runs every few seconds for
# the life of the box and says only that the loop answers, so it need not pay FastAPI's
# routing and dependency solving (~30 µs of ~65, measured: bench/bench_http.py). The
# route in ops.py stays: the contract (OpenAPI), its access rule, and requests with an
# Origin (CORS answers those). Same body, same headers (the secure headers are outside).
_HEALTHZ_BODY: Final = Health(status="ok").model_dump_json().encode()
_HEALTHZ_HEADERS: Final = ((b"content-length", str(len(_HEALTHZ_BODY)).encode()),
                           (b"content-type", b"application/json"))


def _plain_healthz(scope: Scope) -> bool:
    return scope["path"] == "/healthz" and scope["method"] == "GET" and not any(
        name == b"origin" for name, _ in scope["headers"])


class _Latency:
    """Observes each request's latency by route template (``/lanes/{lane}``, never the
    raw path: bounded label cardinality). The fast paths are answered here, before the
    app: the plain ``/healthz`` and the plain ``GET /app/offers`` (fast.py)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, fast: FastReads) -> None:
        self.app = app
        self.metrics = metrics
        self.fast = fast
        # labels() validates and takes a lock on every call: each child once (bounded:
        # methods x route templates x statuses, as the labels themselves)
        self._children: dict[tuple[str, str, int], Any] = {}

    def _observe(self, method: str, template: str, status: int, seconds: float) -> None:
        key = (method, template, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.metrics.http_latency.labels(
                method, template, str(status))
        child.observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        if _plain_healthz(scope):
            await send({"type": "http.response.start", "status": 200,
                        "headers": list(_HEALTHZ_HEADERS)})
            await send({"type": "http.response.body", "body": _HEALTHZ_BODY})
            self._observe("GET", "/healthz", 200, time.perf_counter() - start)
            return
        if self.fast.wants(scope):
            try:  # a failure before sending falls through (fast.py); one sending is here
                answered = await self.fast.offers(scope, send)
            except BaseException:
                self._observe("GET", OFFERS_TEMPLATE, 500, time.perf_counter() - start)
                raise
            if answered:
                self._observe("GET", OFFERS_TEMPLATE, 200, time.perf_counter() - start)
                return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self._observe(scope["method"], template, status, time.perf_counter() - start)


def build_app(gateway_like: GatewayLike, settings: HttpConfig, clock: Clock = time.time, *,
              extra_routers: Iterable[APIRouter] = (), fast_paths: bool = True) -> FastAPI:
    """The ASGI app over a gateway (or anything with ``config`` and ``status()``).
    ``fast_paths=False``: every customer read through its route (the reference the
    fast path is tested against)."""
    app = FastAPI(
        title="storegate", version=__version__,
        description="The store gateway's HTTP surface: operations, staff screens, the "
        "customer app channel (docs/http.md).",
        docs_url=None, redoc_url=None,  # their CDN scripts would break the CSP
        openapi_url="/openapi.json")
    auth = Authenticator(settings, clock)
    app.state.gateway = gateway_like
    app.state.settings = settings
    app.state.clock = clock
    app.state.auth = auth
    app.state.rate_limits = RateLimits(settings, clock)
    app.state.metrics = metrics = Metrics(gateway_like, auth)
    for router in (*ROUTERS, *extra_routers):
        app.include_router(router)
    app.router.routes.extend(app_channel.static_routes)  # the reference web app at /app
    if settings.demo_app_tokens:  # demo only: a local token key and /app/demo
        app_channel.enable_demo(app)
    check_routes(app)  # a route without an access rule is a bug caught here
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_credentials=True, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type",
                                          "Last-Event-ID"], max_age=600)
    app.state.fast = fast = FastReads(app.state, enabled=fast_paths)
    metrics.status.fast = fast  # its counters in /metrics
    app.add_middleware(_Latency, metrics=metrics, fast=fast)
    app.add_middleware(BoundedBody, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecureHeaders, tls=settings.tls)  # outermost: every response
    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The gateway owns SIGTERM/SIGINT (it drains the outbox); uvicorn must not
        # replace its handlers. The server stops when the gateway's stop event is set.
        yield


def _uvicorn_config(app: FastAPI, settings: HttpConfig) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=settings.host, port=settings.port,
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        loop="none",  # the gateway's running loop
        lifespan="off", access_log=False, log_config=None,  # the gateway's logging
        server_header=False, proxy_headers=False,
        ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
        ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
        h11_max_incomplete_event_size=16 * 1024,
        # No permessage-deflate on /app/ws: a zlib context per phone (1,000 held open)
        # and a deflate per push, for messages of a few hundred bytes on a store LAN;
        # and no compression context shared by a bearer token and later messages.
        ws_per_message_deflate=False)


def bind(settings: HttpConfig) -> socket.socket:
    """The listening socket, bound here rather than by uvicorn (which logs an error and
    calls ``sys.exit`` when the port is taken): OSError names the problem instead."""
    family, kind, proto, _, address = socket.getaddrinfo(
        settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(gateway_like: GatewayLike, settings: HttpConfig, stop: asyncio.Event, *,
                clock: Clock = time.time) -> None:
    """Serve until ``stop`` is set. A port in use or a bad TLS file is logged (a
    warning: the events flow on) and tried again with a backoff; the HTTP surface
    failing never stops the gateway."""
    app = build_app(gateway_like, settings, clock)
    scheme = "https" if settings.tls else "http"
    where = f"{scheme}://{settings.host}:{settings.port}"
    attempt = 0
    while not stop.is_set():
        server = _Server(_uvicorn_config(app, settings))

        async def stop_when_told(server: _Server = server) -> None:
            await stop.wait()
            server.should_exit = True
            hub = getattr(gateway_like, "hub", None)  # live streams end now, not after
            if hub is not None:                       # the graceful-shutdown wait
                hub.close_all()

        watcher = asyncio.create_task(stop_when_told())
        try:
            sock = bind(settings)
            try:
                log.info("HTTP: serving on %s", where)
                await server.serve(sockets=[sock])
            finally:
                sock.close()
        except SystemExit:  # uvicorn gave up at start (its own log says why)
            log.warning("HTTP: the server could not start on %s", where)
        except Exception as exc:  # the port in use, a TLS file unreadable, ...
            log.warning("HTTP: cannot serve on %s: %s", where, describe_error(exc))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if stop.is_set():
            break
        if server.started:
            attempt = 0
            log.warning("HTTP server stopped unexpectedly; starting it again")
        attempt += 1
        delay = RESTART_BACKOFF.delay(attempt, random.random())
        log.info("HTTP: trying %s again in %.0f s", where, delay)
        if await sleep_until_stopped(stop, delay):
            break
    log.info("HTTP server stopped")
