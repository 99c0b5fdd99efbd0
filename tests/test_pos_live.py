"""POS lanes end to end: `storegate run` as a real process tapping pseudo-terminal lanes
with real pyserial; a simulated till writes real byte streams; purchases are checked on
a real mosquitto, and the tapped lines must never receive a byte."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

from storegate.sim.lane import (
    display_updates,
    escpos_job,
    random_receipt,
    scanner_codes,
)
from tests.support.gateway_proc import start_run, storegate, write_config
from tests.support.mosquitto import Mosquitto
from tests.support.pty_lane import PtyDevice
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "firmware-configs" / "pos" / "templates" / "ru-generic.toml"


def lane_config(printer: PtyDevice, display: PtyDevice, scanner: PtyDevice) -> str:
    return f"""
[[pos.lanes]]
id = "lane-7"
currency = "RUB"
template = "{TEMPLATE}"
loyalty_pattern = '^LOY\\d{{9}}$'
[[pos.lanes.devices]]
role = "printer"
dialect = "escpos"
port = "{printer.path}"
baudrate = 38400
encoding = "cp866"
[[pos.lanes.devices]]
role = "display"
dialect = "pole-display"
port = "{display.path}"
[[pos.lanes.devices]]
role = "scanner"
dialect = "scanner"
port = "{scanner.path}"
encoding = "ascii"
"""


def events(sub: Subscriber, type_: str) -> list[dict[str, Any]]:
    with sub.lock:
        payloads = [v[0] for v in sub.events.values()]
    return [e for e in map(json.loads, payloads) if e["type"] == type_]


def status(storage: Path) -> dict[str, Any]:
    return json.loads((storage.parent / (storage.name + ".status.json")).read_text())


def tap_states(storage: Path) -> dict[str, str]:
    lanes = (status(storage).get("pos") or {}).get("lanes", {})
    return {d["role"]: d["tap"]["state"] for lane in lanes.values() for d in lane["devices"]}


def test_lane_purchases_scans_unplug_and_garbage(tmp_path: Path, broker: Mosquitto,
                                                  subscriber: Subscriber) -> None:
    printer = PtyDevice(tmp_path / "dev", "usb-Prolific_printer-if00")
    display = PtyDevice(tmp_path / "dev", "usb-FTDI_display-if00")
    scanner = PtyDevice(tmp_path / "dev", "usb-Honeywell_scanner-if00")
    storage = tmp_path / "outbox.db"
    cfg = write_config(tmp_path / "gw.toml", port=broker.port, storage=storage,
                       extra=lane_config(printer, display, scanner))
    proc = start_run(cfg, stderr=tmp_path / "gw.log")
    rng = random.Random(11)
    try:
        wait_for(lambda: (storage.parent / "outbox.db.status.json").exists()
                 and set(tap_states(storage).values()) == {"open"}, 20, "three taps open")

        def ring_up(number: int) -> Any:
            time.sleep(0.5)  # the next customer steps up
            r = random_receipt(rng, number)
            for code in scanner_codes(r):
                scanner.write(code)
            for upd in display_updates(r):
                display.write(upd)
            time.sleep(0.3)  # the cashier takes payment before the receipt prints
            job = escpos_job(r)
            for i in range(0, len(job), 64):  # as a UART delivers it, in pieces
                printer.write(job[i:i + 64])
            return r

        receipts = [ring_up(100 + i) for i in range(3)]
        wait_for(lambda: len(events(subscriber, "storegate.purchase.completed.v1")) >= 3, 15,
                 "three purchases")
        # the printer's cable is pulled and plugged back; garbage comes first (wrong baud)
        printer.unplug()
        wait_for(lambda: tap_states(storage).get("printer") != "open", 5, "unplug noticed")
        printer.replug()
        wait_for(lambda: tap_states(storage).get("printer") == "open", 15, "printer reopened")
        printer.write(bytes(rng.randrange(256) for _ in range(3000)))
        time.sleep(2.5)  # the line goes quiet: the garbage job ends
        receipts.append(ring_up(200))
        wait_for(lambda: len(events(subscriber, "storegate.purchase.completed.v1")) >= 4, 15,
                 "the purchase after the garbage")
        got = {e["data"]["receipt"]: e["data"]
               for e in events(subscriber, "storegate.purchase.completed.v1")}
        for r in receipts:
            pc = got[r.number]
            assert pc["total_minor"] == r.total_minor and not pc["totals_mismatch"]
            assert [i["amount_minor"] for i in pc["items"]] == [i.amount_minor for i in r.items]
            assert pc["lane"] == "lane-7" and pc["loyalty_id"] == r.loyalty
            assert pc["offer_tokens"] == list(r.offers)
            assert pc["fiscal"]["total_minor"] == r.total_minor
            assert pc["first_item_at"] is not None
        scans = events(subscriber, "storegate.pos.scanned.v1")
        want = sum((1 if r.loyalty else 0) + len(r.offers) for r in receipts)
        assert len(scans) == want
        txn = {pc["transaction_id"] for pc in got.values()}
        assert {s["data"]["transaction_id"] for s in scans} <= txn
        wait_for(lambda: status(storage)["pos"]["lanes"]["lane-7"]["counters"].get(
            "purchases") == 4, 10, "status showing four purchases")
        st = status(storage)["pos"]["lanes"]["lane-7"]
        dev = {d["role"]: d for d in st["devices"]}
        assert dev["printer"]["tap"]["disconnects_total"] == 1
        assert sum(dev["printer"]["rejected"].values()) >= 1  # the garbage, counted
        r = storegate("status", "-c", str(cfg))
        assert "lane      lane-7: 4 purchases" in r.stdout, r.stdout
        assert "printer (escpos" in r.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    for dev in (printer, display, scanner):  # read-only: not one byte sent to a device
        dev.collect()
        assert dev.written == b""
        dev.close()
