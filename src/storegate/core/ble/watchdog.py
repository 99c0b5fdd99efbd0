"""When to restart a BLE scan: the watchdog's decisions, pure and clock-injected.

BlueZ discovery dies in the field (``org.bluez.Error.InProgress`` after hours, an
adapter reset, a USB dongle unplugged); peers exit the process. The adapter asks this
watchdog what to do: after a failure, wait a backoff delay and start again; while
scanning, a scan that has heard nothing for ``stall_after_s`` (a store is never
silent: zone beacons advertise several times a second) is restarted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from storegate.core.backoff import Backoff

State = Literal["starting", "scanning", "restarting", "stopped"]


@dataclass(slots=True)
class ScanWatchdog:
    backoff: Backoff
    stall_after_s: float  # 0: never restart a silent scan
    state: State = "starting"
    started_at: float | None = None
    last_advert_at: float | None = None
    failures: int = 0  # consecutive: drives the backoff
    restarts_total: int = 0
    failures_total: int = 0
    stalls_total: int = 0
    last_error: str | None = None
    history: list[tuple[float, str]] = field(default_factory=list)  # recent (ts, why)

    def started(self, now: float) -> None:
        self.state = "scanning"
        self.started_at = now

    def advert(self, now: float) -> None:
        self.last_advert_at = now
        self.failures = 0  # it works: the next failure starts the backoff afresh

    def failed(self, now: float, error: str, uniform01: float) -> float:
        """A start or a running scan failed: the delay before trying again."""
        self.state = "restarting"
        self.failures_total += 1
        self.last_error = error
        delay = self.backoff.delay(self.failures, uniform01)
        self.failures += 1
        self._remember(now, error)
        return delay

    def stalled(self, now: float) -> bool:
        """Scanning, yet silent for ``stall_after_s`` since the later of start and the
        last advert."""
        if self.state != "scanning" or self.stall_after_s <= 0 or self.started_at is None:
            return False
        since = max(self.started_at, self.last_advert_at or self.started_at)
        return now - since >= self.stall_after_s

    def stall(self, now: float, uniform01: float) -> float:
        """Record a stall; the delay before restarting (backoff, as for a failure)."""
        self.stalls_total += 1
        return self.failed(now, f"no adverts for {self.stall_after_s:g} s", uniform01)

    def restarting(self) -> None:
        self.restarts_total += 1
        self.state = "starting"

    def _remember(self, now: float, why: str) -> None:
        self.history.append((now, why))
        del self.history[:-10]
