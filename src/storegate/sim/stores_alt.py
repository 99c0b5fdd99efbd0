"""A second, independent family of simulated stores (issue 13): a different radio and
behaviour model, to find out whether presence holds on stores it was never tuned on.

``sim/stores.py`` is the family the engine was tuned on. This one was written without
looking at that family's propagation or behaviour and models the things a plain
log-distance model leaves out:

* **Radio.** A dual-slope path loss (near free space up to a breakpoint of 4-10 m, steeper
  beyond it) on the 3-D distance (scanners on the ceiling or on top of a gondola, phones
  at hand, pocket or bag height), plus a multi-wall term: every shelf run the line of
  sight crosses *below the shelf's top* costs 2-6 dB (a ray passing over a low shelf
  costs little), capped at 8-15 dB as diffraction over the tops takes over; the shop
  window 2-12 dB, an open door 0-2 dB, a party wall to the neighbours 10-20 dB. Body
  shadowing from where the phone is carried (hand, front or back pocket, bag; it changes
  during a visit) and which way the person faces, 1-15 dB. Fading is time-correlated,
  not drawn afresh per advert: a Gauss-Markov shadowing per link (decorrelating over
  metres walked and tens of seconds) and Rician small-scale fading per link *and
  advertising channel* (37/38/39), which decorrelates over centimetres moved or a few
  seconds standing still, and is deep (Rayleigh) when the line of sight is blocked.
* **Phones.** Android apps advertise at 100 ms, 250 ms or 1 s (AdvertiseSettings'
  LOW_LATENCY / BALANCED / LOW_POWER); an iOS app in the background advertises best
  effort, slower, and stops for tens of seconds at a time; either one is foreground
  (100-300 ms) for a while when its owner takes the phone out. Addresses rotate every
  10-20 minutes. Transmit power differs between phones.
* **Scanners.** ESP32 nodes listen one advertising channel at a time with a scan window
  inside a scan interval (ESPresense-like near-continuous, or ESPHome-proxy-like short
  windows), lose packets to Wi-Fi coexistence, go deaf for a few seconds now and then,
  lose packets steeply as the signal nears their sensitivity (-93..-98 dBm), compress
  strong signals, and report whole dBm with a per-scanner gain and reading offset.
* **Stores and people.** 5-12 zones with shelf runs in them, 1-3 checkouts (mostly in
  the shop window, sometimes at the back), one or two doors anywhere along the front.
  Shoppers come alone or in groups, at their own pace, stop at shelves (truth: a zone
  visit is a stay in the zone's rectangle that includes a stop; walking through is not
  one); passers-by on the near pavement (1-4 m), some looking in the window, and on the
  far pavement across the street; people standing outside the window or stopping in the
  doorway and leaving; shoppers who stay on the pavement after leaving; staff badges.

The result is a :class:`~storegate.sim.stores.FamilyStore` (the plan, the radio as far as
calibration scoring needs it, the people and their ground truth), so
``sim/family_report.py`` scores it as it scores the main family.

Pure: seeded ``random``, no clock, no I/O.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

from storegate.core.ble.capture import Advert
from storegate.core.ble.decoders import APPLE, EDDYSTONE_UUID
from storegate.core.ble.eid import Identity, compute_eid
from storegate.sim.store import Interval, Person, Radio, Simulation, SimZone
from storegate.sim.stores import (
    BEACON_MEASURED_POWER_DBM,
    FULL,
    INFRA_UUID,
    LINGERER,
    PASSER_BY,
    STAFF_MAJOR,
    START,
    ZONE_MAJOR,
    Badge,
    Door,
    FamilyStore,
    FloorPlan,
    PlanBeacon,
    PlanScanner,
    StoreRadio,
    StoreSize,
)

DOOR_STOPPER: Final = LINGERER + "door-"  # stops on the threshold, never enters
MIN_ZONE_M: Final = 4.0
MIN_STOP_S: Final = 15.0  # a stop at a shelf; a zone visit in the truth has one
INNER_NAMES: Final = ("produce", "bakery", "dairy", "drinks", "household", "frozen",
                      "clothing", "toys", "garden", "books", "pharmacy", "deli", "tools",
                      "beauty", "pets", "snacks")
FRONT_NAMES: Final = ("window", "promo", "news", "flowers")
Placement = Literal["hand", "front-pocket", "back-pocket", "bag"]
PLACEMENTS: Final[tuple[Placement, ...]] = ("hand", "front-pocket", "back-pocket", "bag")
PLACEMENT_WEIGHTS: Final = (0.25, 0.3, 0.15, 0.3)
# body loss: (always, extra when the body is in the way), dB; 1..15 in all
BODY_DB: Final[dict[Placement, tuple[float, float]]] = {
    "hand": (1.0, 8.0), "front-pocket": (4.0, 10.0), "back-pocket": (4.0, 11.0),
    "bag": (6.0, 9.0)}
PHONE_HEIGHT_M: Final[dict[Placement, float]] = {
    "hand": 1.2, "front-pocket": 0.9, "back-pocket": 0.9, "bag": 1.0}


# --- what only this simulator knows ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shelf:
    """A gondola run on the plan: a segment, its height and its loss per crossing."""

    x0: float
    y0: float
    x1: float
    y1: float
    height_m: float
    loss_db: float


@dataclass(frozen=True, slots=True)
class ScannerHw:
    height_m: float
    gain_db: float  # antenna/enclosure: changes what it hears and its sensitivity
    bias_db: float  # reading error: changes only the number it reports
    sensitivity_dbm: float
    scan_interval_s: float
    scan_window_s: float
    coex_loss: float  # share of packets lost to Wi-Fi sharing the radio
    compress_above_dbm: float
    compress_slope: float
    phase_s: float


@dataclass(frozen=True, slots=True)
class AltRadio:
    near_n: float
    far_n: float
    breakpoint_m: float
    shelves: tuple[Shelf, ...]
    shelf_cap_db: float
    glass_db: float
    door_db: float
    party_wall_db: float
    door_gaps: tuple[tuple[float, float], ...]  # x ranges of the doors on y = 0
    shadow_sigma_db: float
    shadow_corr_m: float
    shadow_corr_s: float
    rician_k_los: float  # linear K factor with the line of sight clear
    coherence_s: float  # small-scale fading of a standing phone (people move around)
    scanners: dict[str, ScannerHw]
    beacon_p1m_dbm: dict[str, float]
    beacon_height_m: dict[str, float]
    beacon_interval_s: float
    deaf_rate_per_s: float
    deaf_s: tuple[float, float]


@dataclass(frozen=True, slots=True)
class Phone:
    platform: Literal["android", "ios", "badge"]
    p1m_dbm: float
    claimed_tx0_dbm: int  # what its Eddystone frame says at 0 m
    bg_interval_s: float
    fg_interval_s: float
    silence_rate_per_s: float
    silence_s: tuple[float, float]
    rotate_s: float


@dataclass(slots=True)
class AltStore(FamilyStore):
    alt: AltRadio | None = None
    phones: dict[str, Phone] = field(default_factory=dict)


# --- layout ---------------------------------------------------------------------------


def _split(rng: random.Random, total: float, k: int, least: float) -> list[float]:
    spare = total - k * least
    cuts = sorted(rng.uniform(0, spare) for _ in range(k - 1))
    parts = [b - a for a, b in zip([0.0, *cuts], [*cuts, spare], strict=True)]
    return [least + p for p in parts]


def _layout(rng: random.Random) -> tuple[float, float, tuple[SimZone, ...], tuple[Door, ...],
                                         dict[str, float]]:
    n_doors = 1 if rng.random() < 0.65 else 2
    n_check = rng.choice((1, 1, 2, 2, 3))
    back_check = 1 if n_check > 1 and rng.random() < 0.35 else 0
    front_check = n_check - back_check
    n_other_front = rng.choice((0, 0, 1, 1, 2))
    front = ["door"] * n_doors + ["checkout"] * front_check + ["front"] * n_other_front
    rng.shuffle(front)
    n_front = len(front)
    rows = rng.choice((1, 2, 2, 3))
    n_back_min = max(5 - n_front, rows)
    n_back_max = max(min(12 - n_front, rows * 4), n_back_min)
    n_back = rng.randint(n_back_min, n_back_max)
    per_row = [1] * rows
    for _ in range(n_back - rows):
        per_row[rng.randrange(rows)] += 1
    width = max(rng.uniform(14.0, 40.0), 4.6 * max(n_front, *per_row))
    front_d = rng.uniform(4.0, 7.0)
    depth = front_d + max(rng.uniform(8.0, 26.0), 4.6 * rows)
    zones: list[SimZone] = []
    doors: list[Door] = []
    door_gaps: dict[str, float] = {}
    x = 0.0
    names = list(INNER_NAMES)
    rng.shuffle(names)
    fronts = list(FRONT_NAMES)
    n_e = n_c = 0
    for kind, w in zip(front, _split(rng, width, n_front, MIN_ZONE_M + 0.3), strict=True):
        if kind == "door":
            n_e += 1
            zid = "entrance" if n_e == 1 else f"entrance-{n_e}"
            zones.append(SimZone(zid, x, 0.0, x + w, front_d, entrance=True))
            dx = rng.uniform(x + 1.3, x + w - 1.3)  # anywhere along its zone's front
            doors.append(Door(dx, zid))
            door_gaps[zid] = rng.uniform(1.6, 2.4)
        elif kind == "checkout":
            n_c += 1
            zones.append(SimZone(f"checkout-{n_c}", x, 0.0, x + w, front_d, front=True))
        else:
            zones.append(SimZone(fronts.pop(), x, 0.0, x + w, front_d, front=True))
        x += w
    y = front_d
    back_ids: list[int] = []
    for k, h in zip(per_row, _split(rng, depth - front_d, rows, MIN_ZONE_M + 0.3), strict=True):
        x = 0.0
        for w in _split(rng, width, k, MIN_ZONE_M + 0.3):
            back_ids.append(len(zones))
            zones.append(SimZone(names.pop(), x, y, x + w, y + h))
            x += w
        y += h
    if back_check:  # a checkout at the back (a pharmacy or service counter)
        i = rng.choice(back_ids)
        z = zones[i]
        n_c += 1
        zones[i] = SimZone(f"checkout-{n_c}", z.x0, z.y0, z.x1, z.y1)
    return width, depth, tuple(zones), tuple(doors), door_gaps


def _shelves(rng: random.Random, zones: tuple[SimZone, ...]) -> tuple[Shelf, ...]:
    along_y = rng.random() < 0.6  # aisles running into the store, or across it
    out: list[Shelf] = []
    for z in zones:
        if z.entrance:
            continue
        if z.id.startswith("checkout"):  # counters and the queue's impulse racks
            h, loss = rng.uniform(1.0, 1.4), rng.uniform(1.0, 3.0)
            spacing = rng.uniform(2.0, 3.0)
        elif z.front:  # window displays
            h, loss = rng.uniform(1.2, 1.8), rng.uniform(1.0, 4.0)
            spacing = rng.uniform(2.5, 4.0)
        else:  # full gondolas; water-rich goods (drinks, produce) take the most
            h, loss = rng.uniform(1.5, 2.2), rng.uniform(2.0, 6.0)
            spacing = rng.uniform(2.2, 3.2)
        if along_y:
            pos, lo, hi, a0, a1 = z.x0 + spacing / 2, z.x0, z.x1, z.y0 + 1.2, z.y1 - 1.2
        else:
            pos, lo, hi, a0, a1 = z.y0 + spacing / 2, z.y0, z.y1, z.x0 + 1.2, z.x1 - 1.2
        if a1 - a0 < 1.0:
            continue
        while pos < hi - 0.8:
            if pos > lo + 0.8:
                out.append(Shelf(pos, a0, pos, a1, h, loss) if along_y
                           else Shelf(a0, pos, a1, pos, h, loss))
            pos += spacing
    return tuple(out)


def _plan(rng: random.Random) -> tuple[FloorPlan, AltRadio]:
    width, depth, zones, doors, gaps = _layout(rng)
    scanners: list[PlanScanner] = []
    hw: dict[str, ScannerHw] = {}
    firmware = rng.random()  # the store's nodes all run one firmware
    for z in zones:
        if z.entrance:
            door = next(d for d in doors if d.zone == z.id)
            spots = [(min(max(door.x_m + rng.uniform(-1.5, 1.5), z.x0 + 0.3), z.x1 - 0.3),
                      rng.uniform(0.3, 2.5))]
        else:
            n = 2 if max(z.x1 - z.x0, z.y1 - z.y0) > 14.0 else 1
            spots = []
            for i in range(n):
                if z.x1 - z.x0 >= z.y1 - z.y0:
                    seg = (z.x1 - z.x0) / n
                    sx = z.x0 + seg * i + rng.uniform(0.35, 0.65) * seg
                    sy = rng.uniform(z.y0 + 0.35 * (z.y1 - z.y0), z.y1 - 0.35 * (z.y1 - z.y0))
                else:
                    seg = (z.y1 - z.y0) / n
                    sy = z.y0 + seg * i + rng.uniform(0.35, 0.65) * seg
                    sx = rng.uniform(z.x0 + 0.35 * (z.x1 - z.x0), z.x1 - 0.35 * (z.x1 - z.x0))
                spots.append((sx, sy))
        for i, (sx, sy) in enumerate(spots):
            name = f"node-{z.id}" + (f"-{i + 1}" if len(spots) > 1 else "")
            scanners.append(PlanScanner(name, z.id, round(sx, 2), round(sy, 2), z.entrance))
            if firmware < 0.7:  # ESPresense-like: near-continuous scanning
                interval = rng.uniform(0.08, 0.32)
                window = interval * rng.uniform(0.85, 1.0)
            else:  # ESPHome proxies: 320 ms interval, a window of 30-300 ms
                interval = 0.32
                window = rng.choice((0.03, 0.15, 0.3, 0.3))
            hw[name] = ScannerHw(
                height_m=rng.uniform(2.3, 3.5) if rng.random() < 0.7 else rng.uniform(1.8, 2.1),
                gain_db=rng.uniform(-3.0, 3.0), bias_db=rng.uniform(-3.0, 3.0),
                sensitivity_dbm=rng.uniform(-98.0, -93.0), scan_interval_s=interval,
                scan_window_s=window, coex_loss=rng.uniform(0.03, 0.25),
                compress_above_dbm=rng.uniform(-45.0, -35.0),
                compress_slope=rng.uniform(0.3, 0.6), phase_s=rng.uniform(0.0, interval))
    beacons: list[PlanBeacon] = []
    p1m: dict[str, float] = {}
    heights: dict[str, float] = {}
    for i, z in enumerate(zones):
        if not z.entrance and rng.random() < 0.12 and len(beacons) >= 3:
            continue  # not every zone got its beacon
        label = f"beacon-{z.id}"
        bx = rng.uniform(z.x0 + 0.5, z.x1 - 0.5)
        by = rng.uniform(max(z.y0, 0.3) + 0.2, z.y1 - 0.5)
        beacons.append(PlanBeacon(label, z.id, round(bx, 2), round(by, 2), ZONE_MAJOR, i + 1,
                                  BEACON_MEASURED_POWER_DBM))
        p1m[label] = BEACON_MEASURED_POWER_DBM + rng.uniform(-7.0, 4.0)
        heights[label] = rng.uniform(1.0, 2.2)
    near_n = rng.uniform(1.7, 2.3)
    radio = AltRadio(
        near_n=near_n, far_n=near_n + rng.uniform(0.8, 1.6),
        breakpoint_m=rng.uniform(4.0, 10.0), shelves=_shelves(rng, zones),
        shelf_cap_db=rng.uniform(8.0, 15.0),
        glass_db=rng.uniform(2.0, 6.0) if rng.random() < 0.75 else rng.uniform(8.0, 12.0),
        door_db=rng.uniform(0.0, 2.0), party_wall_db=rng.uniform(10.0, 20.0),
        door_gaps=tuple((d.x_m - gaps[d.zone] / 2, d.x_m + gaps[d.zone] / 2) for d in doors),
        shadow_sigma_db=rng.uniform(2.0, 5.0), shadow_corr_m=rng.uniform(1.0, 3.0),
        shadow_corr_s=rng.uniform(10.0, 40.0), rician_k_los=10 ** (rng.uniform(2.0, 8.0) / 10),
        coherence_s=rng.uniform(1.0, 4.0), scanners=hw, beacon_p1m_dbm=p1m,
        beacon_height_m=heights, beacon_interval_s=rng.choice((0.5, 1.0, 1.0)),
        deaf_rate_per_s=rng.uniform(1 / 900, 1 / 200), deaf_s=(1.0, 8.0))
    plan = FloorPlan(width, depth, zones, doors, tuple(scanners), tuple(beacons))
    return plan, radio


# --- people ---------------------------------------------------------------------------


class _Walk:
    def __init__(self, t: float, x: float, y: float, speed: float) -> None:
        self.path: list[tuple[float, float, float]] = [(t, x, y)]
        self.speed = speed

    @property
    def t(self) -> float:
        return self.path[-1][0]

    @property
    def at(self) -> tuple[float, float]:
        return self.path[-1][1], self.path[-1][2]

    def to(self, x: float, y: float, speed: float | None = None) -> None:
        t, x0, y0 = self.path[-1]
        self.path.append((t + math.hypot(x - x0, y - y0) / (speed or self.speed), x, y))

    def stay(self, s: float) -> None:
        t, x, y = self.path[-1]
        self.path.append((t + s, x, y))


def _stop_s(rng: random.Random, pace: float) -> float:
    return min(max(MIN_STOP_S, rng.lognormvariate(math.log(40.0 * pace), 0.7)), 300.0)


def _point_in(rng: random.Random, z: SimZone, margin: float = 1.0) -> tuple[float, float]:
    return (rng.uniform(z.x0 + margin, z.x1 - margin),
            rng.uniform(max(z.y0, 0.0) + margin, z.y1 - margin))


def _pavement_side(rng: random.Random, plan: FloorPlan) -> float:
    return -rng.uniform(8.0, 15.0) if rng.random() < 0.5 else plan.width_m + rng.uniform(8.0, 15.0)


def _identity(rng: random.Random, customer: str) -> Identity:
    return Identity(customer, bytes(rng.randrange(256) for _ in range(16)),
                    rng.choice((8, 9, 10)), rng.randrange(1 << 20),
                    START - rng.uniform(0, 86400 * 30))


def _address(rng: random.Random) -> str:
    b = [rng.randrange(256) for _ in range(6)]
    b[0] = (b[0] & 0x3F) | 0x40
    return ":".join(f"{x:02X}" for x in b)


def _zone_at(zones: tuple[SimZone, ...], x: float, y: float) -> SimZone | None:
    return next((z for z in zones if z.contains(x, y)), None)


def _truth(plan: FloorPlan, path: list[tuple[float, float, float]],
           stops: list[tuple[str, float, float]]) -> list[Interval]:
    """The store visit (inside the walls, y >= 0), then every stay in a zone's rectangle
    that includes a stop there."""
    inside: list[float] = []
    for i in range(len(path) - 1):
        (t0, _x0, y0), (t1, _x1, y1) = path[i], path[i + 1]
        if (y0 < 0) != (y1 < 0):
            inside.append(t0 + (t1 - t0) * (0 - y0) / (y1 - y0))
    if len(inside) < 2:
        return []
    start, end = inside[0], inside[-1]
    person = Person("", "", None, path)
    runs: list[tuple[str, float, float]] = []
    t = start + 0.125
    cur: str | None = None
    run0 = start
    while t < end:
        pos = person.position(t)
        z = _zone_at(plan.zones, *pos) if pos is not None else None
        zid = z.id if z is not None and not z.entrance else None
        if zid != cur:
            if cur is not None:
                runs.append((cur, run0, t))
            cur, run0 = zid, t
        t += 0.25
    if cur is not None:
        runs.append((cur, run0, end))
    truth = [Interval(None, start, end)]
    for zid, a, b in runs:
        if any(s_zone == zid and s0 < b and a < s1 for s_zone, s0, s1 in stops):
            truth.append(Interval(zid, a, b))
    return truth


def _shopper(rng: random.Random, plan: FloorPlan, t: float, *,
             linger_after: bool) -> tuple[list[tuple[float, float, float]],
                                          list[tuple[str, float, float]]]:
    speed = rng.uniform(0.5, 1.3)
    pace = rng.uniform(0.6, 1.6)
    door = rng.choice(plan.doors)
    lane = -rng.uniform(1.0, 4.0)
    w = _Walk(t, _pavement_side(rng, plan), lane, rng.uniform(0.9, 1.5))
    w.to(door.x_m + rng.uniform(-1, 1), lane)
    w.to(door.x_m + rng.uniform(-0.4, 0.4), -0.5)
    w.speed = speed
    entrance = next(z for z in plan.zones if z.id == door.zone)
    w.to(*_point_in(rng, entrance, 0.6))
    if rng.random() < 0.5:  # a basket, a look around
        w.stay(rng.uniform(2.0, 10.0))
    inner = [z for z in plan.zones if not z.entrance and not z.id.startswith("checkout")]
    checkouts = [z for z in plan.zones if z.id.startswith("checkout")]
    stops: list[tuple[str, float, float]] = []
    if rng.random() < 0.08:  # a look from the entrance, then out
        w.stay(rng.uniform(10.0, 40.0))
        visits: list[SimZone] = []
    else:
        visits = rng.sample(inner, min(len(inner), rng.choice((1, 2, 2, 3, 3, 4, 5))))
    for z in visits:
        for _ in range(rng.choice((1, 1, 2, 2, 3))):
            w.to(*_point_in(rng, z))
            t0 = w.t
            w.stay(_stop_s(rng, pace))
            stops.append((z.id, t0, w.t))
    if checkouts and (visits and rng.random() < 0.8):
        z = rng.choice(checkouts)
        w.to(*_point_in(rng, z))
        t0 = w.t
        w.stay(rng.uniform(30.0, 240.0))
        stops.append((z.id, t0, w.t))
    out = min(plan.doors, key=lambda d: abs(d.x_m - w.at[0])) if rng.random() < 0.7 \
        else rng.choice(plan.doors)
    w.to(out.x_m + rng.uniform(-0.4, 0.4), 0.8)
    w.to(out.x_m + rng.uniform(-0.4, 0.4), -0.5)
    lane = -rng.uniform(1.0, 4.0)
    if linger_after:  # stays on the pavement, heard through the window
        w.to(out.x_m + rng.uniform(-5.0, 5.0), -rng.uniform(0.7, 3.0), 1.0)
        w.stay(rng.uniform(30.0, 240.0))
    w.to(w.at[0], lane, 1.0)
    w.to(_pavement_side(rng, plan), lane, rng.uniform(0.9, 1.5))
    return w.path, stops


def _follower(rng: random.Random, path: list[tuple[float, float, float]]) -> (
        tuple[list[tuple[float, float, float]], float]):
    """A group member: the leader's path a little behind and beside; and the lag."""
    lag = rng.uniform(0.5, 3.0)
    dx, dy = rng.uniform(-0.6, 0.6), rng.uniform(-0.4, 0.4)
    out = []
    for t, x, y in path:
        shift = y > 0.8 or y < -0.8  # not on the threshold: the door is narrow
        out.append((t + lag, x + dx * shift, y + dy * shift))
    return out, lag


def _passer(rng: random.Random, plan: FloorPlan, t: float) -> list[tuple[float, float, float]]:
    far = rng.random() < 0.3
    lane = -rng.uniform(8.0, 14.0) if far else -rng.uniform(1.0, 4.0)
    left = rng.random() < 0.5
    x0, x1 = (-20.0, plan.width_m + 20.0) if left else (plan.width_m + 20.0, -20.0)
    w = _Walk(t, x0, lane, rng.uniform(0.8, 1.7))
    if not far and rng.random() < 0.25:  # looks in the window on the way
        gaps = [(d.x_m - 1.5, d.x_m + 1.5) for d in plan.doors]
        for _ in range(20):
            wx = rng.uniform(0.5, plan.width_m - 0.5)
            if not any(a <= wx <= b for a, b in gaps):
                break
        w.to(wx, lane)
        w.to(wx, -rng.uniform(0.5, 1.2))
        w.stay(rng.uniform(5.0, 40.0))
        w.to(wx, lane)
    w.to(x1, lane)
    return w.path


def _lingerer(rng: random.Random, plan: FloorPlan, t: float, *, door_stop: bool) -> (
        list[tuple[float, float, float]]):
    side = _pavement_side(rng, plan)
    lane = -rng.uniform(1.0, 3.0)
    w = _Walk(t, side, lane, rng.uniform(0.8, 1.4))
    if door_stop:  # on the threshold, looks in, leaves
        d = rng.choice(plan.doors)
        w.to(d.x_m + rng.uniform(-0.5, 0.5), lane)
        w.to(d.x_m + rng.uniform(-0.5, 0.5), -rng.uniform(0.3, 0.8))
        w.stay(rng.uniform(5.0, 30.0))
    else:  # waits outside (for someone inside, on the phone, smoking)
        x = rng.uniform(-2.0, plan.width_m + 2.0)
        y = -rng.uniform(0.5, 3.0)
        w.to(x, y)
        end = w.t + rng.uniform(60.0, 600.0)
        while w.t < end:
            w.stay(rng.uniform(10.0, 60.0))
            w.to(min(max(x + rng.uniform(-1.5, 1.5), -3.0), plan.width_m + 3.0),
                 -rng.uniform(0.5, 3.0), 0.5)
    w.to(w.at[0], lane)
    w.to(_pavement_side(rng, plan), lane)
    return w.path


def _staff(rng: random.Random, plan: FloorPlan, start: float, end: float) -> (
        list[tuple[float, float, float]]):
    checkouts = [z for z in plan.zones if z.id.startswith("checkout")]
    others = [z for z in plan.zones if not z.entrance]
    z = rng.choice(checkouts)
    w = _Walk(start, *_point_in(rng, z), rng.uniform(0.8, 1.3))
    while w.t < end:
        z = rng.choice(checkouts) if rng.random() < 0.5 else rng.choice(others)
        w.to(*_point_in(rng, z))
        w.stay(rng.uniform(60.0, 600.0))
    person = Person("", "", None, w.path)
    cut = [p for p in w.path if p[0] < end]
    pos = person.position(end)
    assert pos is not None
    return [*cut, (end, *pos)]  # there until the end, not after it


def _phone(rng: random.Random, app: bool) -> Phone:
    ios = rng.random() < 0.45
    p1m = -59.0 + rng.uniform(-6.0, 6.0) + (1.5 if ios else 0.0)
    if ios:
        bg, sil_rate, sil = rng.uniform(1.0, 2.0), 1 / 150, (10.0, 60.0)
    else:
        bg = rng.choices((0.1, 0.25, 1.0), (0.1, 0.35, 0.55))[0]
        sil_rate, sil = 1 / 600, (5.0, 30.0)
    if not app:  # another app's or the OS's own adverts: steady, no foreground bursts
        sil_rate = 0.0
    return Phone("ios" if ios else "android", p1m, round(p1m + 41 + rng.uniform(-3, 3)),
                 bg, rng.uniform(0.1, 0.3), sil_rate, sil, rng.uniform(600.0, 1200.0))


def generate(seed: int, size: StoreSize = FULL) -> AltStore:
    """The store of ``seed``: its plan, its radio, its people and their ground truth."""
    rng = random.Random(seed ^ 0x5A17)
    plan, alt = _plan(rng)
    people: list[Person] = []
    phones: dict[str, Phone] = {}
    after: set[str] = set()
    dur = size.duration_s
    prev: tuple[list[tuple[float, float, float]], list[tuple[str, float, float]]] | None = None
    n_shop = size.app_shoppers + size.anonymous_shoppers
    order = list(range(n_shop))
    rng.shuffle(order)  # app and anonymous shoppers come mixed, groups mixed too
    for i in order:
        app = i < size.app_shoppers
        pid = f"cust-{i:04d}" if app else f"anon-{i:04d}"
        linger = rng.random() < size.linger_after_share
        if prev is not None and rng.random() < 0.15:  # with the one before: a group
            path, lag = _follower(rng, prev[0])
            stops = [(z, a + lag, b + lag) for z, a, b in prev[1]]
        else:
            path, stops = _shopper(rng, plan, START + rng.uniform(0, dur * 0.75),
                                   linger_after=linger)
            prev = (path, stops)
        truth = _truth(plan, path, stops)
        if app and linger:
            after.add(pid)
        people.append(Person(pid, _address(rng), _identity(rng, pid) if app else None, path,
                             truth=truth))
        phones[pid] = _phone(rng, app)
    for i in range(size.passers_by):
        pid = f"{PASSER_BY}{i:04d}"
        if i and rng.random() < 0.2:  # walking together with the previous one
            path, _lag = _follower(rng, people[-1].path)
        else:
            path = _passer(rng, plan, START + rng.uniform(0, dur - 60))
        people.append(Person(pid, _address(rng), _identity(rng, pid), path, passer_by=True))
        phones[pid] = _phone(rng, True)
    for i in range(size.lingerers):
        door = i % 2 == 1
        pid = f"{DOOR_STOPPER if door else LINGERER}{i:04d}"
        path = _lingerer(rng, plan, START + rng.uniform(0, dur * 0.8), door_stop=door)
        people.append(Person(pid, _address(rng), _identity(rng, pid), path, passer_by=True))
        phones[pid] = _phone(rng, True)
    end = max(p.path[-1][0] for p in people) + 30.0
    badges = []
    for i in range(size.staff):
        pid = f"staff-{i}"
        badges.append(Badge(Person(pid, _address(rng), None, _staff(rng, plan, START, end - 20)),
                            i + 1))
        phones[pid] = Phone("badge", -59.0 + rng.uniform(-3, 3), -18, 1.0, 1.0, 0.0,
                            (0.0, 0.0), 1e12)
    sim = Simulation(plan.zones, {s.name: (s.x_m, s.y_m) for s in plan.scanners},
                     {s.name: s.zone for s in plan.scanners}, people, START, end,
                     Radio(path_loss_n=alt.far_n, noise_db=alt.shadow_sigma_db))
    radio = StoreRadio(
        path_loss_n=_effective_n(plan, alt), noise_db=alt.shadow_sigma_db,
        loss=sum(h.coex_loss for h in alt.scanners.values()) / len(alt.scanners),
        fade_rate_per_s=0.0, front_wall_db=alt.glass_db,
        scanner_offset_db={s: h.gain_db + h.bias_db for s, h in alt.scanners.items()},
        beacon_p1m_dbm=dict(alt.beacon_p1m_dbm), sensitivity_dbm=max(
            h.sensitivity_dbm for h in alt.scanners.values()),
        advert_interval_s=1.0, beacon_interval_s=alt.beacon_interval_s)
    return AltStore(seed, plan, radio, sim,
                    {pid: ph.p1m_dbm - BEACON_MEASURED_POWER_DBM for pid, ph in phones.items()},
                    tuple(badges), after, alt=alt, phones=phones)


# --- radio ----------------------------------------------------------------------------


def _path_loss(r: AltRadio, d: float) -> float:
    d = max(d, 0.3)
    if d <= r.breakpoint_m:
        return 10 * r.near_n * math.log10(d)
    return 10 * r.near_n * math.log10(r.breakpoint_m) + 10 * r.far_n * math.log10(
        d / r.breakpoint_m)


def _obstruction(r: AltRadio, plan: FloorPlan, p: tuple[float, float, float],
                 s3: tuple[float, float, float]) -> tuple[float, bool]:
    """Loss on the straight line from (px, py) at height ph to the scanner, and whether
    the line of sight is blocked."""
    px, py, ph = p
    sx, sy, sh = s3
    dx, dy = sx - px, sy - py
    loss = 0.0
    blocked = False
    for s in r.shelves:
        ex, ey = s.x1 - s.x0, s.y1 - s.y0
        den = dx * ey - dy * ex
        if abs(den) < 1e-12:
            continue
        ax, ay = s.x0 - px, s.y0 - py
        u = (ax * ey - ay * ex) / den
        v = (ax * dy - ay * dx) / den
        if 0.0 < u < 1.0 and 0.0 <= v <= 1.0:
            over = ph + (sh - ph) * u - s.height_m
            if over < 0.0:
                loss += s.loss_db
                blocked = True
            elif over < 0.5:  # grazing the top: part of the first Fresnel zone is cut
                loss += s.loss_db * (1 - over / 0.5) * 0.6
    loss = min(loss, r.shelf_cap_db)
    if (py < 0) != (sy < 0):
        u = -py / (sy - py)
        x = px + u * dx
        if 0.0 <= x <= plan.width_m:
            if any(a <= x <= b for a, b in r.door_gaps):
                loss += r.door_db
            else:
                loss += r.glass_db
                blocked = blocked or r.glass_db > 6.0
    for wall in (0.0, plan.width_m):
        if (px < wall) != (sx < wall):
            u = (wall - px) / (sx - px)
            y = py + u * dy
            if 0.0 <= y <= plan.depth_m:
                loss += r.party_wall_db
                blocked = True
    return loss, blocked


def _effective_n(plan: FloorPlan, r: AltRadio) -> float:
    """The exponent a plain log-distance fit would find from the zone beacons (what the
    report shows as this store's n)."""
    xs, ys = [], []
    for s in plan.scanners:
        hw = r.scanners[s.name]
        for b in plan.beacons:
            bh = r.beacon_height_m[b.label]
            d = math.sqrt((s.x_m - b.x_m) ** 2 + (s.y_m - b.y_m) ** 2 + (hw.height_m - bh) ** 2)
            obs, _ = _obstruction(r, plan, (b.x_m, b.y_m, bh), (s.x_m, s.y_m, hw.height_m))
            xs.append(math.log10(max(math.hypot(s.x_m - b.x_m, s.y_m - b.y_m), 0.5)))
            ys.append(_path_loss(r, d) + obs)
    if len(xs) < 2:
        return r.far_n
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx / 10 \
        if sxx > 0 else r.far_n


class _Track:
    """Position, facing and speed along a path; a standing person faces a way of their own
    at each stop."""

    def __init__(self, path: list[tuple[float, float, float]], rng: random.Random) -> None:
        self.path = path
        self.times = [p[0] for p in path]
        self.facing = []
        for i in range(len(path) - 1):
            (_t0, x0, y0), (_t1, x1, y1) = path[i], path[i + 1]
            if x0 == x1 and y0 == y1:
                self.facing.append(rng.uniform(-math.pi, math.pi))
            else:
                self.facing.append(math.atan2(y1 - y0, x1 - x0))
        self.facing.append(0.0)

    def at(self, t: float) -> tuple[float, float, float] | None:
        if t < self.times[0] or t > self.times[-1]:
            return None
        i = max(bisect.bisect_right(self.times, t) - 1, 0)
        if i >= len(self.path) - 1:
            return self.path[-1][1], self.path[-1][2], self.facing[-1]
        t0, x0, y0 = self.path[i]
        t1, x1, y1 = self.path[i + 1]
        f = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
        return x0 + (x1 - x0) * f, y0 + (y1 - y0) * f, self.facing[i]


def _windows(rng: random.Random, t0: float, t1: float, rate: float,
             length: tuple[float, float]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    if rate <= 0:
        return out
    t = t0 + rng.expovariate(rate)
    while t < t1:
        d = rng.uniform(*length)
        out.append((t, t + d))
        t += d + rng.expovariate(rate)
    return out


def _in(windows: list[tuple[float, float]], starts: list[float], t: float) -> bool:
    i = bisect.bisect_right(starts, t) - 1
    return i >= 0 and windows[i][0] <= t < windows[i][1]


class _Link:
    __slots__ = ("ch", "s", "t", "x", "y")

    def __init__(self) -> None:
        self.s = 0.0
        self.t = -1e18
        self.x = self.y = 0.0
        self.ch: list[list[float]] = [[-1e18, 0.0, 0.0, 0.0, 0.0] for _ in range(3)]


class _Air:
    """Every scanner of one store: what it hears of a packet sent at a place."""

    def __init__(self, store: AltStore, rng: random.Random) -> None:
        assert store.alt is not None
        self.r = r = store.alt
        self.plan = store.plan
        self.scanners = [(s.name, s.x_m, s.y_m, r.scanners[s.name]) for s in store.plan.scanners]
        end = store.sim.end
        self.deaf = []
        for _ in self.scanners:
            w = _windows(rng, store.sim.start, end, r.deaf_rate_per_s, r.deaf_s)
            self.deaf.append((w, [a for a, _b in w]))
        self._obs: dict[tuple[int, int, int, int], tuple[float, bool]] = {}

    def obstruction(self, i: int, x: float, y: float, h: float) -> tuple[float, bool]:
        key = (i, math.floor(x * 2), math.floor(y * 2), int(h * 10))
        hit = self._obs.get(key)
        if hit is None:
            _n, sx, sy, hw = self.scanners[i]
            hit = _obstruction(self.r, self.plan, ((key[1] + 0.5) / 2, (key[2] + 0.5) / 2, h),
                               (sx, sy, hw.height_m))
            self._obs[key] = hit
        return hit

    def hear(self, rng: random.Random, links: list[_Link], t: float, *,
             at: tuple[float, float, float], p1m: float,
             body: Callable[[float, float], float] | None,
             obstruction: list[tuple[float, bool]] | None = None) -> Iterator[tuple[str, int]]:
        x, y, h = at
        r = self.r
        for i, (name, sx, sy, hw) in enumerate(self.scanners):
            d = math.sqrt((sx - x) ** 2 + (sy - y) ** 2 + (hw.height_m - h) ** 2)
            obs, blocked = obstruction[i] if obstruction is not None else \
                self.obstruction(i, x, y, h)
            mean = p1m + hw.gain_db - _path_loss(r, d) - obs
            if body is not None:
                mean -= body(sx - x, sy - y)
            if mean < hw.sensitivity_dbm - 25.0:
                continue
            ln = links[i]
            moved = math.hypot(x - ln.x, y - ln.y)
            rho = math.exp(-moved / r.shadow_corr_m - (t - ln.t) / r.shadow_corr_s)
            ln.s = rho * ln.s + math.sqrt(1 - rho * rho) * rng.gauss(0.0, r.shadow_sigma_db)
            ln.t, ln.x, ln.y = t, x, y
            # the scanner listens on one channel per scan interval, inside its window
            k = (t + hw.phase_s) / hw.scan_interval_s
            if (k - math.floor(k)) * hw.scan_interval_s >= hw.scan_window_s:
                continue
            ch = ln.ch[int(k) % 3]
            cm = math.hypot(x - ch[1], y - ch[2])
            fr = math.exp(-cm / 0.06 - (t - ch[0]) / r.coherence_s)
            q = math.sqrt(max(1 - fr * fr, 0.0) / 2)
            ch[3] = fr * ch[3] + q * rng.gauss(0.0, 1.0)
            ch[4] = fr * ch[4] + q * rng.gauss(0.0, 1.0)
            ch[0], ch[1], ch[2] = t, x, y
            kf = 0.3 if blocked else r.rician_k_los
            los = math.sqrt(kf / (kf + 1))
            sc = math.sqrt(1 / (kf + 1))
            g = (los + sc * ch[3]) ** 2 + (sc * ch[4]) ** 2
            rx = mean + ln.s + 10 * math.log10(max(g, 1e-4))
            # packet error rate climbs steeply around sensitivity (30.8 % lost there, as
            # the Core specification defines it; most lost 3 dB below)
            if rng.random() >= 1 / (1 + math.exp(-(rx - hw.sensitivity_dbm + 1.0) / 1.2)):
                continue
            if rng.random() < hw.coex_loss:
                continue
            w, starts = self.deaf[i]
            if w and _in(w, starts, t):
                continue
            rep = rx + hw.bias_db + rng.gauss(0.0, 0.7)
            if rep > hw.compress_above_dbm:
                rep = hw.compress_above_dbm + (rep - hw.compress_above_dbm) * hw.compress_slope
            if rep >= -100.0:  # nothing weaker is ever reported
                yield name, round(rep)


def _body_loss(placement: Placement, facing: float) -> Callable[[float, float], float]:
    base, extra = BODY_DB[placement]
    fx, fy = math.cos(facing), math.sin(facing)

    def loss(dx: float, dy: float) -> float:
        n = math.hypot(dx, dy)
        c = (fx * dx + fy * dy) / n if n > 1e-6 else 1.0  # 1: the scanner is ahead
        if placement == "back-pocket":
            return base + extra * (1 + c) / 2
        if placement == "bag":
            return base + extra * (1 - abs(c)) * 0.8
        return base + extra * (1 - c) / 2
    return loss


def _ibeacon(major: int, minor: int, power: int) -> dict[int, bytes]:
    return {APPLE: b"\x02\x15" + bytes.fromhex(INFRA_UUID.replace("-", ""))
            + major.to_bytes(2, "big") + minor.to_bytes(2, "big") + bytes([power & 0xFF])}


def _person_adverts(air: _Air, rng: random.Random, person: Person, phone: Phone,
                    badge_minor: int | None) -> Iterator[Advert]:
    track = _Track(person.path, rng)
    t0, t1 = person.path[0][0], person.path[-1][0]
    links = [_Link() for _ in air.scanners]
    silences = _windows(rng, t0, t1, phone.silence_rate_per_s, phone.silence_s)
    sil_starts = [a for a, _b in silences]
    # where the phone is carried: switches every few minutes; taken out into the hand,
    # the app is opened (foreground) for a while
    changes: list[tuple[float, Placement, float]] = []
    t = t0
    placement: Placement = rng.choices(PLACEMENTS, PLACEMENT_WEIGHTS)[0]
    if phone.platform == "badge":
        placement = "hand"  # on a lanyard: in front of the chest
    while t < t1:
        fg_until = t + rng.uniform(10.0, 90.0) if placement == "hand" and \
            phone.platform != "badge" and rng.random() < 0.35 else t
        changes.append((t, placement, fg_until))
        t += rng.expovariate(1 / 150.0)
        if phone.platform != "badge":
            placement = rng.choices(PLACEMENTS, PLACEMENT_WEIGHTS)[0]
    change_t = [c[0] for c in changes]
    ident = person.identity
    eids: dict[int, bytes] = {}
    addr_cache: dict[int, str] = {}
    rot_phase = rng.uniform(0, phone.rotate_s)
    addr_seed = rng.randrange(1 << 30)
    anon_md = {APPLE: bytes([0x10, 0x05, rng.randrange(256), rng.randrange(256),
                             rng.randrange(256), rng.randrange(256), rng.randrange(256)])} \
        if phone.platform == "ios" and ident is None and badge_minor is None else {}
    t = t0 + rng.uniform(0, phone.bg_interval_s)
    while t <= t1:
        c = changes[bisect.bisect_right(change_t, t) - 1]
        fg = t < c[2]
        interval = phone.fg_interval_s if fg else phone.bg_interval_s
        if not fg and silences and _in(silences, sil_starts, t):
            i = bisect.bisect_right(sil_starts, t) - 1
            t = silences[i][1] + rng.uniform(0, interval)
            continue
        pos = track.at(t)
        if pos is not None:
            x, y, facing = pos
            epoch = int((t + rot_phase) // phone.rotate_s)
            address = addr_cache.get(epoch)
            if address is None:
                address = person.address if epoch == 0 and badge_minor is not None else \
                    _address(random.Random(addr_seed * 7 + epoch))
                addr_cache[epoch] = address
            sd: dict[str, bytes] = {}
            md: dict[int, bytes] = anon_md
            if badge_minor is not None:
                md = _ibeacon(STAFF_MAJOR, badge_minor, BEACON_MEASURED_POWER_DBM)
            elif ident is not None:
                bt = ident.beacon_time(t)
                q = bt >> ident.rotation_exponent
                if q not in eids:
                    eids[q] = compute_eid(ident.identity_key, ident.rotation_exponent, bt)
                sd = {EDDYSTONE_UUID: bytes([0x30, phone.claimed_tx0_dbm & 0xFF]) + eids[q]}
            for scanner, rssi in air.hear(rng, links, t, at=(x, y, PHONE_HEIGHT_M[c[1]]),
                                          p1m=phone.p1m_dbm, body=_body_loss(c[1], facing)):
                yield Advert(t, scanner, address, rssi, manufacturer_data=dict(md),
                             service_data=dict(sd))
        t += interval + rng.uniform(0.0, 0.01)  # advDelay


def _beacon_adverts(air: _Air, rng: random.Random, b: PlanBeacon, start: float,
                    end: float) -> Iterator[Advert]:
    r = air.r
    h = r.beacon_height_m[b.label]
    links = [_Link() for _ in air.scanners]
    obs = [_obstruction(r, air.plan, (b.x_m, b.y_m, h), (sx, sy, hw.height_m))
           for _n, sx, sy, hw in air.scanners]
    address = _address(rng)
    md = _ibeacon(b.major, b.minor, b.measured_power_dbm)
    t = start + rng.uniform(0, r.beacon_interval_s)
    while t <= end:
        for scanner, rssi in air.hear(rng, links, t, at=(b.x_m, b.y_m, h),
                                      p1m=r.beacon_p1m_dbm[b.label], body=None,
                                      obstruction=obs):
            yield Advert(t, scanner, address, rssi, manufacturer_data=dict(md))
        t += r.beacon_interval_s + rng.uniform(0.0, 0.01)


def adverts(store: FamilyStore, seed: int | None = None) -> Iterator[Advert]:
    """Every advert every scanner hears (phones, badges, zone beacons), in time order."""
    if not isinstance(store, AltStore) or store.alt is None:
        raise TypeError("adverts(): a store of this family (stores_alt.generate)")
    base = store.seed * 1_000_003 + 17 if seed is None else seed * 1_000_003 + 29
    air = _Air(store, random.Random(base))
    streams: list[Iterator[Advert]] = []
    k = 0
    for p in store.sim.people:
        k += 1
        streams.append(_person_adverts(air, random.Random(base + 7919 * k), p,
                                       store.phones[p.id], None))
    for b in store.badges:
        k += 1
        streams.append(_person_adverts(air, random.Random(base + 7919 * k), b.person,
                                       store.phones[b.person.id], b.minor))
    for pb in store.plan.beacons:
        k += 1
        streams.append(_beacon_adverts(air, random.Random(base + 7919 * k), pb,
                                       store.sim.start, store.sim.end))
    yield from heapq.merge(*streams, key=lambda a: a.ts)
