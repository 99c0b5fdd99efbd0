"""Reconnect delays: capped exponential backoff with full jitter.

Full jitter (a uniform draw between zero and the capped exponential) spreads a fleet of
gateways that lost the same broker, so they do not all reconnect in the same second.
Pure: the caller passes the uniform random draw.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay policy; ``attempt`` counts consecutive failures from 0."""

    min_s: float
    max_s: float
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"need 0 < min_s <= max_s, got {self.min_s}, {self.max_s}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")

    def ceiling(self, attempt: int) -> float:
        """The largest delay for this attempt (before jitter)."""
        # Cap the exponent so huge attempt counts do not overflow a float.
        return min(self.max_s, self.min_s * self.factor ** min(attempt, 64))

    def delay(self, attempt: int, uniform01: float) -> float:
        """The jittered delay for ``attempt``: in [min_s, ceiling(attempt)]."""
        top = self.ceiling(attempt)
        return self.min_s + (top - self.min_s) * min(max(uniform01, 0.0), 1.0)
