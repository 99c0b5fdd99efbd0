"""The advert capture format: one JSON object per line, as ``storegate capture`` writes.

    {"ts": 1795000000.1234, "scanner": "entrance", "address": "4A:1B:...", "rssi": -67,
     "manufacturer_data": {"76": "0215..."},
     "service_data": {"0000feaa-0000-1000-8000-00805f9b34fb": "30ec..."}}

``ts`` is epoch seconds, manufacturer keys are company ids in decimal, values are hex.
Optional keys: ``tx_power``, ``name``, ``service_uuids``. A bad line is reported with
its line number and a reason, never fatal. Pure: text in, adverts or errors out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Advert:
    """One advertisement as one scanner heard it: the unit the presence pipeline eats."""

    ts: float
    scanner: str
    address: str
    rssi: int
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    service_data: dict[str, bytes] = field(default_factory=dict)
    tx_power: int | None = None
    name: str | None = None
    service_uuids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    reason: str


class _BadAdvertError(ValueError):
    pass


def _hexmap(raw: Any, what: str) -> dict[str, bytes]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _BadAdvertError(f"{what} must be an object")
    out = {}
    for k, v in raw.items():
        if not isinstance(v, str):
            raise _BadAdvertError(f"{what}[{k!r}] must be a hex string")
        try:
            out[str(k)] = bytes.fromhex(v)
        except ValueError as exc:
            raise _BadAdvertError(f"{what}[{k!r}] is not hex") from exc
    return out


def parse_advert(obj: Any) -> Advert:
    """Validate one decoded JSON object; raises ValueError with the reason."""
    if not isinstance(obj, dict):
        raise _BadAdvertError("not a JSON object")
    try:
        ts, scanner, address, rssi = obj["ts"], obj["scanner"], obj["address"], obj["rssi"]
    except KeyError as exc:
        raise _BadAdvertError(f"missing key {exc.args[0]!r}") from exc
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise _BadAdvertError("ts must be a number (epoch seconds)")
    if not isinstance(scanner, str) or not scanner or len(scanner) > 64 \
            or not scanner.isprintable():
        raise _BadAdvertError("scanner must be 1-64 printable characters")
    if not isinstance(address, str) or not address or len(address) > 64 \
            or not address.isascii() or not address.isprintable():
        raise _BadAdvertError("address must be 1-64 printable ASCII characters")
    if isinstance(rssi, bool) or not isinstance(rssi, int) or not -127 <= rssi <= 20:
        raise _BadAdvertError("rssi must be an integer dBm in -127..20")
    manufacturer: dict[int, bytes] = {}
    for key, value in _hexmap(obj.get("manufacturer_data"), "manufacturer_data").items():
        if not key.isdigit() or int(key) > 0xFFFF:
            raise _BadAdvertError(f"manufacturer_data key {key!r} is not a decimal company id")
        manufacturer[int(key)] = value
    tx = obj.get("tx_power")
    if tx is not None and (isinstance(tx, bool) or not isinstance(tx, int)):
        raise _BadAdvertError("tx_power must be an integer")
    name = obj.get("name")
    uuids = obj.get("service_uuids") or []
    if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
        raise _BadAdvertError("service_uuids must be a list of strings")
    return Advert(
        ts=float(ts), scanner=scanner, address=address, rssi=rssi,
        manufacturer_data=manufacturer,
        service_data={k.lower(): v for k, v in
                      _hexmap(obj.get("service_data"), "service_data").items()},
        tx_power=tx, name=name if isinstance(name, str) else None,
        service_uuids=tuple(uuids),
    )


def read_capture(lines: Iterable[str]) -> Iterator[Advert | BadLine]:
    """Adverts in file order; a :class:`BadLine` (with its 1-based number) for each line
    that is not a valid advert. Blank lines are skipped."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield parse_advert(json.loads(line))
        except (ValueError, RecursionError) as exc:
            reason = str(exc) if isinstance(exc, _BadAdvertError) else f"not JSON: {exc}"
            yield BadLine(number, reason)


def advert_to_json(a: Advert) -> str:
    obj: dict[str, Any] = {
        "ts": a.ts, "scanner": a.scanner, "address": a.address, "rssi": a.rssi,
        "manufacturer_data": {str(k): v.hex() for k, v in a.manufacturer_data.items()},
        "service_data": {k: v.hex() for k, v in a.service_data.items()},
    }
    if a.tx_power is not None:
        obj["tx_power"] = a.tx_power
    if a.name is not None:
        obj["name"] = a.name
    if a.service_uuids:
        obj["service_uuids"] = list(a.service_uuids)
    return json.dumps(obj, separators=(",", ":"))
