"""The advert capture format: one JSON object per line, as ``storegate capture`` writes.

    {"ts": 1795000000.1234, "scanner": "entrance", "address": "4A:1B:...", "rssi": -67,
     "manufacturer_data": {"76": "0215..."},
     "service_data": {"0000feaa-0000-1000-8000-00805f9b34fb": "30ec..."}}

``ts`` is epoch seconds, manufacturer keys are company ids in decimal, values are hex.
Optional keys: ``tx_power``, ``name``, ``service_uuids``. A bad line is reported with
its line number and a reason, never fatal. Pure: text in, adverts or errors out.

Every value is bounded before use (the same bounds hold for scanner-node reports):
``ts`` 2000-01-01..2100-01-01 (``MIN_EPOCH_S``..``MAX_EPOCH_S``), ``rssi`` and
``tx_power`` -127..20 dBm, at most 32 manufacturer and 32 service data entries of at
most 255 bytes each, ``name`` at most 248 characters, at most 32 service UUIDs of at
most 36 characters, a line at most 16 KiB.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard, TypeVar

MIN_EPOCH_S: Final = 946_684_800.0  # 2000-01-01: earlier is an unset clock
MAX_EPOCH_S: Final = 4_102_444_800.0  # 2100-01-01
MIN_DBM: Final = -127
MAX_DBM: Final = 20
MAX_DATA_ENTRIES: Final = 32  # manufacturer or service data entries in one advert
MAX_DATA_BYTES: Final = 255  # an extended advertising AD structure at most
MAX_NAME_CHARS: Final = 248  # the GAP device name at most
MAX_SERVICE_UUIDS: Final = 32
MAX_LINE_CHARS: Final = 16 * 1024  # a full advert with every field at its bound is ~10 KiB
T = TypeVar("T")


def is_sane_epoch(ts: object) -> TypeGuard[int | float]:
    """A real number of epoch seconds a clock that was ever set could give."""
    return (not isinstance(ts, bool) and isinstance(ts, int | float)
            and math.isfinite(ts) and MIN_EPOCH_S <= ts <= MAX_EPOCH_S)


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
    if len(raw) > MAX_DATA_ENTRIES:
        raise _BadAdvertError(f"{what} has more than {MAX_DATA_ENTRIES} entries")
    out = {}
    for k, v in raw.items():
        if not isinstance(v, str):
            raise _BadAdvertError(f"{what}[{k[:40]!r}] must be a hex string")
        if len(k) > 64 or len(v) > 2 * MAX_DATA_BYTES:
            raise _BadAdvertError(f"{what}[{k[:40]!r}]: key over 64 characters or value "
                                  f"over {MAX_DATA_BYTES} bytes")
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
    if not is_sane_epoch(ts):
        raise _BadAdvertError("ts must be epoch seconds between 2000-01-01 and 2100-01-01")
    if not isinstance(scanner, str) or not scanner or len(scanner) > 64 \
            or not scanner.isprintable():
        raise _BadAdvertError("scanner must be 1-64 printable characters")
    if not isinstance(address, str) or not address or len(address) > 64 \
            or not address.isascii() or not address.isprintable():
        raise _BadAdvertError("address must be 1-64 printable ASCII characters")
    if isinstance(rssi, bool) or not isinstance(rssi, int) or not MIN_DBM <= rssi <= MAX_DBM:
        raise _BadAdvertError(f"rssi must be an integer dBm in {MIN_DBM}..{MAX_DBM}")
    manufacturer: dict[int, bytes] = {}
    for key, value in _hexmap(obj.get("manufacturer_data"), "manufacturer_data").items():
        if not key.isdigit() or int(key) > 0xFFFF:
            raise _BadAdvertError(f"manufacturer_data key {key!r} is not a decimal company id")
        manufacturer[int(key)] = value
    tx = obj.get("tx_power")
    if tx is not None and (isinstance(tx, bool) or not isinstance(tx, int)
                           or not MIN_DBM <= tx <= MAX_DBM):
        raise _BadAdvertError(f"tx_power must be an integer dBm in {MIN_DBM}..{MAX_DBM}")
    name = obj.get("name")
    if isinstance(name, str) and len(name) > MAX_NAME_CHARS:
        raise _BadAdvertError(f"name is over {MAX_NAME_CHARS} characters")
    uuids = obj.get("service_uuids") or []
    if not isinstance(uuids, list) or len(uuids) > MAX_SERVICE_UUIDS \
            or not all(isinstance(u, str) and len(u) <= 36 for u in uuids):
        raise _BadAdvertError(f"service_uuids must be a list of at most "
                              f"{MAX_SERVICE_UUIDS} UUID strings")
    return Advert(
        ts=float(ts), scanner=scanner, address=address, rssi=rssi,
        manufacturer_data=manufacturer,
        service_data={k.lower(): v for k, v in
                      _hexmap(obj.get("service_data"), "service_data").items()},
        tx_power=tx, name=name if isinstance(name, str) else None,
        service_uuids=tuple(uuids),
    )


def read_json_lines(lines: Iterable[str], parse: Callable[[Any], T], *, max_chars: int,
                    invalid: type[ValueError]) -> Iterator[T | BadLine]:
    """One JSON object per line (a capture): ``parse(obj)`` of each, in file order, or a
    :class:`BadLine` (1-based number, reason) for a line too long, not JSON or refused by
    ``parse`` (which raises ``invalid`` with the reason). Blank lines are skipped."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(line) > max_chars:
            yield BadLine(number, f"line longer than {max_chars} characters")
            continue
        try:
            yield parse(json.loads(line))
        except (ValueError, RecursionError) as exc:
            yield BadLine(number, str(exc) if isinstance(exc, invalid) else f"not JSON: {exc}")


def read_capture(lines: Iterable[str]) -> Iterator[Advert | BadLine]:
    """Adverts in file order; a :class:`BadLine` (with its 1-based number) for each line
    that is not a valid advert. Blank lines are skipped."""
    return read_json_lines(lines, parse_advert, max_chars=MAX_LINE_CHARS,
                           invalid=_BadAdvertError)


def bounded_lines(readline: Callable[[int], str], limit: int) -> Iterator[str]:
    """The lines ``readline`` gives, none longer than ``limit + 1`` characters: an
    over-long line is cut there (so the reader reports it as too long) and its rest
    skipped unread into memory. A file of one 10 GB line costs ``limit`` characters."""
    while line := readline(limit + 1):
        if len(line) > limit and not line.endswith("\n"):
            while (rest := readline(limit + 1)) and not rest.endswith("\n"):
                pass
        yield line


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
