"""The gateway's sealing key on disk: made once, private, never overwritten."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from storegate.adapters import gateway_key
from storegate.core import seal
from storegate.errors import ConfigError


def test_made_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.seal.key"
    key = gateway_key.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = gateway_key.load_or_create(path)
    assert seal.public_text(again.public_key()) == seal.public_text(key.public_key())
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_a_key_readable_by_others_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "k"
    gateway_key.load_or_create(path)
    os.chmod(path, 0o644)
    gateway_key.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("content", [b"", b"hello", b"\x00" * 10_000,
                                     b"-----BEGIN PRIVATE KEY-----\nAAAA\n"])
def test_a_foreign_file_stops_the_start_and_is_not_touched(tmp_path: Path,
                                                           content: bytes) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="move it away"):
        gateway_key.load_or_create(path)
    assert path.read_bytes() == content
