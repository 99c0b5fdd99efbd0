"""Staff screens, the pure state (core/personal/screens.py): who is at a lane from each
source, ambiguity, clearing on exit / receipt / void, the consent and role projection,
withdrawal and forget, bounds; and the app service's access log and hub notices."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from storegate.app.erasure import erase
from storegate.app.http.hub import Hub
from storegate.app.screens import MAX_ACCESS_KEYS, ScreenService, session_pseudonym
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.personal.registry import CustomerRecord, CustomersChange, Registry
from storegate.core.personal.screens import (
    ALL_FIELDS,
    MAX_IN_STORE,
    MAX_IN_ZONE,
    MAX_LANES,
    ROLE_FIELDS,
    ScreenOffer,
    ScreenState,
    project,
)
from tests import test_personal as tp
from tests.test_erasure import CARD_T, TARGET, Box

T0 = 1_795_000_000.0
CARD_ANNA = "ps1:" + "a" * 32
CARD_UNKNOWN = "ps1:" + "f" * 32


def record(customer: str, *, staff_view: bool = True, version: int = 1,
           **profile: Any) -> CustomerRecord:
    consent = {"granted": True, "at": T0 - 100, "source": "app"}
    consents: dict[str, Any] = {"presence": consent, "marketing": consent}
    if staff_view:
        consents["staff_view"] = consent
    return CustomerRecord.model_validate({
        "customer": customer, "version": version, "consents": consents,
        "loyalty_ids": [CARD_ANNA] if customer == "anna" else [],
        "profile": {"greeting_name": customer.title(), "tier": "gold",
                    "segments": ["family"], "preferences": ["organic"],
                    "sizes": {"shoe": "38"}, "favourite_categories": ["dairy"],
                    "recent_purchases": [{"at": T0 - 86400, "channel": "online",
                                          "category": "dairy", "name": "Milk",
                                          "amount_minor": 129}],
                    "lifetime_spend_minor": 123_456, **profile},
        "pickup_orders": [{"order_id": f"ORD-{customer}", "state": "ready", "counter": "2",
                           "items": 3}],
    })


def registry(*records: CustomerRecord) -> Registry:
    reg = Registry(tomb_key=b"k" * 32, keep_s=60.0)
    if records:
        reg.apply(CustomersChange("upsert", records, {}, (), None), T0)
    return reg


def state(reg: Registry) -> ScreenState:
    return ScreenState(reg, lanes=["lane-1", "lane-2"],
                       lane_zones={"lane-1": "till-1", "lane-2": "till-2"})


def draft(data: p.Payload, at: float = T0) -> ev.EventDraft:
    kind = {p.VisitEntered: ev.VISIT_ENTERED, p.VisitExited: ev.VISIT_EXITED,
            p.PosScanned: ev.POS_SCANNED, p.OfferReserved: ev.OFFER_RESERVED,
            p.OfferRejected: ev.OFFER_REJECTED, p.OfferReleased: ev.OFFER_RELEASED,
            p.PurchaseCompleted: ev.PURCHASE_COMPLETED,
            p.PurchaseVoided: ev.PURCHASE_VOIDED}[type(data)]
    return ev.EventDraft(kind, "x", at, data)


def entered(customer: str | None, zone: str | None, visit: str = "") -> ev.EventDraft:
    return draft(p.VisitEntered(visit_id=visit or f"v-{customer}-{zone}", customer=customer,
                                zone=zone, entered_at=ev.rfc3339(T0)))


def exited(customer: str | None, zone: str | None, visit: str = "") -> ev.EventDraft:
    return draft(p.VisitExited(visit_id=visit or f"v-{customer}-{zone}", customer=customer,
                               zone=zone, entered_at=ev.rfc3339(T0),
                               exited_at=ev.rfc3339(T0 + 60), dwell_s=60))


def loyalty(card: str, tx: str = "tx-1", lane: str = "lane-1") -> ev.EventDraft:
    return draft(p.PosScanned(lane=lane, kind="loyalty", value=card,
                              scanned_at=ev.rfc3339(T0), transaction_id=tx))


def reserved(customer: str | None, tx: str = "tx-1", lane: str = "lane-1") -> ev.EventDraft:
    return draft(p.OfferReserved(offer_id="0" * 32, campaign="c1", customer=customer,
                                 lane=lane, transaction_id=tx, reserved_at=ev.rfc3339(T0)))


def rejected(reason: str, tx: str = "tx-1", lane: str = "lane-1") -> ev.EventDraft:
    return draft(p.OfferRejected(lane=lane, transaction_id=tx, token_id=None,
                                 reason=reason))  # type: ignore[arg-type]


def completed(tx: str = "tx-1", lane: str = "lane-1") -> ev.EventDraft:
    return draft(p.PurchaseCompleted(receipt="1", lane=lane, transaction_id=tx, items=[],
                                     total_minor=0, currency="EUR",
                                     completed_at=ev.rfc3339(T0)))


def voided(tx: str = "tx-1", lane: str = "lane-1") -> ev.EventDraft:
    return draft(p.PurchaseVoided(receipt=None, lane=lane, voided_at=ev.rfc3339(T0),
                                  transaction_id=tx))


# --- who is at the lane -------------------------------------------------------------------


def test_presence_names_the_sole_customer_in_the_checkout_zone() -> None:
    s = state(registry(record("anna")))
    assert s.feed([entered("anna", None), entered("anna", "till-1")]) >= {"lane:lane-1"}
    who = s.who("lane-1")
    assert (who.customer, who.source, who.candidates) == ("anna", "presence", 1)
    assert s.who("lane-2").customer is None  # another lane's zone
    view, _, shown = s.lane_view("lane-1", "cashier")
    assert view.present and view.customer is not None
    assert view.customer.greeting_name == "Anna"
    assert "greeting_name" in shown


def test_two_customers_in_the_zone_are_ambiguous_and_nobody_is_named() -> None:
    s = state(registry(record("anna"), record("boris")))
    s.feed([entered("anna", "till-1"), entered("boris", "till-1")])
    view, who, shown = s.lane_view("lane-1", "manager")
    assert who.customer is None and who.source == "ambiguous" and who.candidates == 2
    assert view.customer is None and not view.present and shown == ()
    s.feed([exited("boris", "till-1")])  # one left: the other is the sole customer
    assert s.who("lane-1").customer == "anna"


def test_a_scanned_loyalty_card_names_its_customer_over_presence() -> None:
    s = state(registry(record("anna"), record("boris")))
    s.feed([entered("anna", "till-1"), entered("boris", "till-1"), loyalty(CARD_ANNA)])
    who = s.who("lane-1")
    assert (who.customer, who.source, who.transaction) == ("anna", "loyalty", "tx-1")


def test_an_unknown_card_names_nobody() -> None:
    s = state(registry(record("anna")))
    s.feed([loyalty(CARD_UNKNOWN)])
    view, who, _ = s.lane_view("lane-1", "cashier")
    assert who.customer is None and view.transaction and not view.present


def test_a_reserved_token_names_its_customer_and_shows_valid() -> None:
    s = state(registry(record("boris")))
    s.feed([reserved("boris")])
    view, who, _ = s.lane_view("lane-1", "cashier")
    assert (who.customer, who.source) == ("boris", "token")
    assert view.token is not None and view.token.state == "reserved"
    assert view.token.text.startswith("Valid")


def test_a_rejected_token_shows_why() -> None:
    s = state(registry())
    s.feed([rejected("expired")])
    view, _, _ = s.lane_view("lane-1", "cashier")
    assert view.token is not None and view.token.state == "rejected"
    assert view.token.reason == "expired" and "expired" in view.token.text
    assert not view.present  # a refused token names nobody


def test_receipt_completion_clears_the_transaction_and_the_served_customer() -> None:
    s = state(registry(record("anna")))
    s.feed([entered("anna", "till-1"), loyalty(CARD_ANNA), reserved("anna")])
    assert s.who("lane-1").source == "loyalty"
    assert s.feed([completed()]) == {"lane:lane-1"}
    view, who, _ = s.lane_view("lane-1", "cashier")
    # still in the zone packing, but served: not shown again by presence
    assert who.customer is None and view.token is None and not view.transaction
    s.feed([exited("anna", "till-1"), entered("anna", "till-1", visit="again")])
    assert s.who("lane-1").customer == "anna"  # came back: shown again


def test_a_void_clears_the_transaction_but_not_presence() -> None:
    s = state(registry(record("anna"), record("boris")))
    s.feed([entered("anna", "till-1"), reserved("boris")])
    assert s.who("lane-1").customer == "boris"
    s.feed([voided()])
    view, who, _ = s.lane_view("lane-1", "cashier")
    assert view.token is None and who.customer == "anna" and who.source == "presence"


def test_leaving_the_checkout_zone_or_the_store_clears_the_customer() -> None:
    s = state(registry(record("anna")))
    s.feed([entered("anna", None), entered("anna", "till-1")])
    s.feed([exited("anna", "till-1")])
    assert s.who("lane-1").customer is None
    s.feed([entered("anna", "till-1", visit="v2")])
    s.feed([exited("anna", None)])  # the store visit ended: every zone with it
    assert s.who("lane-1").customer is None and not s.holds("anna")


def test_a_new_transaction_starts_afresh() -> None:
    s = state(registry(record("anna")))
    s.feed([loyalty(CARD_ANNA, tx="tx-1"), rejected("redeemed", tx="tx-1")])
    s.feed([draft(p.PosScanned(lane="lane-1", kind="offer", value="SGO1.x",
                               scanned_at=ev.rfc3339(T0), transaction_id="tx-2"))])
    view, who, _ = s.lane_view("lane-1", "cashier")
    assert who.customer is None and view.token is None and who.transaction == "tx-2"


def test_a_stale_zone_exit_does_not_clear_a_newer_stay() -> None:
    s = state(registry(record("anna")))
    s.feed([entered("anna", "till-1", visit="new")])
    s.feed([exited("anna", "till-1", visit="old")])
    assert s.who("lane-1").customer == "anna"


# --- consent and role ------------------------------------------------------------------------


def test_nothing_personal_without_staff_view_consent() -> None:
    s = state(registry(record("anna", staff_view=False)))
    s.feed([entered("anna", "till-1")])
    for role in ("cashier", "floor", "manager"):
        view, _, shown = s.lane_view("lane-1", role)
        assert view.present and view.customer is None and shown == ()
    assert s.floor_view("manager")[0].waiting == []


def test_anonymous_shoppers_are_never_anyone() -> None:
    s = state(registry(record("anna")))
    assert s.feed([entered(None, "till-1"), entered(None, None)]) == set()
    assert s.who("lane-1").customer is None and s.floor_view("manager")[0].waiting == []


@pytest.mark.parametrize("role", ["cashier", "floor", "manager"])
def test_each_role_sees_exactly_its_fields(role: str) -> None:
    offers = [ScreenOffer(title="10% off", expires_at=ev.rfc3339(T0 + 3600))]
    customer, shown = project(record("anna"), role, staff_view=True,  # type: ignore[arg-type]
                              offers=offers)
    assert customer is not None
    present = {k for k, v in customer.model_dump().items() if v is not None}
    profile_fields = ROLE_FIELDS[role] - {"token"}  # type: ignore[index]
    assert present == set(profile_fields) == set(shown)


def test_the_role_table_is_documented_as_in_code() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "http.md").read_text()
    for f in ALL_FIELDS:
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{f}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1:4]
        assert cells == ["yes" if f in ROLE_FIELDS[r] else "" for r in
                         ("cashier", "floor", "manager")], f


def test_manager_alone_sees_spend_and_recent_purchases() -> None:
    for role in ("cashier", "floor"):
        c, _ = project(record("anna"), role, staff_view=True)
        assert c is not None and c.lifetime_spend_minor is None and c.recent_purchases is None
    c, _ = project(record("anna"), "manager", staff_view=True)
    assert c is not None and c.lifetime_spend_minor == 123_456
    assert c.recent_purchases is not None and c.recent_purchases[0].name == "Milk"


# --- the floor -----------------------------------------------------------------------------


def test_the_floor_lists_ready_pickups_in_the_store_by_zone() -> None:
    plain = record("boris").model_copy(update={"pickup_orders": []})
    s = state(registry(record("anna"), plain, record("clara")))
    changed = s.feed([entered("anna", None), entered("boris", None), entered("clara", None),
                      entered("anna", "dairy"), entered("clara", "bakery")])
    assert "floor" in changed
    view, access = s.floor_view("floor")
    assert [(w.zone, w.customer.greeting_name) for w in view.waiting] == [
        ("bakery", "Clara"), ("dairy", "Anna")]
    assert view.waiting[0].customer.pickup is not None
    assert view.waiting[0].customer.pickup[0].order_id == "ORD-clara"
    assert {c for c, _ in access} == {"anna", "clara"}
    s.feed([exited("anna", "dairy")])
    assert [w.zone for w in s.floor_view("floor")[0].waiting] == ["bakery", None]
    s.feed([exited("clara", None)])
    assert [w.customer.greeting_name for w in s.floor_view("floor")[0].waiting] == ["Anna"]


# --- withdrawal, erasure, bounds -----------------------------------------------------------


def test_forget_clears_every_screen_at_once() -> None:
    s = state(registry(record("anna"), record("boris")))
    s.feed([entered("anna", None), entered("anna", "till-1"), reserved("anna", lane="lane-2"),
            loyalty(CARD_ANNA, lane="lane-1")])
    assert s.holds("anna")
    changed = s.forget(["anna"])
    assert changed == {"lane:lane-1", "lane:lane-2", "floor"}
    assert not s.holds("anna") and s.holds("anna") is False
    assert s.who("lane-1").customer is None and s.who("lane-2").customer is None
    assert s.floor_view("manager")[0].waiting == []


def test_withdrawn_consent_hides_the_profile_even_before_forget() -> None:
    reg = registry(record("anna"))
    s = state(reg)
    s.feed([entered("anna", "till-1")])
    assert s.lane_view("lane-1", "cashier")[0].customer is not None
    reg.apply(CustomersChange("upsert", (record("anna", staff_view=False, version=2),), {},
                              (), None), T0)
    assert s.lane_view("lane-1", "cashier")[0].customer is None  # the one check, each frame


def test_bounds_hold_against_floods() -> None:
    s = ScreenState(registry(), lane_zones={})  # no lanes configured: first seen, bounded
    s.feed([loyalty(CARD_UNKNOWN, lane=f"lane-{i}") for i in range(MAX_LANES + 10)])
    assert len(s.lanes) == MAX_LANES and s.counters.inputs_rejected == 10
    s.feed([loyalty(CARD_UNKNOWN, tx="t" * 500)])  # an id too long: ignored, counted
    assert s.counters.inputs_rejected == 11
    z = state(registry())
    z.feed([entered(f"c{i}", "till-1") for i in range(MAX_IN_ZONE + 5)])
    assert z.who("lane-1").candidates == MAX_IN_ZONE and z.counters.evicted == 5
    z.feed([entered(f"c{i}", None) for i in range(MAX_IN_STORE + 3)])
    assert z.counters.evicted == 8
    assert z.feed([loyalty(CARD_UNKNOWN, lane="lane-9")]) == set()  # not a configured lane


# --- the app service: notices, access log -------------------------------------------------


class _Emitted(list[ev.EventDraft]):
    def __call__(self, drafts: list[ev.EventDraft]) -> None:
        self.extend(drafts)


def service(reg: Registry) -> tuple[ScreenService, _Emitted]:
    emitted = _Emitted()
    return ScreenService(state(reg), Hub(), emit=emitted, clock=lambda: T0), emitted


def test_views_are_logged_once_per_session_customer_and_transaction() -> None:
    svc, emitted = service(registry(record("anna")))
    svc.on_processed([loyalty(CARD_ANNA, tx="tx-1")])
    for _ in range(5):  # every SSE frame, every reload: one access
        svc.lane("lane-1", "cashier", "s1")
    svc.lane("lane-1", "cashier", "s2")  # another session
    svc.on_processed([completed("tx-1"), loyalty(CARD_ANNA, tx="tx-2")])
    svc.lane("lane-1", "cashier", "s1")  # another transaction
    assert len(emitted) == 3
    e = emitted[0]
    assert e.type is ev.STAFF_VIEWED and isinstance(e.data, p.StaffViewed)
    assert (e.data.lane, e.data.staff_role, e.data.session, e.data.customer) == (
        "lane-1", "cashier", "s1", "anna")
    assert e.data.fields == ["greeting_name", "tier", "pickup"]


def test_no_access_event_without_anything_personal() -> None:
    svc, emitted = service(registry(record("anna", staff_view=False)))
    svc.on_processed([entered("anna", "till-1")])
    assert svc.lane("lane-1", "manager", "s1").present
    assert emitted == []


def test_the_access_cache_is_bounded_and_forget_empties_it() -> None:
    svc, emitted = service(registry(record("anna")))
    svc.on_processed([loyalty(CARD_ANNA)])
    for i in range(MAX_ACCESS_KEYS + 5):
        svc.lane("lane-1", "cashier", f"s{i}")
    assert len(svc._seen) == MAX_ACCESS_KEYS
    svc.forget(["anna"])
    assert len(svc._seen) == 0 and not svc.state.holds("anna")
    assert len(emitted) == MAX_ACCESS_KEYS + 5


def test_the_hub_gets_a_notice_without_personal_data() -> None:
    svc, _ = service(registry(record("anna")))
    sub = svc.hub.subscribe("lane:lane-1")
    floor = svc.hub.subscribe("floor")
    svc.on_processed([entered("anna", None), entered("anna", "till-1")])
    svc.forget(["anna"])
    notices = []
    while not sub._queue.empty():
        notices.append(sub._queue.get_nowait())
    assert [m.data for m in notices if m is not None] == [{"topic": "lane:lane-1"}] * 2
    assert not floor._queue.empty()
    assert "anna" not in repr(notices).lower()


def test_a_bug_in_the_feed_is_counted_not_raised() -> None:
    svc, _ = service(registry())
    svc.state.feed = None  # type: ignore[assignment,method-assign]
    svc.on_processed([loyalty(CARD_ANNA)])
    assert svc.errors_total == 1


def test_session_pseudonyms_are_stable_and_not_the_cookie() -> None:
    a = session_pseudonym("cookie-value")
    assert a == session_pseudonym("cookie-value") != session_pseudonym("other")
    assert len(a) == 32 and "cookie" not in a


def test_erasure_takes_the_customer_off_every_screen(tmp_path: Path) -> None:
    box = Box(tmp_path)
    try:
        box.fill()
        box.ledger.close()
        emitted = _Emitted()
        svc = ScreenService(state(box.registry), Hub(), emit=emitted, clock=lambda: T0)
        svc.on_processed([loyalty(CARD_T), entered(TARGET, None), entered(TARGET, "till-2")])
        assert svc.lane("lane-1", "cashier", "s1").customer is not None
        assert svc.state.holds(TARGET) and svc._seen
        targets = dataclasses.replace(box.targets(), screens=svc)
        counts = asyncio.run(erase([TARGET], targets, T0 + 5000))
        assert counts.errors == []
        assert not svc.state.holds(TARGET) and not svc._seen
        assert not svc.lane("lane-1", "cashier", "s1").present
        assert not svc.lane("lane-2", "manager", "s1").present
    finally:
        box.close()


def test_wired_to_the_personal_service_as_the_gateway_does(tmp_path: Path) -> None:
    """The real service: its processed batches reach the screens (the token reserved,
    the offers held from the engine), a staff_view withdrawal takes the customer off."""
    box = tp.Box(tmp_path)
    box.know(record(tp.CUSTOMER))  # not in the campaign's control group
    box.campaigns("upsert", tp.WELCOME)
    emitted = _Emitted()
    svc = ScreenService(state(box.registry), Hub(), emit=emitted, clock=lambda: T0,
                        engine=box.svc.engine)
    box.svc.on_processed = svc.on_processed
    box.svc.on_registry_changed = svc.on_registry_changed
    box.svc.on_staff_withdrawn = svc.forget

    async def go() -> None:
        box.svc.submit([entered(tp.CUSTOMER, None)])
        await box.svc._drain()  # the welcome offer issued: held by the engine
        box.svc.submit([tp.scanned(box.tokens[0].text)])
        await box.svc._drain()
        view = svc.lane("lane-1", "cashier", "s1")
        assert view.token is not None and view.token.state == "reserved"
        assert view.customer is not None and view.customer.greeting_name == "Cust-Alice"
        assert [o.title for o in view.customer.offers or ()] == ["Welcome"]
        delta = box.registry.apply(CustomersChange(
            "upsert", (record(tp.CUSTOMER, staff_view=False, version=2),), {}, (), None), T0)
        assert delta.staff_withdrawn == (tp.CUSTOMER,)
        await box.svc.follow(delta)
        assert not svc.state.holds(tp.CUSTOMER)
        assert svc.lane("lane-1", "cashier", "s1").customer is None

    try:
        asyncio.run(go())
    finally:
        box.svc.close()
    assert [type(d.data) for d in emitted] == [p.StaffViewed]
