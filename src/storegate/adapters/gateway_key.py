"""This gateway's sealing key: an X25519 key pair made on the box on first start.

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
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from storegate.errors import ConfigError

MAX_KEY_FILE_BYTES = 4096


def load_or_create(path: Path) -> X25519PrivateKey:
    """The key at ``path``, made (atomically, 0600, durably) if there is none."""
    try:
        return load(path)
    except FileNotFoundError:
        pass
    key = X25519PrivateKey.generate()
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
            return load(path)
        _sync_dir(path.parent)  # the key survives a power cut (central seals to it)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot create the gateway's sealing key: {exc}") from exc
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
    try:
        st = path.stat()
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise ConfigError(str(path), "not a sealing key (too large); move it away")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o600)  # a private key readable by others: close it first
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the gateway's sealing key: {exc}") from exc
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(path), "not a PEM private key: move it away (a new key is "
                          "made, and central must seal to it)") from exc
    if not isinstance(key, X25519PrivateKey):
        raise ConfigError(str(path), "not an X25519 private key: move it away")
    return key
