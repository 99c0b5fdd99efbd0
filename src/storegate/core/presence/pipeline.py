"""The presence pipeline: adverts in, visit events out (pure; time from the adverts).

decode -> resolve (Eddystone-EID of consenting customers) -> presence engine. Everything
unresolved is anonymous: counted, never tracked as a person, never published as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from storegate.core import events as ev
from storegate.core.ble.capture import Advert
from storegate.core.ble.decoders import EDDYSTONE_UUID, EddystoneEid, decode_eddystone
from storegate.core.ble.eid import EidResolver
from storegate.core.presence.engine import PresenceEngine
from storegate.core.presence.footfall import Footfall
from storegate.core.presence.settings import PresenceSettings

TICK_S = 1.0


@dataclass(slots=True)
class PipelineCounters:
    adverts: int = 0
    resolved: int = 0  # adverts of consenting customers
    unresolved_eid: int = 0  # EID frames of nobody enrolled here
    anonymous: int = 0  # everything else


class PresencePipeline:
    def __init__(self, settings: PresenceSettings, resolver: EidResolver,
                 rand: Callable[[int], bytes], footfall_secret: bytes | None = None) -> None:
        self.resolver = resolver
        self.engine = PresenceEngine(settings, rand)
        self.footfall = Footfall(settings, footfall_secret or rand(32))
        self.counters = PipelineCounters()
        self._next_tick = float("-inf")

    def feed(self, a: Advert) -> list[ev.EventDraft]:
        c = self.counters
        c.adverts += 1
        out: list[ev.EventDraft] = []
        if a.ts >= self._next_tick:
            out += self.tick(a.ts)
        out += self.footfall.observe(a.address, a.scanner, a.rssi, a.ts)  # everyone, anonymously
        eddy = a.service_data.get(EDDYSTONE_UUID)
        frame = decode_eddystone(eddy) if eddy is not None else None
        if isinstance(frame, EddystoneEid):
            customer = self.resolver.resolve(frame.eid)
            if customer is not None:
                c.resolved += 1
                out += self.engine.observe(customer, a.scanner, a.rssi, a.ts)
                return out
            c.unresolved_eid += 1
        c.anonymous += 1
        return out

    def tick(self, now: float) -> list[ev.EventDraft]:
        """Roll EIDs over and close visits that timed out; call at least every second."""
        self._next_tick = now + TICK_S
        self.resolver.advance(now)
        return self.engine.tick(now) + self.footfall.flush(now)
