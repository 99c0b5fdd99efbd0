"""The bleak adapter (storegate.adapters.ble_bleak) with real bleak against a mocked
BlueZ on a private D-Bus: active and passive scans, several adapters, and the watchdog
recovering from the failures BlueZ has in the field."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import pytest

from storegate.adapters.ble_bleak import BleakSource
from storegate.core.backoff import Backoff
from storegate.core.ble.capture import Advert
from storegate.core.ble.decoders import EDDYSTONE_UUID, decode_eddystone, decode_ibeacon
from tests.support.bluez import IN_PROGRESS, BluezMock, eventually

pytestmark = pytest.mark.e2e

IBEACON = bytes.fromhex("0215e2c56db5dffb48d2b060d0f5a71096e000019c40c5")  # minor 40000
EID = bytes.fromhex("30f4") + bytes(range(8))


def source(adverts: list[Advert], adapter: str = "hci0", scanner: str = "entrance",
           mode: Literal["active", "passive"] = "active", stall_after_s: float = 0.0,
           ) -> BleakSource:
    return BleakSource(adapter=adapter, scanner=scanner, mode=mode, on_advert=adverts.append,
                       stall_after_s=stall_after_s, backoff=Backoff(0.05, 0.2), poll_s=0.05)


def run(*sources: BleakSource, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(s.run(stop)) for s in sources]
        try:
            await body()
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)  # never raised
        assert all(s.watchdog.state == "stopped" for s in sources)
    asyncio.run(main())


def test_active_scan_delivers_manufacturer_and_service_data_and_rssi_updates(
        bluez: BluezMock) -> None:
    got: list[Advert] = []
    src = source(got)

    async def body() -> None:
        await eventually(lambda: bluez.discovering("hci0"), what="discovery on")
        bluez.advertise("AC:23:3F:00:00:01", rssi=-61, manufacturer_data={0x004C: IBEACON})
        bluez.advertise("5A:11:22:33:44:55", rssi=-70, service_data={EDDYSTONE_UUID: EID})
        await eventually(lambda: len(got) >= 2, what="two adverts")
        bluez.advertise("AC:23:3F:00:00:01", rssi=-48)  # the same beacon, closer
        await eventually(lambda: any(a.rssi == -48 for a in got), what="an RSSI update")

    run(src, body=body)
    beacon = [a for a in got if a.address == "AC:23:3F:00:00:01"]
    assert [a.rssi for a in beacon][:2] == [-61, -48]
    ib = decode_ibeacon(beacon[0].manufacturer_data[0x004C])
    assert ib is not None and ib.minor == 40000 and ib.power_1m == -59
    phone = next(a for a in got if a.address == "5A:11:22:33:44:55")
    frame = decode_eddystone(phone.service_data[EDDYSTONE_UUID])
    assert frame is not None and getattr(frame, "eid", None) == bytes(range(8))
    assert {a.scanner for a in got} == {"entrance"}
    assert all(a.ts > 1e9 for a in got)  # wall-clock time, as the pipeline wants
    assert src.adverts_total == len(got)
    assert not bluez.discovering("hci0")  # discovery stopped on the way out


def test_passive_scan_uses_an_advertisement_monitor_and_no_discovery(bluez: BluezMock) -> None:
    got: list[Advert] = []
    src = source(got, mode="passive")

    async def body() -> None:
        await eventually(lambda: bluez.monitors("hci0"), what="monitor registered")
        bluez.advertise("AC:23:3F:00:00:02", rssi=-65, manufacturer_data={0x004C: IBEACON})
        await eventually(lambda: got, what="a passive advert")

    run(src, body=body)
    assert got[0].manufacturer_data == {0x004C: IBEACON}
    assert bluez.calls("hci0", "StartDiscovery") == 0  # nothing sent on air
    assert bluez.calls("hci0", "RegisterMonitor") == 1


def test_each_adapter_is_its_own_scanner(bluez: BluezMock) -> None:
    got: list[Advert] = []
    a, b = source(got, "hci0", "entrance"), source(got, "hci1", "checkout")

    async def body() -> None:
        await eventually(lambda: bluez.discovering("hci0") and bluez.discovering("hci1"),
                         what="both adapters discovering")
        bluez.advertise("5A:00:00:00:00:01", rssi=-50, service_data={EDDYSTONE_UUID: EID},
                        adapter="hci0")
        bluez.advertise("5A:00:00:00:00:02", rssi=-52, service_data={EDDYSTONE_UUID: EID},
                        adapter="hci1")
        await eventually(lambda: len(got) >= 2, what="one advert per adapter")

    run(a, b, body=body)
    assert {(x.address, x.scanner) for x in got} == {
        ("5A:00:00:00:00:01", "entrance"), ("5A:00:00:00:00:02", "checkout")}


def test_watchdog_retries_a_discovery_that_fails_in_progress(bluez: BluezMock) -> None:
    got: list[Advert] = []
    src = source(got)
    bluez.fail("StartDiscovery", IN_PROGRESS, adapter="hci0", times=3)

    async def body() -> None:
        await eventually(lambda: bluez.discovering("hci0"), timeout=10,
                         what="discovery on after the failures")
        bluez.advertise("AC:23:3F:00:00:03", rssi=-60, manufacturer_data={0x004C: IBEACON})
        await eventually(lambda: got, what="adverts after recovery")

    run(src, body=body)
    wd = src.watchdog
    assert wd.failures_total == 3
    assert wd.restarts_total == 3
    assert wd.last_error is not None and "org.bluez.Error.InProgress" in wd.last_error
    assert bluez.calls("hci0", "StartDiscovery") == 4
    assert src.status().failures_total == 3


def test_watchdog_restarts_a_scan_whose_adapter_vanished_and_came_back(
        bluez: BluezMock) -> None:
    got: list[Advert] = []
    src = source(got, stall_after_s=0.5)

    async def body() -> None:
        await eventually(lambda: bluez.discovering("hci0"), what="discovery on")
        bluez.advertise("AC:23:3F:00:00:04", rssi=-60, manufacturer_data={0x004C: IBEACON})
        await eventually(lambda: got, what="first advert")
        bluez.remove_adapter("hci0")  # the USB dongle is unplugged: bleak says nothing
        await eventually(lambda: src.watchdog.stalls_total >= 1, timeout=5, what="a stall")
        await eventually(lambda: src.watchdog.failures_total >= 2, timeout=5,
                         what="restarts failing while the adapter is gone")
        assert "not found" in (src.watchdog.last_error or "")
        bluez.add_adapter("hci0")  # plugged back in
        await eventually(lambda: bluez.discovering("hci0"), timeout=10,
                         what="discovery restarted on the new adapter")
        n = len(got)
        bluez.advertise("AC:23:3F:00:00:04", rssi=-55, manufacturer_data={0x004C: IBEACON})
        await eventually(lambda: len(got) > n, what="adverts again")

    run(src, body=body)
    assert src.watchdog.restarts_total >= 2


def test_watchdog_recovers_from_a_bluetoothd_restart(bluez: BluezMock) -> None:
    got: list[Advert] = []
    src = source(got, stall_after_s=0.5)

    async def body() -> None:
        await eventually(lambda: bluez.discovering("hci0"), what="discovery on")
        bluez.restart_bluetoothd()  # discovery sessions are gone; bleak does not notice
        await eventually(lambda: src.watchdog.stalls_total >= 1, timeout=5, what="a stall")
        await eventually(lambda: bluez.discovering("hci0"), timeout=10,
                         what="discovery restarted")
        bluez.advertise("AC:23:3F:00:00:05", rssi=-60, manufacturer_data={0x004C: IBEACON})
        await eventually(lambda: got, what="adverts after the restart")

    run(src, body=body)
    assert src.status().stalls_total >= 1


def test_no_system_bus_at_all_is_retried_not_fatal(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-such-bus")
    got: list[Advert] = []
    src = source(got)

    async def body() -> None:
        await eventually(lambda: src.watchdog.failures_total >= 3, timeout=10,
                         what="repeated start failures")

    run(src, body=body)
    assert src.watchdog.last_error is not None
    assert src.watchdog.last_error.startswith("cannot start scanning")
