"""Operations over HTTP: /healthz, /readyz from the typed status, /metrics parsed with
prometheus_client's own parser, the admin API (status, redacted events, reload) and
page; and one end-to-end run of `storegate run` serving them over real HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from storegate.adapters.ble_bleak import BleSourceStatus
from storegate.adapters.serial_tap import SerialTapStatus
from storegate.app.http.ops import readiness, redact, redact_subject, render_status_page
from storegate.app.status import (
    GatewayStatusView,
    LaneStatus,
    PendingAcceptStatus,
    PosDeviceStatus,
    PosStatus,
)
from storegate.core import events as ev
from storegate.core.webauth import hash_secret
from tests.support.gateway_proc import start_run, write_config
from tests.support.http import (
    ADMIN_TOKEN,
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

    class Personal:
        calls = 0

        async def reload_campaigns(self) -> str:
            self.calls += 1
            return "6 campaigns active"

    gw.personal = personal = Personal()
    r = client.post("/admin/campaigns/reload", headers=bearer(ADMIN_TOKEN))
    assert r.json() == {"reloaded": True, "detail": "6 campaigns active"}
    assert personal.calls == 1


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
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 30,
                 "/readyz ready (broker connected)")
        assert httpx.get(f"{base}/metrics", timeout=2).status_code == 401
        metrics = httpx.get(f"{base}/metrics", headers=bearer(ADMIN_TOKEN), timeout=5)
        assert metrics.status_code == 200
        m = _samples(metrics.text)
        assert m[("storegate_mqtt_connected", ())] == 1
        assert ("storegate_outbox_depth", ()) in m
        broker.kill()  # the broker gone: not ready, with the reason
        wait_for(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 503, 30,
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
