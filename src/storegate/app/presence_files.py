"""Files of the presence pipeline: the identity registry and presence settings.

The registry is a JSON list of enrolled identities (consenting customers only):

    [{"customer": "<pseudonym>", "identity_key": "<32 hex chars>", "rotation_exponent": K,
      "beacon_time_at_registration": <int seconds>, "registered_at": <epoch seconds>}]
"""

from __future__ import annotations

import json
import os
import tomllib
import uuid
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from storegate.config import PresenceConfig
from storegate.core.ble.eid import EidResolver, Identity
from storegate.core.commands import IdentityRecord
from storegate.core.presence.infrastructure import Beacon, Infrastructure, Kind
from storegate.core.presence.pipeline import PresencePipeline
from storegate.core.presence.settings import PresenceSettings, Zone
from storegate.errors import ConfigError


def parse_identities(raw: Any, source: str) -> list[Identity]:
    if not isinstance(raw, list):
        raise ConfigError(source, "an identity registry is a JSON list of records")
    out = []
    for i, rec in enumerate(raw):
        try:
            out.append(IdentityRecord.model_validate(rec).identity())
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(x) for x in first["loc"]) or "record"
            raise ConfigError(source, first["msg"], f"[{i}].{key}") from exc
    return out


def load_identities(path: Path) -> list[Identity]:
    try:
        raw = json.loads(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(str(path), "file not found") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), f"not a readable JSON file: {exc}") from exc
    return parse_identities(raw, str(path))


def identity_records(identities: list[Identity]) -> list[dict[str, Any]]:
    return [IdentityRecord.of(i).model_dump() for i in identities]


# --- infrastructure beacons (firmware-configs/<store>/beacons.toml) ------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IBeaconMatch(_Strict):
    uuid: str
    major: int | None = Field(default=None, ge=0, le=0xFFFF)
    minor: int | None = Field(default=None, ge=0, le=0xFFFF)

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, v: str) -> str:
        return str(uuid.UUID(v))

    @model_validator(mode="after")
    def _minor_needs_major(self) -> IBeaconMatch:
        if self.minor is not None and self.major is None:
            raise ValueError("minor without major: give both, or major alone")
        return self


class EddystoneUidMatch(_Strict):
    namespace: str = Field(pattern=r"^[0-9a-fA-F]{20}$")
    instance: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{12}$")


class AltBeaconMatch(_Strict):
    id: str = Field(pattern=r"^[0-9a-fA-F]{40}$", description="Beacon id, 20 bytes hex.")


class BeaconRecord(_Strict):
    label: str = Field(min_length=1, max_length=64)
    kind: Kind
    zone: str | None = None
    ibeacon: IBeaconMatch | None = None
    eddystone_uid: EddystoneUidMatch | None = None
    altbeacon: AltBeaconMatch | None = None

    @model_validator(mode="after")
    def _one_match(self) -> BeaconRecord:
        given = [m for m in (self.ibeacon, self.eddystone_uid, self.altbeacon) if m]
        if len(given) != 1:
            raise ValueError("give exactly one of ibeacon, eddystone_uid, altbeacon")
        return self

    def beacon(self) -> Beacon:
        ib, uid, alt = self.ibeacon, self.eddystone_uid, self.altbeacon
        return Beacon(
            label=self.label, kind=self.kind, zone=self.zone,
            ibeacon_uuid=ib.uuid if ib else None, major=ib.major if ib else None,
            minor=ib.minor if ib else None,
            eddystone_namespace=uid.namespace.lower() if uid else None,
            eddystone_instance=uid.instance.lower() if uid and uid.instance else None,
            altbeacon_id=alt.id.lower() if alt else None,
        )


def load_beacons(path: Path) -> list[Beacon]:
    """The ``[[beacon]]`` tables of a beacons.toml; errors name the file and the entry."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(str(path), "file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    unknown = set(data) - {"beacon"}
    if unknown:
        raise ConfigError(str(path), f"unknown table(s) {sorted(unknown)}: only [[beacon]]")
    records = data.get("beacon", [])
    if not isinstance(records, list):
        raise ConfigError(str(path), "beacons are [[beacon]] tables")
    out: list[Beacon] = []
    labels: set[str] = set()
    for i, rec in enumerate(records):
        try:
            b = BeaconRecord.model_validate(rec).beacon()
        except ValidationError as exc:
            first = exc.errors()[0]
            key = "".join(f".{x}" for x in first["loc"])
            raise ConfigError(str(path), first["msg"], f"beacon[{i}]{key}") from exc
        if b.label in labels:
            raise ConfigError(str(path), f"label {b.label!r} is used twice", f"beacon[{i}]")
        labels.add(b.label)
        out.append(b)
    return out


def presence_settings(cfg: PresenceConfig) -> PresenceSettings:
    return PresenceSettings(
        zones=tuple(Zone(z.id, tuple(z.scanners), z.min_rssi_dbm) for z in cfg.zones),
        min_presence_s=cfg.min_presence_s,
        zone_min_presence_s=cfg.zone_min_presence_s,
        exit_after_s=cfg.exit_after_s,
        dwell_thresholds_s=tuple(cfg.dwell_thresholds_s),
        inside_min_rssi_dbm=cfg.inside_min_rssi_dbm,
        window_s=cfg.window_s,
        switch_margin_db=cfg.switch_margin_db,
        switch_hold_s=cfg.switch_hold_s,
    )


def config_beacons(cfg: PresenceConfig) -> Infrastructure:
    """The store's infrastructure beacons named by the config (none without a file)."""
    return Infrastructure(load_beacons(cfg.beacons_file) if cfg.beacons_file else [])


def presence_pipeline(cfg: PresenceConfig, beacons: Infrastructure,
                      footfall_secret: bytes | None = None) -> PresencePipeline:
    """The pure pipeline as the config sets it up (for ``run`` and ``replay``)."""
    return PresencePipeline(
        presence_settings(cfg), EidResolver(), os.urandom, footfall_secret,
        infrastructure=beacons, footfall_period_s=cfg.footfall_period_s,
        occupancy_interval_s=cfg.occupancy_interval_s,
    )
