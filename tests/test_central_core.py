"""Central's pure parts: reading what gateways publish, sequence gaps, the profile and
uplift, and what central sends (opened by the gateway's own code)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core import seal
from storegate.core.ble.eid import Identity
from storegate.core.central import envelope, gaps, outbound
from storegate.core.central.gaps import GapState, Range
from storegate.core.central.profile import CategoryMap, StoredEvent, profile, uplift
from storegate.core.commands import open_customers, validate_payload
from storegate.core.identity_records import IdentityRecord
from storegate.core.personal.erasure import EraseCommand
from storegate.core.personal.registry import CustomersCommand
from tests.support.driver import purchase

T0 = 1_795_000_000.0
TOPIC = "storegate/v1/s1/g1/events/purchase"


def wire(n: int, *, seq: int | None = None, source: str = "storegate://s1/g1") -> bytes:
    return ev.encode_event(purchase(n), event_id=f"0190000-{n:08d}",
                           source_json=json.dumps(source), sequence=seq or n)


def test_a_gateway_event_reads_back_as_central_stores_it() -> None:
    got = envelope.read(TOPIC, wire(7, seq=42))
    assert isinstance(got, envelope.Event)
    assert (got.store, got.gateway, got.sequence, got.type) == (
        "s1", "g1", 42, "storegate.purchase.completed.v1")
    assert got.data["receipt"] == "R7"


def test_a_status_certificate_is_read_for_its_seal_key() -> None:
    draft = ev.EventDraft(ev.GATEWAY_STATUS, "gateway/g1", T0, p.GatewayStatus(
        state="online", session=3, version="x", started_at=ev.rfc3339(T0),
        reason="started", seal_key="k" * 43))
    raw = ev.encode(ev.envelope(draft, event_id="s-1", source="storegate://s1/g1",
                                sequence=None))
    got = envelope.read("storegate/v1/s1/g1/status", raw)
    assert isinstance(got, envelope.Status)
    assert (got.session, got.seal_key, got.state) == (3, "k" * 43, "online")


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("storegate/v1/s1/g1/events", wire(1), "wrong_topic"),
    ("storegate/v1/central/g1/events/purchase", wire(1), "wrong_topic"),
    (TOPIC, b"{not json", "malformed"),
    (TOPIC, b"[]", "malformed"),
    (TOPIC, wire(1, source="storegate://s2/g1"), "source_mismatch"),
    ("storegate/v1/s1/g1/events/visit", wire(1), "kind_mismatch"),
    (TOPIC, wire(1).replace(b"purchase.completed", b"purchase.teleported"), "unknown_type"),
    (TOPIC, wire(1).replace(b'"total_minor":', b'"total_minr":'), "invalid_data"),
    (TOPIC, wire(1).replace(b'"sequence":"0', b'"sequence":"x'), "malformed"),
    (TOPIC, b" " * (envelope.MAX_EVENT_BYTES + 1), "too_large"),
])
def test_what_is_not_the_contract_is_rejected_with_a_reason(
        topic: str, payload: bytes, reason: str) -> None:
    got = envelope.read(topic, payload)
    assert isinstance(got, envelope.Rejection)
    assert got.reason == reason, got.detail


def test_gaps_are_the_holes_above_the_watermark() -> None:
    assert gaps.missing([1, 2, 3], 0) == []
    assert gaps.missing([2, 3, 7, 7, 9], 0) == [Range(1, 1), Range(4, 6), Range(8, 8)]
    assert gaps.missing([12, 15], 10) == [Range(11, 11), Range(13, 14)]
    # ranges the gateway said it no longer holds are not holes any more
    assert gaps.missing([2, 3, 7, 9], 0, [Range(4, 6)]) == [Range(1, 1), Range(8, 8)]
    # the tail: what the gateway said it accepted (status, telemetry) above the last stored
    assert gaps.missing([1, 2, 3], 0, head=6) == [Range(4, 6)]
    assert gaps.missing([1, 2, 3], 0, head=3) == []
    assert gaps.missing([1, 5], 0, [Range(6, 7)], head=9) == [Range(2, 4), Range(8, 9)]
    assert gaps.advance(0, [1, 2, 3, 5]) == 3
    assert gaps.advance(0, [1, 2, 3, 5], [Range(4, 4)]) == 5
    assert gaps.advance(0, [], [Range(1, 9)]) == 9
    assert gaps.advance(3, [2, 3, 4]) == 4
    assert list(gaps.split(Range(1, 25), span=10)) == [Range(1, 10), Range(11, 20), Range(21, 25)]


def test_a_gap_is_asked_for_after_its_grace_then_with_a_backoff() -> None:
    g = GapState("s1", "g1", Range(4, 6), found_at=100.0)
    assert not gaps.due(g, 101.0, grace_s=2)
    assert gaps.due(g, 102.0, grace_s=2)
    asked = GapState("s1", "g1", Range(4, 6), 100.0, requested_at=102.0, attempts=1)
    assert not gaps.due(asked, 106.0, retry_first_s=5)
    assert gaps.due(asked, 107.0, retry_first_s=5)
    twice = GapState("s1", "g1", Range(4, 6), 100.0, requested_at=107.0, attempts=2)
    assert not gaps.due(twice, 116.0, retry_first_s=5)
    assert gaps.due(twice, 117.0, retry_first_s=5)


def _e(type_: str, data: dict[str, Any], *, store: str = "s1", at: float = T0) -> StoredEvent:
    return StoredEvent(type_, store, at, data)


def visit(vid: str, *, store: str = "s1", at: float = T0, converted: bool | None = None,
          tts: float | None = None, zone: str | None = None,
          dwell: float = 60.0) -> StoredEvent:
    return _e("storegate.visit.exited.v1", {
        "visit_id": vid, "customer": "c1", "zone": zone, "dwell_s": dwell,
        "converted": converted, "time_to_serve_s": tts}, store=store, at=at)


def buy(total: int, items: list[tuple[str | None, str, int]], *, store: str = "s1",
        at: float = T0, kind: str = "sale") -> StoredEvent:
    return _e("storegate.purchase.completed.v1", {
        "kind": kind, "total_minor": total, "customer": "c1",
        "items": [{"sku": s, "name": n, "amount_minor": a} for s, n, a in items]},
        store=store, at=at)


def test_the_profile_from_visits_purchases_and_offers_of_every_store() -> None:
    day = 86_400.0
    events = [
        visit("v1", store="s1", at=T0 - 40 * day, tts=120.0),
        visit("v2", store="s2", at=T0 - 10 * day, tts=60.0),
        visit("v3", store="s2", at=T0 - 2 * day, tts=90.0),
        visit("z1", zone="shoes", dwell=300.0, at=T0 - 2 * day),
        visit("z2", zone="coffee", dwell=30.0, at=T0 - 2 * day),
        buy(5000, [("SKU1", "Trail shoe", 4000), (None, "Espresso beans 1kg", 1000)],
            store="s2", at=T0 - 2 * day),
        buy(3000, [(None, "Running socks", 3000)], store="s2", at=T0 - 10 * day),
        buy(1000, [(None, "Running socks", 1000)], store="s2", at=T0 - 9 * day,
            kind="return"),
        _e("storegate.offer.issued.v1", {"campaign": "socks", "customer": "c1"}),
        _e("storegate.offer.redeemed.v1", {"campaign": "socks", "customer": "c1"}),
        _e("storegate.offer.suppressed.v1", {"campaign": "coffee", "customer": "c1",
                                             "reason": "control_group"}),
        _e("storegate.offer.suppressed.v1", {"campaign": "coffee", "customer": "c1",
                                             "reason": "capped"}),
    ]
    cats = CategoryMap({"SKU1": "footwear"}, {"socks": "running", "espresso": "coffee"})
    pr = profile("c1", events, now=T0, categories=cats)
    assert pr.store_visits == 3
    assert pr.purchases == 2
    assert pr.lifetime_spend_minor == 7000
    assert pr.favourite_categories == ["footwear", "running", "coffee"]
    assert pr.preferred_store == "s2"
    assert pr.preferred_zones == ["shoes", "coffee"]
    assert pr.time_to_serve_s_median == 90.0
    assert pr.recency_days == 2.0
    assert pr.rfm == (5, 2, 1)
    assert pr.segment == "new"
    assert pr.offers["socks"].issued == 1 and pr.offers["socks"].redeemed == 1
    assert pr.offers["coffee"].control == 1 and pr.offers["coffee"].issued == 0


def test_a_customer_without_events_has_an_unknown_segment() -> None:
    pr = profile("c9", [], now=T0)
    assert (pr.segment, pr.store_visits, pr.recency_days) == ("unknown", 0, None)


def test_uplift_compares_treated_and_held_out_visits() -> None:
    evs = []
    for i in range(10):
        evs.append(_e("storegate.offer.issued.v1", {"campaign": "a", "visit_id": f"t{i}"}))
        evs.append(visit(f"t{i}", converted=i < 6))
    for i in range(5):
        evs.append(_e("storegate.offer.suppressed.v1", {
            "campaign": "a", "visit_id": f"h{i}", "reason": "control_group"}))
        evs.append(visit(f"h{i}", converted=i < 2))
    evs.append(_e("storegate.offer.redeemed.v1", {"campaign": "a"}))
    [u] = uplift(evs)
    assert (u.issued, u.control, u.redeemed) == (10, 5, 1)
    assert (u.treated_rate, u.control_rate, u.uplift) == (0.6, 0.4, 0.2)


def test_a_customers_command_central_builds_opens_on_the_gateway() -> None:
    """The contract the other way: what central sends, the gateway's own code reads."""
    gw_key = X25519PrivateKey.generate()
    alice = Identity("cust-alice", bytes.fromhex("a11cea11cea11cea11cea11cea11ce01"), 8,
                     7000, 1_790_000_000.0)
    record = {"customer": "cust-alice", "version": 3,
              "consents": {"presence": {"granted": True, "at": T0, "source": "app"}},
              "loyalty_ids": [], "profile": {"tier": "gold"},
              "pickup_orders": [{"order_id": "o-1", "state": "ready", "items": 2}]}
    body = outbound.customers_payload(
        "upsert", [record], {"cust-alice": IdentityRecord.of(alice)},
        {"g1": seal.public_text(gw_key.public_key())}, store="s1", request_id="r-1",
        rand=os.urandom)
    cmd = validate_payload("customers", body, now=T0)
    assert isinstance(cmd, CustomersCommand), cmd
    change = open_customers(cmd, key=gw_key, store="s1", gateway="g1")
    assert not hasattr(change, "reason"), change
    assert change.identities["cust-alice"] == alice  # type: ignore[union-attr]
    erase = validate_payload("erase", outbound.erase_payload(
        ["cust-alice"], ["ps1:" + "ab" * 16], "e-1"), now=T0)
    assert isinstance(erase, EraseCommand)
    replay = validate_payload("replay", outbound.replay_payload("g1", 4, 9, "gap-1"), now=T0)
    assert not hasattr(replay, "reason"), replay


def test_an_erasure_is_done_when_every_known_gateway_confirmed() -> None:
    state = outbound.erasure_state(
        {"s1": "c-1", "s2": "c-2"}, {"s1": ["g1", "g2"], "s2": ["g1"]},
        {"c-1": {"g1": True, "g2": False}, "c-2": {"g1": True}})
    s1, s2 = state
    assert not s1.done and s1.failed == ("g2",)
    assert s2.done
    again = outbound.erasure_state({"s1": "c-1"}, {"s1": ["g1", "g2"]},
                                   {"c-1": {"g1": True, "g2": True}})
    assert again[0].done
    # a store with no known gateway is never "done": nobody confirmed
    assert not outbound.erasure_state({"s3": "c-3"}, {}, {})[0].done
