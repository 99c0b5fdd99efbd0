"""Pure core: ids, backoff, retention arithmetic, the CloudEvents envelope, topics."""

from __future__ import annotations

import json
import uuid

import pytest

from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.backoff import Backoff
from storegate.core.ids import Uuid7Generator, uuid7
from storegate.core.retention import RetentionBudget, age_cutoff, excess
from storegate.core.topics import Topics


def test_uuid7_layout_and_order() -> None:
    a = uuid7(1_795_000_000_123, 0, b"\xff" * 8)
    u = uuid.UUID(a)
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    assert int(a.replace("-", "")[:12], 16) == 1_795_000_000_123  # ms timestamp first
    gen = Uuid7Generator()
    ids = [gen.next(1000, bytes([i % 256]) * 8) for i in range(5000)]  # same ms, > 4096
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    # clock steps back: still monotonic
    assert gen.next(10, b"\0" * 8) > ids[-1]


@pytest.mark.parametrize(("ms", "counter", "rand"), [(-1, 0, b"\0" * 8), (0, 4096, b"\0" * 8),
                                                     (0, 0, b"\0" * 7)])
def test_uuid7_rejects_bad_input(ms: int, counter: int, rand: bytes) -> None:
    with pytest.raises(ValueError):
        uuid7(ms, counter, rand)


def test_backoff_jitter_bounds() -> None:
    b = Backoff(0.5, 30.0)
    assert b.delay(0, 0.0) == 0.5
    assert b.delay(0, 1.0) == 0.5
    assert b.delay(3, 1.0) == 4.0
    assert b.delay(100, 1.0) == 30.0
    assert 0.5 <= b.delay(10, 0.37) <= 30.0
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def test_retention_excess_and_age() -> None:
    budget = RetentionBudget(max_rows=1000, max_bytes=10_000, max_age_s=60)
    assert not excess(1000, 10_000, budget)
    over = excess(1100, 500, budget)
    assert over.rows == 100 + 10
    assert over.bytes == 0
    assert excess(10, 20_000, budget).bytes == 10_000 + 100
    assert age_cutoff(budget, 1000.0) == 940.0
    assert age_cutoff(RetentionBudget(), 1000.0) is None


def test_envelope_is_cloudevents_with_padded_sequence() -> None:
    data = p.VisitEntered(visit_id="v1", customer="c-1", zone=None,
                          entered_at=ev.rfc3339(1_795_000_000.5))
    draft = ev.EventDraft(ev.VISIT_ENTERED, "visit/v1", 1_795_000_000.5, data)
    ce = json.loads(ev.encode(ev.envelope(draft, event_id="i", source="storegate://s/g",
                                          sequence=42)))
    assert ce == {
        "specversion": "1.0", "id": "i", "source": "storegate://s/g",
        "type": "storegate.visit.entered.v1", "subject": "visit/v1",
        "time": "2026-11-18T11:06:40.500Z", "datacontenttype": "application/json",
        "sequence": "00000000000000000042",
        "data": {"visit_id": "v1", "customer": "c-1", "zone": None,
                 "entered_at": "2026-11-18T11:06:40.500Z"},
    }
    # lexicographic order of sequences equals numeric order
    assert ev.format_sequence(9) < ev.format_sequence(10) < ev.format_sequence(10**12)


def test_draft_rejects_wrong_payload_model() -> None:
    data = p.VisitEntered(visit_id="v", customer=None, zone=None, entered_at="x")
    with pytest.raises(TypeError, match="PurchaseCompleted"):
        ev.EventDraft(ev.PURCHASE_COMPLETED, "s", 0.0, data)


def test_purchases_are_never_droppable_and_telemetry_first() -> None:
    from storegate.core.retention import DROP_ORDER

    assert ev.Priority.CRITICAL not in DROP_ORDER
    assert DROP_ORDER[0] == ev.GATEWAY_TELEMETRY.priority
    assert ev.PURCHASE_COMPLETED.priority is ev.Priority.CRITICAL
    assert ev.PURCHASE_VOIDED.priority is ev.Priority.CRITICAL


def test_topics() -> None:
    t = Topics("store-42", "gw-1")
    assert t.events("visit") == "storegate/v1/store-42/gw-1/events/visit"
    assert t.status == "storegate/v1/store-42/gw-1/status"
    assert t.store_commands == "storegate/v1/store-42/commands/#"
    assert t.source == "storegate://store-42/gw-1"
    for bad in ("", "a/b", "+", "#", "$SYS", "x" * 65, "ä"):
        with pytest.raises(ValueError):
            Topics(bad, "gw")


@pytest.mark.parametrize("sequence", [1, 10**15, None])
def test_fast_encoder_matches_the_envelope(sequence: int | None) -> None:
    data = p.PurchaseCompleted(
        receipt='R"1\\', lane="lane 1",
        items=[p.LineItem(name="Молоко 2,5% \u2028", quantity_milli=1500,
                          unit_price_minor=8990, amount_minor=13485)],
        total_minor=13485, currency="RUB", completed_at=ev.rfc3339(1_795_000_000.999),
    )
    draft = ev.EventDraft(ev.PURCHASE_COMPLETED, 'receipt/"R1" ж', 1_795_000_000.0005, data)
    fast = ev.encode_event(draft, event_id="i", source_json=json.dumps("storegate://s/g"),
                           sequence=sequence)
    slow = ev.envelope(draft, event_id="i", source="storegate://s/g", sequence=sequence)
    assert json.loads(fast) == slow
    assert list(json.loads(fast)) == list(slow)  # same attribute order


def test_rfc3339_rounding_and_second_cache() -> None:
    assert ev.rfc3339(1_795_000_000.9996) == "2026-11-18T11:06:41.000Z"
    assert ev.rfc3339(1_795_000_000.0) == "2026-11-18T11:06:40.000Z"
    assert ev.rfc3339(1_795_000_000.123) == "2026-11-18T11:06:40.123Z"
    assert ev.rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
