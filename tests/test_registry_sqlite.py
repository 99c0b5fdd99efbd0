"""The customer registry on disk: a real SQLite file, read back and scanned byte by byte."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from storegate.adapters.registry_sqlite import RegistrySqlite
from storegate.core.personal.registry import MAX_VERSION, Registry
from tests.support.central import customer_record
from tests.test_registry import T0, change, ident

LOYAL = "ps1:" + "5e" * 16


def files_bytes(path: Path) -> bytes:
    """The database and whatever SQLite keeps beside it (WAL, shared memory)."""
    return b"".join(p.read_bytes() for p in path.parent.iterdir()
                    if p.name.startswith(path.name))


def test_round_trip_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.customers.db"
    store = RegistrySqlite(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = store.tomb_key()
    assert len(key) == 32 and store.tomb_key() == key  # made once, kept
    reg = Registry(tomb_key=key, keep_s=600)
    store.write(reg.apply(change("upsert", [
        customer_record("cust-1", 3, identity=ident(1), loyalty_ids=[LOYAL],
                        sizes={"shoe": "42"}, birthday_month=4),
        customer_record("cust-2", 1, marketing=False)]), T0))
    store.write(reg.apply(change("remove", remove=[("cust-2", 2)]), T0))
    store.close()

    again = RegistrySqlite(path)
    loaded = again.load()
    assert loaded.skipped == 0
    assert [r.customer for r in loaded.records] == ["cust-1"]
    assert loaded.records[0] == reg.get("cust-1")  # identity not stored: None in both
    assert loaded.records[0].profile.sizes == {"shoe": "42"}
    back = Registry(tomb_key=again.tomb_key(), keep_s=600, records=loaded.records,
                    tombstones=loaded.tombstones)
    assert back.customer_of_loyalty(LOYAL) == "cust-1" and back.allows("cust-1", "presence")
    # the tombstone survived the restart: an older upsert of cust-2 is still refused
    assert back.apply(change("upsert", [customer_record("cust-2", 2)]), T0 + 1).stale == 1
    assert len(again) == 1
    again.close()


def test_no_identity_key_is_ever_stored(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = RegistrySqlite(path)
    reg = Registry(tomb_key=store.tomb_key(), keep_s=600)
    store.write(reg.apply(change("upsert", [customer_record("cust-7", 1,
                                                            identity=ident(7))]), T0))
    raw = files_bytes(path)
    assert b"cust-7" in raw  # the record is there...
    assert ident(7).identity_key not in raw and ident(7).identity_key.hex().encode() not in raw
    assert b"sealed_key" not in raw  # ...without its identity in any form
    store.close()


def test_a_removed_customer_leaves_no_trace_in_the_files(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = RegistrySqlite(path)
    reg = Registry(tomb_key=store.tomb_key(), keep_s=600)
    store.write(reg.apply(change("upsert", [
        customer_record("cust-gone-42", 1, loyalty_ids=[LOYAL], greeting_name="Zebedee"),
        customer_record("cust-stays", 1)]), T0))
    assert b"cust-gone-42" in files_bytes(path) and LOYAL.encode() in files_bytes(path)
    store.write(reg.apply(change("remove", remove=[("cust-gone-42", 2)]), T0 + 1))
    raw = files_bytes(path)
    for trace in (b"cust-gone-42", LOYAL.encode(), b"Zebedee"):
        assert trace not in raw, trace
    assert b"cust-stays" in raw  # the scan can see what is there
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # truncated after the change
    # the tombstone is there (a keyed hash), and it still refuses the older upsert
    assert store.load().tombstones[0].version == 2
    store.close()


def test_expired_tombstones_are_deleted_with_the_next_change(tmp_path: Path) -> None:
    store = RegistrySqlite(tmp_path / "c.db")
    reg = Registry(tomb_key=store.tomb_key(), keep_s=60)
    store.write(reg.apply(change("remove", remove=[("cust-1", 1)]), T0))
    assert len(store.load().tombstones) == 1
    store.write(reg.apply(change("upsert", [customer_record("cust-2", 1)]), T0 + 61))
    assert store.load().tombstones == [] and reg.tombstones == 0
    store.close()


def test_rows_that_no_longer_validate_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = RegistrySqlite(path)
    reg = Registry(tomb_key=store.tomb_key(), keep_s=60)
    store.write(reg.apply(change("upsert", [customer_record("cust-1", 1)]), T0))
    store.close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO customers VALUES ('cust-2', 1, '{\"customer\": \"cust-2\"}')")
    db.execute("INSERT INTO customers VALUES ('cust-3', 1, 'not json')")
    db.commit()
    db.close()
    again = RegistrySqlite(path)
    loaded = again.load()
    assert [r.customer for r in loaded.records] == ["cust-1"] and loaded.skipped == 2
    again.close()


def test_erase_deletes_and_keeps_the_tombstone(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = RegistrySqlite(path)
    reg = Registry(tomb_key=store.tomb_key(), keep_s=60)
    store.write(reg.apply(change("upsert", [customer_record("cust-erased", 5)]), T0))
    assert reg.erase(["cust-erased"], T0 + 1) == 1
    tomb = reg.tombstone_of("cust-erased")
    assert tomb is not None
    assert store.erase(["cust-erased"], [tomb]) == 1
    store.vacuum()
    assert b"cust-erased" not in files_bytes(path)
    assert [t.version for t in store.load().tombstones] == [MAX_VERSION]  # survives a restart
    store.close()
