"""The simulated store as a live source: simulated shoppers' adverts in real time.

For the demo (a box without radios still shows visits) and for trying settings. The
simulated app users are enrolled as consenting customers, as central would do. Each
run lasts ``hour_s``; the next starts with a new seed. The wall clock and the loop's
waits live here; the simulation itself (``sim/store.py``) stays pure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from storegate.adapters.plumbing import sleep_until_stopped
from storegate.core.ble.capture import Advert
from storegate.core.ble.eid import Identity
from storegate.core.personal.registry import (
    Consent,
    Consents,
    CustomerRecord,
    PickupOrder,
    Profile,
)
from storegate.sim.store import Simulation, adverts, build


@dataclass(frozen=True, slots=True)
class SimSourceStatus:
    """The simulator as an advert source, as the status file shows it."""

    kind: Literal["simulator"] = field(default="simulator", init=False)
    state: str  # always "running"
    runs: int  # simulated hours completed
    adverts_total: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SimSourceStatus:
        """Parsed back from the status file; a missing key takes its empty value."""
        return cls(state=str(d.get("state", "")), runs=int(d.get("runs", 0)),
                   adverts_total=int(d.get("adverts_total", 0)))


class SimulatedStore:
    def __init__(self, *, on_advert: Callable[[Advert], None],
                 enroll: Callable[[list[Identity], float], None],
                 app_users: int, other_devices: int, passers_by: int, hour_s: float,
                 seed: int, wall_clock: Callable[[], float] = time.time,
                 beacons: list[tuple[str, dict[int, bytes]]] | None = None) -> None:
        self.name = "simulator"
        self._on_advert = on_advert
        self._enroll = enroll
        self._shape = {"app_users": app_users, "other_devices": other_devices,
                       "passers_by": passers_by, "duration_s": hour_s}
        self._seed = seed
        self._wall = wall_clock
        self.runs = 0
        self.adverts_total = 0
        self._beacons = beacons or []  # (scanner, manufacturer data): fixed zone beacons
        self._next_beacon = 0.0

    def simulation(self, start: float) -> Simulation:
        return build(self._seed + self.runs, start=start, **self._shape)  # type: ignore[arg-type]

    async def run(self, stop: asyncio.Event) -> None:
        if not any(self._shape[k] for k in ("app_users", "other_devices", "passers_by")):
            return  # an empty store: nothing to simulate
        while not stop.is_set():
            # The first run starts a quarter of the way in, so the store is not empty
            # when the demo starts; what would have been heard before now is skipped.
            now = self._wall()
            sim = self.simulation(now - (self._shape["duration_s"] / 4 if not self.runs else 0))
            self._enroll(sim.identities(), sim.start)
            skipped = 0
            for a in adverts(sim, seed=self._seed + self.runs):
                if stop.is_set():
                    return
                if a.ts < now:
                    skipped += 1
                    if skipped % 5000 == 0:
                        await asyncio.sleep(0)  # fast-forwarding: let the loop breathe
                    continue
                lag = a.ts - self._wall()
                if lag > 0.02 and await sleep_until_stopped(stop, lag):
                    return
                self.adverts_total += 1
                self._on_advert(dataclasses.replace(a, ts=max(a.ts, self._wall() - 1)))
                if self._beacons and a.ts >= self._next_beacon:  # zone beacons, 1 Hz
                    self._next_beacon = a.ts + 1.0
                    for n, (scanner, data) in enumerate(self._beacons):
                        self._on_advert(Advert(a.ts, scanner, f"AC:23:3F:00:00:{n:02X}",
                                               -55, manufacturer_data=data))
            self.runs += 1

    def status(self) -> SimSourceStatus:
        return SimSourceStatus(state="running", runs=self.runs,
                               adverts_total=self.adverts_total)


# --- the simulated app users as central would send them ---------------------------

_DEMO_TIERS = ("bronze", "silver", "gold")
_DEMO_SEGMENTS = ("breakfast", "families", "fashion", "students", "gourmet")
_DEMO_PREFERENCES = ("dairy", "organic", "bakery", "pastry", "outerwear", "coffee")


def demo_records(identities: list[Identity], now: float) -> list[CustomerRecord]:
    """Registry records for the simulated app users (the demo's stand-in for central's
    customers command): presence, marketing and staff_view granted, a tier, segments,
    preferences, past visits, for some a birthday this month or an order ready for
    pickup, so the demo's campaigns (firmware-configs/campaigns/demo.toml) have
    something to decide. Stable per customer (a hash of the pseudonym), never
    persisted, like the simulator's identities."""
    return [demo_record(ident.customer, now) for ident in identities]


def demo_record(customer: str, now: float, version: int = 1) -> CustomerRecord:
    """One simulated app user's record (see :func:`demo_records`); ``storegate demo``
    enrols the same user in central from it (consents with proof, the CRM's fields,
    the pickup order), and central sends the store its own versions."""
    month = time.gmtime(now).tm_mon
    consent = Consent(granted=True, at=now, source="app")
    h = hashlib.sha256(b"storegate demo customer\x00" + customer.encode()).digest()
    return CustomerRecord(
        customer=customer, version=version,
        consents=Consents(presence=consent, marketing=consent, staff_view=consent),
        profile=Profile(
            greeting_name=f"Shopper {h[0]:03d}", tier=_DEMO_TIERS[h[1] % 3],
            segments=sorted({_DEMO_SEGMENTS[h[2] % 5], _DEMO_SEGMENTS[h[3] % 5]}),
            preferences=sorted({_DEMO_PREFERENCES[h[4] % 6],
                                _DEMO_PREFERENCES[h[5] % 6]}),
            favourite_categories=[_DEMO_PREFERENCES[h[6] % 6]],
            birthday_month=month if h[7] % 6 == 0 else (h[7] % 12) + 1,
            store_visits=h[8] % 20),
        pickup_orders=[PickupOrder(order_id=f"WEB-{h[9:13].hex()}", state="ready",
                                   items=1 + h[13] % 5)] if h[14] % 5 == 0 else [])
