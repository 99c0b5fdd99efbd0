"""The box's own Bluetooth adapter, read with bleak (BlueZ over D-Bus).

One :class:`BleakSource` per adapter. Active mode runs BlueZ discovery; passive mode
registers an advertisement monitor (no scan requests on air) with or-patterns that
match beacons, Eddystone and the flags every phone advertises. A watchdog
(:mod:`storegate.core.ble.watchdog`) restarts a scan that failed to start
(``org.bluez.Error.InProgress``, adapter missing, BlueZ down) or went silent, with
backoff, and reports it in status and logs: the process never exits over BlueZ.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from storegate.adapters.plumbing import describe_error, sleep_until_stopped
from storegate.core.backoff import Backoff
from storegate.core.ble.capture import Advert
from storegate.core.ble.watchdog import ScanWatchdog

log = logging.getLogger(__name__)

# Passive mode sees only what matches one of these (BlueZ advertisement monitor).
PASSIVE_PATTERNS: tuple[OrPattern, ...] = (
    OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x4c\x00\x02\x15"),
    OrPattern(2, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\xbe\xac"),
    OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xaa\xfe"),
    # Flags: phones without the app advertise these; needed for anonymous footfall.
    *(OrPattern(0, AdvertisementDataType.FLAGS, bytes([f])) for f in (0x02, 0x06, 0x1A, 0x1E)),
)
POLL_S = 1.0
START_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class BleSourceStatus:
    """One adapter's scan, as the status file shows it (names and order are its keys)."""

    kind: Literal["ble"] = field(default="ble", init=False)
    adapter: str
    scanner: str
    mode: str  # "active" or "passive"
    state: str  # the watchdog's: "starting", "scanning", "restarting"
    adverts_total: int
    last_advert_at: float | None
    restarts_total: int
    failures_total: int
    stalls_total: int
    last_error: str | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> BleSourceStatus:
        """Parsed back from the status file; a missing key takes its empty value."""
        return cls(adapter=str(d.get("adapter", "")), scanner=str(d.get("scanner", "")),
                   mode=str(d.get("mode", "")), state=str(d.get("state", "")),
                   adverts_total=int(d.get("adverts_total", 0)),
                   last_advert_at=d.get("last_advert_at"),
                   restarts_total=int(d.get("restarts_total", 0)),
                   failures_total=int(d.get("failures_total", 0)),
                   stalls_total=int(d.get("stalls_total", 0)), last_error=d.get("last_error"))


class BleakSource:
    """Adverts from one BlueZ adapter, as one named scanner."""

    def __init__(
        self,
        *,
        adapter: str,
        scanner: str,
        mode: Literal["active", "passive"],
        on_advert: Callable[[Advert], None],
        stall_after_s: float,
        backoff: Backoff,
        wall_clock: Callable[[], float] = time.time,
        scanner_factory: Callable[..., Any] = BleakScanner,
        poll_s: float = POLL_S,
    ) -> None:
        self.adapter = adapter
        self.scanner = scanner
        self.mode = mode
        self.name = f"ble:{adapter}"
        self._on_advert = on_advert
        self._wall = wall_clock
        self._factory = scanner_factory
        self._poll_s = poll_s
        self.watchdog = ScanWatchdog(backoff, stall_after_s)
        self.adverts_total = 0
        self._rng = random.Random()

    # --- bleak callback (on the event loop) ----------------------------------------

    def _detected(self, device: BLEDevice, data: AdvertisementData) -> None:
        now = self._wall()
        self.adverts_total += 1
        self.watchdog.advert(now)
        self._on_advert(Advert(
            ts=now, scanner=self.scanner, address=device.address, rssi=data.rssi,
            manufacturer_data=dict(data.manufacturer_data),
            service_data={k.lower(): v for k, v in data.service_data.items()},
            tx_power=data.tx_power, name=data.local_name,
            service_uuids=tuple(data.service_uuids),
        ))

    # --- lifecycle -----------------------------------------------------------------

    def _new_scanner(self) -> Any:
        args: BlueZScannerArgs = {"adapter": self.adapter}
        if self.mode == "passive":
            args["or_patterns"] = list(PASSIVE_PATTERNS)
        return self._factory(self._detected, scanning_mode=self.mode, bluez=args)

    async def run(self, stop: asyncio.Event) -> None:
        """Scan until ``stop``; failures and stalls restart the scan, never raise."""
        wd = self.watchdog
        while not stop.is_set():
            delay = await self._scan_once(stop)
            if stop.is_set():
                break
            log.info("bluetooth %s: restarting the scan in %.1f s", self.adapter, delay)
            await sleep_until_stopped(stop, delay)
            wd.restarting()
        wd.state = "stopped"

    async def _scan_once(self, stop: asyncio.Event) -> float:
        """One scan from start to failure or stall: the delay before the next."""
        wd = self.watchdog
        try:
            scanner = self._new_scanner()
            await asyncio.wait_for(scanner.start(), START_TIMEOUT_S)  # bluetoothd may hang
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # BlueZ, D-Bus and OS errors alike
            return self._failed(f"cannot start scanning: {describe_error(exc)}")
        wd.started(self._wall())
        log.info("bluetooth %s: %s scan started (scanner %s)", self.adapter, self.mode,
                 self.scanner)
        try:
            while not stop.is_set():
                await sleep_until_stopped(stop, self._poll_s)
                if wd.stalled(self._wall()):
                    delay = wd.stall(self._wall(), self._rng.random())
                    log.warning("bluetooth %s: no adverts for %g s; restarting discovery "
                                "(stall %d)", self.adapter, wd.stall_after_s, wd.stalls_total)
                    return delay
            return 0.0
        finally:
            try:
                await asyncio.wait_for(scanner.stop(), 5.0)
            except Exception as exc:
                log.debug("bluetooth %s: stop failed: %s", self.adapter, describe_error(exc))

    def _failed(self, error: str) -> float:
        delay = self.watchdog.failed(self._wall(), error, self._rng.random())
        log.warning("bluetooth %s: %s (failure %d in a row)", self.adapter, error,
                    self.watchdog.failures)
        return delay

    def status(self) -> BleSourceStatus:
        wd = self.watchdog
        return BleSourceStatus(
            adapter=self.adapter, scanner=self.scanner, mode=self.mode, state=wd.state,
            adverts_total=self.adverts_total, last_advert_at=wd.last_advert_at,
            restarts_total=wd.restarts_total, failures_total=wd.failures_total,
            stalls_total=wd.stalls_total, last_error=wd.last_error,
        )
