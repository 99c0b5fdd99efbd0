"""What the engine takes from the calibration fit (pure).

The fit (``calibration.py``) says how the store's radio behaves: its path-loss exponent
``n`` and a receive offset per positioned scanner. The engine uses it twice:

* **Offsets.** Each scanner's RSSI is corrected by its offset before any comparison:
  scanners differ by several dB (antenna, enclosure, mounting), and uncorrected, the
  loudest scanner wins the boundary of its neighbours' zones.
* **Thresholds from the fit.** A zone's floor (how strongly it must hear a phone for
  the phone to be in it) is the level a typical phone gives that zone's scanner at the
  zone's radius, less the spread between phones; the radius comes from the plan (half
  way to the nearest scanner of another zone, bounded). In a store with a steep
  exponent a fixed -80 dBm is a few metres, in an open one twenty; the derived floor is
  the same distance in both. The inside threshold is the floor a little lower.

Comparisons between scanners (strongest zone, interior against entrance) need no
threshold at all: the phone's unknown transmit power cancels. A scanner without a
position, or one the fit could not pin, keeps offset 0 and the configured floor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from storegate.core.presence.calibration import (
    EXPONENT_SE_MAX,
    TYPICAL_PHONE_AT_1M_DBM,
    CalibrationFit,
    Position,
    distance,
)

# A phone transmits up to this much weaker than the typical one (the family spreads +-6).
PHONE_SPREAD_DB: Final = 6.0
ZONE_RADIUS_MIN_M: Final = 3.0  # a zone is at least this big around its scanner
ZONE_RADIUS_MAX_M: Final = 12.0  # and beyond this, another zone or the street
ZONE_RADIUS_SHARE: Final = 0.75  # of the way to the nearest scanner of another zone
INSIDE_BELOW_FLOOR_DB: Final = 2.0  # "inside" is a little less than "in a zone"
FLOOR_MIN_DBM: Final = -92.0  # below this a median is mostly adverts near sensitivity
FLOOR_MAX_DBM: Final = -60.0


@dataclass(frozen=True, slots=True)
class Correction:
    """Per-scanner offsets (subtracted from what the scanner reports) and derived floors
    (on corrected levels) per zone; empty: nothing calibrated, the configured values."""

    offsets_db: Mapping[str, float] = field(default_factory=dict)
    zone_floor_dbm: Mapping[str, float] = field(default_factory=dict)
    inside_floor_dbm: Mapping[str, float] = field(default_factory=dict)
    exponent: float | None = None

    def offset(self, scanner: str) -> float:
        return self.offsets_db.get(scanner, 0.0)


NONE: Final = Correction()


def zone_radius_m(scanner: str, positions: Mapping[str, Position],
                  zone_of: Mapping[str, str]) -> float:
    """How far a scanner's zone reaches around it, from the plan alone."""
    own = positions[scanner]
    others = [distance(own, p) for s, p in positions.items()
              if zone_of.get(s) not in (None, zone_of.get(scanner))]
    reach = ZONE_RADIUS_SHARE * min(others) if others else ZONE_RADIUS_MAX_M
    return min(ZONE_RADIUS_MAX_M, max(ZONE_RADIUS_MIN_M, reach))


def derive(fit: CalibrationFit, positions: Mapping[str, Position],
           zone_of: Mapping[str, str]) -> Correction:
    """The correction a fit implies. A fit that is not usable (not fitted, or whose
    exponent ran into a bound or is not identified by the plan, or with too few pairs
    beyond its unknowns for the data to contradict it) corrects nothing: better the
    configured values than a wrong model. Offsets the fit could not tell
    from their beacon's power (an unlinked scanner) stay 0."""
    if fit.state != "fitted" or fit.exponent is None or "exponent" in fit.at_bounds \
            or fit.exponent_se is None or fit.exponent_se > EXPONENT_SE_MAX \
            or not fit.checkable:
        return NONE
    # With more than one linked group of scanners (no beacon heard across them), each
    # group's offsets are fixed to mean zero on their own: right within a group, off
    # by the difference of the groups' true means across them. That is still a smaller
    # error than no correction (the mean of several scanners' offsets is closer to 0
    # than one scanner's), so they are used.
    offsets = {s: o for s, o in fit.offsets_db.items()
               if s in zone_of and s not in fit.unlinked}
    floors: dict[str, float] = {}
    for s in fit.offsets_db:
        if s not in zone_of or s not in positions:
            continue
        r = zone_radius_m(s, positions, zone_of)
        # on corrected levels: the offset is already taken out
        level = TYPICAL_PHONE_AT_1M_DBM - 10 * fit.exponent * math.log10(r) - PHONE_SPREAD_DB
        z = zone_of[s]
        floors[z] = min(floors.get(z, FLOOR_MAX_DBM), level)  # the zone's widest scanner
    floors = {z: min(FLOOR_MAX_DBM, max(FLOOR_MIN_DBM, v)) for z, v in floors.items()}
    inside = {z: max(FLOOR_MIN_DBM, v - INSIDE_BELOW_FLOOR_DB) for z, v in floors.items()}
    return Correction(offsets, floors, inside, fit.exponent)
