"""`storegate capture`: live sources to a capture file that `replay` reads back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storegate.core.ble.capture import Advert, read_capture
from storegate.core.ble.decoders import EDDYSTONE_UUID
from tests.support.bluez import BluezMock
from tests.support.gateway_proc import REPO, env, storegate
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

IBEACON = bytes.fromhex("0215e2c56db5dffb48d2b060d0f5a71096e000019c40c5")


def test_capture_from_a_bluetooth_adapter_then_replay(tmp_path: Path, bluez: BluezMock) -> None:
    cfg = tmp_path / "store.toml"
    cfg.write_text(
        'store_id = "s1"\ngateway_id = "g1"\n'
        f'[storage]\npath = "{tmp_path / "outbox.db"}"\n'
        '[sources.ble]\nenabled = true\nmode = "active"\n'
        '[[sources.ble.adapters]]\nadapter = "hci1"\nscanner = "entrance"\n'
        '[[presence.zones]]\nid = "entrance"\nscanners = ["entrance"]\n')
    out = tmp_path / "capture.jsonl"
    e = env()
    e["DBUS_SYSTEM_BUS_ADDRESS"] = bluez.address
    proc = subprocess.Popen(
        [sys.executable, "-m", "storegate", "capture", "-c", str(cfg), "--out", str(out),
         "--max-adverts", "6"], cwd=REPO, env=e, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: bluez.discovering("hci1"), 20, "capture scanning on hci1")
        for i in range(3):
            bluez.advertise("AC:23:3F:00:00:01", rssi=-60 - i, manufacturer_data={76: IBEACON},
                            adapter="hci1")
            bluez.advertise("5A:00:00:00:00:01", rssi=-70 - i, adapter="hci1",
                            service_data={EDDYSTONE_UUID: b"\x30\xf4" + bytes(8)})
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "captured 6 advert(s)" in err
    assert out.stat().st_mode & 0o077 == 0  # raw addresses: readable by the owner only
    items = list(read_capture(out.read_text().splitlines()))
    assert all(isinstance(a, Advert) for a in items) and len(items) == 6
    adverts = [a for a in items if isinstance(a, Advert)]
    assert {a.scanner for a in adverts} == {"entrance"}
    assert [a.rssi for a in adverts if a.address == "AC:23:3F:00:00:01"] == [-60, -61, -62]
    assert adverts[0].manufacturer_data == {76: IBEACON}
    r = storegate("replay", str(out), "-c", str(cfg), "--events-out", str(tmp_path / "ev.jsonl"))
    assert r.returncode == 0, r.stderr
    assert "replayed 6 adverts" in r.stderr and "0 bad line(s)" in r.stderr


def test_capture_without_a_source_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "store.toml"
    cfg.write_text(f'store_id = "s1"\ngateway_id = "g1"\n[storage]\npath = "{tmp_path}/o.db"\n')
    r = storegate("capture", "-c", str(cfg), "--out", str(tmp_path / "c.jsonl"))
    assert r.returncode == 2
    assert "no advert source enabled" in r.stderr and "Traceback" not in r.stderr


def test_capture_from_the_simulated_store(tmp_path: Path) -> None:
    out = tmp_path / "sim.jsonl"
    r = storegate("capture", "--out", str(out), "--max-adverts", "300",
                  extra_env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert r.returncode == 0, r.stderr
    adverts = [a for a in read_capture(out.read_text().splitlines()) if isinstance(a, Advert)]
    assert len(adverts) == 300
    assert {a.scanner for a in adverts} <= {"sc-entrance", "sc-produce", "sc-bakery", "sc-dairy",
                                           "sc-household", "sc-clothing", "sc-checkout-1",
                                           "sc-checkout-2"}
