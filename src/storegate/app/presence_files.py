"""Files of the presence pipeline: the identity registry and presence settings.

The registry is a JSON list of enrolled identities (consenting customers only):

    [{"customer": "<pseudonym>", "identity_key": "<32 hex chars>", "rotation_exponent": K,
      "beacon_time_at_registration": <int seconds>, "registered_at": <epoch seconds>}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from storegate.config import PresenceConfig
from storegate.core.ble.eid import Identity
from storegate.core.presence.settings import PresenceSettings, Zone
from storegate.errors import ConfigError


class IdentityRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer: str = Field(min_length=1, max_length=128)
    identity_key: str = Field(pattern=r"^[0-9a-fA-F]{32}$")
    rotation_exponent: int = Field(ge=0, le=15)
    beacon_time_at_registration: int = Field(ge=0, lt=1 << 32)
    registered_at: float

    @field_validator("customer")
    @classmethod
    def _pseudonym(cls, v: str) -> str:
        if ":" in v and len(v) == 17:
            raise ValueError("looks like a MAC address: customers are pseudonyms")
        return v

    def identity(self) -> Identity:
        return Identity(self.customer, bytes.fromhex(self.identity_key),
                        self.rotation_exponent, self.beacon_time_at_registration,
                        self.registered_at)


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
    return [{"customer": i.customer, "identity_key": i.identity_key.hex(),
             "rotation_exponent": i.rotation_exponent,
             "beacon_time_at_registration": i.beacon_time_at_registration,
             "registered_at": i.registered_at} for i in identities]


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
