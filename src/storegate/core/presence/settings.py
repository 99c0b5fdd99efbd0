"""Presence settings: zones, the scanners that cover them, and the visit timings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Zone:
    id: str
    scanners: tuple[str, ...]
    min_rssi_dbm: float = -80.0  # closer than this to count (a checkout lane wants more)


@dataclass(frozen=True, slots=True)
class PresenceSettings:
    zones: tuple[Zone, ...]
    store_min_rssi_dbm: float = -90.0  # single samples weaker than this are ignored
    inside_min_rssi_dbm: float = -82.0  # a scanner's median at least this: inside
    min_presence_s: float = 20.0  # store visit: passers-by stay shorter
    zone_min_presence_s: float = 15.0  # walking through a zone is not visiting it
    exit_after_s: float = 10.0  # absence that ends a visit; exit time = last evidence
    dwell_thresholds_s: tuple[float, ...] = (60.0, 300.0, 900.0)
    window_s: float = 6.0  # RSSI samples kept per scanner for the robust estimate
    evaluate_every_s: float = 0.25  # re-assess a customer at most this often
    max_samples: int = 16  # per scanner, newest kept (bounds memory per phone)
    min_samples: int = 3  # fewer samples in the window: that scanner does not count
    switch_margin_db: float = 4.0  # a challenger zone must be this much stronger...
    switch_hold_s: float = 3.0  # ...for this long, to take over (no flapping)
    scanner_zone: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        for z in self.zones:
            for s in z.scanners:
                self.scanner_zone[s] = z.id
