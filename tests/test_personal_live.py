"""Offers, live: a real `storegate run` with the simulated store and a real mosquitto.
Central sends a signed campaigns command; the gateway answers it, and a consenting
simulated app user who enters the store receives an offer (``offer.issued``) with a
token. A restart keeps the campaign (an older version arriving late is stale); the
birth certificate carries the offer-signing key; telemetry counts, never names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.central import CENTRAL, topic
from tests.support.gateway_proc import write_config
from tests.support.mosquitto import Mosquitto
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for
from tests.test_commands_live import Gw, answers

pytestmark = pytest.mark.e2e

APPLIED = "storegate.gateway.campaigns_applied.v1"
ISSUED = "storegate.offer.issued.v1"
HELLO = {"id": "hello", "version": 1, "trigger": {"kind": "store_entered"},
         "priority": 50, "control_share": 0.0, "offer_ttl_s": 600,
         "content": {"title": "Hello", "discount": {"kind": "percent", "value": 5}}}

# The demo store's zones, walked by simulated shoppers; every app user is known to the
# registry with consents (app/sim_store.py demo_records). No campaigns file: only
# central's command can make an offer here.
STORE = """
[sources.simulator]
enabled = true
app_users = 20
other_devices = 0
passers_by = 0
hour_s = 120
[presence]
beacons_file = "package:demo-store/beacons.toml"
[[presence.zones]]
id = "entrance"
scanners = ["sc-entrance"]
[[presence.zones]]
id = "checkout"
scanners = ["sc-checkout-1", "sc-checkout-2"]
"""


@pytest.fixture
def gw(tmp_path: Path, broker: Mosquitto) -> Iterator[Gw]:
    g = Gw(tmp_path, broker)
    write_config(g.config, port=broker.port, storage=g.storage, extra=STORE, telemetry=True)
    g.start()
    yield g
    g.stop()


def answer(sub: Subscriber, request_id: str) -> dict[str, Any]:
    wait_for(lambda: any(a["request_id"] == request_id for a in answers(sub, APPLIED)),
             15, f"the answer to {request_id}")
    [a] = [a for a in answers(sub, APPLIED) if a["request_id"] == request_id]
    return a


def test_signed_campaign_answered_and_offered_to_a_consenting_customer(
        gw: Gw, subscriber: Subscriber) -> None:
    wait_for(lambda: subscriber.retained_state() == "online", 10, "birth certificate")
    key = subscriber.status[-1]["data"]["offer_key"]
    assert len(key["kid"]) == 8 and key["public_key"]
    assert subscriber.of_type(ISSUED) == []  # no campaign yet: nothing to offer

    def send(request_id: str, op: str = "upsert", **payload: Any) -> dict[str, Any]:
        subscriber.client.publish(topic("campaigns"), CENTRAL.sign(
            "campaigns", {"op": op, "request_id": request_id, **payload}), qos=1)
        return answer(subscriber, request_id)

    first = send("c-1", campaigns=[HELLO])
    assert first["applied"] and first["error"] is None
    assert (first["stale"], first["removed"], first["active"]) == (0, 0, 1)

    wait_for(lambda: subscriber.of_type(ISSUED), 60, "an offer for a simulated shopper")
    offer = subscriber.of_type(ISSUED)[0]["data"]
    assert offer["campaign"] == "hello" and offer["customer"].startswith("cust-")
    assert offer["trigger"] == "store_entered" and len(offer["offer_id"]) == 32
    wait_for(lambda: any((t["data"].get("personal") or {}).get("offers_issued_total")
                         for t in subscriber.of_type("storegate.gateway.telemetry.v1")),
             10, "telemetry counting the offers")

    # a newer version, then a restart: the campaign is kept and the older version,
    # arriving late, is stale (versions never regress)
    newer = send("c-2", campaigns=[{**HELLO, "version": 2, "priority": 60}])
    assert newer["applied"] and (newer["stale"], newer["active"]) == (0, 1)
    gw.stop()
    gw.start()
    late = send("c-3", campaigns=[HELLO])
    assert late["applied"] and (late["stale"], late["active"]) == (1, 1)
    wait_for(lambda: (gw.status().get("personal") or {}).get("customers_known"), 10,
             "the simulated app users known again (not persisted: enrolled at start)")
    assert gw.status()["personal"]["campaigns_active"] == 1
    assert gw.commands()["rejected_total"] == 0
    log = gw.log.read_text()
    assert offer["customer"] not in log and "Traceback" not in log
