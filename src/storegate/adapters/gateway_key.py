"""This gateway's own keys, made on the box on first start: the sealing key (X25519)
and the offer-signing key (Ed25519, :func:`load_or_create_offer_key`).

The private key never leaves the box (PKCS#8 PEM, mode 0600, beside the identity
store); the public key goes out in the birth certificate and ``storegate status`` so
central can seal identity keys to this gateway. Losing the file means central must
seal again to the new key (the gateway answers ``not_sealed_for_this_gateway`` or
``unsealable`` until it does); a foreign or corrupt file stops the start: it is never
overwritten.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from storegate.errors import ConfigError

MAX_KEY_FILE_BYTES = 4096
_Key = TypeVar("_Key", X25519PrivateKey, Ed25519PrivateKey)


def load_or_create(path: Path) -> X25519PrivateKey:
    """The key at ``path``, made (atomically, 0600, durably) if there is none."""
    return _load_or_create(path, X25519PrivateKey.generate, load, "sealing key")


def load_or_create_offer_key(path: Path) -> Ed25519PrivateKey:
    """The gateway's offer-signing key (Ed25519), made like the sealing key. Losing it
    only means tokens issued before no longer verify here (their customers get new
    ones); its public key is in the birth certificate for tills and central."""
    return _load_or_create(path, Ed25519PrivateKey.generate, load_offer_key,
                           "offer-signing key")


def load_or_create_poster_key(path: Path) -> Ed25519PrivateKey:
    """The gateway's zone-poster key (Ed25519), made like the others. A key of its own,
    not the offer key: posters hang on walls for months while tokens live days, so this
    one may be copied to the store's other gateways or restored onto a replacement box
    without sharing the offer key, and a leak forges check-ins, never offers. Losing it
    means reprinting the posters."""
    return _load_or_create(path, Ed25519PrivateKey.generate, load_offer_key,
                           "poster-signing key")


def _load_or_create(path: Path, generate: Callable[[], _Key], read: Callable[[Path], _Key],
                    what: str) -> _Key:
    try:
        return read(path)
    except FileNotFoundError:
        pass
    key = generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            return read(path)
        _sync_dir(path.parent)  # the key survives a power cut (central seals to it)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot create the gateway's {what}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return key


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path) -> X25519PrivateKey:
    """The key at ``path``; FileNotFoundError if there is none, ConfigError if it is not
    one (never overwritten: move it away)."""
    key = _read(path, "sealing key", "central must seal to it")
    if not isinstance(key, X25519PrivateKey):
        raise ConfigError(str(path), "not an X25519 private key: move it away")
    return key


def load_offer_key(path: Path) -> Ed25519PrivateKey:
    """The offer-signing key at ``path``; errors as :func:`load`."""
    key = _read(path, "offer-signing key", "tokens issued before stop verifying here")
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(str(path), "not an Ed25519 private key: move it away")
    return key


def _read(path: Path, what: str, consequence: str) -> PrivateKeyTypes:
    try:
        st = path.stat()
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise ConfigError(str(path), f"not a {what} (too large); move it away")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o600)  # a private key readable by others: close it first
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the gateway's {what}: {exc}") from exc
    try:
        return load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(path), "not a PEM private key: move it away (a new key is "
                          f"made, and {consequence})") from exc
