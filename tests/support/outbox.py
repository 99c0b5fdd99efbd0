"""Helpers to build outboxes and events in tests."""

from __future__ import annotations

from pathlib import Path

from storegate.adapters.outbox import Outbox
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.retention import RetentionBudget
from storegate.core.topics import Topics

TOPICS = Topics("s1", "g1")


class FakeClock:
    def __init__(self, now: float = 1_795_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_outbox(path: Path, budget: RetentionBudget | None = None,
                clock: FakeClock | None = None) -> Outbox:
    return Outbox(
        path, source=TOPICS.source, topic_for=lambda t: TOPICS.events(t.kind),
        budget=budget or RetentionBudget(), clock=clock or FakeClock(),
    )


def telemetry(n: int = 0) -> ev.EventDraft:
    data = p.GatewayTelemetry(last_sequence=n, outbox_depth=n, oldest_pending_age_s=None,
                              dropped_total=0, published_total=0, reconnects_total=0)
    return ev.EventDraft(ev.GATEWAY_TELEMETRY, "gateway/g1", 1_795_000_000.0 + n, data)


def visit(n: int = 0) -> ev.EventDraft:
    data = p.VisitEntered(visit_id=f"v{n}", customer=f"c{n}", zone="z1",
                          entered_at=ev.rfc3339(1_795_000_000.0 + n))
    return ev.EventDraft(ev.VISIT_ENTERED, f"visit/v{n}", 1_795_000_000.0 + n, data)


def purchase(n: int = 0, items: int = 1) -> ev.EventDraft:
    data = p.PurchaseCompleted(
        receipt=f"R{n}", lane="lane-1",
        items=[p.LineItem(name=f"item {i} " + "x" * 40, quantity_milli=1000,
                          unit_price_minor=100, amount_minor=100) for i in range(items)],
        total_minor=100 * items, currency="EUR", completed_at=ev.rfc3339(1_795_000_000.0 + n),
    )
    return ev.EventDraft(ev.PURCHASE_COMPLETED, f"receipt/R{n}", 1_795_000_000.0 + n, data)
