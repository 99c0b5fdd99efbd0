"""Fixed infrastructure beacons: zone beacons, staff badges, trolley tags.

They come from the store's ``firmware-configs/<store>/beacons.toml`` and are classified
here, so they are never counted as shoppers. A rule matches an iBeacon by UUID (and
optionally major, minor), an Eddystone-UID by namespace (and optionally instance), or an
AltBeacon by beacon id. Pure: frames in, the matching beacon (or None) out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from storegate.core.ble.decoders import (
    APPLE,
    EDDYSTONE_UUID,
    AltBeacon,
    EddystoneUid,
    IBeacon,
    decode_altbeacon,
    decode_eddystone,
    decode_ibeacon,
)

Kind = Literal["zone", "staff", "trolley", "fixture"]
KINDS: tuple[Kind, ...] = ("zone", "staff", "trolley", "fixture")


@dataclass(frozen=True, slots=True)
class Beacon:
    """One rule of beacons.toml (a rule may cover many badges: uuid + major, any minor)."""

    label: str
    kind: Kind
    zone: str | None = None
    ibeacon_uuid: str | None = None  # lower-case, dashed
    major: int | None = None
    minor: int | None = None
    eddystone_namespace: str | None = None  # lower-case hex
    eddystone_instance: str | None = None
    altbeacon_id: str | None = None  # lower-case hex, 20 bytes
    # metres on the store's floor plan, (x, y) or (x, y, z): a zone beacon at a known
    # place calibrates the scanners that hear it (core/presence/calibration.py)
    position: tuple[float, ...] | None = None


class Infrastructure:
    """Looks adverts up in the store's beacon list; O(1) per frame."""

    def __init__(self, beacons: Iterable[Beacon]) -> None:
        self.beacons = tuple(beacons)
        self._ibeacon: dict[tuple[str, int | None, int | None], Beacon] = {}
        self._uid: dict[tuple[str, str | None], Beacon] = {}
        self._alt: dict[str, Beacon] = {}
        for b in self.beacons:
            if b.ibeacon_uuid is not None:
                self._ibeacon[(b.ibeacon_uuid, b.major, b.minor)] = b
            elif b.eddystone_namespace is not None:
                self._uid[(b.eddystone_namespace, b.eddystone_instance)] = b
            elif b.altbeacon_id is not None:
                self._alt[b.altbeacon_id] = b

    def __bool__(self) -> bool:
        return bool(self.beacons)

    def _match_ibeacon(self, f: IBeacon) -> Beacon | None:
        t = self._ibeacon
        return (t.get((f.uuid, f.major, f.minor)) or t.get((f.uuid, f.major, None))
                or t.get((f.uuid, None, None)))

    def _match_uid(self, f: EddystoneUid) -> Beacon | None:
        return self._uid.get((f.namespace, f.instance)) or self._uid.get((f.namespace, None))

    def _match_alt(self, f: AltBeacon) -> Beacon | None:
        return self._alt.get(f.beacon_id)

    def classify(self, manufacturer_data: Mapping[int, bytes],
                 service_data: Mapping[str, bytes]) -> Beacon | None:
        """The infrastructure beacon this advert comes from, if it is one."""
        if not self.beacons:
            return None
        for company, data in manufacturer_data.items():
            if company == APPLE and self._ibeacon:
                ib = decode_ibeacon(data)
                if ib is not None and (hit := self._match_ibeacon(ib)) is not None:
                    return hit
            if self._alt:
                alt = decode_altbeacon(company, data)
                if alt is not None and (hit := self._match_alt(alt)) is not None:
                    return hit
        if self._uid:
            eddy = service_data.get(EDDYSTONE_UUID)
            if eddy is not None:
                uid = decode_eddystone(eddy)
                if isinstance(uid, EddystoneUid):
                    return self._match_uid(uid)
        return None
