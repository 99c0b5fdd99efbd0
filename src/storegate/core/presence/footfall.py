"""Anonymous footfall: distinct devices per zone and period, without identities.

Every advert's address is replaced at once by a keyed hash (BLAKE2b, 8 bytes) under a
key derived from the gateway's secret and the UTC date, so hashes cannot be linked from
one day to the next, nor reversed without the secret. Only the hashes of the current
period are held, with a hit count; at the end of the period they are turned into counts
and dropped. A device counts in a zone once it was heard there ``min_samples`` times
above the inside threshold (single samples are too noisy; the pavement stays out).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from hashlib import blake2b

from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.presence.settings import PresenceSettings

PERIOD_S = 300.0
OCCUPANCY_S = 60.0


class Footfall:
    def __init__(self, settings: PresenceSettings, secret: bytes, period_s: float = PERIOD_S,
                 subject: str = "footfall", occupancy_s: float = OCCUPANCY_S) -> None:
        if len(secret) < 16:
            raise ValueError("the footfall secret needs at least 16 bytes")
        self.settings = settings
        self._secret = secret
        self._period_s = period_s
        self._subject = subject
        self._period: int | None = None
        self._day_index = -1
        self._day_key = b""
        self._period_end = -math.inf
        self._zone_hits: dict[tuple[str, bytes], int] = {}
        self._occupancy_s = occupancy_s
        self._interval: int | None = None
        self._recent: dict[tuple[str, bytes], int] = {}  # this occupancy interval

    def day_key(self, ts: float) -> bytes:
        """The hash key of the UTC day of ``ts``: yesterday's hashes do not link."""
        day_index = int(ts // 86400)
        if day_index != self._day_index:
            self._day_index = day_index
            day = datetime.fromtimestamp(day_index * 86400, UTC).strftime("%Y-%m-%d")
            self._day_key = blake2b(day.encode(), key=self._secret[:64],
                                            digest_size=32, person=b"sg-footfall").digest()
        return self._day_key

    def observe(self, address: str, scanner: str, rssi: int, ts: float) -> list[ev.EventDraft]:
        out = self.flush(ts) if ts >= self._period_end else []
        if self._period is None:
            self._period = math.floor(ts / self._period_s)
            self._period_end = (self._period + 1) * self._period_s
        if rssi < self.settings.inside_min_rssi_dbm:
            return out
        zone = self.settings.scanner_zone.get(scanner)
        if zone is None:
            return out
        key = (zone, blake2b(address.encode(), key=self.day_key(ts), digest_size=8).digest())
        self._zone_hits[key] = self._zone_hits.get(key, 0) + 1
        self._recent[key] = self._recent.get(key, 0) + 1
        if self._interval is None:
            self._interval = math.floor(ts / self._occupancy_s)
        return out

    def occupancy(self, now: float, customers: dict[str | None, int]) -> list[ev.EventDraft]:
        """Occupancy of the interval that ended before ``now`` (zone + store events);
        ``customers`` is the engine's count of open visits per zone (None: the store)."""
        if self._interval is None:
            self._interval = math.floor(now / self._occupancy_s)
            return []
        if math.floor(now / self._occupancy_s) <= self._interval:
            return []  # time only moves forward: a late clock never re-emits a period
        start = self._interval * self._occupancy_s
        end = start + self._occupancy_s
        counts = self._count(self._recent)
        self._recent = {}
        self._interval = math.floor(now / self._occupancy_s)
        return [
            ev.EventDraft(ev.OCCUPANCY_MEASURED, f"occupancy/{zone or 'store'}", end,
                          p.OccupancyMeasured(
                period_start=ev.rfc3339(start), period_end=ev.rfc3339(end), zone=zone,
                devices=n, customers=customers.get(zone, 0)))
            for zone, n in counts
        ]

    def _count(self, hits_by_key: dict[tuple[str, bytes], int]) -> list[tuple[str | None, int]]:
        """(None, store devices), then (zone, devices) for every zone, in config order."""
        k = self.settings.min_samples
        per_zone = {z.id: 0 for z in self.settings.zones}
        store_hits: dict[bytes, int] = {}
        for (zone, h), hits in hits_by_key.items():
            store_hits[h] = store_hits.get(h, 0) + hits
            if hits >= k:
                per_zone[zone] += 1
        return [(None, sum(1 for hits in store_hits.values() if hits >= k)),
                *per_zone.items()]

    def flush(self, now: float) -> list[ev.EventDraft]:
        """Counts of the period that ended before ``now`` (one event per zone + store)."""
        if self._period is None or math.floor(now / self._period_s) <= self._period:
            return []  # time only moves forward: a late clock never re-emits a period
        start = self._period * self._period_s
        end = start + self._period_s
        counts = self._count(self._zone_hits)
        self._zone_hits.clear()
        self._period = math.floor(now / self._period_s)
        self._period_end = (self._period + 1) * self._period_s
        return [
            ev.EventDraft(ev.FOOTFALL_COUNTED, f"{self._subject}/{zone or 'store'}", end,
                          p.FootfallCounted(
                period_start=ev.rfc3339(start), period_end=ev.rfc3339(end), zone=zone,
                devices=n))
            for zone, n in counts
        ]

    def close(self, now: float, customers: dict[str | None, int]) -> list[ev.EventDraft]:
        """Shutting down: the current period and interval, counted as they stand, end at
        ``now`` (their events say so: ``period_end`` is ``now``)."""
        out: list[ev.EventDraft] = []
        if self._period is not None and self._zone_hits:
            start = self._period * self._period_s
            out += [ev.EventDraft(ev.FOOTFALL_COUNTED, f"{self._subject}/{zone or 'store'}",
                                  now, p.FootfallCounted(
                                      period_start=ev.rfc3339(start),
                                      period_end=ev.rfc3339(max(now, start)), zone=zone,
                                      devices=n))
                    for zone, n in self._count(self._zone_hits)]
        if self._interval is not None and self._recent:
            start = self._interval * self._occupancy_s
            out += [ev.EventDraft(ev.OCCUPANCY_MEASURED, f"occupancy/{zone or 'store'}", now,
                                  p.OccupancyMeasured(
                                      period_start=ev.rfc3339(start),
                                      period_end=ev.rfc3339(max(now, start)), zone=zone,
                                      devices=n, customers=customers.get(zone, 0)))
                    for zone, n in self._count(self._recent)]
        self._zone_hits.clear()
        self._recent = {}
        self._period = self._interval = None
        return out
