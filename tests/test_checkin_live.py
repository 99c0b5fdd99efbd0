"""Check-in without Bluetooth, end to end: a real `storegate run` (no advert source at
all), a customer central sent with presence consent and no identity, the poster the
`storegate posters` CLI prints read back from its PNG, a check-in over real HTTP with a
token signed by the app's key, and the zone's `visit.entered` on the real broker."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import zxingcpp
from PIL import Image

from storegate.core.webauth import sign_app_token
from tests.support.central import CENTRAL, customer_record, topic
from tests.support.gateway_proc import live_status, start_run, storegate, write_config
from tests.support.http import APP_KEY, APP_KID, AUDIENCE, app_http_toml
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ENTERED = "storegate.visit.entered.v1"
APPLIED = "storegate.gateway.customers_applied.v1"


def token(customer: str, now: float) -> str:
    return sign_app_token(APP_KEY, kid=APP_KID, subject=customer, audience=AUDIENCE,
                          issued_at=now, lifetime_s=600)


def test_a_poster_check_in_is_a_visit_on_the_broker(tmp_path: Path, broker: Mosquitto,
                                                   subscriber: Subscriber) -> None:
    port = free_port()
    storage = tmp_path / "state" / "outbox.db"
    config = write_config(tmp_path / "store.toml", port=broker.port, storage=storage, extra=f"""
{app_http_toml(port)}
[[presence.zones]]
id = "entrance"
scanners = ["node-a"]
[[presence.zones]]
id = "dairy"
scanners = ["node-b"]
[checkin]
enabled = true
hold_s = 60
""")
    log = tmp_path / "gateway.log"
    proc = start_run(config, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
        wait_for(up, 30, "/healthz over real HTTP")
        wait_for(lambda: subscriber.retained_state() == "online", 15, "birth certificate")

        # central: one customer with presence consent (no identity: the phone never
        # advertises), one without
        gateways = {"g1": subscriber.status[-1]["data"]["seal_key"]}
        subscriber.client.publish(topic("customers"), CENTRAL.customers(
            "upsert", [customer_record("cust-walker", 1),
                       customer_record("cust-nope", 1, presence=False)],
            gateways=gateways, request_id="known"), qos=1)
        wait_for(lambda: any(e["data"].get("request_id") == "known"
                             for e in subscriber.of_type(APPLIED)), 15, "customers applied")

        # the poster, as printed: rendered by the CLI, read back from its PNG
        out = tmp_path / "posters"
        r = storegate("posters", "-c", str(config), "--zone", "dairy", "--format", "png",
                      "--out", str(out))
        assert r.returncode == 0, r.stderr
        [found] = zxingcpp.read_barcodes(Image.open(out / "poster-dairy.png"))
        code = found.text

        now = time.time()
        refused = httpx.post(f"{base}/app/checkin", json={"code": code}, timeout=5,
                             headers={"Authorization": f"Bearer {token('cust-nope', now)}"})
        assert (refused.status_code, refused.json()) == (403,
                                                         {"detail": "no_presence_consent"})

        r2 = httpx.post(f"{base}/app/checkin", json={"code": code}, timeout=5,
                        headers={"Authorization": f"Bearer {token('cust-walker', now)}"})
        assert r2.status_code == 200, r2.text
        body: dict[str, Any] = r2.json()
        assert body["zone"] == "dairy" and body["repeat"] is False
        assert body["zone_visit"]["entered"] is True

        def entered() -> list[dict[str, Any]]:
            return [e["data"] for e in subscriber.of_type(ENTERED)
                    if e["data"]["customer"] == "cust-walker"]
        wait_for(lambda: len(entered()) == 2, 15, "visit.entered published")
        store, zone = sorted(entered(), key=lambda d: d["zone"] is not None)
        assert store["zone"] is None and zone["zone"] == "dairy"
        assert zone["visit_id"] == body["zone_visit"]["visit_id"]
        assert not [e for e in subscriber.of_type(ENTERED)
                    if e["data"]["customer"] == "cust-nope"]

        wait_for(lambda: (live_status(storage).get("checkin") or {}).get(
            "accepted_total") == 1, 15, "check-in counted in the status file")
        checkin = live_status(storage)["checkin"]
        assert checkin["rejected_by_reason"] == {"no_presence_consent": 1}
        human = storegate("status", "-c", str(config)).stdout
        assert "check-in  1 accepted, 0 repeats; refused: no_presence_consent 1" in human
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert "Traceback" not in text, text[-2000:]
    assert "cust-walker" not in text and code not in text  # nothing personal logged
    assert proc.returncode == 0
