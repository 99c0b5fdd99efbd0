"""POS lanes end to end: `storegate run` as a real process tapping pseudo-terminal lanes
with real pyserial; a simulated till writes real byte streams; purchases are checked on
a real mosquitto, and the tapped lines must never receive a byte."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from storegate.core.pseudonyms import pseudonym
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
from tests.support.tmpfs import fill, tmpfs
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "firmware-configs" / "pos" / "templates" / "ru-generic.toml"
KEY = bytes(range(100, 132))  # central's pseudonym key, as a store is given it


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


def assert_no_personal_data(storage: Path, receipts: list[Any]) -> None:
    """Not one loyalty card number or cashier name at rest, in any encoding it could take."""
    stored = b"".join(f.read_bytes() for f in storage.parent.glob(storage.name + "*")
                      if f.is_file())
    assert b'"receipt"' in stored  # the purchases are there (kept for replay)...
    for r in receipts:  # ...the people are not
        for value in filter(None, (r.loyalty, r.cashier)):
            for form in (value.encode(), json.dumps(value).encode()[1:-1]):
                assert form not in stored, value


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
                       extra=lane_config(printer, display, scanner)
                       + f'[privacy]\npseudonym_key = "{KEY.hex()}"\n', telemetry=True)
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
        wait_for(lambda: tap_states(storage).get("printer") != "open", 15, "unplug noticed")
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
            assert pc["lane"] == "lane-7"
            # personal data as keyed pseudonyms: central, holding the key, joins on them
            assert pc["loyalty_id"] == (pseudonym(KEY, "loyalty", r.loyalty)
                                        if r.loyalty else None)
            assert pc["operator"] == pseudonym(KEY, "operator", r.cashier)
            assert pc["offer_tokens"] == list(r.offers)
            assert pc["fiscal"]["total_minor"] == r.total_minor
            assert pc["first_item_at"] is not None
        scans = subscriber.of_type("storegate.pos.scanned.v1")
        want = sum((1 if r.loyalty else 0) + len(r.offers) for r in receipts)
        assert len(scans) == want
        assert {s["data"]["value"] for s in scans if s["data"]["kind"] == "loyalty"} \
            == {pseudonym(KEY, "loyalty", r.loyalty) for r in receipts if r.loyalty}
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
    assert_no_personal_data(storage, receipts)
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
    # a positive signal that the capture reads the line (not a fixed sleep: a loaded
    # machine starts the process slower): ENQ polls, harmless to the decode, until one
    # is recorded
    deadline = time.monotonic() + 20
    while not (cap.exists() and cap.stat().st_size) and time.monotonic() < deadline:
        register.write(b"\x05")
        time.sleep(0.05)
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
    assert r.returncode == 2 and "--dialect" in r.stderr


def receipt_with_loyalty(seed: int, number: int) -> Any:
    return next(r for s in range(seed, seed + 100)
                if (r := random_receipt(random.Random(s), number)).loyalty)


def test_sigterm_publishes_a_receipt_still_waiting_for_its_idle_gap(
        tmp_path: Path, broker: Mosquitto, subscriber: Subscriber) -> None:
    """A printer job without a cut ends only after silence; a SIGTERM in that silence
    must not cost the purchase (its bytes cannot be read again). Also, with no privacy
    key: loyalty id and cashier are withheld, and every file at rest is owner-only."""
    printer = PtyDevice(tmp_path / "dev", "usb-Epson_TM-T20-if00")
    scanner = PtyDevice(tmp_path / "dev", "usb-Zebra_DS2208-if00")
    storage = tmp_path / "outbox.db"
    cfg = write_config(tmp_path / "gw.toml", port=broker.port, storage=storage, extra=f"""
[[pos.lanes]]
id = "lane-3"
template = "{TEMPLATE}"
loyalty_pattern = '^LOY\\d{{9}}$'
[[pos.lanes.devices]]
role = "printer"
dialect = "escpos"
port = "{printer.path}"
idle_s = 60
[[pos.lanes.devices]]
role = "scanner"
dialect = "scanner"
port = "{scanner.path}"
encoding = "ascii"
""")
    log = tmp_path / "gw.log"
    umask = os.umask(0o022)  # the gateway inherits a usual, loose umask
    try:
        proc = start_run(cfg, stderr=log)
    finally:
        os.umask(umask)
    r = receipt_with_loyalty(40, 4242)
    job = escpos_job(r)
    assert job.endswith(b"\x1dV\x42\x03")  # the cut, which the till "forgets" here
    try:
        wait_for(lambda: storage.with_name("outbox.db.status.json").exists()
                 and set(tap_states(storage).values()) == {"open"}, 20, "two taps open")
        private = ["outbox.db", "outbox.db-wal", "outbox.db-shm", "outbox.db.lock",
                   "outbox.db.status.json", "outbox.identities.db"]
        assert {n: oct(storage.with_name(n).stat().st_mode & 0o777) for n in private} \
            == dict.fromkeys(private, "0o600")
        scanner.write(r.loyalty.encode() + b"\r")
        printer.write(job[:-4])

        def printed() -> bool:
            lane = live_status(storage)["pos"]["lanes"]["lane-3"]
            taken = {d["role"]: d["tap"]["bytes_total"] for d in lane["devices"]}
            return taken["printer"] == len(job) - 4 and taken["scanner"] > 0
        wait_for(printed, 15, "the tap reading the whole receipt")
        # the same snapshot: every byte read, the job still open (60 s gap, no cut)
        lane = live_status(storage)["pos"]["lanes"]["lane-3"]
        assert lane["counters"].get("purchases", 0) == 0
        wait_for(lambda: subscriber.of_type("storegate.pos.scanned.v1"), 10, "the card scan")
        [scan] = subscriber.of_type("storegate.pos.scanned.v1")
        assert scan["data"]["kind"] == "loyalty" and scan["data"]["value"] is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    wait_for(lambda: subscriber.of_type("storegate.purchase.completed.v1"), 10,
             "the purchase flushed at shutdown")
    [pc] = [e["data"] for e in subscriber.of_type("storegate.purchase.completed.v1")]
    assert pc["receipt"] == r.number and pc["total_minor"] == r.total_minor
    assert pc["transaction_id"] == scan["data"]["transaction_id"]
    assert pc["loyalty_id"] is None and pc["operator"] is None  # no key: withheld
    text = log.read_text()
    assert text.count("no privacy.pseudonym_key") == 1
    assert_no_personal_data(storage, [r])
    assert storage.stat().st_mode & 0o077 == 0
    for dev in (printer, scanner):
        dev.close()


def test_a_purchase_read_while_the_disk_is_full_arrives_when_space_returns(
        tmp_path: Path, broker: Mosquitto, subscriber: Subscriber) -> None:
    """Disk full: the outbox refuses, the lane's purchases wait in memory (counted),
    and all of them are published once space returns, with no restart."""
    printer = PtyDevice(tmp_path / "dev", "usb-Prolific_printer-if00")
    rng = random.Random(3)
    rung: list[Any] = []
    log = tmp_path / "gw.log"

    def ring(number: int) -> Any:
        r = random_receipt(rng, number)
        printer.write(escpos_job(r))
        rung.append(r)
        return r

    def published() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for e in subscriber.of_type("storegate.purchase.completed.v1"):
            out.setdefault(e["data"]["receipt"], set()).add(e["id"])
        return out

    def holding() -> bool:
        return "holding events in memory" in log.read_text()

    with tmpfs(tmp_path / "disk", "3m") as disk:
        storage = disk / "outbox.db"
        cfg = write_config(tmp_path / "gw.toml", port=broker.port, storage=storage, extra=f"""
[[pos.lanes]]
id = "lane-1"
template = "{TEMPLATE}"
[[pos.lanes.devices]]
role = "printer"
dialect = "escpos"
port = "{printer.path}"
[privacy]
pseudonym_key = "{KEY.hex()}"
""")
        proc = start_run(cfg, stderr=log)
        try:
            wait_for(lambda: storage.with_name("outbox.db.status.json").exists()
                     and tap_states(storage).get("printer") == "open", 20, "printer tap open")
            first = ring(500)
            wait_for(lambda: first.number in published(), 10, "a purchase before the fill")
            ballast = fill(disk)
            # the WAL may hold a purchase or two in pages it already has; then it is full
            for n in range(501, 541):
                r = ring(n)
                wait_for(lambda r=r: r.number in published() or holding(), 15,
                         f"receipt {r.number} published or held")
                if holding():
                    break
            assert holding(), "filling the disk never made the outbox refuse"
            held = r.number
            assert held not in published()
            ring(600)  # more customers while the disk is still full: they queue behind
            ring(601)
            wait_for(lambda: printer.unread() == 0, 10, "the tap reading both")
            ballast.unlink()
            wait_for(lambda: set(published()) >= {x.number for x in rung}, 30,
                     "every purchase, the held ones included")
            wait_for(lambda: "accepts again" in log.read_text(), 10, "recovery logged")
            assert proc.poll() is None  # the same process throughout: no restart

            def accepted_after_holding() -> bool:
                held = live_status(storage)["outbox"]["pending_accept"]
                return held["held_total"] >= 3 and held["pending"] == 0
            wait_for(accepted_after_holding, 10, "status: held purchases, none pending now")
            assert log.read_text().count("holding events in memory") == 1  # said once
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        assert proc.returncode == 0
    got = published()
    assert {x.number for x in rung} == set(got)
    assert all(len(ids) == 1 for ids in got.values())  # each purchase accepted once
    printer.close()
