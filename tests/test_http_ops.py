"""Operations over HTTP: /healthz, /readyz from the typed status, /metrics parsed with
prometheus_client's own parser, the admin API (status, redacted events, reload) and
page; and one end-to-end run of `storegate run` serving them over real HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from storegate.adapters.ble_bleak import BleSourceStatus
from storegate.adapters.serial_tap import SerialTapStatus
from storegate.app.http.ops import readiness, redact, redact_subject, render_status_page
from storegate.app.personal import PersonalService
from storegate.app.presence_files import presence_pipeline
from storegate.app.status import (
    AppChannelStatus,
    CheckinStatus,
    GatewayStatusView,
    LaneStatus,
    PendingAcceptStatus,
    PosDeviceStatus,
    PosStatus,
    PresenceCounters,
    ScreensStatus,
)
from storegate.config import Config, PresenceConfig, parse
from storegate.core import events as ev
from storegate.core.ble.capture import Advert
from storegate.core.histogram import Histogram, HistogramSnapshot
from storegate.core.payloads import VisitEntered, VisitExited
from storegate.core.personal.campaigns import CampaignsCommand
from storegate.core.personal.registry import Registry
from storegate.core.personal.stitching import Stitcher
from storegate.core.presence.infrastructure import Infrastructure
from storegate.core.webauth import hash_secret
from storegate.errors import ConfigError, DataFileError
from tests.support.gateway_proc import start_run, write_config
from tests.support.http import (
    ADMIN_TOKEN,
    CASHIER_PIN,
    METRICS_TOKEN,
    NOW,
    StatusGateway,
    bearer,
    customer_token,
    healthy_status,
    http_settings,
    make_client,
    make_config,
)
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.outbox import FakeClock, make_outbox, purchase, telemetry, visit
from tests.support.waiting import wait_for

# --- readiness ------------------------------------------------------------------------


def _tap(state: str) -> SerialTapStatus:
    return SerialTapStatus(
        name="printer", port="/dev/ttyUSB0", line="9600 8N1", flow="none", state=state,
        since=NOW, last_error=None, bytes_total=0, chunks_total=0, last_byte_at=None,
        opens_total=1, last_open_at=NOW, open_failures_total=0, disconnects_total=0,
        shed_bytes_total=0, empty_reads_total=0, callback_errors_total=0)


def _unwell() -> GatewayStatusView:
    s = healthy_status()
    assert s.broker is not None and s.presence is not None
    ble = BleSourceStatus(adapter="hci0", scanner="sc-1", mode="active", state="restarting",
                          adverts_total=10, last_advert_at=None, restarts_total=3,
                          failures_total=3, stalls_total=0, last_error="org.bluez.Error")
    return dataclasses.replace(
        s, broker=dataclasses.replace(s.broker, connected=False),
        outbox=dataclasses.replace(s.outbox, pending_accept=PendingAcceptStatus(
            pending=4, pending_purchases=1, held_total=4, dropped={},
            accepted_after_hold_total=0)),
        presence=dataclasses.replace(s.presence, sources=(ble,)),
        pos=PosStatus(lanes={"lane-1": LaneStatus(counters={}, devices=(
            PosDeviceStatus(role="printer", dialect="escpos", port="/dev/ttyUSB0",
                            frames_total=0, rejected={}, tap=_tap("reopening")),))},
            errors_total=0))


def test_ready_when_everything_works() -> None:
    r = readiness(healthy_status())
    assert r.ready and r.reasons == []
    assert r.checks == {"gateway": "ok", "outbox": "ok", "broker": "ok", "sources": "ok"}


def test_not_ready_names_each_reason() -> None:
    r = readiness(_unwell())
    assert not r.ready
    assert r.checks["broker"] == "not connected"
    assert r.checks["outbox"].startswith("not accepting: 4 event(s)")
    assert "ble:sc-1 restarting" in r.checks["sources"]
    assert "lane-1/printer reopening" in r.checks["sources"]
    assert len(r.reasons) == 3
    stopping = readiness(dataclasses.replace(healthy_status(), state="stopping", broker=None))
    assert stopping.checks["gateway"] == "state is stopping"
    assert stopping.checks["broker"] == "publisher not started"


def test_readyz_is_public_503_with_reasons_and_nothing_personal(tmp_path: Path) -> None:
    client, _, gw = make_client(tmp_path)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    gw.current = _unwell()
    r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["ready"] is False and len(body["reasons"]) == 3
    assert "cust" not in r.text and "ps1:" not in r.text


# --- metrics ---------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_read_the_typed_status_at_scrape_time(tmp_path: Path) -> None:
    client, _, gw = make_client(tmp_path)
    assert client.get("/healthz").status_code == 200
    r = client.get("/metrics", headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = _samples(r.text)
    assert m[("storegate_outbox_depth", ())] == 7
    assert m[("storegate_outbox_accepted_total", ())] == 130
    assert m[("storegate_mqtt_connected", ())] == 1
    assert m[("storegate_mqtt_published_total", ())] == 120
    assert m[("storegate_commands_rejected_total", (("reason", "bad_signature"),))] == 2
    assert m[("storegate_zone_occupancy", (("zone", "dairy"),))] == 3
    assert m[("storegate_presence_tracked_devices", ())] == 55
    assert m[("storegate_scanner_adverts_total", (("scanner", "simulator"),
                                                  ("source", "simulator")))] == 5000
    assert m[("storegate_lane_events_total", (("lane", "lane-1"), ("what", "purchases")))] == 8
    assert m[("storegate_pos_rejected_total", (("device", "printer"), ("lane", "lane-1"),
                                               ("reason", "bad_checksum")))] == 2
    assert m[("storegate_http_request_duration_seconds_count",
              (("method", "GET"), ("route", "/healthz"), ("status", "200")))] == 1
    assert m[("storegate_offers_issued_total", ())] == 11
    assert m[("storegate_offers_suppressed_total", (("reason", "min_gap"),))] == 4
    assert m[("storegate_tokens_total", (("state", "redeemed"),))] == 2
    # the next scrape reads the status again: no stale copy
    assert gw.current.broker is not None
    gw.current = dataclasses.replace(gw.current, broker=dataclasses.replace(
        gw.current.broker, connected=False))
    m = _samples(client.get("/metrics", headers=bearer(ADMIN_TOKEN)).text)
    assert m[("storegate_mqtt_connected", ())] == 0
    assert m[("storegate_http_request_duration_seconds_count",
              (("method", "GET"), ("route", "/metrics"), ("status", "200")))] == 1


def test_metrics_outbox_age_from_a_real_outbox_file(tmp_path: Path) -> None:
    clock = FakeClock(NOW - 30)
    box = make_outbox(tmp_path / "outbox.db", clock=clock)
    box.open()
    try:
        asyncio.run(box.accept(telemetry(1)))
    finally:
        box.close()
    client, _, _ = make_client(tmp_path)  # its config's outbox is tmp_path/outbox.db
    m = _samples(client.get("/metrics", headers=bearer(METRICS_TOKEN)).text)
    assert m[("storegate_outbox_oldest_pending_age_seconds", ())] == pytest.approx(30)


def test_the_metrics_token_reads_metrics_only(tmp_path: Path) -> None:
    client, _, _ = make_client(tmp_path)
    assert client.get("/metrics", headers=bearer(METRICS_TOKEN)).status_code == 200
    assert client.get("/admin/status", headers=bearer(METRICS_TOKEN)).status_code == 403
    assert client.get("/metrics", headers=bearer(customer_token())).status_code == 403
    assert client.get("/metrics").status_code == 401


# --- admin -------------------------------------------------------------------------------


def test_admin_status_is_the_typed_status_as_json(tmp_path: Path) -> None:
    client, _, gw = make_client(tmp_path)
    r = client.get("/admin/status", headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 200
    assert GatewayStatusView.from_json(r.json()) == gw.current  # the same, parsed back
    assert r.json()["outbox"]["depth"] == gw.current.outbox.depth


def test_recent_events_come_from_the_outbox_redacted(tmp_path: Path) -> None:
    box = make_outbox(tmp_path / "outbox.db")
    box.open()
    loyal = purchase(3)
    data = loyal.data.model_copy(update={"loyalty_id": "ps1:" + "a" * 32,
                                         "operator": "ps1:" + "b" * 32})
    loyal = dataclasses.replace(loyal, data=data)
    try:
        for draft in (telemetry(1), visit(2), loyal):
            asyncio.run(box.accept(draft))
    finally:
        box.close()
    client, _, _ = make_client(tmp_path)
    r = client.get("/admin/events?limit=2", headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 200
    events = r.json()["events"]
    assert [e["sequence"] for e in events] == [3, 2]  # newest first, limited
    bought, visited = events
    assert bought["type"] == ev.PURCHASE_COMPLETED.name
    assert bought["data"]["loyalty_id"] == "***" and bought["data"]["operator"] == "***"
    assert bought["data"]["receipt"] == "R3" and bought["subject"] == "receipt/R3"
    assert visited["data"]["customer"] == "***" and visited["data"]["zone"] == "z1"
    assert "ps1:" not in r.text and '"c2"' not in r.text
    assert client.get("/admin/events?limit=0", headers=bearer(ADMIN_TOKEN)).status_code == 422
    assert client.get("/admin/events?limit=501",
                      headers=bearer(ADMIN_TOKEN)).status_code == 422


def test_redaction_rules() -> None:
    assert redact({"customer": "cust-1", "customers": 3, "items": [{"name": "Milk"}],
                   "offer_tokens": ["SGO1.x"]}) == {
        "customer": "***", "customers": 3, "items": [{"name": "Milk"}],
        "offer_tokens": ["***"]}
    assert redact_subject("customer/cust-1") == "customer/***"
    assert redact_subject("visit/v1") == "visit/***"
    assert redact_subject("gateway/g1") == "gateway/g1"
    assert redact_subject(None) is None


def test_reload_campaigns_calls_the_personal_hook_or_is_501(tmp_path: Path) -> None:
    client, _, gw = make_client(tmp_path)
    r = client.post("/admin/campaigns/reload", headers=bearer(ADMIN_TOKEN))
    assert (r.status_code, r.json()) == (501, {"detail": "no personalisation service on "
                                                         "this gateway"})

    gw.personal = object()  # a service without the hook
    r = client.post("/admin/campaigns/reload", headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 501 and "cannot reload" in r.json()["detail"]


def test_admin_page_renders_the_status_escaped(tmp_path: Path) -> None:
    s = healthy_status()
    hostile = dataclasses.replace(s, outbox=dataclasses.replace(
        s.outbox, last_error="<script>alert(1)</script>"))
    page = render_status_page(hostile)
    assert "<script>" not in page and "&lt;script&gt;" in page
    client, _, gw = make_client(tmp_path, gateway=None)
    gw.current = hostile
    r = client.get("/admin", headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;" in r.text and "<td>7</td>" in r.text  # the outbox depth
    assert client.get("/admin").status_code == 401


def test_the_stand_in_has_the_real_gateways_shape() -> None:
    import typing

    from storegate.app.gateway import Gateway

    # the same status type as the real gateway's, so these tests read what it reports
    assert typing.get_type_hints(Gateway.status)["return"] is GatewayStatusView
    assert typing.get_type_hints(StatusGateway.status)["return"] is GatewayStatusView


# --- end to end -------------------------------------------------------------------------


@pytest.mark.e2e
def test_storegate_run_serves_ops_over_real_http(tmp_path: Path, broker: Mosquitto) -> None:
    port = free_port()
    admin_hash = hash_secret(ADMIN_TOKEN, salt=b"", kind="sha256")
    config = write_config(
        tmp_path / "store.toml", port=broker.port, storage=tmp_path / "outbox.db",
        telemetry=True,
        extra=f'[http]\nenabled = true\nport = {port}\nadmin_token_hashes = ["{admin_hash}"]\n')
    log = tmp_path / "gateway.log"
    proc = start_run(config, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
        wait_for(answers, 30, "/healthz over real HTTP")
        r = httpx.get(f"{base}/healthz")
        assert r.json() == {"status": "ok"}
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "server" not in r.headers  # no server banner
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 200, 30,
                 "/readyz ready (broker connected)")
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
        metrics = httpx.get(f"{base}/metrics", headers=bearer(ADMIN_TOKEN), timeout=5)
        assert metrics.status_code == 200
        m = _samples(metrics.text)
        assert m[("storegate_mqtt_connected", ())] == 1
        assert ("storegate_outbox_depth", ()) in m

        def latency_count() -> float:  # telemetry every second: timed to its PUBACK
            text = httpx.get(f"{base}/metrics", headers=bearer(ADMIN_TOKEN), timeout=5).text
            return _samples(text).get(("storegate_mqtt_publish_latency_seconds_count", ()),
                                      0)
        wait_for(lambda: latency_count() >= 1, 30, "a publish timed to its PUBACK")
        # the reloads answer on a real gateway: no campaigns file here (409, not 501);
        # the config read again as run read it, a changed setting named for a restart
        r = httpx.post(f"{base}/admin/campaigns/reload", headers=bearer(ADMIN_TOKEN))
        assert r.status_code == 409, r.text
        r = httpx.post(f"{base}/admin/config/reload", headers=bearer(ADMIN_TOKEN))
        assert r.status_code == 200 and r.json()["restart_needed"] == [], r.text
        config.write_text(config.read_text().replace("shutdown_drain_s = 10",
                                                     "shutdown_drain_s = 11"))
        r = httpx.post(f"{base}/admin/config/reload", headers=bearer(ADMIN_TOKEN))
        assert r.json()["restart_needed"] == ["storage.shutdown_drain_s"], r.text
        broker.kill()  # the broker gone: not ready, with the reason
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 503, 30,
                 "/readyz not ready without the broker")
        assert "broker: not connected" in httpx.get(f"{base}/readyz").json()["reasons"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert "Traceback" not in text, text[-2000:]
    assert "HTTP server stopped" in text
    assert proc.returncode == 0
    with pytest.raises(httpx.TransportError):  # the server went with the gateway
        httpx.get(f"{base}/healthz", timeout=1)


@pytest.mark.e2e
def test_a_port_in_use_is_a_warning_retried_until_stop(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from storegate.app.http.server import serve

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    settings = http_settings(port=port)
    gw = StatusGateway(make_config(tmp_path, settings))

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(serve(gw, settings, stop))
        for _ in range(500):  # a positive signal: the refusal was logged
            if "cannot serve on http://127.0.0.1" in caplog.text:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)  # ends during its backoff, at once

    try:
        with caplog.at_level("INFO", logger="storegate.app.http.server"):
            asyncio.run(main())
    finally:
        blocker.close()
    refusals = [r for r in caplog.records if "cannot serve" in r.getMessage()]
    assert refusals and all(r.levelname == "WARNING" for r in refusals)
    assert "HTTP server stopped" in caplog.text


# --- metrics: every part of the issue's list ---------------------------------------------


def _full_status() -> GatewayStatusView:
    """The healthy status with every optional part present (check-ins, app channel,
    staff screens, the publish latency histogram, per-scanner and visit counters)."""
    s = healthy_status()
    assert s.broker is not None and s.presence is not None
    hist = Histogram((0.001, 0.01, 0.1))
    for seconds in (0.0004, 0.001, 0.004, 0.05, 3.0):
        hist.observe(seconds)
    counters = dataclasses.replace(
        s.presence.counters, by_scanner={"sc-dairy": 700, "other": 12},
        visits_entered={"store": 9, "dairy": 4}, visits_exited={"store": 7})
    return dataclasses.replace(
        s, broker=dataclasses.replace(s.broker, publish_latency=hist.snapshot()),
        presence=dataclasses.replace(s.presence, counters=counters),
        checkin=CheckinStatus(accepted_total=5, repeats_total=2,
                              rejected_by_reason={"bad_signature": 3}, poster_kid="k1",
                              generation=2, min_generation=1),
        app_channel=AppChannelStatus(inbox_messages=40, queued=1, published_total=44,
                                     queued_dropped_total=0, errors_total=1, streams=6,
                                     hub_cut_off_total=2),
        screens=ScreensStatus(subscribers=3, published_total=17, accesses_total=8,
                              errors_total=0))


def test_metrics_cover_the_issues_list_with_bounded_labels(tmp_path: Path) -> None:
    client, _, gw = make_client(tmp_path)
    gw.current = _full_status()
    text = client.get("/metrics", headers=bearer(ADMIN_TOKEN)).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    m = _samples(text)
    # adverts per scanner (Prometheus takes the rate), the flood bucket included
    assert m[("storegate_presence_scanner_adverts_total", (("scanner", "sc-dairy"),))] == 700
    assert m[("storegate_presence_scanner_adverts_total", (("scanner", "other"),))] == 12
    assert m[("storegate_visits_entered_total", (("zone", "store"),))] == 9
    assert m[("storegate_visits_entered_total", (("zone", "dairy"),))] == 4
    assert m[("storegate_visits_exited_total", (("zone", "store"),))] == 7
    assert m[("storegate_purchases_total", (("lane", "lane-1"),))] == 8
    assert m[("storegate_tokens_total", (("state", "reserved"),))] == 3
    assert m[("storegate_tokens_rejected_total", (("reason", "expired"),))] == 1
    assert m[("storegate_offers_suppressed_total", (("reason", "quiet_hours"),))] == 1
    assert m[("storegate_checkins_accepted_total", ())] == 5
    assert m[("storegate_checkins_rejected_total", (("reason", "bad_signature"),))] == 3
    assert m[("storegate_app_inbox_messages", ())] == 40
    assert m[("storegate_app_streams", ())] == 6
    assert m[("storegate_app_streams_cut_off_total", ())] == 2
    assert m[("storegate_staff_screens", ())] == 3
    assert m[("storegate_staff_profile_views_total", ())] == 8
    assert m[("storegate_staff_screen_errors_total", ())] == 0
    # the publish latency histogram: cumulative buckets, le as Prometheus writes it
    lat = families["storegate_mqtt_publish_latency_seconds"]
    assert lat.type == "histogram"
    assert m[("storegate_mqtt_publish_latency_seconds_bucket", (("le", "0.001"),))] == 2
    assert m[("storegate_mqtt_publish_latency_seconds_bucket", (("le", "0.01"),))] == 3
    assert m[("storegate_mqtt_publish_latency_seconds_bucket", (("le", "0.1"),))] == 4
    assert m[("storegate_mqtt_publish_latency_seconds_bucket", (("le", "+Inf"),))] == 5
    assert m[("storegate_mqtt_publish_latency_seconds_count", ())] == 5
    assert m[("storegate_mqtt_publish_latency_seconds_sum", ())] == pytest.approx(3.0554)
    # the lane state and HTTP latency are there as before
    assert "storegate_serial_tap_open" in families
    assert "storegate_http_request_duration_seconds" in families
    # the status file's JSON parses back to the same model (what `storegate status` reads)
    assert GatewayStatusView.from_json(gw.current.to_json()) == gw.current


def test_scanner_labels_stay_bounded_under_a_flood_of_invented_names(tmp_path: Path) -> None:
    cfg = PresenceConfig.model_validate({"zones": [
        {"id": "dairy", "scanners": ["sc-dairy"]}, {"id": "bakery", "scanners": ["sc-bake"]}]})
    pipe = presence_pipeline(cfg, Infrastructure(()), b"s" * 32)
    for i in range(5000):  # a node gone wrong: every advert from a new scanner name
        pipe.feed(Advert(ts=NOW + i / 1000, scanner=f"made-up-{i}", address=f"a{i}",
                         rssi=-60))
    for i in range(30):
        pipe.feed(Advert(ts=NOW + 6 + i / 100, scanner="sc-dairy", address="b1", rssi=-50))
    c = pipe.counters
    assert c.by_scanner == {"other": 5000, "sc-dairy": 30}
    assert c.unknown_scanner == 5000
    client, _, gw = make_client(tmp_path)
    s = healthy_status()
    assert s.presence is not None
    gw.current = dataclasses.replace(s, presence=dataclasses.replace(
        s.presence, counters=PresenceCounters.of(c)))
    text = client.get("/metrics", headers=bearer(ADMIN_TOKEN)).text
    family = next(f for f in text_string_to_metric_families(text)
                  if f.name == "storegate_presence_scanner_adverts")
    assert {smp.labels["scanner"] for smp in family.samples} == {"other", "sc-dairy"}
    assert "made-up" not in text


def test_visits_are_counted_by_zone_as_the_engine_emits_them() -> None:
    cfg = PresenceConfig.model_validate({"zones": [
        {"id": "dairy", "scanners": ["sc-dairy"]}, {"id": "bakery", "scanners": ["sc-bake"]}]})
    pipe = presence_pipeline(cfg, Infrastructure(()), b"s" * 32)
    out = pipe.check_in("cust-1", "dairy", NOW, hold_s=5)
    out += pipe.check_in("cust-1", "bakery", NOW + 1, hold_s=5)  # a zone switch
    entered = [d.data.zone for d in out if isinstance(d.data, VisitEntered)]
    assert sorted(entered, key=str) == sorted([None, "dairy", "bakery"], key=str)
    assert pipe.counters.visits_entered == {"store": 1, "dairy": 1, "bakery": 1}
    assert pipe.counters.visits_exited == {"dairy": 1}
    closed = pipe.close(NOW + 2)
    assert sum(isinstance(d.data, VisitExited) for d in closed) == 2
    assert pipe.counters.visits_exited == {"dairy": 1, "bakery": 1, "store": 1}


def test_the_histogram_buckets_and_its_snapshot() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Histogram((0.1, 0.01))
    h = Histogram((0.001, 0.01))
    for v in (0.001, 0.0011, 0.5):  # a value equal to a bound is in it (le)
        h.observe(v)
    snap = h.snapshot()
    assert snap.counts == (1, 1, 1) and snap.count == 3
    assert snap.cumulative() == [("0.001", 1), ("0.01", 2), ("+Inf", 3)]
    assert (snap.quantile_bound(0.3), snap.quantile_bound(0.5)) == (0.001, 0.01)
    assert snap.quantile_bound(0.99) == float("inf")
    assert Histogram().snapshot().quantile_bound(0.5) is None
    h.observe(0.0001)  # the snapshot is a copy
    assert snap.count == 3 and h.snapshot().count == 4
    assert HistogramSnapshot.from_json(dataclasses.asdict(snap)) == snap
    assert HistogramSnapshot.from_json({"bounds": [1.0], "counts": [1]}) is None


# --- reloads -------------------------------------------------------------------------------


def _campaign(cid: str, version: int) -> dict[str, object]:
    return {"id": cid, "version": version, "trigger": {"kind": "store_entered"},
            "content": {"title": f"{cid} v{version}"}}


def _write_campaigns(path: Path, *campaigns: dict[str, object]) -> None:
    path.write_text(json.dumps({"campaigns": list(campaigns)}))


def _personal(tmp_path: Path, campaigns_file: Path | None) -> PersonalService:
    extra = f'[offers]\ncampaigns_file = "{campaigns_file}"\n' if campaigns_file else ""
    cfg = parse(f'store_id = "s1"\ngateway_id = "g1"\n[storage]\n'
                f'path = "{tmp_path}/outbox.db"\n{extra}', source="test", base=tmp_path,
                environ={})
    registry = Registry(tomb_key=b"k" * 32, keep_s=86400)
    return PersonalService.build(cfg, registry, stitcher=Stitcher(
        cfg.stitching.settings(), {}, registry.customer_of_loyalty), emit=lambda _: None,
        wall_clock=lambda: NOW)


def _versions(svc: PersonalService) -> dict[str, int]:
    return {cid: c.campaign.version for cid, c in svc.engine.campaigns.items()}


def test_reload_campaigns_applies_a_changed_file_and_central_still_wins(
        tmp_path: Path) -> None:
    path = tmp_path / "campaigns.json"
    _write_campaigns(path, _campaign("welcome", 1), _campaign("dairy", 1),
                     _campaign("bakery", 1), _campaign("central-owned", 1))
    svc = _personal(tmp_path, path)
    try:
        # central sends newer versions of two of them
        asyncio.run(svc.apply_campaigns(CampaignsCommand.model_validate({
            "op": "upsert", "campaigns": [_campaign("central-owned", 5),
                                          _campaign("bakery", 3)]})))
        client, _, gw = make_client(tmp_path)
        gw.personal = svc
        _write_campaigns(path, _campaign("welcome", 2), _campaign("new", 1),
                         _campaign("bakery", 2))  # dairy and central-owned left the file
        r = client.post("/admin/campaigns/reload", headers=bearer(ADMIN_TOKEN))
        assert r.status_code == 200, r.text
        detail = r.json()["detail"]
        assert _versions(svc) == {"welcome": 2, "new": 1, "bakery": 3, "central-owned": 5}
        assert "2 applied (welcome, new)" in detail
        assert "older than the version in force" in detail and "(bakery)" in detail
        assert "1 removed (dairy)" in detail
        assert "central's newer version is in force (central-owned)" in detail
        assert detail.endswith("; 4 active")
        # the same file again: nothing changes
        again = client.post("/admin/campaigns/reload", headers=bearer(ADMIN_TOKEN))
        assert "0 applied; 2 unchanged" in again.json()["detail"]
        # a broken file: 422 naming it, and nothing changed
        path.write_text('{"campaigns": [{"id": "x"}]}')
        bad = client.post("/admin/campaigns/reload", headers=bearer(ADMIN_TOKEN))
        assert bad.status_code == 422 and str(path) in bad.json()["detail"]
        assert _versions(svc) == {"welcome": 2, "new": 1, "bakery": 3, "central-owned": 5}
    finally:
        svc.close()
    # persisted like a command: a restart keeps the removal and the versions
    _write_campaigns(path, _campaign("welcome", 2), _campaign("new", 1))
    svc = _personal(tmp_path, path)
    try:
        assert _versions(svc) == {"welcome": 2, "new": 1, "bakery": 3, "central-owned": 5}
        assert svc.engine.version_of("dairy") == 1  # removed at 1: back only as 2
    finally:
        svc.close()


def test_reload_campaigns_without_a_file_is_409(tmp_path: Path) -> None:
    svc = _personal(tmp_path, None)
    try:
        client, _, gw = make_client(tmp_path)
        gw.personal = svc
        r = client.post("/admin/campaigns/reload", headers=bearer(ADMIN_TOKEN))
        assert r.status_code == 409 and "campaigns_file" in r.json()["detail"]
    finally:
        svc.close()


def test_config_reload_applies_credentials_and_names_what_needs_a_restart(
        tmp_path: Path) -> None:
    client, app, gw = make_client(tmp_path)
    r = client.post("/admin/config/reload", headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 501  # a gateway that does not know its config's source
    staff = TestClient(app, base_url="https://testserver")
    assert staff.post("/staff/signin", json={"lane": "lane-1", "pin": CASHIER_PIN}
                      ).status_code == 200
    assert staff.get("/staff/session").status_code == 200
    new_admin = "a-new-admin-token-0123456789"
    settings = http_settings(
        admin_token_hashes=[hash_secret(new_admin, salt=b"", kind="sha256")],
        staff=[c.model_dump() for c in gw.config.http.staff if c.name != "till-1"],
        port=9999)
    new = gw.config.model_copy(update={
        "http": settings, "mqtt": gw.config.mqtt.model_copy(update={"host": "10.0.0.9"})})
    gw.config_loader = lambda: new
    r = client.post("/admin/config/reload", headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["applied"] == ["http.staff", "http.admin_token_hashes"]
    assert body["restart_needed"] == ["mqtt.host", "http.port"]
    assert "restart needed for: mqtt.host, http.port" in body["detail"]
    # the new admin token works, the old one no longer; till-1's session ended
    assert client.get("/admin/status", headers=bearer(ADMIN_TOKEN)).status_code == 401
    assert client.get("/admin/status", headers=bearer(new_admin)).status_code == 200
    assert staff.get("/staff/session").status_code == 401
    assert staff.post("/staff/signin", json={"lane": "lane-1", "pin": CASHIER_PIN}
                      ).status_code == 401

    def broken() -> Config:
        raise ConfigError("store.toml", "not a number", "mqtt.port")
    gw.config_loader = broken
    r = client.post("/admin/config/reload", headers=bearer(new_admin))
    assert r.status_code == 422 and "mqtt.port" in r.json()["detail"]
    assert client.get("/admin/status", headers=bearer(new_admin)).status_code == 200


# --- admin sign-in: a browser gets a session cookie ---------------------------------------


def test_admin_signs_in_once_and_the_browser_keeps_a_strict_cookie(tmp_path: Path) -> None:
    client, app, _ = make_client(tmp_path)
    page = client.get("/admin/sign-in")
    assert page.status_code == 200 and "<form" in page.text
    assert "'sha256-" in page.headers["content-security-policy"]
    browser = TestClient(app, base_url="https://testserver")
    assert browser.get("/admin").status_code == 401
    wrong = browser.post("/admin/signin", json={"token": "not-the-token"})
    assert wrong.status_code == 401 and "sg_session" not in browser.cookies
    r = browser.post("/admin/signin", json={"token": ADMIN_TOKEN})
    assert r.status_code == 200 and r.json()["role"] == "admin"
    cookie = r.headers["set-cookie"].lower()
    for attribute in ("secure", "httponly", "samesite=strict", "path=/"):
        assert attribute in cookie
    assert ADMIN_TOKEN.lower() not in cookie  # a session id, not the token
    assert browser.get("/admin").status_code == 200  # the cookie alone opens the page
    assert browser.get("/admin/status").status_code == 200
    assert browser.get("/metrics").status_code == 200
    # the cookie is an admin's, not a staff member's: staff screens refuse it
    assert browser.get("/staff/session").status_code == 403
    # API clients keep using the Bearer token, no cookie
    assert client.get("/admin/status", headers=bearer(ADMIN_TOKEN)).status_code == 200
    out = browser.post("/admin/signout")
    assert out.status_code == 200 and out.json() == {"signed_out": True}
    stale = TestClient(app, base_url="https://testserver",
                       cookies={"sg_session": r.cookies["sg_session"]})
    assert stale.get("/admin").status_code == 401


# --- config check opens the HTTP TLS files as run does -------------------------------------


def test_config_check_opens_the_http_tls_files(tmp_path: Path) -> None:
    from storegate.app.preflight import load_start_files
    from tests.support.store_broker import TestCA

    ca = TestCA(tmp_path)
    issued = ca.issue("gateway", tmp_path / "http.pem", tmp_path / "http.key", server=True)

    def cfg(cert: Path, key: Path) -> Config:
        return make_config(tmp_path, http_settings(tls_cert_file=str(cert),
                                                   tls_key_file=str(key)))

    load_start_files(cfg(issued.cert, issued.key))  # good files: no error
    with pytest.raises(DataFileError, match="file not found"):
        load_start_files(cfg(tmp_path / "missing.pem", issued.key))
    other = ca.issue("other", tmp_path / "o.pem", tmp_path / "o.key", server=True)
    with pytest.raises(DataFileError, match="HTTP certificate and key not usable"):
        load_start_files(cfg(issued.cert, other.key))  # a key of another certificate


def test_storegate_status_shows_latency_visits_app_and_screens(
        capsys: pytest.CaptureFixture[str]) -> None:
    from storegate.app.cli import _print_gateway

    _print_gateway(_full_status(), "s1/g1", NOW)
    out = capsys.readouterr().out
    # 5 observations: the 3rd is in the <= 10 ms bucket, the 5th over the last (0.1 s)
    assert "publish->PUBACK: mean 611.1 ms, p50 <= 10 ms, p99 over the last bucket" in out
    assert "visits entered: dairy 4, store 9; exited: store 7" in out
    assert "app       6 phone(s) connected, 40 message(s) held, 44 pushed; 1 INBOX ERRORS" \
        in out
    assert "screens   3 staff screen(s) connected, 8 profile view(s) logged" in out
