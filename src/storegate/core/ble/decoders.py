"""BLE advertisement decoders: bytes in, typed frames out, never an exception.

Input is what bleak hands over: ``manufacturer_data`` keyed by company id (the two id
bytes already stripped) and ``service_data`` keyed by the full 128-bit UUID string.
Every decoder returns ``None`` for anything that is not exactly its frame; the caller
counts those, nothing here logs or raises.

Defects seen in peer decoders, avoided here and pinned by test vectors:

* iBeacon major/minor are **unsigned** 16-bit (values >= 32768 are common);
* AltBeacon's ``BE AC`` code is the first two bytes *after* the company id, and may
  appear under any company id (it is not a company id);
* truncated frames are rejected, never padded; bytes past a frame's end are ignored only
  where the format itself delimits the frame (Apple's type-length records);
* BlueZ can keep stale manufacturer keys from earlier adverts of the same address, so
  every key is decoded on its own merit, never "the first one".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

APPLE: Final = 0x004C
EDDYSTONE_UUID: Final = "0000feaa-0000-1000-8000-00805f9b34fb"
EDDYSTONE_1M_LOSS_DB: Final = 41  # Eddystone tx power is at 0 m; 1 m is 41 dB lower

_URL_SCHEMES: Final = ("http://www.", "https://www.", "http://", "https://")
_URL_CODES: Final = (
    ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/",
    ".com", ".org", ".edu", ".net", ".info", ".biz", ".gov",
)


def _i8(b: int) -> int:
    return b - 256 if b > 127 else b


def _uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class IBeacon:
    uuid: str
    major: int  # unsigned 16-bit
    minor: int  # unsigned 16-bit
    power_1m: int  # measured RSSI at 1 m, dBm


@dataclass(frozen=True, slots=True)
class AltBeacon:
    company_id: int
    beacon_id: str  # 20 bytes, hex; usually UUID(16) + 2 + 2
    power_1m: int  # reference RSSI at 1 m, dBm
    reserved: int


@dataclass(frozen=True, slots=True)
class EddystoneUid:
    namespace: str  # 10 bytes, hex
    instance: str  # 6 bytes, hex
    power_0m: int

    @property
    def power_1m(self) -> int:
        return self.power_0m - EDDYSTONE_1M_LOSS_DB


@dataclass(frozen=True, slots=True)
class EddystoneUrl:
    url: str
    power_0m: int

    @property
    def power_1m(self) -> int:
        return self.power_0m - EDDYSTONE_1M_LOSS_DB


@dataclass(frozen=True, slots=True)
class EddystoneTlm:
    battery_mv: int  # 0: not supported
    temperature_c: float | None  # None: not supported (0x8000)
    adv_count: int
    uptime_s: float


@dataclass(frozen=True, slots=True)
class EddystoneEid:
    eid: bytes  # 8 bytes: resolve with the identity registry
    power_0m: int

    @property
    def power_1m(self) -> int:
        return self.power_0m - EDDYSTONE_1M_LOSS_DB


Frame = IBeacon | AltBeacon | EddystoneUid | EddystoneUrl | EddystoneTlm | EddystoneEid


def decode_ibeacon(data: bytes) -> IBeacon | None:
    """Apple manufacturer data (company id stripped): type 0x02, length 0x15, 21 bytes.

    Apple's data is a sequence of type-length records; the iBeacon record may be
    followed by others, so bytes after its declared length are not an error.
    """
    if len(data) < 23 or data[0] != 0x02 or data[1] != 0x15:
        return None
    return IBeacon(
        uuid=_uuid(data[2:18]),
        major=int.from_bytes(data[18:20], "big"),
        minor=int.from_bytes(data[20:22], "big"),
        power_1m=_i8(data[22]),
    )


def encode_ibeacon(uuid: str, major: int, minor: int, power_1m: int) -> bytes:
    """The Apple manufacturer data (company id stripped) that :func:`decode_ibeacon`
    reads back; ``uuid`` dashed or not."""
    return (b"\x02\x15" + bytes.fromhex(uuid.replace("-", "")) + major.to_bytes(2, "big")
            + minor.to_bytes(2, "big") + bytes([power_1m & 0xFF]))


def decode_altbeacon(company_id: int, data: bytes) -> AltBeacon | None:
    """``BE AC`` + beacon id (20) + reference RSSI + reserved: exactly 24 bytes."""
    if len(data) != 24 or data[0] != 0xBE or data[1] != 0xAC:
        return None
    return AltBeacon(company_id, data[2:22].hex(), _i8(data[22]), data[23])


def _decode_url(data: bytes) -> EddystoneUrl | None:
    # 10, tx, scheme, 1..17 encoded bytes
    if not 4 <= len(data) <= 20 or data[2] >= len(_URL_SCHEMES):
        return None
    parts = [_URL_SCHEMES[data[2]]]
    for b in data[3:]:
        if b < len(_URL_CODES):
            parts.append(_URL_CODES[b])
        elif 0x21 <= b <= 0x7E:
            parts.append(chr(b))
        else:  # 0x0E-0x20 and 0x7F-0xFF are reserved: not a valid URL frame
            return None
    return EddystoneUrl("".join(parts), _i8(data[1]))


def _decode_uid(data: bytes) -> EddystoneUid | None:
    # 00, tx, namespace(10), instance(6) [, reserved(2)]
    if len(data) not in (18, 20):
        return None
    return EddystoneUid(data[2:12].hex(), data[12:18].hex(), _i8(data[1]))


def _decode_tlm(data: bytes) -> EddystoneTlm | None:
    # 20, version 00 (unencrypted), battery mV, temp 8.8, adv count, uptime 0.1 s
    if len(data) != 14 or data[1] != 0x00:
        return None
    raw_t = int.from_bytes(data[4:6], "big", signed=True)
    return EddystoneTlm(
        battery_mv=int.from_bytes(data[2:4], "big"),
        temperature_c=None if raw_t == -0x8000 else raw_t / 256,
        adv_count=int.from_bytes(data[6:10], "big"),
        uptime_s=int.from_bytes(data[10:14], "big") / 10,
    )


def _decode_eid(data: bytes) -> EddystoneEid | None:
    # 30, tx, EID(8)
    if len(data) != 10:
        return None
    return EddystoneEid(bytes(data[2:10]), _i8(data[1]))


Eddystone = EddystoneUid | EddystoneUrl | EddystoneTlm | EddystoneEid
_EDDYSTONE: Final[dict[int, Callable[[bytes], Eddystone | None]]] = {
    0x00: _decode_uid, 0x10: _decode_url, 0x20: _decode_tlm, 0x30: _decode_eid,
}


def decode_eddystone(data: bytes) -> Eddystone | None:
    """Eddystone service data (UUID 0xFEAA), by frame type."""
    if len(data) < 2:
        return None
    decoder = _EDDYSTONE.get(data[0])
    return decoder(data) if decoder is not None else None


def decode_advert(
    manufacturer_data: Mapping[int, bytes], service_data: Mapping[str, bytes]
) -> list[Frame]:
    """Every frame an advert carries, each key decoded on its own."""
    frames: list[Frame] = []
    for company_id, data in manufacturer_data.items():
        frame: Frame | None = None
        if company_id == APPLE:
            frame = decode_ibeacon(data)
        if frame is None:
            frame = decode_altbeacon(company_id, data)
        if frame is not None:
            frames.append(frame)
    eddy = service_data.get(EDDYSTONE_UUID)
    if eddy is not None:
        e = decode_eddystone(eddy)
        if e is not None:
            frames.append(e)
    return frames
