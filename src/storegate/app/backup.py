"""``storegate backup`` / ``storegate restore``: the box's state (outbox, identity keys,
customers, ledgers, the gateway's keys) to one tar file and back.

Every file beside the outbox that belongs to it (``<stem>.*``: the outbox itself, the
identity store, the customer registry, the app inbox, the command and redemption
ledgers, the sealing and signing keys) is taken. SQLite databases are copied with
SQLite's online backup (a consistent snapshot while the gateway runs: WAL included, no
torn pages); key files byte for byte. A manifest names each file with its SHA-256.

Restore refuses while the gateway runs, checks every hash before touching anything,
and moves the files it replaces aside (``<file>.before-restore``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from storegate import __version__
from storegate.adapters import status_file
from storegate.config import Config
from storegate.errors import StoregateError, UsageError

MANIFEST: Final = "storegate-backup.json"
FORMAT: Final = 1
SQLITE_MAGIC: Final = b"SQLite format 3\x00"
SKIP_SUFFIXES: Final = ("-wal", "-shm", "-journal", ".lock", ".tmp", ".before-restore")
FILE_MODE: Final = 0o600
# One file of a backup: far above a store's outbox (a week offline at a busy store is
# well under 1 GiB), low enough that a hostile archive cannot fill the SD card.
MAX_FILE_BYTES: Final = 4 << 30
MAX_FILES: Final = 64


class BackupError(StoregateError):
    """A backup cannot be made or restored; the message says why and what to do."""

    exit_code = 2


def state_files(config: Config) -> list[Path]:
    """The outbox and every file of its family, not the live status or SQLite's WAL."""
    p = config.storage.path
    if not p.parent.is_dir():
        return []
    out = []
    for f in sorted(p.parent.iterdir()):
        if not f.is_file() or f.name.endswith(SKIP_SUFFIXES) or f == config.status_path:
            continue
        if f.name == p.name or f.name.startswith(p.stem + "."):
            if f.name.endswith(".status.json"):
                continue
            out.append(f)
    return out


def _family_member(config: Config, name: str) -> bool:
    """A name :func:`state_files` would take: the outbox or ``<stem>.*`` beside it."""
    p = config.storage.path
    return (name == p.name or name.startswith(p.stem + ".")) and not name.endswith(
        (*SKIP_SUFFIXES, ".status.json")) and name != config.status_path.name


def _entries(config: Config, archive: Path, manifest: object) -> list[tuple[str, str]]:
    """The manifest's files as (name, sha256), each checked; BackupError if not."""
    if not isinstance(manifest, dict):
        raise BackupError(f"{archive}: {MANIFEST} is not an object")
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise BackupError(f"{archive}: {MANIFEST} lists no files")
    if len(files) > MAX_FILES:
        raise BackupError(f"{archive}: {len(files)} files (at most {MAX_FILES})")
    out: list[tuple[str, str]] = []
    for i, e in enumerate(files):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) \
                or not isinstance(e.get("sha256"), str):
            raise BackupError(f"{archive}: {MANIFEST} files[{i}] is not "
                              '{"name": ..., "sha256": ...}')
        name = e["name"]
        if not name or "/" in name or "\0" in name or name.startswith(".") \
                or name == MANIFEST:
            raise BackupError(f"{archive}: unsafe file name {name!r}")
        if not _family_member(config, name):
            raise BackupError(f"{archive}: {name!r} is not one of the outbox's files "
                              f"({config.storage.path.name}, {config.storage.path.stem}.*)")
        if any(name == n for n, _ in out):
            raise BackupError(f"{archive}: {name!r} listed twice")
        out.append((name, e["sha256"]))
    return out


def _member(tar: tarfile.TarFile, archive: Path, name: str) -> tarfile.TarInfo:
    try:
        member = tar.getmember(name)
    except KeyError as exc:
        raise BackupError(f"{archive}: {name} is in the manifest, not in the archive") \
            from exc
    if not member.isfile():
        raise BackupError(f"{archive}: {name} is not a file")
    if member.size > MAX_FILE_BYTES:
        raise BackupError(f"{archive}: {name} is {member.size} bytes "
                          f"(at most {MAX_FILE_BYTES})")
    return member


def _stream_sha256(tar: tarfile.TarFile, member: tarfile.TarInfo,
                   into: Path | None = None) -> str:
    """The member's SHA-256, read in blocks; written to ``into`` (mode 0600) if given."""
    src = tar.extractfile(member)
    if src is None:  # pragma: no cover - isfile() checked
        raise BackupError(f"cannot read {member.name}")
    h = hashlib.sha256()
    out = None
    if into is not None:
        out = os.fdopen(os.open(into, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "wb")
    try:
        for block in iter(lambda: src.read(1 << 20), b""):
            h.update(block)
            if out is not None:
                out.write(block)
    finally:
        if out is not None:
            out.close()
    return h.hexdigest()


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def _snapshot(path: Path, into: Path) -> None:
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(into)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def backup(config: Config, out: Path, *, wall_clock: Callable[[], float] = time.time) -> int:
    """Write the tar file; returns how many files it holds."""
    files = state_files(config)
    if not files:
        raise BackupError(f"nothing to back up: no outbox at {config.storage.path}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".storegate-backup-", dir=out.parent) as tmp:
        entries: list[dict[str, Any]] = []
        for f in files:
            copy = Path(tmp) / f.name
            try:
                if _is_sqlite(f):
                    _snapshot(f, copy)
                else:
                    copy.write_bytes(f.read_bytes())
            except (OSError, sqlite3.Error) as exc:
                raise BackupError(f"cannot copy {f}: {exc}") from exc
            entries.append({"name": f.name, "sha256": _sha256(copy),
                            "sqlite": _is_sqlite(copy)})
        manifest = {"format": FORMAT, "storegate": __version__,
                    "store_id": config.store_id, "gateway_id": config.gateway_id,
                    "created_at": wall_clock(), "outbox": config.storage.path.name,
                    "files": entries}
        part = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(data), FILE_MODE, int(wall_clock())
            tar.addfile(info, io.BytesIO(data))
            for e in entries:
                tar.add(Path(tmp) / e["name"], arcname=e["name"], recursive=False)
            raw.flush()
            os.fsync(raw.fileno())
        part.replace(out)
    return len(entries)


def _running(config: Config) -> bool:
    live = status_file.read(config.status_path)
    return bool(live and status_file.process_alive(int(live.get("pid", 0))))


def restore(config: Config, archive: Path, *, force_other_gateway: bool = False) -> int:
    """Put a backup's files in place of the current ones; returns how many."""
    if _running(config):
        raise BackupError("the gateway is running: stop it first "
                          "(sudo systemctl stop storegate)")
    try:
        tar = tarfile.open(archive, mode="r:")  # noqa: SIM115 - closed by the with below
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"{archive}: not a storegate backup ({exc})") from exc
    config.storage.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new disk
    with tar, tempfile.TemporaryDirectory(prefix=".storegate-restore-",
                                          dir=config.storage.path.parent) as tmp:
        try:
            raw = tar.extractfile(MANIFEST)
            manifest = json.loads(raw.read(1 << 20)) if raw is not None else None
        except (KeyError, ValueError, tarfile.TarError) as exc:
            raise BackupError(f"{archive}: no readable {MANIFEST}") from exc
        if not isinstance(manifest, dict):
            raise BackupError(f"{archive}: no readable {MANIFEST} (not an object)")
        if manifest.get("format") != FORMAT:
            raise BackupError(f"{archive}: backup format {manifest.get('format')}, "
                              f"this storegate reads {FORMAT}")
        who = (manifest.get("store_id"), manifest.get("gateway_id"))
        if who != (config.store_id, config.gateway_id) and not force_other_gateway:
            raise BackupError(f"{archive} is {who[0]}/{who[1]}'s, this config is "
                              f"{config.store_id}/{config.gateway_id} (--force-other-gateway "
                              "to restore it anyway: its sequence numbers and keys come too)")
        if manifest.get("outbox") != config.storage.path.name:
            raise BackupError(f"{archive}: its outbox is {manifest.get('outbox')!r}, "
                              f"this config's is {config.storage.path.name!r}")
        entries = _entries(config, archive, manifest)
        names = [name for name, _ in entries]
        try:
            members = [(_member(tar, archive, name), sha) for name, sha in entries]
            # every hash checked before a byte is written to the disk
            for member, sha in members:
                if _stream_sha256(tar, member) != sha:
                    raise BackupError(f"{archive}: {member.name} does not match its "
                                      "SHA-256 (damaged)")
            need = sum(m.size for m, _ in members)
            free = shutil.disk_usage(tmp).free
            if need > free:
                raise BackupError(f"{archive}: {need} bytes to restore, {free} free in "
                                  f"{config.storage.path.parent}")
            for member, sha in members:
                if _stream_sha256(tar, member, Path(tmp) / member.name) != sha:
                    raise BackupError(f"{archive}: {member.name} changed while read")
        except (OSError, tarfile.TarError) as exc:
            raise BackupError(f"{archive}: cannot read it ({exc})") from exc
        # every file checked: now replace, each current file kept aside
        for name in names:
            dest = config.storage.path.parent / name
            for suffix in ("-wal", "-shm"):  # a stale WAL would replay onto the restored db
                side = dest.with_name(dest.name + suffix)
                if side.exists():
                    side.replace(side.with_name(side.name + ".before-restore"))
            if dest.exists():
                dest.replace(dest.with_name(dest.name + ".before-restore"))
            (Path(tmp) / name).replace(dest)
            if os.geteuid() == 0:  # restored by root for the service's own user
                owner = dest.parent.stat()
                os.chown(dest, owner.st_uid, owner.st_gid)
        # files of the family the backup did not have would mix two states
        for extra in state_files(config):
            if extra.name not in names:
                extra.replace(extra.with_name(extra.name + ".before-restore"))
    return len(names)


def add_parser(sub: Any, add_config: Callable[[argparse.ArgumentParser], None],
               config_of: Callable[[argparse.Namespace], Config]) -> None:
    p = sub.add_parser("backup", help="the outbox, identity store, ledgers and keys to one "
                       "tar file (consistent while running)")
    add_config(p)
    p.add_argument("--out", metavar="FILE", type=Path, required=True)

    def run_backup(args: argparse.Namespace) -> int:
        if args.out.exists() and args.out.is_dir():
            raise UsageError(f"--out {args.out}: a folder; give a file name")
        n = backup(config_of(args), args.out)
        print(f"backed up {n} file(s) to {args.out} (mode 0600: it holds identity keys)")
        return 0

    p.set_defaults(func=run_backup)
    p = sub.add_parser("restore", help="put a backup back (gateway stopped); replaced "
                       "files are kept as *.before-restore")
    p.add_argument("file", metavar="FILE", type=Path)
    add_config(p)
    p.add_argument("--force-other-gateway", action="store_true",
                   help="restore a backup made by another store/gateway id")

    def run_restore(args: argparse.Namespace) -> int:
        n = restore(config_of(args), args.file, force_other_gateway=args.force_other_gateway)
        print(f"restored {n} file(s) from {args.file}; start the gateway again")
        return 0

    p.set_defaults(func=run_restore)
