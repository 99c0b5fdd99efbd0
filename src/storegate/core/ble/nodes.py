"""Scanner nodes (ESP32s around the store) reporting over MQTT: messages in, adverts out.

Two formats are understood, both pure here (topic and payload bytes in, adverts or a
reason out; the receive time is passed in):

**Raw adverts** (ESP32 relays, ESPHome-style bluetooth proxies; the format we document
for new firmware), on ``storegate/v1/<store>/scanners/<node>/adverts``: one advert
object, a list of them, or ``{"adverts": [...]}``. Each object is the capture format
without ``scanner`` (the node is the scanner) and with ``ts`` optional::

    {"address": "4A:1B:...", "rssi": -67, "manufacturer_data": {"76": "0215..."},
     "service_data": {"0000feaa-0000-1000-8000-00805f9b34fb": "30ec..."}, "ts": 1795000000.1}

A node's ``ts`` is used only when it is within ``max_skew_s`` of the gateway's clock
(ESP32 clocks drift and reboot to 1970); otherwise the receive time is used.

**ESPresense device reports**, on ``espresense/devices/<device id>/<room>``: the room is
the scanner. ESPresense sends fingerprints, not advert bytes, so what can be rebuilt is:
``iBeacon:<uuid>-<major>-<minor>`` becomes iBeacon manufacturer data (``rssi@1m`` as its
measured power), ``altBeacon:<id>`` AltBeacon data, ``eddy:<namespace>-<instance>``
Eddystone-UID service data; any other id is an anonymous device keyed by ``mac`` (or
the id). Rotating Eddystone-EIDs need the raw format: ESPresense does not relay them.

Bounds (checked before anything is decoded): a payload at most ``MAX_PAYLOAD_BYTES``,
at most ``MAX_ADVERTS_PER_MESSAGE`` adverts in one, every advert within the capture
format's bounds (:mod:`storegate.core.ble.capture`); an ESPresense ``id``/``mac`` at
most 64 printable ASCII characters, ``name`` at most 248, ``rssi`` and ``rssi@1m``
-127..20 dBm.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from storegate.core.ble.capture import (
    MAX_DBM,
    MAX_NAME_CHARS,
    MIN_DBM,
    Advert,
    is_sane_epoch,
    parse_advert,
)
from storegate.core.ble.decoders import APPLE, EDDYSTONE_UUID, encode_ibeacon

ALTBEACON_COMPANY: Final = 0x0118  # Radius Networks, the usual AltBeacon company id
MAX_ADVERTS_PER_MESSAGE: Final = 1000
# 1000 adverts of ~200 bytes; refused before JSON decoding spends anything on more
MAX_PAYLOAD_BYTES: Final = 256 * 1024
MAX_ID_CHARS: Final = 64
_IBEACON_ID: Final = re.compile(
    r"^iBeacon:([0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
    r"[0-9a-fA-F]{12})-(\d{1,5})-(\d{1,5})(?:-.*)?$")
_ALTBEACON_ID: Final = re.compile(
    r"^altBeacon:([0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
    r"[0-9a-fA-F]{12})-(\d{1,5})-(\d{1,5})(?:-.*)?$")
_EDDY_ID: Final = re.compile(r"^eddy:([0-9a-fA-F]{20})-([0-9a-fA-F]{12})$")


@dataclass(frozen=True, slots=True)
class NodeRejected:
    """A message that yielded no advert: the reason, for counting and one log line."""

    node: str
    reason: str


def _i8(v: int) -> int:
    return v & 0xFF


def _topic_node(topic: str, index: int) -> str | None:
    parts = topic.split("/")
    if len(parts) <= abs(index):
        return None
    node = parts[index]
    return node or None


def parse_raw_adverts(topic: str, payload: bytes, now: float,
                      max_skew_s: float = 5.0) -> tuple[list[Advert], list[NodeRejected]]:
    """A raw-advert message from ``.../scanners/<node>/adverts``."""
    node = _topic_node(topic, -2) or "?"
    if len(payload) > MAX_PAYLOAD_BYTES:
        return [], [NodeRejected(node, f"payload over {MAX_PAYLOAD_BYTES} bytes")]
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return [], [NodeRejected(node, f"payload is not JSON: {exc}")]
    items: Any = raw.get("adverts") if isinstance(raw, dict) and "adverts" in raw else raw
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        return [], [NodeRejected(node, "expected an advert object or a list of them")]
    if len(items) > MAX_ADVERTS_PER_MESSAGE:
        return [], [NodeRejected(node, f"more than {MAX_ADVERTS_PER_MESSAGE} adverts")]
    adverts: list[Advert] = []
    bad: list[NodeRejected] = []
    for i, obj in enumerate(items):
        if not isinstance(obj, dict):
            bad.append(NodeRejected(node, f"advert {i}: not a JSON object"))
            continue
        try:
            ts = obj.get("ts")
            at = now
            if is_sane_epoch(ts) and abs(ts - now) <= max_skew_s:
                at = min(float(ts), now)  # never ahead of the gateway's clock
            adverts.append(parse_advert({**obj, "scanner": node, "ts": at}))
        except (ValueError, OverflowError) as exc:
            bad.append(NodeRejected(node, f"advert {i}: {exc}"))
    return adverts, bad


def _rebuild(device_id: str, power_1m: int) -> tuple[dict[int, bytes], dict[str, bytes]] | str:
    """The advert data an ESPresense fingerprint stands for (or why it cannot be)."""
    if (m := _IBEACON_ID.match(device_id)) is not None:
        major, minor = int(m.group(2)), int(m.group(3))
        if major > 0xFFFF or minor > 0xFFFF:
            return f"iBeacon major/minor out of range in {device_id!r}"
        return {APPLE: encode_ibeacon(m.group(1), major, minor, power_1m)}, {}
    if (m := _ALTBEACON_ID.match(device_id)) is not None:
        major, minor = int(m.group(2)), int(m.group(3))
        if major > 0xFFFF or minor > 0xFFFF:
            return f"AltBeacon ids out of range in {device_id!r}"
        return {ALTBEACON_COMPANY: (
            b"\xbe\xac" + bytes.fromhex(m.group(1).replace("-", ""))
            + major.to_bytes(2, "big") + minor.to_bytes(2, "big")
            + bytes([_i8(power_1m), 0]))}, {}
    if (m := _EDDY_ID.match(device_id)) is not None:
        return {}, {EDDYSTONE_UUID: (b"\x00" + bytes([_i8(power_1m + 41)])
                                     + bytes.fromhex(m.group(1) + m.group(2)) + b"\x00\x00")}
    return {}, {}


def _json_object(payload: bytes) -> dict[str, Any] | str:
    if len(payload) > MAX_PAYLOAD_BYTES:
        return f"payload over {MAX_PAYLOAD_BYTES} bytes"
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return f"payload is not JSON: {exc}"
    return obj if isinstance(obj, dict) else "payload is not a JSON object"


def _report_ids(obj: dict[str, Any], topic: str) -> tuple[str, str] | str:
    """(device id, address) of an ESPresense report, or why it has none usable."""
    device_id = obj.get("id")
    if not isinstance(device_id, str) or not device_id:
        device_id = _topic_node(topic, -2) or ""
    mac = obj.get("mac")
    address = mac if isinstance(mac, str) and mac else device_id
    if not address:
        return "report has neither id nor mac"
    for what, value in (("id", device_id), ("mac", address)):
        if len(value) > MAX_ID_CHARS or not value.isascii() or not value.isprintable():
            return f"{what} must be at most {MAX_ID_CHARS} printable ASCII characters"
    return device_id, address


def parse_espresense(topic: str, payload: bytes, now: float) -> Advert | NodeRejected:
    """An ESPresense report from ``espresense/devices/<id>/<room>``."""
    room = _topic_node(topic, -1)
    if room is None or topic.count("/") < 3 or len(room) > MAX_ID_CHARS \
            or not room.isprintable():
        return NodeRejected("?", f"not an ESPresense device topic (room at most "
                            f"{MAX_ID_CHARS} printable characters): {topic[:100]!r}")
    obj = _json_object(payload)
    if isinstance(obj, str):
        return NodeRejected(room, obj)
    rssi = obj.get("rssi")
    if isinstance(rssi, float) and rssi.is_integer():
        rssi = int(rssi)
    if isinstance(rssi, bool) or not isinstance(rssi, int) or not MIN_DBM <= rssi <= MAX_DBM:
        return NodeRejected(room, f"rssi must be an integer dBm in {MIN_DBM}..{MAX_DBM}")
    ids = _report_ids(obj, topic)
    if isinstance(ids, str):
        return NodeRejected(room, ids)
    device_id, address = ids
    power = obj.get("rssi@1m")
    # NaN and infinities fail the range test, so they too fall back to the default
    power_1m = int(power) if isinstance(power, int | float) and not isinstance(power, bool) \
        and MIN_DBM <= power <= MAX_DBM else -59
    frames = _rebuild(device_id, power_1m)
    if isinstance(frames, str):
        return NodeRejected(room, frames)
    manufacturer, service = frames
    name = obj.get("name")
    return Advert(ts=now, scanner=room, address=address, rssi=rssi,
                  manufacturer_data=manufacturer, service_data=service,
                  name=name if isinstance(name, str) and len(name) <= MAX_NAME_CHARS
                  else None)
