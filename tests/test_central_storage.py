"""Central's storage and services on both dialects: SQLite and a real PostgreSQL (a
throwaway cluster, tests/support/postgres.py). Ingest stores exactly once, gaps open,
are asked for, close or are lost; customers, consents with proof, pickups, erasure
tracking and the HTTP API over the same storage."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fastapi.testclient import TestClient

from storegate.adapters.central.storage import Database, StorageError, Target
from storegate.app.central import models as m
from storegate.app.central.api import build_app
from storegate.app.central.commands import Commands
from storegate.app.central.gaps import GapScanner
from storegate.app.central.ingest import Ingest
from storegate.app.central.service import CentralService, ConflictError
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core import seal
from storegate.core.commands import open_customers, validate_payload
from storegate.core.personal.registry import CustomersChange, CustomersCommand, Registry
from storegate.core.trust import TrustPolicy, Verified, verify
from tests.support.central import CENTRAL
from tests.support.driver import purchase
from tests.support.postgres import postgres_cluster, postgres_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

T0 = 1_795_000_000.0
TOKEN = "retailer-token-for-tests"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "central.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def ingest(url: str) -> Iterator[Ingest]:
    i = Ingest(url)
    yield i
    i.close()


def wire(seq: int, *, gateway: str = "g1", n: int | None = None,
         draft: ev.EventDraft | None = None) -> tuple[str, bytes]:
    d = draft or purchase(n if n is not None else seq)
    body = ev.encode_event(d, event_id=f"evt-{gateway}-{seq:06d}",
                           source_json=json.dumps(f"storegate://s1/{gateway}"),
                           sequence=seq)
    return f"storegate/v1/s1/{gateway}/events/{d.type.kind}", body


def status(seal_key: str | None, gateway: str = "g1", *, state: str = "online",
           last_sequence: int | None = None) -> tuple[str, bytes]:
    draft = ev.EventDraft(ev.GATEWAY_STATUS, f"gateway/{gateway}", T0, p.GatewayStatus(
        state=state, session=1, version="t", started_at=ev.rfc3339(T0),  # type: ignore[arg-type]
        reason="started" if state == "online" else "shutdown", seal_key=seal_key,
        last_sequence=last_sequence))
    return (f"storegate/v1/s1/{gateway}/status", ev.encode(ev.envelope(
        draft, event_id=f"st-{gateway}", source=f"storegate://s1/{gateway}", sequence=None)))


def answer(type_: ev.EventType, data: p.Payload, seq: int,
           gateway: str = "g1") -> tuple[str, bytes]:
    return wire(seq, gateway=gateway, draft=ev.EventDraft(type_, "command/x", T0, data))


class Sent:
    """The broker side of Commands: records what would be published (acknowledged)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes) -> bool:
        self.messages.append((topic, payload))
        return True

    def verified(self, name: str, store: str = "s1") -> list[Verified]:
        policy = TrustPolicy({CENTRAL.kid: CENTRAL.key.public_key()}, 86_400, 60)
        out = []
        for topic, payload in self.messages:
            if topic.endswith(f"/{name}"):
                v = verify(payload, name=name, store=store, policy=policy, now=T0 + 10)
                assert isinstance(v, Verified), v
                out.append(v)
        return out


def test_each_event_is_stored_once_and_bad_input_is_kept_with_its_reason(
        ingest: Ingest) -> None:
    t, b = wire(1)
    assert ingest.handle(t, b, T0).stored
    again = ingest.handle(t, b, T0 + 1)
    assert again.duplicate and again.event_id == "evt-g1-000001"
    bad = ingest.handle(t, b"{", T0)
    assert bad.rejected and bad.reason == "malformed"
    nats = ingest.handle("storegate.v1.s1.g1.events.purchase", wire(2)[1], T0)
    assert nats.stored and nats.sequence == 2
    outs = ingest.handle_many([wire(3), wire(3), wire(4)], T0)
    assert [o.result for o in outs] == ["stored", "duplicate", "stored"]
    db = ingest.db
    assert db.read("SELECT COUNT(*) FROM events") == [(4,)]
    assert db.read("SELECT reason, topic FROM rejects") == [("malformed", t)]
    assert ingest.counts["stored"] == 4 and ingest.counts["duplicate"] == 2
    stored = json.loads(db.read("SELECT data FROM events WHERE sequence = 3")[0][0])
    assert stored == purchase(3).data.model_dump(mode="json")


def test_two_instances_on_one_storage_store_each_id_once(url: str) -> None:
    a, b = Ingest(url), Ingest(url)
    msgs = [wire(s) for s in range(1, 301)]

    def run(i: Ingest, part: list[tuple[str, bytes]]) -> None:
        for k in range(0, len(part), 7):
            i.handle_many(part[k:k + 7], T0)

    threads = [threading.Thread(target=run, args=(a, msgs)),
               threading.Thread(target=run, args=(b, msgs[::-1]))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert a.db.read("SELECT COUNT(*), COUNT(DISTINCT id) FROM events") == [(300, 300)]
    assert a.counts["stored"] + b.counts["stored"] == 300
    assert a.counts["duplicate"] + b.counts["duplicate"] == 300
    a.close()
    b.close()


def test_a_gap_is_asked_for_by_signed_replay_and_closes(ingest: Ingest) -> None:
    sent = Sent()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent, clock=lambda: T0)
    scanner = GapScanner(ingest.db, commands, grace_s=2, retry_first_s=5)
    ingest.handle_many([wire(s) for s in (1, 2, 5, 6)], T0)
    first = scanner.scan(T0)
    assert (first.opened, first.requested) == (1, 0)  # within its grace
    assert scanner.scan(T0 + 2).requested == 1
    [cmd] = sent.verified("replay")
    assert cmd.payload == {"gateway": "g1", "from_sequence": 3, "to_sequence": 4,
                           "request_id": "gap-g1-3-4"}
    assert scanner.scan(T0 + 3).requested == 0  # not again before its backoff
    # the gateway re-publishes 3..4 (same ids) and answers
    ingest.handle_many([wire(3), wire(4), answer(ev.GATEWAY_REPLAYED, p.GatewayReplayed(
        request_id="gap-g1-3-4", command_id=cmd.command_id, from_sequence=3,
        to_sequence=4, republished=2, unavailable=[]), 7)], T0 + 4)
    assert scanner.scan(T0 + 5).closed == 1
    svc = CentralService(ingest.db, commands, clock=lambda: T0)
    [gw] = svc.gateways()
    assert (gw.watermark, gw.open_gaps, gw.lost) == (7, [], [])
    assert [a["data"]["republished"] for a in svc.command(cmd.command_id).answers] == [2]


def test_a_gap_at_the_tail_is_seen_from_the_status_without_a_later_event(
        ingest: Ingest) -> None:
    """Events 6..8 lost after the last one central stored, and nothing after them: the
    gateway's death certificate (retained status) says it accepted up to 8, so the
    tail is asked for by replay and closes when the gateway re-publishes it."""
    sent = Sent()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent, clock=lambda: T0)
    scanner = GapScanner(ingest.db, commands, grace_s=0)
    ingest.handle_many([wire(s) for s in range(1, 6)], T0)
    assert scanner.scan(T0).opened == 0
    ingest.handle(*status(None, state="offline", last_sequence=8), T0 + 1)
    assert scanner.scan(T0 + 1).requested == 1
    [cmd] = sent.verified("replay")
    assert (cmd.payload["from_sequence"], cmd.payload["to_sequence"]) == (6, 8)
    ingest.handle_many([wire(6), wire(7), wire(8)], T0 + 2)
    assert scanner.scan(T0 + 2).closed == 1
    [gw] = CentralService(ingest.db, commands).gateways()
    assert (gw.watermark, gw.open_gaps) == (8, [])
    # telemetry's last_sequence is the head too; an older head never lowers it
    tele = ev.EventDraft(ev.GATEWAY_TELEMETRY, "gateway/g1", T0, p.GatewayTelemetry(
        last_sequence=11, outbox_depth=0, pending_accept=0, oldest_pending_age_s=None,
        dropped_total=0,
        published_total=12, reconnects_total=0))
    ingest.handle(*wire(12, draft=tele), T0 + 3)
    ingest.handle(*status(None, last_sequence=3), T0 + 3)
    assert scanner.scan(T0 + 3).requested == 1
    assert [(v.payload["from_sequence"], v.payload["to_sequence"])
            for v in sent.verified("replay")][-1] == (9, 11)


def test_a_range_the_gateway_no_longer_holds_is_recorded_lost(ingest: Ingest) -> None:
    sent = Sent()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent, clock=lambda: T0)
    scanner = GapScanner(ingest.db, commands, grace_s=0)
    ingest.handle_many([wire(1), wire(5), wire(9)], T0)
    assert scanner.scan(T0).requested == 2
    cmds = {v.payload["from_sequence"]: v for v in sent.verified("replay")}
    ingest.handle_many([wire(6), wire(7), wire(8), answer(
        ev.GATEWAY_REPLAYED, p.GatewayReplayed(
            request_id="x", command_id=cmds[6].command_id, from_sequence=6, to_sequence=8,
            republished=3, unavailable=[]), 10), answer(
        ev.GATEWAY_REPLAYED, p.GatewayReplayed(
            request_id="y", command_id=cmds[2].command_id, from_sequence=2, to_sequence=4,
            republished=0, unavailable=[[2, 4]]), 11)], T0 + 1)
    r = scanner.scan(T0 + 2)
    assert (r.closed, r.lost) == (1, 1)
    [gw] = CentralService(ingest.db, commands).gateways()
    assert (gw.watermark, gw.open_gaps, gw.lost) == (11, [], [[2, 4]])


def _customer(granted: bool = True, at: float = T0) -> m.CustomerIn:
    consent = m.ConsentIn(granted=granted, at=at, source="app", store="s1", proof=m.Proof(
        method="app_toggle", reference="app-5.2/settings/privacy", text_version="v3"))
    return m.CustomerIn(consents={"presence": consent, "marketing": consent},
                        loyalty_ids=["ps1:" + "ab" * 16],
                        profile=m.CustomerProfileIn(greeting_name="Alex", tier="gold"),
                        identity=None)


def test_customers_consents_pickups_and_what_each_store_is_sent(ingest: Ingest) -> None:
    sent = Sent()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent, clock=lambda: T0)
    svc = CentralService(ingest.db, commands, clock=lambda: T0)
    gw_key = X25519PrivateKey.generate()
    ingest.handle(*status(seal.public_text(gw_key.public_key())), T0)
    body = m.CustomerIn.model_validate({**_customer().model_dump(), "identity": {
        "customer": "cust-1", "identity_key": "a1" * 16, "rotation_exponent": 8,
        "beacon_time_at_registration": 7000, "registered_at": 1_790_000_000.0}})
    out = svc.put_customer("cust-1", body)
    assert out.version == 1 and out.has_identity
    assert out.consents["presence"].proof.reference == "app-5.2/settings/privacy"
    withdrawn = svc.put_customer("cust-1", m.CustomerIn(consents={
        "presence": m.ConsentIn(granted=False, at=T0 + 60, source="web", proof=m.Proof(
            method="web_form", reference="form-991"))}, loyalty_ids=["ps1:" + "ab" * 16]))
    assert withdrawn.version == 2 and not withdrawn.consents["presence"].granted
    assert withdrawn.has_identity  # kept at central; the box drops it without consent
    history = svc.consent_history("cust-1")
    assert [(c.purpose, c.granted) for c in history] == [
        ("presence", True), ("marketing", True), ("presence", False)]
    with pytest.raises(ConflictError):
        svc.put_customer("cust-2", _customer())  # cust-1's loyalty id
    # pickups: created -> ready -> collected, each re-sending the record to its store
    svc.create_pickup(m.PickupIn(order_id="o-1", customer="cust-1", store="s1", items=2))
    ready = svc.pickup_state("o-1", "ready")
    assert ready.state == "ready" and ready.command_id is not None
    with pytest.raises(ConflictError):
        svc.pickup_state("o-1", "ready")
    # what the gateway consumes: it validates and opens the last customers command
    last = sent.verified("customers")[-1]
    cmd = validate_payload("customers", last.payload, now=T0)
    assert isinstance(cmd, CustomersCommand), cmd
    change = open_customers(cmd, key=gw_key, store="s1", gateway="g1")
    assert not hasattr(change, "reason"), change
    [rec] = cmd.customers
    assert [o.state for o in rec.pickup_orders] == ["ready"]
    # two puts, then the order created and made ready: each a version on
    assert rec.version == 4 and rec.consents.presence is not None
    assert not rec.consents.presence.granted
    assert svc.pickup_state("o-1", "collected").collected_at == T0


def test_a_new_gateway_or_seal_key_gets_the_whole_registry(ingest: Ingest) -> None:
    sent = Sent()
    svc = CentralService(ingest.db, Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent,
                                             clock=lambda: T0), clock=lambda: T0)
    svc.put_customer("cust-1", _customer())
    assert svc.sync_new_gateways() == {}  # no gateway has announced a key yet
    key = X25519PrivateKey.generate()
    ingest.handle(*status(seal.public_text(key.public_key())), T0)
    assert list(svc.sync_new_gateways()) == ["s1"]
    assert svc.sync_new_gateways() == {}  # synced to that key
    [cmd] = sent.verified("customers")
    assert cmd.payload["op"] == "replace"
    assert [c["customer"] for c in cmd.payload["customers"]] == ["cust-1"]
    ingest.handle(*status(seal.public_text(X25519PrivateKey.generate().public_key())), T0)
    assert list(svc.sync_new_gateways()) == ["s1"]  # the box was replaced: a new key


def test_erasure_redacts_central_and_is_tracked_until_every_gateway_confirms(
        ingest: Ingest) -> None:
    sent = Sent()
    commands = Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent, clock=lambda: T0)
    svc = CentralService(ingest.db, commands, clock=lambda: T0)
    svc.put_customer("cust-1", _customer())
    visit = ev.EventDraft(ev.VISIT_ENTERED, "visit/v1", T0, p.VisitEntered(
        visit_id="v1", customer="cust-1", zone=None, entered_at=ev.rfc3339(T0)))
    card = "ps1:" + "ab" * 16
    scan = ev.EventDraft(ev.POS_SCANNED, "lane/lane-1", T0, p.PosScanned(
        lane="lane-1", kind="loyalty", value=card, scanned_at=ev.rfc3339(T0),
        transaction_id="t-1"))
    ingest.handle_many([wire(1, draft=visit), wire(1, gateway="g2", draft=visit),
                        wire(3, draft=scan)], T0)
    e = svc.erase(["cust-1"])
    assert not e.done and [s.store for s in e.stores] == ["s1"]
    [cmd] = sent.verified("erase")
    assert cmd.payload["customers"] == ["cust-1"]
    assert cmd.payload["loyalty_ids"] == ["ps1:" + "ab" * 16]
    assert ingest.db.read("SELECT COUNT(*) FROM events WHERE customer IS NOT NULL") == [(0,)]
    left = json.dumps(ingest.db.read("SELECT subject, data FROM events"))
    assert "cust-1" not in left and card not in left  # the card without its customer too
    assert ingest.db.read("SELECT COUNT(*) FROM customers") == [(0,)]

    def erased(gateway: str, seq: int) -> tuple[str, bytes]:
        return answer(ev.GATEWAY_ERASED, p.Erased(
            request_id=e.id, command_id=cmd.command_id, applied=True, customers=1,
            registry_records=1, identity_keys=0, tracking_states=0, stitcher_states=0,
            offers_revoked=0, ledger_rows_pseudonymised=0, outbox_unsent_redacted=0,
            outbox_replay_redacted=0, files_rewritten=3), seq, gateway)

    ingest.handle(*erased("g1", 2), T0)
    half = svc.erasure(e.id)
    assert not half.done and half.stores[0].confirmed == ["g1"]
    ingest.handle(*erased("g2", 2), T0)
    done = svc.erasure(e.id)
    assert done.done and done.done_at == T0 and done.stores[0].confirmed == ["g1", "g2"]


def test_the_api_is_token_protected_and_its_openapi_complete(ingest: Ingest) -> None:
    sent = Sent()
    svc = CentralService(ingest.db, Commands(ingest.db, CENTRAL.key, CENTRAL.kid, sent),
                         clock=lambda: T0)
    client = TestClient(build_app(svc, [TOKEN]))
    assert client.get("/healthz").status_code == 200
    assert client.get("/customers").status_code == 401
    assert client.get("/customers", headers={"Authorization": "Bearer nope"}
                      ).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.put("/customers/cust-1", headers=auth,
                   json=_customer().model_dump(mode="json"))
    assert r.status_code == 200, r.text
    assert client.get("/customers/cust-1/consents", headers=auth).json()[0]["proof"][
        "method"] == "app_toggle"
    assert client.get("/customers/cust-1/profile", headers=auth).json()["segment"] == \
        "unknown"
    assert client.get("/loyalty/ps1:" + "ab" * 16, headers=auth).json() == {
        "customer": "cust-1"}
    assert client.get("/customers/nobody", headers=auth).status_code == 404
    bad = client.put("/customers/cust-1", headers=auth, json={"consents": {"presence": {
        "granted": True, "at": T0, "source": "app"}}})
    assert bad.status_code == 422  # a consent without its proof is refused
    r = client.post("/pickups", headers=auth, json={"order_id": "o-9", "customer": "cust-1",
                                                    "store": "s1", "items": 1})
    assert r.status_code == 201, r.text
    assert client.post("/pickups/o-9/collected", headers=auth).status_code == 409
    spec: dict[str, Any] = client.get("/openapi.json").json()
    for path in ("/customers/{customer}", "/customers/{customer}/consents",
                 "/customers/{customer}/profile", "/campaigns/{campaign_id}",
                 "/campaigns/uplift", "/pickups", "/pickups/{order_id}/ready",
                 "/erasures", "/erasures/{erasure_id}", "/gateways",
                 "/commands/{command_id}", "/loyalty/{loyalty_id}"):
        assert path in spec["paths"], path
        for op in spec["paths"][path].values():
            assert "401" in op["responses"], (path, op)
    assert "centralToken" in spec["components"]["securitySchemes"]


def test_a_storage_url_that_cannot_work_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        Database(Target.parse(str(tmp_path / "no" / "such" / "c.db")))
    with pytest.raises(StorageError, match="postgresql://"):
        Target.parse("mysql://x")
    with pytest.raises(StorageError, match=r"\*\*\*"):
        Database(Target.parse("postgresql://u:secret@127.0.0.1:1/x"))


def test_each_change_of_a_customer_reaches_the_box_with_a_higher_version(
        url: str) -> None:
    """Consent, pickup order (created, ready, collected) and the computed profile each
    raise the version the store gets, so the gateway's registry applies every push;
    a restarted central, and a second one on the same database, go on from the
    database's version."""
    sent = Sent()
    first = Ingest(url)
    try:
        svc = CentralService(first.db, Commands(first.db, CENTRAL.key, CENTRAL.kid, sent,
                                                clock=lambda: T0), clock=lambda: T0)
        first.handle(*status(seal.public_text(X25519PrivateKey.generate().public_key())),
                     T0)
        registry = Registry(tomb_key=b"k" * 32, keep_s=86_400)

        def applied_last() -> tuple[int, int]:
            cmd = validate_payload("customers", sent.verified("customers")[-1].payload,
                                   now=T0)
            assert isinstance(cmd, CustomersCommand), cmd
            delta = registry.apply(CustomersChange(cmd.op, tuple(cmd.customers), {}, (),
                                                   cmd.request_id), T0)
            return cmd.customers[0].version, delta.applied

        svc.put_customer("cust-1", _customer())
        assert applied_last() == (1, 1)
        svc.create_pickup(m.PickupIn(order_id="o-1", customer="cust-1", store="s1",
                                     items=2))
        assert applied_last() == (2, 1)
        svc.pickup_state("o-1", "ready")
        assert applied_last() == (3, 1)
        rec = registry.get("cust-1")
        assert rec is not None and [o.state for o in rec.pickup_orders] == ["ready"]
        svc.pickup_state("o-1", "collected")
        assert applied_last() == (4, 1)
        rec = registry.get("cust-1")
        assert rec is not None and rec.pickup_orders == []
        svc.push_customer("cust-1")  # nothing changed: the same version, nothing to do
        assert applied_last() == (4, 0)
    finally:
        first.close()
    # central restarted, and a second instance on the same database
    again, other = Ingest(url), Ingest(url)
    try:
        svc = CentralService(again.db, Commands(again.db, CENTRAL.key, CENTRAL.kid, sent,
                                                clock=lambda: T0), clock=lambda: T0)
        svc2 = CentralService(other.db, Commands(other.db, CENTRAL.key, CENTRAL.kid, sent,
                                                 clock=lambda: T0), clock=lambda: T0)
        bought = purchase(1).data.model_copy(update={"customer": "cust-1"})
        again.handle(*wire(1, draft=ev.EventDraft(ev.PURCHASE_COMPLETED, "lane/lane-1", T0,
                                                  bought)), T0)
        svc.push_customer("cust-1")  # the computed profile changed (lifetime spend)
        assert applied_last() == (5, 1)
        svc2.put_customer("cust-1", _customer(granted=False, at=T0 + 5))  # consent
        assert applied_last() == (6, 1)
        rec = registry.get("cust-1")
        assert rec is not None and rec.consents.presence is not None
        assert not rec.consents.presence.granted
        svc.sync_store("s1")
        assert applied_last() == (6, 0)
    finally:
        again.close()
        other.close()
