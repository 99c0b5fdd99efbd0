"""Presence settings: zones, the scanners that cover them, and the visit timings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Zone:
    id: str
    scanners: tuple[str, ...]
    # closer than this to count (a checkout lane wants more); None: derived from the
    # calibration fit, -80 dBm while there is none
    min_rssi_dbm: float | None = None
    # A door zone: its scanners also hear the pavement, so they alone never place a phone
    # inside the store; and it is passed through, never visited.
    entrance: bool = False
    transit: bool = False  # passed through (a corridor): never a zone visit of its own
    # On the shop front (a checkout by the window): its scanners hear the pavement too,
    # so someone walking along the window is placed here for a while; entry confirmed
    # by evidence here takes the longer front_confirm_s.
    front: bool = False

    @property
    def passed_through(self) -> bool:
        return self.entrance or self.transit


@dataclass(frozen=True, slots=True)
class PresenceSettings:
    zones: tuple[Zone, ...]
    store_min_rssi_dbm: float = -90.0  # single samples weaker than this are ignored
    inside_min_rssi_dbm: float = -82.0  # a scanner's median at least this: inside
    min_presence_s: float = 20.0  # store visit: passers-by stay shorter
    zone_min_presence_s: float = 25.0  # longer than walking through the largest zone
    exit_after_s: float = 10.0  # absence that ends a visit; exit time = last evidence
    dwell_thresholds_s: tuple[float, ...] = (60.0, 300.0, 900.0)
    window_s: float = 6.0  # RSSI samples kept per scanner for the robust estimate
    evaluate_every_s: float = 0.25  # re-assess a customer at most this often
    max_samples: int = 16  # per scanner, newest kept (bounds memory per phone)
    min_samples: int = 3  # fewer samples in the window: that scanner does not count
    # A phone that advertises slowly (a background app: one advert every second or two,
    # of which a scanner hears some) gives a scanner fewer than min_samples per window:
    # its estimate then reaches back for the newest min_samples, as far as this.
    sparse_window_s: float = 20.0
    switch_margin_db: float = 3.0  # a challenger zone must be this much stronger...
    switch_hold_s: float = 1.5  # ...for this long, to take over (no flapping)
    # With an entrance zone configured, the store visit follows interior evidence: an
    # interior zone heard at least about as strongly as the entrance (within this margin;
    # a comparison between scanners cancels the phone's unknown transmit power)...
    interior_margin_db: float = 0.0
    stay_margin_db: float = 3.0  # once inside, the margin widens (no door flapping)
    # A zone beyond the shop front heard this much stronger than the entrance (or the
    # entrance not hearing the phone) places it inside and in that zone even below the
    # floors: a comparison between scanners, robust to a weak phone or a body in the way.
    clear_of_door_db: float = 6.0
    # ...beyond the shop front, after a pass under the entrance scanner, for this long
    # opens a visit (dated back to the door pass, emitted at once)...
    entry_confirm_s: float = 10.0
    # ...or, in a front zone after a door pass, or beyond the front without one, in one
    # zone for this long: longer than walking past a front zone or glancing in; it
    # delays the event, not its time
    front_confirm_s: float = 30.0
    # ...and evidence on the shop front alone, never at the door, this long: longer than
    # walking along the end of the front (a front zone and the pavement beyond the store)
    front_only_confirm_s: float = 60.0
    # Clear evidence confirms at once: after a pass under the entrance scanner, an
    # interior zone beyond the shop front heard stronger than the entrance by more than
    # the noise of the two estimates (this many standard errors of their difference,
    # measured from the phone's own samples) for entry_clear_s opens the visit without
    # waiting entry_confirm_s. Weak evidence (within the noise) still waits.
    entry_clear_z: float = 2.33  # one-sided 1 %: the entrance is not really as strong
    entry_clear_ratio: float = 1.25  # and the phone this much nearer the interior scanner
    entry_clear_s: float = 1.0  # a few evaluation steps, not one lucky median
    # no interior evidence for this long: outside (the exit is dated back to the last
    # evidence); long enough to ride out a deep fade without splitting the visit
    outside_after_s: float = 12.0
    # Silence is not an exit: a phone last placed inside, not heard at the door or
    # outside since, that goes silent (a background phone stops advertising for tens of
    # seconds) keeps its visit for up to this long after the last evidence; the exit is
    # then dated to that evidence. Heard at the door after it: outside_after_s as above.
    silence_hold_s: float = 180.0
    scanner_zone: dict[str, str] = field(init=False, default_factory=dict)
    entrances: frozenset[str] = field(init=False, default=frozenset())
    transits: frozenset[str] = field(init=False, default=frozenset())
    fronts: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        for z in self.zones:
            for s in z.scanners:
                self.scanner_zone[s] = z.id
        # frozen: set once here, derived from the zones
        object.__setattr__(self, "entrances", frozenset(z.id for z in self.zones if z.entrance))
        object.__setattr__(self, "transits",
                           frozenset(z.id for z in self.zones if z.passed_through))
        object.__setattr__(self, "fronts", frozenset(z.id for z in self.zones if z.front))
