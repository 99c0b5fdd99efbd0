"""Presence, wired: advert sources -> the pure pipeline -> the outbox.

Everything here runs on the gateway's event loop: sources call :meth:`feed` there (the
MQTT node source hops threads in batches), a tick every second closes visits and emits
the aggregates, and consent changes from central are applied between two adverts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from storegate.adapters.ble_bleak import BleakSource, BleSourceStatus
from storegate.adapters.identities_sqlite import IdentityStore
from storegate.adapters.mqtt_client import MqttSettings
from storegate.adapters.mqtt_nodes import NodeSourceStatus, ScannerNodesSource
from storegate.adapters.plumbing import sleep_until_stopped
from storegate.app.presence_files import presence_pipeline
from storegate.app.sim_store import SimulatedStore
from storegate.app.status import CalibrationStatus, PresenceCounters, PresenceStatus
from storegate.config import Config
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.backoff import Backoff
from storegate.core.ble.capture import Advert
from storegate.core.ble.decoders import APPLE, encode_ibeacon
from storegate.core.ble.eid import Identity
from storegate.core.commands import IdentityChange
from storegate.core.presence.calibration import Calibrator, fit_prepared
from storegate.core.presence.infrastructure import Infrastructure
from storegate.core.presence.pipeline import PresencePipeline
from storegate.core.topics import Topics
from storegate.log_once import LogOnce

if TYPE_CHECKING:
    from storegate.app.status import SourceStatus

log = logging.getLogger(__name__)

TICK_S = 1.0
ENROL_BATCH = 500  # identities enrolled between two yields to the loop (~10 ms)


class AdvertSource(Protocol):
    name: str

    async def run(self, stop: asyncio.Event) -> None: ...

    def status(self) -> SourceStatus: ...


def presence_enabled(config: Config) -> bool:
    s = config.sources
    return s.ble.enabled or s.scanner_nodes.enabled or s.simulator.enabled


def build_sources(config: Config, mqtt: MqttSettings, *, on_advert: Callable[[Advert], None],
                  enroll: Callable[[list[Identity], float], None], beacons: Infrastructure,
                  client_suffix: str = "nodes") -> list[AdvertSource]:
    """The advert sources the config enables (shared by ``run`` and ``capture``)."""
    s = config.sources
    out: list[AdvertSource] = []
    if s.ble.enabled:
        for a in s.ble.adapters:
            out.append(BleakSource(
                adapter=a.adapter, scanner=a.scanner, mode=s.ble.mode, on_advert=on_advert,
                stall_after_s=s.ble.stall_after_s,
                backoff=Backoff(s.ble.restart_min_s, s.ble.restart_max_s),
            ))
    if s.scanner_nodes.enabled:
        n = s.scanner_nodes
        out.append(ScannerNodesSource(
            mqtt, on_advert=on_advert, espresense_topic=n.espresense_topic,
            raw_topic=Topics(config.store_id, config.gateway_id).scanner_adverts
            if n.raw_adverts else None,
            max_skew_s=n.max_clock_skew_s, silent_after_s=n.silent_after_s,
            client_suffix=client_suffix,
        ))
    if s.simulator.enabled:
        m = s.simulator
        out.append(SimulatedStore(
            on_advert=on_advert, enroll=enroll, app_users=m.app_users,
            other_devices=m.other_devices, passers_by=m.passers_by, hour_s=m.hour_s,
            seed=m.seed, beacons=_zone_beacons(config, beacons),
        ))
    return out


def _zone_beacons(config: Config, beacons: Infrastructure) -> list[
        tuple[str, dict[int, bytes]]]:
    """(scanner, manufacturer data) of the store's iBeacon zone beacons, as the scanners
    of their zone hear them: the simulator advertises them like the real ones."""
    scanners = {z.id: z.scanners for z in config.presence.zones}
    out = []
    for b in beacons.beacons:
        if b.kind != "zone" or b.zone not in scanners or b.ibeacon_uuid is None \
                or b.major is None or b.minor is None:
            continue
        data = encode_ibeacon(b.ibeacon_uuid, b.major, b.minor, -59)
        out += [(scanner, {APPLE: data}) for scanner in scanners[b.zone]]
    return out


class PresenceService:
    def __init__(
        self,
        pipeline: PresencePipeline,
        *,
        identities: IdentityStore,
        submit: Callable[[list[ev.EventDraft]], None],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.pipeline = pipeline
        self.identities = identities
        self._submit = submit
        self._wall = wall_clock
        self.sources: list[AdvertSource] = []
        self.commands_applied = 0
        self.errors_total = 0
        self.calibration_fits_off_loop = 0
        self._warn = LogOnce(log)
        self._consent = asyncio.Lock()

    @classmethod
    def build(cls, config: Config, *, identities: IdentityStore,
              submit: Callable[[list[ev.EventDraft]], None],
              extra: Sequence[Identity] = (), beacons: Infrastructure | None = None,
              wall_clock: Callable[[], float] = time.time) -> PresenceService:
        pipeline = presence_pipeline(config.presence, beacons or Infrastructure(()),
                                     identities.secret("footfall"),
                                     calibration=config.calibration, fit_inline=False)
        now = wall_clock()
        stored, skipped = identities.load()
        if skipped:
            log.warning("presence: %d stored identit(y/ies) out of bounds skipped (the next "
                        "full sync from central replaces them)", skipped)
        pipeline.enroll(stored, now)
        pipeline.enroll(extra, now)
        if stored or extra:
            log.info("presence: %d consenting customer(s) enrolled (%d from the store, %d "
                     "from the registry file)", len(pipeline.resolver), len(stored), len(extra))
        return cls(pipeline, identities=identities, submit=submit, wall_clock=wall_clock)

    # --- input (event loop) ----------------------------------------------------------

    def feed(self, advert: Advert) -> None:
        try:
            drafts = self.pipeline.feed(advert)
        except Exception as exc:  # a bug must cost one advert, not the source
            self.errors_total += 1
            self._warn(type(exc).__name__, "presence pipeline failed on an advert from %s: "
                       "%s", advert.scanner, type(exc).__name__, scanner=advert.scanner)
            return
        if drafts:
            self._submit(drafts)

    def enroll(self, identities: list[Identity], now: float) -> None:
        """Identities given by a trusted local source (the simulator): not persisted."""
        self.pipeline.enroll(identities, now)

    async def apply_identities(self, cmd: IdentityChange) -> None:
        """A consent change from central. Withdrawals leave memory first (privacy), then
        disk; the disk work runs off the loop and enrolment yields every few hundred
        identities, so a 100,000-identity full sync never stalls adverts or receipts.
        Commands are applied one at a time, in arrival order."""
        async with self._consent:
            now = self._wall()
            given = list(cmd.identities)  # checked and unsealed on the command thread
            removed: list[str] = []
            if cmd.op == "remove":
                removed = list(cmd.customers)
            elif cmd.op == "replace":
                keep = {i.customer for i in given}
                removed = [c for c in self.pipeline.resolver.customers() if c not in keep]
            self.pipeline.withdraw(removed)  # memory first: privacy before disk
            await asyncio.to_thread(self.identities.apply, cmd.op, given, removed)
            if cmd.op != "remove":
                await self._enroll(given, now)
            self.commands_applied += 1
            log.info("identities %s applied (command %s): %d given, %d removed, %d enrolled "
                     "now", cmd.op, cmd.command_id, len(given), len(removed),
                     len(self.pipeline.resolver))

    async def _enroll(self, identities: list[Identity], now: float) -> None:
        for i in range(0, len(identities), ENROL_BATCH):
            self.pipeline.enroll(identities[i:i + ENROL_BATCH], now)
            await asyncio.sleep(0)

    # --- run -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            for src in self.sources:
                tg.create_task(self._guard(src, stop), name=src.name)
            tg.create_task(self._tick(stop))
            cal = self.pipeline.calibrator
            if cal and not self.pipeline.fit_inline:  # a floor plan to fit (else no-plan)
                tg.create_task(self._calibrate(cal, stop))

    async def _guard(self, src: AdvertSource, stop: asyncio.Event) -> None:
        """A source that crashes is logged and restarted; it never takes the gateway."""
        while not stop.is_set():
            try:
                await src.run(stop)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("presence source %s failed; restarting it in 5 s", src.name)
                await sleep_until_stopped(stop, 5.0)

    async def _tick(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await sleep_until_stopped(stop, TICK_S)
            try:
                drafts = self.pipeline.tick(self._wall())
                if stop.is_set():  # shutting down: end open visits, flush what is counted
                    drafts += self.pipeline.close(self._wall())
            except Exception as exc:  # a bug costs one tick, never the gateway
                self.errors_total += 1
                self._warn(f"tick:{type(exc).__name__}", "presence tick failed: %s",
                           type(exc).__name__)
                continue
            if drafts:
                self._submit(drafts)

    async def _calibrate(self, calibrator: Calibrator, stop: asyncio.Event) -> None:
        """The calibration fit, every ``interval_s``, off the event loop."""
        while not stop.is_set():
            await sleep_until_stopped(stop, TICK_S)
            now = self._wall()
            if calibrator.due(now):
                await self.fit_calibration(now)

    async def fit_calibration(self, now: float) -> None:
        """One calibration fit on a worker thread: the loop only copies the pair
        summaries out (O(pairs)) and adopts the result, which the engine decides with
        from then on; the fit itself (~80 ms for 40 scanners x 80 beacons) never holds
        the loop."""
        calibrator = self.pipeline.calibrator
        if calibrator is None:
            return
        try:
            prepared = calibrator.prepare(now)
            fit, censored = await asyncio.to_thread(fit_prepared, prepared)
            self.pipeline.adopt_fit(fit, censored)
            self.calibration_fits_off_loop += 1
        except Exception as exc:  # a bad fit costs one fit, never the gateway
            self.errors_total += 1
            self._warn(f"fit:{type(exc).__name__}", "presence calibration fit failed: %s",
                       type(exc).__name__)

    def health(self) -> p.PresenceHealth:
        snaps = [s.status() for s in self.sources]
        ble = [s for s in snaps if isinstance(s, BleSourceStatus)]
        nodes = [s for s in snaps if isinstance(s, NodeSourceStatus)]
        down = [f"ble:{s.adapter}" for s in ble if s.state != "scanning"]
        down += [f"node:{n}" for s in nodes for n, st in s.nodes.items() if st.silent]
        down += ["scanner-nodes" for s in nodes if s.state != "connected"]
        return p.PresenceHealth(
            adverts_total=self.pipeline.counters.adverts,
            adverts_rejected_total=sum(s.rejected_total for s in nodes),
            scan_restarts_total=sum(s.restarts_total for s in ble),
            sources_down=down,
            enrolled=len(self.pipeline.resolver),
            customers_present=self.pipeline.engine.present()[None],
            calibration=_calibration_payload(self.pipeline.calibrator),
        )

    def snapshot(self) -> PresenceStatus:
        pl = self.pipeline
        return PresenceStatus(
            enrolled=len(pl.resolver),
            tracked=pl.engine.tracked,
            present={("store" if k is None else k): v for k, v in pl.engine.present().items()},
            counters=PresenceCounters.of(pl.counters),
            beacons_last_heard=dict(pl.beacons_last_heard),
            commands_applied=self.commands_applied,
            errors_total=self.errors_total,
            sources=tuple(s.status() for s in self.sources),
            calibration=None if pl.calibrator is None else CalibrationStatus.of(pl.calibrator),
        )


def _calibration_payload(c: Calibrator | None) -> p.PresenceCalibration | None:
    """The live fit for telemetry (rounded: central needs tenths, not float noise)."""
    if c is None:
        return None
    f = c.fit
    return p.PresenceCalibration(
        state=f.state, exponent=None if f.exponent is None else round(f.exponent, 3),
        offsets_db={s: round(o, 2) for s, o in f.offsets_db.items()}, pairs=f.pairs,
        residual_rms_db=None if f.residual_rms_db is None else round(f.residual_rms_db, 2),
        flags=f.flags(), uncalibrated=list(f.uncalibrated))
