"""Backup and restore of the box's state (deploy/README.md): taken while the outbox is
open and its last commits are still in the WAL, restored over a lost disk, refused while
the gateway runs or when the archive is damaged."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from storegate.adapters import status_file
from storegate.adapters.identities_sqlite import IdentityStore
from storegate.adapters.outbox import OutboxReader
from storegate.app import backup as backup_mod
from storegate.app.backup import MANIFEST, BackupError, backup, restore, state_files
from storegate.app.cli import main
from storegate.config import Config, load
from storegate.core.ble.eid import Identity
from tests.support.outbox import make_outbox, purchase, visit

T0 = 1_795_000_000.0


def config(tmp_path: Path, gateway: str = "gw-1") -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "store.toml"
    cfg.write_text(f'store_id = "store-0042"\ngateway_id = "{gateway}"\n'
                   f'[storage]\npath = "{tmp_path / "data" / "outbox.db"}"\n'
                   f'status_file = "{tmp_path / "run" / "status.json"}"\n')
    return load(cfg, environ={})


def fill(c: Config, n: int) -> None:
    c.storage.path.parent.mkdir(parents=True, exist_ok=True)
    outbox = make_outbox(c.storage.path)
    outbox.open()
    try:
        outbox.submit([purchase(i) if i % 2 else visit(i) for i in range(n)]).result(10)
        ids = IdentityStore(c.identities_path)
        ids.upsert([Identity("cust-1", bytes(range(16)), 8, 5000, T0 - 86400)])
        ids.close()
        # a backup while the outbox is open: its commits are still in the WAL
        assert c.storage.path.with_name("outbox.db-wal").stat().st_size > 0
        backup(c, c.storage.path.parent.parent / "backups" / "b1.tar")
    finally:
        outbox.close()


def depth(c: Config) -> int:
    with OutboxReader(c.storage.path) as r:
        return r.stats().depth


def test_backup_then_restore_after_the_disk_is_lost(tmp_path: Path) -> None:
    c = config(tmp_path)
    fill(c, 6)
    archive = tmp_path / "backups" / "b1.tar"
    assert oct(archive.stat().st_mode & 0o777) == "0o600"  # it holds identity keys
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
    names = {e["name"] for e in manifest["files"]}
    assert {"outbox.db", "outbox.identities.db"} <= names
    assert not any(n.endswith(("-wal", "-shm", ".lock")) for n in names)
    for f in state_files(c):  # the disk dies
        f.unlink()
    for side in c.storage.path.parent.glob("*-wal"):
        side.unlink()
    assert restore(c, archive) == len(names)
    assert depth(c) == 6
    ids = IdentityStore(c.identities_path)
    try:
        assert [i.customer for i in ids.load()[0]] == ["cust-1"]
    finally:
        ids.close()


def test_restore_keeps_what_it_replaces_and_refuses_while_running(tmp_path: Path) -> None:
    c = config(tmp_path)
    fill(c, 2)
    archive = tmp_path / "backups" / "b1.tar"
    outbox = make_outbox(c.storage.path)  # later events, not in the backup
    outbox.open()
    outbox.submit([visit(10)]).result(10)
    outbox.close()
    assert depth(c) == 3
    c.status_path.parent.mkdir(parents=True)
    status_file.write(c.status_path, {"pid": os.getpid(), "updated_at": T0})
    with pytest.raises(BackupError, match="running"):
        restore(c, archive)
    status_file.remove(c.status_path)
    restore(c, archive)
    assert depth(c) == 2
    assert c.storage.path.with_name("outbox.db.before-restore").exists()


def test_a_damaged_or_foreign_backup_changes_nothing(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    c = config(tmp_path)
    fill(c, 4)
    archive = tmp_path / "backups" / "b1.tar"
    other = config(tmp_path / "other", gateway="gw-2")
    with pytest.raises(BackupError, match="gw-2"):
        restore(other, archive)
    bad = tmp_path / "bad.tar"
    with tarfile.open(archive) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name == "outbox.db":
                data = data[:-100] + bytes(100)
            m.size = len(data)

            dst.addfile(m, io.BytesIO(data))
    before = c.storage.path.read_bytes()
    assert main(["restore", str(bad), "-c", str(tmp_path / "store.toml")]) == 2
    assert "does not match its SHA-256" in capsys.readouterr().err
    assert c.storage.path.read_bytes() == before
    assert not c.storage.path.with_name("outbox.db.before-restore").exists()


def test_backup_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = config(tmp_path)
    fill(c, 1)
    out = tmp_path / "b2.tar"
    assert main(["backup", "-c", str(tmp_path / "store.toml"), "--out", str(out)]) == 0
    assert "backed up" in capsys.readouterr().out
    config(tmp_path / "empty")  # no outbox yet: nothing to back up, said so
    assert main(["backup", "-c", str(tmp_path / "empty" / "store.toml"),
                 "--out", str(tmp_path / "b3.tar")]) == 2
    assert "nothing to back up" in capsys.readouterr().err


BASE = {"format": 1, "store_id": "store-0042", "gateway_id": "gw-1", "outbox": "outbox.db"}


def _archive(path: Path, manifest: object, members: dict[str, bytes] | None = None,
             sizes: dict[str, int] | None = None) -> Path:
    """A hand-made archive: ``manifest`` as given, ``members`` by name (``sizes`` makes
    one that large, zeros, without holding it in memory)."""
    with tarfile.open(path, "w") as tar:
        data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for name, body in (members or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        for name, size in (sizes or {}).items():
            info = tarfile.TarInfo(name)
            info.size = size
            with open("/dev/zero", "rb") as zeros:
                tar.addfile(info, zeros)
    return path


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


HOSTILE = {
    "manifest a list": (b"[]", None, "not an object"),
    "no files": (BASE, None, "lists no files"),
    "files empty": ({**BASE, "files": []}, None, "lists no files"),
    "an entry not an object": ({**BASE, "files": ["outbox.db"]}, None, "files[0] is not"),
    "an entry without sha256": ({**BASE, "files": [{"name": "outbox.db"}]}, None,
                                "files[0] is not"),
    "an empty name": ({**BASE, "files": [{"name": "", "sha256": "0"}]}, None, "unsafe"),
    "a path": ({**BASE, "files": [{"name": "../x.db", "sha256": "0"}]}, None, "unsafe"),
    "listed, not in the archive": ({**BASE, "files": [{"name": "outbox.db", "sha256": "0"}]},
                                   None, "not in the archive"),
    "a file that is not the outbox's": (
        {**BASE, "files": [{"name": "evil.conf", "sha256": _sha(b"x")}]},
        {"evil.conf": b"x"}, "not one of the outbox's files"),
    "a WAL": ({**BASE, "files": [{"name": "outbox.db-wal", "sha256": _sha(b"x")}]},
              {"outbox.db-wal": b"x"}, "not one of the outbox's files"),
    "listed twice": ({**BASE, "files": [{"name": "outbox.db", "sha256": _sha(b"x")}] * 2},
                     {"outbox.db": b"x"}, "listed twice"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=str)
def test_a_malformed_or_hostile_archive_is_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    config(tmp_path)
    manifest, members, says = HOSTILE[case]
    bad = _archive(tmp_path / "bad.tar", manifest, members)
    assert main(["restore", str(bad), "-c", str(tmp_path / "store.toml")]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
    data = tmp_path / "data"
    assert not data.exists() or sorted(p.name for p in data.iterdir()) == []  # nothing put


def test_a_damaged_member_is_found_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash of each file is checked reading the archive, before the state dir gets
    a byte: a 50 MB member with a wrong hash leaves no 50 MB file behind, even briefly
    (a spy on the only writer, the second pass)."""
    c = config(tmp_path)
    bad = _archive(tmp_path / "big.tar", {**BASE, "files": [{"name": "outbox.db",
                                                              "sha256": "0" * 64}]},
                   sizes={"outbox.db": 50_000_000})
    written: list[Path | None] = []
    real = backup_mod._stream_sha256

    def spy(tar: tarfile.TarFile, member: tarfile.TarInfo, into: Path | None = None) -> str:
        written.append(into)
        return real(tar, member, into)

    monkeypatch.setattr(backup_mod, "_stream_sha256", spy)
    with pytest.raises(BackupError, match="does not match its SHA-256"):
        restore(c, bad)
    assert written == [None]


def test_a_member_above_the_cap_is_refused_unread(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    c = config(tmp_path)
    monkeypatch.setattr(backup_mod, "MAX_FILE_BYTES", 1000)
    bad = _archive(tmp_path / "big.tar", {**BASE, "files": [{"name": "outbox.db",
                                                              "sha256": _sha(bytes(2000))}]},
                   {"outbox.db": bytes(2000)})
    with pytest.raises(BackupError, match="2000 bytes"):
        restore(c, bad)
