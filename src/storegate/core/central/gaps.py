"""Sequence gaps per gateway, and when to ask for them again (the replay command).

Every gateway numbers its events 1, 2, 3, ... without reuse (core/events.py). Central
keeps a *watermark* per gateway: every sequence at or below it is stored or known lost.
Above it, the stored sequences show the holes. Several central instances share the
stream (MQTT 5 shared subscription, a JetStream durable), so no instance sees every
number: gaps are found from what the shared storage holds, never from one instance's
memory, and this module only does the arithmetic.

A hole is not asked for at once: events of one gateway can arrive out of order for a
moment (two instances committing side by side, a replay in flight), so a gap is
requested when it has been open for ``grace_s``, then again with a doubling backoff
until the events arrive or the gateway answers that the range is gone (``unavailable``
in ``gateway.replayed``: recorded as lost, the watermark passes over it). Pure: numbers
and the time in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from storegate.core.commands import MAX_REPLAY_SPAN

GRACE_S: Final = 2.0
# How far past the highest stored sequence a gateway's announced head is believed: a
# larger jump (a corrupt or hostile last_sequence) would open a hole of billions and
# ask for it forever; past this the head is capped and the caller alerts.
HEAD_BOUND: Final = 10 * MAX_REPLAY_SPAN
# Replay commands per gateway per pass: a huge hole is asked for a part at a time.
RANGES_PER_PASS: Final = 4
# A gap asked for this many times (backoff up to RETRY_MAX_S: about 1.5 h) without its
# events or an answer is given up: recorded lost, alerted.
MAX_ATTEMPTS: Final = 20
RETRY_FIRST_S: Final = 5.0
RETRY_MAX_S: Final = 300.0


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive [first, last]."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.last:
            raise ValueError(f"not a sequence range: [{self.first}, {self.last}]")

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def covers(self, n: int) -> bool:
        return self.first <= n <= self.last


def missing(stored: Sequence[int], watermark: int,
            lost: Iterable[Range] = (), head: int = 0) -> list[Range]:
    """The holes above ``watermark`` below the highest stored sequence, ``stored``
    ascending (duplicates allowed), minus ranges already known lost. ``head``: the
    newest sequence the gateway said it accepted (status, telemetry): what lies above
    the highest stored up to it is a hole too (the tail), with no later event needed."""
    holes: list[Range] = []
    expect = watermark + 1
    for n in stored:
        if n > expect:
            holes.append(Range(expect, n - 1))
        expect = max(expect, n + 1)
    if head >= expect:
        holes.append(Range(expect, head))
    return subtract(holes, lost)


def subtract(ranges: Iterable[Range], minus: Iterable[Range]) -> list[Range]:
    out = list(ranges)
    for m in minus:
        nxt: list[Range] = []
        for r in out:
            if m.last < r.first or m.first > r.last:
                nxt.append(r)
                continue
            if r.first < m.first:
                nxt.append(Range(r.first, m.first - 1))
            if m.last < r.last:
                nxt.append(Range(m.last + 1, r.last))
        out = nxt
    return out


def advance(watermark: int, stored: Sequence[int], lost: Iterable[Range] = ()) -> int:
    """The new watermark: as far up as ``stored`` (ascending) and ``lost`` fill
    without a hole."""
    lost_sorted = sorted(lost, key=lambda r: r.first)
    mark = watermark
    i = 0
    for n in stored:
        while i < len(lost_sorted) and lost_sorted[i].first <= mark + 1:
            mark = max(mark, lost_sorted[i].last)
            i += 1
        if n <= mark:
            continue
        if n != mark + 1:
            break
        mark = n
    while i < len(lost_sorted) and lost_sorted[i].first <= mark + 1:
        mark = max(mark, lost_sorted[i].last)
        i += 1
    return mark


def split(r: Range, span: int = MAX_REPLAY_SPAN) -> Iterator[Range]:
    """One range as replay commands may carry it (at most ``span`` sequences each),
    lazily: the caller takes as many parts as it sends, however large the range."""
    for a in range(r.first, r.last + 1, span):
        yield Range(a, min(a + span - 1, r.last))


def capped_head(head: int, highest: int, bound: int = HEAD_BOUND) -> int:
    """The announced head believed: at most ``bound`` past the highest sequence stored
    (or the watermark). The caller alerts when this is below ``head``."""
    return min(head, highest + bound)


@dataclass(frozen=True, slots=True)
class GapState:
    """One open gap as storage keeps it."""

    store: str
    gateway: str
    range: Range
    found_at: float
    requested_at: float | None = None
    attempts: int = 0


def due(gap: GapState, now: float, *, grace_s: float = GRACE_S,
        retry_first_s: float = RETRY_FIRST_S, retry_max_s: float = RETRY_MAX_S) -> bool:
    """Whether to send (again) the replay command for this gap now."""
    if gap.requested_at is None:
        return now - gap.found_at >= grace_s
    wait = min(retry_max_s, retry_first_s * 2.0 ** max(gap.attempts - 1, 0))
    return now - gap.requested_at >= wait
