"""The main job on the embedded default: `storegate run` with no config is the demo
store, and within a minute it publishes visits, aggregates, purchases and offers
(simulated shoppers and a simulated till on pseudo-terminals, through the real pipeline
and taps; the demo campaigns decided for the simulated app users)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gateway_proc import REPO, env
from tests.support.mosquitto import Mosquitto
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


def test_demo_store_publishes_visits_aggregates_and_purchases(
        tmp_path: Path, broker: Mosquitto, subscriber: Subscriber) -> None:
    e = env()
    e.update({"XDG_STATE_HOME": str(tmp_path / "state"),
              "STOREGATE_MQTT__PORT": str(broker.port),
              "STOREGATE_SOURCES__LANE_SIMULATOR__EVERY_S": "2",
              "STOREGATE_PRESENCE__OCCUPANCY_INTERVAL_S": "5"})
    proc = subprocess.Popen([sys.executable, "-m", "storegate", "--log-format", "json", "run"],
                            cwd=REPO, env=e, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "demo.log", "w"))  # noqa: SIM115
    try:
        want = {"storegate.visit.entered.v1", "storegate.purchase.completed.v1",
                "storegate.occupancy.measured.v1", "storegate.gateway.telemetry.v1",
                # the simulated app users are known with consents; the demo campaigns
                "storegate.offer.issued.v1", "storegate.offer.suppressed.v1"}
        wait_for(lambda: want <= {e["type"] for e in subscriber.decoded()}, 90,
                 f"the demo publishing {want}")
        # both lanes: lane-1 from its printer's receipts, lane-2 from its fiscal register
        wait_for(lambda: {e["data"]["lane"] for e in subscriber.of_type(
            "storegate.purchase.completed.v1")} == {"lane-1", "lane-2"}, 60,
            "a purchase at each lane")
        purchases = [e["data"] for e in subscriber.of_type("storegate.purchase.completed.v1")]
        assert not any(p["totals_mismatch"] for p in purchases)
        assert {p["source"] for p in purchases if p["lane"] == "lane-2"} == {"fiscal"}
        visit = subscriber.of_type("storegate.visit.entered.v1")[0]
        assert visit["source"] == "storegate://demo-store/gw-1"
        assert visit["data"]["customer"].startswith("cust-")  # a pseudonym, not an address
        offer = subscriber.of_type("storegate.offer.issued.v1")[0]["data"]
        assert offer["customer"].startswith("cust-") and len(offer["offer_id"]) == 32
        telemetry = subscriber.of_type("storegate.gateway.telemetry.v1")[-1]["data"]
        assert telemetry["personal"]["campaigns_active"] == 6
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 0
    log = (tmp_path / "demo.log").read_text()
    assert '"level": "error"' not in log and "Traceback" not in log
