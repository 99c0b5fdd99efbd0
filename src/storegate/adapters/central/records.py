"""The statements central's storage runs, by what they record; each takes the open
transaction (``Database.tx()``), so a caller groups them into one commit."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from storegate.adapters.central.storage import Conn, dumps
from storegate.adapters.central.tombstones import Tombstones
from storegate.core.central import sync
from storegate.core.central.envelope import Event, Rejection, Status
from storegate.core.central.gaps import GapState, Range
from storegate.core.events import GATEWAY_COMMAND_REJECTED
from storegate.core.trust import b64d

# --- ingest ---------------------------------------------------------------------------


EventKey = tuple[str, str, str]  # (store, gateway, id): CloudEvents identity (source + id)


def key_of(e: Event) -> EventKey:
    return (e.store, e.gateway, e.id)


def insert_event(db: Conn, e: Event, received_at: float) -> bool:
    """True: stored now; False: this gateway's id was stored before (a duplicate)."""
    cur = db.execute(
        "INSERT INTO events (id, store, gateway, sequence, type, time, subject, customer, "
        "received_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (store, gateway, id) DO NOTHING",
        (e.id, e.store, e.gateway, e.sequence, e.type, e.time, e.subject, e.customer,
         received_at, dumps(e.data)))
    return bool(cur.rowcount == 1)


EVENT_COLUMNS = ("id, store, gateway, sequence, type, time, subject, customer, "
                 "received_at, data")
ROWS_PER_STATEMENT = 250  # 10 values a row: well inside SQLite's 32,766 variables


def insert_events(db: Conn, events: Sequence[Event], received_at: float) -> set[EventKey]:
    """Many events, one statement per ``ROWS_PER_STATEMENT`` (one round trip to the
    server, not one a row): the keys stored now; the others were there before."""
    stored: set[EventKey] = set()
    for k in range(0, len(events), ROWS_PER_STATEMENT):
        chunk = events[k:k + ROWS_PER_STATEMENT]
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
        params: list[Any] = []
        for e in chunk:
            params += [e.id, e.store, e.gateway, e.sequence, e.type, e.time, e.subject,
                       e.customer, received_at, dumps(e.data)]
        stored.update((r[0], r[1], r[2]) for r in db.execute(
            f"INSERT INTO events ({EVENT_COLUMNS}) VALUES {values} "  # noqa: S608 - placeholders only
            "ON CONFLICT (store, gateway, id) DO NOTHING RETURNING store, gateway, id",
            params).fetchall())
    return stored


def insert_reject(db: Conn, topic: str, r: Rejection, payload: bytes,
                  received_at: float) -> None:
    db.execute(
        "INSERT INTO rejects (received_at, topic, reason, detail, store, gateway, event_id, "
        "payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (received_at, topic[:300], r.reason, r.detail, r.store, r.gateway, r.event_id,
         payload[:4096]))


def upsert_status(db: Conn, s: Status, received_at: float) -> None:
    db.execute(
        "INSERT INTO gateways (store, gateway, state, session, seal_key, status_at) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (store, gateway) DO UPDATE SET "
        "state = excluded.state, session = excluded.session, "
        "seal_key = COALESCE(excluded.seal_key, gateways.seal_key), "
        "status_at = excluded.status_at",
        (s.store, s.gateway, s.state, s.session, s.seal_key, received_at))


def announce(db: Conn, store: str, gateway: str, last_sequence: int) -> None:
    """What the gateway said it had accepted (its status certificates' and telemetry's
    ``last_sequence``): sequences up to it exist, stored here or not (the tail)."""
    if last_sequence < 1:
        return
    db.execute("INSERT INTO heads (store, gateway, announced) VALUES (?, ?, ?) "
               "ON CONFLICT (store, gateway) DO UPDATE SET announced = excluded.announced "
               "WHERE heads.announced < excluded.announced",
               (store, gateway, last_sequence))


def announced(db: Conn, store: str, gateway: str) -> int:
    row = db.execute("SELECT announced FROM heads WHERE store = ? AND gateway = ?",
                     (store, gateway)).fetchone()
    return 0 if row is None else int(row[0])


def ensure_gateway(db: Conn, store: str, gateway: str) -> None:
    db.execute("INSERT INTO gateways (store, gateway) VALUES (?, ?) "
               "ON CONFLICT (store, gateway) DO NOTHING", (store, gateway))


def command_payload(wire: bytes) -> dict[str, Any]:
    """The payload central signed into a command's wire bytes (its own, trusted)."""
    signed = json.loads(wire)["signed"]
    out = json.loads(b64d(signed))["payload"]
    return out if isinstance(out, dict) else {}


def record_answer(db: Conn, e: Event, received_at: float) -> bool:
    """A gateway's answer to a command (its ``command_id``), and for a replay the
    ranges it no longer holds (lost: the watermark passes over them). Only an answer
    to a command central sent to this gateway's store counts (False otherwise: a
    gateway cannot confirm another store's erasure), and lost ranges only from the
    gateway the replay asked, inside the range it asked for."""
    command_id = e.data.get("command_id")
    if not isinstance(command_id, str):
        return False
    cmd = db.execute("SELECT store, name, wire FROM commands WHERE id = ?",
                     (command_id,)).fetchone()
    if cmd is None or cmd[0] not in (e.store, "*"):
        return False
    asked = command_payload(bytes(cmd[2])) if cmd[1] == "replay" else {}
    if cmd[1] == "replay" and asked.get("gateway") != e.gateway:
        return False
    # a rejection carries no ``applied``: it is never applied
    applied = (e.type != GATEWAY_COMMAND_REJECTED.name
               and e.data.get("applied", True) is True)
    db.execute(
        "INSERT INTO answers (command_id, store, gateway, type, applied, event_id, data, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (command_id, gateway, type) "
        "DO UPDATE SET applied = excluded.applied, event_id = excluded.event_id, "
        "data = excluded.data, at = excluded.at",
        (command_id, e.store, e.gateway, e.type, int(applied), e.id, dumps(e.data),
         received_at))
    if cmd[1] != "replay":
        return True
    lo, hi = int(asked["from_sequence"]), int(asked["to_sequence"])
    for pair in e.data.get("unavailable") or ():
        first, last = max(int(pair[0]), lo), min(int(pair[1]), hi)
        if first > last:
            continue  # outside what was asked: not this answer's to declare
        db.execute(
            "INSERT INTO lost (store, gateway, first, last, at, command_id) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (store, gateway, first, last) DO NOTHING",
            (e.store, e.gateway, first, last, received_at, command_id))
    return True


# --- erasure tombstones ---------------------------------------------------------------


def bury(db: Conn, t: Tombstones, pseudonym: str, erasure_id: str, at: float) -> None:
    """Keep the keyed tombstone of an erased customer or card: it recognises the
    pseudonym again (a late or replayed event) without listing it, and without letting
    whoever reads the table test a candidate (adapters/central/tombstones.py)."""
    db.execute("INSERT INTO erased (digest, erasure_id, at, keyed) VALUES (?, ?, ?, 1) "
               "ON CONFLICT (digest) DO NOTHING", (t.digest(pseudonym), erasure_id, at))


def erased_among(db: Conn, t: Tombstones, pseudonyms: Iterable[str]) -> set[str]:
    """Which of ``pseudonyms`` were erased (their tombstone is kept): keyed, or one of
    schema 2's unkeyed digests (kept as they were: they cannot be re-keyed)."""
    by_digest = {d: x for x in pseudonyms for d in t.forms(x)}
    keys = list(by_digest)
    out: set[str] = set()
    for k in range(0, len(keys), 500):
        part = keys[k:k + 500]
        marks = ", ".join("?" * len(part))
        out.update(by_digest[r[0]] for r in db.execute(
            f"SELECT digest FROM erased WHERE digest IN ({marks})", part).fetchall())  # noqa: S608 - placeholders only
    return out


# --- sequences and gaps ---------------------------------------------------------------


def gateways(db: Conn) -> list[tuple[str, str, int]]:
    return [(r[0], r[1], int(r[2])) for r in db.execute(
        "SELECT store, gateway, watermark FROM gateways ORDER BY store, gateway").fetchall()]


def gateways_with_events(db: Conn) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in db.execute(
        "SELECT DISTINCT store, gateway FROM events").fetchall()]


def sequences_above(db: Conn, store: str, gateway: str, watermark: int,
                    limit: int) -> list[int]:
    return [int(r[0]) for r in db.execute(
        "SELECT sequence FROM events WHERE store = ? AND gateway = ? AND sequence > ? "
        "ORDER BY sequence LIMIT ?", (store, gateway, watermark, limit)).fetchall()]


def lost_ranges(db: Conn, store: str, gateway: str) -> list[Range]:
    """What the gateway answered lost; a row that is no range (written before answers
    were checked) is left out, never an error that stops the scan."""
    return [Range(int(r[0]), int(r[1])) for r in db.execute(
        "SELECT first, last FROM lost WHERE store = ? AND gateway = ? AND first >= 1 "
        "AND first <= last ORDER BY first", (store, gateway)).fetchall()]


def set_watermark(db: Conn, store: str, gateway: str, watermark: int) -> None:
    db.execute("UPDATE gateways SET watermark = ? WHERE store = ? AND gateway = ? "
               "AND watermark < ?", (watermark, store, gateway, watermark))


def open_gaps(db: Conn, store: str | None = None,
              gateway: str | None = None) -> list[GapState]:
    sql = ("SELECT store, gateway, first, last, found_at, requested_at, attempts "
           "FROM gaps WHERE state = 'open'")
    params: list[Any] = []
    if store is not None:
        sql += " AND store = ? AND gateway = ?"
        params += [store, gateway]
    return [GapState(r[0], r[1], Range(int(r[2]), int(r[3])), float(r[4]),
                     None if r[5] is None else float(r[5]), int(r[6]))
            for r in db.execute(sql + " ORDER BY store, gateway, first", params).fetchall()]


def open_gap(db: Conn, g: GapState) -> None:
    db.execute(
        "INSERT INTO gaps (store, gateway, first, last, found_at, requested_at, attempts, "
        "state) VALUES (?, ?, ?, ?, ?, ?, ?, 'open') ON CONFLICT DO NOTHING",
        (g.store, g.gateway, g.range.first, g.range.last, g.found_at, g.requested_at,
         g.attempts))


def close_gap(db: Conn, g: GapState, state: str, at: float) -> None:
    db.execute(
        "UPDATE gaps SET state = ?, closed_at = ? WHERE store = ? AND gateway = ? AND "
        "first = ? AND last = ? AND found_at = ? AND state = 'open'",
        (state, at, g.store, g.gateway, g.range.first, g.range.last, g.found_at))


def claim_gap(db: Conn, g: GapState, at: float) -> bool:
    """Mark the gap requested now, only if it is still as ``g`` read it (another
    instance did not claim it meanwhile): True when this caller may send."""
    cur = db.execute(
        "UPDATE gaps SET requested_at = ?, attempts = attempts + 1 WHERE store = ? AND "
        "gateway = ? AND first = ? AND last = ? AND found_at = ? AND state = 'open' AND "
        "attempts = ? AND requested_at IS NOT DISTINCT FROM ?",
        (at, g.store, g.gateway, g.range.first, g.range.last, g.found_at, g.attempts,
         g.requested_at))
    return bool(cur.rowcount == 1)


def gap_command(db: Conn, g: GapState, command_id: str) -> None:
    db.execute(
        "UPDATE gaps SET command_id = ? WHERE store = ? AND gateway = ? AND first = ? "
        "AND last = ? AND found_at = ?",
        (command_id, g.store, g.gateway, g.range.first, g.range.last, g.found_at))


def give_up_gap(db: Conn, g: GapState, at: float) -> None:
    db.execute(
        "INSERT INTO lost (store, gateway, first, last, at, command_id) "
        "VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (store, gateway, first, last) DO NOTHING",
        (g.store, g.gateway, g.range.first, g.range.last, at))
    close_gap(db, g, "abandoned", at)


# --- commands -------------------------------------------------------------------------


def insert_command(db: Conn, *, command_id: str, store: str, name: str,
                   request_id: str | None, purpose: str | None, issued_at: float,
                   wire: bytes) -> None:
    db.execute(
        "INSERT INTO commands (id, store, name, request_id, purpose, issued_at, wire) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (command_id, store, name, request_id, purpose, issued_at, wire))


def command_sent(db: Conn, command_id: str, at: float) -> None:
    db.execute("UPDATE commands SET sent_at = ? WHERE id = ?", (at, command_id))


def answers_to(db: Conn, command_id: str) -> list[dict[str, Any]]:
    return [{"gateway": r[0], "type": r[1], "applied": bool(r[2]), "data": json.loads(r[3]),
             "at": r[4]} for r in db.execute(
        "SELECT gateway, type, applied, data, at FROM answers WHERE command_id = ? "
        "ORDER BY gateway", (command_id,)).fetchall()]


def seal_keys(db: Conn, store: str) -> dict[str, str]:
    """The store's gateways that announced a seal key (birth certificate), id -> key."""
    return {r[0]: r[1] for r in db.execute(
        "SELECT gateway, seal_key FROM gateways WHERE store = ? AND seal_key IS NOT NULL",
        (store,)).fetchall()}


def syncs(db: Conn, store: str | None = None) -> list[sync.GatewaySync]:
    """The last registry sync to each gateway (of ``store``)."""
    sql = ("SELECT store, gateway, seal_key, commands, state, reason, attempts, sent_at, "
           "answered_at FROM syncs")
    params: tuple[Any, ...] = ()
    if store is not None:
        sql += " WHERE store = ?"
        params = (store,)
    return [sync.GatewaySync(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5],
                             int(r[6]), float(r[7]),
                             None if r[8] is None else float(r[8]))
            for r in db.execute(sql + " ORDER BY store, gateway", params).fetchall()]


def record_sync(db: Conn, store: str, keys: dict[str, str], commands: Sequence[str],
                at: float) -> None:
    """The registry sent to the store's gateways (``keys``: gateway -> the key it was
    sealed to): pending until each answers; a send to the same key counts an attempt."""
    for gateway, key in keys.items():
        db.execute(
            "INSERT INTO syncs (store, gateway, seal_key, commands, state, reason, "
            "attempts, sent_at, answered_at) VALUES (?, ?, ?, ?, 'pending', NULL, 1, ?, "
            "NULL) ON CONFLICT (store, gateway) DO UPDATE SET seal_key = "
            "excluded.seal_key, commands = excluded.commands, state = 'pending', "
            "reason = NULL, answered_at = NULL, sent_at = excluded.sent_at, attempts = "
            "CASE WHEN syncs.seal_key = excluded.seal_key THEN syncs.attempts + 1 "
            "ELSE 1 END", (store, gateway, key, dumps(list(commands)), at))


def settle_syncs(db: Conn, store: str | None = None) -> list[sync.GatewaySync]:
    """Each pending sync's state from its gateway's answers (synced on the gateway's
    ``customers_applied``, failed on a refusal), saved; returns them all."""
    out = []
    for s in syncs(db, store):
        new = s
        if s.state == "pending":
            answers = {cid: [a for a in answers_to(db, cid) if a["gateway"] == s.gateway]
                       for cid in s.commands}
            new = sync.settle(s, answers)
            if new != s:
                db.execute("UPDATE syncs SET state = ?, reason = ?, answered_at = ? WHERE "
                           "store = ? AND gateway = ? AND state = 'pending' AND "
                           "commands = ?", (new.state, new.reason, new.answered_at,
                                            s.store, s.gateway, dumps(list(s.commands))))
        out.append(new)
    return out


def stores_to_sync(db: Conn, now: float, *, first_s: float = sync.RETRY_FIRST_S,
                   max_s: float = sync.RETRY_MAX_S) -> list[str]:
    """Stores with a gateway due the registry (core/central/sync.due): one central
    has not sent it for its seal key (a new gateway, or a new key after the box was
    replaced), or whose sync failed or went unanswered past its backoff."""
    last = {(s.store, s.gateway): s for s in settle_syncs(db)}
    out = set()
    for store, gateway, key, state in db.execute(
            "SELECT store, gateway, seal_key, state FROM gateways WHERE seal_key IS NOT "
            "NULL").fetchall():
        if sync.due(key, state == "online", last.get((store, gateway)), now,
                    first_s=first_s, max_s=max_s):
            out.add(store)
    return sorted(out)


def claim_sync(db: Conn, store: str, now: float, lease_s: float) -> bool:
    """A lease on syncing ``store`` (in ``meta``): True for the one instance that takes
    it; another may take it only after ``lease_s`` (the holder died mid-sync)."""
    until = f"{now + lease_s:020.3f}"
    row = db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
        "value = excluded.value WHERE meta.value < ? RETURNING key",
        (f"sync:{store}", until, f"{now:020.3f}")).fetchone()
    return row is not None


def release_sync(db: Conn, store: str) -> None:
    db.execute("DELETE FROM meta WHERE key = ?", (f"sync:{store}",))


def stores(db: Conn) -> list[str]:
    return [r[0] for r in db.execute(
        "SELECT DISTINCT store FROM gateways ORDER BY store").fetchall()]


def rows(db: Conn, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in db.execute(sql, params).fetchall()]
