"""POS lanes, wired: serial taps -> dialects -> lane assembly -> the outbox.

Everything but the taps' reading runs on the gateway's event loop: a tap hands over
bytes with their arrival time, its dialect turns them into frames, the lane assembles
purchases. A flush tick every 100 ms ends jobs framed by an idle gap and partial frames
past their per-byte timeout. Rejections are counted per lane, device and reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storegate.adapters.plumbing import sleep_until_stopped
from storegate.adapters.serial_tap import SerialTap
from storegate.app.sim_lane import SimulatedLane
from storegate.app.status import LaneStatus, PosDeviceStatus, PosStatus
from storegate.config import Config, PosDeviceConfig, PosLaneConfig, StxEtxConfig
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.backoff import Backoff
from storegate.core.pos.atol import AtolV3
from storegate.core.pos.display import PoleDisplay
from storegate.core.pos.escpos import EscPos
from storegate.core.pos.frames import Dialect
from storegate.core.pos.lane import REFUSED_ON_RECEIPTS, LaneAssembler, LaneSettings
from storegate.core.pos.scanner import BarcodeScanner
from storegate.core.pos.shtrih_m import ShtrihM
from storegate.core.pos.stx_etx import StxEtx, StxEtxSettings
from storegate.core.pos.template import Template, TemplateError
from storegate.core.pseudonyms import Kind, PersonalData
from storegate.errors import ConfigError, DataFileError
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

FLUSH_S = 0.1
# On SIGTERM a receipt still printing gets this long to finish (its idle gap, 2 s for a
# printer by default) before the lane is flushed as it stands: the bytes cannot be read
# again, so a job cut short is published as read (totals checked), never dropped.
SHUTDOWN_QUIET_S = 2.5
DEFAULT_IDLE_S = {"escpos": 2.0, "stx-etx": 2.0, "pole-display": 0.3, "scanner": 0.5}


def make_dialect(dialect: str, *, encoding: str = "cp866", idle_s: float | None = None,
                 scanner_prefix: str = "", scanner_suffix: str = "CR",
                 stx_etx: StxEtxConfig | None = None) -> Dialect:
    """A fresh parser for one device."""
    idle = idle_s if idle_s is not None else DEFAULT_IDLE_S.get(dialect, 2.0)
    if dialect == "escpos":
        return EscPos(encoding, idle)
    if dialect == "pole-display":
        return PoleDisplay(encoding, idle)
    if dialect == "scanner":
        return BarcodeScanner(prefix=scanner_prefix.encode(encoding),
                              suffix=scanner_suffix,  # type: ignore[arg-type]
                              encoding=encoding, idle_s=idle)
    if dialect == "shtrih-m":
        return ShtrihM()
    if dialect == "atol-v3":
        return AtolV3()
    if dialect == "stx-etx":
        c = stx_etx or StxEtxConfig()
        return StxEtx(StxEtxSettings(
            start=bytes.fromhex(c.start), end=bytes.fromhex(c.end),
            escape=bytes.fromhex(c.escape)[0] if c.escape else None, checksum=c.checksum,
            covers=c.covers, encoding=encoding, max_frame=c.max_frame))
    raise ValueError(f"unknown dialect {dialect!r}")


def device_idle_s(d: PosDeviceConfig) -> float:
    """The silence that ends a job on this device."""
    return d.idle_s if d.idle_s is not None else DEFAULT_IDLE_S.get(d.dialect, 2.0)


def device_dialect(d: PosDeviceConfig) -> Dialect:
    return make_dialect(d.dialect, encoding=d.encoding, idle_s=d.idle_s,
                        scanner_prefix=d.scanner_prefix, scanner_suffix=d.scanner_suffix,
                        stx_etx=d.stx_etx)


def device_tap(lane: str, d: PosDeviceConfig, on_bytes: Callable[[bytes, float], None],
               wall_clock: Callable[[], float] = time.time) -> SerialTap:
    """The read-only tap on one device's port (for ``run`` and ``pos capture``)."""
    return SerialTap(
        name=f"{lane}/{d.role}", port=d.port, baudrate=d.baudrate, bytesize=d.bytesize,
        parity=d.parity, stopbits=d.stopbits, xonxoff=d.xonxoff, rtscts=d.rtscts,
        on_bytes=on_bytes, backoff=Backoff(0.5, 10.0), wall_clock=wall_clock,
    )


def read_template(path: Path) -> Template:
    """Raises OSError (missing, unreadable) or TemplateError (everything else)."""
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError("(file)", f"not UTF-8 text: {exc}") from exc
    return Template.from_toml(text)


def load_template(path: Path) -> Template:
    """A receipt template; a bad one is a data file error naming the file and key."""
    try:
        return read_template(path)
    except FileNotFoundError as exc:
        raise DataFileError(str(path), "template file not found") from exc
    except OSError as exc:
        raise DataFileError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    except TemplateError as exc:
        raise DataFileError(str(path), exc.problem,
                            None if exc.key == "(file)" else exc.key) from exc


def lane_settings(cfg: PosLaneConfig, personal: PersonalData) -> LaneSettings:
    return LaneSettings(
        lane=cfg.id, currency=cfg.currency, purchases_from=cfg.source, personal=personal,
        template=load_template(cfg.template) if cfg.template else None,
        loyalty_pattern=re.compile(cfg.loyalty_pattern) if cfg.loyalty_pattern else None,
        offer_pattern=re.compile(cfg.offer_pattern) if cfg.offer_pattern else None,
    )


@dataclass(slots=True)
class _Device:
    lane: str
    cfg: PosDeviceConfig
    dialect: Dialect
    tap: SerialTap | None = None
    frames_total: int = 0
    last_byte_at: float = float("-inf")


class PosService:
    def __init__(self, config: Config, *, submit: Callable[[list[ev.EventDraft]], None],
                 wall_clock: Callable[[], float] = time.time,
                 rand: Callable[[int], bytes] = os.urandom) -> None:
        self._submit = submit
        self._wall = wall_clock
        self._warn = LogOnce(log)
        self.errors_total = 0
        self.lanes: dict[str, LaneAssembler] = {}
        self.devices: list[_Device] = []
        personal = config.privacy.personal_data()
        fields: tuple[tuple[str, Kind, str], ...] = (
            ("loyalty ids", "loyalty", "raw_loyalty_ids"),
            ("cashier names", "operator", "raw_operator_names"))
        withheld = [(what, opt) for what, kind, opt in fields if personal.withholds(kind)]
        if withheld and config.pos.lanes:  # said once, at start; each value is counted
            log.warning("no privacy.pseudonym_key: %s are published as null (withheld, "
                        "counted); set STOREGATE_PRIVACY__PSEUDONYM_KEY to the key central "
                        "gave, or opt in to raw values (%s)",
                        " and ".join(w for w, _ in withheld),
                        ", ".join(f"privacy.{o}" for _, o in withheld))
        for i, lane in enumerate(config.pos.lanes):
            self.lanes[lane.id] = LaneAssembler(lane_settings(lane, personal), rand)
            for j, d in enumerate(lane.devices):
                try:
                    dev = _Device(lane.id, d, device_dialect(d))
                    dev.tap = device_tap(lane.id, d, self._receiver(dev), wall_clock)
                except ValueError as exc:  # settings the dialect or pyserial refuse
                    raise ConfigError("<config>", str(exc),
                                      f"pos.lanes[{i}].devices[{j}]") from exc
                self.devices.append(dev)
        self.simulators: list[SimulatedLane] = []
        sim = config.sources.lane_simulator
        if sim.enabled:
            simulated = [ln for ln in config.pos.lanes if sim.lane in ("*", ln.id)]
            if not simulated:
                raise ConfigError("<config>", f"no lane {sim.lane!r} to simulate",
                                  "sources.lane_simulator.lane")
            self.simulators = [SimulatedLane(
                ports={d.role: d.port for d in lane_cfg.devices}, every_s=sim.every_s,
                seed=sim.seed + n, encoding=lane_cfg.devices[0].encoding)
                for n, lane_cfg in enumerate(simulated)]

    def _receiver(self, dev: _Device) -> Callable[[bytes, float], None]:
        return lambda data, ts: self._bytes(dev, data, ts)

    def _bytes(self, dev: _Device, data: bytes, ts: float) -> None:
        dev.last_byte_at = ts
        try:
            frames = dev.dialect.feed(data, ts)
        except Exception as exc:  # a parser bug costs these bytes, never the lane
            self._failed(dev, exc)
            return
        self._frames(dev, frames)

    def _frames(self, dev: _Device, frames: list[Any]) -> None:
        if not frames:
            return
        dev.frames_total += len(frames)
        lane = self.lanes[dev.lane]
        drafts: list[ev.EventDraft] = []
        alert = lane.layout_alert
        refused = [lane.counters.get(k, 0) for k in REFUSED_ON_RECEIPTS]
        for f in frames:
            try:
                drafts += lane.feed(f)
            except Exception as exc:
                self._failed(dev, exc)
        for (reason, why), before in zip(REFUSED_ON_RECEIPTS.items(), refused, strict=True):
            if lane.counters.get(reason, 0) > before:
                self._warn(f"{dev.lane}:{reason}", "lane %s: %s (counted as %s)", dev.lane,
                           why, reason, lane=dev.lane)
        if lane.layout_alert != alert:
            self._layout_changed(dev.lane, lane)
        if drafts:
            self._submit(drafts)

    def _layout_changed(self, lane_id: str, lane: LaneAssembler) -> None:
        """Said once each time the alert rises or clears (status and telemetry carry it)."""
        share = lane.adds_up_share or 0.0
        if lane.layout_alert:
            log.warning("lane %s: only %.0f%% of the last receipts add up to their total: "
                        "the receipt layout may have changed (printer firmware, till); check "
                        "the template with `storegate pos template check` on a capture",
                        lane_id, share * 100, extra={"lane": lane_id})
        else:
            log.info("lane %s: receipts add up again (%.0f%%)", lane_id, share * 100,
                     extra={"lane": lane_id})

    def _failed(self, dev: _Device, exc: Exception) -> None:
        self.errors_total += 1
        self._warn(f"{dev.lane}/{dev.cfg.role}:{type(exc).__name__}",
                   "lane %s %s: parser failed (%s); those bytes are lost, the lane goes on",
                   dev.lane, dev.cfg.role, type(exc).__name__, lane=dev.lane)

    async def run(self, stop: asyncio.Event) -> None:
        """Read the lanes until ``stop``; then let a receipt still printing finish, stop
        the taps and flush every lane, so what was read is submitted before the drain."""
        taps_stop = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                for dev in self.devices:
                    if dev.tap is not None:
                        tg.create_task(dev.tap.run(taps_stop), name=f"tap {dev.cfg.port}")
                tg.create_task(self._flush(stop))
                for simulator in self.simulators:
                    tg.create_task(simulator.run(stop), name="lane simulator")
                await stop.wait()
                await self._quiet(time.monotonic() + SHUTDOWN_QUIET_S)
                taps_stop.set()
        finally:  # also when cancelled (another task of the gateway failed)
            self._tick(math.inf)  # every job and frame still open ends now

    async def _flush(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await sleep_until_stopped(stop, FLUSH_S)
            self._tick(self._wall())

    async def _quiet(self, deadline: float) -> None:
        """Keep reading and flushing while a device sent bytes within its idle gap
        (``deadline`` is monotonic: a wall clock may be driven by a test or jump)."""
        while time.monotonic() < deadline and any(
                self._wall() - d.last_byte_at < device_idle_s(d.cfg) for d in self.devices):
            await asyncio.sleep(FLUSH_S)
            self._tick(self._wall())

    def _tick(self, now: float) -> None:
        for dev in self.devices:
            try:
                frames = dev.dialect.flush(now)
            except Exception as exc:
                self._failed(dev, exc)
                continue
            self._frames(dev, frames)

    def health(self) -> list[p.LaneHealth]:
        out = []
        for lane_id, lane in self.lanes.items():
            devs = [d for d in self.devices if d.lane == lane_id]
            out.append(p.LaneHealth(
                lane=lane_id, purchases_total=lane.counters.get("purchases", 0),
                rejected_total=sum(sum(d.dialect.rejected.values()) for d in devs),
                totals_mismatch_total=lane.counters.get("totals-mismatch", 0),
                devices_down=[d.cfg.role for d in devs
                              if d.tap is not None and d.tap.state != "open"],
                adds_up_share=lane.adds_up_share, layout_alert=lane.layout_alert,
            ))
        return out

    def snapshot(self) -> PosStatus:
        devices: dict[str, list[PosDeviceStatus]] = {lane_id: [] for lane_id in self.lanes}
        for dev in self.devices:
            devices[dev.lane].append(PosDeviceStatus(
                role=dev.cfg.role, dialect=dev.cfg.dialect, port=dev.cfg.port,
                frames_total=dev.frames_total,
                rejected=dict(dev.dialect.rejected),
                tap=dev.tap.status() if dev.tap is not None else None,
            ))
        lanes = {lane_id: LaneStatus(counters=dict(lane.counters),
                                     devices=tuple(devices[lane_id]),
                                     adds_up_share=lane.adds_up_share,
                                     layout_alert=lane.layout_alert)
                 for lane_id, lane in self.lanes.items()}
        return PosStatus(lanes=lanes, errors_total=self.errors_total)
