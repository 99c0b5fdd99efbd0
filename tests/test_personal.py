"""The personalisation service in the event flow, on real SQLite files and real keys:
a customer enters and gets an offer whose token verifies; no marketing consent is
suppressed; the token scanned at a lane is reserved, the receipt redeems it and the
purchase is stitched to the customer by the token; a marketing withdrawal revokes it;
campaigns commands apply and survive a restart, versions never regressing; the engine's
caps survive a restart; the registry's sliced apply is the same as one call."""

from __future__ import annotations

import asyncio
import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from storegate.app.personal import PersonalService, apply_in_slices
from storegate.app.preflight import load_start_files
from storegate.app.redemption import IssuedToken
from storegate.app.status import GatewayStatusView, PersonalStatus
from storegate.config import Config, parse
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.personal.campaigns import Campaign, CampaignsCommand
from storegate.core.personal.registry import (
    Consent,
    Consents,
    CustomerRecord,
    CustomersChange,
    PickupOrder,
    Profile,
    Registry,
    Removal,
)
from storegate.core.personal.stitching import Stitcher
from storegate.core.personal.tokens import VerifiedToken, verify_token
from storegate.core.trust import load_public_key
from storegate.errors import DataFileError

T0 = 1_795_000_000.0  # 2026-11-18, a Wednesday
REPO = Path(__file__).resolve().parents[1]
CUSTOMER = "cust-alice"
WELCOME = {"id": "welcome", "version": 1, "trigger": {"kind": "store_entered"},
           "priority": 10, "offer_ttl_s": 3600, "content": {
               "title": "Welcome", "discount": {"kind": "percent", "value": 10}}}
CEREAL = {"id": "milk-for-cereal", "version": 1,
          "trigger": {"kind": "purchase_category", "category": "cereal"},
          "content": {"title": "Milk"}}


def config(tmp_path: Path) -> Config:
    return parse(f"""
store_id = "s1"
gateway_id = "g1"
[storage]
path = "{tmp_path}/outbox.db"
[offers]
min_gap_s = 0
[offers.categories]
"muesli" = "cereal"
""", source="test", base=tmp_path, environ={})


def record(customer: str = CUSTOMER, *, version: int = 1, marketing: bool = True,
           pickup: bool = False) -> CustomerRecord:
    yes = Consent(granted=True, at=T0 - 86400, source="app")
    return CustomerRecord(
        customer=customer, version=version,
        consents=Consents(presence=yes, marketing=Consent(granted=marketing, at=T0 - 60,
                                                          source="app")),
        profile=Profile(tier="gold", store_visits=3),
        pickup_orders=[PickupOrder(order_id="W-1", state="ready", items=2)] if pickup else [])


class Box:
    """The service as the gateway builds it, its output collected."""

    def __init__(self, tmp_path: Path, registry: Registry | None = None) -> None:
        self.cfg = config(tmp_path)
        self.registry = registry or Registry(tomb_key=b"k" * 32, keep_s=86400)
        self.out: list[ev.EventDraft] = []
        self.tokens: list[IssuedToken] = []
        self.svc = PersonalService.build(
            self.cfg, self.registry, stitcher=Stitcher(
                self.cfg.stitching.settings(), {}, self.registry.customer_of_loyalty),
            emit=self.out.extend, wall_clock=lambda: T0)
        self.svc.on_offer = lambda _d, tok: self.tokens.append(tok)

    def know(self, *records: CustomerRecord) -> None:
        self.registry.apply(CustomersChange("upsert", records, {}, (), None), T0)

    def campaigns(self, op: str, *campaigns: dict[str, object]) -> None:
        cmd = CampaignsCommand.model_validate({"op": op, "campaigns": list(campaigns)})
        asyncio.run(self.svc.apply_campaigns(cmd))

    def process(self, *drafts: ev.EventDraft, at: float = T0) -> list[ev.EventDraft]:
        return asyncio.run(self.svc.process(list(drafts), at))


def entered(customer: str | None = CUSTOMER, visit: str = "v-1", at: float = T0,
            zone: str | None = None) -> ev.EventDraft:
    return ev.EventDraft(ev.VISIT_ENTERED, f"visit/{visit}", at, p.VisitEntered(
        visit_id=visit, customer=customer, zone=zone, entered_at=ev.rfc3339(at)))


def scanned(value: str, tx: str = "tx-1", at: float = T0 + 60) -> ev.EventDraft:
    return ev.EventDraft(ev.POS_SCANNED, "lane/lane-1", at, p.PosScanned(
        lane="lane-1", kind="offer", value=value, scanned_at=ev.rfc3339(at),
        transaction_id=tx))


def completed(tx: str = "tx-1", at: float = T0 + 90, item: str = "Bread") -> ev.EventDraft:
    return ev.EventDraft(ev.PURCHASE_COMPLETED, "lane/lane-1", at, p.PurchaseCompleted(
        receipt="R-1", lane="lane-1", transaction_id=tx, items=[p.LineItem(
            name=item, quantity_milli=1000, unit_price_minor=100, amount_minor=100)],
        total_minor=100, currency="RUB", completed_at=ev.rfc3339(at)))


def names(drafts: list[ev.EventDraft]) -> list[str]:
    return [d.type.name.removeprefix("storegate.").rsplit(".", 1)[0] for d in drafts]


def test_an_entering_customer_gets_an_offer_whose_token_verifies(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.know(record())
    box.campaigns("upsert", WELCOME)
    out = box.process(entered())
    assert names(out) == ["visit.entered", "offer.issued"]  # the offer after its cause
    issued = out[1].data
    assert isinstance(issued, p.OfferIssued)
    assert issued.customer == CUSTOMER and issued.campaign == "welcome"
    assert issued.visit_id == "v-1" and issued.trigger == "store_entered"
    [token] = box.tokens
    assert token.token_id == issued.offer_id
    key = box.svc.offer_key
    checked = verify_token(token.text, keys={key.kid: load_public_key(key.public_key)},
                           store="s1", now=T0 + 1, customer=CUSTOMER)
    assert isinstance(checked, VerifiedToken) and checked.token_hex == issued.offer_id
    assert token.expires_at == T0 + 3600  # the campaign's TTL, not the 7-day default
    row = box.svc.redemption.ledger.get(issued.offer_id)
    assert row is not None and row.state == "issued" and row.customer == CUSTOMER
    assert box.svc.snapshot().offers_issued_total == 1
    box.svc.close()


def test_without_marketing_consent_the_offer_is_suppressed(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.know(record(marketing=False))
    box.campaigns("upsert", WELCOME)
    out = box.process(entered(), entered("cust-unknown", "v-2"))
    assert names(out) == ["visit.entered", "offer.suppressed",
                          "visit.entered", "offer.suppressed"]
    for d in (out[1], out[3]):  # no record is no consent either
        assert isinstance(d.data, p.OfferSuppressed)
        assert d.data.reason == "no_consent" and d.data.campaign is None
    assert box.tokens == []
    assert box.svc.snapshot().offers_suppressed_by_reason == {"no_consent": 2}
    box.svc.close()


def test_token_reserved_at_the_lane_redeemed_and_purchase_stitched(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.know(record())
    box.campaigns("upsert", WELCOME)
    offer_id = box.process(entered())[1].data.offer_id  # type: ignore[union-attr]
    out = box.process(scanned(box.tokens[0].text))
    assert names(out) == ["pos.scanned", "offer.reserved"]
    out = box.process(completed())
    assert names(out) == ["purchase.completed", "offer.redeemed"]
    purchase = out[0].data
    assert isinstance(purchase, p.PurchaseCompleted)
    assert purchase.customer == CUSTOMER and purchase.visit_id == "v-1"
    assert purchase.attribution is not None and purchase.attribution.method == "token"
    assert purchase.offers_redeemed == [offer_id]
    assert box.svc.redemption.ledger.get(offer_id).state == "redeemed"  # type: ignore[union-attr]
    s = box.svc.snapshot()
    assert (s.tokens_reserved_total, s.tokens_redeemed_total) == (1, 1)
    assert s.stitched_by_method["token"] == 1
    # the same token again: single use
    out = box.process(scanned(box.tokens[0].text, tx="tx-2", at=T0 + 120))
    assert isinstance(out[1].data, p.OfferRejected) and out[1].data.reason == "redeemed"
    box.svc.close()


def test_a_purchase_of_a_configured_category_triggers_its_campaign(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.know(record())
    box.campaigns("upsert", CEREAL)
    box.svc.stitcher.note_token("tx-1", CUSTOMER)  # as a reserved token would say
    out = box.process(completed(item="Crunchy MUESLI 500g"))
    assert names(out) == ["purchase.completed", "offer.issued"]
    assert out[1].data.campaign == "milk-for-cereal"  # type: ignore[union-attr]
    assert out[1].data.trigger == "purchase_category"  # type: ignore[union-attr]
    box.svc.close()


def test_marketing_withdrawal_revokes_offers_and_tokens(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.know(record())
    box.campaigns("upsert", WELCOME)
    offer_id = box.process(entered())[1].data.offer_id  # type: ignore[union-attr]
    delta = box.registry.apply(CustomersChange(
        "upsert", (record(version=2, marketing=False),), {}, (), None), T0 + 10)
    assert delta.marketing_withdrawn == (CUSTOMER,)
    asyncio.run(box.svc.follow(delta))
    assert box.svc.redemption.ledger.get(offer_id).state == "revoked"  # type: ignore[union-attr]
    assert box.svc.engine.held(CUSTOMER, T0 + 10) == []
    out = box.process(scanned(box.tokens[0].text))
    assert isinstance(out[1].data, p.OfferRejected) and out[1].data.reason == "revoked"
    box.svc.close()


def test_forget_drops_the_customer_everywhere(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.know(record())
    box.campaigns("upsert", WELCOME)
    box.process(entered())
    assert box.svc.stitcher.holds(CUSTOMER)
    gone = asyncio.run(box.svc.forget([CUSTOMER]))
    assert (gone.offers_dropped, gone.tokens_revoked) == (1, 1)
    assert not box.svc.stitcher.holds(CUSTOMER)
    assert box.svc.engine.held(CUSTOMER, T0) == []
    box.svc.close()


def test_campaigns_apply_persist_and_never_regress_across_a_restart(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.campaigns("upsert", WELCOME, CEREAL)
    box.campaigns("upsert", {**WELCOME, "version": 2, "priority": 20})
    asyncio.run(box.svc.apply_campaigns(CampaignsCommand.model_validate(
        {"op": "remove", "remove": [{"id": "milk-for-cereal", "version": 5}]})))
    box.svc.close()
    again = Box(tmp_path)
    held = again.svc.engine.campaigns
    assert list(held) == ["welcome"] and held["welcome"].campaign.version == 2
    # an older version still in flight after the restart: stale, nothing comes back
    result = asyncio.run(again.svc.apply_campaigns(CampaignsCommand.model_validate(
        {"op": "upsert", "campaigns": [{**CEREAL, "version": 4}, WELCOME]})))
    assert (result.applied, result.stale, result.active) == (0, 2, 1)
    again.svc.close()


def test_the_engine_caps_survive_a_restart(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.know(record())
    box.campaigns("upsert", WELCOME)
    assert names(box.process(entered())) == ["visit.entered", "offer.issued"]
    box.svc.close()
    again = Box(tmp_path, box.registry)
    out = again.process(entered(visit="v-2", at=T0 + 100), at=T0 + 100)
    assert names(out) == ["visit.entered", "offer.suppressed"]
    assert out[1].data.reason == "already_held"  # type: ignore[union-attr]
    again.svc.close()


def test_submit_keeps_order_and_passes_the_anonymous_straight_through(
        tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.know(record(pickup=True))
    box.campaigns("upsert", WELCOME, {**WELCOME, "id": "pickup", "priority": 99,
                                      "trigger": {"kind": "pickup_ready"}})

    async def go() -> None:
        box.svc.submit([entered()])
        box.svc.submit([entered(None, "v-anon")])  # nothing personal: not queued
        assert names(box.out) == ["visit.entered"] and box.out[0].data.customer is None  # type: ignore[union-attr]
        await box.svc.flush()

    asyncio.run(go())
    assert names(box.out) == ["visit.entered", "visit.entered", "offer.issued",
                              "offer.suppressed"]
    assert box.out[2].data.campaign == "pickup"  # type: ignore[union-attr]
    assert box.out[3].data.reason == "lower_rank"  # type: ignore[union-attr]
    box.svc.close()


@pytest.mark.parametrize("op", ["upsert", "replace", "remove"])
def test_the_sliced_registry_apply_is_the_same_as_one_call(op: str) -> None:
    def fresh() -> Registry:
        r = Registry(tomb_key=b"t" * 32, keep_s=86400)
        r.apply(CustomersChange("upsert", tuple(
            record(f"cust-{i:05d}", marketing=i % 2 == 0) for i in range(0, 9000, 2)),
            {}, (), None), T0)
        return r

    if op == "remove":
        change = CustomersChange("remove", (), {}, tuple(
            Removal(customer=f"cust-{i:05d}", version=1) for i in range(0, 9000, 3)),
            None)
    else:
        change = CustomersChange(op, tuple(  # type: ignore[arg-type]
            record(f"cust-{i:05d}", version=2, marketing=False) for i in range(0, 7000)),
            {}, (), None)
    one, sliced = fresh(), fresh()
    a = one.apply(change, T0 + 1)
    b = asyncio.run(apply_in_slices(sliced, change, T0 + 1))
    assert sorted(one.customers()) == sorted(sliced.customers())
    assert (a.applied, a.stale, a.removed) == (b.applied, b.stale, b.removed)
    assert a.applied + a.removed > 0
    for f in ("withdraw", "marketing_withdrawn", "deleted"):
        assert sorted(getattr(a, f)) == sorted(getattr(b, f)), f


def test_the_embedded_demo_campaigns_are_the_firmware_ones() -> None:
    shipped = REPO / "src" / "storegate" / "defaults" / "demo-store" / "campaigns.toml"
    source = REPO / "firmware-configs" / "campaigns" / "demo.toml"
    a, b = (tomllib.loads(f.read_text())["campaigns"] for f in (shipped, source))
    assert a == b and [Campaign.model_validate(c).id for c in a]


def test_the_status_round_trips_and_an_older_file_still_parses(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.know(record(marketing=False))
    box.campaigns("upsert", WELCOME)
    box.process(entered())
    snap = box.svc.snapshot()
    assert snap.offers_suppressed_by_reason == {"no_consent": 1}
    assert PersonalStatus.from_json(dataclasses.asdict(snap)) == snap
    health = box.svc.health()
    assert CUSTOMER not in health.model_dump_json()  # counts, never ids
    old = {"pid": 1, "state": "running", "outbox": {}}  # written before this field
    view = GatewayStatusView.from_json(old)
    assert view is not None and view.personal is None
    box.svc.close()


def test_config_check_reads_the_campaigns_file(tmp_path: Path) -> None:
    bad = tmp_path / "campaigns.toml"
    bad.write_text('[[campaigns]]\nid = "x"\nversion = 0\n')
    cfg = parse(f'store_id = "s1"\ngateway_id = "g1"\n[offers]\ncampaigns_file = "{bad}"\n',
                source="t", base=tmp_path, environ={})
    with pytest.raises(DataFileError, match="campaigns"):
        load_start_files(cfg)
    bad.write_text((REPO / "firmware-configs" / "campaigns" / "demo.toml").read_text())
    assert len(load_start_files(cfg).campaigns) == 6


# --- review 11 -----------------------------------------------------------------------

CARD = "ps1:" + "a1" * 16


def with_card(r: CustomerRecord, card: str = CARD) -> CustomerRecord:
    return CustomerRecord.model_validate({**r.model_dump(), "loyalty_ids": [card]})


def card_scanned(card: str = CARD, tx: str = "tx-1", at: float = T0 + 50) -> ev.EventDraft:
    return ev.EventDraft(ev.POS_SCANNED, "lane/lane-1", at, p.PosScanned(
        lane="lane-1", kind="loyalty", value=card, scanned_at=ev.rfc3339(at),
        transaction_id=tx))


def test_erasure_rewrites_the_batches_queued_and_the_one_waiting(tmp_path: Path) -> None:
    """Item 2: batches queued before the erasure (one already taken by the worker,
    waiting for the lock) are processed after it without the customer: no offer
    decided about them, nothing tracked again, the events kept (customer null)."""
    box = Box(tmp_path)
    box.know(with_card(record()), record("cust-bob"))
    box.campaigns("upsert", WELCOME)
    box.svc.submit([entered()])  # will be waiting for the lock
    box.svc.submit([card_scanned(), entered("cust-bob", "v-2")])  # still queued

    async def run() -> None:
        box.registry.erase([CUSTOMER], T0)  # as app/erasure.py does first
        forget = asyncio.create_task(box.svc.forget([CUSTOMER], [CARD]))
        await asyncio.sleep(0)  # forget holds the lock now
        drain = asyncio.create_task(box.svc._drain())
        await asyncio.sleep(0)
        assert box.svc._current is not None  # taken, waiting for the lock
        gone = await forget
        assert gone.queued_redacted == 2  # her visit, her card's scan
        await drain

    asyncio.run(run())
    assert names(box.out) == ["visit.entered", "pos.scanned", "visit.entered",
                              "offer.issued"]
    assert box.out[0].data.customer is None  # type: ignore[attr-defined]
    assert box.out[1].data.value is None  # type: ignore[attr-defined]
    assert box.out[3].data.customer == "cust-bob"  # type: ignore[attr-defined]
    assert CUSTOMER not in repr(box.out) and CARD not in repr(box.out)
    svc = box.svc
    assert not svc.stitcher.holds(CUSTOMER)
    assert CUSTOMER not in svc._store_visit and CUSTOMER not in svc._visits_seen
    assert svc.engine.held(CUSTOMER, T0) == []
    # and an event naming them produced later (before presence forgot them) tracks nothing
    out = box.process(entered(visit="v-9", at=T0 + 5), at=T0 + 5)
    assert names(out) == ["visit.entered"]
    assert CUSTOMER not in svc._store_visit and CUSTOMER not in svc._visits_seen
    box.svc.close()


def test_a_stale_campaign_remove_is_not_saved_as_a_removal(tmp_path: Path) -> None:
    """Item 5: a remove older than the active version is refused, and stays refused
    after a restart (it was saved as a removal: the campaign was gone)."""
    box = Box(tmp_path)
    box.campaigns("upsert", {**WELCOME, "version": 3})
    result = asyncio.run(box.svc.apply_campaigns(CampaignsCommand.model_validate(
        {"op": "remove", "remove": [{"id": "welcome", "version": 2}]})))
    assert (result.stale, result.removed, result.active) == (1, 0, 1)
    box.svc.close()
    again = Box(tmp_path)
    assert list(again.svc.engine.campaigns) == ["welcome"]
    again.svc.close()


def test_a_token_of_someone_else_than_the_lane_s_card_is_refused(tmp_path: Path) -> None:
    """Item 8: Bob's token forwarded to Alice, who scans her card: refused
    (customer_mismatch), not reserved for Bob on Alice's purchase."""
    box = Box(tmp_path)
    box.know(with_card(record()), record("cust-bob"))
    box.campaigns("upsert", WELCOME)
    box.process(entered("cust-bob", "v-2"))
    [bobs] = box.tokens
    out = box.process(card_scanned(), scanned(bobs.text, at=T0 + 60))
    assert names(out) == ["pos.scanned", "pos.scanned", "offer.rejected"]
    assert out[2].data.reason == "customer_mismatch"  # type: ignore[attr-defined]
    # in a later batch of the same transaction too; and Bob's own lane takes it
    out = box.process(scanned(bobs.text, at=T0 + 61))
    assert out[1].data.reason == "customer_mismatch"  # type: ignore[attr-defined]
    out = box.process(scanned(bobs.text, tx="tx-bob", at=T0 + 62))
    assert names(out) == ["pos.scanned", "offer.reserved"]
    box.svc.close()


def test_an_offer_expiring_within_the_second_is_suppressed_not_raised(
        tmp_path: Path) -> None:
    """Item 11: the token cannot be signed (its expiry is its issue second)."""
    box = Box(tmp_path)
    box.know(record())
    box.campaigns("upsert", {**WELCOME, "valid_until": ev.rfc3339(T0 + 0.5)})
    out = box.process(entered())
    assert names(out) == ["visit.entered", "offer.suppressed"]
    assert out[1].data.reason == "not_valid"  # type: ignore[attr-defined]
    box.svc.close()


def test_a_failing_decision_keeps_the_batch_s_redemption_and_stitching(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 11: the token's redemption and the stitched purchase go out even when the
    offer decision after them fails (counted)."""
    box = Box(tmp_path)
    box.know(record())
    box.campaigns("upsert", WELCOME, CEREAL)
    box.process(entered())
    box.process(scanned(box.tokens[0].text))

    def broken(*_a: object) -> list[object]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(box.svc.engine, "decide", broken)
    out = box.process(completed(item="Muesli"))
    assert names(out) == ["purchase.completed", "offer.redeemed"]
    assert out[0].data.customer == CUSTOMER  # type: ignore[attr-defined]
    assert box.svc.decision_errors_total == 1
    box.svc.close()


def test_lane_batches_queue_even_when_the_queue_is_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 15: past the bound only presence batches pass unprocessed; a purchase
    overtaking its scan would never confirm the reservation."""
    monkeypatch.setattr("storegate.app.personal.MAX_QUEUED_BATCHES", 1)
    box = Box(tmp_path)
    box.know(record())
    box.svc.submit([entered()])
    box.svc.submit([entered(visit="v-2")])  # presence: passes unprocessed, counted
    box.svc.submit([completed()])  # a lane's: queued behind
    assert names(box.out) == ["visit.entered"] and box.svc.unprocessed_total == 1
    assert len(box.svc._queue) == 2
    box.svc.close()


def test_a_backed_up_queue_is_rewritten_in_slices_arrivals_included(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 7: a long queue is rewritten with the loop let go between slices; batches
    queued meanwhile are rewritten too."""
    monkeypatch.setattr("storegate.app.personal.REDACT_SLICE", 1)
    box = Box(tmp_path)
    box.know(record())
    for n in range(3):
        box.svc.submit([entered(visit=f"v-{n}")])

    rewrite = box.svc._redact_batches
    late = [entered(visit="v-late")]

    def first_slice_then_an_arrival(*a: Any) -> int:
        n = rewrite(*a)
        if late:  # arrives while the queue is being rewritten
            box.svc.submit([late.pop()])
        return n

    monkeypatch.setattr(box.svc, "_redact_batches", first_slice_then_an_arrival)

    async def run() -> int:
        box.registry.erase([CUSTOMER], T0)
        gone = await box.svc.forget([CUSTOMER])
        await box.svc._drain()
        return gone.queued_redacted

    assert asyncio.run(run()) == 4
    assert names(box.out) == ["visit.entered"] * 4
    assert all(d.data.customer is None for d in box.out)  # type: ignore[attr-defined]
    box.svc.close()
