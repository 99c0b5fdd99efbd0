"""Scan every file under a directory for given byte strings: the erasure proof.

Every regular file counts (databases, their ``-wal``, ``-shm`` and ``-journal``, lock
files, the status file, keys): after erasure a customer's id, loyalty pseudonym and
identity key must appear in none. A needle is looked for as given and, for text, as
its UTF-16 and JSON-escaped forms too, so a copy re-encoded somewhere is still found.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Hit:
    file: Path
    needle: str  # the label it was given under
    offset: int


def needles_for(customer: str, *, loyalty: Iterable[str] = (),
                key: bytes | None = None) -> dict[str, bytes]:
    """The byte strings a customer may leave behind, labelled: id, loyalty pseudonyms,
    and the identity key raw and in hex (lower and upper case)."""
    out = {"customer": customer.encode()}
    for n, card in enumerate(loyalty):
        out[f"loyalty{n}"] = card.encode()
    if key is not None:
        out["key"] = key
        out["key-hex"] = key.hex().encode()
        out["key-HEX"] = key.hex().upper().encode()
    return out


def _forms(value: bytes) -> list[bytes]:
    forms = [value]
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return forms
    if text.isprintable():
        forms.append(text.encode("utf-16-le"))
        escaped = json.dumps(text)[1:-1].encode()
        if escaped != value:
            forms.append(escaped)
    return forms


def scan(root: Path, needles: Mapping[str, bytes]) -> list[Hit]:
    """Every occurrence of every needle in every regular file under ``root``."""
    hits: list[Hit] = []
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    for f in files:
        data = f.read_bytes()
        for label, value in needles.items():
            for form in _forms(value):
                at = data.find(form)
                if at >= 0:
                    hits.append(Hit(f, label, at))
    return hits


def files_scanned(root: Path) -> list[str]:
    """The names scanned (a test asserts the WAL and the status file were among them)."""
    return sorted(p.name for p in root.rglob("*") if p.is_file())
