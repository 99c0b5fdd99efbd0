"""The outbox retention budget and what exceeding it means.

The policy is explicit: when the outbox holds more rows or bytes than its budget, or
events older than the age limit, the lowest-priority events go first (oldest first
within a priority); ``Priority.CRITICAL`` (purchases) is never dropped, even if that
leaves the outbox over budget. Pure: the outbox adapter does the deleting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from storegate.core.events import Priority

# Drop order: least valuable first. CRITICAL is deliberately absent.
DROP_ORDER: Final = (Priority.LOW, Priority.NORMAL, Priority.HIGH)

# Free this fraction of the budget beyond the excess, so that an outbox sitting at its
# limit does not run a drop on every commit.
HEADROOM: Final = 0.01


@dataclass(frozen=True, slots=True)
class RetentionBudget:
    max_rows: int | None = None
    max_bytes: int | None = None
    max_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class Excess:
    """How much must go: ``rows`` and ``bytes`` to free (0 when within budget)."""

    rows: int
    bytes: int

    def __bool__(self) -> bool:
        return self.rows > 0 or self.bytes > 0


def excess(rows: int, size_bytes: int, budget: RetentionBudget) -> Excess:
    """What to free so the outbox is back under budget, with a little headroom."""
    free_rows = 0
    free_bytes = 0
    if budget.max_rows is not None and rows > budget.max_rows:
        free_rows = rows - budget.max_rows + int(budget.max_rows * HEADROOM)
    if budget.max_bytes is not None and size_bytes > budget.max_bytes:
        free_bytes = size_bytes - budget.max_bytes + int(budget.max_bytes * HEADROOM)
    return Excess(free_rows, free_bytes)


def age_cutoff(budget: RetentionBudget, now: float) -> float | None:
    """Events accepted before this epoch time are over the age limit (None: no limit)."""
    return None if budget.max_age_s is None else now - budget.max_age_s
