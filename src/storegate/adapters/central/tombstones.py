"""Erasure tombstones: what central keeps of an erased customer or card, keyed.

A tombstone must recognise the pseudonym again (a late or replayed event naming it is
stored redacted) without listing it, and without letting whoever reads the table test
a candidate pseudonym: so it is HMAC-SHA256 under a secret of central's (32 random
bytes), never a plain digest. The secret is a file like central's signing key (made
once, mode 0600, never overwritten, never logged); by default beside a SQLite database
(``central.db.tombstone-key``), given with ``--tombstone-key`` otherwise. Every
instance sharing one database needs the same file: the database keeps a check value
(an HMAC of a constant, which reveals nothing of the key) and an instance with
another key, or none where the database expects one, does not start.

Databases from before keyed tombstones (schema 2) hold SHA-256 digests, which cannot
be re-keyed (a digest cannot be inverted): they are marked ``keyed = 0`` and checked in
their old form too (:meth:`Tombstones.forms`); those of an erasure still under way
(its ids are still known) are re-keyed when the key is first created.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

KEY_BYTES: Final = 32
_PREFIX: Final = b"storegate-erased:"
_CHECK: Final = b"storegate-tombstone-key-check"


class TombstoneKeyError(ValueError):
    """The key file cannot be read or is not a key (the caller names the remedy)."""


class Tombstones:
    """Digests under one key. ``repr`` never shows the key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise TombstoneKeyError(f"a tombstone key is {KEY_BYTES} bytes")
        self._key = key

    def __repr__(self) -> str:
        return f"Tombstones(check={self.check()})"

    def digest(self, pseudonym: str) -> str:
        """The keyed tombstone of a customer or card pseudonym."""
        return hmac.new(self._key, _PREFIX + pseudonym.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def legacy_digest(pseudonym: str) -> str:
        """What schema 2 kept (unkeyed SHA-256): still recognised, never written."""
        return hashlib.sha256(_PREFIX + pseudonym.encode()).hexdigest()

    def forms(self, pseudonym: str) -> tuple[str, str]:
        """Both digests a tombstone of ``pseudonym`` may have been kept as."""
        return self.digest(pseudonym), self.legacy_digest(pseudonym)

    def check(self) -> str:
        """Which key this is, for the database's check (an HMAC of a constant: it
        tells keys apart and reveals nothing of them)."""
        return hmac.new(self._key, _CHECK, hashlib.sha256).hexdigest()[:32]


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def read_key(path: Path) -> bytes:
    """The key in ``path`` (64 hex digits): a file readable by others is named in a
    warning, never changed behind the operator's back."""
    try:
        text = path.read_text(encoding="ascii").strip()
        mode = path.stat().st_mode & 0o777
    except (OSError, UnicodeDecodeError) as exc:
        raise TombstoneKeyError(f"{path}: cannot read the tombstone key: {exc}") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise TombstoneKeyError(f"{path}: not a tombstone key ({KEY_BYTES * 2} hex digits)")
    if mode & 0o077:
        log.warning("tombstone key %s is readable by others (mode %o): chmod 600 it",
                    path, mode)
    return key


def create_key(path: Path) -> tuple[bytes, bool]:
    """A new key written to ``path`` (mode 0600, created exclusively: an existing file
    is never overwritten; written whole under a temporary name, then linked, so a crash
    leaves no half key). Returns the key and whether this call made it (False: another
    process made it meanwhile, and that one is returned)."""
    key = new_key()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # a stale one from a crash of this pid
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)  # fails if another process made it meanwhile
    except FileExistsError:
        return read_key(path), False
    except OSError as exc:
        raise TombstoneKeyError(f"{path}: cannot create the tombstone key: "
                                f"{exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return key, True
