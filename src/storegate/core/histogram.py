"""A fixed-bucket histogram one thread writes and others read without a lock.

The MQTT publisher observes each publish's time to its PUBACK on its own thread, at up
to tens of thousands a second; ``/metrics`` reads the figures on the event loop. A
Prometheus ``Histogram`` takes a lock per observation; this takes none: one writer
(the owner) bumps a list element and a float, and a reader copies the list in one
step (a list slice holds the GIL throughout, so the bucket counts are consistent with
each other; ``sum_s`` may be one observation behind them, which a rate over minutes
does not see). Pure: the caller measures the time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

# Publish -> PUBACK on a store LAN is about a millisecond; a broker under load or a
# slow bridge stretches it to seconds. Beyond 10 s the outbox age tells the story.
PUBLISH_LATENCY_BUCKETS_S: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Counts per bucket (not cumulative; the last is above every bound) and the sum."""

    bounds: tuple[float, ...]  # upper bounds, seconds, ascending
    counts: tuple[int, ...]  # len(bounds) + 1
    sum_s: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile_bound(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (``inf`` past the
        last bound; None: nothing observed): "p99 <= 25 ms", which is all buckets say."""
        total = self.count
        if total == 0:
            return None
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            if running >= q * total:
                return bound
        return float("inf")

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: ``le`` label text and the cumulative count."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HistogramSnapshot | None:
        """Parsed back from the status file; None if it is not a histogram."""
        try:
            bounds = tuple(float(b) for b in d.get("bounds") or ())
            counts = tuple(int(c) for c in d.get("counts") or ())
            total = float(d.get("sum_s", 0.0))
        except (TypeError, ValueError):
            return None
        if len(counts) != len(bounds) + 1:
            return None
        return cls(bounds, counts, total)


class Histogram:
    """Owned by one thread (the writer); :meth:`snapshot` is safe from any thread."""

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: Sequence[float] = PUBLISH_LATENCY_BUCKETS_S) -> None:
        ordered = tuple(float(b) for b in bounds)
        if not ordered or list(ordered) != sorted(set(ordered)):
            raise ValueError("bucket bounds must be distinct and ascending")
        self._bounds = ordered
        self._counts = [0] * (len(ordered) + 1)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        """The writer only. ``le`` semantics: a value equal to a bound is in it."""
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    def snapshot(self) -> HistogramSnapshot:
        counts = self._counts[:]  # one step under the GIL: consistent buckets
        return HistogramSnapshot(self._bounds, tuple(counts), self._sum)
