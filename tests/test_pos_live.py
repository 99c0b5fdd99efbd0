"""POS lanes end to end: `storegate run` as a real process tapping pseudo-terminal lanes
with real pyserial; a simulated till writes real byte streams; purchases are checked on
a real mosquitto, and the tapped lines must never receive a byte."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from storegate.sim.lane import (
    display_updates,
    escpos_job,
    random_receipt,
    scanner_codes,
)
from tests.support.gateway_proc import env, live_status, start_run, storegate, write_config
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


def tap_states(storage: Path) -> dict[str, str]:
    lanes = (live_status(storage).get("pos") or {}).get("lanes", {})
    return {d["role"]: d["tap"]["state"] for lane in lanes.values() for d in lane["devices"]}


def test_lane_purchases_scans_unplug_and_garbage(tmp_path: Path, broker: Mosquitto,
                                                  subscriber: Subscriber) -> None:
    printer = PtyDevice(tmp_path / "dev", "usb-Prolific_printer-if00")
    display = PtyDevice(tmp_path / "dev", "usb-FTDI_display-if00")
    scanner = PtyDevice(tmp_path / "dev", "usb-Honeywell_scanner-if00")
    storage = tmp_path / "outbox.db"
    cfg = write_config(tmp_path / "gw.toml", port=broker.port, storage=storage,
                       extra=lane_config(printer, display, scanner), telemetry=True)
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
        wait_for(lambda: len(subscriber.of_type("storegate.purchase.completed.v1")) >= 3, 15,
                 "three purchases")
        # the printer's cable is pulled and plugged back; garbage comes first (wrong baud)
        printer.unplug()
        wait_for(lambda: tap_states(storage).get("printer") != "open", 5, "unplug noticed")
        printer.replug()
        wait_for(lambda: tap_states(storage).get("printer") == "open", 15, "printer reopened")
        printer.write(bytes(rng.randrange(256) for _ in range(3000)))
        time.sleep(2.5)  # the line goes quiet: the garbage job ends
        receipts.append(ring_up(200))
        wait_for(lambda: len(subscriber.of_type("storegate.purchase.completed.v1")) >= 4, 15,
                 "the purchase after the garbage")
        got = {e["data"]["receipt"]: e["data"]
               for e in subscriber.of_type("storegate.purchase.completed.v1")}
        for r in receipts:
            pc = got[r.number]
            assert pc["total_minor"] == r.total_minor and not pc["totals_mismatch"]
            assert [i["amount_minor"] for i in pc["items"]] == [i.amount_minor for i in r.items]
            assert pc["lane"] == "lane-7" and pc["loyalty_id"] == r.loyalty
            assert pc["offer_tokens"] == list(r.offers)
            assert pc["fiscal"]["total_minor"] == r.total_minor
            assert pc["first_item_at"] is not None
        scans = subscriber.of_type("storegate.pos.scanned.v1")
        want = sum((1 if r.loyalty else 0) + len(r.offers) for r in receipts)
        assert len(scans) == want
        txn = {pc["transaction_id"] for pc in got.values()}
        assert {s["data"]["transaction_id"] for s in scans} <= txn
        wait_for(lambda: live_status(storage)["pos"]["lanes"]["lane-7"]["counters"].get(
            "purchases") == 4, 10, "status showing four purchases")
        st = live_status(storage)["pos"]["lanes"]["lane-7"]
        dev = {d["role"]: d for d in st["devices"]}
        assert dev["printer"]["tap"]["disconnects_total"] == 1
        assert sum(dev["printer"]["rejected"].values()) >= 1  # the garbage, counted
        r = storegate("status", "-c", str(cfg))
        assert "lane      lane-7: 4 purchases" in r.stdout, r.stdout
        health = subscriber.of_type("storegate.gateway.telemetry.v1")[-1]["data"]["lanes"]
        assert health[0]["lane"] == "lane-7" and health[0]["rejected_total"] >= 1
        assert "printer (escpos" in r.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    for dev in (printer, display, scanner):  # read-only: not one byte sent to a device
        dev.collect()
        assert dev.written == b""
        dev.close()


def test_fiscal_register_lane_and_pos_capture_then_decode(tmp_path: Path, broker: Mosquitto,
                                                          subscriber: Subscriber) -> None:
    """A Shtrih-M register tapped on a pty: purchases from its commands, and the same
    bytes captured with `pos capture` decode offline to the same purchase."""
    from storegate.sim import fiscal

    register = PtyDevice(tmp_path / "dev", "usb-SHTRIH-M_FR-if00")
    storage = tmp_path / "outbox.db"
    cfg = write_config(tmp_path / "gw.toml", port=broker.port, storage=storage, extra=f"""
[[pos.lanes]]
id = "lane-2"
[[pos.lanes.devices]]
role = "fiscal"
dialect = "shtrih-m"
port = "{register.path}"
baudrate = 115200
encoding = "cp1251"
""")
    stream = (fiscal.ENQ + fiscal.shtrih_sale("Молоко", 2000, 8990)
              + fiscal.ENQ + fiscal.shtrih_sale("Сыр", 1254, 12900)
              + fiscal.shtrih_sale("Сыр", 1254, 12900)  # resent without ENQ: a duplicate
              + b"\x02\x07\xff\x00\x13"  # a torn frame: noise
              + fiscal.ENQ + fiscal.shtrih_close(20000, 20000))
    proc = start_run(cfg, stderr=tmp_path / "gw.log")
    capture = None
    try:
        wait_for(lambda: (storage.parent / "outbox.db.status.json").exists()
                 and set(tap_states(storage).values()) == {"open"}, 20, "register tap open")
        # a second, read-only capture of the same lane cannot take the port: exclusive
        capture = storegate("pos", "capture", "lane-2", str(tmp_path / "busy.jsonl"), "-c",
                            str(cfg), "--duration", "1")
        assert capture.returncode == 0 and "captured 0 byte(s)" in capture.stderr
        assert "busy" in capture.stderr or "exclusive" in capture.stderr.lower()
        for i in range(0, len(stream), 7):
            register.write(stream[i:i + 7])
        wait_for(lambda: subscriber.of_type("storegate.purchase.completed.v1"), 10,
                 "the register's purchase")
        [pc] = [e["data"] for e in subscriber.of_type("storegate.purchase.completed.v1")]
        assert pc["source"] == "fiscal" and pc["lane"] == "lane-2"
        assert [i["amount_minor"] for i in pc["items"]] == [17980, 16177]
        assert pc["total_minor"] == 34157 and not pc["totals_mismatch"]
        assert {t["kind"] for t in pc["tenders"]} == {"cash", "card"}
        wait_for(lambda: "duplicate" in json.dumps(live_status(storage)["pos"]), 10,
                 "the duplicate counted")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    # the gateway is gone: `pos capture` records the lane, `pos decode` reads it back
    cap = tmp_path / "cap.jsonl"
    capture = subprocess.Popen(
        [sys.executable, "-m", "storegate", "pos", "capture", "lane-2", str(cap), "-c",
         str(cfg), "--duration", "4"], cwd=REPO, env=env(), stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    register.write(stream)
    _, err = capture.communicate(timeout=30)
    assert capture.returncode == 0, err
    assert cap.stat().st_mode & 0o077 == 0
    r = storegate("pos", "decode", str(cap))
    [pc2] = [json.loads(line)["data"] for line in r.stdout.splitlines()]
    assert pc2["total_minor"] == 34157 and [i["name"] for i in pc2["items"]] == ["Молоко", "Сыр"]
    register.collect()
    assert register.written == b""  # never an ACK, never a byte
    register.close()


def test_pos_decode_offline_matches_ground_truth(tmp_path: Path) -> None:
    rng = random.Random(5)
    receipts = [random_receipt(rng, 700 + i) for i in range(5)]
    raw = tmp_path / "printer.bin"
    raw.write_bytes(b"".join(escpos_job(r) for r in receipts) + b"\x1dv0\x00\xff\xff\xff\xff")
    out = tmp_path / "events.jsonl"
    r = storegate("pos", "decode", str(raw), "--dialect", "escpos", "--template",
                  str(TEMPLATE), "--events-out", str(out))
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["data"]["receipt"] for e in got] == [x.number for x in receipts]
    assert [e["data"]["total_minor"] for e in got] == [x.total_minor for x in receipts]
    assert "escpos rejected 1: implausible-length" in r.stderr
    # a capture file (JSON lines of timed chunks) decodes the same way, dialect inside
    cap = tmp_path / "cap.jsonl"
    cap.write_text("".join(json.dumps({"ts": 1_795_000_000 + i, "lane": "lane-1",
                                       "role": "printer", "dialect": "escpos",
                                       "data": escpos_job(x).hex()}) + "\n"
                           for i, x in enumerate(receipts)) + "not json\n")
    r = storegate("pos", "decode", str(cap), "--template", str(TEMPLATE))
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["data"]["receipt"] for line in r.stdout.splitlines()] \
        == [x.number for x in receipts]
    assert "1 bad capture line(s)" in r.stderr
    r = storegate("pos", "decode", str(raw))
    assert r.returncode == 2 and "needs --dialect" in r.stderr
