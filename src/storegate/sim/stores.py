"""A family of simulated stores: every seed a different shop, none the engine was tuned on.

``sim/store.py`` is one store with the propagation the engine was tuned for. Here a seed
draws a whole store: its floor plan (5-12 zones, 1-3 checkouts, one or two doors on the
shop front), where its scanners and zone beacons hang, and its radio (path-loss
exponent 2.0-3.5, a receive offset per scanner of +-6 dB, a transmit power spread of
+-6 dB between phones, shadowing sigma 2-6 dB, deep fades, a shop front of 0-6 dB). Its
people: shoppers with and without the app, passers-by walking along the shop front 1-4 m
from the door, people lingering outside it, shoppers whose phones stay audible from the
pavement after they leave, and staff badges that are there all day.

What a store's gateway would be configured with is the :class:`FloorPlan` (zones,
scanner and beacon positions in metres); what only the simulator knows (the true
exponent, offsets and powers) is the :class:`StoreRadio`, kept apart so calibration can
be scored against it. People and their ground truth are a :class:`~storegate.sim.store.
Simulation`, so ``sim/accuracy.py`` scores a family store as it scores the demo store.

Pure: seeded ``random``, no clock, no I/O.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from storegate.core.ble.capture import Advert
from storegate.core.ble.decoders import APPLE, EDDYSTONE_UUID
from storegate.core.ble.eid import Identity, compute_eid
from storegate.core.presence.calibration import Calibrator
from storegate.core.presence.infrastructure import Beacon
from storegate.core.presence.settings import PresenceSettings, Zone
from storegate.sim.store import Interval, Person, Radio, Simulation, SimZone, fade_depth

START: Final = 1_795_000_000.0
PHONE_P1M_DBM: Final = -59.0  # a typical phone's RSSI at 1 m; each phone is off by +-6 dB
BEACON_MEASURED_POWER_DBM: Final = -59  # what the zone beacons' frames claim at 1 m
# The store's own beacons (iBeacon): zone beacons major 100, staff badges major 200.
INFRA_UUID: Final = "5f2d0c1e-8a4b-4c3d-9e7f-0a1b2c3d4e5f"
ZONE_MAJOR: Final = 100
STAFF_MAJOR: Final = 200
INNER_NAMES: Final = ("produce", "bakery", "dairy", "household", "clothing", "frozen",
                      "drinks", "snacks", "beauty", "toys", "garden", "electronics",
                      "pharmacy", "deli", "books", "sport")
MIN_ZONE_WIDTH_M: Final = 4.0
# Ranges of a store's radio (the family); tests check the generator keeps them.
PATH_LOSS_N: Final = (2.0, 3.5)
SCANNER_OFFSET_DB: Final = 6.0  # +-
PHONE_TX_SPREAD_DB: Final = 6.0  # +-
NOISE_DB: Final = (2.0, 6.0)
BEACON_P1M_SPREAD_DB: Final = 4.0  # +- around the power the frame claims
FRONT_WALL_DB: Final = (0.0, 6.0)  # clear glass to coated glass
PAVEMENT_M: Final = (1.0, 4.0)  # how far from the shop front people walk by
# Person ids: sim/accuracy.py takes ids starting "pass" for passers-by (they must never
# become store visits); those standing outside the door are a kind of them.
PASSER_BY: Final = "pass-"
LINGERER: Final = "pass-linger-"


# --- what the store's config says (the gateway knows this) ---------------------------


@dataclass(frozen=True, slots=True)
class PlanScanner:
    name: str
    zone: str
    x_m: float
    y_m: float
    entrance: bool  # hangs by a door


@dataclass(frozen=True, slots=True)
class PlanBeacon:
    """A fixed zone beacon: an iBeacon at a known place, heard by every scanner."""

    label: str
    zone: str
    x_m: float
    y_m: float
    major: int
    minor: int
    measured_power_dbm: int  # what its frame claims at 1 m (the true value differs)


@dataclass(frozen=True, slots=True)
class Door:
    x_m: float  # on the shop front, y = 0; the street is y < 0
    zone: str  # the entrance zone behind it


@dataclass(frozen=True, slots=True)
class FloorPlan:
    """A store's floor plan in metres: x along the shop front, y into the store (the
    front wall is y = 0, the pavement y < 0). Zones are rectangles tiling the floor."""

    width_m: float
    depth_m: float
    zones: tuple[SimZone, ...]
    doors: tuple[Door, ...]
    scanners: tuple[PlanScanner, ...]
    beacons: tuple[PlanBeacon, ...]

    @property
    def entrances(self) -> tuple[str, ...]:
        return tuple(d.zone for d in self.doors)

    @property
    def checkouts(self) -> tuple[str, ...]:
        return tuple(z.id for z in self.zones if z.id.startswith("checkout"))

    def zone_at(self, x: float, y: float) -> str | None:
        return next((z.id for z in self.zones if z.contains(x, y)), None)

    def settings(self) -> PresenceSettings:
        """The gateway's presence settings: the zones and their scanners, every timing
        and threshold at its default; the door zones flagged as entrances and the other
        zones along the shop front as front zones, as a store's config says which of its
        zones is the entrance and which face the street."""
        return PresenceSettings(zones=tuple(
            Zone(z.id, tuple(s.name for s in self.scanners if s.zone == z.id),
                 entrance=z.id in self.entrances,
                 front=z.y0 == 0.0 and z.id not in self.entrances)
            for z in self.zones))

    def infrastructure(self) -> tuple[Beacon, ...]:
        """The store's beacons.toml: each zone beacon (with its place on the plan), and
        one rule for every badge."""
        return (*(Beacon(b.label, "zone", b.zone, INFRA_UUID, b.major, b.minor,
                         position=(b.x_m, b.y_m))
                  for b in self.beacons),
                Beacon("staff-badges", "staff", None, INFRA_UUID, STAFF_MAJOR))

    def calibrator(self, interval_s: float = 30.0) -> Calibrator:
        """Self-calibration as the store's config would set it up: every scanner and
        zone beacon at its place on the plan, the defaults of ``[calibration]``."""
        return Calibrator({s.name: (s.x_m, s.y_m) for s in self.scanners},
                          {b.label: (b.x_m, b.y_m) for b in self.beacons},
                          all_scanners=[s.name for s in self.scanners], interval_s=interval_s)

    def distance_m(self, scanner: str, beacon: str) -> float:
        """Scanner-to-beacon distance on the plan (what calibration fits against)."""
        s = next(x for x in self.scanners if x.name == scanner)
        b = next(x for x in self.beacons if x.label == beacon)
        return math.hypot(s.x_m - b.x_m, s.y_m - b.y_m)


# --- what only the simulator knows ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreRadio:
    """The store's true propagation. Scanner ``s`` hears an emitter ``e`` (a phone, a
    badge, a zone beacon) at distance ``d`` metres on the plan with

        RSSI = P1m(e) + scanner_offset_db[s] - 10 * path_loss_n * log10(max(d, 0.5))
               - front_wall_db (if e is on the pavement) + N(0, noise_db) - fade

    rounded to a whole dBm, lost with probability ``loss`` and unheard below
    ``sensitivity_dbm``. P1m(e) is ``beacon_p1m_dbm[label]`` for a zone beacon,
    ``phone_p1m_dbm`` plus the phone's own offset for a phone, ``phone_p1m_dbm`` for a
    badge. Note for scoring a calibration: adding c to every scanner offset and taking c
    from every beacon power changes nothing a scanner hears, so offsets are only
    identifiable relative to each other (or to a beacon whose power is trusted)."""

    path_loss_n: float
    noise_db: float  # shadowing sigma per sample
    loss: float  # share of packets lost
    fade_rate_per_s: float  # chance per second that a link starts a deep fade
    front_wall_db: float  # extra loss to anyone on the pavement
    scanner_offset_db: dict[str, float]  # receive gain error per scanner
    beacon_p1m_dbm: dict[str, float]  # each zone beacon's true RSSI at 1 m
    phone_p1m_dbm: float = PHONE_P1M_DBM
    fade_db: tuple[float, float] = (10.0, 20.0)
    fade_s: tuple[float, float] = (2.0, 6.0)
    sensitivity_dbm: float = -95.0
    advert_interval_s: float = 0.5  # phones and badges
    beacon_interval_s: float = 1.0  # zone beacons


@dataclass(frozen=True, slots=True)
class StoreSize:
    """How much happens in one simulated store (per store, not per zone)."""

    duration_s: float = 1800.0
    app_shoppers: int = 24
    anonymous_shoppers: int = 10  # phones without the app: load, never scored
    passers_by: int = 16  # with the app, walking along the shop front
    lingerers: int = 4  # with the app, standing outside the door, never entering
    staff: int = 3  # badges, there for the whole simulation
    linger_after_share: float = 0.35  # shoppers who stay on the pavement after leaving


FULL: Final = StoreSize()
SMALL: Final = StoreSize(duration_s=600.0, app_shoppers=6, anonymous_shoppers=2, passers_by=4,
                         lingerers=2, staff=1)


@dataclass(frozen=True, slots=True)
class Badge:
    person: Person  # identity None; the path is the badge's
    minor: int


@dataclass(slots=True)
class FamilyStore:
    seed: int
    plan: FloorPlan
    radio: StoreRadio
    sim: Simulation  # people and their ground truth, as sim/accuracy.py scores them
    phone_tx_offset_db: dict[str, float]  # person id -> transmit power error
    badges: tuple[Badge, ...]
    pavement_after: set[str] = field(default_factory=set)  # shoppers who linger outside


# --- generation -----------------------------------------------------------------------


def _partition(rng: random.Random, total: float, k: int, least: float) -> list[float]:
    """``k`` random widths of at least ``least`` summing to ``total``."""
    weights = [rng.uniform(1.0, 2.0) for _ in range(k)]
    spare = total - k * least
    return [least + spare * w / sum(weights) for w in weights]


def _rand_address(rng: random.Random) -> str:
    b = [rng.randrange(256) for _ in range(6)]
    b[0] |= 0x40
    return ":".join(f"{x:02X}" for x in b)


def _inside(rng: random.Random, z: SimZone, share: float) -> tuple[float, float]:
    """A point in the middle ``share`` of a zone (shelves, not the boundary line)."""
    cx, cy = z.centre
    return (cx + rng.uniform(-share, share) / 2 * (z.x1 - z.x0),
            cy + rng.uniform(-share, share) / 2 * (z.y1 - z.y0))


def _layout(rng: random.Random) -> tuple[float, float, tuple[SimZone, ...], tuple[Door, ...]]:
    n_zones = rng.randint(5, 12)
    n_doors = rng.choice((1, 1, 2))
    n_checkouts = min(rng.randint(1, 3), n_zones - n_doors - 2)
    n_inner = n_zones - n_doors - n_checkouts
    rows = 1 if n_inner <= 3 else 2 if n_inner <= 7 else 3
    per_row = [n_inner // rows + (1 if r < n_inner % rows else 0) for r in range(rows)]
    least_width = max(18.0, 5.0 * max(per_row), 5.0 * (n_doors + n_checkouts))
    width = rng.uniform(least_width, max(least_width, 48.0))
    front = rng.uniform(5.0, 7.0)
    zones: list[SimZone] = []
    # the front strip: entrances at the ends, checkouts between them
    names = [f"checkout-{i + 1}" for i in range(n_checkouts)]
    if n_doors == 2:
        names = ["entrance-1", *names, "entrance-2"]
    elif rng.random() < 0.5:
        names = ["entrance-1", *names]
    else:
        names = [*names, "entrance-1"]
    doors: list[Door] = []
    x = 0.0
    for name, w in zip(names, _partition(rng, width, len(names), MIN_ZONE_WIDTH_M),
                       strict=True):
        zones.append(SimZone(name, x, 0.0, x + w, front))
        if name.startswith("entrance"):
            doors.append(Door(x + w / 2 + rng.uniform(-0.2, 0.2) * w, name))
        x += w
    inner = rng.sample(INNER_NAMES, n_inner)
    y = front
    for count in per_row:
        depth = rng.uniform(6.0, 10.0)
        x = 0.0
        for w in _partition(rng, width, count, MIN_ZONE_WIDTH_M):
            zones.append(SimZone(inner.pop(), x, y, x + w, y + depth))
            x += w
        y += depth
    return width, y, tuple(zones), tuple(doors)


def _plan(rng: random.Random) -> FloorPlan:
    width, depth, zones, doors = _layout(rng)
    scanners: list[PlanScanner] = []
    for z in zones:
        door = next((d for d in doors if d.zone == z.id), None)
        if door is not None:  # over the door, a little inside
            scanners.append(PlanScanner(f"sc-{z.id}", z.id, door.x_m + rng.uniform(-1.0, 1.0),
                                        rng.uniform(0.8, 2.5), entrance=True))
        elif z.x1 - z.x0 > 14.0:  # a long zone gets two
            q = (z.x1 - z.x0) / 4
            for i, dx in enumerate((-q, q)):
                cx, cy = z.centre
                scanners.append(PlanScanner(
                    f"sc-{z.id}-{i + 1}", z.id, cx + dx + rng.uniform(-0.1, 0.1) * q * 2,
                    cy + rng.uniform(-0.15, 0.15) * (z.y1 - z.y0), entrance=False))
        else:
            x, y = _inside(rng, z, 0.3)
            scanners.append(PlanScanner(f"sc-{z.id}", z.id, x, y, entrance=False))
    beacons = []
    for i, z in enumerate(zones):
        x, y = _inside(rng, z, 0.6)
        beacons.append(PlanBeacon(f"zone-{z.id}", z.id, x, y, ZONE_MAJOR, i + 1,
                                  BEACON_MEASURED_POWER_DBM))
    return FloorPlan(width, depth, zones, doors, tuple(scanners), tuple(beacons))


def _radio(rng: random.Random, plan: FloorPlan) -> StoreRadio:
    return StoreRadio(
        path_loss_n=rng.uniform(*PATH_LOSS_N),
        noise_db=rng.uniform(*NOISE_DB),
        loss=rng.uniform(0.1, 0.3),
        fade_rate_per_s=rng.uniform(0.005, 0.02),
        front_wall_db=rng.uniform(*FRONT_WALL_DB),
        scanner_offset_db={s.name: rng.uniform(-SCANNER_OFFSET_DB, SCANNER_OFFSET_DB)
                           for s in plan.scanners},
        beacon_p1m_dbm={b.label: b.measured_power_dbm
                        + rng.uniform(-BEACON_P1M_SPREAD_DB, BEACON_P1M_SPREAD_DB)
                        for b in plan.beacons})


class _Walk:
    """A path as (t, x, y) waypoints, walked at one speed."""

    def __init__(self, t: float, x: float, y: float, speed: float) -> None:
        self.path = [(t, x, y)]
        self.speed = speed

    @property
    def t(self) -> float:
        return self.path[-1][0]

    def to(self, x: float, y: float) -> float:
        t0, x0, y0 = self.path[-1]
        self.path.append((t0 + math.hypot(x - x0, y - y0) / self.speed, x, y))
        return self.t

    def stay(self, s: float) -> float:
        t0, x0, y0 = self.path[-1]
        self.path.append((t0 + s, x0, y0))
        return self.t


def _shopper(rng: random.Random, plan: FloorPlan, size: StoreSize, pid: str, *,
             identity: Identity | None, linger_after: bool) -> Person:
    inner = [z for z in plan.zones if not z.id.startswith(("entrance", "checkout"))]
    by_id = {z.id: z for z in plan.zones}
    door = rng.choice(plan.doors)
    side = rng.choice((-1.0, 1.0))
    pave = -rng.uniform(*PAVEMENT_M)
    w = _Walk(START + rng.uniform(0, size.duration_s * 0.6),
              door.x_m + side * rng.uniform(6.0, 15.0), pave, rng.uniform(0.9, 1.3))
    w.to(door.x_m, pave)
    store_start = w.to(door.x_m, 0.0)
    w.to(door.x_m + rng.uniform(-1.0, 1.0), rng.uniform(1.5, 3.0))  # through the entrance
    w.stay(rng.uniform(0.0, 4.0))  # a basket; walking through is not a zone visit
    truth: list[Interval] = []
    stops = rng.sample(inner, rng.randint(1, min(4, len(inner))))
    if rng.random() < 0.85:
        stops.append(by_id[rng.choice(plan.checkouts)])
    for z in stops:
        arrive = w.to(*_inside(rng, z, 0.7))
        dwell = rng.uniform(40, 150) if z.id.startswith("checkout") else rng.uniform(30, 240)
        w.stay(dwell / 2)  # browse: a step along the shelf, still in the zone
        w.to(*_inside(rng, z, 0.7))
        leave = w.stay(max(dwell - (w.t - arrive), 0.0))
        truth.append(Interval(z.id, arrive, leave))
    out = rng.choice(plan.doors)
    w.to(out.x_m + rng.uniform(-1.0, 1.0), rng.uniform(1.5, 3.0))
    store_end = w.to(out.x_m, 0.0)
    pave = -rng.uniform(*PAVEMENT_M)
    w.to(out.x_m, pave)
    side = rng.choice((-1.0, 1.0))
    if linger_after:  # a call, a bus, a friend: the phone is heard from the pavement
        w.to(out.x_m + side * rng.uniform(1.0, 6.0), pave)
        w.stay(rng.uniform(20.0, 150.0))
    w.to(out.x_m + side * rng.uniform(10.0, 20.0), pave)
    return Person(pid, _rand_address(rng), identity, w.path,
                  truth=[Interval(None, store_start, store_end), *truth])


def _identity(rng: random.Random, customer: str) -> Identity:
    return Identity(customer, bytes(rng.randrange(256) for _ in range(16)),
                    rng.choice((8, 9, 10)), rng.randrange(1 << 20),
                    START - rng.uniform(0, 86400 * 30))


def generate(seed: int, size: StoreSize = FULL) -> FamilyStore:
    """The store of ``seed``: its plan, its radio, its people and their ground truth."""
    rng = random.Random(seed)
    plan = _plan(rng)
    radio = _radio(rng, plan)
    people: list[Person] = []
    after: set[str] = set()
    for i in range(size.app_shoppers + size.anonymous_shoppers):
        app = i < size.app_shoppers
        pid = f"cust-{i:04d}" if app else f"anon-{i:04d}"
        linger = rng.random() < size.linger_after_share
        if linger:
            after.add(pid)
        people.append(_shopper(rng, plan, size, pid, linger_after=linger,
                               identity=_identity(rng, pid) if app else None))
    for i in range(size.passers_by):  # along the shop front; some stop at the window
        pid = f"{PASSER_BY}{i:04d}"
        side = rng.choice((-1.0, 1.0))
        pave = -rng.uniform(*PAVEMENT_M)
        x0 = plan.width_m / 2 - side * (plan.width_m / 2 + 15.0)
        w = _Walk(START + rng.uniform(0, size.duration_s - 60), x0, pave,
                  rng.uniform(1.0, 1.5))
        if rng.random() < 0.3:
            door = rng.choice(plan.doors)
            w.to(door.x_m + rng.uniform(-3.0, 3.0), pave)
            w.stay(rng.uniform(3.0, 15.0))
        w.to(plan.width_m / 2 + side * (plan.width_m / 2 + 15.0), pave)
        people.append(Person(pid, _rand_address(rng), _identity(rng, pid), w.path,
                             passer_by=True))
    for i in range(size.lingerers):  # waiting outside the door, never going in
        pid = f"{LINGERER}{i:04d}"
        door = rng.choice(plan.doors)
        side = rng.choice((-1.0, 1.0))
        pave = -rng.uniform(*PAVEMENT_M)
        w = _Walk(START + rng.uniform(0, size.duration_s * 0.7),
                  door.x_m + side * rng.uniform(10.0, 20.0), pave, rng.uniform(0.9, 1.3))
        w.to(door.x_m + rng.uniform(-4.0, 4.0), -rng.uniform(1.0, 3.0))
        w.stay(rng.uniform(60.0, 300.0))
        w.to(door.x_m - side * rng.uniform(10.0, 20.0), pave)
        people.append(Person(pid, _rand_address(rng), _identity(rng, pid), w.path,
                             passer_by=True))
    badges = []
    for i in range(size.staff):  # staff move between zones all day
        z = rng.choice(plan.zones)
        w = _Walk(START, *_inside(rng, z, 0.8), rng.uniform(0.8, 1.2))
        while w.t < START + size.duration_s + 120:
            w.stay(rng.uniform(60.0, 600.0))
            w.to(*_inside(rng, rng.choice(plan.zones), 0.8))
        badges.append(Badge(Person(f"badge-{i:02d}", _rand_address(rng), None, w.path),
                            i + 1))
    tx = {p.id: rng.uniform(-PHONE_TX_SPREAD_DB, PHONE_TX_SPREAD_DB) for p in people}
    end = max(p.path[-1][0] for p in people) + 30
    scanners = {s.name: (s.x_m, s.y_m) for s in plan.scanners}
    sim = Simulation(plan.zones, scanners, {s.name: s.zone for s in plan.scanners}, people,
                     START, end,
                     Radio(radio.phone_p1m_dbm, radio.path_loss_n, radio.noise_db, radio.loss,
                           radio.fade_rate_per_s, radio.fade_db, radio.fade_s,
                           radio.sensitivity_dbm, radio.advert_interval_s))
    return FamilyStore(seed, plan, radio, sim, tx, tuple(badges), after)


# --- the radio ------------------------------------------------------------------------


def _ibeacon(major: int, minor: int, power: int) -> dict[int, bytes]:
    return {APPLE: b"\x02\x15" + bytes.fromhex(INFRA_UUID.replace("-", ""))
            + major.to_bytes(2, "big") + minor.to_bytes(2, "big")
            + (power & 0xFF).to_bytes(1, "big")}


class _Track:
    """Where a person (or badge) is, by binary search over its waypoints."""

    __slots__ = ("path", "times")

    def __init__(self, path: list[tuple[float, float, float]]) -> None:
        self.path = path
        self.times = [p[0] for p in path]

    def at(self, t: float) -> tuple[float, float] | None:
        if t < self.times[0] or t > self.times[-1]:
            return None
        i = max(bisect.bisect_right(self.times, t) - 1, 0)
        if i >= len(self.path) - 1:
            return self.path[-1][1], self.path[-1][2]
        t0, x0, y0 = self.path[i]
        t1, x1, y1 = self.path[i + 1]
        f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
        return x0 + (x1 - x0) * f, y0 + (y1 - y0) * f


def adverts(store: FamilyStore, seed: int | None = None) -> Iterator[Advert]:
    """Every advert every scanner hears (phones, badges, zone beacons), in time order."""
    rng = random.Random(store.seed * 7919 + 1 if seed is None else seed)
    r = store.radio
    sim = store.sim
    scanners = [(s.name, s.x_m, s.y_m, r.scanner_offset_db[s.name]) for s in store.plan.scanners]
    fades: dict[tuple[str, str], tuple[float, float]] = {}  # link -> (until, depth)
    eids: dict[tuple[str, int], bytes] = {}
    # emitters: (id, address, track, 1 m power, identity, fixed payload)
    phones = [(p.id, p.address, _Track(p.path), r.phone_p1m_dbm + store.phone_tx_offset_db[p.id],
               p.identity) for p in sim.people]
    badges = [(b.person.id, b.person.address, _Track(b.person.path),
               r.phone_p1m_dbm, _ibeacon(STAFF_MAJOR, b.minor, BEACON_MEASURED_POWER_DBM))
              for b in store.badges]
    beacons = [(b.label, _rand_address(rng), (b.x_m, b.y_m), r.beacon_p1m_dbm[b.label],
                _ibeacon(b.major, b.minor, b.measured_power_dbm)) for b in store.plan.beacons]
    step = r.advert_interval_s
    beacon_every = max(round(r.beacon_interval_s / step), 1)
    k = 0
    log10 = math.log10

    def heard(eid: str, address: str, pos: tuple[float, float], p1m: float, *, t: float,
              md: dict[int, bytes], sd: dict[str, bytes]) -> Iterator[Advert]:
        outside = r.front_wall_db if pos[1] < 0 else 0.0
        for name, sx, sy, offset in scanners:
            d = max(math.hypot(pos[0] - sx, pos[1] - sy), 0.5)
            rssi = (p1m + offset - 10 * r.path_loss_n * log10(d) - outside
                    + rng.gauss(0, r.noise_db))
            rssi -= fade_depth(fades, (eid, name), t, step, radio=r, rng=rng)
            if rssi < r.sensitivity_dbm or rng.random() < r.loss:
                continue
            yield Advert(ts=round(t + rng.uniform(0, 0.05), 4), scanner=name, address=address,
                         rssi=round(rssi), manufacturer_data=dict(md), service_data=dict(sd))

    t = sim.start
    while t <= sim.end:
        for pid, address, track, p1m, ident in phones:
            pos = track.at(t)
            if pos is None:
                continue
            sd: dict[str, bytes] = {}
            if ident is not None:
                bt = ident.beacon_time(t)
                key = (pid, bt >> ident.rotation_exponent)
                if key not in eids:
                    eids[key] = compute_eid(ident.identity_key, ident.rotation_exponent, bt)
                sd = {EDDYSTONE_UUID: b"\x30\xf4" + eids[key]}
            yield from heard(pid, address, pos, p1m, t=t, md={}, sd=sd)
        for bid, address, track, p1m, md in badges:
            pos = track.at(t)
            if pos is not None:
                yield from heard(bid, address, pos, p1m, t=t, md=md, sd={})
        if k % beacon_every == 0:
            for label, address, bpos, p1m, md in beacons:
                yield from heard(label, address, bpos, p1m, t=t, md=md, sd={})
        k += 1
        t = sim.start + k * step
