"""Files of the presence pipeline: the identity registry and presence settings.

The registry is a JSON list of enrolled identities (consenting customers only):

    [{"customer": "<pseudonym>", "identity_key": "<32 hex chars>", "rotation_exponent": K,
      "beacon_time_at_registration": <int seconds>, "registered_at": <epoch seconds>}]

Both files here are data files: a problem with one is a :class:`DataFileError` naming
the file and the entry, never a traceback. Bounds: a file at most ``MAX_FILE_BYTES``,
at most ``MAX_IDENTITIES`` identities and ``MAX_BEACONS`` beacons; every record as
:class:`~storegate.core.identity_records.IdentityRecord` and
:class:`~storegate.core.ble.eid.Identity` validate it (finite numbers only).
"""

from __future__ import annotations

import json
import math
import os
import tomllib
import uuid
from pathlib import Path
from typing import Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from storegate.config import PLAN_MAX_M, CalibrationConfig, PresenceConfig, toml_problem
from storegate.core.ble.eid import EidResolver, Identity
from storegate.core.identity_records import IdentityRecord
from storegate.core.presence.calibration import Calibrator
from storegate.core.presence.infrastructure import Beacon, Infrastructure, Kind
from storegate.core.presence.pipeline import PresencePipeline
from storegate.core.presence.settings import PresenceSettings, Zone
from storegate.errors import DataFileError

MAX_FILE_BYTES: Final = 512 * 1024 * 1024  # a million identities are ~200 MB of JSON
MAX_IDENTITIES: Final = 1_000_000  # as many as one identities command may carry
MAX_BEACONS: Final = 10_000


def read_data_file(path: Path) -> str:
    """The text of a data file, or a DataFileError saying why not (missing, a folder,
    unreadable, too big, not UTF-8)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise DataFileError(str(path), "file not found") from exc
    except OSError as exc:
        raise DataFileError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise DataFileError(str(path), f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataFileError(str(path), f"not UTF-8 text: {exc}") from exc


def parse_identities(raw: Any, source: str) -> list[Identity]:
    if not isinstance(raw, list):
        raise DataFileError(source, "an identity registry is a JSON list of records")
    if len(raw) > MAX_IDENTITIES:
        raise DataFileError(source, f"more than {MAX_IDENTITIES} identities")
    out = []
    for i, rec in enumerate(raw):
        try:
            out.append(IdentityRecord.model_validate(rec).identity())
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(x) for x in first["loc"]) or "record"
            raise DataFileError(source, first["msg"], f"[{i}].{key}") from exc
        except ValueError as exc:  # the Identity's own checks (finite numbers...)
            raise DataFileError(source, str(exc), f"[{i}]") from exc
    return out


def load_identities(path: Path) -> list[Identity]:
    text = read_data_file(path)
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DataFileError(str(path), f"not JSON: {exc}") from exc
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
    position: list[float] | None = Field(
        default=None, description="[x, y] or [x, y, z] metres on the floor plan "
        "(calibration.scanners' origin): the beacon then calibrates the scanners.")
    # What the beacon is set to send (firmware-configs, `storegate firmware validate`):
    # the fleet's record for re-flashing and battery planning; presence does not use them.
    tx_power_dbm: int | None = Field(default=None, ge=-40, le=20,
                                     description="Transmit power setting, dBm.")
    interval_ms: int | None = Field(default=None, ge=20, le=10240,
                                    description="Advertising interval, ms (BLE: 20-10240).")

    @model_validator(mode="after")
    def _one_match(self) -> BeaconRecord:
        given = [m for m in (self.ibeacon, self.eddystone_uid, self.altbeacon) if m]
        if len(given) != 1:
            raise ValueError("give exactly one of ibeacon, eddystone_uid, altbeacon")
        return self

    @model_validator(mode="after")
    def _one_place(self) -> BeaconRecord:
        # One position is one beacon: a rule that covers a fleet (badges, tags: no minor
        # or instance) or a beacon that moves cannot say where its adverts come from.
        if self.position is None:
            return self
        if len(self.position) not in (2, 3) or not all(
                math.isfinite(c) and abs(c) <= PLAN_MAX_M for c in self.position):
            raise ValueError(f"position: [x, y] or [x, y, z] in metres, each finite and "
                             f"within {PLAN_MAX_M:.0f} m, got {self.position}")
        if self.kind not in ("zone", "fixture"):
            raise ValueError(f"position: only a fixed beacon (kind zone or fixture) has "
                             f"one, not a {self.kind} beacon")
        ib, uid = self.ibeacon, self.eddystone_uid
        if (ib is not None and ib.minor is None) or (uid is not None and uid.instance is None):
            raise ValueError("position: this rule matches many beacons (give the iBeacon's "
                             "major and minor, or the Eddystone instance)")
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
            position=tuple(self.position) if self.position is not None else None,
        )


def load_beacons(path: Path) -> list[Beacon]:
    """The ``[[beacon]]`` tables of a beacons.toml; errors name the file and the entry."""
    text = read_data_file(path)
    try:
        data = tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # see toml_problem
        raise DataFileError(str(path), f"not valid TOML: {toml_problem(exc)}") from exc
    unknown = set(data) - {"beacon"}
    if unknown:
        raise DataFileError(str(path), f"unknown table(s) {sorted(unknown)}: only [[beacon]]")
    records = data.get("beacon", [])
    if not isinstance(records, list):
        raise DataFileError(str(path), "beacons are [[beacon]] tables")
    if len(records) > MAX_BEACONS:
        raise DataFileError(str(path), f"more than {MAX_BEACONS} beacons")
    out: list[Beacon] = []
    labels: set[str] = set()
    for i, rec in enumerate(records):
        try:
            b = BeaconRecord.model_validate(rec).beacon()
        except ValidationError as exc:
            first = exc.errors()[0]
            key = "".join(f".{x}" for x in first["loc"])
            raise DataFileError(str(path), first["msg"], f"beacon[{i}]{key}") from exc
        if b.label in labels:
            raise DataFileError(str(path), f"label {b.label!r} is used twice", f"beacon[{i}]")
        labels.add(b.label)
        out.append(b)
    return out


def presence_settings(cfg: PresenceConfig) -> PresenceSettings:
    return PresenceSettings(
        zones=tuple(Zone(z.id, tuple(z.scanners), z.min_rssi_dbm, entrance=z.entrance,
                         transit=z.transit, front=z.front) for z in cfg.zones),
        min_presence_s=cfg.min_presence_s,
        zone_min_presence_s=cfg.zone_min_presence_s,
        exit_after_s=cfg.exit_after_s,
        dwell_thresholds_s=tuple(cfg.dwell_thresholds_s),
        inside_min_rssi_dbm=cfg.inside_min_rssi_dbm,
        window_s=cfg.window_s,
        switch_margin_db=cfg.switch_margin_db,
        switch_hold_s=cfg.switch_hold_s,
        interior_margin_db=cfg.interior_margin_db,
        stay_margin_db=cfg.stay_margin_db,
        entry_confirm_s=cfg.entry_confirm_s,
        front_confirm_s=cfg.front_confirm_s,
        front_only_confirm_s=cfg.front_only_confirm_s,
        entry_clear_z=cfg.entry_clear_z,
        entry_clear_ratio=cfg.entry_clear_ratio,
        entry_clear_s=cfg.entry_clear_s,
        outside_after_s=cfg.outside_after_s,
        silence_hold_s=cfg.silence_hold_s,
        sparse_window_s=cfg.sparse_window_s,
        clear_of_door_db=cfg.clear_of_door_db,
    )


def config_beacons(cfg: PresenceConfig) -> Infrastructure:
    """The store's infrastructure beacons named by the config (none without a file)."""
    return Infrastructure(load_beacons(cfg.beacons_file) if cfg.beacons_file else [])


def calibrator(cfg: CalibrationConfig, presence: PresenceConfig,
               beacons: Infrastructure) -> Calibrator | None:
    """The self-calibration the floor plan allows: None when it is switched off; a
    calibrator that reports ``no-plan`` when no positioned scanner and beacon exist."""
    if not cfg.enabled:
        return None
    return Calibrator(
        {s: tuple(p) for s, p in cfg.scanners.items()},
        {b.label: b.position for b in beacons.beacons if b.position is not None},
        all_scanners=[s for z in presence.zones for s in z.scanners],
        window_s=cfg.window_s, bucket_s=cfg.bucket_s, interval_s=cfg.interval_s)


def presence_pipeline(cfg: PresenceConfig, beacons: Infrastructure,
                      footfall_secret: bytes | None = None, *,
                      calibration: CalibrationConfig | None = None,
                      fit_inline: bool = True) -> PresencePipeline:
    """The pure pipeline as the config sets it up (for ``run`` and ``replay``; ``run``
    fits the calibration on a worker thread, ``fit_inline=False``)."""
    return PresencePipeline(
        presence_settings(cfg), EidResolver(), os.urandom, footfall_secret,
        infrastructure=beacons, footfall_period_s=cfg.footfall_period_s,
        occupancy_interval_s=cfg.occupancy_interval_s,
        calibrator=calibrator(calibration, cfg, beacons) if calibration else None,
        fit_inline=fit_inline,
    )
