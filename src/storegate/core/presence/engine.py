"""The presence engine: resolved adverts in, visit events out. Pure and clock-injected.

Per consenting customer (an Eddystone-EID resolved to a pseudonym):

* **RSSI per scanner** is the median of the samples of the last ``window_s`` seconds,
  counted only with ``min_samples`` of them: robust to the single-sample outliers and
  deep fades of indoor radio, where a mean or a single reading flaps.
* **Zone**: the zone whose scanners hear the customer strongest, above the zone's own
  floor. A challenger takes over only when stronger by ``switch_margin_db`` for
  ``switch_hold_s`` (hysteresis: no room flapping).
* **Visits** (the store, and each zone): ``entered`` once presence has lasted the
  minimum (passers-by never count), ``dwelled`` at each threshold, ``exited`` after
  ``exit_after_s`` of absence with the exit time set to the last evidence, not to the
  moment the timeout fired.
* **The door** (a zone configured ``entrance``): the store visit follows interior
  evidence, not any sighting: see :meth:`PresenceEngine._door`. Entrance and transit
  zones are passed through, never visited.

Unresolved adverts never reach this engine as people: the caller counts them
anonymously; nothing about them is kept here.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.ids import Uuid7Generator
from storegate.core.presence.calibration import EXPONENT_PRIOR
from storegate.core.presence.correction import NONE, Correction
from storegate.core.presence.settings import PresenceSettings


@dataclass(slots=True)
class _Visit:
    visit_id: str
    zone: str | None
    first: float
    last: float
    entered: bool = False
    dwell_index: int = 0
    held_until: float = float("-inf")  # a check-in keeps it open until then (no BLE)
    # the minimum presence counts from here (a zone visit's start may be dated earlier
    # than its evidence is clear: to when its levels crossed, before the margin was)
    counted: float | None = None


@dataclass(frozen=True, slots=True)
class VisitState:
    """An open visit, as a check-in answers it (the customer's own visit)."""

    visit_id: str
    zone: str | None
    first: float
    last: float  # the last evidence
    entered: bool
    held_until: float | None  # a check-in holds it open until then


# How long before the interior evidence a pass under the entrance scanner still dates
# the entry: walking in and a first short stop, not an earlier walk past the window.
DOOR_LOOKBACK_S = 120.0
PENDING_ZONES = 4  # zone stays kept while a visit is being confirmed
DEFAULT_ZONE_FLOOR_DBM = -80.0  # a zone's floor with no calibration and none configured
MAD_TO_SIGMA = 1.4826  # a normal sample's sigma from its median absolute deviation
MEDIAN_SE = 1.2533  # a median's standard error, in sigma / sqrt(n) (normal samples)


class _Samples:
    """Recent (time, RSSI) samples of one scanner, compact: a phone is heard by many
    scanners and a busy store tracks thousands of phones."""

    __slots__ = ("rssi", "ts")

    def __init__(self) -> None:
        self.ts = array("d")
        self.rssi = array("h")

    def add(self, ts: float, rssi: int, cap: int) -> None:
        self.ts.append(ts)
        self.rssi.append(rssi)
        if len(self.ts) > cap:
            del self.ts[0], self.rssi[0]

    def expire(self, horizon: float) -> None:
        n = 0
        while n < len(self.ts) and self.ts[n] < horizon:
            n += 1
        if n:
            del self.ts[:n], self.rssi[:n]

    def recent(self, since: float) -> int:
        """How many of the samples are since ``since`` (the newest ones)."""
        n = len(self.ts)
        k = 0
        while k < n and self.ts[n - 1 - k] >= since:
            k += 1
        return k

    def median(self, since: float = float("-inf"), least: int = 1) -> float | None:
        """The median of the samples since ``since``; None with fewer than ``least``."""
        k = self.recent(since)
        if k < least or k == 0:
            return None
        return _median(sorted(self.rssi[len(self.rssi) - k:]))

    def median_se(self, median: float, since: float = float("-inf")) -> float:
        """The standard error of :meth:`median` (of the samples since ``since``), from
        the samples' own spread (their median absolute deviation, a robust sigma; at
        least one whole dBm, what a reading is rounded to): how far this window's median
        may be from the phone's true level here. A phone on the move spreads its samples
        too, and is judged less sure."""
        k = max(self.recent(since), 1)
        values = self.rssi[len(self.rssi) - k:]
        sigma = max(MAD_TO_SIGMA * _median(sorted(abs(v - median) for v in values)), 1.0)
        return MEDIAN_SE * sigma / math.sqrt(k)


def _median(values: list[float] | list[int]) -> float:
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


@dataclass(slots=True)
class _Track:
    samples: dict[str, _Samples] = field(default_factory=dict)
    store: _Visit | None = None
    zone: _Visit | None = None
    challenger: str | None = None
    challenger_since: float = 0.0
    evaluated: float = float("-inf")
    # door mode (an entrance zone configured): the current run of interior evidence,
    # the last of it, and the entrance's strongest moment (arriving, or leaving)
    interior_since: float | None = None
    # how much of that run had interior evidence (gaps of more than a window not counted)
    interior_for: float = 0.0
    interior_zone: str | None = None
    # zone stays that ended while the visit was still being confirmed (a short first
    # stop): said once the visit opens, with their own times (bounded)
    pending_zones: list[_Visit] = field(default_factory=list)
    # the entered zone visit a challenger just took over from: it ends (at the switch)
    # once the challenger's visit is entered, and goes on if the switch reverses first
    # (a flap between two zones is no visit, and must not split the one before it)
    prev: _Visit | None = None
    last_inside: float = float("-inf")
    door_peak: float = float("-inf")
    door_peak_ts: float = float("-inf")
    # the entrance's strongest recent level (and when): a deep fade on the entrance link
    # lowers it, or silences it, for a few seconds; that is no evidence of being inside
    door_held: float = float("-inf")
    door_held_ts: float = float("-inf")
    # door mode: the last time the phone was heard at the door or outside (the entrance
    # scanner the strongest, nothing inside as strong), and the last time it was heard
    # at all (a scanner with enough of it): without either since, it is silent, not gone
    outside_ts: float = float("-inf")
    heard_ts: float = float("-inf")
    door_held_se: float = 0.0  # that level's standard error
    # the entrance's levels of the last entry_confirm_s, (ts, level, standard error),
    # as a running maximum (each entry stronger than every later one): clear evidence
    # must beat the strongest; a deep fade hides the entrance for seconds, not that long
    door_mem: list[tuple[float, float, float]] = field(default_factory=list)
    in_visit: float = float("-inf")  # the last evaluation with a store visit open
    clear_since: float | None = None  # clear interior evidence since (pending a visit)
    # the entrance's level at the pass a visit ended through: until the phone is gone,
    # the pavement it stays on is told from the counter against it, as while leaving
    left_level: float = float("-inf")
    # the strongest zone at each evaluation of the last 2 x window_s, (ts, zone,
    # seconds it stands for): when a switch happens, since when the new zone has led
    leads: list[tuple[float, str, float]] = field(default_factory=list)
    # half the span of the samples the current levels are the medians of: the levels
    # describe the phone that long ago (a slow phone's window reaches back further)
    lag: float = 0.0


class PresenceEngine:
    def __init__(self, settings: PresenceSettings, rand: Callable[[int], bytes]) -> None:
        self.settings = settings
        self._rand = rand
        self._ids = Uuid7Generator()
        self._tracks: dict[str, _Track] = {}
        self._configured = {z.id: z.min_rssi_dbm for z in settings.zones}
        self._correction = NONE
        self._floors: dict[str, float] = {}
        self._inside: dict[str, float] = {}
        self.use(NONE)

    def use(self, correction: Correction) -> None:
        """Decide with a calibration from now on (``correction.py``): each scanner's
        offset taken out before comparisons, floors derived from the fitted model where
        the zone configures none. ``NONE``: the configured values, uncorrected."""
        self._correction = correction
        default = DEFAULT_ZONE_FLOOR_DBM
        self._floors = {z: (v if v is not None else correction.zone_floor_dbm.get(z, default))
                        for z, v in self._configured.items()}
        self._inside = {z: correction.inside_floor_dbm.get(z, self.settings.inside_min_rssi_dbm)
                        for z in self._configured}

    @property
    def correction(self) -> Correction:
        return self._correction

    @property
    def tracked(self) -> int:
        return len(self._tracks)

    def _new_visit(self, zone: str | None, ts: float) -> _Visit:
        return _Visit(self._ids.next(int(ts * 1000), self._rand(8)), zone, ts, ts)

    # --- input ---------------------------------------------------------------------

    def observe(self, customer: str, scanner: str, rssi: int, ts: float) -> list[ev.EventDraft]:
        """One sighting of a consenting customer by one scanner."""
        if rssi < self.settings.store_min_rssi_dbm:
            return []
        out: list[ev.EventDraft] = []
        track = self._tracks.get(customer)
        if track is None:
            track = self._tracks[customer] = _Track()
        q = track.samples.get(scanner)
        if q is None:
            q = track.samples[scanner] = _Samples()
        q.add(ts, rssi, self.settings.max_samples)
        door = bool(self.settings.entrances)
        if ts - track.evaluated < self.settings.evaluate_every_s:
            # Within one evaluation step: the sample is kept, the decision waits. A
            # phone heard by many scanners would otherwise cost a full re-evaluation
            # per advert for no change in outcome.
            if track.store is not None and not door:
                track.store.last = max(track.store.last, ts)
            return out
        track.evaluated = ts
        se: dict[str, float] | None = {} if door and track.store is None else None
        medians = self._strength(track, ts, se)
        if door:
            self._door(customer, track, medians, ts, out, se=se or {})
            return out
        if not any(v >= self._inside[z] for z, v in medians.items()):
            # Heard, but not placed in any zone (e.g. on the pavement): no evidence of
            # being inside; an idle track is dropped by tick().
            return out
        if track.store is None:  # it began with the first sample of the evidence window
            first = min(q.ts[0] for q in track.samples.values() if q.ts)
            track.store = self._new_visit(None, first)
        track.store.last = max(track.store.last, ts)
        self._progress(customer, track.store, self.settings.min_presence_s, out)
        levels = {z: v for z, v in medians.items() if v >= self._floors[z]}
        if levels:  # no zone close enough: the current zone visit may time out
            self._assign_zone(customer, track, levels, ts, out)
        return out

    def _door(self, customer: str, track: _Track, medians: dict[str, float], ts: float,
              out: list[ev.EventDraft], *, se: dict[str, float]) -> None:
        """The store visit as a person at the door would judge it. The entrance scanner
        hears the pavement as well as the doorway, so it never places a phone inside on
        its own: inside means an interior zone heard about as strongly as the entrance
        (both heard by the same phone: its unknown transmit power cancels; both corrected
        by their scanners' calibrated offsets). A visit opens after ``entry_confirm_s``
        of that beyond the shop front following a pass under the entrance scanner, at
        once on clear evidence (``entry_clear_*``), after ``front_confirm_s`` in one zone
        on the shop front following a pass or beyond it without one (on the shop front
        without one: ``front_only_confirm_s``); it is said at once, dated back to that pass (the
        phone's strongest moment there); it ends ``outside_after_s`` after
        the last interior evidence, dated to the pass under the entrance scanner on the
        way out if there was one, else to that last evidence; after that pass, a front
        zone heard weaker than the entrance heard the pass is the pavement."""
        st = self.settings
        if not medians:
            return  # no scanner has enough of the phone yet: no evidence either way
        track.heard_ts = ts
        at_door = max((v for z, v in medians.items() if z in st.entrances), default=None)
        inner = {z: v for z, v in medians.items() if z not in st.entrances}
        interior_zone = max(inner, key=lambda z: inner[z]) if inner else None
        interior = inner[interior_zone] if interior_zone is not None else None
        store = track.store
        if store is None:
            out_level = track.left_level
        else:
            out_level = track.door_peak if track.door_peak_ts > track.last_inside \
                else float("-inf")
        if interior is not None and interior_zone in st.fronts \
                and interior < out_level - st.stay_margin_db:
            # Leaving: out under the entrance scanner (it heard the phone strongest of
            # all) since the last interior evidence, and now a front zone (a checkout by
            # the window) leads, weaker than the entrance heard the pass. That is the
            # pavement: the front's scanners hear it there about as well as the
            # entrance's, so no margin between them tells it from the counter; the level
            # does. Someone back at the counter is about as close to its scanner as the
            # pass was to the door's (the same phone: its transmit power cancels), the
            # pavement is farther from both. A zone beyond the front is inside as ever.
            interior = None
        # the standard error of the entrance's level (that of its scanner heard best)
        door_se = 0.0 if at_door is None else max(
            (se.get(z, 0.0) for z in st.entrances if medians.get(z) == at_door), default=0.0)
        if at_door is not None and (at_door >= track.door_held
                                    or ts - track.door_held_ts > st.window_s):
            track.door_held, track.door_held_ts, track.door_held_se = at_door, ts, door_se
        mem = track.door_mem
        if store is None and at_door is not None:
            while mem and mem[-1][1] <= at_door:
                mem.pop()
            mem.append((ts, at_door, door_se))
        while mem and (store is not None or ts - mem[0][0] > st.entry_confirm_s):
            del mem[0]
        if store is None and ts - track.door_held_ts <= st.window_s:
            # Pending a visit, the entrance counts at its strongest of the last window:
            # a fade (one link, seconds) that drags its median down, or loses the phone
            # at the entrance scanner, must not make a passer-by's nearest interior
            # scanner look the stronger. Someone really inside stays so beyond it.
            at_door = track.door_held if at_door is None else max(at_door, track.door_held)
        margin = st.interior_margin_db if store is None else st.stay_margin_db
        # Relative evidence: once inside, a zone beyond the shop front heard clearly
        # stronger than the entrance (or the entrance not hearing the phone at all) is
        # still inside, however weak the phone (body, bag, shelves): the absolute floor
        # alone loses weak phones. Not to open a visit: someone outside a window by an
        # inner zone is heard that way too.
        relative = (store is not None and interior is not None
                    and interior_zone is not None and interior_zone not in st.fronts
                    and (at_door is None or interior >= at_door + st.clear_of_door_db))
        inside = (interior is not None and interior_zone is not None
                  and (interior >= self._inside[interior_zone] or relative)
                  and (at_door is None or interior >= at_door - margin))
        lag = st.window_s / 2  # a window's median describes its middle, not its end
        opened = False
        if inside and interior is not None and store is None \
                and interior_zone != track.interior_zone:
            # Pending a visit, evidence in front zones must be one place: someone walking
            # along the shop front is heard strongest by one front zone after another, a
            # shopper stays in one. Walking on from one zone beyond the front to another
            # is still inside, and keeps the run. A challenger within the switch margin
            # changes nothing.
            held = track.interior_zone
            if held is None or held not in inner or inner[held] + st.switch_margin_db <= interior:
                if held is None or held in st.fronts or interior_zone in st.fronts:
                    track.interior_since = track.clear_since = None
                track.interior_zone = interior_zone
        if inside:
            if track.interior_since is None:
                track.interior_since, track.interior_for = ts, 0.0
            elif ts - track.last_inside <= st.window_s:
                track.interior_for += ts - track.last_inside
            track.last_inside = ts
            # Came in past the entrance scanner, and placed beyond the shop front: a few
            # seconds confirm it. Evidence in a front zone (someone walking along the
            # window is placed there too), or without a pass under the entrance scanner
            # (lost in a fade, or someone at the store's side): the longer confirmation.
            passed = track.door_peak_ts >= track.interior_since - DOOR_LOOKBACK_S
            front = track.interior_zone in st.fronts or interior_zone in st.fronts
            quick = passed and not front
            # Evidence only on the shop front, and no pass under the entrance scanner:
            # what someone walking along the window gives (at the end of the front, or
            # along a wide front zone, one zone leads for as long as a shopper's stop):
            # front_only_confirm_s, longer than walking past it. (A visit that ended
            # moments ago and resumes at a checkout: front_confirm_s, as before.)
            resumed = ts - track.in_visit <= DOOR_LOOKBACK_S
            confirm = st.entry_confirm_s if quick else (
                st.front_confirm_s if passed or resumed or not front
                else st.front_only_confirm_s)
            if store is None and quick and interior is not None:
                # clear evidence: the phone nearer the interior scanner than the entrance
                # by entry_clear_ratio (in dB through the store's path-loss exponent),
                # beyond both estimates' noise; the entrance at its strongest over the
                # last entry_confirm_s (a fade hides it for seconds)
                _, ref, ref_se = mem[0] if mem else (ts, track.door_held, track.door_held_se)
                n = self._correction.exponent or EXPONENT_PRIOR  # uncalibrated: typical
                need = 10 * n * math.log10(st.entry_clear_ratio) + st.entry_clear_z * \
                    math.hypot(se.get(interior_zone or "", math.inf), ref_se)
                if interior - ref >= need:
                    if track.clear_since is None:
                        track.clear_since = ts
                    if ts - track.clear_since >= st.entry_clear_s:
                        confirm = 0.0
                else:
                    track.clear_since = None
            if store is None and (confirm == 0.0 or track.interior_for >= confirm):
                first = track.interior_since - lag
                if passed:  # dated to that pass (maybe via a short first stop)
                    first = min(first, track.door_peak_ts - lag)
                store = track.store = self._new_visit(None, first)
                opened = True
                track.left_level = float("-inf")
            if store is not None:
                store.last = max(store.last, ts - lag)
                track.door_peak = float("-inf")  # the way out is measured from here
        else:
            track.clear_since = None
            # at the door: the entrance scanner strongest of all (no interior one as strong)
            door_floor = min((self._inside[z] for z in medians if z in st.entrances),
                             default=st.inside_min_rssi_dbm)
            # (as strong as at the door, or clearly stronger than anything inside: a weak
            # phone passing the door)
            passing = at_door is not None and (interior is None or at_door > interior) \
                and (at_door >= door_floor
                     or (interior is not None and at_door >= interior + st.clear_of_door_db))
            if at_door is not None and (
                    at_door >= door_floor if interior is None
                    else at_door >= interior + (0.0 if at_door >= door_floor
                                                else st.stay_margin_db)):
                # heard at the door or outside, not silent: the entrance the strongest, as
                # strongly as at the door or clearly; weak readings a dB apart (or a lone
                # weak one at the entrance) say nothing
                track.outside_ts = ts
            if passing and at_door is not None and (
                    at_door > track.door_peak or ts - track.door_peak_ts > 30.0):
                track.door_peak, track.door_peak_ts = at_door, ts
            # Pending a visit, a run beyond the shop front survives a few seconds without
            # interior evidence (a weak phone's median dips under the floor; a body turns):
            # what ends it is the absence that would end a visit (outside_after_s), or the
            # phone heard at the door or outside meanwhile. Not on the shop front (held
            # there, or a front zone leading the dip): there the pavement is heard too,
            # and a walker past the store's side leads there. What confirms is the time
            # with evidence (interior_for): a dip or a silence longer than a window does
            # not count.
            if store is not None or track.interior_zone in st.fronts \
                    or interior_zone in st.fronts \
                    or ts - track.last_inside > st.outside_after_s \
                    or track.outside_ts > track.last_inside:
                track.interior_since = None
        if store is not None:
            track.in_visit = ts
            # the confirmation was the minimum presence: entered as soon as it is made
            self._progress(customer, store, 0.0, out)
            if store.entered and track.pending_zones:
                self._flush_pending(customer, track, out)
            if opened and track.zone is not None:
                # a stay the confirmation overtook (clear evidence elsewhere while the
                # switch to there is still held): long enough, it is a visit
                self._progress(customer, track.zone, st.zone_min_presence_s, out)
        elif not inside:
            if track.zone is not None:  # nothing said yet: kept if a visit opens after all
                self._stash(track, track.zone)
            track.zone = track.challenger = None
            if ts - track.last_inside > DOOR_LOOKBACK_S:
                track.pending_zones = []
            return
        # zones as always once in the store (pending a visit: candidates, from interior
        # evidence only)
        levels = {z: v for z, v in medians.items()
                  if v >= self._floors[z] or (relative and z == interior_zone)}
        if levels:
            self._assign_zone(customer, track, levels, ts, out)

    def _door_exit(self, customer: str, track: _Track, now: float,
                   out: list[ev.EventDraft]) -> None:
        """Door mode: end the store visit once interior evidence is gone long enough (a
        zone visit without its zone's evidence ends as it always did). Silence is not an
        exit: a phone not heard at the door or outside since its last interior evidence
        (a zone visit: not heard at all since its zone's evidence) is held for
        ``silence_hold_s``."""
        store = track.store
        st = self.settings
        zv = track.zone
        left = track.outside_ts > track.last_inside or track.door_peak_ts > track.last_inside
        if store is not None and now - track.last_inside >= st.outside_after_s \
                and now >= store.held_until \
                and (left or now - track.last_inside >= st.silence_hold_s):
            # out, or silent for too long (not heard since: then dated to the last evidence)
            if track.door_peak_ts > track.last_inside and track.door_peak > float("-inf"):
                # out under the entrance scanner: dated to that pass, not to the pavement
                store.last = max(store.last, track.door_peak_ts - st.window_s / 2)
                track.left_level = track.door_peak
            for v in (track.prev, zv):  # no zone visit outlasts the store visit
                if v is not None:
                    v.last = max(v.first, min(v.last, store.last))
            if zv is not None:
                self._close(customer, zv, out)
                track.zone = None
            self._close(customer, store, out)
            track.store = None
            track.interior_since = None
            track.door_peak, track.door_peak_ts = float("-inf"), float("-inf")
            return
        if zv is not None and store is not None and now - zv.last >= st.exit_after_s \
                and now >= zv.held_until and (
                    track.heard_ts > zv.last or track.outside_ts > track.last_inside
                    or now - zv.last >= st.silence_hold_s):
            # heard since without its zone's evidence (or out): the zone visit ends; only
            # a silence holds it
            self._close(customer, zv, out)
            track.zone = None

    def _strength(self, track: _Track, now: float,
                  se: dict[str, float] | None = None) -> dict[str, float]:
        """Robust RSSI per zone (best of its scanners' medians), over the recent window;
        ``se``: filled with each of those medians' standard error. A phone that
        advertises slowly gets a longer window: it reaches back (up to
        ``sparse_window_s``) until the scanner hearing it best has ``2 * min_samples``
        samples. The phone's own rate decides, not one scanner's: a scanner that hears
        few of a fast phone's adverts is far from it, and stays uncounted."""
        st = self.settings
        horizon = now - max(st.window_s, st.sparse_window_s)
        enough = 2 * st.min_samples
        filled = horizon
        for q in track.samples.values():
            q.expire(horizon)
            if len(q.ts) >= enough:
                filled = max(filled, q.ts[-enough])
        since = min(now - st.window_s, filled)
        track.lag = (now - since) / 2
        best: dict[str, float] = {}
        offsets = self._correction.offsets_db
        for scanner, q in track.samples.items():
            zone = st.scanner_zone.get(scanner)
            median = q.median(since, st.min_samples)
            if median is None or zone is None:
                continue  # a lone reflection is not a position
            level = median - offsets.get(scanner, 0.0)  # as a mean scanner hears it
            if level > best.get(zone, -999.0):
                best[zone] = level
                if se is not None:
                    se[zone] = q.median_se(median, since)
        return best

    def _assign_zone(self, customer: str, track: _Track, levels: dict[str, float], ts: float,
                     out: list[ev.EventDraft]) -> None:
        leader = max(levels, key=lambda z: levels[z])
        self._lead(track, leader, ts)
        zv = track.zone
        if zv is not None and zv.zone in levels:
            zv.last = ts
            current_level = levels[zv.zone]
            if leader == zv.zone or levels[leader] < current_level + self.settings.switch_margin_db:
                track.challenger = None
                self._progress(customer, zv, self.settings.zone_min_presence_s, out)
                return
            if track.challenger != leader:
                track.challenger, track.challenger_since = leader, ts
                return
            if ts - track.challenger_since < self.settings.switch_hold_s:
                return
        # Switch (or first zone). The new zone's visit starts when it began to lead, less
        # the window's lag (a median describes the window's middle: the phone was there
        # half a window earlier); the old one ends there too (or at its last evidence,
        # if earlier): no overlap.
        start = counted = ts
        if track.challenger == leader:
            counted = track.challenger_since - self.settings.window_s / 2
            start = min(counted, self._led_since(track, leader, ts) - track.lag)
            if track.zone is not None:
                start = max(start, track.zone.first)
                counted = max(counted, track.zone.first)
        old = track.zone
        if old is not None:
            old.last = max(old.first, min(old.last, start))
        prev = track.prev
        if prev is not None and prev.zone == leader and (old is None or not old.entered):
            # back before the other zone's visit was entered: a flap, the visit goes on
            track.prev = None
            track.zone = prev
            prev.last = max(prev.last, ts)
            track.challenger = None
            self._progress(customer, prev, self.settings.zone_min_presence_s, out)
            return
        if old is not None:
            if track.store is None and self.settings.entrances:
                self._stash(track, old)
            elif old.entered:
                if prev is not None:
                    track.prev = None
                    self._close(customer, prev, out)
                track.prev = old  # ends once the new zone's visit is entered
        track.zone = self._new_visit(leader, start)
        track.zone.counted = counted
        track.zone.last = ts  # heard there now (its start may be dated back further)
        track.challenger = None
        self._progress(customer, track.zone, self.settings.zone_min_presence_s, out)

    def _lead(self, track: _Track, zone: str, ts: float) -> None:
        """Note the strongest zone of this evaluation (kept for 2 x ``window_s``)."""
        leads = track.leads
        window = self.settings.window_s
        weight = min(ts - leads[-1][0], window) if leads else 0.0
        leads.append((ts, zone, weight))
        n = 0
        while n < len(leads) and leads[n][0] < ts - 2 * window:
            n += 1
        if n:
            del leads[:n]

    @staticmethod
    def _led_since(track: _Track, zone: str, ts: float) -> float:
        """Since when ``zone`` has led: the earliest recent moment after which it was the
        strongest zone at least half of the time. The challenger's margin is crossed a
        little after the phone crossed into its zone (the levels cross first)."""
        since, own, total = ts, 0.0, 0.0
        for t, z, w in reversed(track.leads):
            total += w
            if z == zone:
                own += w
            if 2 * own >= total and z == zone:
                since = t - w
        return since

    def _stash(self, track: _Track, v: _Visit) -> None:
        if v.zone not in self.settings.transits \
                and v.last - v.first >= self.settings.zone_min_presence_s:
            track.pending_zones = [*track.pending_zones[-(PENDING_ZONES - 1):], v]

    def _flush_pending(self, customer: str, track: _Track, out: list[ev.EventDraft]) -> None:
        """The visit is entered: the zone stays of its confirmation, entered and exited."""
        for v in track.pending_zones:
            if track.store is not None and v.first >= track.store.first:
                self._progress(customer, v, self.settings.zone_min_presence_s, out)
                self._close(customer, v, out)
        track.pending_zones = []

    def _progress(self, customer: str, v: _Visit, min_presence: float,
                  out: list[ev.EventDraft]) -> None:
        if v.zone is not None:  # a zone visit counts only inside an entered store visit
            if v.zone in self.settings.transits:
                return  # passed through, not visited
            store = self._tracks[customer].store
            if store is None or not store.entered:
                return
        if not v.entered and v.last - (v.first if v.counted is None else v.counted) \
                >= min_presence:
            if v.zone is not None:  # the zone before this one ends first (said in order)
                self._end_prev(customer, v, out)
            v.entered = True
            out.append(self._draft(ev.VISIT_ENTERED, customer, v, v.last))
        while (v.entered and v.dwell_index < len(self.settings.dwell_thresholds_s)
               and v.last - v.first >= self.settings.dwell_thresholds_s[v.dwell_index]):
            out.append(self._draft(ev.VISIT_DWELLED, customer, v, v.last,
                                   dwell=self.settings.dwell_thresholds_s[v.dwell_index]))
            v.dwell_index += 1

    def _end_prev(self, customer: str, v: _Visit, out: list[ev.EventDraft]) -> None:
        track = self._tracks.get(customer)
        if track is not None and track.prev is not None and track.prev is not v:
            prev, track.prev = track.prev, None
            self._close(customer, prev, out)

    def _close(self, customer: str, v: _Visit, out: list[ev.EventDraft]) -> None:
        self._end_prev(customer, v, out)  # ended at the switch, before anything after it
        if v.entered:  # a candidate that never reached the minimum was a passer-by
            out.append(self._draft(ev.VISIT_EXITED, customer, v, v.last))

    # --- time ----------------------------------------------------------------------

    def tick(self, now: float) -> list[ev.EventDraft]:
        """Close visits whose evidence is older than ``exit_after_s``."""
        out: list[ev.EventDraft] = []
        gone: list[str] = []
        door = bool(self.settings.entrances)
        for customer, track in self._tracks.items():
            if door:
                self._door_exit(customer, track, now, out)
                # silent: dropped, unless it was being confirmed (placed beyond the shop
                # front, not at the door since) recently enough to count once heard again
                if track.store is None and all(
                        not q.ts or now - q.ts[-1] >= self.settings.exit_after_s
                        for q in track.samples.values()) \
                        and not (now - track.last_inside <= DOOR_LOOKBACK_S
                                 and track.door_peak_ts < track.last_inside
                                 and track.interior_zone not in self.settings.fronts):
                    gone.append(customer)
                continue
            if track.zone is not None and now - track.zone.last >= self.settings.exit_after_s \
                    and now >= track.zone.held_until:
                self._close(customer, track.zone, out)
                track.zone = None
            if track.store is not None and now - track.store.last >= self.settings.exit_after_s \
                    and now >= track.store.held_until:
                self._close(customer, track.store, out)
                gone.append(customer)
            elif track.store is None and all(
                not q.ts or now - q.ts[-1] >= self.settings.exit_after_s
                for q in track.samples.values()
            ):
                gone.append(customer)  # only ever heard from outside
        for customer in gone:
            del self._tracks[customer]
        return out

    def close_all(self) -> list[ev.EventDraft]:
        """End every visit now (shutdown): exits carry the last evidence as usual."""
        out: list[ev.EventDraft] = []
        for customer, track in self._tracks.items():
            if track.zone is not None:
                self._close(customer, track.zone, out)
            if track.store is not None:
                self._close(customer, track.store, out)
        self._tracks.clear()
        return out

    def present(self) -> dict[str | None, int]:
        """Customers with an entered visit, per zone; ``None`` counts the store."""
        out: dict[str | None, int] = {None: 0}
        for track in self._tracks.values():
            if track.store is not None and track.store.entered:
                out[None] += 1
            if track.zone is not None and track.zone.entered:
                out[track.zone.zone] = out.get(track.zone.zone, 0) + 1
        return out

    def check_in(self, customer: str, zone: str, ts: float, *,
                 hold_s: float) -> list[ev.EventDraft]:
        """The customer scanned a zone's poster at ``ts``: strong evidence that they
        are in that zone now. A scan is deliberate, so the store visit and the zone
        visit are entered at once (not after the minimum presence), opened if need be
        (the phone may never advertise) or confirmed if BLE already placed them; the
        zone visit ends a different current one, as a zone switch does. Both stay open
        for ``hold_s`` without further evidence; BLE placing the customer elsewhere
        still switches zones, and BLE evidence carries the visits on past the hold.
        An exit keeps the engine's rule: its time is the last evidence (the scan or a
        later sighting), the hold does not invent dwell time."""
        if zone not in self._floors:
            raise ValueError(f"zone {zone!r} is not one of this store's zones")
        track = self._tracks.get(customer)
        if track is None:
            track = self._tracks[customer] = _Track()
        out: list[ev.EventDraft] = []
        if track.store is None:
            track.store = self._new_visit(None, ts)
        store = track.store
        store.last = max(store.last, ts)
        store.held_until = max(store.held_until, ts + hold_s)
        track.last_inside = max(track.last_inside, ts)  # door mode: a scan is inside
        self._progress(customer, store, 0.0, out)
        zv = track.zone
        if zv is None or zv.zone != zone:
            if zv is not None:  # the old zone ends where the new one begins, no overlap
                zv.last = max(zv.first, min(zv.last, ts))
                self._close(customer, zv, out)
            zv = track.zone = self._new_visit(zone, ts)
        track.challenger = None  # a scan settles where they are
        zv.last = max(zv.last, ts)
        zv.held_until = max(zv.held_until, ts + hold_s)
        self._progress(customer, zv, 0.0, out)
        return out

    def visits(self, customer: str) -> tuple[VisitState | None, VisitState | None]:
        """The customer's open (store, zone) visits."""
        track = self._tracks.get(customer)
        if track is None:
            return None, None
        return _state(track.store), _state(track.zone)

    def forget(self, customer: str) -> None:
        """Consent withdrawn or erasure: drop all state, emit nothing more."""
        self._tracks.pop(customer, None)

    # --- output --------------------------------------------------------------------

    def _draft(self, t: ev.EventType, customer: str, v: _Visit, at: float,
               dwell: float | None = None) -> ev.EventDraft:
        entered_at = ev.rfc3339(v.first)
        data: p.Payload
        if t is ev.VISIT_ENTERED:
            data = p.VisitEntered(visit_id=v.visit_id, customer=customer, zone=v.zone,
                                  entered_at=entered_at)
        elif t is ev.VISIT_DWELLED:
            data = p.VisitDwelled(visit_id=v.visit_id, customer=customer, zone=v.zone,
                                  entered_at=entered_at, dwell_s=dwell or 0.0)
        else:
            data = p.VisitExited(visit_id=v.visit_id, customer=customer, zone=v.zone,
                                 entered_at=entered_at, exited_at=ev.rfc3339(v.last),
                                 dwell_s=round(v.last - v.first, 3))
        return ev.EventDraft(t, f"visit/{v.visit_id}", at, data)


def _state(v: _Visit | None) -> VisitState | None:
    if v is None:
        return None
    held = v.held_until if v.held_until != float("-inf") else None
    return VisitState(v.visit_id, v.zone, v.first, v.last, v.entered, held)
