"""Erasure tombstones are keyed (HMAC-SHA256 under central's secret), on SQLite and on a
real PostgreSQL: the table no longer lets whoever reads it test a candidate
pseudonym; the key is made once, private, and the same for every instance of one
database; a schema-2 database's unkeyed tombstones still redact late events."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from storegate.adapters.central.storage import Database, StorageConfigError, Target
from storegate.adapters.central.tombstones import Tombstones
from storegate.app.central.ingest import Ingest
from storegate.app.central.service import CentralService
from storegate.app.cli import main
from storegate.core import events as ev
from tests.test_central_review import _person, raw
from tests.test_central_storage import (  # noqa: F401 - fixtures
    T0,
    postgres_cluster,
    postgres_url,
    url,
)

pytestmark = pytest.mark.e2e

CARD = "ps1:" + "cd" * 16


def _late(customer: str, seq: int, card: str | None = None) -> list[tuple[str, bytes]]:
    """A late visit naming the customer, and a loyalty scan of their card."""
    out = [raw("s1", "g1", f"{seq:020d}", eid=f"late-{customer}-{seq}",
               type_=ev.VISIT_ENTERED, subject=f"visit/{customer}",
               data={"visit_id": f"v{seq}", "customer": customer, "zone": None,
                     "entered_at": "2026-11-20T10:00:00Z"})]
    if card is not None:
        out.append(raw("s1", "g1", f"{seq + 1:020d}", eid=f"scan-{customer}-{seq}",
                       type_=ev.POS_SCANNED, data={
                           "lane": "lane-1", "kind": "loyalty", "value": card,
                           "scanned_at": "2026-11-20T10:00:00Z", "transaction_id": "t"}))
    return out


def _plain_digests(pseudonym: str) -> set[str]:
    """What a reader holding a candidate could compute without central's key."""
    return {hashlib.sha256(pseudonym.encode()).hexdigest(),
            hashlib.sha256(b"storegate-erased:" + pseudonym.encode()).hexdigest()}


def test_a_tombstone_is_keyed_and_still_redacts_late_events(url: str) -> None:  # noqa: F811
    ingest = Ingest(url)
    try:
        svc = CentralService(ingest.db, None, clock=lambda: T0)
        svc.put_customer("cust-1", _person("cust-1", card="cd"))
        assert ingest.db.read("SELECT loyalty_id FROM loyalty") == [(CARD,)]
        e = svc.erase(["cust-1"])
        kept = ingest.db.read("SELECT digest, keyed FROM erased ORDER BY digest")
        assert len(kept) == 2 and {k for _, k in kept} == {1}
        digests = {d for d, _ in kept}
        assert not digests & (_plain_digests("cust-1") | _plain_digests(CARD))
        t = ingest.db.tombstones
        assert digests == {t.digest("cust-1"), t.digest(CARD)}
        assert "cust-1" not in repr(t) and t.check() not in digests
        outs = ingest.handle_many(_late("cust-1", 5, CARD), T0)
        assert [o.result for o in outs] == ["stored", "stored"]
        left = json.dumps(ingest.db.read("SELECT customer, subject, data FROM events"))
        assert "cust-1" not in left and CARD not in left
        # a finished erasure keeps keyed digests in place of its ids as well
        with ingest.db.tx() as db:
            db.execute("UPDATE erasures SET done_at = ?, customers = ? WHERE id = ?",
                       (T0, json.dumps([t.digest("cust-1")]), e.id))
        assert not set(json.loads(ingest.db.read("SELECT customers FROM erasures")[0][0])
                       ) & _plain_digests("cust-1")
    finally:
        ingest.close()
    # another instance of the same database recognises the same tombstones
    again = Ingest(url)
    try:
        [o] = again.handle_many(_late("cust-1", 9), T0)
        assert o.stored
        assert again.db.read("SELECT customer FROM events WHERE id = ?", (o.event_id,)
                             ) == [(None,)]
    finally:
        again.close()


def test_the_key_is_a_private_file_made_once_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "central.db"
    first = Database(Target.parse(str(path)))
    key_file = tmp_path / "central.db.tombstone-key"
    text = key_file.read_text()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(bytes.fromhex(text.strip())) == 32
    digest = first.tombstones.digest("cust-1")
    first.close()
    second = Database(Target.parse(str(path)))  # read, never made again
    assert key_file.read_text() == text and second.tombstones.digest("cust-1") == digest
    second.close()
    # another key for this database, or none where one was used, does not start
    other = tmp_path / "other.key"
    other.write_text("ab" * 32 + "\n")
    other.chmod(0o600)
    with pytest.raises(StorageConfigError, match="another key"):
        Database(Target.parse(str(path)), tombstone_key=other)
    key_file.rename(tmp_path / "moved")
    with pytest.raises(StorageConfigError, match="does not exist: restore it"):
        Database(Target.parse(str(path)))
    assert not key_file.exists()  # never made anew behind the operator's back
    (tmp_path / "moved").rename(key_file)
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    with pytest.raises(StorageConfigError, match="not a tombstone key"):
        Database(Target.parse(str(tmp_path / "fresh.db")), tombstone_key=bad)


def test_instances_of_one_postgresql_database_share_one_key_file(
        tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    key = tmp_path / "tombstone.key"
    a = Database(Target.parse(postgres_url), tombstone_key=key)
    b = Database(Target.parse(postgres_url), tombstone_key=key)
    assert a.tombstones.digest("x") == b.tombstones.digest("x")
    assert key.stat().st_mode & 0o777 == 0o600
    assert a.read("SELECT COUNT(*) FROM meta WHERE key = 'tombstone_key'") == [(0,)]
    with pytest.raises(StorageConfigError, match="does not exist: restore it"):
        Database(Target.parse(postgres_url), tombstone_key=tmp_path / "elsewhere.key")
    assert not (tmp_path / "elsewhere.key").exists()  # no new key made for it
    other = tmp_path / "other.key"
    other.write_text("ab" * 32 + "\n")
    with pytest.raises(StorageConfigError, match="another key"):
        Database(Target.parse(postgres_url), tombstone_key=other)
    with pytest.raises(StorageConfigError, match="--tombstone-key"):
        Database(Target.parse(postgres_url))  # no file: not a second key in the database
    a.close()
    b.close()


def _as_schema_2(url: str, key_file: Path | None, done: str) -> None:  # noqa: F811
    """The database as storegate with schema 2 left it: SHA-256 tombstones, no
    ``keyed`` column, no key; erasure ``done`` finished (its ids replaced by
    digests)."""
    db = Database(Target.parse(url))
    with db.tx() as c:
        c.execute("DELETE FROM erased")
        for eid, customers, loyalty in c.execute(
                "SELECT id, customers, loyalty_ids FROM erasures").fetchall():
            for x in [*json.loads(customers), *json.loads(loyalty)]:
                c.execute("INSERT INTO erased (digest, erasure_id, at) VALUES (?, ?, ?)",
                          (Tombstones.legacy_digest(x), eid, T0))
            if eid == done:
                c.execute("UPDATE erasures SET done_at = ?, customers = ?, loyalty_ids = "
                          "'[]' WHERE id = ?", (T0, json.dumps(
                              [Tombstones.legacy_digest(x) for x in json.loads(customers)]),
                              eid))
        c.execute("ALTER TABLE erased DROP COLUMN keyed")
        c.execute("DELETE FROM meta WHERE key IN ('tombstone_check', 'tombstone_key')")
        c.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.close()
    if key_file is not None:
        key_file.unlink()


def test_a_schema_2_database_keeps_redacting_with_its_unkeyed_tombstones(
        url: str, tmp_path: Path) -> None:  # noqa: F811
    ingest = Ingest(url)
    svc = CentralService(ingest.db, None, clock=lambda: T0)
    cards = {"cust-old": "ps1:" + "01" * 16, "cust-new": "ps1:" + "02" * 16}
    for c, card in cards.items():
        svc.put_customer(c, _person(c, card=card[4:6]))
    old, pending = svc.erase(["cust-old"]), svc.erase(["cust-new"])
    ingest.close()
    sqlite_key = None if url.startswith("postgres") else Path(f"{url}.tombstone-key")
    _as_schema_2(url, sqlite_key, done=old.id)

    again = Ingest(url)  # migrated; the key made now
    try:
        t = again.db.tombstones
        assert again.db.read("SELECT value FROM meta WHERE key = 'schema_version'") == [
            ("3",)]
        rows = dict(again.db.read("SELECT digest, keyed FROM erased"))
        # the finished erasure's digests cannot be re-keyed: kept, marked unkeyed
        assert rows == {
            Tombstones.legacy_digest("cust-old"): 0,
            Tombstones.legacy_digest(cards["cust-old"]): 0,
            # the one under way still names its ids: re-keyed, the plain ones gone
            t.digest("cust-new"): 1, t.digest(cards["cust-new"]): 1}
        outs = again.handle_many([*_late("cust-old", 20, cards["cust-old"]),
                                  *_late("cust-new", 30, cards["cust-new"])], T0)
        assert [o.result for o in outs] == ["stored"] * 4
        left = json.dumps(again.db.read("SELECT customer, subject, data FROM events"))
        assert not any(x in left for x in [*cards, *cards.values()])
        assert pending.id in {r[0] for r in again.db.read("SELECT id FROM erasures")}
    finally:
        again.close()


def test_storegate_central_with_another_key_exits_2_and_never_shows_a_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "central.db"
    Database(Target.parse(str(path))).close()
    own = (tmp_path / "central.db.tombstone-key").read_text().strip()
    other = tmp_path / "other.key"
    other.write_text("ab" * 32 + "\n")
    other.chmod(0o600)  # (readable by others, it would be named in a warning too)
    code = main(["central", "--storage", str(path), "--tombstone-key", str(other),
                 "--http-port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "another key" in err and len(err.strip().splitlines()) == 1, err
    assert own not in err and "ab" * 32 not in err
