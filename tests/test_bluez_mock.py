"""Real bleak (BlueZ backend) against a mocked bluetoothd on a private D-Bus.

These pin down both the test double (tests/support/bluez.py) and what bleak does when
BlueZ misbehaves: the exception a failing StartDiscovery raises, what an unplugged adapter
or a restarted bluetoothd looks like from the scanner, and how passive scanning is wired.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from bleak import BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.exc import BleakDBusError, BleakError

from tests.support.bluez import (
    EDDYSTONE_UUID,
    FAILED,
    IN_PROGRESS,
    UNKNOWN_METHOD,
    UNKNOWN_OBJECT,
    Advert,
    BluezMock,
    Detection,
    Detections,
    sync_bleak,
)

pytestmark = pytest.mark.e2e

BEACON = "AC:23:3F:00:00:01"
PHONE = "5A:11:22:33:44:55"
APPLE = 0x004C
NORDIC = 0x0059
# iBeacon: 02 15, UUID, major 1, minor 40000 (>= 32768: must not decode as negative), -59 dBm
IBEACON = (bytes.fromhex("0215") + bytes.fromhex("e2c56db5dffb48d2b060d0f5a71096e0")
           + (1).to_bytes(2, "big") + (40000).to_bytes(2, "big") + (-59).to_bytes(1, "big",
                                                                                 signed=True))
# Eddystone-UID: frame 00, tx power -20 dBm at 0 m, namespace(10), instance(6), reserved(2)
EDDYSTONE_UID = (bytes([0x00, 0xEC]) + bytes.fromhex("00112233445566778899")
                 + bytes.fromhex("aabbccddeeff") + b"\x00\x00")
PASSIVE = {"or_patterns": [OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA,
                                     b"\x4c\x00")]}


def scanner(detections: Detections, adapter: str = "hci0", **kwargs: object) -> BleakScanner:
    bluez = {"adapter": adapter, **kwargs.pop("bluez", {})}  # type: ignore[dict-item]
    return BleakScanner(detections, bluez=bluez, **kwargs)  # type: ignore[arg-type]


def at(address: str) -> Callable[[Detection], bool]:
    return lambda d: d.address == address


def test_fixture_starts_fast_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with BluezMock.running(tmp_path / "bluez") as mock:
        pids = mock.pids
        sock_dir = mock.bus.dir
        assert len(pids) == 2
        assert mock.startup_s < 5, f"startup took {mock.startup_s:.2f} s"
        assert mock.state("hci0").exists
        assert mock.state("hci0").powered
        assert not mock.state("hci1").exists
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not sock_dir.exists()


def test_active_scan_receives_ibeacon(bluez: BluezMock) -> None:
    async def run() -> Detection:
        det = Detections()
        async with scanner(det):
            state = bluez.state("hci0")
            assert state.discovering
            assert len(state.sessions) == 1
            # bleak's active scan filter
            assert state.discovery_filter == {"Transport": "le", "DuplicateData": False}
            assert bluez.advertise(BEACON, rssi=-67, manufacturer_data={APPLE: IBEACON},
                                   tx_power=-8, name="beacon-1", address_type="random")
            return await det.wait_for(at(BEACON))

    d = asyncio.run(run())
    assert d.adv.manufacturer_data == {APPLE: IBEACON}
    assert len(d.adv.manufacturer_data[APPLE]) == 23
    assert d.adv.rssi == -67
    assert d.adv.tx_power == -8
    assert d.adv.local_name == "beacon-1"
    assert d.device.name == "beacon-1"
    assert d.adv.service_data == {}
    # the scanner stopped discovery and reset the filter on exit
    state = bluez.state("hci0")
    assert not state.discovering
    assert state.sessions == ()
    assert bluez.calls("hci0", "StartDiscovery") == 1
    assert bluez.calls("hci0", "StopDiscovery") == 1
    assert bluez.calls("hci0", "SetDiscoveryFilter") == 2


def test_eddystone_service_data_arrives(bluez: BluezMock) -> None:
    async def run() -> Detection:
        det = Detections()
        async with scanner(det):
            bluez.advertise(BEACON, rssi=-71, service_data={EDDYSTONE_UUID: EDDYSTONE_UID},
                            service_uuids=[EDDYSTONE_UUID])
            return await det.wait_for(at(BEACON))

    d = asyncio.run(run())
    assert d.adv.service_data == {EDDYSTONE_UUID: EDDYSTONE_UID}
    assert d.adv.service_uuids == [EDDYSTONE_UUID]
    assert d.adv.manufacturer_data == {}
    assert d.adv.rssi == -71
    assert d.device.name is None  # no name: bleak hides BlueZ's address-derived alias


def test_rssi_update_fires_a_new_callback_and_keeps_stale_keys(bluez: BluezMock) -> None:
    async def run() -> list[Detection]:
        det = Detections()
        async with scanner(det):
            bluez.advertise(PHONE, rssi=-80, manufacturer_data={APPLE: IBEACON})
            first = await det.wait_for(at(PHONE))
            bluez.advertise(PHONE, rssi=-41)  # same device, RSSI only (PropertiesChanged)
            second = await det.wait_for(at(PHONE))
            bluez.advertise(PHONE, rssi=-45, manufacturer_data={NORDIC: b"\x01\x02"})
            third = await det.wait_for(at(PHONE))
            return [first, second, third]

    first, second, third = asyncio.run(run())
    assert (first.adv.rssi, second.adv.rssi, third.adv.rssi) == (-80, -41, -45)
    # BlueZ keeps the last data of every company id: select the key, never "the first"
    assert second.adv.manufacturer_data == {APPLE: IBEACON}
    assert third.adv.manufacturer_data == {APPLE: IBEACON, NORDIC: b"\x01\x02"}


def test_adverts_only_flow_while_the_adapter_scans(bluez: BluezMock) -> None:
    async def run() -> None:
        det = Detections()
        assert not bluez.advertise(BEACON)  # nobody scanning: bluetoothd reports nothing
        async with scanner(det):
            assert bluez.advertise(BEACON, rssi=-50)
            assert (await det.wait_for(at(BEACON))).adv.rssi == -50
        assert not bluez.advertise(BEACON, rssi=-51)
        assert await det.quiet() == []

    asyncio.run(run())


def test_passive_scan_registers_a_monitor_and_receives_adverts(bluez: BluezMock) -> None:
    async def run() -> Detection:
        det = Detections()
        async with scanner(det, scanning_mode="passive", bluez=PASSIVE):
            (monitor,) = bluez.monitors("hci0")
            assert monitor.startswith(f"/org/bleak/{os.getpid()}/")
            assert not bluez.discovering("hci0")  # passive: no StartDiscovery at all
            assert bluez.advertise(BEACON, rssi=-63, manufacturer_data={APPLE: IBEACON})
            d = await det.wait_for(at(BEACON))
            assert bluez.advertise(BEACON, rssi=-62)
            assert (await det.wait_for(at(BEACON))).adv.rssi == -62
            return d

    d = asyncio.run(run())
    assert d.adv.manufacturer_data == {APPLE: IBEACON}
    assert d.adv.rssi == -63
    assert bluez.monitors("hci0") == ()
    assert bluez.calls("hci0", "RegisterMonitor") == 1
    assert bluez.calls("hci0", "UnregisterMonitor") == 1
    assert bluez.calls("hci0", "StartDiscovery") == 0


def test_passive_scan_needs_the_monitor_api(bluez: BluezMock) -> None:
    # bluetoothd without --experimental has no AdvertisementMonitorManager1
    bluez.fail("RegisterMonitor", UNKNOWN_METHOD)

    async def run() -> None:
        with pytest.raises(BleakError, match=r"BlueZ >= 5\.56 with --experimental") as e:
            await scanner(Detections(), scanning_mode="passive", bluez=PASSIVE).start()
        assert type(e.value) is BleakError

    asyncio.run(run())


def test_start_discovery_in_progress_raises_bleak_dbus_error_then_retry_works(
        bluez: BluezMock) -> None:
    bluez.fail("StartDiscovery", IN_PROGRESS, times=1)

    async def run() -> Detection:
        det = Detections()
        s = scanner(det)
        with pytest.raises(BleakDBusError) as e:
            await s.start()
        assert type(e.value) is BleakDBusError
        assert e.value.dbus_error == "org.bluez.Error.InProgress"
        assert e.value.dbus_error_details == "Operation already in progress"
        assert str(e.value) == "[org.bluez.Error.InProgress] Operation already in progress"
        assert bluez.state("hci0").sessions == ()
        await s.start()  # the fault was one-shot
        try:
            bluez.advertise(BEACON, rssi=-55)
            return await det.wait_for(at(BEACON))
        finally:
            await s.stop()

    assert asyncio.run(run()).adv.rssi == -55
    assert bluez.calls("hci0", "StartDiscovery") == 2


def test_persistent_fault_until_cleared(bluez: BluezMock) -> None:
    bluez.fail("StartDiscovery", FAILED, times=None)

    async def run() -> None:
        s = scanner(Detections())
        for _ in range(3):
            with pytest.raises(BleakDBusError) as e:
                await s.start()
            assert e.value.dbus_error == FAILED
        bluez.clear_faults()
        await s.start()
        assert bluez.discovering("hci0")
        await s.stop()

    asyncio.run(run())
    assert bluez.calls("hci0", "StartDiscovery") == 4


def test_second_start_from_the_same_process_is_in_progress(bluez: BluezMock) -> None:
    """bluetoothd allows one discovery session per D-Bus client; bleak shares one bus
    connection per event loop, so two active scanners on one adapter collide."""

    async def run() -> None:
        async with scanner(Detections()):
            with pytest.raises(BleakDBusError) as e:
                await scanner(Detections()).start()
            assert e.value.dbus_error == IN_PROGRESS
            # scanners on different adapters are fine
            async with scanner(Detections(), adapter="hci1"):
                assert bluez.discovering("hci1")

    asyncio.run(run())


def test_silently_dead_discovery_needs_stop_then_start(bluez: BluezMock) -> None:
    async def run() -> None:
        det = Detections()
        s = scanner(det)
        await s.start()
        bluez.advertise(BEACON, rssi=-50)
        await det.wait_for(at(BEACON))
        bluez.stop_discovering("hci0")  # the field failure: nothing tells bleak
        assert not bluez.advertise(BEACON, rssi=-51)
        assert await det.quiet() == []
        with pytest.raises(BleakDBusError) as e:  # restarting without stopping first
            await s.start()
        assert e.value.dbus_error == IN_PROGRESS
        await s.stop()
        await s.start()
        assert bluez.advertise(BEACON, rssi=-52)
        assert (await det.wait_for(at(BEACON))).adv.rssi == -52
        await s.stop()

    asyncio.run(run())


def test_adapter_unplugged_while_scanning(bluez: BluezMock) -> None:
    """Unplugging is silent for the scanner: no exception, no callback, the devices vanish
    from discovered_devices; only stop() fails (the adapter object is gone)."""

    async def run() -> None:
        det = Detections()
        s = scanner(det)
        await s.start()
        bluez.advertise(BEACON, rssi=-50)
        await det.wait_for(at(BEACON))
        assert [d.address for d in s.discovered_devices] == [BEACON]

        bluez.remove_adapter("hci0")
        assert not bluez.advertise(BEACON)
        assert await det.quiet() == []
        assert s.discovered_devices == []
        with pytest.raises(BleakDBusError) as e:
            await s.stop()
        assert e.value.dbus_error == UNKNOWN_OBJECT
        with pytest.raises(BleakError, match="adapter 'hci0' not found") as e2:
            await s.start()
        assert type(e2.value) is BleakError

        bluez.add_adapter("hci0")  # plugged back in: powered but idle
        await sync_bleak()  # bleak has seen InterfacesAdded
        assert not bluez.advertise(BEACON)
        await s.start()
        assert bluez.advertise(BEACON, rssi=-53)
        assert (await det.wait_for(at(BEACON))).adv.rssi == -53
        await s.stop()

    asyncio.run(run())


def test_adapter_powered_off_while_scanning(bluez: BluezMock) -> None:
    async def run() -> None:
        det = Detections()
        s = scanner(det)
        await s.start()
        bluez.set_powered("hci0", False)
        assert not bluez.advertise(BEACON)
        await s.stop()  # StopDiscovery -> NotReady, which bleak swallows
        with pytest.raises(BleakDBusError) as e:
            await s.start()
        assert e.value.dbus_error == "org.bluez.Error.NotReady"
        bluez.set_powered("hci0", True)
        await s.start()
        assert bluez.advertise(BEACON, rssi=-58)
        assert (await det.wait_for(at(BEACON))).adv.rssi == -58
        await s.stop()

    asyncio.run(run())


def test_bluetoothd_restart_ends_discovery_silently(bluez: BluezMock) -> None:
    async def run() -> None:
        det = Detections()
        s = scanner(det)
        await s.start()
        bluez.restart_bluetoothd()
        assert not bluez.discovering("hci0")
        assert not bluez.advertise(BEACON)
        with pytest.raises(BleakDBusError) as e:
            await s.stop()
        assert e.value.dbus_error == FAILED
        assert e.value.dbus_error_details == "No discovery started"
        await s.start()
        assert bluez.advertise(BEACON, rssi=-49)
        assert (await det.wait_for(at(BEACON))).adv.rssi == -49
        await s.stop()

    asyncio.run(run())


def test_adapter_selection(bluez: BluezMock) -> None:
    async def run() -> None:
        det = Detections()
        async with scanner(det, adapter="hci1"):
            assert bluez.discovering("hci1")
            assert not bluez.discovering("hci0")
            # bleak only reports devices of its own adapter
            assert bluez.advertise(BEACON, adapter="hci0", even_if_idle=True)
            assert bluez.advertise(PHONE, rssi=-44, adapter="hci1")
            d = await det.wait_for()
            assert (d.address, d.adv.rssi) == (PHONE, -44)
            assert await det.quiet() == []
        with pytest.warns(DeprecationWarning, match="'adapter' keyword argument"):
            old_style = BleakScanner(det, adapter="hci1")
        async with old_style:
            assert bluez.discovering("hci1")

    asyncio.run(run())


def test_default_adapter_is_the_powered_central_one(bluez: BluezMock) -> None:
    bluez.set_powered("hci0", False)

    async def run() -> None:
        async with BleakScanner(Detections()):
            assert bluez.discovering("hci1")

    asyncio.run(run())


def test_forgotten_device_reappears(bluez: BluezMock) -> None:
    async def run() -> None:
        det = Detections()
        async with scanner(det) as s:
            bluez.advertise(BEACON, rssi=-60, manufacturer_data={APPLE: IBEACON})
            await det.wait_for(at(BEACON))
            assert bluez.remove_device(BEACON)
            await sync_bleak()
            assert s.discovered_devices == []
            bluez.advertise(BEACON, rssi=-61)  # appears afresh: the old data is gone
            d = await det.wait_for(at(BEACON))
            assert (d.adv.rssi, d.adv.manufacturer_data) == (-61, {})

    asyncio.run(run())


def test_advert_injection_rate(bluez: BluezMock) -> None:
    n, devices = 20_000, 200
    adverts = [
        Advert(f"AC:23:3F:00:{i % devices // 256:02X}:{i % devices % 256:02X}",
               rssi=-40 - i % 50, manufacturer_data={APPLE: IBEACON[:-1] + bytes([i % 256])})
        for i in range(n)
    ]

    async def run() -> tuple[float, Detections]:
        det = Detections()
        async with scanner(det):
            t0 = time.perf_counter()
            assert bluez.advertise_many(adverts) == n
            await det.wait_count(n, timeout=60)
            return time.perf_counter() - t0, det

    elapsed, det = asyncio.run(run())
    rate = n / elapsed
    print(f"\n{n} adverts in {elapsed:.2f} s: {rate:.0f} adverts/s into bleak callbacks")
    assert len(det) == n
    last = det.items[-1]
    assert last.adv.rssi == adverts[-1].rssi
    assert last.adv.manufacturer_data == {APPLE: IBEACON[:-1] + bytes([(n - 1) % 256])}
    assert rate > 1000
