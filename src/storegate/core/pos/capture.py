"""POS capture files: raw lane bytes with their arrival time, one JSON object per line.

    {"ts": 1795000000.1234, "lane": "lane-1", "role": "printer", "dialect": "escpos",
     "data": "1b40..."}

``storegate pos capture`` writes them (for support, and for building templates);
``storegate pos decode`` reads them back (or a plain raw byte file). Pure.

Bounds, checked before use: ``ts`` 2000-01-01..2100-01-01 (as advert captures),
``data`` at most ``MAX_CHUNK_BYTES`` (a serial read is 4 KiB), ``lane``, ``role`` and
``dialect`` at most 64 characters (``dialect`` one the reader knows, when it says which),
a line at most ``MAX_LINE_CHARS``. A bad line is reported with its number, never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from storegate.core.ble.capture import BadLine, is_sane_epoch, read_json_lines

MAX_CHUNK_BYTES: Final = 64 * 1024
MAX_LINE_CHARS: Final = 2 * MAX_CHUNK_BYTES + 1024
MAX_NAME_CHARS: Final = 64


@dataclass(frozen=True, slots=True)
class Chunk:
    ts: float
    lane: str
    role: str
    dialect: str
    data: bytes


def chunk_to_json(c: Chunk) -> str:
    return json.dumps({"ts": round(c.ts, 6), "lane": c.lane, "role": c.role,
                       "dialect": c.dialect, "data": c.data.hex()}, separators=(",", ":"))


class _BadChunkError(ValueError):
    pass


def _chunk(obj: Any, dialects: Collection[str]) -> Chunk:
    if not isinstance(obj, dict):
        raise _BadChunkError("not a JSON object")
    ts, data = obj.get("ts"), obj.get("data")
    if not is_sane_epoch(ts):
        raise _BadChunkError("ts must be epoch seconds between 2000-01-01 and 2100-01-01")
    if not isinstance(data, str):
        raise _BadChunkError("data must be a hex string")
    if len(data) > 2 * MAX_CHUNK_BYTES:
        raise _BadChunkError(f"data is over {MAX_CHUNK_BYTES} bytes")
    try:
        raw = bytes.fromhex(data)
    except ValueError as exc:
        raise _BadChunkError("data is not hex") from exc
    lane, role, dialect = (obj.get(k, "") for k in ("lane", "role", "dialect"))
    if not all(isinstance(f, str) and len(f) <= MAX_NAME_CHARS for f in (lane, role, dialect)):
        raise _BadChunkError(f"lane, role and dialect are strings of at most "
                             f"{MAX_NAME_CHARS} characters")
    if dialects and dialect not in dialects:
        raise _BadChunkError(f"unknown dialect {dialect!r} (known: {', '.join(dialects)})")
    return Chunk(float(ts), str(lane), str(role), str(dialect), raw)


def read_pos_capture(lines: Iterable[str],
                     dialects: Collection[str] = ()) -> Iterator[Chunk | BadLine]:
    """Chunks in file order; a :class:`BadLine` for each line that is not one. With
    ``dialects``, a chunk must name one of them."""
    return read_json_lines(lines, lambda obj: _chunk(obj, dialects),
                           max_chars=MAX_LINE_CHARS, invalid=_BadChunkError)


def looks_like_capture(head: bytes) -> bool:
    """A capture starts with a JSON object carrying "ts" and "data"."""
    first = head.split(b"\n", 1)[0].strip()
    if not first.startswith(b"{"):
        return False
    try:
        obj = json.loads(first)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and "ts" in obj and "data" in obj
