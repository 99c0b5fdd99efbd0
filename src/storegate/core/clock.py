"""Is the wall clock believable? A Raspberry Pi has no battery-backed clock: until NTP
has synced it boots at 1970 (or at the last time fake-hwclock saved), and every event
would carry that time. Pure: the time to judge is handed in."""

from __future__ import annotations

import datetime as dt
from typing import Final

# No storegate event can have happened before this release was written.
EARLIEST_PLAUSIBLE_S: Final = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def clock_problem(now: float, earliest: float = EARLIEST_PLAUSIBLE_S) -> str | None:
    """Why ``now`` cannot be the real time, or None when it can."""
    if now >= earliest:
        return None
    shown = dt.datetime.fromtimestamp(max(now, 0.0), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    floor = dt.datetime.fromtimestamp(earliest, dt.UTC).strftime("%Y-%m-%d")
    return (f"the system clock says {shown} UTC, before {floor}: it has not been set "
            "(no real-time clock, no time sync yet); events would carry that time. "
            "Check `timedatectl` (systemd-timesyncd or chrony) and start again")
