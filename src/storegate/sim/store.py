"""A simulated store: shoppers with the app walking through zones, passers-by on the
pavement and phones without the app, heard by scanners through a noisy radio.

Deterministic for a seed, with ground truth, for the demo, the tests and the accuracy
benchmark. Radio: log-distance path loss ``RSSI = P1m - 10 n log10(d)`` plus Gaussian
noise, packet loss and occasional deep fades.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from storegate.core.ble.capture import Advert
from storegate.core.ble.decoders import EDDYSTONE_UUID
from storegate.core.ble.eid import Identity, compute_eid
from storegate.core.presence.settings import PresenceSettings, Zone


@dataclass(frozen=True, slots=True)
class SimZone:
    id: str
    x0: float
    y0: float
    x1: float
    y1: float
    min_rssi_dbm: float = -80.0
    entrance: bool = False  # a door zone: passed through, never a zone visit
    front: bool = False  # along the shop window (its scanner hears the pavement)

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1


# A 30 x 20 m store: the entrance at the bottom left, the checkout at the bottom right.
DEMO_ZONES: tuple[SimZone, ...] = (
    SimZone("entrance", 0, 0, 10, 6, entrance=True),
    SimZone("produce", 0, 6, 10, 20),
    SimZone("bakery", 10, 12, 20, 20),
    SimZone("dairy", 20, 12, 30, 20),
    SimZone("household", 10, 6, 20, 12),
    SimZone("clothing", 20, 6, 30, 12),
    SimZone("checkout", 10, 0, 30, 6, min_rssi_dbm=-75.0, front=True),
)


class Fading(Protocol):
    @property
    def fade_rate_per_s(self) -> float: ...
    @property
    def fade_db(self) -> tuple[float, float]: ...
    @property
    def fade_s(self) -> tuple[float, float]: ...


def fade_depth(fades: dict[tuple[str, str], tuple[float, float]], link: tuple[str, str],
               t: float, step: float, *, radio: Fading, rng: random.Random) -> float:
    """dB a link loses at ``t`` to a deep fade: one starts at ``fade_rate_per_s`` and
    lasts ``fade_s`` (``fades`` holds each link's until and depth)."""
    until, depth = fades.get(link, (0.0, 0.0))
    if t >= until and rng.random() < radio.fade_rate_per_s * step:
        until, depth = t + rng.uniform(*radio.fade_s), rng.uniform(*radio.fade_db)
        fades[link] = (until, depth)
    return depth if t < until else 0.0


@dataclass(frozen=True, slots=True)
class Radio:
    p1m_dbm: float = -59.0
    path_loss_n: float = 2.7
    noise_db: float = 4.0
    loss: float = 0.2  # packets lost
    fade_rate_per_s: float = 0.01  # chance per second that a link starts a deep fade
    fade_db: tuple[float, float] = (10.0, 20.0)
    fade_s: tuple[float, float] = (2.0, 6.0)
    sensitivity_dbm: float = -95.0
    advert_interval_s: float = 0.5


@dataclass(slots=True)
class Interval:
    zone: str | None  # None: the store visit
    start: float
    end: float


@dataclass(slots=True)
class Person:
    id: str
    address: str
    identity: Identity | None  # None: no app (anonymous)
    path: list[tuple[float, float, float]]  # (t, x, y) waypoints, linear in between
    passer_by: bool = False
    truth: list[Interval] = field(default_factory=list)

    def position(self, t: float) -> tuple[float, float] | None:
        if t < self.path[0][0] or t > self.path[-1][0]:
            return None
        for (t0, x0, y0), (t1, x1, y1) in zip(self.path, self.path[1:], strict=False):
            if t0 <= t <= t1:
                f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
                return (x0 + (x1 - x0) * f, y0 + (y1 - y0) * f)
        return None


@dataclass(slots=True)
class Simulation:
    zones: tuple[SimZone, ...]
    scanners: dict[str, tuple[float, float]]  # name -> position
    scanner_zone: dict[str, str]
    people: list[Person]
    start: float
    end: float
    radio: Radio

    def settings(self) -> PresenceSettings:
        return PresenceSettings(zones=tuple(
            Zone(z.id, tuple(s for s, zz in self.scanner_zone.items() if zz == z.id),
                 z.min_rssi_dbm, entrance=z.entrance, front=z.front) for z in self.zones))

    def identities(self) -> list[Identity]:
        return [p.identity for p in self.people if p.identity is not None]


def _rand_address(rng: random.Random) -> str:
    b = [rng.randrange(256) for _ in range(6)]
    b[0] |= 0x40  # random resolvable/non-resolvable, as phones use
    return ":".join(f"{x:02X}" for x in b)


def build(seed: int = 1, *, duration_s: float = 3600.0, app_users: int = 30,
          passers_by: int = 20, other_devices: int = 40, start: float = 1_795_000_000.0,
          radio: Radio | None = None, zones: tuple[SimZone, ...] = DEMO_ZONES) -> Simulation:
    """A store hour: app users shopping, passers-by outside, phones without the app."""
    rng = random.Random(seed)
    scanners: dict[str, tuple[float, float]] = {}
    for z in zones:  # one scanner per zone, two along a zone longer than 12 m
        cx, cy = z.centre
        if z.x1 - z.x0 > 12:
            q = (z.x1 - z.x0) / 4
            scanners[f"sc-{z.id}-1"], scanners[f"sc-{z.id}-2"] = (cx - q, cy), (cx + q, cy)
        else:
            scanners[f"sc-{z.id}"] = (cx, cy)
    scanner_zone = {name: next(z.id for z in zones if z.contains(*pos))
                    for name, pos in scanners.items()}
    by_id = {z.id: z for z in zones}
    inner = [z for z in zones if z.id not in ("entrance", "checkout")]
    people: list[Person] = []

    def shopper(pid: str, identity: Identity | None) -> Person:
        t = start + rng.uniform(0, duration_s * 0.7)
        path = [(t, -3.0, 3.0)]  # from the street
        truth: list[Interval] = []
        store_start = None
        stops = [by_id["entrance"], *rng.sample(inner, rng.randint(2, 4)), by_id["checkout"]]
        x, y = -3.0, 3.0
        for z in stops:
            cx, cy = z.centre  # shoppers stop at the shelves around the zone's scanner
            tx = cx + rng.uniform(-0.3, 0.3) * (z.x1 - z.x0)
            ty = cy + rng.uniform(-0.3, 0.3) * (z.y1 - z.y0)
            t += math.hypot(tx - x, ty - y) / 1.0  # walk at 1 m/s
            path.append((t, tx, ty))
            if store_start is None:
                store_start = t - math.hypot(tx, ty - 3.0)  # crossed the door at x = 0
            dwell = rng.uniform(40, 240) if z.id != "entrance" else rng.uniform(5, 15)
            if not z.entrance:  # a door zone is passed through (a basket), not visited
                truth.append(Interval(z.id, t, t + dwell))
            t += dwell
            path.append((t, tx, ty))
            x, y = tx, ty
        t += math.hypot(x + 3.0, y - 3.0)
        path.append((t, -3.0, 3.0))
        truth.insert(0, Interval(None, store_start or path[0][0], t - 3.0))
        return Person(pid, _rand_address(rng), identity, path, truth=truth)

    for i in range(app_users):
        ik = bytes(rng.randrange(256) for _ in range(16))
        ident = Identity(f"cust-{i:04d}", ik, rng.choice((8, 9, 10)),
                         rng.randrange(1 << 20), start - rng.uniform(0, 86400 * 30))
        people.append(shopper(f"cust-{i:04d}", ident))
    for i in range(passers_by):  # with the app, walking past the window, outside
        ik = bytes(rng.randrange(256) for _ in range(16))
        ident = Identity(f"pass-{i:04d}", ik, 10, rng.randrange(1 << 20), start - 3600)
        t = start + rng.uniform(0, duration_s - 60)
        y = rng.uniform(-9.0, -5.0)  # 5-9 m outside the front wall
        path = [(t, -15.0, y), (t + 30.0, 15.0, y)]
        people.append(Person(f"pass-{i:04d}", _rand_address(rng), ident, path, passer_by=True))
    for i in range(other_devices):  # shoppers without the app
        people.append(shopper(f"anon-{i:04d}", None))
    end = max(p.path[-1][0] for p in people) + 30
    return Simulation(zones, scanners, scanner_zone, people, start, end, radio or Radio())


def adverts(sim: Simulation, seed: int = 2) -> Iterator[Advert]:
    """Every advert every scanner hears, in time order."""
    rng = random.Random(seed)
    r = sim.radio
    fades: dict[tuple[str, str], tuple[float, float]] = {}  # link -> (until, depth)
    eid_cache: dict[tuple[str, int], bytes] = {}
    t = sim.start
    step = r.advert_interval_s
    while t <= sim.end:
        for person in sim.people:
            pos = person.position(t)
            if pos is None:
                continue
            payload: dict[str, bytes] = {}
            if person.identity is not None:
                ident = person.identity
                bt = ident.beacon_time(t)
                q = bt >> ident.rotation_exponent
                key = (person.id, q)
                if key not in eid_cache:
                    eid_cache[key] = compute_eid(ident.identity_key, ident.rotation_exponent,
                                                 bt)
                payload = {EDDYSTONE_UUID: b"\x30\xf4" + eid_cache[key]}
            for scanner, (sx, sy) in sim.scanners.items():
                d = max(math.hypot(pos[0] - sx, pos[1] - sy), 0.5)
                rssi = r.p1m_dbm - 10 * r.path_loss_n * math.log10(d) + rng.gauss(0, r.noise_db)
                rssi -= fade_depth(fades, (person.id, scanner), t, step, radio=r, rng=rng)
                if rssi < r.sensitivity_dbm or rng.random() < r.loss:
                    continue
                yield Advert(ts=round(t + rng.uniform(0, 0.05), 4), scanner=scanner,
                             address=person.address, rssi=round(rssi),
                             service_data=dict(payload))
        t += step
