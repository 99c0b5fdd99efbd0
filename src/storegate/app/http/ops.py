"""Operations over HTTP: liveness, readiness, Prometheus metrics and the admin API/page.

Everything here reads the gateway's typed status (``Gateway.status()``,
app/status.py), the model ``storegate status`` and the status file show: a number is
named once and every surface agrees. ``/metrics`` builds its samples from that model at
scrape time (a custom collector), so nothing on the hot paths updates a Prometheus
object; the one exception is the HTTP latency histogram, which the server observes per
request (by route template, so cardinality is bounded by the routes).

The publish latency histogram (publish -> PUBACK) is the publisher's own fixed-bucket
histogram (core/histogram.py), kept lock-free on its thread and read here from the
status: queueing before the publish shows in the outbox depth and oldest age instead.
Every label value comes from the config or a fixed list of reasons (scanners placed in
no zone count under ``other``), so a flood of invented names cannot grow a scrape.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from storegate.app.http.models import (
    AUTH_ERRORS,
    AdminSessionView,
    AdminSignIn,
    Health,
    Readiness,
    RecentEvent,
    RecentEvents,
    Reloaded,
    SignedOut,
    StatusDocument,
    errors,
)
from storegate.app.http.screens import _csp, _page
from storegate.app.http.security import (
    SESSION_COOKIE,
    AdminPrincipal,
    Authenticator,
    admin,
    authenticator,
    metrics_reader,
    new_session_cookie,
    public,
    rate_limited,
)
from storegate.app.http.staff import _set_cookie
from storegate.app.status import GatewayStatusView
from storegate.errors import StoregateError

if TYPE_CHECKING:
    from storegate.config import Config

log = logging.getLogger(__name__)

PROMETHEUS_TEXT: Final = "text/plain; version=0.0.4; charset=utf-8"
MAX_RECENT_EVENTS: Final = 500
LATENCY_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                            2.5)


class GatewayLike(Protocol):
    """What the HTTP surface needs of a gateway (``app/gateway.py``'s ``Gateway``; tests
    may pass anything with these)."""

    config: Config

    def status(self) -> GatewayStatusView: ...


@dataclass(frozen=True, slots=True)
class OutboxFigures:
    """Read from the outbox file at scrape time (the status model has no age)."""

    oldest_pending_age_s: float | None
    dropped: Mapping[str, int]  # "type/reason" -> count


# --- readiness ----------------------------------------------------------------------


def readiness(status: GatewayStatusView) -> Readiness:
    """Ready: running, the outbox accepting, the broker connected, every source working.
    Pure over the status, so a test can feed any state."""
    checks: dict[str, str] = {}
    checks["gateway"] = "ok" if status.state == "running" else f"state is {status.state}"
    out = status.outbox
    if out.pending_accept.pending:
        checks["outbox"] = (f"not accepting: {out.pending_accept.pending} event(s) held in "
                            "memory")
    elif out.last_error:
        checks["outbox"] = "last write failed"
    else:
        checks["outbox"] = "ok"
    broker = status.broker
    if broker is None:
        checks["broker"] = "publisher not started"
    else:
        checks["broker"] = "ok" if broker.connected else "not connected"
    bad_sources: list[str] = []
    for src in status.presence.sources if status.presence else ():
        state = getattr(src, "state", "")
        name = f"{src.kind}:{getattr(src, 'scanner', '') or src.kind}"
        if state not in ("scanning", "connected", "running"):
            bad_sources.append(f"{name} {state or 'unknown'}")
    for lane_id, lane in (status.pos.lanes.items() if status.pos else ()):
        for dev in lane.devices:
            if dev.tap is not None and dev.tap.state != "open":
                bad_sources.append(f"{lane_id}/{dev.role} {dev.tap.state}")
    checks["sources"] = "ok" if not bad_sources else "; ".join(bad_sources)[:500]
    reasons = [f"{k}: {v}" for k, v in checks.items() if v != "ok"]
    return Readiness(ready=not reasons, state=status.state, checks=checks, reasons=reasons)


# --- metrics ------------------------------------------------------------------------


class FastCounts(Protocol):
    """The HTTP fast path's counters (app/http/fast.py ``FastReads``)."""

    answered_total: int
    failed_total: int


class StatusCollector(Collector):
    """Prometheus samples from the typed status, built at scrape time."""

    def __init__(self, gateway: GatewayLike, auth: Authenticator) -> None:
        self.gateway = gateway
        self.auth = auth
        self.outbox_figures: OutboxFigures | None = None  # set by the handler, per scrape
        self.fast: FastCounts | None = None  # set by build_app: the fast path's counters

    def collect(self) -> Iterator[Metric]:
        s = self.gateway.status()
        info = GaugeMetricFamily("storegate_info", "This gateway (value 1).",
                                 labels=["store", "gateway", "version", "state"])
        info.add_metric([s.store_id, s.gateway_id, s.version, s.state], 1)
        yield info
        yield GaugeMetricFamily("storegate_started_at_seconds", "Start, unix time.",
                                value=s.started_at)
        o = s.outbox
        yield GaugeMetricFamily("storegate_outbox_depth", "Events accepted, not yet "
                                "acknowledged by the broker.", value=o.depth)
        yield CounterMetricFamily("storegate_outbox_accepted", "Events committed.",
                                  value=o.accepted_total)
        yield CounterMetricFamily("storegate_outbox_failed", "Accept attempts that failed.",
                                  value=o.failed_total)
        yield GaugeMetricFamily("storegate_outbox_last_sequence", "Last sequence number.",
                                value=o.last_sequence)
        yield GaugeMetricFamily("storegate_outbox_pending_accept", "Events held in memory "
                                "while the outbox refuses them.", value=o.pending_accept.pending)
        figures = self.outbox_figures
        if figures is not None:
            age = GaugeMetricFamily("storegate_outbox_oldest_pending_age_seconds",
                                    "Age of the oldest unacknowledged event (0: none).")
            age.add_metric([], figures.oldest_pending_age_s or 0.0)
            yield age
            drops = CounterMetricFamily("storegate_outbox_dropped", "Events dropped by the "
                                        "retention budget.", labels=["type", "reason"])
            for key, n in sorted(figures.dropped.items()):
                kind, _, reason = key.partition("/")
                drops.add_metric([kind, reason], n)
            yield drops
        b = s.broker
        yield GaugeMetricFamily("storegate_mqtt_connected", "1 if connected to the broker.",
                                value=1 if b is not None and b.connected else 0)
        if b is not None:
            yield GaugeMetricFamily("storegate_mqtt_in_flight", "Publishes awaiting PUBACK.",
                                    value=b.in_flight)
            yield CounterMetricFamily("storegate_mqtt_published", "Events acknowledged.",
                                      value=b.published_total)
            yield CounterMetricFamily("storegate_mqtt_refused", "Publishes the broker "
                                      "refused (reason code >= 0x80).", value=b.rejected_total)
            yield GaugeMetricFamily("storegate_mqtt_refused_held", "Refused events waiting.",
                                    value=b.refused_held)
            yield CounterMetricFamily("storegate_mqtt_reconnects", "Reconnections.",
                                      value=b.reconnects_total)
            yield CounterMetricFamily("storegate_mqtt_connect_failures", "Failed connects.",
                                      value=b.connect_failures)
            lat = b.publish_latency
            if lat is not None:
                yield HistogramMetricFamily(
                    "storegate_mqtt_publish_latency_seconds", "Publish to PUBACK, per "
                    "event (refusals included).", buckets=lat.cumulative(),
                    sum_value=lat.sum_s)
        if s.commands is not None:
            yield CounterMetricFamily("storegate_commands_accepted", "Commands applied.",
                                      value=s.commands.accepted_total)
            rej = CounterMetricFamily("storegate_commands_rejected", "Commands refused, by "
                                      "reason.", labels=["reason"])
            for reason, n in sorted(s.commands.rejected_by_reason.items()):
                rej.add_metric([reason], n)
            yield rej
        yield from self._presence(s)
        yield from self._pos(s)
        yield from self._personal(s)
        yield from self._people(s)
        fast = self.fast
        if fast is not None:
            yield CounterMetricFamily("storegate_app_fast_offers_answered", "GET "
                                      "/app/offers answered by the fast path.",
                                      value=fast.answered_total)
            yield CounterMetricFamily("storegate_app_fast_offers_failed", "GET /app/offers "
                                      "failed on the fast path (passed to the route).",
                                      value=fast.failed_total)
        rejected = CounterMetricFamily("storegate_http_auth_rejected", "HTTP requests "
                                       "refused by the security layer, by reason.",
                                       labels=["reason"])
        for reason, n in sorted(self.auth.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield GaugeMetricFamily("storegate_http_staff_sessions", "Live staff sessions.",
                                value=len(self.auth.sessions))

    @staticmethod
    def _presence(s: GatewayStatusView) -> Iterator[Metric]:
        p = s.presence
        if p is None:
            return
        yield GaugeMetricFamily("storegate_presence_tracked_devices", "Devices tracked.",
                                value=p.tracked)
        yield GaugeMetricFamily("storegate_presence_enrolled", "Consenting customers "
                                "enrolled.", value=p.enrolled)
        occ = GaugeMetricFamily("storegate_zone_occupancy", "Consenting customers present, "
                                "by zone ('store': the whole store).", labels=["zone"])
        for zone, n in sorted(p.present.items()):
            occ.add_metric([zone], n)
        yield occ
        c = p.counters
        adverts = CounterMetricFamily("storegate_presence_adverts", "Adverts through the "
                                      "pipeline, by class.", labels=["class"])
        for cls, n in (("resolved", c.resolved), ("unresolved_eid", c.unresolved_eid),
                       ("anonymous", c.anonymous), ("unknown_scanner", c.unknown_scanner)):
            adverts.add_metric([cls], n)
        for kind, n in sorted(c.infrastructure.items()):
            adverts.add_metric([f"infrastructure_{kind}"], n)
        yield adverts
        per = CounterMetricFamily("storegate_scanner_adverts", "Adverts received, by "
                                  "source and scanner.", labels=["source", "scanner"])
        up = GaugeMetricFamily("storegate_source_up", "1 if the advert source works.",
                               labels=["source", "scanner"])
        for src in p.sources:
            nodes = getattr(src, "nodes", None)
            if isinstance(nodes, Mapping) and nodes:
                for node, ns in sorted(nodes.items()):
                    per.add_metric([src.kind, node], ns.adverts)
                    up.add_metric([src.kind, node], 0 if ns.silent else 1)
                continue
            scanner = str(getattr(src, "scanner", "") or src.kind)
            per.add_metric([src.kind, scanner], src.adverts_total)
            up.add_metric([src.kind, scanner],
                          1 if src.state in ("scanning", "connected", "running") else 0)
        yield per
        yield up
        scanners = CounterMetricFamily("storegate_presence_scanner_adverts", "Adverts into "
                                       "the pipeline, by scanner (scanners placed in no "
                                       "zone: 'other').", labels=["scanner"])
        for scanner, n in sorted(c.by_scanner.items()):
            scanners.add_metric([scanner], n)
        yield scanners
        for name, doc, counts in (
                ("storegate_visits_entered", "Visits begun, by zone ('store': the store "
                 "visit).", c.visits_entered),
                ("storegate_visits_exited", "Visits ended, by zone ('store': the store "
                 "visit).", c.visits_exited)):
            family = CounterMetricFamily(name, doc, labels=["zone"])
            for zone, n in sorted(counts.items()):
                family.add_metric([zone], n)
            yield family

    @staticmethod
    def _people(s: GatewayStatusView) -> Iterator[Metric]:
        """Check-ins, the app channel and the staff screens."""
        ci = s.checkin
        if ci is not None:
            yield CounterMetricFamily("storegate_checkins_accepted", "Poster check-ins "
                                      "taken as presence evidence.", value=ci.accepted_total)
            yield CounterMetricFamily("storegate_checkins_repeats", "Check-ins repeating "
                                      "one of an open visit.", value=ci.repeats_total)
            rej = CounterMetricFamily("storegate_checkins_rejected", "Check-ins refused, by "
                                      "reason.", labels=["reason"])
            for reason, n in sorted(ci.rejected_by_reason.items()):
                rej.add_metric([reason], n)
            yield rej
            yield GaugeMetricFamily("storegate_checkin_poster_generation", "The poster "
                                    "generation printed now.", value=ci.generation)
        a = s.app_channel
        if a is not None:
            yield GaugeMetricFamily("storegate_app_inbox_messages", "Messages held for "
                                    "phones.", value=a.inbox_messages)
            yield GaugeMetricFamily("storegate_app_queued", "Messages waiting for the inbox "
                                    "writer.", value=a.queued)
            yield GaugeMetricFamily("storegate_app_streams", "Phones connected (SSE and "
                                    "WebSocket).", value=a.streams)
            yield CounterMetricFamily("storegate_app_published", "Messages stored and "
                                      "pushed.", value=a.published_total)
            yield CounterMetricFamily("storegate_app_dropped", "Messages dropped over the "
                                      "writer's queue bound.", value=a.queued_dropped_total)
            yield CounterMetricFamily("storegate_app_errors", "Inbox write failures.",
                                      value=a.errors_total)
            yield CounterMetricFamily("storegate_app_streams_cut_off", "Slow streams cut "
                                      "off (they resume from their cursor).",
                                      value=a.hub_cut_off_total)
            yield CounterMetricFamily("storegate_app_staged_busy", "Inbox commits staged "
                                      "while the file was locked (written in a thread).",
                                      value=a.staged_busy_total)
        sc = s.screens
        if sc is not None:
            yield GaugeMetricFamily("storegate_staff_screens", "Till and floor screens "
                                    "connected.", value=sc.subscribers)
            yield CounterMetricFamily("storegate_staff_screen_updates", "Screen updates "
                                      "pushed.", value=sc.published_total)
            yield CounterMetricFamily("storegate_staff_profile_views", "Profile views "
                                      "logged as access events.", value=sc.accesses_total)
            yield CounterMetricFamily("storegate_staff_screen_errors", "Screen state "
                                      "errors.", value=sc.errors_total)

    @staticmethod
    def _personal(s: GatewayStatusView) -> Iterator[Metric]:
        ps = getattr(s, "personal", None)  # absent before the personalisation service
        if ps is None:
            return
        yield GaugeMetricFamily("storegate_campaigns_active", "Campaigns in force.",
                                value=ps.campaigns_active)
        yield GaugeMetricFamily("storegate_customers_known", "Customers central sent.",
                                value=ps.customers_known)
        yield GaugeMetricFamily("storegate_personal_queued_batches", "Event batches "
                                "waiting for personalisation.", value=ps.queued_batches)
        yield CounterMetricFamily("storegate_ledger_errors", "Redemption ledger and "
                                  "campaign store failures.", value=ps.ledger_errors_total)
        yield CounterMetricFamily("storegate_offers_issued", "Offers issued.",
                                  value=ps.offers_issued_total)
        for name, doc, label, counts in (
                ("storegate_offers_suppressed", "Offers not issued, by reason.", "reason",
                 ps.offers_suppressed_by_reason),
                ("storegate_tokens_rejected", "Offer tokens refused at a lane, by reason.",
                 "reason", ps.tokens_rejected_by_reason),
                ("storegate_purchases_stitched", "Purchases given a customer, by method.",
                 "method", ps.stitched_by_method)):
            family = CounterMetricFamily(name, doc, labels=[label])
            for key, n in sorted(counts.items()):
                family.add_metric([key], n)
            yield family
        tokens = CounterMetricFamily("storegate_tokens", "Offer tokens, by what happened.",
                                     labels=["state"])
        for state, n in (("reserved", ps.tokens_reserved_total),
                         ("redeemed", ps.tokens_redeemed_total),
                         ("released", ps.tokens_released_total)):
            tokens.add_metric([state], n)
        yield tokens

    @staticmethod
    def _pos(s: GatewayStatusView) -> Iterator[Metric]:
        if s.pos is None:
            return
        lane_events = CounterMetricFamily("storegate_lane_events", "Lane assembly counters "
                                          "(receipts, purchases, mismatches...).",
                                          labels=["lane", "what"])
        purchases = CounterMetricFamily("storegate_purchases", "Purchases completed, by "
                                        "lane.", labels=["lane"])
        frames = CounterMetricFamily("storegate_pos_frames", "Frames decoded, by lane and "
                                     "device.", labels=["lane", "device"])
        rejected = CounterMetricFamily("storegate_pos_rejected", "Frames rejected, by "
                                       "reason.", labels=["lane", "device", "reason"])
        tap_up = GaugeMetricFamily("storegate_serial_tap_open", "1 if the serial tap is "
                                   "open.", labels=["lane", "device", "state"])
        for lane_id, lane in sorted(s.pos.lanes.items()):
            for what, n in sorted(lane.counters.items()):
                lane_events.add_metric([lane_id, what], n)
            purchases.add_metric([lane_id], lane.counters.get("purchases", 0))
            for dev in lane.devices:
                frames.add_metric([lane_id, dev.role], dev.frames_total)
                for reason, n in sorted(dev.rejected.items()):
                    rejected.add_metric([lane_id, dev.role, reason], n)
                if dev.tap is not None:
                    tap_up.add_metric([lane_id, dev.role, dev.tap.state],
                                      1 if dev.tap.state == "open" else 0)
        yield from (lane_events, purchases, frames, rejected, tap_up)
        yield CounterMetricFamily("storegate_pos_errors", "Lane errors.",
                                  value=s.pos.errors_total)


class Metrics:
    """The app's own registry: the status collector and the HTTP latency histogram (one
    registry per app, so several apps in one process, as in tests, do not collide)."""

    def __init__(self, gateway: GatewayLike, auth: Authenticator) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.status = StatusCollector(gateway, auth)
        self.registry.register(self.status)
        self.http_latency = Histogram(
            "storegate_http_request_duration_seconds", "HTTP request latency, by route "
            "template.", labelnames=("method", "route", "status"), buckets=LATENCY_BUCKETS_S,
            registry=self.registry)


def outbox_figures(config: Config, now: float) -> OutboxFigures | None:
    """The oldest pending age and drops, from a read-only view of the outbox file."""
    from storegate.adapters.outbox import OutboxReader  # noqa: PLC0415
    from storegate.errors import StoregateError  # noqa: PLC0415

    try:
        with OutboxReader(config.storage.path) as reader:
            stats = reader.stats()
    except (StoregateError, OSError, ValueError) as exc:
        log.debug("outbox figures unavailable: %s", exc)
        return None
    age = None if stats.oldest_accepted_at is None else max(now - stats.oldest_accepted_at,
                                                             0.0)
    return OutboxFigures(age, dict(stats.dropped))


# --- redaction ----------------------------------------------------------------------

# Payload keys that carry a customer or a person (pseudonyms included: they are personal
# data too, and the admin page is not a customer tool).
PERSONAL_KEYS: Final = frozenset({
    "customer", "customers_list", "loyalty_id", "loyalty", "operator", "cashier", "token",
    "tokens", "offer_token", "offer_tokens", "pseudonym", "first_name", "last_name",
    "full_name", "greeting_name", "email", "phone",
    "identity", "identities", "eid", "key", "address", "mac", "device", "subject"})
SAFE_SUBJECT_KINDS: Final = frozenset({"gateway", "lane", "zone", "store", "receipt",
                                       "scanner"})
MASK: Final = "***"


def redact(value: Any, key: str | None = None) -> Any:
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if key is not None and key.lower() in PERSONAL_KEYS and isinstance(value, str):
        return MASK
    return value


def redact_subject(subject: object) -> str | None:
    if not isinstance(subject, str):
        return None
    kind, sep, _ = subject.partition("/")
    return subject if kind in SAFE_SUBJECT_KINDS else f"{kind}{sep}{MASK}"


def recent_events(config: Config, limit: int) -> list[RecentEvent]:
    """The last ``limit`` events the outbox still holds (pending or kept for replay)."""
    from storegate.adapters.outbox import OutboxReader  # noqa: PLC0415
    from storegate.errors import StoregateError  # noqa: PLC0415

    try:
        with OutboxReader(config.storage.path) as reader:
            last = reader.stats().last_sequence
            rows = reader.fetch(list(range(max(last - limit + 1, 1), last + 1)))
    except (StoregateError, OSError, ValueError) as exc:
        log.debug("recent events unavailable: %s", exc)
        return []
    out = []
    for row in reversed(rows):
        try:
            envelope = json.loads(row.payload)
        except ValueError:
            envelope = {}
        if not isinstance(envelope, dict):
            envelope = {}
        out.append(RecentEvent(
            sequence=row.sequence, topic=row.topic, id=_str(envelope.get("id")),
            type=_str(envelope.get("type")), time=_str(envelope.get("time")),
            subject=redact_subject(envelope.get("subject")),
            data=redact(envelope.get("data"))))
    return out


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


# --- routes -------------------------------------------------------------------------

ops_router = APIRouter(tags=["operations"])
admin_router = APIRouter(prefix="/admin", tags=["admin"])


def gateway_of(request: Request) -> GatewayLike:
    gw: GatewayLike = request.app.state.gateway
    return gw


@ops_router.get("/healthz", response_model=Health, dependencies=[Depends(public)])
async def healthz() -> Health:
    """Liveness: the process answers (its event loop is not stuck)."""
    return Health(status="ok")


@ops_router.get("/readyz", response_model=Readiness, dependencies=[Depends(public)],
                responses={503: {"model": Readiness, "description": "Not ready."}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: outbox accepting, broker connected, sources working (503 otherwise,
    with the reasons). States and counts only, nothing personal."""
    ready = readiness(gateway_of(request).status())
    return JSONResponse(ready.model_dump(), status_code=200 if ready.ready else 503)


@ops_router.get("/metrics", dependencies=[Depends(metrics_reader)], responses={
    200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}},
          "description": "Prometheus text exposition."}, **AUTH_ERRORS})
async def metrics(request: Request) -> Response:
    """Prometheus metrics (admin or metrics token)."""
    m: Metrics = request.app.state.metrics
    gw = gateway_of(request)
    m.status.outbox_figures = await asyncio.to_thread(outbox_figures, gw.config,
                                                      request.app.state.clock())
    return Response(generate_latest(m.registry), media_type=PROMETHEUS_TEXT)


@admin_router.get("/status", response_model=StatusDocument, dependencies=[Depends(admin)],
                  responses=AUTH_ERRORS)
async def admin_status(request: Request) -> JSONResponse:
    """The gateway's full typed status (as ``storegate status --json``)."""
    return JSONResponse(gateway_of(request).status().to_json())


@admin_router.get("/events", response_model=RecentEvents, dependencies=[Depends(admin)],
                  responses=AUTH_ERRORS)
async def admin_events(request: Request, limit: int = Query(default=50, ge=1,
                                                            le=MAX_RECENT_EVENTS),
                       ) -> RecentEvents:
    """The most recent events in the outbox, newest first, personal fields masked."""
    events = await asyncio.to_thread(recent_events, gateway_of(request).config, limit)
    return RecentEvents(events=events)


async def _reload_campaigns(gateway: GatewayLike, path: Path | None = None) -> str:
    """``[offers] campaigns_file`` read again by the personalisation service; the
    answer's sentence. HTTPException: 501 (no service), 409 (no file), 422 (a broken
    file: nothing changed)."""
    from storegate.app.personal import NoCampaignsFile  # noqa: PLC0415

    personal = getattr(gateway, "personal", None)
    if personal is None:
        raise HTTPException(501, detail="no personalisation service on this gateway")
    hook: Callable[..., Any] | None = getattr(personal, "reload_campaigns", None)
    if hook is None:
        raise HTTPException(501, detail="the personalisation service cannot reload "
                            "campaigns")
    try:
        result = hook(path) if path is not None else hook()
        if asyncio.iscoroutine(result):
            result = await result
    except NoCampaignsFile as exc:
        raise HTTPException(409, detail=f"{exc}: central's campaigns command is the way "
                            "to change them") from None
    except StoregateError as exc:  # the file is broken: nothing was changed
        raise HTTPException(422, detail=f"not reloaded: {exc}"[:500]) from None
    describe = getattr(result, "describe", None)
    text = describe() if callable(describe) else "" if result is None else str(result)
    return str(text)[:500]


@admin_router.post("/campaigns/reload", response_model=Reloaded,
                   dependencies=[Depends(admin)],
                   responses={**AUTH_ERRORS, **errors(409, 422, 501)})
async def reload_campaigns(request: Request) -> Reloaded:
    """Read ``[offers] campaigns_file`` again: validated whole first (422 and nothing
    changed if it is broken), each campaign taken if newer than the version in force
    (central's newer versions still win), a campaign that left the file removed if the
    file's version was in force. 409 without a campaigns file, 501 without the
    personalisation service."""
    detail = await _reload_campaigns(gateway_of(request))
    log.info("campaigns reloaded from the admin API: %s", detail)
    return Reloaded(reloaded=True, detail=detail, applied=["offers.campaigns_file"])


# What a config reload applies at runtime; every other difference waits for a restart.
RUNTIME_SETTINGS: Final = frozenset({"http.staff", "http.admin_token_hashes",
                                     "http.metrics_token_hash", "offers.campaigns_file"})


def config_differences(running: Config, new: Config) -> list[str]:
    """The settings (``section.field``, or the top-level name) that differ."""
    out: list[str] = []
    for name in type(running).model_fields:
        old_value, new_value = getattr(running, name), getattr(new, name)
        if old_value == new_value:
            continue
        fields = getattr(type(old_value), "model_fields", None)
        if fields is None or type(new_value) is not type(old_value):
            out.append(name)
            continue
        out.extend(f"{name}.{f}" for f in fields
                   if getattr(old_value, f) != getattr(new_value, f))
    return out


@admin_router.post("/config/reload", response_model=Reloaded, dependencies=[Depends(admin)],
                   responses={**AUTH_ERRORS, **errors(409, 422, 501)})
async def reload_config(request: Request) -> Reloaded:
    """Read the config file again (as ``run`` read it) and apply what can change
    safely while running: the staff credentials and the admin and metrics tokens
    (sessions of a removed credential end), and ``[offers] campaigns_file`` (read
    again, as the campaigns reload). Every other setting that differs is listed in
    ``restart_needed``: it takes effect at the next start. 422 if the file is invalid
    (nothing changed)."""
    gw = gateway_of(request)
    loader: Callable[[], Config] | None = getattr(gw, "config_loader", None)
    if loader is None:
        raise HTTPException(501, detail="this gateway does not know where its config "
                            "came from")
    try:
        new = await asyncio.to_thread(loader)
    except StoregateError as exc:
        raise HTTPException(422, detail=f"not reloaded: {exc}"[:500]) from None
    running = gw.config
    differ = config_differences(running, new)
    personal = getattr(gw, "personal", None)
    restart = [d for d in differ if d not in RUNTIME_SETTINGS]
    if "offers.campaigns_file" in differ and (new.offers.campaigns_file is None
                                              or personal is None):
        restart.append("offers.campaigns_file")  # not unset at runtime: a restart does it
    applied = authenticator(request).update_credentials(new.http)
    applied = [f"http.{name}" for name in applied]
    details = []
    if new.offers.campaigns_file is not None and personal is not None:
        details.append(await _reload_campaigns(gw, new.offers.campaigns_file))
        applied.append("offers.campaigns_file")
    if applied:
        details.insert(0, "applied: " + ", ".join(applied))
    if restart:
        details.append("restart needed for: " + ", ".join(restart))
    log.info("config reloaded from the admin API: %s applied, %d setting(s) wait for a "
             "restart", ", ".join(applied) or "nothing", len(restart))
    return Reloaded(reloaded=True, detail="; ".join(details)[:1000] or "no change",
                    applied=applied, restart_needed=restart)


# --- admin sign-in (a browser: the admin token posted once -> a session cookie) --------

ADMIN_SIGNIN_JS: Final = """(function () {
"use strict";
var form = document.getElementById("signin");
var msg = document.getElementById("msg");
form.addEventListener("submit", function (e) {
  e.preventDefault();
  msg.textContent = "";
  fetch("/admin/signin", {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({token: form.elements.token.value})})
  .then(function (r) {
    if (!r.ok) { throw new Error(r.status === 429 ? "Too many tries: wait a minute" :
                                 "Not an admin token"); }
    window.location.assign("/admin");
  })
  .catch(function (err) { form.elements.token.value = ""; msg.textContent = err.message; });
});
}());
"""
ADMIN_SIGNIN_CSP: Final = _csp(ADMIN_SIGNIN_JS)


@admin_router.get("/sign-in", dependencies=[Depends(public)], responses={
    200: {"content": {"text/html": {"schema": {"type": "string"}}},
          "description": "The admin sign-in page."}})
async def admin_signin_page() -> HTMLResponse:
    """A form for the admin token; it posts to ``POST /admin/signin``."""
    body = ("<header><span>Admin sign-in</span></header><main><form id=\"signin\">"
            "<input name=token type=password autocomplete=off placeholder=\"admin token\" "
            "required maxlength=512><button type=submit>Sign in</button>"
            "<div id=\"msg\"></div></form></main>")
    return HTMLResponse(_page("Admin sign-in", body, ADMIN_SIGNIN_JS),
                        headers={"Content-Security-Policy": ADMIN_SIGNIN_CSP})


@admin_router.post("/signin", response_model=AdminSessionView,
                   dependencies=[Depends(public), Depends(rate_limited("signin"))],
                   responses=errors(400, 401, 413, 429))
async def admin_sign_in(body: AdminSignIn, request: Request,
                        response: Response) -> AdminSessionView:
    """The admin token, posted once: sets an admin session cookie (Secure, HttpOnly,
    SameSite=Strict), so a browser can open ``/admin``. API clients keep sending the
    token as a Bearer."""
    auth = authenticator(request)
    if not auth.is_admin_token(body.token):
        auth.signin_failures += 1
        raise auth.reject("admin_signin_failed")
    cookie = new_session_cookie()
    expires_at = auth.admin_sessions.create(cookie, auth.clock())
    _set_cookie(response, cookie, int(auth.settings.session_ttl_s))
    log.info("admin signed in (browser session)")
    return AdminSessionView(role="admin", expires_at=expires_at)


@admin_router.post("/signout", response_model=SignedOut, responses=AUTH_ERRORS)
async def admin_sign_out(_: AdminPrincipal, request: Request,
                         response: Response) -> SignedOut:
    """End this browser's admin session now (a Bearer client has none to end)."""
    ended = authenticator(request).admin_sessions.end(request.cookies.get(SESSION_COOKIE,
                                                                          ""))
    _set_cookie(response, "", 0)
    return SignedOut(signed_out=ended)


# Not response_class=HTMLResponse: FastAPI would then document the JSON errors as HTML.
@admin_router.get("", dependencies=[Depends(admin)],
                  responses={200: {"content": {"text/html": {"schema": {"type": "string"}}},
                                   "description": "The admin page."}, **AUTH_ERRORS})
async def admin_page(request: Request) -> HTMLResponse:
    """A small server-rendered page: readiness, the outbox, the broker, sources, lanes."""
    return HTMLResponse(render_status_page(gateway_of(request).status()))


def _rows(pairs: list[tuple[str, object]]) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in pairs)


def render_status_page(s: GatewayStatusView) -> str:
    """Every value escaped: names and errors come from devices and the network."""
    ready = readiness(s)
    sections = [("Gateway", [("store", s.store_id), ("gateway", s.gateway_id),
                             ("version", s.version), ("state", s.state),
                             ("session", s.session), ("ready", ready.ready)]
                 + [(k, v) for k, v in ready.checks.items()]),
                ("Outbox", [("depth", s.outbox.depth),
                            ("accepted", s.outbox.accepted_total),
                            ("failed", s.outbox.failed_total),
                            ("last sequence", s.outbox.last_sequence),
                            ("held in memory", s.outbox.pending_accept.pending),
                            ("last error", s.outbox.last_error or "")])]
    if s.broker is not None:
        b = s.broker
        sections.append(("Broker", [("url", b.url), ("connected", b.connected),
                                    ("in flight", b.in_flight),
                                    ("published", b.published_total),
                                    ("refused", b.rejected_total),
                                    ("last error", b.last_error or ""),
                                    ("warnings", "; ".join(b.warnings))]))
    if s.presence is not None:
        p = s.presence
        sections.append(("Presence", [("enrolled", p.enrolled), ("tracked", p.tracked)]
                         + [(f"present: {z}", n) for z, n in sorted(p.present.items())]
                         + [(f"source {src.kind}", getattr(src, "state", ""))
                            for src in p.sources]))
    if s.pos is not None:
        sections.append(("Lanes", [
            (f"{lane_id}/{d.role}", f"{d.dialect} {d.port} "
             f"{d.tap.state if d.tap else 'simulated'}; {d.frames_total} frames")
            for lane_id, lane in sorted(s.pos.lanes.items()) for d in lane.devices]))
    ps = getattr(s, "personal", None)
    if ps is not None:
        sections.append(("Offers", [("campaigns active", ps.campaigns_active),
                                    ("customers known", ps.customers_known),
                                    ("offers issued", ps.offers_issued_total),
                                    ("tokens redeemed", ps.tokens_redeemed_total)]))
    if s.commands is not None:
        reasons: list[tuple[str, object]] = sorted(s.commands.rejected_by_reason.items())
        sections.append(("Commands", [("accepted", s.commands.accepted_total),
                                      ("rejected", s.commands.rejected_total), *reasons]))
    body = "".join(f"<h2>{html.escape(title)}</h2><table>{_rows(rows)}</table>"
                   for title, rows in sections)
    title = html.escape(f"storegate {s.store_id}/{s.gateway_id}")
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{title}</title><style>body{{font:16px system-ui;margin:1em}}"
            "th{text-align:left;padding-right:1em}</style></head>"
            f"<body><h1>{title}</h1>{body}</body></html>")
