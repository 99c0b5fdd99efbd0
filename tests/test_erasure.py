"""Erasure: the command, the redaction rule, and the proof on real SQLite files.

The proof: a box holding a customer in every store (registry, identity key, redemption
ledger, outbox events pending, kept for replay and deleted long ago) is erased through
app/erasure.py, and a byte scan of every file in its storage directory (databases,
WAL, shared memory) finds neither the customer id, nor their loyalty pseudonym, nor
their identity key in raw or hex; another customer's data is intact and the outbox
sequence has no gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from storegate.adapters.identities_sqlite import IdentityStore
from storegate.adapters.outbox import Outbox, OutboxReader, Redacted
from storegate.adapters.outbox.redaction import wipe
from storegate.adapters.redemption_sqlite import RedemptionStore
from storegate.adapters.registry_sqlite import RegistrySqlite
from storegate.app.erasure import ErasureTargets, erase
from storegate.app.gateway import Gateway
from storegate.config import parse
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.ble.capture import Advert
from storegate.core.ble.decoders import EDDYSTONE_UUID
from storegate.core.ble.eid import EidResolver, Identity, compute_eid
from storegate.core.commands import COMMANDS, CommandRejected, validate_payload
from storegate.core.personal.erasure import MAX_ERASE, EraseCommand, redact_event
from storegate.core.personal.registry import Registry
from storegate.core.presence.pipeline import PresencePipeline
from storegate.core.presence.settings import PresenceSettings, Zone
from storegate.core.retention import RetentionBudget
from tests import test_personal as tp  # the personal service's harness
from tests.support.bytescan import files_scanned, needles_for, scan
from tests.support.central import customer_record
from tests.support.outbox import TOPICS, FakeClock
from tests.test_registry import T0, change, ident

TARGET, OTHER = "cust-7", "cust-8"  # ident(7), ident(8)
CARD_T, CARD_O = "ps1:" + "7a" * 16, "ps1:" + "8b" * 16
AT = ev.rfc3339(T0)


# --- the command ---------------------------------------------------------------------


def rejected(body: object) -> str:
    r = validate_payload("erase", body, now=T0, command_id="c1")  # type: ignore[arg-type]
    assert isinstance(r, CommandRejected), r
    assert r.reason == "invalid"
    return r.detail


def test_registered_and_validated() -> None:
    assert COMMANDS["erase"] is EraseCommand
    cmd = validate_payload("erase", {"customers": [TARGET], "request_id": "r1"}, now=T0)
    assert isinstance(cmd, EraseCommand) and cmd.customers == [TARGET]
    assert "customers" in rejected({"customers": []})
    assert "listed twice" in rejected({"customers": [TARGET, TARGET]})
    assert "customers.0" in rejected({"customers": ["has space"]})
    assert "customers.0" in rejected({"customers": ["aa:bb:cc:dd:ee:ff"]})  # a MAC: no
    assert "customers" in rejected({"customers": [f"c{i}" for i in range(MAX_ERASE + 1)]})
    assert rejected({"customers": [TARGET], "also": 1}).startswith("also")


def test_the_answer_names_no_customer() -> None:
    schema = json.dumps(p.Erased.model_json_schema())
    assert "customer\"" not in schema.replace("customers\"", "")
    assert ev.CATALOGUE["storegate.gateway.erased.v1"].priority is ev.Priority.HIGH


# --- the redaction rule --------------------------------------------------------------


def encoded(draft: ev.EventDraft, seq: int = 1) -> bytes:
    return ev.encode_event(draft, event_id=f"id-{seq}", source_json='"s"', sequence=seq)


def visit_of(customer: str, n: int = 0) -> ev.EventDraft:
    return ev.EventDraft(ev.VISIT_ENTERED, f"visit/v{n}", T0, p.VisitEntered(
        visit_id=f"v{n}", customer=customer, zone=None, entered_at=AT))


def purchase_of(customer: str | None, card: str | None, n: int = 0) -> ev.EventDraft:
    return ev.EventDraft(ev.PURCHASE_COMPLETED, f"receipt/lane-1/R{n}", T0,
                         p.PurchaseCompleted(
        receipt=f"R{n}", lane="lane-1", items=[p.LineItem(
            name="socks", quantity_milli=1000, unit_price_minor=500, amount_minor=500)],
        total_minor=500, currency="EUR", completed_at=AT, loyalty_id=card,
        customer=customer, transaction_id=f"tx{n}"))


def scanned(card: str, n: int = 0) -> ev.EventDraft:
    return ev.EventDraft(ev.POS_SCANNED, "lane/lane-1", T0, p.PosScanned(
        lane="lane-1", kind="loyalty", value=card, scanned_at=AT, transaction_id=f"tx{n}"))


def issued_to(customer: str, n: int = 0) -> ev.EventDraft:
    return ev.EventDraft(ev.OFFER_ISSUED, f"offer/{n:032x}", T0, p.OfferIssued(
        offer_id=f"{n:032x}", campaign="shoes", campaign_version=1, variant=None,
        customer=customer, visit_id="v0", trigger="store_entered", title="10 % off",
        discount=None, issued_at=AT, expires_at=AT, why=["priority 5"]))


def test_redaction_nulls_the_customer_fields_and_keeps_id_and_sequence() -> None:
    cust, cards = {TARGET}, {CARD_T}
    for draft in (visit_of(TARGET), purchase_of(TARGET, CARD_T), scanned(CARD_T),
                  issued_to(TARGET), purchase_of(None, CARD_T)):
        before = json.loads(encoded(draft, 42))
        out = redact_event(encoded(draft, 42), cust, cards)
        assert out is not None, draft.type.name
        after = json.loads(out)
        assert TARGET.encode() not in out and CARD_T.encode() not in out
        for k in ("id", "type", "sequence", "time", "source", "subject"):
            assert after[k] == before[k]
        # the event stays valid against its own model (the contract central checks)
        draft.type.model.model_validate(after["data"])
    after = json.loads(redact_event(encoded(purchase_of(TARGET, CARD_O)), cust, cards) or b"")
    assert after["data"]["customer"] is None and after["data"]["loyalty_id"] is None
    # someone else's events are left alone (None: the stored bytes are not rewritten)
    for draft in (visit_of(OTHER), purchase_of(OTHER, CARD_O), scanned(CARD_O)):
        assert redact_event(encoded(draft), cust, cards) is None
    # a subject naming the customer is replaced whole; many ids take the lookup path
    named = ev.EventDraft(ev.VISIT_ENTERED, f"customer/{TARGET}", T0, visit_of(OTHER).data)
    many = {TARGET, *(f"c{i}" for i in range(100))}
    for ids in (cust, many):
        out = redact_event(encoded(named), ids, set())
        assert out is not None and json.loads(out)["subject"] == "redacted"


# --- the proof on real files ---------------------------------------------------------


def outbox_at(path: Path, clock: FakeClock) -> Outbox:
    ob = Outbox(path, source=TOPICS.source, topic_for=lambda t: TOPICS.events(t.kind),
                budget=RetentionBudget(), clock=clock, replay_window_s=3600.0)
    ob.open()
    return ob


def both(maker: object, *args: object) -> list[ev.EventDraft]:
    return [maker(TARGET, *args), maker(OTHER, *args)]  # type: ignore[operator]


class Box:
    """Every store a gateway keeps, in one storage directory, as the gateway names them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = FakeClock(T0)
        self.outbox = outbox_at(root / "outbox.db", self.clock)
        # The worst case, whatever the build: Debian's SQLite overwrites deleted rows by
        # default (SQLITE_SECURE_DELETE), others leave them in free pages, which only a
        # rebuild of the file removes. (The writer thread is idle: nothing submitted.)
        conn = self.outbox._conn
        assert conn is not None
        conn.execute("PRAGMA secure_delete = OFF")
        self.reader = OutboxReader(root / "outbox.db")  # the publisher's connection
        self.identities = IdentityStore(root / "outbox.identities.db")
        self.registry_store = RegistrySqlite(root / "outbox.customers.db")
        self.registry = Registry(tomb_key=self.registry_store.tomb_key(), keep_s=3600)
        self.ledger = RedemptionStore(root / "outbox.redemption.db",
                                      reservation_timeout_s=600)

    def fill(self) -> None:
        delta = self.registry.apply(change("upsert", [
            customer_record(TARGET, 3, identity=ident(7), loyalty_ids=[CARD_T]),
            customer_record(OTHER, 1, identity=ident(8), loyalty_ids=[CARD_O])]), T0)
        self.registry_store.write(delta)
        self.identities.upsert(delta.enroll)
        for n, c in enumerate((TARGET, OTHER, TARGET)):
            self.ledger.issue(f"{n:032x}", campaign="shoes", customer=c,
                              issued_at=int(T0), expires_at=int(T0) + 86400)
        self.ledger.reserve(f"{0:032x}", "lane-1", "tx-9", T0)
        ob = self.outbox
        # long gone: sent, acknowledged, then trimmed from the replay window (their
        # bytes are in free pages: only a rebuild of the file removes them)
        old = ob.accept_blocking([*both(visit_of, 1), *both(issued_to, 1)] * 20)
        ob.ack([a.sequence for a in old])
        ob.accept_blocking([scanned(CARD_O, 2)])  # committed with the acknowledgements
        self.clock.now += 4000
        ob.accept_blocking([scanned(CARD_O, 2)])  # past the replay window: trimmed
        # sent and kept for replay
        kept = ob.accept_blocking([*both(visit_of, 3), scanned(CARD_T, 3),
                                   purchase_of(TARGET, CARD_T, 3), *both(issued_to, 3)])
        ob.ack([a.sequence for a in kept])
        # not sent yet
        ob.accept_blocking([*both(visit_of, 4), purchase_of(None, CARD_T, 4),
                            purchase_of(OTHER, CARD_O, 4), scanned(CARD_O, 4)])

    def targets(self) -> ErasureTargets:
        return ErasureTargets(registry=self.registry, registry_store=self.registry_store,
                              identities=self.identities, outbox=self.outbox,
                              ledger_path=self.ledger.path)

    def close(self) -> None:
        self.reader.close()
        self.outbox.close()
        self.identities.close()
        self.registry_store.close()
        self.ledger.close()


def target_needles() -> dict[str, bytes]:
    return needles_for(TARGET, loyalty=[CARD_T], key=ident(7).identity_key)


def test_after_erasure_no_byte_of_the_customer_is_left(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.fill()
    box.ledger.close()  # the personal service is not running: erasure opens the ledger
    before = {h.needle for h in scan(tmp_path, target_needles())}
    assert {"customer", "loyalty0", "key"} <= before  # the scan can fail
    last = box.outbox.last_sequence
    ids = {e.sequence: json.loads(e.payload)["id"] for e in box.reader.fetch(range(1, last + 1))}

    counts = asyncio.run(erase([TARGET], box.targets(), T0 + 5000))

    assert counts.errors == []
    assert counts.customers == 1
    assert counts.registry_records == 1 and counts.identity_keys == 1
    assert counts.offers_revoked == 2  # one issued, one reserved; the other customer's kept
    assert counts.ledger_rows_pseudonymised == 2
    assert counts.outbox_replay_redacted == 4  # visit, scan, purchase, offer kept for replay
    assert counts.outbox_unsent_redacted == 2  # visit, purchase carrying only the card
    assert counts.files_rewritten == 4  # outbox, ledger, identities, registry
    # every file, the WAL and shared memory included, while the box still runs
    scanned_names = files_scanned(tmp_path)
    assert "outbox.db-wal" in scanned_names and "outbox.db-shm" in scanned_names
    assert scan(tmp_path, target_needles()) == []
    # the other customer is intact: record, key, card and their events
    other = needles_for(OTHER, loyalty=[CARD_O], key=ident(8).identity_key)
    assert {h.needle for h in scan(tmp_path, other)} >= {"customer", "loyalty0", "key"}
    assert OTHER in box.registry and TARGET not in box.registry
    assert box.registry.tombstone_of(TARGET) is not None  # nothing in flight revives them
    assert [i.customer for i in box.identities.load()[0]] == [OTHER]
    # no gap: every sequence still held, with its id
    held = box.reader.fetch(range(1, last + 1))
    assert {e.sequence: json.loads(e.payload)["id"] for e in held} == ids
    assert sorted(ids) == list(range(min(ids), last + 1))
    assert box.outbox.depth == 7  # redaction leaves pending events pending (2 + 5)

    box.close()  # and after a clean stop
    assert scan(tmp_path, target_needles()) == []
    again = RegistrySqlite(tmp_path / "outbox.customers.db")
    assert [r.customer for r in again.load().records] == [OTHER]
    again.close()


def test_erasing_twice_and_unknown_customers_is_harmless(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.fill()
    first = asyncio.run(erase([TARGET], box.targets(), T0 + 5000))
    second = asyncio.run(erase([TARGET, "never-seen"], box.targets(), T0 + 5001))
    assert first.errors == second.errors == []
    assert second.registry_records == second.identity_keys == 0
    assert second.outbox_unsent_redacted == second.outbox_replay_redacted == 0
    assert box.registry.tombstone_of("never-seen") is not None
    box.close()


def test_the_answer_carries_counts_and_failures(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.fill()
    box.identities.close()  # a store that fails: the answer says so, the rest goes on
    counts = asyncio.run(erase([TARGET], box.targets(), T0 + 5000))
    answer = counts.answer("r1", "c1")
    assert answer.applied is False and answer.error and "identity store" in answer.error
    assert answer.registry_records == 1 and answer.outbox_replay_redacted == 4
    assert TARGET not in answer.model_dump_json()
    box.identities = IdentityStore(tmp_path / "outbox.identities.db")
    box.close()


def test_redaction_after_close_is_answered(tmp_path: Path) -> None:
    ob = outbox_at(tmp_path / "o.db", FakeClock(T0))
    ob.close()
    got: list[Redacted] = []
    ob.redact([TARGET], [], got.append)
    assert got and got[0].error == "the outbox is closed"


def test_the_wal_is_truncated_once_a_reader_mid_statement_lets_go(tmp_path: Path) -> None:
    """The publisher's reader in the middle of a statement holds a snapshot: the
    TRUNCATE checkpoint waits for it (busy timeout) and succeeds once it is done."""
    box = Box(tmp_path)
    box.fill()
    cur = box.reader._conn.execute("SELECT seq FROM events")  # a reader mid-statement
    cur.fetchone()
    writer = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
    writer.execute("PRAGMA busy_timeout = 5000")
    writer.execute("INSERT INTO meta VALUES ('x', 1)")  # a frame the reader predates
    released = threading.Event()

    def let_go() -> None:
        released.wait()
        cur.fetchall()

    t = threading.Thread(target=let_go)
    t.start()
    # without waiting, the checkpoint cannot truncate past the reader's snapshot...
    writer.execute("PRAGMA busy_timeout = 0")
    assert writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 1
    # ...wipe's VACUUM runs beside it, and its checkpoint waits until the reader is done
    writer.execute("PRAGMA busy_timeout = 5000")
    released.set()
    wipe(writer)
    t.join()
    assert (tmp_path / "outbox.db-wal").stat().st_size == 0
    writer.close()
    box.close()


@pytest.mark.parametrize("n", [1, 40])  # SQLite's instr, and the Python pass
def test_the_outbox_finds_them_either_way(tmp_path: Path, n: int) -> None:
    ob = outbox_at(tmp_path / "o.db", FakeClock(T0))
    ob.accept_blocking([*both(visit_of, 1), scanned(CARD_T, 1), ev.EventDraft(
        ev.GATEWAY_TELEMETRY, "gateway/g1", T0, p.GatewayTelemetry(
            last_sequence=0, outbox_depth=0, oldest_pending_age_s=None, dropped_total=0,
            published_total=0, reconnects_total=0))])
    # a type no list names (as staff.viewed once was): found whatever the path
    with contextlib.closing(sqlite3.connect(tmp_path / "o.db", isolation_level=None)) as db:
        db.execute("UPDATE events SET type = 'storegate.staff.viewed.v1' WHERE seq = 1")
    done = threading.Event()
    got: list[Redacted] = []
    ob.redact([TARGET, *(f"x{i}" for i in range(n - 1))], [CARD_T],
              lambda r: (got.append(r), done.set()))
    assert done.wait(30)
    assert got[0].unsent == 2 and got[0].wiped and got[0].error is None
    assert scan(tmp_path, needles_for(TARGET, loyalty=[CARD_T])) == []
    ob.close()


def test_presence_tracking_and_its_visit_events_are_forgotten(tmp_path: Path) -> None:
    """Presence on: the customer is being tracked (an open visit) when erased."""
    settings = PresenceSettings(zones=(Zone("z", ("sc",)),), min_presence_s=2,
                                zone_min_presence_s=2)
    pipe = PresencePipeline(settings, EidResolver(), os.urandom)
    alice, bob = ident(7), ident(8)
    pipe.enroll([alice, bob], T0)

    def adverts(who: Identity, t0: float) -> list[ev.EventDraft]:
        out: list[ev.EventDraft] = []
        for i in range(40):
            t = t0 + i * 0.25
            eid = compute_eid(who.identity_key, who.rotation_exponent, who.beacon_time(t))
            out += pipe.feed(Advert(t, "sc", f"5A:00:00:00:00:0{who.customer[-1]}", -55,
                                    service_data={EDDYSTONE_UUID: b"\x30\xf4" + eid}))
        return out

    box = Box(tmp_path)
    box.fill()
    visits = adverts(alice, T0) + adverts(bob, T0)
    assert {d.data.customer for d in visits if d.type.kind == "visit"} == {TARGET, OTHER}  # type: ignore[attr-defined]
    box.outbox.accept_blocking(visits)
    targets = box.targets()
    targets.pipeline = pipe
    counts = asyncio.run(erase([TARGET], targets, T0 + 5000))
    assert counts.errors == [] and counts.tracking_states == 1
    assert counts.outbox_unsent_redacted >= 2 + 2  # fill()'s two, and the store and zone entries
    assert pipe.resolver.customers() == [OTHER]
    assert scan(tmp_path, target_needles()) == []
    # her phone is an unknown id now: nothing more is said about her
    later = adverts(alice, T0 + 100) + pipe.tick(T0 + 200)
    assert all(getattr(d.data, "customer", None) != TARGET for d in later)
    box.close()


def test_offers_stitching_and_the_ledger_are_forgotten(tmp_path: Path) -> None:
    """The personal service running (app/personal.py, as the gateway builds it): an
    offer issued to the customer on entering, stitching state open, a ledger row."""
    box = tp.Box(tmp_path)
    box.know(tp.record(tp.CUSTOMER), tp.record("cust-bob"))
    box.campaigns("upsert", tp.WELCOME)
    drafts = box.process(tp.entered(tp.CUSTOMER, "v-1"), tp.entered("cust-bob", "v-2"))
    issued = [d for d in drafts + box.out if d.type is ev.OFFER_ISSUED]
    assert {d.data.customer for d in issued} == {tp.CUSTOMER, "cust-bob"}  # type: ignore[attr-defined]
    assert box.svc.stitcher.holds(tp.CUSTOMER)
    outbox = outbox_at(tmp_path / "outbox.db", FakeClock(T0))
    outbox.accept_blocking(drafts + box.out)
    targets = ErasureTargets(registry=box.registry, registry_store=None, identities=None,
                             outbox=outbox, personal=box.svc,
                             ledger_path=box.cfg.redemption_path)

    counts = asyncio.run(erase([tp.CUSTOMER], targets, T0 + 10))

    assert counts.errors == []
    assert counts.stitcher_states == 1 and counts.offers_revoked == 1
    assert counts.ledger_rows_pseudonymised == 1
    assert counts.outbox_unsent_redacted == 2  # her visit and her offer
    assert not box.svc.stitcher.holds(tp.CUSTOMER)
    assert scan(tmp_path, needles_for(tp.CUSTOMER)) == []
    assert {h.needle for h in scan(tmp_path, needles_for("cust-bob"))} == {"customer"}
    ledger = box.svc.redemption.ledger
    assert [o.state for o in ledger.held("cust-bob", T0)] == ["issued"]  # bob's intact
    outbox.close()
    box.svc.close()


# --- review 11 -----------------------------------------------------------------------


def test_cards_central_names_are_erased_when_the_registry_no_longer_holds_them(
        tmp_path: Path) -> None:
    """Item 4: the customer was removed earlier (no record, so no cards known here);
    their card is still in stored scans and purchases. The command's loyalty_ids
    reach it."""
    box = Box(tmp_path)
    box.fill()
    box.registry.apply(change("remove", remove=[(TARGET, 4)]), T0 + 4000)
    assert box.registry.get(TARGET) is None

    counts = asyncio.run(erase([TARGET], box.targets(), T0 + 5000, loyalty_ids=[CARD_T]))

    assert counts.errors == []
    assert scan(tmp_path, {"loyalty": CARD_T.encode()}) == []
    assert {h.needle for h in scan(tmp_path, {"other": CARD_O.encode()})} == {"other"}
    box.close()


def test_the_command_takes_their_cards_validated() -> None:
    cmd = validate_payload("erase", {"customers": [TARGET], "loyalty_ids": [CARD_T]}, now=T0)
    assert isinstance(cmd, EraseCommand) and cmd.loyalty_ids == [CARD_T]
    assert validate_payload("erase", {"customers": [TARGET]}, now=T0).loyalty_ids == []  # type: ignore[union-attr]
    assert "loyalty_ids.0" in rejected({"customers": [TARGET], "loyalty_ids": ["1234"]})
    assert "listed twice" in rejected({"customers": [TARGET],
                                       "loyalty_ids": [CARD_T, CARD_T]})
    assert "loyalty_ids" in rejected({"customers": [TARGET], "loyalty_ids": [
        "ps1:" + f"{i:032x}" for i in range(4 * MAX_ERASE + 1)]})


def test_the_config_s_identities_file_does_not_enrol_the_withdrawn_or_erased(
        tmp_path: Path) -> None:
    """Item 9: presence.identities_file is read at every start; the registry's rule
    (no presence consent, removed or erased: not enrolled) applies to it as to the
    identities command."""
    gw = Gateway(parse(f'store_id = "s1"\ngateway_id = "g1"\n[storage]\n'
                       f'path = "{tmp_path}/outbox.db"\n', source="test", base=tmp_path,
                       environ={}))
    gw.registry.apply(change("upsert", [customer_record("cust-7", 1, presence=False),
                                        customer_record("cust-8", 1)]), T0)
    gw.registry.erase(["cust-8"], T0)
    gw._registry = [ident(7), ident(8), ident(9)]  # as read from the file
    assert [i.customer for i in gw._file_identities()] == ["cust-9"]
