"""The customer registry: records validated where they enter, versions, consent."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from storegate.core import seal
from storegate.core.ble.eid import Identity
from storegate.core.commands import (
    COMMANDS,
    CommandRejected,
    open_customers,
    validate_payload,
)
from storegate.core.personal import registry as reg
from storegate.core.personal.registry import (
    CustomerRecord,
    CustomersChange,
    CustomersCommand,
    Registry,
)
from tests.support.central import Central, customer_record

T0 = 1_795_000_000.0
KEEP_S = 3600.0
GW_KEY = X25519PrivateKey.generate()
GATEWAYS = {"g1": seal.public_text(GW_KEY.public_key())}
LOYAL = "ps1:" + "ab" * 16


def ident(n: int) -> Identity:
    return Identity(f"cust-{n}", bytes([n]) * 16, 8, 5000 + n, T0 - 86400)


def change(op: str, records: Sequence[dict[str, Any]] = (),
           remove: Sequence[tuple[str, int]] = ()) -> CustomersChange:
    """The whole path a command takes: central seals, the gateway validates and opens."""
    body = Central.customers_payload(op, records, remove, gateways=GATEWAYS)
    cmd = validate_payload("customers", body, now=T0)
    assert isinstance(cmd, CustomersCommand), cmd
    opened = open_customers(cmd, key=GW_KEY, store="s1", gateway="g1", command_id="c1")
    assert isinstance(opened, CustomersChange), opened
    return opened


def rejected(body: dict[str, Any]) -> str:
    r = validate_payload("customers", body, now=T0, command_id="c1")
    assert isinstance(r, CommandRejected), r
    assert r.reason == "invalid" and r.command_id == "c1"
    return r.detail


def fresh() -> Registry:
    return Registry(tomb_key=b"k" * 32, keep_s=KEEP_S)


# --- validation --------------------------------------------------------------------


def test_registered_as_a_command() -> None:
    assert COMMANDS["customers"] is CustomersCommand


@pytest.mark.parametrize(("mutate", "where", "says"), [
    (lambda r: r.update(customer="AA:BB:CC:DD:EE:FF"), "customers.0.customer", "MAC"),
    (lambda r: r.update(customer="has space"), "customers.0.customer", "pattern"),
    (lambda r: r.update(version=0), "customers.0.version", "greater than or equal to 1"),
    (lambda r: r.update(loyalty_ids=["1234567890"]), "customers.0.loyalty_ids.0", "pattern"),
    (lambda r: r.update(loyalty_ids=[LOYAL, LOYAL]), "customers.0", "loyalty id is listed"),
    (lambda r: r["profile"].update(segments=["t"] * 17), "customers.0.profile.segments",
     "at most 16"),
    (lambda r: r["profile"].update(birthday_month=13), "customers.0.profile.birthday_month",
     "less than or equal to 12"),
    (lambda r: r["profile"].update(greeting_name="Al\x1bex"),
     "customers.0.profile.greeting_name", "pattern"),
    (lambda r: r["profile"].update(greeting_name="A" * 81),
     "customers.0.profile.greeting_name", "at most 80"),
    (lambda r: r["profile"].update(sizes={f"k{i}": "M" for i in range(13)}),
     "customers.0.profile.sizes", "at most 12"),
    (lambda r: r["profile"].update(recent_purchases=[{
        "at": T0, "channel": "mail", "category": "shoes", "name": "x", "amount_minor": 1}]),
     "customers.0.profile.recent_purchases.0.channel", "'online' or 'store'"),
    (lambda r: r["profile"].update(lifetime_spend_minor=-1),
     "customers.0.profile.lifetime_spend_minor", "greater than or equal to 0"),
    (lambda r: r["consents"].update(marketing={"granted": True, "at": float("nan"),
                                               "source": "app"}),
     "customers.0.consents.marketing.at", "finite"),
    (lambda r: r["consents"].update(marketing={"granted": True, "at": 1.0, "source": "app"}),
     "customers.0.consents.marketing.at", "greater than or equal to"),
    (lambda r: r.update(pickup_orders=[{"order_id": "o1", "state": "lost", "items": 1}]),
     "customers.0.pickup_orders.0.state", "'preparing'"),
    (lambda r: r.update(wishlist=[{"sku": "s", "name": "n", "category": "c"}] * 13),
     "customers.0.wishlist", "at most 12"),
    (lambda r: r.update(shoe_size=42), "customers.0.shoe_size", "Extra inputs"),
])
def test_bad_records_are_rejected_with_where_and_why(mutate: Any, where: str,
                                                     says: str) -> None:
    r = customer_record("cust-1", 1)
    mutate(r)
    detail = rejected({"op": "upsert", "customers": [r]})
    assert detail.startswith(where + ":"), detail
    assert says in detail, detail


def test_command_shape() -> None:
    r = customer_record("cust-1", 1)
    assert "upsert without customers" in rejected({"op": "upsert"})
    assert "remove takes remove" in rejected({"op": "remove", "customers": [r]})
    assert "takes customers, not remove" in rejected(
        {"op": "replace", "remove": [{"customer": "a", "version": 1}]})
    assert "listed twice" in rejected({"op": "upsert", "customers": [r, r]})
    assert "listed twice in remove" in rejected(
        {"op": "remove", "remove": [{"customer": "a", "version": 1}] * 2})
    sealed = Central.customers_payload("upsert", [customer_record("cust-1", 1, identity=ident(1))],
                                       gateways=GATEWAYS)
    assert "never sent in clear" in rejected({**sealed, "sealed_to": {}})
    other = sealed["customers"][0]
    assert "not the record's customer" in rejected(
        {**sealed, "customers": [{**other, "customer": "cust-2"}]})
    too_many = rejected({"op": "upsert", "customers": [r] * 2 + [{}] * reg.MAX_CUSTOMERS})
    assert too_many.startswith("customers: List should have at most 100000 items")


def test_the_largest_record_is_a_few_kib() -> None:
    tag = "t" * 32
    name = "n" * 80
    r = customer_record(
        "c" * 128, reg.MAX_VERSION, identity=None, loyalty_ids=[
            f"ps1:{i:032x}" for i in range(reg.MAX_LOYALTY_IDS)],
        greeting_name=name, tier=tag, segments=[tag] * reg.MAX_TAGS,
        preferences=[tag] * reg.MAX_TAGS,
        sizes={f"{i:032d}": "s" * 16 for i in range(reg.MAX_SIZES)},
        favourite_categories=[tag] * reg.MAX_FAVOURITES,
        recent_purchases=[{"at": T0, "channel": "online", "category": tag, "name": name,
                           "amount_minor": reg.MAX_MINOR}] * reg.MAX_RECENT_PURCHASES,
        lifetime_spend_minor=reg.MAX_LIFETIME_MINOR, birthday_month=12, store_visits=10**6)
    r["pickup_orders"] = [{"order_id": f"{i:040d}", "state": "preparing", "counter": tag,
                           "items": 10_000, "ready_at": T0}
                          for i in range(reg.MAX_PICKUP_ORDERS)]
    r["wishlist"] = [{"sku": "s" * 40, "name": name, "category": tag}] * reg.MAX_WISHLIST
    record = CustomerRecord.model_validate(r)
    size = len(record.model_dump_json())
    assert 6000 < size <= reg.MAX_RECORD_CHARS, size


def test_long_lists_are_validated_in_batches_and_errors_point_at_the_record() -> None:
    records = [customer_record(f"cust-{i}", 1) for i in range(1500)]
    records[1234]["profile"]["birthday_month"] = 0
    pauses: list[int] = []
    r = validate_payload("customers", {"op": "replace", "customers": records}, now=T0,
                         pause=lambda: pauses.append(1))
    assert isinstance(r, CommandRejected)
    assert r.detail.startswith("customers.1234.profile.birthday_month:"), r.detail
    assert pauses  # the first batch passed and the thread let others run
    records[1234]["profile"]["birthday_month"] = 5
    ok = validate_payload("customers", {"op": "replace", "customers": records}, now=T0,
                          pause=lambda: None)
    assert isinstance(ok, CustomersCommand) and len(ok.customers) == 1500


def test_identities_are_opened_by_this_gateway_only() -> None:
    body = Central.customers_payload(
        "upsert", [customer_record("cust-0", 1),
                   customer_record("cust-1", 1, identity=ident(1))], gateways=GATEWAYS)
    cmd = validate_payload("customers", body, now=T0)
    assert isinstance(cmd, CustomersCommand)
    opened = open_customers(cmd, key=GW_KEY, store="s1", gateway="g1")
    assert isinstance(opened, CustomersChange)
    assert dict(opened.identities) == {"cust-1": ident(1)} and opened.received == 2
    other = open_customers(cmd, key=GW_KEY, store="s1", gateway="g2", command_id="c9")
    assert isinstance(other, CommandRejected)
    assert other.reason == "not_sealed_for_this_gateway" and other.command_id == "c9"
    wrong_key = open_customers(cmd, key=X25519PrivateKey.generate(), store="s1",
                               gateway="g1")
    assert isinstance(wrong_key, CommandRejected) and wrong_key.reason == "unsealable"
    # a sealed key moved to another record does not open (its fields are bound to it)
    moved = json.loads(json.dumps(body))
    moved["customers"][1]["identity"]["rotation_exponent"] = 9
    cmd2 = validate_payload("customers", moved, now=T0)
    assert isinstance(cmd2, CustomersCommand)
    tampered = open_customers(cmd2, key=GW_KEY, store="s1", gateway="g1")
    assert isinstance(tampered, CommandRejected) and tampered.reason == "unsealable"
    assert tampered.detail.startswith("customers.1.identity:"), tampered.detail


# --- versions ----------------------------------------------------------------------


def test_out_of_order_and_duplicates_never_regress() -> None:
    r = fresh()
    d = r.apply(change("upsert", [customer_record("cust-1", 2, tier="gold")]), T0)
    assert (d.applied, d.stale) == (1, 0)
    older = change("upsert", [customer_record("cust-1", 1, tier="silver")])
    d = r.apply(older, T0 + 1)
    assert (d.applied, d.stale, d.written) == (0, 1, ())
    same = change("upsert", [customer_record("cust-1", 2, tier="bronze")])
    assert r.apply(same, T0 + 2).stale == 1
    held = r.get("cust-1")
    assert held is not None and held.version == 2 and held.profile.tier == "gold"
    d = r.apply(change("upsert", [customer_record("cust-1", 3, tier="platinum")]), T0 + 3)
    assert d.applied == 1 and r.get("cust-1").profile.tier == "platinum"  # type: ignore[union-attr]


def test_an_older_upsert_after_a_newer_remove_is_stale() -> None:
    r = fresh()
    r.apply(change("upsert", [customer_record("cust-1", 3)]), T0)
    d = r.apply(change("remove", remove=[("cust-1", 5)]), T0 + 1)
    assert (d.removed, d.deleted, d.withdraw) == (1, ("cust-1",), ("cust-1",))
    assert len(d.tombstones) == 1 and "cust-1" not in d.tombstones[0].key  # a keyed hash
    assert r.get("cust-1") is None and len(r) == 0
    d = r.apply(change("upsert", [customer_record("cust-1", 4)]), T0 + 2)
    assert (d.applied, d.stale) == (0, 1) and r.get("cust-1") is None
    d = r.apply(change("remove", remove=[("cust-1", 5)]), T0 + 3)  # the remove, again
    assert (d.removed, d.stale) == (0, 1)
    d = r.apply(change("upsert", [customer_record("cust-1", 6)]), T0 + 4)  # newer: back
    assert d.applied == 1 and d.untombed and r.tombstones == 0
    # a remove at the version held applies (the tie goes to removal), an older one not
    assert r.apply(change("remove", remove=[("cust-1", 5)]), T0 + 5).stale == 1
    assert r.apply(change("remove", remove=[("cust-1", 6)]), T0 + 6).removed == 1


def test_a_remove_of_an_unknown_customer_still_blocks_older_upserts() -> None:
    r = fresh()
    d = r.apply(change("remove", remove=[("cust-9", 4)]), T0)
    assert d.removed == 0 and d.withdraw == ("cust-9",) and r.tombstones == 1
    assert r.apply(change("upsert", [customer_record("cust-9", 3)]), T0 + 1).stale == 1


def test_tombstones_expire_after_keep_s() -> None:
    r = fresh()
    r.apply(change("upsert", [customer_record("cust-1", 3)]), T0)
    r.apply(change("remove", remove=[("cust-1", 3)]), T0)
    assert r.apply(change("upsert", [customer_record("cust-1", 2)]), T0 + KEEP_S - 1).stale
    d = r.apply(change("upsert", [customer_record("cust-1", 2)]), T0 + KEEP_S)
    assert d.applied == 1 and r.tombstones == 0


def test_replace_is_a_full_sync_never_older_than_held() -> None:
    r = fresh()
    r.apply(change("upsert", [customer_record(f"cust-{i}", 5) for i in range(4)]), T0)
    d = r.apply(change("replace", [customer_record("cust-0", 6, tier="new"),
                                   customer_record("cust-1", 4, tier="old"),
                                   customer_record("cust-7", 1)]), T0 + 1)
    assert (d.applied, d.stale, d.removed) == (2, 1, 2)
    assert sorted(r.customers()) == ["cust-0", "cust-1", "cust-7"]
    assert r.get("cust-0").profile.tier == "new"  # type: ignore[union-attr]
    assert r.get("cust-1").version == 5  # type: ignore[union-attr]
    assert sorted(d.deleted) == ["cust-2", "cust-3"]
    # the dropped ones are tombstoned at the version held
    assert r.apply(change("upsert", [customer_record("cust-2", 5)]), T0 + 2).stale == 1
    assert r.apply(change("upsert", [customer_record("cust-2", 6)]), T0 + 3).applied == 1
    d = r.apply(change("replace"), T0 + 4)
    assert d.removed == 4 and len(r) == 0


# --- consent -----------------------------------------------------------------------


def test_consent_changes_make_the_right_delta() -> None:
    r = fresh()
    d = r.apply(change("upsert", [customer_record("cust-1", 1, identity=ident(1)),
                                  customer_record("cust-2", 1, identity=ident(2),
                                                  presence=False)]), T0)
    assert d.enroll == (ident(1),)  # cust-2 gave a key but not presence consent
    assert d.withdraw == ("cust-2",)  # a key held from elsewhere goes
    held = r.get("cust-1")
    assert held is not None and held.identity is None  # keys never live in the registry
    # a profile update without the identity keeps the key: nothing to enrol or withdraw
    d = r.apply(change("upsert", [customer_record("cust-1", 2, tier="x")]), T0 + 1)
    assert (d.enroll, d.withdraw, d.marketing_withdrawn) == ((), (), ())
    # presence withdrawn
    d = r.apply(change("upsert", [customer_record("cust-1", 3, presence=False)]), T0 + 2)
    assert d.withdraw == ("cust-1",) and d.enroll == ()
    assert not r.allows("cust-1", "presence") and r.allows("cust-1", "marketing")
    # marketing and staff_view withdrawn
    d = r.apply(change("upsert", [customer_record("cust-1", 4, presence=False,
                                                  marketing=False, staff_view=False)]),
                T0 + 3)
    assert d.withdraw == () and d.marketing_withdrawn == ("cust-1",)
    assert d.staff_withdrawn == ("cust-1",)
    # granted again: identity given, enrolled again
    d = r.apply(change("upsert", [customer_record("cust-1", 5, identity=ident(1))]), T0 + 4)
    assert d.enroll == (ident(1),) and d.marketing_withdrawn == ()
    # removal withdraws everything the customer had granted
    d = r.apply(change("remove", remove=[("cust-1", 6)]), T0 + 5)
    assert d.withdraw == ("cust-1",)
    assert d.marketing_withdrawn == ("cust-1",) and d.staff_withdrawn == ("cust-1",)


def test_allows_each_purpose() -> None:
    r = fresh()
    rec = customer_record("cust-1", 1, presence=True, marketing=False, staff_view=True)
    del rec["consents"]["staff_view"]
    r.apply(change("upsert", [rec, customer_record("cust-2", 1, presence=False,
                                                   marketing=True, staff_view=True)]), T0)
    assert [r.allows("cust-1", p) for p in reg.PURPOSES] == [True, False, False]
    assert [r.allows("cust-2", p) for p in reg.PURPOSES] == [False, True, True]
    assert not any(r.allows("nobody", p) for p in reg.PURPOSES)


def test_loyalty_lookup_follows_the_records() -> None:
    other = "ps1:" + "cd" * 16
    r = fresh()
    r.apply(change("upsert", [customer_record("cust-1", 1, loyalty_ids=[LOYAL, other])]), T0)
    assert r.customer_of_loyalty(LOYAL) == "cust-1" == r.customer_of_loyalty(other)
    r.apply(change("upsert", [customer_record("cust-1", 2, loyalty_ids=[other])]), T0)
    assert r.customer_of_loyalty(LOYAL) is None
    assert r.customer_of_loyalty(other) == "cust-1"
    r.apply(change("remove", remove=[("cust-1", 3)]), T0)
    assert r.customer_of_loyalty(other) is None


def test_erase_forgets_and_keeps_a_tombstone() -> None:
    r = fresh()
    r.apply(change("upsert", [customer_record("cust-1", 4, loyalty_ids=[LOYAL]),
                              customer_record("cust-2", 1)]), T0)
    assert r.erase(["cust-1", "nobody"], T0 + 1) == 1
    assert r.get("cust-1") is None and r.customer_of_loyalty(LOYAL) is None
    assert not r.allows("cust-1", "presence") and len(r) == 1
    tomb = r.tombstone_of("cust-1")
    assert tomb is not None and tomb.until == T0 + 1 + KEEP_S
    assert r.apply(change("upsert", [customer_record("cust-1", 4)]), T0 + 2).stale == 1
    # an upsert signed before the erasure, with a newer version than the box held, may
    # arrive after it (another topic): it cannot bring the customer back
    late = r.apply(change("upsert", [customer_record("cust-1", 5, loyalty_ids=[LOYAL])]),
                   T0 + 3)
    assert late.stale == 1 and late.applied == 0 and not late.enroll
    assert r.get("cust-1") is None and r.customer_of_loyalty(LOYAL) is None
    # once no command signed before it can be valid any more, the tombstone goes
    r.expire(T0 + 1 + KEEP_S)
    assert r.tombstone_of("cust-1") is None


def test_restore_is_what_the_store_hands_back() -> None:
    r = fresh()
    d = r.apply(change("upsert", [customer_record("cust-1", 2, loyalty_ids=[LOYAL])]), T0)
    r.apply(change("remove", remove=[("cust-2", 7)]), T0)
    back = Registry(tomb_key=b"k" * 32, keep_s=KEEP_S, records=d.written,
                    tombstones=[t for t in [r.tombstone_of("cust-2")] if t is not None])
    assert back.allows("cust-1", "marketing") and back.customer_of_loyalty(LOYAL) == "cust-1"
    assert back.apply(change("upsert", [customer_record("cust-2", 7)]), T0).stale == 1
    # another key: the tombstone no longer matches anyone (keyed hash)
    other = Registry(tomb_key=b"x" * 32, keep_s=KEEP_S,
                     tombstones=[t for t in [r.tombstone_of("cust-2")] if t is not None])
    assert other.apply(change("upsert", [customer_record("cust-2", 7)]), T0).applied == 1
