"""The presence pipeline: adverts in, visit events out (pure; time from the adverts).

classify (the store's own beacons) -> decode -> resolve (Eddystone-EID of consenting
customers) -> presence engine. Infrastructure beacons are counted by kind and never
treated as shoppers. Everything unresolved is anonymous: counted for footfall and
occupancy through keyed hashes, never tracked as a person, never published as such.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from storegate.core import events as ev
from storegate.core.ble.capture import Advert
from storegate.core.ble.decoders import EDDYSTONE_UUID, EddystoneEid, decode_eddystone
from storegate.core.ble.eid import EidResolver, Identity
from storegate.core.payloads import VisitEntered, VisitExited
from storegate.core.presence.calibration import CalibrationFit, Calibrator
from storegate.core.presence.correction import derive
from storegate.core.presence.engine import PresenceEngine
from storegate.core.presence.footfall import OCCUPANCY_S, PERIOD_S, Footfall
from storegate.core.presence.infrastructure import Infrastructure
from storegate.core.presence.settings import PresenceSettings

TICK_S = 1.0
# The per-scanner advert counter's bucket for every scanner placed in no zone: a flood of
# invented scanner names (a node or capture gone wrong) cannot grow the counters.
OTHER_SCANNER = "other"
STORE = "store"  # the visit counters' key for the whole-store visit


@dataclass(slots=True)
class PipelineCounters:
    adverts: int = 0
    resolved: int = 0  # adverts of consenting customers
    unresolved_eid: int = 0  # EID frames of nobody enrolled here
    anonymous: int = 0  # everything else
    infrastructure: dict[str, int] = field(default_factory=dict)  # adverts, by beacon kind
    unknown_scanner: int = 0  # adverts from a scanner in no zone (placed nowhere)
    # adverts by scanner: the configured scanners, the rest under OTHER_SCANNER (bounded)
    by_scanner: dict[str, int] = field(default_factory=dict)
    # visits by zone (STORE: the whole store), keys bounded by the configured zones
    visits_entered: dict[str, int] = field(default_factory=dict)
    visits_exited: dict[str, int] = field(default_factory=dict)

    def count_visits(self, drafts: Iterable[ev.EventDraft]) -> None:
        for d in drafts:
            data = d.data
            if isinstance(data, VisitEntered):
                key = data.zone or STORE
                self.visits_entered[key] = self.visits_entered.get(key, 0) + 1
            elif isinstance(data, VisitExited):
                key = data.zone or STORE
                self.visits_exited[key] = self.visits_exited.get(key, 0) + 1


class PresencePipeline:
    def __init__(self, settings: PresenceSettings, resolver: EidResolver,
                 rand: Callable[[int], bytes], footfall_secret: bytes | None = None, *,
                 infrastructure: Infrastructure | None = None,
                 footfall_period_s: float = PERIOD_S,
                 occupancy_interval_s: float = OCCUPANCY_S,
                 calibrator: Calibrator | None = None, fit_inline: bool = True,
                 use_calibration: bool = True) -> None:
        self.settings = settings
        self.resolver = resolver
        self.engine = PresenceEngine(settings, rand)
        self.footfall = Footfall(settings, footfall_secret or rand(32), footfall_period_s,
                                 occupancy_s=occupancy_interval_s)
        self.infrastructure = infrastructure or Infrastructure(())
        self.beacons_last_heard: dict[str, float] = {}  # infrastructure label -> ts
        # fed the positioned beacons' adverts; its fits correct the engine's decisions
        # (use_calibration; off: measured, reported, not used). Inline, tick() fits;
        # else the caller fits off its loop and hands the fit to adopt_fit().
        self.calibrator = calibrator
        self.fit_inline = fit_inline
        self.use_calibration = use_calibration
        self.counters = PipelineCounters()
        self._next_tick = float("-inf")

    def feed(self, a: Advert) -> list[ev.EventDraft]:
        c = self.counters
        c.adverts += 1
        out: list[ev.EventDraft] = []
        if a.ts >= self._next_tick:
            out += self.tick(a.ts)
        by = c.by_scanner
        if a.scanner in self.settings.scanner_zone:
            by[a.scanner] = by.get(a.scanner, 0) + 1
        else:
            c.unknown_scanner += 1
            by[OTHER_SCANNER] = by.get(OTHER_SCANNER, 0) + 1
        if self.infrastructure and (a.manufacturer_data or a.service_data):
            beacon = self.infrastructure.classify(a.manufacturer_data, a.service_data)
            if beacon is not None:
                c.infrastructure[beacon.kind] = c.infrastructure.get(beacon.kind, 0) + 1
                self.beacons_last_heard[beacon.label] = a.ts
                if self.calibrator is not None and beacon.position is not None:
                    self.calibrator.observe(a.scanner, beacon.label, a.rssi, a.ts)
                return out
        out += self.footfall.observe(a.address, a.scanner, a.rssi, a.ts)  # anonymously
        eddy = a.service_data.get(EDDYSTONE_UUID)
        frame = decode_eddystone(eddy) if eddy is not None else None
        if isinstance(frame, EddystoneEid):
            customer = self.resolver.resolve(frame.eid)
            if customer is not None:
                c.resolved += 1
                seen = self.engine.observe(customer, a.scanner, a.rssi, a.ts)
                if seen:
                    c.count_visits(seen)
                    out += seen
                return out
            c.unresolved_eid += 1
        c.anonymous += 1
        return out

    def tick(self, now: float) -> list[ev.EventDraft]:
        """Roll EIDs over, close visits that timed out, emit the aggregates that are due;
        call at least every second (``feed`` does it too, from the adverts' time)."""
        self._next_tick = now + TICK_S
        self.resolver.advance(now)
        out = self.engine.tick(now)
        self.counters.count_visits(out)
        out += self.footfall.flush(now)
        out += self.footfall.occupancy(now, self.engine.present())
        if self.calibrator is not None and self.fit_inline:
            fit = self.calibrator.tick(now)  # re-fits every interval_s, O(pairs)
            if fit is not None:
                self._correct(fit)
        return out

    def adopt_fit(self, fit: CalibrationFit, censored: int = 0) -> None:
        """A fit made off the loop from ``calibrator.prepare``: kept and used."""
        if self.calibrator is not None:
            self._correct(self.calibrator.adopt(fit, censored))

    def _correct(self, fit: CalibrationFit) -> None:
        """The engine decides with the newest usable fit. One that disagrees with the
        recent ones (a beacon moved, a scanner knocked) is reported, not used: the
        previous correction stays until the fits agree again."""
        if not self.use_calibration or self.calibrator is None or fit.disagrees:
            return
        self.engine.use(derive(fit, self.calibrator.scanners, self.settings.scanner_zone))

    def close(self, now: float) -> list[ev.EventDraft]:
        """Shutting down: every open visit ends at its last evidence, and the current
        footfall period and occupancy interval are counted as they stand."""
        present = self.engine.present()
        out = self.footfall.close(now, present)
        closed = self.engine.close_all()
        self.counters.count_visits(closed)
        return out + closed

    def check_in(self, customer: str, zone: str, ts: float, *,
                 hold_s: float) -> list[ev.EventDraft]:
        """A consenting customer scanned a zone poster (the caller checked the poster and
        the consent): visit events at once, as :meth:`PresenceEngine.check_in`."""
        out = self.engine.check_in(customer, zone, ts, hold_s=hold_s)
        self.counters.count_visits(out)
        return out

    # --- consent -------------------------------------------------------------------

    def enroll(self, identities: Iterable[Identity], now: float) -> int:
        """Add or replace identities (consent given or key rotated)."""
        n = 0
        for identity in identities:
            self.resolver.enroll(identity, now)  # replaces an enrolled one
            n += 1
        return n

    def withdraw(self, customers: Iterable[str]) -> int:
        """Consent withdrawn or erasure: forget the keys and every bit of tracking state;
        an open visit ends without an event (nothing more is said about them)."""
        n = 0
        for customer in customers:
            self.resolver.remove(customer)
            self.engine.forget(customer)
            n += 1
        return n
