"""Regressions for the review of central (issue 14), on real SQLite and PostgreSQL: a
poison message never stops ingest, an implausible head or a bad lost range never
storms or stops the gap scanner, events are keyed by (store, gateway, id), answers
count only for the command's own store and gateway, erasure reaches every store and
leaves no copy, identities need consent, unacknowledged commands go again."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from storegate.adapters.central import records
from storegate.adapters.central.storage import Database, Target
from storegate.app.central import models as m
from storegate.app.central import service as service_module
from storegate.app.central.commands import Commands
from storegate.app.central.gaps import GapScanner
from storegate.app.central.ingest import Ingest
from storegate.app.central.service import (
    REDACTED_WIRE,
    CentralService,
    InvalidError,
    NotFoundError,
)
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core import seal
from storegate.core.central import gaps as g
from tests.support.central import CENTRAL
from tests.support.driver import purchase
from tests.test_central_storage import (  # noqa: F401 - fixtures
    T0,
    Sent,
    answer,
    postgres_cluster,
    postgres_url,
    status,
    url,
    wire,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def ingest(url: str) -> Iterator[Ingest]:  # noqa: F811 - the imported fixture
    i = Ingest(url)
    yield i
    i.close()


def raw(store: str, gateway: str, seq_text: str, *, eid: str, time_: str =
        "2026-11-20T10:00:00Z", subject: Any = "x", data: dict[str, Any] | None = None,
        type_: ev.EventType = ev.PURCHASE_COMPLETED) -> tuple[str, bytes]:
    """A hand-made envelope (what a broken or hostile gateway could send)."""
    if data is None:
        data = purchase(1).data.model_dump(mode="json")
    return (f"storegate/v1/{store}/{gateway}/events/{type_.kind}", json.dumps({
        "specversion": "1.0", "id": eid, "source": f"storegate://{store}/{gateway}",
        "type": type_.name, "time": time_, "subject": subject, "sequence": seq_text,
        "datacontenttype": "application/json", "data": data}).encode())


def good(store: str, gateway: str, seq: int, eid: str | None = None) -> tuple[str, bytes]:
    return raw(store, gateway, f"{seq:020d}", eid=eid or f"e-{store}-{gateway}-{seq}")


def replayed(command_id: str, unavailable: list[list[int]], seq: int, *,
             store: str = "s1", gateway: str = "g1") -> tuple[str, bytes]:
    return raw(store, gateway, f"{seq:020d}", eid=f"rp-{store}-{gateway}-{seq}",
               type_=ev.GATEWAY_REPLAYED, data={
                   "request_id": "r", "command_id": command_id, "from_sequence": 1,
                   "to_sequence": 10, "republished": 0, "unavailable": unavailable})


# --- 1: one bad message never stops ingest --------------------------------------------

@pytest.mark.parametrize("poison", [
    raw("s2", "g1", "99999999999999999999", eid="big"),              # > 2**63 - 1
    raw("s2", "g1", "00000000000000000002", eid="sur", subject="\ud800"),
    raw("s2", "g1", "00000000000000000003", eid="\ud800"),
    raw("s2", "g1", "00000000000000000004", eid="nul\x00"),
    raw("s2", "g1", "00000000000000000005", eid="t", time_="2026-13-45T99:00:00Z"),
    raw("s2", "g1", "00000000000000000006", eid="t2", time_="yesterday"),
    raw("s2", "g1", "0000000000000000000\u0661", eid="arabic-digit"),
    replayed("c-x", [[5]], 7, store="s2"),
    replayed("c-x", [[10, 1]], 8, store="s2"),
])
def test_a_poison_message_is_rejected_and_the_rest_of_its_batch_stored(
        ingest: Ingest, poison: tuple[str, bytes]) -> None:
    outs = ingest.handle_many([good("s1", "g1", 1), poison, good("s1", "g1", 2)], T0)
    assert [o.result for o in outs] == ["stored", "rejected", "stored"]
    assert outs[1].reason in ("malformed", "invalid_data")
    assert ingest.db.read("SELECT COUNT(*) FROM events") == [(2,)]
    assert ingest.db.read("SELECT COUNT(*) FROM rejects") == [(1,)]


def test_what_the_database_itself_refuses_is_kept_as_a_reject_not_retried(
        ingest: Ingest) -> None:
    """A message every check passed but the database refuses (here a trigger, as a
    constraint or a driver limit would): the batch is split, the refused one kept as
    an ``unstorable`` reject, the others stored; nothing raises to the source."""
    if ingest.db.dialect == "sqlite":
        sql = ("CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.subject = 'poison' "
               "BEGIN SELECT RAISE(ABORT, 'refused by a constraint'); END")
        with ingest.db.tx() as db:
            db.execute(sql)
    else:
        with ingest.db.tx() as db:
            db.execute("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                       "IF NEW.subject = 'poison' THEN RAISE EXCEPTION 'refused' USING "
                       "ERRCODE = 'data_exception'; END IF; RETURN NEW; END $$ "
                       "LANGUAGE plpgsql")
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW "
                       "EXECUTE FUNCTION refuse()")
    outs = ingest.handle_many([good("s1", "g1", 1), raw(
        "s1", "g1", f"{2:020d}", eid="p", subject="poison"), good("s1", "g1", 3)], T0)
    assert [o.result for o in outs] == ["stored", "rejected", "stored"]
    assert outs[1].reason == "unstorable"
    assert ingest.db.read("SELECT reason FROM rejects") == [("unstorable",)]
    assert ingest.db.read("SELECT sequence FROM events ORDER BY sequence") == [(1,), (3,)]


# --- 2, 3: the gap scanner stays bounded and per gateway ------------------------------

def test_an_implausible_head_is_capped_and_asked_for_a_few_ranges_a_pass(
        ingest: Ingest) -> None:
    sent = Sent()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent, clock=lambda: T0)
    scanner = GapScanner(ingest.db, commands, grace_s=0)
    ingest.handle(*wire(1), T0)
    ingest.handle(*status(None, last_sequence=3_000_000_000), T0)
    r = scanner.scan(T0)
    assert r.requested == g.RANGES_PER_PASS and scanner.capped_heads == 1
    asked = [(v.payload["from_sequence"], v.payload["to_sequence"])
             for v in sent.verified("replay")]
    assert asked[0][0] == 2 and max(b for _, b in asked) <= 1 + g.HEAD_BOUND
    assert ingest.db.read("SELECT MAX(last) FROM gaps") == [(1 + g.HEAD_BOUND,)]


def test_a_bad_lost_row_of_one_gateway_does_not_stop_the_others(ingest: Ingest) -> None:
    sent = Sent()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent, clock=lambda: T0)
    scanner = GapScanner(ingest.db, commands, grace_s=0)
    ingest.handle_many([wire(1), wire(5), wire(1, gateway="g2"), wire(4, gateway="g2")],
                       T0)
    with ingest.db.tx() as db:  # as an earlier version stored an unchecked answer
        db.execute("INSERT INTO lost (store, gateway, first, last, at) "
                   "VALUES ('s1', 'g1', 10, 1, 0)")
    assert scanner.scan(T0).requested == 2
    assert sorted(v.payload["gateway"] for v in sent.verified("replay")) == ["g1", "g2"]


def test_split_is_lazy() -> None:
    parts = g.split(g.Range(1, 10**13))
    assert next(parts) == g.Range(1, 1_000_000)


# --- 10, 11, 12, 21: identity of events and of answers --------------------------------

def test_two_gateways_may_use_one_event_id(ingest: Ingest) -> None:
    outs = ingest.handle_many([good("s2", "g1", 1, eid="same"),
                               good("s1", "g1", 1, eid="same")], T0)
    assert [o.result for o in outs] == ["stored", "stored"]
    assert ingest.handle(*good("s1", "g1", 1, eid="same"), T0).duplicate
    assert ingest.db.read("SELECT store FROM events ORDER BY store") == [("s1",), ("s2",)]


def test_an_answer_counts_only_from_the_commands_store_and_gateway(ingest: Ingest) -> None:
    sent = Sent()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent, clock=lambda: T0)
    scanner = GapScanner(ingest.db, commands, grace_s=0)
    ingest.handle_many([wire(1), wire(5)], T0)
    scanner.scan(T0)
    [cmd] = sent.verified("replay")
    # another store's gateway, another gateway of the store, an unknown command
    ingest.handle_many([replayed(cmd.command_id, [[2, 4]], 1, store="s2"),
                        replayed(cmd.command_id, [[2, 4]], 1, gateway="g9"),
                        replayed("c-unknown", [[2, 4]], 6)], T0)
    assert ingest.db.read("SELECT COUNT(*) FROM answers") == [(0,)]
    assert ingest.db.read("SELECT COUNT(*) FROM lost") == [(0,)]
    # the asked gateway: lost only inside what was asked
    ingest.handle(*replayed(cmd.command_id, [[1, 100]], 7), T0)
    assert ingest.db.read("SELECT first, last FROM lost") == [(2, 4)]


def test_a_command_rejection_is_never_recorded_as_applied(ingest: Ingest) -> None:
    sent = Sent()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent, clock=lambda: T0)
    cid = commands.send("s1", "erase", {"customers": ["c"], "loyalty_ids": [],
                                        "request_id": "r"})
    ingest.handle(*answer(ev.GATEWAY_COMMAND_REJECTED, p.GatewayCommandRejected(
        command="erase", command_id=cid, reason="expired", detail="old", suppressed=0), 1),
        T0)
    [a] = commands.answers(cid)
    assert a["applied"] is False


def test_a_schema_1_database_is_migrated_to_store_gateway_id_keys(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    c = sqlite3.connect(path)
    c.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '1');"
        "CREATE TABLE events (id TEXT PRIMARY KEY, store TEXT NOT NULL, gateway TEXT "
        "NOT NULL, sequence BIGINT NOT NULL, type TEXT NOT NULL, time TEXT NOT NULL, "
        "subject TEXT NOT NULL, customer TEXT, received_at REAL NOT NULL, "
        "data TEXT NOT NULL);"
        "INSERT INTO events VALUES ('same', 's1', 'g1', 1, 't', "
        "'2026-11-20T10:00:00Z', 'x', NULL, 0, '{}');")
    c.commit()
    c.close()
    i = Ingest(Database(Target.parse(str(path))))
    assert i.handle(*good("s2", "g1", 1, eid="same"), T0).stored
    assert i.db.read("SELECT value FROM meta WHERE key = 'schema_version'") == [("3",)]
    assert i.db.read("SELECT store FROM events ORDER BY store") == [("s1",), ("s2",)]
    i.close()


# --- 4, 5: erasure reaches every store and leaves no copy -----------------------------

class Flaky(Sent):
    """A broker that acknowledges only while ``up``."""

    def __init__(self) -> None:
        super().__init__()
        self.up = True

    def __call__(self, topic: str, payload: bytes) -> bool:
        if self.up:
            self.messages.append((topic, payload))
        return self.up


def _person(customer: str, *, presence: bool = True, marketing: bool = True,
            staff_view: bool = True, at: float = T0, card: str = "ab") -> m.CustomerIn:
    proof = {"method": "app_toggle", "reference": "app/privacy"}
    consents = {purpose: {"granted": granted, "at": at, "source": "app", "proof": proof}
                for purpose, granted in (("presence", presence), ("marketing", marketing),
                                         ("staff_view", staff_view))}
    return m.CustomerIn.model_validate({
        "consents": consents, "loyalty_ids": ["ps1:" + card * 16],
        "profile": {"greeting_name": "Alex", "tier": "gold", "birthday_month": 5},
        "identity": {"customer": customer, "identity_key": "a1" * 16,
                     "rotation_exponent": 8, "beacon_time_at_registration": 7000,
                     "registered_at": 1_790_000_000.0}})


def _two_stores(ingest: Ingest) -> None:
    for store in ("s1", "s2"):
        ingest.handle(f"storegate/v1/{store}/g1/status", status(seal.public_text(
            X25519PrivateKey.generate().public_key()))[1].replace(
                b"storegate://s1/g1", f"storegate://{store}/g1".encode()), T0)


def test_an_erasure_not_sent_to_a_store_is_pending_and_sent_by_the_pass(
        ingest: Ingest) -> None:
    broker = Flaky()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, broker, clock=lambda: T0)
    svc = CentralService(ingest.db, commands, clock=lambda: T0)
    _two_stores(ingest)
    svc.put_customer("cust-1", _person("cust-1"))
    broker.up = False
    e = svc.erase(["cust-1"])
    assert not e.done and [s.store for s in e.stores] == ["s1", "s2"]
    # the erasure's commit holds a pending row per store, sent or not
    assert ingest.db.read("SELECT COUNT(*) FROM erasure_stores") == [(2,)]
    broker.up = True
    svc.tend(T0 + 10)  # the publish not acknowledged goes again, the same command
    erases = [t for t, _ in broker.messages if t.endswith("/erase")]
    assert sorted(erases) == ["storegate/v1/s1/commands/erase",
                              "storegate/v1/s2/commands/erase"]
    with ingest.db.tx() as db:  # a crash between the commit and any send
        db.execute("UPDATE erasure_stores SET command_id = '' WHERE store = 's2'")
    assert svc.send_pending_erasures(T0 + 20) == 1
    for store in ("s1", "s2"):
        [cid] = [r[0] for r in ingest.db.read(
            "SELECT command_id FROM erasure_stores WHERE store = ?", (store,))]
        ingest.handle(*raw(store, "g1", f"{9:020d}", eid=f"er-{store}",
                           type_=ev.GATEWAY_ERASED, data={
                               "request_id": e.id, "command_id": cid, "applied": True,
                               "customers": 1, "registry_records": 1, "identity_keys": 0,
                               "tracking_states": 0, "stitcher_states": 0,
                               "offers_revoked": 0, "ledger_rows_pseudonymised": 0,
                               "outbox_unsent_redacted": 0, "outbox_replay_redacted": 0,
                               "files_rewritten": 0}), T0 + 30)
    done = svc.erasure(e.id)
    assert done.done and "cust-1" not in json.dumps(
        ingest.db.read("SELECT customers, loyalty_ids FROM erasures"))


def test_erasure_redacts_the_commands_and_late_events_that_name_them(
        ingest: Ingest) -> None:
    sent = Sent()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent, clock=lambda: T0)
    svc = CentralService(ingest.db, commands, clock=lambda: T0)
    ingest.handle(*status(seal.public_text(X25519PrivateKey.generate().public_key())), T0)
    svc.put_customer("cust-1", _person("cust-1"))
    card = "ps1:" + "ab" * 16
    ingest.handle(*raw("s1", "g1", f"{1:020d}", eid="bad-1", data={"customer": "cust-1"}),
                  T0)  # a rejected message naming them
    svc.erase(["cust-1"])
    for (wire_,) in ingest.db.read("SELECT wire FROM commands WHERE name = 'customers'"):
        assert bytes(wire_) == REDACTED_WIRE
    assert ingest.db.read("SELECT COUNT(*) FROM rejects WHERE payload IS NOT NULL") == [(0,)]
    # a late visit and a loyalty scan after the erasure come back redacted
    visit = {"visit_id": "v9", "customer": "cust-1", "zone": None,
             "entered_at": "2026-11-20T10:00:00Z"}
    scan = {"lane": "lane-1", "kind": "loyalty", "value": card,
            "scanned_at": "2026-11-20T10:00:00Z", "transaction_id": "t-1"}
    outs = ingest.handle_many([
        raw("s1", "g1", f"{2:020d}", eid="late", type_=ev.VISIT_ENTERED, data=visit,
            subject="visit/cust-1"),
        raw("s1", "g1", f"{3:020d}", eid="scan", type_=ev.POS_SCANNED, data=scan)], T0)
    assert [o.result for o in outs] == ["stored", "stored"]
    left = json.dumps(ingest.db.read("SELECT customer, subject, data FROM events"))
    assert "cust-1" not in left and card not in left
    assert ingest.db.read("SELECT COUNT(*) FROM events") == [(2,)]


def test_a_bulk_erasure_of_many_cards_is_one_statement_a_few_cards(
        ingest: Ingest) -> None:
    svc = CentralService(ingest.db, None, clock=lambda: T0)
    customers = [f"cust-{i}" for i in range(125)]
    with ingest.db.tx() as db:
        for i, c in enumerate(customers):
            for k in range(8):
                db.execute("INSERT INTO loyalty (loyalty_id, customer) VALUES (?, ?)",
                           (f"ps1:{i * 8 + k:032x}", c))
    e = svc.erase(customers)
    assert e.customers == customers
    assert ingest.db.read("SELECT COUNT(*) FROM loyalty") == [(0,)]


# --- 6, 7: consent decides what leaves central -----------------------------------------

def _sent_record(sent: Sent) -> dict[str, Any]:
    last = sent.verified("customers")[-1].payload
    [rec] = last["customers"]
    return dict(rec)


def test_identity_and_profile_leave_central_only_with_consent(ingest: Ingest) -> None:
    sent = Sent()
    svc = CentralService(ingest.db, Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent,
                                             clock=lambda: T0), clock=lambda: T0)
    ingest.handle(*status(seal.public_text(X25519PrivateKey.generate().public_key())), T0)
    svc.put_customer("cust-1", _person("cust-1", presence=False, marketing=False,
                                       staff_view=False))
    rec = _sent_record(sent)
    assert "identity" not in rec and rec["profile"] == {}
    svc.put_customer("cust-1", _person("cust-1", presence=True, marketing=True,
                                       staff_view=False))
    rec = _sent_record(sent)
    assert "identity" in rec
    assert rec["profile"]["tier"] == "gold" and "greeting_name" not in rec["profile"]
    svc.put_customer("cust-1", _person("cust-1", staff_view=True))
    assert _sent_record(sent)["profile"]["greeting_name"] == "Alex"


def test_a_future_dated_consent_is_refused_and_the_newest_recorded_wins(
        ingest: Ingest) -> None:
    svc = CentralService(ingest.db, None, clock=lambda: T0)
    with pytest.raises(InvalidError):
        svc.put_customer("cust-2", _person("cust-2", at=4_000_000_000.0))
    svc.put_customer("cust-2", _person("cust-2", at=T0 + 200))  # within the skew
    clock = [T0 + 1]
    later = CentralService(ingest.db, None, clock=lambda: clock[0])
    out = later.put_customer("cust-2", _person("cust-2", marketing=False, at=T0 - 50))
    assert not out.consents["marketing"].granted  # recorded last: it is the consent


# --- 8, 9: commands go again; the registry in chunks; synced only when acknowledged ----

def test_an_unacknowledged_withdrawal_is_sent_again_by_the_pass(ingest: Ingest) -> None:
    broker = Flaky()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, broker, clock=lambda: T0)
    svc = CentralService(ingest.db, commands, clock=lambda: T0)
    ingest.handle(*status(seal.public_text(X25519PrivateKey.generate().public_key())), T0)
    svc.put_customer("cust-1", _person("cust-1"))
    broker.up = False
    svc.put_customer("cust-1", _person("cust-1", presence=False))
    assert ingest.db.read("SELECT COUNT(*) FROM commands WHERE sent_at IS NULL") == [(1,)]
    broker.up = True
    svc.tend(T0 + 10)
    assert ingest.db.read("SELECT COUNT(*) FROM commands WHERE sent_at IS NULL") == [(0,)]
    rec = _sent_record(broker)
    assert not rec["consents"]["presence"]["granted"] and "identity" not in rec


def test_the_registry_goes_in_chunks_and_is_synced_only_when_acknowledged(
        ingest: Ingest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "SYNC_CHUNK", 3)
    broker = Flaky()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, broker, clock=lambda: T0)
    svc = CentralService(ingest.db, commands, clock=lambda: T0)
    for i in range(7):
        svc.put_customer(f"cust-{i}", _person(f"cust-{i}", card=f"{i:02x}"))
    ingest.handle(*status(seal.public_text(X25519PrivateKey.generate().public_key())), T0)
    broker.up = False
    svc.sync_new_gateways()
    with ingest.db.tx() as db:
        assert records.stores_to_sync(db, T0) == ["s1"]  # not acknowledged: not synced
    broker.up = True
    svc.sync_new_gateways()
    with ingest.db.tx() as db:
        assert records.stores_to_sync(db, T0) == []
    chunks = [v.payload for v in broker.verified("customers")][-3:]
    assert [c["op"] for c in chunks] == ["upsert"] * 3
    assert [len(c["customers"]) for c in chunks] == [3, 3, 1]
    with pytest.raises(NotFoundError):
        svc.sync_store("no-such-store")


# --- 17: a loyalty id given twice ---------------------------------------------------------

def test_one_loyalty_id_twice_in_a_body_is_a_clear_error(ingest: Ingest) -> None:
    svc = CentralService(ingest.db, None, clock=lambda: T0)
    body = _person("cust-1").model_copy(update={"loyalty_ids": ["ps1:" + "ab" * 16] * 2})
    with pytest.raises(InvalidError):
        svc.put_customer("cust-1", body)


# --- 14: the SQLite files are private ------------------------------------------------------

def test_a_new_sqlite_database_and_its_wal_are_private(tmp_path: Path) -> None:
    path = tmp_path / "central.db"
    i = Ingest(str(path))
    i.handle(*wire(1), T0)
    modes = {f.name: f.stat().st_mode & 0o777 for f in tmp_path.iterdir()}
    assert modes["central.db"] == 0o600 and modes["central.db-wal"] == 0o600, modes
    i.close()


# --- 16, 18: one instance sends a gap's replay; a gap is given up, bounded -----------------

def test_two_scanners_on_one_storage_send_a_gap_once(url: str) -> None:  # noqa: F811
    a, b = Ingest(url), Ingest(url)
    sent = Sent()
    scanners = [GapScanner(i.db, Commands(i.db, CENTRAL.key, CENTRAL.kid, sent,
                                          clock=lambda: T0), grace_s=0) for i in (a, b)]
    a.handle_many([wire(1), wire(5)], T0)
    for s in scanners:
        s.scan(T0)  # both found it; the second finds it claimed
    assert len(sent.verified("replay")) == 1
    assert a.db.read("SELECT attempts FROM gaps WHERE state = 'open'") == [(1,)]
    a.close()
    b.close()


def test_a_gap_never_answered_is_given_up_and_recorded_lost(ingest: Ingest) -> None:
    sent = Sent()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent, clock=lambda: T0)
    scanner = GapScanner(ingest.db, commands, grace_s=0, retry_first_s=1)
    ingest.handle_many([wire(1), wire(5)], T0)
    now = T0
    for _ in range(g.MAX_ATTEMPTS + 1):
        scanner.scan(now)
        now += g.RETRY_MAX_S + 1
    assert len(sent.verified("replay")) == g.MAX_ATTEMPTS and scanner.abandoned == 1
    scanner.scan(now)
    [gw] = CentralService(ingest.db, commands).gateways()
    assert (gw.watermark, gw.open_gaps, gw.lost) == (5, [], [[2, 4]])
    assert len(sent.verified("replay")) == g.MAX_ATTEMPTS  # no more asking


def test_an_unchanged_gateway_is_not_read_again_each_pass(
        ingest: Ingest, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real = records.sequences_above

    def counted(db: Any, store: str, gateway: str, watermark: int,
                limit: int) -> list[int]:
        reads.append(gateway)
        return real(db, store, gateway, watermark, limit)

    monkeypatch.setattr(records, "sequences_above", counted)
    scanner = GapScanner(ingest.db, None, grace_s=100)  # nothing due in this test
    ingest.handle_many([wire(1), wire(5)], T0)
    for k in range(5):
        scanner.scan(T0 + k)
    assert len(reads) == 2  # the first pass, once more after its watermark moved
    ingest.handle(*wire(7), T0 + 6)
    assert scanner.scan(T0 + 6).opened == 1 and len(reads) == 3  # changed: read


# --- 20: a refund is not a visit -------------------------------------------------------------

def test_a_refund_does_not_make_an_old_customer_recent() -> None:
    from storegate.core.central.profile import StoredEvent, profile
    sale = StoredEvent("storegate.purchase.completed.v1", "s1", T0 - 200 * 86_400,
                       {"kind": "sale", "total_minor": 900_000, "items": []})
    refund = StoredEvent("storegate.purchase.completed.v1", "s2", T0,
                         {"kind": "return", "total_minor": 5_000, "items": []})
    out = profile("c", [sale, refund], now=T0)
    assert out.recency_days == 200.0 and out.preferred_store == "s1"


# --- 22, 23: the API bounds a body; an unknown store is not synced --------------------------

def test_the_api_refuses_an_oversized_body_and_an_unknown_store(ingest: Ingest) -> None:
    from fastapi.testclient import TestClient

    from storegate.app.central.api import MAX_BODY_BYTES, build_app
    svc = CentralService(ingest.db, Commands(ingest.db, CENTRAL.key, CENTRAL.kid, Sent()),
                         clock=lambda: T0)
    client = TestClient(build_app(svc, ["token-for-tests"]))
    auth = {"Authorization": "Bearer token-for-tests"}
    big = b"x" * (MAX_BODY_BYTES + 1)
    assert client.post("/erasures", content=big, headers=auth).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b" " * (MAX_BODY_BYTES // 4)

    assert client.post("/erasures", content=chunks(), headers=auth).status_code == 413
    assert client.post("/stores/nowhere/sync", headers=auth).status_code == 404
    assert ingest.db.read("SELECT COUNT(*) FROM commands") == [(0,)]


def test_two_customers_given_one_loyalty_id_at_once_is_a_conflict_not_a_crash(
        url: str) -> None:  # noqa: F811
    import threading

    from storegate.app.central.service import ConflictError
    dbs = [Ingest(url), Ingest(url)]
    services = [CentralService(i.db, None, clock=lambda: T0) for i in dbs]
    for round_ in range(10):
        card = f"{round_:02x}"
        outcomes: list[str] = []

        def put(svc: CentralService, customer: str, card: str = card,
                outcomes: list[str] = outcomes) -> None:
            try:
                svc.put_customer(customer, _person(customer, card=card))
                outcomes.append("ok")
            except ConflictError:
                outcomes.append("conflict")

        threads = [threading.Thread(target=put, args=(svc, f"r{round_}-c{k}"))
                   for k, svc in enumerate(services)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sorted(outcomes) == ["conflict", "ok"], outcomes
    for i in dbs:
        i.close()


def test_an_offset_past_what_a_database_holds_is_a_400_class_error(ingest: Ingest) -> None:
    from fastapi.testclient import TestClient

    from storegate.app.central.api import build_app
    client = TestClient(build_app(CentralService(ingest.db, None), ["token-for-tests"]))
    r = client.get("/customers?limit=1&offset=9223372036854775808",
                   headers={"Authorization": "Bearer token-for-tests"})
    assert r.status_code == 422


def test_of_two_instances_one_syncs_a_new_gateways_store(url: str) -> None:  # noqa: F811
    a, b = Ingest(url), Ingest(url)
    sent = Sent()
    svc_a = CentralService(a.db, Commands(a.db, CENTRAL.key, CENTRAL.kid, sent,
                                          clock=lambda: T0), clock=lambda: T0)
    svc_a.put_customer("cust-1", _person("cust-1"))
    a.handle(*status(seal.public_text(X25519PrivateKey.generate().public_key())), T0)
    with b.db.tx() as db:  # b is mid-sync of s1 (holds the lease)
        assert records.claim_sync(db, "s1", T0, 60)
    assert svc_a.sync_new_gateways() == {}  # a leaves it to b
    with b.db.tx() as db:
        records.release_sync(db, "s1")
    assert list(svc_a.sync_new_gateways()) == ["s1"]
    with a.db.tx() as db:  # a lease whose holder died expires
        assert records.claim_sync(db, "s2", T0, 60)
        assert not records.claim_sync(db, "s2", T0 + 30, 60)
        assert records.claim_sync(db, "s2", T0 + 61, 60)
    a.close()
    b.close()
