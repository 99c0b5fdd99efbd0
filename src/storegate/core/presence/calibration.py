"""Self-calibration from the store's own fixed beacons (pure; time comes with the data).

Every zone beacon at a known place is heard by the scanners at known places: each
scanner↔beacon pair is a free, continuous measurement of the store's radio. The model
(log-distance path loss, DOMAIN.md §1) is

    RSSI(scanner s, beacon b) = P_b - 10·n·log10(d_sb) + o_s + noise

with ``n`` the store's path-loss exponent, ``o_s`` a receive offset per scanner (antenna,
enclosure, mounting) and ``P_b`` each beacon's RSSI at 1 m. It is linear in (n, o, P), so
the fit is weighted least squares, made robust twice: each pair is summarised by the
median of per-bucket medians (a fade or a burst of reflections moves one bucket, not
the pair), and the pairs are re-weighted with Huber's rule (a beacon moved off its
plan position, or a pair behind a freezer, is down-weighted, not obeyed).

Gauge: o and P trade off exactly (o_s + c, P_b - c fit the same data), so the offsets of
each connected group of scanners are fixed to mean zero. Bounds: n in [1.6, 4.5],
offsets ±12 dB, powers in [-90, -30] dBm. An exponent or offset that runs into one is
held there and the rest re-fitted (a group with an offset held at its bound is pinned by
it, not shifted to mean zero); a beacon whose power runs into one is not what the plan
says it is (another model, another place) and leaves the fit. Each is flagged. A fit
that differs from the median of the recent ones (n by more than 0.3, an offset by more
than 3 dB) is flagged too.

Cost: ``observe`` is O(1) (a sample appended to its pair's open bucket; ~0.6 us). A fit
is O(pairs) to build the normal equations, the beacons' powers eliminated (each P_b
touches only its own pairs: one rank-1 update per beacon), plus O(S^3) for S positioned
scanners; measured here: 1.4 ms for 8 scanners x 12 beacons, 20 ms for 20 x 40, 80 ms
for 40 x 80, every ``interval_s`` (30 s by default).

Facts from ESPresense-companion (its optimisers, read for this): it fits per-receiver
``rx_adj`` and a global ``absorption`` (the exponent) by Nelder-Mead with default
bounds 2.5-3.5 and rx_adj -15..25 dB, weights pairs by inverse RSSI variance, assumes
-59 dBm at 1 m, floors map distances at 0.1 m and does not fix the gauge between
receiver and transmitter adjustments. Ours is a closed-form weighted fit instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

EXPONENT_MIN: Final = 1.6
EXPONENT_MAX: Final = 4.5
OFFSET_MAX_DB: Final = 12.0
POWER_MIN_DBM: Final = -90.0
POWER_MAX_DBM: Final = -30.0
EXPONENT_PRIOR: Final = 2.7  # used only where the data say nothing about n
EXPONENT_PRIOR_SD: Final = 2.0  # weak: worth a handful of pairs
MIN_DISTANCE_M: Final = 0.1  # a beacon on the scanner: log10(0) is no distance
RSSI_MIN_DBM: Final = -127  # what a BLE RSSI byte can say
RSSI_MAX_DBM: Final = 20
MAX_BUCKET_SAMPLES: Final = 64  # a bucket's median needs no more (bounds memory per pair)
MIN_PAIR_SAMPLES: Final = 5  # fewer in the window: the pair sits the fit out
VAR_FLOOR_DB2: Final = 1.0  # a pair whose buckets agree by chance is not infinitely sure
MODEL_SD_FLOOR_DB: Final = 0.5
HUBER_K: Final = 1.5
IRLS_ROUNDS: Final = 10
BOUND_PASSES: Final = 4
HISTORY: Final = 8  # recent fits a new one is compared with
DISAGREE_EXPONENT: Final = 0.3
DISAGREE_OFFSET_DB: Final = 3.0
EXPONENT_SE_MAX: Final = 0.5  # a larger standard error: n is not identified by the plan
# pairs beyond the unknowns they pin: with fewer, each pair is fitted exactly (residuals
# about 0), so nothing in the data can show the model wrong; such a fit is not used
MIN_REDUNDANCY: Final = 2
# A pair that heard fewer than this share of its beacon's adverts (against the beacon's
# best-heard pair) has its median below the scanner's floor: it says only "weak" and sits
# out. Between this and 1 its level is read at the quantile that undoes the censoring.
CENSOR_MIN_SHARE: Final = 0.6
# quantiles kept per bucket (0, 0.05, ... 0.5): enough to read any censoring-corrected
# median of a pair heard at least CENSOR_MIN_SHARE of the time, and bounded in memory
BUCKET_QUANTILES: Final = tuple(i / 20 for i in range(11))
CENSOR_MARGIN_DB: Final = 6.0  # predicted this far above a scanner's floor: usable
CENSOR_PASSES: Final = 3
FLOOR_QUANTILE: Final = 0.005  # of a scanner's samples below its estimated floor
# weaker pair levels are at most radios' sensitivity; and a scanner that never heard
# anything weaker is still assumed to lose adverts about this low (its floor is unseen)
CENSOR_LEVEL_DBM: Final = -95.0
TYPICAL_PHONE_AT_1M_DBM: Final = -59.0  # a common iPhone/Android figure (iBeacon default)

Position = tuple[float, ...]  # metres: (x, y) or (x, y, z)
State = Literal["no-plan", "waiting", "fitted"]


def distance(a: Position, b: Position) -> float:
    """Metres between two plan positions (a missing height counts as the same height)."""
    dz = (a[2] if len(a) > 2 else 0.0) - (b[2] if len(b) > 2 else 0.0)
    return max(MIN_DISTANCE_M, math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + dz * dz))


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def _quantiles(xs: list[float]) -> tuple[float, ...]:
    """The BUCKET_QUANTILES of ``xs`` (linear between order statistics; the last is the
    median)."""
    s = sorted(xs)
    out = []
    for q in BUCKET_QUANTILES:
        pos = q * (len(s) - 1)
        i = int(pos)
        j = min(i + 1, len(s) - 1)
        out.append(s[i] + (s[j] - s[i]) * (pos - i))
    return tuple(out)


def _at(quants: tuple[float, ...], q: float) -> float:
    """Quantile ``q`` (0..0.5) from a bucket's BUCKET_QUANTILES."""
    pos = min(len(quants) - 1.0, max(0.0, q * 20))
    i = int(pos)
    j = min(i + 1, len(quants) - 1)
    return quants[i] + (quants[j] - quants[i]) * (pos - i)


@dataclass(frozen=True, slots=True)
class PairSummary:
    """What the fit uses of one scanner↔beacon pair: a robust level and its spread."""

    scanner: str
    beacon: str
    distance_m: float
    rssi_dbm: float  # median of the window's bucket medians
    variance_db2: float  # of that level (spread of bucket medians / buckets)
    samples: int


@dataclass(frozen=True, slots=True)
class CalibrationFit:
    """One fit: the store's radio model and how far to trust it."""

    state: State
    fitted_at: float | None = None
    exponent: float | None = None
    exponent_se: float | None = None  # standard error; large: the plan does not pin n
    offsets_db: Mapping[str, float] = field(default_factory=dict)  # per positioned scanner
    powers_dbm: Mapping[str, float] = field(default_factory=dict)  # per beacon, at 1 m
    pairs: int = 0
    samples: int = 0
    residual_rms_db: float | None = None  # of the pair levels about the model
    downweighted_pairs: int = 0  # pairs the Huber rule did not fully believe
    at_bounds: tuple[str, ...] = ()  # "exponent", "offset:<scanner>", "power:<beacon>"
    disagrees: bool = False  # differs from the recent fits' median
    uncalibrated: tuple[str, ...] = ()  # scanners with no position: offset taken as 0
    # scanners that share no beacon with another scanner: their offset cannot be told
    # from their beacon's power, so it is held at 0 (as if uncalibrated)
    unlinked: tuple[str, ...] = ()
    groups: int = 0  # linked groups of scanners: more than one, offsets compare within
    # pairs used minus the unknowns they pin (n, offsets less one per group, powers);
    # None: not known (a fit made by hand)
    redundancy: int | None = None

    @property
    def checkable(self) -> bool:
        """The data can contradict the model: enough pairs beyond the unknowns."""
        return self.redundancy is None or self.redundancy >= MIN_REDUNDANCY

    @property
    def flagged(self) -> bool:
        return bool(self.at_bounds or self.unlinked) or self.disagrees or self.groups > 1 or (
            self.exponent_se is not None and self.exponent_se > EXPONENT_SE_MAX) or (
            not self.checkable)

    def flags(self) -> list[str]:
        out = [f"at-bound:{b}" for b in self.at_bounds]
        if self.disagrees:
            out.append("disagrees-with-recent-fits")
        if self.exponent_se is not None and self.exponent_se > EXPONENT_SE_MAX:
            out.append("exponent-not-identified")
        out += [f"offset-not-identified:{s}" for s in self.unlinked]
        if self.groups > 1:
            out.append(f"unlinked-groups:{self.groups}")
        if not self.checkable:
            out.append(f"too-few-pairs-to-check:{self.redundancy}")
        return out

    # --- what the engine may derive from the fit -----------------------------------

    def offset(self, scanner: str) -> float:
        """A scanner's receive offset; 0 for a scanner the fit does not know."""
        return self.offsets_db.get(scanner, 0.0)

    def expected_rssi(self, scanner: str, distance_m: float,
                      tx_at_1m: float = TYPICAL_PHONE_AT_1M_DBM) -> float:
        """The RSSI this scanner should report for a transmitter of ``tx_at_1m`` (its
        RSSI at 1 m) at ``distance_m``: an inside/outside or zone-radius threshold."""
        n = self.exponent if self.exponent is not None else EXPONENT_PRIOR
        return tx_at_1m - 10 * n * math.log10(max(MIN_DISTANCE_M, distance_m)) \
            + self.offset(scanner)

    def difference_db(self, scanner_a: str, scanner_b: str, distance_a: float,
                      distance_b: float) -> float:
        """RSSI at a minus RSSI at b for one phone at these distances. The phone's own
        transmit power cancels: the comparison holds for any phone."""
        n = self.exponent if self.exponent is not None else EXPONENT_PRIOR
        return (self.offset(scanner_a) - self.offset(scanner_b)) - 10 * n * (
            math.log10(max(MIN_DISTANCE_M, distance_a))
            - math.log10(max(MIN_DISTANCE_M, distance_b)))

    def distance_m(self, scanner: str, rssi: float,
                   tx_at_1m: float = TYPICAL_PHONE_AT_1M_DBM) -> float:
        """The distance this RSSI implies (inverse of :meth:`expected_rssi`)."""
        n = self.exponent if self.exponent is not None else EXPONENT_PRIOR
        return float(10 ** ((tx_at_1m + self.offset(scanner) - rssi) / (10 * n)))


@dataclass(slots=True)
class _Pair:
    distance_m: float
    # idx, the bucket's BUCKET_QUANTILES, its sample count
    buckets: deque[tuple[int, tuple[float, ...], int]] = field(default_factory=deque)
    open_idx: int | None = None
    open_samples: list[float] = field(default_factory=list)
    open_count: int = 0


@dataclass(slots=True)
class CalibrationCounters:
    samples: int = 0  # scanner↔beacon samples taken into a pair
    unplaced: int = 0  # a scanner or beacon without a position: nothing to learn
    rejected: int = 0  # an RSSI no radio reports
    late: int = 0  # older than a bucket already closed (out-of-order source)
    fits: int = 0


class Calibrator:
    """Windowed scanner↔beacon levels and the periodic fit over them.

    ``scanners``: positioned scanners; ``beacons``: positioned beacons (label ->
    position). ``all_scanners``: every configured scanner, so the fit can name the ones
    left uncalibrated. Memory is bounded by the plan: at most one pair per positioned
    scanner and beacon, each holding ``window_s / bucket_s`` buckets.
    """

    def __init__(self, scanners: Mapping[str, Position], beacons: Mapping[str, Position],
                 *, all_scanners: Iterable[str] = (), window_s: float = 900.0,
                 bucket_s: float = 30.0, interval_s: float = 30.0) -> None:
        if not (bucket_s > 0 and window_s >= bucket_s and interval_s > 0):
            raise ValueError("need 0 < bucket_s <= window_s and interval_s > 0")
        self.scanners = dict(scanners)
        self.beacons = dict(beacons)
        self.uncalibrated = tuple(sorted(set(all_scanners) - set(self.scanners)))
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.interval_s = interval_s
        self.counters = CalibrationCounters()
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self.censored_pairs = 0  # in the last fit: heard too rarely to trust (see summaries)
        # per scanner, how often it reported each whole dBm: its sensitivity (where it
        # censors) is the low tail, robust to a glitch sample (a bounded 148-slot list)
        self._levels: dict[str, list[int]] = {}
        self._history: deque[CalibrationFit] = deque(maxlen=HISTORY)
        self._next_fit = float("-inf")
        self.fit = CalibrationFit(state="no-plan" if not (scanners and beacons) else "waiting",
                                  uncalibrated=self.uncalibrated)

    def __bool__(self) -> bool:
        return bool(self.scanners and self.beacons)

    # --- input -----------------------------------------------------------------------

    def observe(self, scanner: str, beacon: str, rssi: float, ts: float) -> None:
        """One advert of a fixed beacon as one scanner heard it."""
        sp, bp = self.scanners.get(scanner), self.beacons.get(beacon)
        if sp is None or bp is None:
            self.counters.unplaced += 1
            return
        if not RSSI_MIN_DBM <= rssi <= RSSI_MAX_DBM or not math.isfinite(ts):
            self.counters.rejected += 1
            return
        key = (scanner, beacon)
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = _Pair(distance(sp, bp))
        idx = math.floor(ts / self.bucket_s)
        if pair.open_idx is None or idx > pair.open_idx:
            self._close(pair)
            pair.open_idx = idx
        elif idx < pair.open_idx and pair.buckets and idx <= pair.buckets[-1][0]:
            self.counters.late += 1  # a straggler whose bucket is closed (else: counted in)
            return
        pair.open_count += 1
        levels = self._levels.get(scanner)
        if levels is None:
            levels = self._levels[scanner] = [0] * (RSSI_MAX_DBM - RSSI_MIN_DBM + 1)
        levels[round(rssi) - RSSI_MIN_DBM] += 1
        if len(pair.open_samples) < MAX_BUCKET_SAMPLES:
            pair.open_samples.append(float(rssi))
        self.counters.samples += 1

    def floor_dbm(self, scanner: str) -> float:
        """The RSSI below which this scanner reported only FLOOR_QUANTILE of its beacon
        samples: about its sensitivity once it hears far beacons. A scanner that never
        heard anything weak is still assumed to lose adverts at CENSOR_LEVEL_DBM."""
        levels = self._levels.get(scanner)
        if not levels:
            return CENSOR_LEVEL_DBM
        need, seen = FLOOR_QUANTILE * sum(levels), 0
        for i, k in enumerate(levels):
            seen += k
            if seen > need:
                return min(float(i + RSSI_MIN_DBM), CENSOR_LEVEL_DBM)
        return CENSOR_LEVEL_DBM

    def _close(self, pair: _Pair) -> None:
        if pair.open_idx is not None and pair.open_samples:
            pair.buckets.append((pair.open_idx, _quantiles(pair.open_samples),
                                 pair.open_count))
        pair.open_idx, pair.open_samples, pair.open_count = None, [], 0

    def tick(self, now: float) -> CalibrationFit | None:
        """Fit if one is due (every ``interval_s``); the new fit, or None. Inline: the
        gateway fits off its event loop instead (:meth:`due`, :meth:`prepare`,
        :func:`fit_prepared`, :meth:`adopt`)."""
        if not self.due(now):
            return None
        return self.refit(now)

    def due(self, now: float) -> bool:
        """A fit is due (and is counted as started: the next one is ``interval_s`` on)."""
        if now < self._next_fit or not self:
            return False
        self._next_fit = now + self.interval_s
        return True

    # --- the fit ---------------------------------------------------------------------

    def summaries(self, now: float) -> list[PairSummary]:
        """Every pair with enough samples in the window, as the fit sees it. Buckets
        that ended by ``now`` are closed; buckets older than the window dropped.

        Censoring: a scanner hears only the adverts above its sensitivity, so the
        median of what a far pair heard is biased strong (measured: n 3.2 fitted as 2.4
        with a -100 dBm floor). A beacon advertises at one rate to every scanner, so the
        share ``f`` of its adverts a pair heard (against the beacon's best pair) is the
        share above the floor; the true median is then the ``(f - 1/2) / f`` quantile of
        what was heard (the lost ``1 - f`` are all below it). A pair that heard less
        than CENSOR_MIN_SHARE only bounds its level and sits out."""
        first = math.floor((now - self.window_s) / self.bucket_s) + 1
        raw: list[tuple[str, str, _Pair, list[tuple[float, ...]], int]] = []
        for (s, b), pair in self._pairs.items():
            if pair.open_idx is not None and (pair.open_idx + 1) * self.bucket_s <= now:
                self._close(pair)
            while pair.buckets and pair.buckets[0][0] < first:
                pair.buckets.popleft()
            quants = [q for _, q, _ in pair.buckets]
            count = sum(c for _, _, c in pair.buckets)
            if pair.open_samples and pair.open_idx is not None and pair.open_idx >= first:
                quants.append(_quantiles(pair.open_samples))  # the bucket in progress
                count += pair.open_count
            if count < MIN_PAIR_SAMPLES or not quants:
                continue
            raw.append((s, b, pair, quants, count))
        best: dict[str, int] = {}
        for _, b, _, _, count in raw:
            best[b] = max(best.get(b, 0), count)
        out = []
        for s, b, pair, quants, count in raw:
            share = count / best[b]
            if share < CENSOR_MIN_SHARE:
                continue
            q = (share - 0.5) / share
            meds = [_at(qs, q) for qs in quants]
            level = _median(meds)
            if level < CENSOR_LEVEL_DBM:
                continue
            mad = _median([abs(m - level) for m in meds]) * 1.4826
            var = max(VAR_FLOOR_DB2, mad * mad) / len(meds)
            out.append(PairSummary(s, b, pair.distance_m, level, var, count))
        self.censored_pairs = len(raw) - len(out)
        out.sort(key=lambda p: (p.scanner, p.beacon))  # deterministic order
        return out

    def prepare(self, now: float) -> Prepared:
        """What a fit at ``now`` needs, copied out of the windows (O(pairs), cheap): the
        fit itself (:func:`fit_prepared`) then touches nothing of this calibrator and may
        run on another thread."""
        pairs = self.summaries(now)
        return Prepared(now, tuple(pairs), {s: self.floor_dbm(s) for s in self.scanners},
                        self.uncalibrated, self.censored_pairs)

    def adopt(self, fit: CalibrationFit, censored: int = 0) -> CalibrationFit:
        """Take a fit made from :meth:`prepare`: compared with the recent ones (flagged
        if it disagrees), kept as the current fit."""
        self.counters.fits += 1
        self.censored_pairs = censored
        if fit.state == "fitted":
            fit = _compare(fit, list(self._history))
            self._history.append(fit)
        self.fit = fit
        return fit

    def refit(self, now: float) -> CalibrationFit:
        """Fit now, inline."""
        if not self:
            return self.fit  # no plan: nothing to fit, ever
        fit, censored = fit_prepared(self.prepare(now))
        return self.adopt(fit, censored)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A calibrator's data for one fit, detached from it."""

    now: float
    pairs: tuple[PairSummary, ...]
    floors: Mapping[str, float]  # per positioned scanner, its estimated sensitivity
    uncalibrated: tuple[str, ...]
    censored: int  # pairs the summaries left out


def fit_prepared(prep: Prepared) -> tuple[CalibrationFit, int]:
    """The fit over prepared data (pure, touches no calibrator): the fit, and how many
    pairs were censored in all."""
    pairs = list(prep.pairs)
    floors = prep.floors
    now = prep.now
    fit = fit_pairs(pairs, now=now, uncalibrated=prep.uncalibrated)
    used = pairs
    for _ in range(CENSOR_PASSES):
        if fit.state != "fitted":
            break
        # Keep the pairs the model puts well above their scanner's floor. Chosen by
        # prediction, not by their own level, so a far pair that happens to be
        # shadowed strong is not kept for that (selection bias); repeated, since a
        # fit biased by censoring predicts far pairs too strong.
        clear = [p for p in pairs if p.beacon in fit.powers_dbm and fit.expected_rssi(
            p.scanner, p.distance_m, fit.powers_dbm[p.beacon])
            >= floors[p.scanner] + CENSOR_MARGIN_DB]
        if not clear or clear == used:
            break
        narrower = fit_pairs(clear, now=now, uncalibrated=prep.uncalibrated)
        if not _pins_as_much(narrower, fit):
            break  # fewer pairs that no longer pin what more did: keep the wider fit
        used, fit = clear, narrower
    return fit, prep.censored + len(pairs) - len(used)


def _pins_as_much(fit: CalibrationFit, than: CalibrationFit) -> bool:
    """``fit`` identifies everything ``than`` does: no more linked groups or unlinked
    scanners, its exponent still pinned, nothing newly at a bound."""
    def se_ok(f: CalibrationFit) -> bool:
        return f.exponent_se is not None and f.exponent_se <= EXPONENT_SE_MAX
    return (fit.state == "fitted" and fit.groups <= than.groups
            and set(fit.unlinked) <= set(than.unlinked)
            and (se_ok(fit) or not se_ok(than))
            and set(fit.at_bounds) <= set(than.at_bounds))


# --- the estimator (batch, over pair summaries) ----------------------------------------


def _solve_dense(a: list[list[float]], rhs: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (the systems are a few dozen wide)."""
    k = len(rhs)
    m = [[*row, rhs[i]] for i, row in enumerate(a)]
    for c in range(k):
        p = max(range(c, k), key=lambda r: abs(m[r][c]))
        if abs(m[p][c]) < 1e-12:
            raise ZeroDivisionError("singular")
        m[c], m[p] = m[p], m[c]
        piv = m[c]
        for r in range(c + 1, k):
            f = m[r][c] / piv[c]
            if f:
                row = m[r]
                for j in range(c, k + 1):
                    row[j] -= f * piv[j]
    x = [0.0] * k
    for r in range(k - 1, -1, -1):
        x[r] = (m[r][k] - sum(m[r][j] * x[j] for j in range(r + 1, k))) / m[r][r]
    return x


@dataclass(slots=True)
class _Solution:
    exponent: float
    offsets: dict[str, float]
    powers: dict[str, float]
    normal: list[list[float]] | None  # the normal matrix when n is free (its variance)

    def exponent_var(self) -> float | None:
        if self.normal is None:
            return None
        e0 = [1.0] + [0.0] * (len(self.normal) - 1)
        return _solve_dense(self.normal, e0)[0]


def _wls(pairs: list[PairSummary], w: list[float], scanners: list[str], *,
         fixed_n: float | None, fixed_o: dict[str, float],
         fixed_p: dict[str, float]) -> _Solution:
    """Weighted least squares for (n, o) with each free beacon power eliminated (its
    pairs centred on their weighted means): a system of 1 + scanners unknowns."""
    free_o = [s for s in scanners if s not in fixed_o]
    col = {s: i + (1 if fixed_n is None else 0) for i, s in enumerate(free_o)}
    k = len(free_o) + (1 if fixed_n is None else 0)
    h = [[0.0] * k for _ in range(k)]
    g = [0.0] * k
    by_beacon: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_beacon.setdefault(p.beacon, []).append(i)

    def row_of(i: int) -> tuple[dict[int, float], float]:
        p = pairs[i]
        x = -10 * math.log10(p.distance_m)
        t = p.rssi_dbm - fixed_o.get(p.scanner, 0.0)
        row: dict[int, float] = {}
        if fixed_n is None:
            row[0] = x
        else:
            t -= fixed_n * x
        if p.scanner in col:
            row[col[p.scanner]] = 1.0
        return row, t

    centred: dict[str, tuple[dict[int, float], float]] = {}
    for b, idx in by_beacon.items():
        if b in fixed_p:  # a beacon whose power is absurd: the plan is wrong about it
            continue
        rows = [row_of(i) for i in idx]
        ws = sum(w[i] for i in idx)
        mean_row: dict[int, float] = {}
        for (row, _), i in zip(rows, idx, strict=True):
            for j, v in row.items():
                mean_row[j] = mean_row.get(j, 0.0) + w[i] * v / ws
        mean_t = sum(w[i] * t for (_, t), i in zip(rows, idx, strict=True)) / ws
        centred[b] = (mean_row, mean_t)
        # sum of w (a - mean)(a - mean)^T = sum of w a a^T - W mean mean^T: each row has
        # two entries, so this is O(pairs) plus one rank-1 update per beacon
        for (row, t), i in zip(rows, idx, strict=True):
            wi = w[i]
            for j, vj in row.items():
                g[j] += wi * vj * t
                hj = h[j]
                for l_, vl in row.items():
                    hj[l_] += wi * vj * vl
        mean_items = list(mean_row.items())
        for j, vj in mean_items:
            g[j] -= ws * vj * mean_t
            hj = h[j]
            for l_, vl in mean_items:
                hj[l_] -= ws * vj * vl
    if fixed_n is None:  # a weak prior: n where the plan says nothing, else negligible
        h[0][0] += 1 / EXPONENT_PRIOR_SD ** 2
        g[0] += EXPONENT_PRIOR / EXPONENT_PRIOR_SD ** 2
    for s in free_o:  # a whisper of ridge: the gauge is fixed afterwards, exactly
        h[col[s]][col[s]] += 1e-9
    theta = _solve_dense(h, g) if k else []
    n = theta[0] if fixed_n is None else fixed_n
    offsets = {s: (theta[col[s]] if s in col else fixed_o[s]) for s in scanners}
    powers = {}
    for b, (mean_row, mean_t) in centred.items():
        powers[b] = mean_t - sum(v * theta[j] for j, v in mean_row.items())
    powers.update(fixed_p)
    return _Solution(n, offsets, powers, h if fixed_n is None else None)


def _components(pairs: list[PairSummary]) -> list[tuple[set[str], set[str]]]:
    """Connected groups of scanners and beacons (each needs its own gauge)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        a, b = find("s:" + p.scanner), find("b:" + p.beacon)
        if a != b:
            parent[a] = b
    groups: dict[str, tuple[set[str], set[str]]] = {}
    for p in pairs:
        sc, bc = groups.setdefault(find("s:" + p.scanner), (set(), set()))
        sc.add(p.scanner)
        bc.add(p.beacon)
    return list(groups.values())


def _gauge(sol: _Solution, comps: list[tuple[set[str], set[str]]],
           fixed_o: dict[str, float]) -> None:
    """Shift each group to offsets of mean zero; the fit to the data is unchanged (o_s
    + c and P_b - c predict the same). A group holding an offset at its bound is
    already pinned by it and is left as it is."""
    for scanners, beacons in comps:
        if scanners & set(fixed_o):
            continue
        c = sum(sol.offsets[s] for s in scanners) / len(scanners)
        for s in scanners:
            sol.offsets[s] -= c
        for b in beacons:
            sol.powers[b] += c


def _residuals(pairs: list[PairSummary], sol: _Solution) -> list[float]:
    return [p.rssi_dbm - (sol.powers[p.beacon] + sol.offsets[p.scanner]
                          - 10 * sol.exponent * math.log10(p.distance_m)) for p in pairs]


def fit_pairs(pairs: list[PairSummary], *, now: float | None = None,
              uncalibrated: tuple[str, ...] = ()) -> CalibrationFit:
    """The robust, bounded, gauge-fixed fit over pair summaries (batch)."""
    if not pairs:
        return CalibrationFit(state="waiting", fitted_at=now, uncalibrated=uncalibrated)
    scanners = sorted({p.scanner for p in pairs})
    fixed_n: float | None = None
    fixed_o: dict[str, float] = {}
    fixed_p: dict[str, float] = {}
    model_var = 4.0  # (2 dB)²: the start; re-estimated from the residuals
    robust = [1.0] * len(pairs)
    sol = None
    for _ in range(BOUND_PASSES):
        for _ in range(IRLS_ROUNDS):
            w = [robust[i] / (p.variance_db2 + model_var) for i, p in enumerate(pairs)]
            sol = _wls(pairs, w, scanners, fixed_n=fixed_n, fixed_o=fixed_o, fixed_p=fixed_p)
            res = _residuals(pairs, sol)
            kept = [i for i, p in enumerate(pairs) if p.beacon not in fixed_p] or [0]
            # residuals of a fit with few pairs per unknown are shrunk: scale them back
            # (degrees of freedom), else the model error and n's standard error come
            # out too small and the Huber rule too eager
            unknowns = len(scanners) + len({pairs[i].beacon for i in kept})
            dof = math.sqrt(len(kept) / max(1, len(kept) - unknowns))
            scale = max(MODEL_SD_FLOOR_DB,
                        dof * 1.4826 * _median([abs(res[i]) for i in kept]))
            new_var = max(0.0, scale * scale - _median([pairs[i].variance_db2 for i in kept]))
            new_robust = []
            for r, p in zip(res, pairs, strict=True):
                u = abs(r) / math.sqrt(p.variance_db2 + new_var + MODEL_SD_FLOOR_DB ** 2)
                new_robust.append(1.0 if u <= HUBER_K else HUBER_K / u)
            done = abs(new_var - model_var) < 1e-3 and all(
                abs(a - b) < 1e-4 for a, b in zip(new_robust, robust, strict=True))
            model_var, robust = new_var, new_robust
            if done:
                break
        assert sol is not None
        comps = _components([p for p in pairs if p.beacon not in fixed_p])
        _gauge(sol, comps, fixed_o)
        changed = False
        if fixed_n is None and not EXPONENT_MIN <= sol.exponent <= EXPONENT_MAX:
            fixed_n = min(EXPONENT_MAX, max(EXPONENT_MIN, sol.exponent))
            changed = True
        for s, o in sol.offsets.items():
            if s not in fixed_o and abs(o) > OFFSET_MAX_DB:
                fixed_o[s] = math.copysign(OFFSET_MAX_DB, o)
                changed = True
        for b, pw in sol.powers.items():
            if b not in fixed_p and not POWER_MIN_DBM <= pw <= POWER_MAX_DBM:
                fixed_p[b] = min(POWER_MAX_DBM, max(POWER_MIN_DBM, pw))
                changed = True
        if not changed:
            break
    assert sol is not None
    used = [i for i, p in enumerate(pairs) if p.beacon not in fixed_p]
    all_res = _residuals(pairs, sol)
    res = [all_res[i] for i in used]
    robust = [robust[i] for i in used]
    comps = _components([pairs[i] for i in used])
    at = (["exponent"] if fixed_n is not None else []) + [
        f"offset:{s}" for s in sorted(fixed_o)] + [f"power:{b}" for b in sorted(fixed_p)]
    wsum = sum(robust)
    rms = math.sqrt(sum(rb * r * r for rb, r in zip(robust, res, strict=True)) / wsum)
    var = sol.exponent_var()
    se = math.sqrt(max(0.0, var)) if var is not None else None
    free = (0 if fixed_n is not None else 1) + sum(
        len(sc - set(fixed_o)) - (0 if sc & set(fixed_o) else 1) + len(bc)
        for sc, bc in comps)
    return CalibrationFit(
        state="fitted", fitted_at=now, exponent=sol.exponent, exponent_se=se,
        offsets_db=dict(sorted(sol.offsets.items())),
        powers_dbm=dict(sorted(sol.powers.items())), pairs=len(pairs),
        samples=sum(p.samples for p in pairs), residual_rms_db=rms,
        downweighted_pairs=sum(1 for r in robust if r < 1.0), at_bounds=tuple(at),
        uncalibrated=uncalibrated,
        unlinked=tuple(sorted(s for sc, _ in comps if len(sc) == 1 for s in sc)),
        groups=sum(1 for sc, _ in comps if len(sc) > 1), redundancy=len(used) - free)


def _compare(fit: CalibrationFit, recent: list[CalibrationFit]) -> CalibrationFit:
    """Flag a fit that differs from the median of the recent ones (a beacon moved, a
    scanner knocked, a door propped open): it is reported, never silently adopted."""
    if not recent or fit.exponent is None:
        return fit
    ns = [f.exponent for f in recent if f.exponent is not None]
    off = any(
        abs(o - _median([f.offsets_db[s] for f in recent if s in f.offsets_db]))
        > DISAGREE_OFFSET_DB
        for s, o in fit.offsets_db.items() if any(s in f.offsets_db for f in recent))
    far = bool(ns) and abs(fit.exponent - _median(ns)) > DISAGREE_EXPONENT
    if not (off or far):
        return fit
    return dataclasses.replace(fit, disagrees=True)
