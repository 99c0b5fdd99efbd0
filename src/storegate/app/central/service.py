"""Central's operations: what the retailer's API asks, recorded and sent to the stores.

* Customers: a record per pseudonym with a version (central's counter; the box applies
  only newer versions), consents with their proof (every change kept, newest wins),
  loyalty pseudonyms, the CRM's profile fields and the app's presence identity. A
  change is pushed to every known store as a ``customers`` upsert: the record, the
  identity sealed to that store's gateways, the profile snapshot computed from the
  events (favourite categories, lifetime spend, visits) and the customer's pickup
  orders for that store; what leaves follows consent (identity with presence, the
  profile with marketing or staff_view). ``sync_store`` sends a store the whole
  registry (one replace, or upsert chunks).
* Campaigns: upsert with a new version, sent to every store on the central topic.
* Pickups (click-and-collect): created -> ready -> collected; each change re-sends the
  customer's record to the order's store (the box shows it on the floor screen and
  the customer's app).
* Erasures: central forgets the customer (record, consents, loyalty, pickups; stored
  events redacted with the box's own rule, the commands that carried them emptied, a
  tombstone kept), records a pending ``erase`` for every known store in the same
  transaction, sends them (``tend`` sends what is left) and tracks each store until
  every gateway there answers ``applied: true``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from storegate.adapters.central import records
from storegate.adapters.central.storage import Database, dumps
from storegate.app.central import models as m
from storegate.app.central.commands import Commands
from storegate.core.central import outbound, sync
from storegate.core.central.profile import (
    CategoryMap,
    Profile,
    StoredEvent,
    Uplift,
    epoch,
    profile,
    uplift,
)
from storegate.core.identity_records import IdentityRecord
from storegate.core.personal.campaigns import Campaign
from storegate.core.personal.erasure import redact_event
from storegate.core.personal.registry import MAX_FAVOURITES, PURPOSES

# what a customers command's signed bytes become once a customer it carried is erased
REDACTED_WIRE = b'{"redacted":"erasure"}'
_PSEUDONYM = re.compile(r"ps1:[0-9a-f]{32}")  # a loyalty pseudonym


def _strings(value: Any) -> set[str]:
    """Every string in a JSON value (keys and values)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set(value).union(*(_strings(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_strings(v) for v in value))
    return set()


def redacted(subject: str, data: Any, customers: list[str],
             loyalty: list[str]) -> dict[str, Any]:
    """An event's subject and data without the erased (the box's own rule)."""
    wrapped = json.dumps({"subject": subject, "data": data}).encode()
    out = redact_event(wrapped, customers, loyalty)
    return json.loads(out) if out is not None else {"subject": subject, "data": data}


PROFILE_EVENT_TYPES = (
    "storegate.visit.entered.v1", "storegate.visit.exited.v1",
    "storegate.purchase.completed.v1", "storegate.offer.issued.v1",
    "storegate.offer.redeemed.v1", "storegate.offer.suppressed.v1",
)


class NotFoundError(LookupError):
    pass


class ConflictError(ValueError):
    pass


class InvalidError(ValueError):
    """The request is well-formed but cannot be accepted (HTTP 400)."""


CONSENT_SKEW_S = 300.0  # a consent's ``at`` may be this far ahead of central's clock
SYNC_CHUNK = 1000  # customers per command (~0.7 KB each: well inside a broker's limit)
SYNC_LEASE_S = 60.0  # one instance syncs a new gateway's store; another after this
ERASE_RESEND_S = 3600.0  # an unconfirmed erase is sent again after this


class CentralService:
    def __init__(self, db: Database, commands: Commands | None, *,
                 categories: CategoryMap | None = None,
                 clock: Callable[[], float] = time.time,
                 rand: Callable[[int], bytes] = os.urandom,
                 sync_retry_first_s: float = sync.RETRY_FIRST_S,
                 sync_retry_max_s: float = sync.RETRY_MAX_S) -> None:
        self.db = db
        self.commands = commands
        self.categories = categories or CategoryMap()
        self._clock = clock
        self._rand = rand
        self.sync_retry_first_s = sync_retry_first_s
        self.sync_retry_max_s = sync_retry_max_s

    # --- customers ----------------------------------------------------------------

    def put_customer(self, customer: str, body: m.CustomerIn) -> m.CustomerOut:
        now = self._clock()
        for purpose, c in body.consents.items():
            if c.at > now + CONSENT_SKEW_S:
                raise InvalidError(f"consent {purpose}: at {c.at:.0f} is in the future "
                                   f"(central's clock {now:.0f}); newest recorded wins")
        if len(set(body.loyalty_ids)) != len(body.loyalty_ids):
            raise InvalidError("loyalty_ids lists one id twice")
        try:
            self._write_customer(customer, body, now)
        except Exception as exc:
            # two requests giving one loyalty id at once: the key refuses the second
            if any(c.__name__ == "IntegrityError" for c in type(exc).__mro__):
                raise ConflictError("a loyalty id of this body belongs to another "
                                    "customer (given at the same time)") from exc
            raise
        self.push_customer(customer)
        return self.get_customer(customer)

    def _write_customer(self, customer: str, body: m.CustomerIn, now: float) -> None:
        with self.db.tx() as db:
            row = db.execute("SELECT version, record, created_at FROM customers "
                             "WHERE customer = ?", (customer,)).fetchone()
            record = {"loyalty_ids": body.loyalty_ids, "profile": body.profile.model_dump(),
                      "identity": None if body.identity is None
                      else body.identity.model_dump()}
            if body.identity is not None and body.identity.customer != customer:
                raise ConflictError("identity.customer is not this customer")
            if row is not None and body.identity is None:
                record["identity"] = json.loads(row[1]).get("identity")
            # the version from the row itself (an atomic increment under the row's
            # lock), never from this process: instances sharing the database, and a
            # restarted central, go on from what is stored
            db.execute("INSERT INTO customers (customer, version, record, created_at, "
                       "updated_at) VALUES (?, 1, ?, ?, ?) ON CONFLICT (customer) DO "
                       "UPDATE SET version = customers.version + 1, record = "
                       "excluded.record, updated_at = excluded.updated_at",
                       (customer, dumps(record), now, now))
            for purpose, c in body.consents.items():
                db.execute("INSERT INTO consents (customer, purpose, granted, at, source, "
                           "store, proof, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (customer, purpose, int(c.granted), c.at, c.source, c.store,
                            dumps(c.proof.model_dump()), now))
            db.execute("DELETE FROM loyalty WHERE customer = ?", (customer,))
            for lid in body.loyalty_ids:
                taken = db.execute("SELECT customer FROM loyalty WHERE loyalty_id = ?",
                                   (lid,)).fetchone()
                if taken is not None:
                    raise ConflictError(f"loyalty id {lid} belongs to another customer")
                db.execute("INSERT INTO loyalty (loyalty_id, customer) VALUES (?, ?)",
                           (lid, customer))

    def get_customer(self, customer: str) -> m.CustomerOut:
        with self.db.tx() as db:
            row = db.execute("SELECT version, record, created_at, updated_at FROM customers "
                             "WHERE customer = ?", (customer,)).fetchone()
            if row is None:
                raise NotFoundError(customer)
            consents = self._consents(db, customer)
        rec = json.loads(row[1])
        return m.CustomerOut(customer=customer, version=int(row[0]), consents=consents,
                             loyalty_ids=rec["loyalty_ids"],
                             profile=m.CustomerProfileIn(**rec["profile"]),
                             has_identity=rec.get("identity") is not None,
                             created_at=float(row[2]), updated_at=float(row[3]))

    def consent_history(self, customer: str) -> list[m.ConsentOut]:
        with self.db.tx() as db:
            rows = records.rows(db, "SELECT purpose, granted, at, source, store, proof, "
                                "recorded_at FROM consents WHERE customer = ? ORDER BY n",
                                (customer,))
        if not rows:
            self.get_customer(customer)
        return [self._consent(r) for r in rows]

    @staticmethod
    def _consent(r: tuple[Any, ...]) -> m.ConsentOut:
        return m.ConsentOut(purpose=r[0], granted=bool(r[1]), at=float(r[2]), source=r[3],
                            store=r[4], proof=m.Proof(**json.loads(r[5])),
                            recorded_at=float(r[6]))

    def _consents(self, db: Any, customer: str) -> dict[str, m.ConsentOut]:
        out: dict[str, m.ConsentOut] = {}
        for r in records.rows(db, "SELECT purpose, granted, at, source, store, proof, "
                              "recorded_at FROM consents WHERE customer = ? "
                              "ORDER BY recorded_at, n",
                              (customer,)):
            out[r[0]] = self._consent(r)
        return out

    def list_customers(self, limit: int, offset: int) -> list[str]:
        with self.db.tx() as db:
            return [r[0] for r in records.rows(
                db, "SELECT customer FROM customers ORDER BY customer LIMIT ? OFFSET ?",
                (limit, offset))]

    def by_loyalty(self, loyalty_id: str) -> str:
        with self.db.tx() as db:
            row = db.execute("SELECT customer FROM loyalty WHERE loyalty_id = ?",
                             (loyalty_id,)).fetchone()
        if row is None:
            raise NotFoundError(loyalty_id)
        return str(row[0])

    # --- the profile --------------------------------------------------------------

    def events_of(self, customer: str) -> list[StoredEvent]:
        marks = ", ".join("?" * len(PROFILE_EVENT_TYPES))
        with self.db.tx() as db:
            rows = records.rows(db, f"SELECT type, store, time, data FROM events WHERE "  # noqa: S608 - placeholders only
                                f"customer = ? AND type IN ({marks})",
                                (customer, *PROFILE_EVENT_TYPES))
        return [StoredEvent(r[0], r[1], epoch(r[2]), json.loads(r[3])) for r in rows]

    def profile(self, customer: str) -> Profile:
        return profile(customer, self.events_of(customer), now=self._clock(),
                       categories=self.categories)

    def uplift(self) -> list[Uplift]:
        types = ("storegate.offer.issued.v1", "storegate.offer.suppressed.v1",
                 "storegate.offer.redeemed.v1", "storegate.visit.exited.v1")
        with self.db.tx() as db:
            rows = records.rows(db, "SELECT type, store, time, data FROM events WHERE "
                                "type IN (?, ?, ?, ?)", types)
        return uplift(StoredEvent(r[0], r[1], 0.0, json.loads(r[3])) for r in rows)

    # --- what each store is sent ----------------------------------------------------

    def _record_for(self, db: Any, customer: str, store: str) -> tuple[dict[str, Any],
                                                                       IdentityRecord | None]:
        # the customer's row locked first (a no-op write): what is read below and the
        # version given to it are one consistent pair across instances
        if db.execute("UPDATE customers SET updated_at = updated_at WHERE customer = ?",
                      (customer,)).rowcount == 0:
            raise NotFoundError(customer)
        row = db.execute("SELECT version, record FROM customers WHERE customer = ?",
                         (customer,)).fetchone()
        rec = json.loads(row[1])
        consents = {p: {"granted": c.granted, "at": c.at, "source": c.source}
                    for p, c in self._consents(db, customer).items()}
        prof = {k: v for k, v in rec["profile"].items() if v not in (None, [])}
        computed = profile(customer, self.events_of_locked(db, customer), now=self._clock(),
                           categories=self.categories)
        prof["favourite_categories"] = computed.favourite_categories[:MAX_FAVOURITES]
        prof["lifetime_spend_minor"] = computed.lifetime_spend_minor
        prof["store_visits"] = min(int(prof.get("store_visits") or 0)
                                   + computed.store_visits, 1_000_000)
        if computed.segment != "unknown":
            segs = list(prof.get("segments", []))
            if f"rfm-{computed.segment}" not in segs and len(segs) < 16:
                segs.append(f"rfm-{computed.segment}")
            prof["segments"] = segs
        pickups = [{"order_id": r[0], "state": r[1], "counter": r[2], "items": int(r[3]),
                    "ready_at": r[4]}
                   for r in records.rows(db, "SELECT order_id, state, counter, items, "
                                         "ready_at FROM pickups WHERE customer = ? AND "
                                         "store = ? AND state IN ('preparing', 'ready') "
                                         "ORDER BY created_at LIMIT 6", (customer, store))]
        out: dict[str, Any] = {
            "customer": customer,
            "consents": {p: c for p, c in consents.items() if p in PURPOSES},
            "loyalty_ids": rec["loyalty_ids"], "profile": prof,
            "pickup_orders": [{k: v for k, v in p.items() if v is not None}
                              for p in pickups]}
        granted = {p for p, c in consents.items() if c["granted"]}
        # what leaves central follows consent: the presence identity only with
        # presence; the profile only with marketing or staff_view, and the personal
        # fields staff would see (name, birthday month) only with staff_view
        if not granted & {"marketing", "staff_view"}:
            out["profile"] = {}
        elif "staff_view" not in granted:
            out["profile"] = {k: v for k, v in prof.items()
                              if k not in ("greeting_name", "birthday_month")}
        identity = rec.get("identity") if "presence" in granted else None
        out["version"] = self._version_for(db, customer, store, int(row[0]),
                                           {**out, "identity": identity})
        return out, None if identity is None else IdentityRecord.model_validate(identity)

    @staticmethod
    def _version_for(db: Any, customer: str, store: str, current: int,
                     content: dict[str, Any]) -> int:
        """The version this store gets for ``content``: the box applies a record only
        if its version is newer than what it holds, so any change of what the store is
        sent (consent, CRM profile, computed profile, pickup order, loyalty id,
        identity) must raise it. The store's last content digest is kept with the
        version it went with; a different digest that the customer's version has not
        already passed (a ``put_customer`` since) raises the customer's version by one,
        in the database, under the row lock ``_record_for`` took."""
        digest = hashlib.sha256(dumps(content).encode()).hexdigest()
        sent = db.execute("SELECT digest, version FROM customer_sent WHERE customer = ? "
                          "AND store = ?", (customer, store)).fetchone()
        if sent is not None and sent[0] != digest and current <= int(sent[1]):
            current = int(db.execute(
                "UPDATE customers SET version = version + 1 WHERE customer = ? "
                "RETURNING version", (customer,)).fetchone()[0])
        db.execute("INSERT INTO customer_sent (customer, store, digest, version) VALUES "
                   "(?, ?, ?, ?) ON CONFLICT (customer, store) DO UPDATE SET digest = "
                   "excluded.digest, version = excluded.version",
                   (customer, store, digest, current))
        return current

    @staticmethod
    def events_of_locked(db: Any, customer: str) -> list[StoredEvent]:
        marks = ", ".join("?" * len(PROFILE_EVENT_TYPES))
        rows = records.rows(db, f"SELECT type, store, time, data FROM events WHERE "  # noqa: S608 - placeholders only
                            f"customer = ? AND type IN ({marks})",
                            (customer, *PROFILE_EVENT_TYPES))
        return [StoredEvent(r[0], r[1], epoch(r[2]), json.loads(r[3])) for r in rows]

    def _send_customers(self, store: str, op: str, customers: list[str]) -> str | None:
        return self._send_customers_acked(store, op, customers)[0]

    def _send_customers_acked(self, store: str, op: str,
                              customers: list[str]) -> tuple[str | None, bool]:
        if self.commands is None:
            return None, False
        with self.db.tx() as db:
            keys = records.seal_keys(db, store)
            built = [self._record_for(db, c, store) for c in customers]
        body = outbound.customers_payload(
            op, [r for r, _ in built], {r["customer"]: i for r, i in built if i is not None},
            keys, store=store, request_id=f"customers-{uuid.uuid4().hex[:12]}",
            rand=self._rand)
        cid, acked = self.commands.send_acked(store, "customers", body,
                                              purpose=f"customers:{op}")
        with self.db.tx() as db:  # which commands carry whom: erasure redacts them
            for c in customers:
                db.execute("INSERT INTO command_customers (command_id, customer) "
                           "VALUES (?, ?) ON CONFLICT DO NOTHING", (cid, c))
        return cid, acked

    def push_customer(self, customer: str) -> dict[str, str]:
        """The customer's record to every known store (upsert): store -> command id."""
        with self.db.tx() as db:
            stores = records.stores(db)
        out = {}
        for store in stores:
            cid = self._send_customers(store, "upsert", [customer])
            if cid is not None:
                out[store] = cid
        return out

    def sync_store(self, store: str) -> str | None:
        """The whole registry to one store, sealed to the keys its gateways announced:
        one ``replace`` when it fits in one command (:data:`SYNC_CHUNK` customers),
        otherwise ``upsert`` commands of that many each (a replace cannot be split;
        central forgets a customer only by erasure, which has its own command). Each
        chunk is built in its own transaction (the lock is not held for the whole
        registry). Once the broker acknowledged every command, each gateway's sync is
        pending until that gateway answers them all (``customers_applied``: synced; a
        refusal: failed, sent again after a backoff; core/central/sync.py); not
        acknowledged, nothing is recorded and the next pass tries again. Returns the
        last command id."""
        with self.db.tx() as db:
            if store not in records.stores(db):
                raise NotFoundError(store)
            customers = [r[0] for r in records.rows(
                db, "SELECT customer FROM customers ORDER BY customer")]
            keys = records.seal_keys(db, store)
        chunks = [customers[k:k + SYNC_CHUNK]
                  for k in range(0, len(customers), SYNC_CHUNK)] or [[]]
        op = "replace" if len(chunks) == 1 else "upsert"
        command_id, all_acked, sent = None, True, []
        for chunk in chunks:
            command_id, acked = self._send_customers_acked(store, op, chunk)
            all_acked &= acked
            if command_id is not None:
                sent.append(command_id)
        if command_id is not None and all_acked:
            with self.db.tx() as db:
                records.record_sync(db, store, keys, sent, self._clock())
        return command_id

    def store_sync(self, store: str) -> m.StoreSyncOut:
        """Where the store's registry sync stands, per gateway, from the answers in
        hand (a pending one settled first)."""
        with self.db.tx() as db:
            if store not in records.stores(db):
                raise NotFoundError(store)
            found = records.settle_syncs(db, store)
        return m.StoreSyncOut(store=store, state=sync.store_state(found),
                              gateways=[self._gateway_sync(s) for s in found])

    def _gateway_sync(self, s: sync.GatewaySync) -> m.GatewaySyncOut:
        return m.GatewaySyncOut(
            gateway=s.gateway, state=s.state, reason=s.reason, attempts=s.attempts,
            sent_at=s.sent_at, answered_at=s.answered_at, commands=list(s.commands),
            retry_at=sync.retry_at(s, first_s=self.sync_retry_first_s,
                                   max_s=self.sync_retry_max_s))

    def sync_new_gateways(self) -> dict[str, str]:
        """A store with a gateway central has not synced to (new, or a new seal key:
        identities sealed to the old key cannot open there), or whose sync it refused
        or left unanswered past the backoff, gets the whole registry. Called by the
        scanner's pass: store -> command id."""
        if self.commands is None:
            return {}
        with self.db.tx() as db:
            stores = records.stores_to_sync(db, self._clock(),
                                            first_s=self.sync_retry_first_s,
                                            max_s=self.sync_retry_max_s)
        out = {}
        for store in stores:
            with self.db.tx() as db:
                # of several instances, one syncs a store (a lease: it may die)
                if not records.claim_sync(db, store, self._clock(), SYNC_LEASE_S):
                    continue
            try:
                cid = self.sync_store(store)
            finally:
                with self.db.tx() as db:
                    records.release_sync(db, store)
            if cid is not None:
                out[store] = cid
        return out

    def tend(self, now: float) -> None:
        """The periodic pass's part of the service: commands the broker did not
        acknowledge go again, erasures reach every store (pending ones sent, stale
        unconfirmed ones re-sent), new gateways get the registry."""
        if self.commands is None:
            return
        self.commands.resend_unsent(now)
        self.send_pending_erasures(now)
        self.sync_new_gateways()

    # --- campaigns ----------------------------------------------------------------

    def put_campaign(self, campaign: Campaign) -> m.CampaignOut:
        now = self._clock()
        with self.db.tx() as db:
            row = db.execute("SELECT version FROM campaigns WHERE id = ?",
                             (campaign.id,)).fetchone()
            version = max(campaign.version, 1 if row is None else int(row[0]) + 1)
            c = campaign.model_copy(update={"version": version})
            body = c.model_dump(mode="json", exclude_none=True)
            db.execute("INSERT INTO campaigns (id, version, body, removed, updated_at) "
                       "VALUES (?, ?, ?, 0, ?) ON CONFLICT (id) DO UPDATE SET "
                       "version = excluded.version, body = excluded.body, removed = 0, "
                       "updated_at = excluded.updated_at",
                       (c.id, version, dumps(body), now))
        cid = None
        if self.commands is not None:
            cid = self.commands.send("*", "campaigns", {
                "op": "upsert", "campaigns": [body],
                "request_id": f"campaign-{c.id}-{version}"}, purpose="campaigns")
        return m.CampaignOut(id=c.id, version=version, campaign=body, removed=False,
                             command_id=cid)

    def remove_campaign(self, campaign_id: str) -> m.CampaignOut:
        now = self._clock()
        with self.db.tx() as db:
            row = db.execute("SELECT version, body FROM campaigns WHERE id = ?",
                             (campaign_id,)).fetchone()
            if row is None:
                raise NotFoundError(campaign_id)
            version = int(row[0]) + 1
            db.execute("UPDATE campaigns SET version = ?, removed = 1, updated_at = ? "
                       "WHERE id = ?", (version, now, campaign_id))
        cid = None
        if self.commands is not None:
            cid = self.commands.send("*", "campaigns", {
                "op": "remove", "remove": [{"id": campaign_id, "version": version}],
                "request_id": f"campaign-{campaign_id}-{version}"}, purpose="campaigns")
        return m.CampaignOut(id=campaign_id, version=version, campaign=json.loads(row[1]),
                             removed=True, command_id=cid)

    def campaigns(self) -> list[m.CampaignOut]:
        with self.db.tx() as db:
            rows = records.rows(db, "SELECT id, version, body, removed FROM campaigns "
                                "ORDER BY id")
        return [m.CampaignOut(id=r[0], version=int(r[1]), campaign=json.loads(r[2]),
                              removed=bool(r[3])) for r in rows]

    # --- click and collect ----------------------------------------------------------

    def create_pickup(self, body: m.PickupIn) -> m.PickupOut:
        now = self._clock()
        with self.db.tx() as db:
            if db.execute("SELECT 1 FROM customers WHERE customer = ?",
                          (body.customer,)).fetchone() is None:
                raise NotFoundError(body.customer)
            if db.execute("SELECT 1 FROM pickups WHERE order_id = ?",
                          (body.order_id,)).fetchone() is not None:
                raise ConflictError(f"order {body.order_id} exists")
            db.execute("INSERT INTO pickups (order_id, customer, store, state, counter, "
                       "items, created_at, updated_at) VALUES (?, ?, ?, 'preparing', ?, ?, "
                       "?, ?)", (body.order_id, body.customer, body.store, body.counter,
                                 body.items, now, now))
        return self._pickup_changed(body.order_id)

    def pickup_state(self, order_id: str, state: str) -> m.PickupOut:
        now = self._clock()
        allowed = {"ready": ("preparing",), "collected": ("ready",),
                   "cancelled": ("preparing", "ready")}[state]
        with self.db.tx() as db:
            row = db.execute("SELECT state FROM pickups WHERE order_id = ?",
                             (order_id,)).fetchone()
            if row is None:
                raise NotFoundError(order_id)
            if row[0] not in allowed:
                raise ConflictError(f"order {order_id} is {row[0]}: cannot become {state}")
            column = {"ready": "ready_at", "collected": "collected_at"}.get(state)
            sets = f", {column} = ?" if column else ""
            db.execute(f"UPDATE pickups SET state = ?, updated_at = ?{sets} "  # noqa: S608 - fixed column names
                       "WHERE order_id = ?",
                       (state, now, *((now,) if column else ()), order_id))
        return self._pickup_changed(order_id)

    def _pickup_changed(self, order_id: str) -> m.PickupOut:
        p = self.get_pickup(order_id)
        cid = self._send_customers(p.store, "upsert", [p.customer])
        return p.model_copy(update={"command_id": cid})

    def get_pickup(self, order_id: str) -> m.PickupOut:
        with self.db.tx() as db:
            row = db.execute("SELECT order_id, customer, store, state, counter, items, "
                             "created_at, ready_at, collected_at FROM pickups WHERE "
                             "order_id = ?", (order_id,)).fetchone()
        if row is None:
            raise NotFoundError(order_id)
        return m.PickupOut(order_id=row[0], customer=row[1], store=row[2], state=row[3],
                           counter=row[4], items=int(row[5]), created_at=float(row[6]),
                           ready_at=row[7], collected_at=row[8])

    # --- erasure --------------------------------------------------------------------

    def erase(self, customers: list[str]) -> m.ErasureOut:
        """Forget the customers at central and record a pending erase for every known
        store, in one transaction: the commands go out after it (and again from
        :meth:`tend` for any a crash or a broker left unsent), and the erasure is done
        only when every gateway of every one of those stores confirmed."""
        now = self._clock()
        erasure_id = f"erase-{uuid.uuid4().hex[:16]}"
        with self.db.tx() as db:
            marks = ", ".join("?" * len(customers))
            loyalty = [r[0] for r in records.rows(
                db, f"SELECT loyalty_id FROM loyalty WHERE customer IN ({marks})",  # noqa: S608 - placeholders only
                customers)]
            for table in ("customers", "consents", "loyalty", "pickups", "customer_sent"):
                db.execute(f"DELETE FROM {table} WHERE customer IN ({marks})",  # noqa: S608 - fixed table names
                           customers)
            self._redact_events(db, customers, loyalty)
            self._redact_copies(db, customers, loyalty)
            for pseudonym in [*customers, *loyalty]:
                records.bury(db, self.db.tombstones, pseudonym, erasure_id, now)
            db.execute("INSERT INTO erasures (id, customers, loyalty_ids, requested_at) "
                       "VALUES (?, ?, ?, ?)",
                       (erasure_id, dumps(customers), dumps(loyalty), now))
            for store in records.stores(db):
                db.execute("INSERT INTO erasure_stores (erasure_id, store, command_id) "
                           "VALUES (?, ?, '')", (erasure_id, store))
        self.send_pending_erasures(now, erasure_id)
        return self.erasure(erasure_id)

    def send_pending_erasures(self, now: float, erasure_id: str | None = None) -> int:
        """Send the erase command to each store of an unfinished erasure that has none
        yet (a crash or a failed publish after the erasure's commit), and again where
        the last one is older than :data:`ERASE_RESEND_S` and not confirmed (the box
        refuses a command past its age window). Returns how many were sent."""
        if self.commands is None:
            return 0
        sql = ("SELECT s.erasure_id, s.store, s.command_id, e.customers, e.loyalty_ids, "
               "c.issued_at FROM erasure_stores s JOIN erasures e ON e.id = s.erasure_id "
               "LEFT JOIN commands c ON c.id = s.command_id WHERE e.done_at IS NULL")
        params: list[Any] = []
        if erasure_id is not None:
            sql += " AND s.erasure_id = ?"
            params.append(erasure_id)
        with self.db.tx() as db:
            rows = records.rows(db, sql + " ORDER BY s.erasure_id, s.store", params)
        sent = 0
        for eid, store, cid, customers, loyalty, issued_at in rows:
            if cid and (issued_at is None or now - float(issued_at) < ERASE_RESEND_S
                        or self._store_confirmed(eid, store)):
                continue
            new = self.commands.send(store, "erase", outbound.erase_payload(
                json.loads(customers), json.loads(loyalty), eid), purpose="erasure")
            with self.db.tx() as db:
                db.execute("UPDATE erasure_stores SET command_id = ? WHERE erasure_id = ? "
                           "AND store = ?", (new, eid, store))
            sent += 1
        return sent

    def _store_confirmed(self, erasure_id: str, store: str) -> bool:
        return any(s.store == store and s.done for s in self.erasure(erasure_id).stores)

    def _redact_copies(self, db: Any, customers: list[str], loyalty: list[str]) -> None:
        """What central kept besides events: the customers commands that carried them
        (their record, sealed identity, name) lose their bytes; rejected messages and
        answers that name them lose their payload. One read of each table, matched
        here (not one scan per pseudonym: a bulk erasure names thousands)."""
        marks = ", ".join("?" * len(customers))
        for (cid,) in records.rows(
                db, f"SELECT DISTINCT command_id FROM command_customers WHERE "  # noqa: S608 - placeholders only
                f"customer IN ({marks})", customers):
            db.execute("UPDATE commands SET wire = ? WHERE id = ?", (REDACTED_WIRE, cid))
        db.execute(f"DELETE FROM command_customers WHERE customer IN ({marks})",  # noqa: S608 - placeholders only
                   customers)
        names = {*customers, *loyalty}
        for n, payload in records.rows(db, "SELECT n, payload FROM rejects WHERE "
                                       "payload IS NOT NULL"):
            text = bytes(payload).decode("utf-8", "replace")
            if any(x in text for x in names):
                db.execute("UPDATE rejects SET payload = NULL WHERE n = ?", (n,))
        for cid, gateway, type_, data in records.rows(
                db, "SELECT command_id, gateway, type, data FROM answers"):
            if _strings(json.loads(data)) & names:
                db.execute("UPDATE answers SET data = '{}' WHERE command_id = ? AND "
                           "gateway = ? AND type = ?", (cid, gateway, type_))

    @staticmethod
    def _redact_events(db: Any, customers: list[str], loyalty: list[str]) -> None:
        marks = ", ".join("?" * len(customers))
        found = records.rows(db, f"SELECT store, gateway, id, subject, data FROM events "  # noqa: S608 - placeholders only
                             f"WHERE customer IN ({marks})", customers)
        # their cards appear without them too (a purchase nobody was attributed to, a
        # loyalty scan): cards are 'ps1:' pseudonyms, so one scan for events naming
        # any, matched here against the erased cards (one LIKE per card would be a
        # scan per card, or overflow SQLite's expression depth in one statement)
        cards = set(loyalty)
        if cards:
            found += [r for r in records.rows(
                db, "SELECT store, gateway, id, subject, data FROM events WHERE "
                "data LIKE '%ps1:%' OR subject LIKE '%ps1:%'")
                if set(_PSEUDONYM.findall(f"{r[3]} {r[4]}")) & cards]
        done: set[tuple[str, str, str]] = set()
        for store, gateway, event_id, subject, data in found:
            if (store, gateway, event_id) in done:
                continue
            done.add((store, gateway, event_id))
            new = redacted(subject, json.loads(data), customers, loyalty)
            db.execute("UPDATE events SET customer = NULL, subject = ?, data = ? "
                       "WHERE store = ? AND gateway = ? AND id = ?",
                       (new["subject"], dumps(new["data"]), store, gateway, event_id))

    def erasure(self, erasure_id: str) -> m.ErasureOut:
        now = self._clock()
        with self.db.tx() as db:
            row = db.execute("SELECT customers, requested_at, done_at FROM erasures "
                             "WHERE id = ?", (erasure_id,)).fetchone()
            if row is None:
                raise NotFoundError(erasure_id)
            asked = {r[0]: r[1] for r in records.rows(
                db, "SELECT store, command_id FROM erasure_stores WHERE erasure_id = ?",
                (erasure_id,))}
            gws: dict[str, list[str]] = defaultdict(list)
            for store, gateway, _ in records.gateways(db):
                gws[store].append(gateway)
            answers: dict[str, dict[str, bool]] = {}
            for cid in asked.values():
                answers[cid] = {a["gateway"]: a["applied"]
                                for a in records.answers_to(db, cid)
                                if a["type"] == "storegate.gateway.erased.v1"}
            state = outbound.erasure_state(asked, gws, answers)
            done = bool(state) and all(s.done for s in state)
            done_at = row[2]
            if done and done_at is None:
                done_at = now
                # done: the ids are needed no more (nothing to re-send); the tombstones
                # ('erased', keyed digests) recognise them from now on
                db.execute("UPDATE erasures SET done_at = ?, customers = ?, "
                           "loyalty_ids = '[]' WHERE id = ?",
                           (now, dumps([self.db.tombstones.digest(c)
                                        for c in json.loads(row[0])]), erasure_id))
        return m.ErasureOut(
            id=erasure_id, customers=json.loads(row[0]), requested_at=float(row[1]),
            done=done, done_at=done_at,
            stores=[m.StoreConfirmationOut(**{**asdict(s), "gateways": list(s.gateways),
                                              "confirmed": list(s.confirmed),
                                              "failed": list(s.failed)}, done=s.done)
                    for s in state])

    def resend_erasure(self, erasure_id: str) -> m.ErasureOut:
        """Send the erase command again to every store not yet confirmed."""
        e = self.erasure(erasure_id)
        with self.db.tx() as db:
            loyalty = json.loads(db.execute("SELECT loyalty_ids FROM erasures WHERE id = ?",
                                            (erasure_id,)).fetchone()[0])
        for s in e.stores:
            if s.done or self.commands is None:
                continue
            cid = self.commands.send(s.store, "erase", outbound.erase_payload(
                e.customers, loyalty, erasure_id), purpose="erasure")
            with self.db.tx() as db:
                db.execute("UPDATE erasure_stores SET command_id = ? WHERE erasure_id = ? "
                           "AND store = ?", (cid, erasure_id, s.store))
        return self.erasure(erasure_id)

    # --- operations -----------------------------------------------------------------

    def gateways(self) -> list[m.GatewayOut]:
        out = []
        with self.db.tx() as db:
            syncs = {(s.store, s.gateway): s for s in records.settle_syncs(db)}
            for store, gateway, watermark in records.gateways(db):
                row = db.execute("SELECT state, session FROM gateways WHERE store = ? AND "
                                 "gateway = ?", (store, gateway)).fetchone()
                agg = db.execute("SELECT MAX(sequence), COUNT(*) FROM events WHERE "
                                 "store = ? AND gateway = ?", (store, gateway)).fetchone()
                gaps = [[x.range.first, x.range.last]
                        for x in records.open_gaps(db, store, gateway)]
                lost = [[r.first, r.last] for r in records.lost_ranges(db, store, gateway)]
                last = syncs.get((store, gateway))
                out.append(m.GatewayOut(store=store, gateway=gateway, state=row[0],
                                        session=row[1], watermark=watermark,
                                        highest=agg[0], events=int(agg[1]),
                                        open_gaps=gaps, lost=lost,
                                        sync=None if last is None
                                        else self._gateway_sync(last)))
        return out

    def command(self, command_id: str) -> m.CommandOut:
        with self.db.tx() as db:
            row = db.execute("SELECT id, store, name, purpose, issued_at, sent_at FROM "
                             "commands WHERE id = ?", (command_id,)).fetchone()
            if row is None:
                raise NotFoundError(command_id)
            answers = records.answers_to(db, command_id)
        return m.CommandOut(id=row[0], store=row[1], name=row[2], purpose=row[3],
                            issued_at=float(row[4]), sent_at=row[5], answers=answers)
