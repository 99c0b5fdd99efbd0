"""A store's registry sync is done when its gateway answered, not when the broker took
the command (SQLite and a real PostgreSQL): pending until ``customers_applied``; a
refusal is failed with the gateway's reason and sent again with a bounded backoff; an
unanswered one is sent again only while the gateway is online; a new key starts over.
The live counterpart with a real gateway is tests/test_central_sync_live.py."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fastapi.testclient import TestClient

from storegate.adapters.central import records
from storegate.adapters.central.storage import Database, Target
from storegate.app.central.api import build_app
from storegate.app.central.commands import Commands
from storegate.app.central.ingest import Ingest
from storegate.app.central.service import CentralService, NotFoundError
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core import seal
from storegate.core.central import sync
from storegate.core.commands import open_customers, validate_payload
from storegate.core.personal.registry import CustomersCommand
from tests.support.central import CENTRAL
from tests.test_central_review import _person
from tests.test_central_storage import (  # noqa: F401 - fixtures
    T0,
    TOKEN,
    Sent,
    answer,
    ingest,
    postgres_cluster,
    postgres_url,
    status,
    url,
)

pytestmark = pytest.mark.e2e


class World:
    def __init__(self, ingest: Ingest) -> None:  # noqa: F811
        self.ingest = ingest
        self.now = [T0]
        self.sent = Sent()
        self.svc = CentralService(
            ingest.db, Commands(ingest.db, CENTRAL.key, CENTRAL.kid, self.sent,
                                clock=lambda: self.now[0]), clock=lambda: self.now[0])
        self.seq = 100

    def announce(self, key: X25519PrivateKey, state: str = "online") -> None:
        self.ingest.handle(*status(seal.public_text(key.public_key()), state=state),
                           self.now[0])

    def syncs(self) -> list[str]:
        """The registry syncs sent, oldest first."""
        return [r[0] for r in self.ingest.db.read(
            "SELECT id FROM commands WHERE purpose = 'customers:replace' AND sent_at IS "
            "NOT NULL ORDER BY issued_at, id")]

    def applied(self, cid: str) -> None:
        self.seq += 1
        self.ingest.handle(*answer(ev.GATEWAY_CUSTOMERS_APPLIED, p.CustomersApplied(
            request_id="r", command_id=cid, op="replace", applied=True, received=1,
            stale=0, removed=0, known=1, enrolled=1), self.seq), self.now[0])

    def refused(self, cid: str, reason: str = "unsealable") -> None:
        self.seq += 1
        self.ingest.handle(*answer(ev.GATEWAY_COMMAND_REJECTED, p.GatewayCommandRejected(
            command="customers", command_id=cid, reason=reason,  # type: ignore[arg-type]
            detail="customers.0.identity: cannot open", suppressed=0), self.seq),
            self.now[0])


def test_a_store_is_synced_when_its_gateway_answers(ingest: Ingest) -> None:  # noqa: F811
    w = World(ingest)
    w.svc.put_customer("cust-1", _person("cust-1"))
    with pytest.raises(NotFoundError):
        w.svc.store_sync("s1")  # no gateway of it known yet
    key = X25519PrivateKey.generate()
    w.announce(key)
    assert w.svc.store_sync("s1").state == "none"  # known, nothing sent yet
    assert list(w.svc.sync_new_gateways()) == ["s1"]
    [cid] = w.syncs()
    # the gateway can open what was sent to it (its own code)
    [v] = [v for v in w.sent.verified("customers") if v.command_id == cid]
    cmd = validate_payload("customers", v.payload, now=T0)
    assert isinstance(cmd, CustomersCommand)
    assert not hasattr(open_customers(cmd, key=key, store="s1", gateway="g1"), "reason")
    pending = w.svc.store_sync("s1")
    assert pending.state == "pending"
    [g] = pending.gateways
    assert (g.gateway, g.state, g.commands, g.attempts) == ("g1", "pending", [cid], 1)
    assert g.retry_at == T0 + sync.RETRY_FIRST_S
    w.now[0] = T0 + 5
    assert w.svc.sync_new_gateways() == {}  # the broker took it: not sent again yet
    w.applied(cid)
    done = w.svc.store_sync("s1")
    assert done.state == "synced"
    assert (done.gateways[0].answered_at, done.gateways[0].retry_at) == (T0 + 5, None)
    w.now[0] = T0 + 10_000
    assert w.svc.sync_new_gateways() == {}  # synced: never again for this key
    [gw] = w.svc.gateways()
    assert gw.sync is not None and gw.sync.state == "synced"
    # the API shows it; an unknown store is a 404
    client = TestClient(build_app(w.svc, [TOKEN]))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = client.get("/stores/s1/sync", headers=auth).json()
    assert (body["state"], body["gateways"][0]["state"]) == ("synced", "synced")
    assert client.get("/stores/nowhere/sync", headers=auth).status_code == 404
    # the box replaced (a new key): pending again, attempts from 1
    w.announce(X25519PrivateKey.generate())
    assert list(w.svc.sync_new_gateways()) == ["s1"]
    again = w.svc.store_sync("s1").gateways[0]
    assert (again.state, again.attempts) == ("pending", 1) and again.commands != [cid]


def test_a_refused_sync_is_failed_with_the_reason_and_retried_with_backoff(
        ingest: Ingest) -> None:  # noqa: F811
    w = World(ingest)
    w.svc.put_customer("cust-1", _person("cust-1"))
    w.announce(X25519PrivateKey.generate())  # a key the box does not hold (stale)
    w.svc.sync_new_gateways()
    [first] = w.syncs()
    w.refused(first)
    failed = w.svc.store_sync("s1")
    assert failed.state == "failed"
    [g] = failed.gateways
    assert g.state == "failed" and g.reason == "unsealable: customers.0.identity: " \
        "cannot open"
    assert g.retry_at == T0 + 30
    sends = [T0]
    for attempt in range(2, 8):
        at = sends[-1] + sync.retry_after(attempt - 1)
        w.now[0] = at - 1
        assert w.svc.sync_new_gateways() == {}, attempt  # not before its backoff
        w.now[0] = at
        assert list(w.svc.sync_new_gateways()) == ["s1"], attempt
        sends.append(at)
        cid = w.syncs()[-1]
        g = w.svc.store_sync("s1").gateways[0]
        assert (g.state, g.attempts, g.commands) == ("pending", attempt, [cid])
        w.refused(cid)
        assert w.svc.store_sync("s1").gateways[0].state == "failed"
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert gaps == [30, 60, 120, 240, 300, 300]  # doubling, bounded at 5 min
    # a duplicate answer after an applied one does not undo it
    w.now[0] = sends[-1] + 300
    w.svc.sync_new_gateways()
    last = w.syncs()[-1]
    w.applied(last)
    w.refused(last, reason="duplicate")
    assert w.svc.store_sync("s1").state == "synced"


def test_an_unanswered_sync_goes_again_only_while_the_gateway_is_online(
        ingest: Ingest) -> None:  # noqa: F811
    w = World(ingest)
    key = X25519PrivateKey.generate()
    w.announce(key, state="offline")  # its death certificate carries its key
    assert list(w.svc.sync_new_gateways()) == ["s1"]
    w.now[0] = T0 + 1000
    assert w.svc.sync_new_gateways() == {}  # held by the broker for its session
    assert w.svc.store_sync("s1").state == "pending"
    w.announce(key)  # back, and still not answering
    assert list(w.svc.sync_new_gateways()) == ["s1"]
    assert w.svc.store_sync("s1").gateways[0].attempts == 2


def test_a_schema_2_synced_gateway_is_kept_synced(tmp_path: Path) -> None:
    path = tmp_path / "central.db"
    i = Ingest(str(path))
    w = World(i)
    w.announce(X25519PrivateKey.generate())
    with i.db.tx() as db:  # as schema 2 left it: synced on the broker's ack
        db.execute("DROP TABLE syncs")
        db.execute("UPDATE gateways SET synced_key = seal_key")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    i.close()
    db = Database(Target.parse(str(path)))
    with db.tx() as c:
        assert records.stores_to_sync(c, T0) == []
        [s] = records.syncs(c)
    assert (s.state, s.commands) == ("synced", ())
    db.close()


def test_settle() -> None:
    s = sync.GatewaySync("s1", "g1", "k", ("c1", "c2"), "pending", None, 1, T0, None)
    ok = {"type": sync.CUSTOMERS_APPLIED, "applied": True, "data": {}, "at": T0 + 2}
    assert sync.settle(s, {"c1": [ok]}) == s  # c2 not answered
    done = sync.settle(s, {"c1": [ok], "c2": [{**ok, "at": T0 + 3}]})
    assert (done.state, done.answered_at) == ("synced", T0 + 3)
    no = {"type": sync.CUSTOMERS_APPLIED, "applied": False,
          "data": {"error": "registry full"}, "at": T0 + 4}
    failed = sync.settle(s, {"c1": [ok], "c2": [no]})
    assert (failed.state, failed.reason) == ("failed", "registry full")
    assert sync.settle(failed, {"c2": [ok]}) == failed  # settled: a new send starts over
    assert sync.store_state([done, failed]) == "failed"
    assert sync.store_state([done, s]) == "pending" and sync.store_state([]) == "none"
    assert not sync.due(None, True, None, T0)
    assert sync.due("k", False, None, T0) and sync.due("k2", False, done, T0)
