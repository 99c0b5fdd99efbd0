"""POS capture files: raw lane bytes with their arrival time, one JSON object per line.

    {"ts": 1795000000.1234, "lane": "lane-1", "role": "printer", "dialect": "escpos",
     "data": "1b40..."}

``storegate pos capture`` writes them (for support, and for building templates);
``storegate pos decode`` reads them back (or a plain raw byte file). Pure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from storegate.core.ble.capture import BadLine


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


def _chunk(obj: Any) -> Chunk:
    if not isinstance(obj, dict):
        raise _BadChunkError("not a JSON object")
    ts, data = obj.get("ts"), obj.get("data")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise _BadChunkError("ts must be a number (epoch seconds)")
    if not isinstance(data, str):
        raise _BadChunkError("data must be a hex string")
    try:
        raw = bytes.fromhex(data)
    except ValueError as exc:
        raise _BadChunkError("data is not hex") from exc
    fields = [obj.get(k, "") for k in ("lane", "role", "dialect")]
    if not all(isinstance(f, str) for f in fields):
        raise _BadChunkError("lane, role and dialect are strings")
    return Chunk(float(ts), str(fields[0]), str(fields[1]), str(fields[2]), raw)


def read_pos_capture(lines: Iterable[str]) -> Iterator[Chunk | BadLine]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield _chunk(json.loads(line))
        except (ValueError, RecursionError) as exc:
            yield BadLine(number, str(exc))


def looks_like_capture(head: bytes) -> bool:
    """A capture starts with a JSON object carrying "ts" and "data"."""
    first = head.split(b"\n", 1)[0].strip()
    if not first.startswith(b"{"):
        return False
    try:
        obj = json.loads(first)
    except ValueError:
        return False
    return isinstance(obj, dict) and "ts" in obj and "data" in obj
