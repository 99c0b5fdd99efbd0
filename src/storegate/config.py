"""The configuration: one TOML file, validated once at start, overridable by environment.

Every problem is reported as a :class:`~storegate.errors.ConfigError` naming the file
(or environment variable), the dotted key and what is wrong: never a traceback.

Environment variables ``STOREGATE_<SECTION>__<KEY>`` override the file, ``__``
separating levels: ``STOREGATE_MQTT__PASSWORD`` sets ``mqtt.password``. Secrets belong
there (or in a systemd credential), not in the file.
"""

from __future__ import annotations

import codecs
import os
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from storegate.core.personal.campaigns import TAG_PATTERN as CATEGORY_PATTERN
from storegate.core.personal.offers import OfferPolicy
from storegate.core.personal.stitching import StitchingSettings
from storegate.core.personal.tokens import KID_PATTERN as TOKEN_KID_PATTERN
from storegate.core.personal.tokens import key_id as token_key_id
from storegate.core.pseudonyms import PersonalData, parse_key
from storegate.core.topics import (
    ID_RULE,
    RESERVED_GATEWAY_IDS,
    RESERVED_STORE_IDS,
    is_valid_id,
)
from storegate.core.trust import KID_PATTERN, load_public_key
from storegate.core.webauth import KID_RE as WEB_KID_RE
from storegate.core.webauth import check_hash_format, load_ed25519_public
from storegate.errors import ConfigError

ENV_PREFIX: Final = "STOREGATE_"
ENV_CONFIG: Final = "STOREGATE_CONFIG"  # names the file; not an override
DEMO_CONFIG: Final = "demo.toml"
MIB: Final = 1024 * 1024
PACKAGE_PREFIX: Final = "package:"  # a path shipped inside storegate (the demo store's)


class Section(BaseModel):
    # allow_inf_nan=False: TOML has `inf` and `nan`, and `shutdown_drain_s = inf` passes
    # every `ge=0`; no setting of ours means anything infinite.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TlsConfig(Section):
    ca_file: Path | None = Field(default=None, description="CA bundle to verify the broker.")
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM).")
    key_file: Path | None = Field(default=None, description="Client private key (PEM).")
    insecure: bool = Field(default=False, description="Skip host name check (testing only).")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self


class MqttConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description="MQTT 5 reports a publish the broker refuses (e.g. denied by its ACL) "
        "and storegate keeps and retries it; 3.1.1 cannot, so such events are lost "
        "(storegate status warns).",
    )
    client_id: str | None = Field(
        default=None, description="Defaults to storegate-<store_id>-<gateway_id>."
    )
    username: str | None = None
    password: SecretStr | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    max_inflight: int = Field(
        default=20, ge=1, le=1000,
        description="Unacknowledged publishes at most (also capped by the broker).",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0, le=120)
    reconnect_min_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    tls: TlsConfig | None = None

    @model_validator(mode="after")
    def _backoff(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


class RetentionConfig(Section):
    max_rows: int | None = Field(default=2_000_000, ge=1)
    max_bytes: int | None = Field(default=1024 * MIB, ge=MIB)
    max_age_s: float | None = Field(default=30 * 24 * 3600, gt=0)


class StorageConfig(Section):
    path: Path = Path("/var/lib/storegate/outbox.db")
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="'full' survives power loss; 'normal' survives a crashed process only.",
    )
    retention: RetentionConfig = RetentionConfig()
    replay_window_s: float = Field(
        default=3600.0, ge=0,
        description="Keep acknowledged events this long to answer replay commands "
        "(central asks when it sees a sequence gap, e.g. after a broker crash). 0: off.",
    )
    shutdown_drain_s: float = Field(
        default=10.0, ge=0, description="On SIGTERM, publish what is pending for this long."
    )
    status_file: Path | None = Field(
        default=None, description="The live status file (rewritten every 2 s): on a "
        "Raspberry Pi put it on /run (RAM), not the SD card. Default: beside the outbox.")


class TelemetrySource(Section):
    enabled: bool = True
    interval_s: float = Field(default=60.0, ge=1)


class BleAdapterConfig(Section):
    adapter: str = Field(default="hci0", min_length=1, description="BlueZ adapter name.")
    scanner: str = Field(min_length=1, description="Scanner name, as zones list it.")


class BleSource(Section):
    """The box's own Bluetooth adapters, read with bleak (BlueZ)."""

    enabled: bool = False
    mode: Literal["active", "passive"] = Field(
        default="active",
        description="active: scan requests (more data, more airtime); passive: BlueZ "
        "advertisement monitor (silent; needs BlueZ experimental features on older kernels).",
    )
    adapters: list[BleAdapterConfig] = Field(default=[], description="One scan per adapter.")
    stall_after_s: float = Field(
        default=60.0, ge=0,
        description="No adverts for this long: restart discovery (a store is never silent). "
        "0: off.",
    )
    restart_min_s: float = Field(default=1.0, gt=0)
    restart_max_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _adapters(self) -> BleSource:
        if self.enabled and not self.adapters:
            raise ValueError("enabled without adapters: add [[sources.ble.adapters]]")
        names = [a.adapter for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError("an adapter is listed twice")
        if self.restart_min_s > self.restart_max_s:
            raise ValueError("restart_min_s is above restart_max_s")
        return self


class ScannerNodesSource(Section):
    """ESP32 scanner nodes reporting over the store's MQTT broker (the [mqtt] one)."""

    enabled: bool = False
    espresense_topic: str | None = Field(
        default="espresense/devices/#",
        description="ESPresense device reports; the room is the scanner. Empty: off.",
    )
    raw_adverts: bool = Field(
        default=True,
        description="Raw adverts on storegate/v1/<store>/scanners/<node>/adverts.",
    )
    max_clock_skew_s: float = Field(
        default=5.0, ge=0, description="A node timestamp further off uses the receive time."
    )
    silent_after_s: float = Field(
        default=60.0, gt=0, description="A node not heard for this long shows as silent."
    )


class SimulatorSource(Section):
    """Simulated shoppers walking the demo store (for the demo and for trying things)."""

    enabled: bool = False
    app_users: int = Field(default=30, ge=0, le=10_000)
    other_devices: int = Field(default=40, ge=0, le=10_000)
    passers_by: int = Field(default=20, ge=0, le=10_000)
    hour_s: float = Field(default=600.0, ge=60, description="Length of one simulated run.")
    seed: int = 1
    registry_from_central: bool = Field(
        default=False, description="The app users' registry records (consents, profile, "
        "pickup orders) come from central's customers commands, as in production (the "
        "demo enrols them in central); false: made on the box as central would send them.")


class LaneSimulatorSource(Section):
    """A simulated checkout lane on pseudo-terminals, read by the real serial taps."""

    enabled: bool = False
    lane: str = Field(default="lane-1", description="The [[pos.lanes]] lane to simulate "
                      "(\"*\": every lane); its device ports become pty links.")
    every_s: float = Field(default=20.0, ge=1, description="A customer this often.")
    seed: int = 1


class SourcesConfig(Section):
    telemetry: TelemetrySource = TelemetrySource()
    lane_simulator: LaneSimulatorSource = LaneSimulatorSource()
    ble: BleSource = BleSource()
    scanner_nodes: ScannerNodesSource = ScannerNodesSource()
    simulator: SimulatorSource = SimulatorSource()


class ZoneConfig(Section):
    id: str = Field(min_length=1, max_length=64)
    scanners: list[str] = Field(min_length=1, description="Scanners placed in this zone.")
    min_rssi_dbm: float | None = Field(
        default=None, ge=-120, le=0, description="Closer than this to count as in the zone "
        "(a checkout lane wants more). Unset: derived from the calibration fit (the zone's "
        "radius on the plan), -80 dBm while there is none.")
    entrance: bool = Field(default=False, description="A door zone: its scanners also hear "
                           "the pavement, so a store visit needs interior evidence; passed "
                           "through, never a zone visit.")
    transit: bool = Field(default=False, description="Passed through (a corridor): never a "
                          "zone visit of its own.")
    front: bool = Field(default=False, description="On the shop front (a checkout by the "
                        "window): its scanners hear the pavement too, so entry confirmed "
                        "here takes front_confirm_s.")


class PresenceConfig(Section):
    """Presence tuning; defaults are the values measured on the simulated store."""

    identities_file: Path | None = Field(
        default=None, description="JSON list of enrolled identities (consenting customers)."
    )
    beacons_file: Path | None = Field(
        default=None,
        description="The store's infrastructure beacons (firmware-configs/<store>/beacons.toml).",
    )
    zones: list[ZoneConfig] = []
    footfall_period_s: float = Field(default=300.0, ge=60, le=86400)
    occupancy_interval_s: float = Field(default=60.0, ge=5, le=3600)
    min_presence_s: float = Field(default=20.0, ge=0)
    zone_min_presence_s: float = Field(default=25.0, ge=0, description="A zone visit: "
                                       "longer than walking through the largest zone.")
    exit_after_s: float = Field(default=10.0, gt=0)
    dwell_thresholds_s: list[float] = [60.0, 300.0, 900.0]
    inside_min_rssi_dbm: float = Field(default=-82.0, ge=-120, le=0)
    window_s: float = Field(default=6.0, gt=0)
    switch_margin_db: float = Field(default=3.0, ge=0)
    switch_hold_s: float = Field(default=1.5, ge=0)
    # the door rules (a zone with entrance = true; docs/presence.md "The door")
    interior_margin_db: float = Field(default=0.0, ge=-10, le=20, description="Inside: an "
                                      "interior zone heard within this of the entrance.")
    stay_margin_db: float = Field(default=3.0, ge=0, le=20, description="Once inside, the "
                                  "margin widens to this (no flapping at the door).")
    entry_confirm_s: float = Field(default=10.0, ge=0, le=600, description="Interior "
                                   "evidence beyond the shop front, after a pass under the "
                                   "entrance scanner, for this long opens a store visit.")
    front_confirm_s: float = Field(default=30.0, ge=0, le=600, description="The same for "
                                   "evidence in a front zone (people walk along the window) "
                                   "or without a door pass: in one zone for this long.")
    front_only_confirm_s: float = Field(default=60.0, ge=0, le=600, description="Evidence "
                                        "on the shop front alone, with no door pass: in "
                                        "one zone for this long.")
    entry_clear_z: float = Field(default=2.33, ge=0, le=10, description="Clear interior "
                                 "evidence confirms at once: stronger than the entrance by "
                                 "this many standard errors of the two medians...")
    entry_clear_ratio: float = Field(default=1.25, ge=1, le=10, description="...and the "
                                     "phone this much nearer the interior scanner (via the "
                                     "path-loss exponent)...")
    entry_clear_s: float = Field(default=1.0, ge=0, le=600, description="...for this long.")
    outside_after_s: float = Field(default=12.0, gt=0, le=600, description="No interior "
                                   "evidence for this long: outside (exit dated back).")
    silence_hold_s: float = Field(default=180.0, ge=0, le=3600, description="A phone last "
                                  "placed inside and not heard at the door since keeps its "
                                  "visit through a silence this long (exit dated back).")
    sparse_window_s: float = Field(default=20.0, ge=0, le=120, description="A slow phone's "
                                   "RSSI window reaches back this far for enough samples.")
    clear_of_door_db: float = Field(default=6.0, ge=0, le=40, description="A zone beyond "
                                    "the front heard this much stronger than the entrance: "
                                    "inside, and in that zone, below the floors.")

    @model_validator(mode="after")
    def _door(self) -> PresenceConfig:
        if self.stay_margin_db < self.interior_margin_db:
            raise ValueError("stay_margin_db must be at least interior_margin_db (hysteresis "
                             "at the door)")
        return self

    @model_validator(mode="after")
    def _unique(self) -> PresenceConfig:
        seen: dict[str, str] = {}
        for z in self.zones:
            for s in z.scanners:
                if s in seen:
                    raise ValueError(f"scanner {s!r} is in zones {seen[s]!r} and {z.id!r}")
                seen[s] = z.id
        return self


# --- POS lanes ------------------------------------------------------------------------

PosRole = Literal["printer", "display", "scanner", "fiscal"]
PosDialect = Literal["escpos", "pole-display", "scanner", "shtrih-m", "atol-v3", "stx-etx"]
DIALECT_ROLES: Final[dict[str, tuple[str, ...]]] = {
    "escpos": ("printer",), "stx-etx": ("printer", "fiscal"), "pole-display": ("display",),
    "scanner": ("scanner",), "shtrih-m": ("fiscal",), "atol-v3": ("fiscal",),
}


class StxEtxConfig(Section):
    start: str = Field(default="02", pattern=r"^([0-9a-fA-F]{2}){1,2}$",
                       description="Start of frame, hex (1 or 2 bytes, e.g. '1002').")
    end: str = Field(default="03", pattern=r"^([0-9a-fA-F]{2}){1,2}$")
    escape: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{2}$",
                               description="Escape byte before a literal start/end/escape.")
    checksum: Literal["none", "xor", "lrc", "sum8", "crc16-xmodem", "crc8"] = "xor"
    covers: Literal["payload", "payload+end"] = "payload+end"
    max_frame: int = Field(default=4096, ge=16, le=1 << 20)


class PosDeviceConfig(Section):
    role: PosRole
    dialect: PosDialect
    port: str = Field(min_length=1, description="Serial port, by its stable name "
                      "(/dev/serial/by-id/...), never ttyUSBn.")
    baudrate: int = Field(default=9600, ge=50, le=4_000_000)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = Field(default=1, description="1, 1.5 or 2.")
    xonxoff: bool = Field(default=False, description="The tapped line's flow control, "
                          "for status: the tap itself never flow-controls the till.")
    rtscts: bool = False
    encoding: str = Field(default="cp866", description="Text encoding: cp866, cp1251, "
                          "cp437, utf-8, ... (ESC/POS: the printer's default code page).")
    idle_s: float | None = Field(default=None, gt=0, le=60, description="Silence that "
                                 "ends a job (default: 2 s printer, 0.5 s scanner).")
    scanner_prefix: str = Field(default="", description="Scanner: prefix to strip.")
    scanner_suffix: Literal["CR", "LF", "CRLF", "TAB"] = "CR"
    stx_etx: StxEtxConfig = StxEtxConfig()

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, value: float) -> float:
        if value not in (1, 1.5, 2):
            raise ValueError("stop bits are 1, 1.5 or 2")
        return value

    @field_validator("encoding")
    @classmethod
    def _codec(cls, value: str) -> str:
        try:
            return codecs.lookup(value).name
        except LookupError as exc:
            raise ValueError(f"unknown text encoding {value!r}") from exc

    @model_validator(mode="after")
    def _role_fits(self) -> PosDeviceConfig:
        if self.role not in DIALECT_ROLES[self.dialect]:
            raise ValueError(f"dialect {self.dialect} is not a {self.role}")
        return self


class PosLaneConfig(Section):
    id: str = Field(description="Lane id, as events name it (lane-1, checkout-3...).")
    currency: str = Field(default="RUB", pattern=r"^[A-Z]{3}$")
    template: Path | None = Field(
        default=None, description="Receipt template (firmware-configs/pos/templates/...); "
        "needed when purchases come from the printer.")
    purchases_from: Literal["printer", "fiscal"] | None = Field(
        default=None, description="Default: the fiscal register if the lane has one.")
    loyalty_pattern: str | None = Field(default=None, description="Scanned codes matching "
                                        "this regex are loyalty ids.")
    offer_pattern: str | None = Field(default=r"^SGO1\.", description="Scanned codes "
                                      "matching this regex are offer tokens.")
    checkout_zone: str | None = Field(
        default=None, description="The presence zone ([[presence.zones]] id) where this "
        "lane's customers queue and pay: the only customer there when a receipt starts "
        "is its buyer ([stitching]), and entering it starts the time to serve.")
    devices: list[PosDeviceConfig] = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        if not is_valid_id(value):
            raise ValueError(ID_RULE)
        return value

    @field_validator("loyalty_pattern", "offer_pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _sources(self) -> PosLaneConfig:
        roles = [d.role for d in self.devices]
        for role in set(roles):
            if roles.count(role) > 1:
                raise ValueError(f"two {role} devices on one lane")
        source = self.source
        if source not in roles:
            raise ValueError(f"purchases_from {source}, but the lane has no {source}")
        if source == "printer" and self.template is None:
            raise ValueError("purchases from the printer need a receipt template")
        return self

    @property
    def source(self) -> Literal["printer", "fiscal"]:
        if self.purchases_from is not None:
            return self.purchases_from
        return "fiscal" if any(d.role == "fiscal" for d in self.devices) else "printer"


class PosConfig(Section):
    lanes: list[PosLaneConfig] = []

    @model_validator(mode="after")
    def _unique(self) -> PosConfig:
        ids = [lane.id for lane in self.lanes]
        ports = [d.port for lane in self.lanes for d in lane.devices]
        for what, values in (("lane id", ids), ("serial port", ports)):
            dup = {v for v in values if values.count(v) > 1}
            if dup:
                raise ValueError(f"{what} used twice: {sorted(dup)}")
        return self


class CentralKeyConfig(Section):
    kid: str = Field(pattern=KID_PATTERN.pattern, description="Key id, as commands name it.")
    public_key: str = Field(description="Ed25519 public key, base64url of 32 bytes "
                            "(`storegate keys new-central` prints it).")

    @field_validator("public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        load_public_key(value)  # ValueError names the problem
        return value


class TrustConfig(Section):
    """Who may command this gateway: commands are signed by central (Ed25519), whatever
    the broker allows. Several keys: rotation (add the new one, then remove the old)."""

    central_keys: list[CentralKeyConfig] = Field(
        default=[], max_length=16,
        description="Central's public keys. None: every command is rejected (and counted).")
    max_age_s: float = Field(
        default=86_400.0, gt=0, le=30 * 86_400,
        description="A command issued longer ago is rejected (it may have waited this long "
        "in the broker while the gateway was offline); its id is remembered this long.")
    max_future_s: float = Field(default=300.0, ge=0, le=86_400,
                                description="Clock skew allowed for central's clock.")
    max_command_bytes: int = Field(default=64 * MIB, ge=4096, le=256 * MIB,
                                   description="Larger commands are rejected unread.")

    @model_validator(mode="after")
    def _unique(self) -> TrustConfig:
        kids = [k.kid for k in self.central_keys]
        if len(set(kids)) != len(kids):
            raise ValueError("a key id is listed twice")
        return self


class PrivacyConfig(Section):
    """Personal data read at the lanes (loyalty cards, cashiers) leaves the box as keyed
    pseudonyms: HMAC-SHA256 with a key central provides, so central can still join."""

    pseudonym_key: SecretStr | None = Field(
        default=None, description="Hex or base64, at least 16 bytes (32 recommended), "
        "the same at every gateway and at central. Set it from the environment: "
        "STOREGATE_PRIVACY__PSEUDONYM_KEY. Unset: loyalty ids and cashiers are withheld "
        "(null), unless published raw below.")
    raw_loyalty_ids: bool = Field(
        default=False, description="Publish loyalty card numbers as read (personal data).")
    raw_operator_names: bool = Field(
        default=False, description="Publish cashier names as printed (personal data).")

    @field_validator("pseudonym_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_key(value.get_secret_value())  # the message never repeats the key
        return value

    def personal_data(self) -> PersonalData:
        key = self.pseudonym_key
        return PersonalData(
            key=parse_key(key.get_secret_value()) if key is not None else None,
            raw_loyalty_ids=self.raw_loyalty_ids, raw_operator_names=self.raw_operator_names)


class TokenKeyConfig(Section):
    kid: str = Field(pattern=TOKEN_KID_PATTERN.pattern, description="The key's id, as its "
                     "gateway's birth certificate gives it (offer_key.kid).")
    public_key: str = Field(description="Ed25519 public key, base64url of 32 bytes "
                            "(offer_key.public_key of that gateway's birth certificate).")

    @model_validator(mode="after")
    def _matches(self) -> TokenKeyConfig:
        if token_key_id(load_public_key(self.public_key)) != self.kid:  # ValueError: bad key
            raise ValueError(f"kid {self.kid!r} is not this public key's id (a copying slip?)")
        return self


class RedemptionConfig(Section):
    """Offer tokens and their redemption at the lanes, checked on the box (offline too)."""

    reservation_timeout_s: float = Field(
        default=600.0, ge=10, le=86_400,
        description="A token scanned at a lane is reserved until its receipt completes or "
        "is voided; with neither for this long it is released (usable again).")
    offer_ttl_s: int = Field(default=7 * 86_400, ge=60, le=366 * 86_400,
                             description="How long an issued offer's token is valid.")
    trusted_token_keys: list[TokenKeyConfig] = Field(
        default=[], max_length=64,
        description="Offer keys of the store's other gateways: their tokens are redeemed "
        "here too (this gateway's own key is always trusted).")

    @model_validator(mode="after")
    def _unique(self) -> RedemptionConfig:
        kids = [k.kid for k in self.trusted_token_keys]
        if len(set(kids)) != len(kids):
            raise ValueError("a token key is listed twice")
        return self


class StitchingConfidence(Section):
    """How sure each method is, published with every attributed purchase. The methods
    are tried strongest first, so the order must hold: loyalty >= token >= presence."""

    loyalty: float = Field(default=0.99, ge=0, le=1, description="A loyalty card.")
    token: float = Field(default=0.95, ge=0, le=1, description="An offer token (a phone "
                         "can be lent).")
    presence: float = Field(default=0.7, ge=0, le=1, description="The only customer in "
                            "the checkout zone (a phone in a companion's pocket).")

    @model_validator(mode="after")
    def _ordered(self) -> StitchingConfidence:
        if not self.loyalty >= self.token >= self.presence:
            raise ValueError("the methods are tried strongest first: keep loyalty >= "
                             "token >= presence")
        return self


class StitchingConfig(Section):
    """Who bought: purchases get a customer, store visits their outcome (issue 11)."""

    presence_rule: Literal["sole_customer_in_checkout_zone", "off"] = Field(
        default="sole_customer_in_checkout_zone",
        description="Without a loyalty card or token: the purchase goes to the only "
        "consenting customer in the lane's checkout zone (pos.lanes.checkout_zone) when "
        "the receipt started; several are 'ambiguous' and nobody is named. 'off': never.")
    lookback_s: float = Field(
        default=30.0, ge=0, le=600, description="How long before the receipt started "
        "printing a customer's presence in the checkout zone still counts.")
    entry_grace_s: float = Field(
        default=5.0, ge=0, le=60, description="How long after the receipt started an "
        "arrival in the checkout zone still counts (presence places people a few seconds "
        "late; later arrivals are the next in the queue).")
    confidence: StitchingConfidence = StitchingConfidence()

    def settings(self) -> StitchingSettings:
        return StitchingSettings(
            presence_rule=self.presence_rule, lookback_s=self.lookback_s,
            entry_grace_s=self.entry_grace_s, loyalty_confidence=self.confidence.loyalty,
            token_confidence=self.confidence.token,
            presence_confidence=self.confidence.presence)


class OffersConfig(Section):
    """The offer engine on the box (issue 11, docs/personalisation.md): campaigns from
    central's signed ``campaigns`` command and, for the demo or a store without central,
    from a file; the store's rules over every campaign (defaults: the engine's)."""

    enabled: bool = Field(default=True, description="Decide offers at all.")
    campaigns_file: Path | None = Field(
        default=None, description="Campaigns (.toml or .json) loaded at start, as if "
        "central had sent them; central's newer versions win (app/campaign_files.py).")
    timezone: str = Field(default="UTC", description="The store's time zone (IANA name, "
                          "e.g. Europe/Moscow): opening hours, quiet hours, days for caps.")
    min_gap_s: float = Field(default=30.0, ge=0, le=86_400,
                             description="Minimum time between two offers to a customer.")
    max_per_visit: int = Field(default=3, ge=1, le=100)
    max_per_day: int = Field(default=5, ge=1, le=1000)
    quiet_hours: tuple[str, str] | None = Field(
        default=None, description='["21:00", "09:00"]: no offer in [start, end), local.')
    max_issued_per_trigger: int = Field(default=1, ge=1, le=10)
    max_reported_per_trigger: int = Field(default=8, ge=1, le=1000)
    categories: dict[str, str] = Field(
        default={}, max_length=1000,
        description="Keyword -> category, for purchase_category campaigns: a receipt line "
        "whose name contains the keyword (case-insensitive) is of that category. Empty: "
        "purchases trigger no campaign.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not a time zone (an IANA name such as "
                             "Europe/Moscow)") from exc
        return value

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: dict[str, str]) -> dict[str, str]:
        out = {}
        for keyword, category in value.items():
            if not 1 <= len(keyword) <= 64 or not re.fullmatch(CATEGORY_PATTERN, category):
                raise ValueError(f"{keyword[:64]!r} = {category[:64]!r}: a keyword is 1..64 "
                                 "characters, a category a lower-case tag")
            out[keyword.casefold()] = category
        return out

    @model_validator(mode="after")
    def _policy(self) -> OffersConfig:
        self.policy()  # ValueError: the engine's own checks (quiet hours, caps)
        return self

    def policy(self) -> OfferPolicy:
        return OfferPolicy(
            enabled=self.enabled, min_gap_s=self.min_gap_s, max_per_visit=self.max_per_visit,
            max_per_day=self.max_per_day, quiet_hours=self.quiet_hours,
            max_issued_per_trigger=self.max_issued_per_trigger,
            max_reported_per_trigger=self.max_reported_per_trigger)


class StaffCredentialConfig(Section):
    """One way to sign in at a lane: a PIN (hashed) or a device token (hashed), and the
    role the session gets. ``python -m storegate.app.http hash-secret`` prints hashes."""

    lane: str = Field(min_length=1, max_length=64, description="The lane (or floor area) "
                      "this credential signs in at; '*' for any lane (managers).")
    role: Literal["cashier", "floor", "manager"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$",
                      description="A label for logs and the session (not a person's name).")
    pin_hash: str | None = Field(default=None, description="scrypt$... or pbkdf2-sha256$...")
    device_token_hash: str | None = Field(default=None, description="sha256$<hex> of a "
                                          "long random token installed on the till.")

    @field_validator("pin_hash", "device_token_hash")
    @classmethod
    def _hash(cls, value: str | None) -> str | None:
        return None if value is None else check_hash_format(value)

    @model_validator(mode="after")
    def _one(self) -> StaffCredentialConfig:
        if (self.pin_hash is None) == (self.device_token_hash is None):
            raise ValueError("give exactly one of pin_hash and device_token_hash")
        if self.pin_hash is not None and self.pin_hash.startswith("sha256$"):
            raise ValueError("a PIN is short: hash it with scrypt or pbkdf2-sha256")
        return self


class AppTokenKeyConfig(Section):
    kid: str = Field(pattern=WEB_KID_RE.pattern, description="Key id (the token's 'kid').")
    public_key: str = Field(description="Central's Ed25519 public key for customer app "
                            "tokens, base64url of 32 bytes.")

    @field_validator("public_key")
    @classmethod
    def _key(cls, value: str) -> str:
        load_ed25519_public(value)
        return value


class HttpConfig(Section):
    """The HTTP server: operations (/healthz, /readyz, /metrics, admin), staff screens
    and the customer app channel (docs/http.md)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    tls_cert_file: Path | None = Field(default=None, description="PEM certificate chain; "
                                       "with tls_key_file, serve HTTPS (and send HSTS).")
    tls_key_file: Path | None = None
    cors_origins: list[str] = Field(default=[], max_length=32, description="Origins "
                                    "allowed cross-origin (https://app.example.com). None: "
                                    "no CORS headers at all.")
    staff: list[StaffCredentialConfig] = Field(default=[], max_length=1000)
    admin_token_hashes: list[str] = Field(default=[], max_length=32, description="sha256$ "
                                          "hashes of admin tokens (sent as a Bearer token).")
    metrics_token_hash: str | None = Field(default=None, description="sha256$ hash of a "
                                           "token that may read /metrics only; admin tokens "
                                           "always may.")
    session_ttl_s: float = Field(default=12 * 3600.0, ge=60, le=7 * 86_400,
                                 description="A staff session ends this long after sign-in.")
    app_token_keys: list[AppTokenKeyConfig] = Field(default=[], max_length=16)
    app_audience: str = Field(default="storegate-app", min_length=1, max_length=256,
                              description="The 'aud' customer app tokens must carry.")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * MIB)
    signin_burst: int = Field(default=5, ge=1, le=1000)
    signin_per_minute: float = Field(default=5.0, gt=0, le=10_000)
    checkin_burst: int = Field(default=10, ge=1, le=1000)
    checkin_per_minute: float = Field(default=20.0, gt=0, le=10_000)
    demo_app_tokens: bool = Field(default=False, description="Demo only: /app/demo lists "
                                  "the simulated app users with links to the reference app, "
                                  "their tokens signed by a key made at start; answered on "
                                  "loopback only. Never on a store.")

    @field_validator("admin_token_hashes")
    @classmethod
    def _admin(cls, value: list[str]) -> list[str]:
        for h in value:
            if not check_hash_format(h).startswith("sha256$"):
                raise ValueError("admin tokens are long random strings: sha256$<hex>")
        return value

    @field_validator("metrics_token_hash")
    @classmethod
    def _metrics(cls, value: str | None) -> str | None:
        if value is not None and not check_hash_format(value).startswith("sha256$"):
            raise ValueError("the metrics token is a long random string: sha256$<hex>")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
                raise ValueError(f"{origin[:100]!r} is not an origin (scheme://host[:port], "
                                 "no path, no wildcard)")
        return value

    @model_validator(mode="after")
    def _tls(self) -> HttpConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("give both tls_cert_file and tls_key_file, or neither")
        kids = [k.kid for k in self.app_token_keys]
        if len(set(kids)) != len(kids):
            raise ValueError("an app token key id is listed twice")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


class CheckinConfig(Section):
    """Check-in without Bluetooth (issue 12): each zone's signed QR poster
    (``storegate posters``), scanned in the app, is presence evidence for that zone for
    customers with presence consent. Posters are signed with this gateway's poster key
    (``<outbox>.poster.key``, made on first use)."""

    enabled: bool = Field(default=False, description="Accept check-ins (POST /app/checkin); "
                          "presence runs even with no advert source.")
    hold_s: float = Field(default=120.0, ge=5, le=3600, description="A check-in keeps the "
                          "store and zone visits open this long without other evidence.")
    repeat_window_s: float = Field(default=300.0, ge=0, le=86_400, description="The same "
                                   "poster scanned again by the same customer within this "
                                   "changes nothing (answered as before).")
    generation: int = Field(default=1, ge=1, le=65_535, description="The generation "
                            "posters are rendered with now.")
    min_generation: int = Field(default=1, ge=1, le=65_535, description="Posters of an "
                                "older generation are refused (retired): bump both and "
                                "reprint to rotate.")
    trusted_poster_keys: list[TokenKeyConfig] = Field(
        default=[], max_length=64, description="Poster keys of the store's other gateways "
        "(kid and public key, as `storegate posters` prints them): their posters check in "
        "here too (this gateway's own key is always trusted).")
    store_name: str | None = Field(default=None, min_length=1, max_length=80,
                                   description="Printed on the posters (default: store_id).")
    zone_names: dict[str, str] = Field(default={}, max_length=256, description="Zone id -> "
                                       "the name printed on its poster (default: the id).")

    @model_validator(mode="after")
    def _generations(self) -> CheckinConfig:
        if self.min_generation > self.generation:
            raise ValueError("min_generation is above generation: new posters would be "
                             "refused")
        kids = [k.kid for k in self.trusted_poster_keys]
        if len(set(kids)) != len(kids):
            raise ValueError("a poster key is listed twice")
        return self


# --- calibration (issue 13: the floor plan, core/presence/calibration.py) -------------

PLAN_MAX_M: Final = 10_000.0  # no store is 10 km across: a larger number is a typo


class CalibrationConfig(Section):
    """The store's floor plan for self-calibration: where the scanners are (metres, any
    corner as origin; the zone beacons' places are in the beacons file, ``position``).
    Optional: a scanner without a position works as before, uncalibrated."""

    enabled: bool = Field(default=True, description="Fit the store's radio model from the "
                          "zone beacons (needs positioned scanners and beacons).")
    scanners: dict[str, list[float]] = Field(
        default={}, max_length=256, description="Scanner name -> [x, y] or [x, y, z] in "
        "metres, the same origin as the beacons' positions.")
    interval_s: float = Field(default=30.0, ge=5, le=3600, description="Re-fit this often.")
    window_s: float = Field(default=900.0, ge=60, le=86_400, description="Beacon adverts "
                            "of the last this-many seconds are fitted.")
    bucket_s: float = Field(default=30.0, ge=5, le=600, description="A pair's level is the "
                            "median of its buckets' medians (robust to fades).")

    @field_validator("scanners")
    @classmethod
    def _positions(cls, value: dict[str, list[float]]) -> dict[str, list[float]]:
        for name, pos in value.items():
            if len(pos) not in (2, 3):
                raise ValueError(f"scanner {name!r}: a position is [x, y] or [x, y, z] in "
                                 f"metres, got {len(pos)} number(s)")
            if any(abs(c) > PLAN_MAX_M for c in pos):
                raise ValueError(f"scanner {name!r}: {pos} is more than {PLAN_MAX_M:.0f} m "
                                 "from the origin")
        return value

    @model_validator(mode="after")
    def _bucket(self) -> CalibrationConfig:
        if self.window_s < 2 * self.bucket_s:
            raise ValueError("window_s must hold at least two buckets (2 x bucket_s)")
        return self


class Config(Section):
    store_id: str
    gateway_id: str
    trust: TrustConfig = TrustConfig()
    mqtt: MqttConfig = MqttConfig()
    storage: StorageConfig = StorageConfig()
    sources: SourcesConfig = SourcesConfig()
    presence: PresenceConfig = PresenceConfig()
    pos: PosConfig = PosConfig()
    stitching: StitchingConfig = StitchingConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    redemption: RedemptionConfig = RedemptionConfig()
    offers: OffersConfig = OffersConfig()
    http: HttpConfig = HttpConfig()
    checkin: CheckinConfig = CheckinConfig()
    calibration: CalibrationConfig = CalibrationConfig()

    @field_validator("calibration")
    @classmethod
    def _placed_scanners(cls, value: CalibrationConfig,
                         info: ValidationInfo) -> CalibrationConfig:
        # A position for a scanner no zone lists is a typo in one of the two names:
        # said at start, not discovered as a scanner that never calibrates.
        presence = info.data.get("presence")
        if presence is None:  # presence itself is invalid: that error is reported
            return value
        known = {s for z in presence.zones for s in z.scanners}
        for name in value.scanners:
            if name not in known:
                raise ValueError(f"scanners: {name!r} is in no [[presence.zones]] "
                                 f"(scanners: {sorted(known) or 'none configured'})")
        return value

    @field_validator("store_id", "gateway_id")
    @classmethod
    def _topic_safe(cls, value: str, info: ValidationInfo) -> str:
        if not is_valid_id(value):
            raise ValueError(ID_RULE)
        reserved = RESERVED_STORE_IDS if info.field_name == "store_id" else RESERVED_GATEWAY_IDS
        if value in reserved:
            raise ValueError(f"{value!r} is reserved (a topic level): not one of "
                             f"{sorted(reserved)}")
        return value

    @field_validator("pos")
    @classmethod
    def _checkout_zones(cls, value: PosConfig, info: ValidationInfo) -> PosConfig:
        # Checked here, where both sections are in hand (presence comes first): a lane's
        # checkout zone that names no zone would silently attribute nothing by presence.
        presence = info.data.get("presence")
        if presence is None:  # presence itself is invalid: that error is reported
            return value
        zones = sorted(z.id for z in presence.zones)
        for lane in value.lanes:
            if lane.checkout_zone is not None and lane.checkout_zone not in zones:
                raise ValueError(
                    f"lane {lane.id!r}: checkout_zone {lane.checkout_zone!r} is not a "
                    f"presence zone ([[presence.zones]] ids: {zones or 'none configured'})")
        return value

    def lane_checkout_zones(self) -> dict[str, str]:
        """Lane id -> its checkout zone, for the stitcher (lanes without one left out)."""
        return {lane.id: lane.checkout_zone for lane in self.pos.lanes
                if lane.checkout_zone is not None}

    @property
    def seal_key_path(self) -> Path:
        """This gateway's private X25519 key, which opens identity keys sealed to it."""
        p = self.storage.path
        return p.with_name(p.stem + ".seal.key")

    @property
    def offer_key_path(self) -> Path:
        """This gateway's private Ed25519 key, which signs its offer tokens."""
        p = self.storage.path
        return p.with_name(p.stem + ".offer.key")

    @property
    def redemption_path(self) -> Path:
        """Issued offers and the redemption ledger."""
        p = self.storage.path
        return p.with_name(p.stem + ".redemption.db")

    @property
    def commands_path(self) -> Path:
        """Ids of the commands accepted lately: a captured command is not accepted twice."""
        p = self.storage.path
        return p.with_name(p.stem + ".commands.db")

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"storegate-{self.store_id}-{self.gateway_id}"

    @property
    def identities_path(self) -> Path:
        """The box's copy of consenting customers' identity keys (next to the outbox)."""
        p = self.storage.path
        return p.with_name(p.stem + ".identities.db")

    @property
    def registry_path(self) -> Path:
        """The customers central sent this store: records (no keys) and tombstones."""
        p = self.storage.path
        return p.with_name(p.stem + ".customers.db")

    @property
    def inbox_path(self) -> Path:
        """The app inbox: what each customer's phone is sent (offers with their tokens,
        redemption states, pickup notices), kept for resume."""
        p = self.storage.path
        return p.with_name(p.stem + ".inbox.db")

    @property
    def status_path(self) -> Path:
        """Where the running gateway publishes its live status for ``storegate status``."""
        if self.storage.status_file is not None:
            return self.storage.status_file
        p = self.storage.path
        return p.with_name(p.name + ".status.json")


# --- loading -------------------------------------------------------------------------


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, str]]:
    """``STOREGATE_A__B=v`` -> {("a", "b"): ("STOREGATE_A__B", "v")}."""
    out: dict[tuple[str, ...], tuple[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG:
            continue
        parts = tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__"))
        if all(parts):
            out[parts] = (name, value)
    return out


def _apply(data: dict[str, Any], path: tuple[str, ...], value: str, var: str) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"environment variable {var}", f"{part} is not a section")
        node = child
    node[path[-1]] = value


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative file paths in the config are relative to the config file's folder."""

    def fix(section: Any, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str):
            value: str = section[key]
            if value.startswith(PACKAGE_PREFIX):  # shipped with storegate (the demo store)
                section[key] = str(defaults_dir() / value.removeprefix(PACKAGE_PREFIX))
                return
            p = Path(value).expanduser()
            section[key] = str(p if p.is_absolute() else base / p)

    fix(data.get("storage"), "path")
    fix(data.get("storage"), "status_file")
    fix(data.get("presence"), "identities_file")
    fix(data.get("presence"), "beacons_file")
    fix(data.get("offers"), "campaigns_file")
    pos = data.get("pos")
    lanes = pos.get("lanes") if isinstance(pos, dict) else None
    for lane in lanes if isinstance(lanes, list) else []:
        fix(lane, "template")
        devices = lane.get("devices") if isinstance(lane, dict) else None
        for device in devices if isinstance(devices, list) else []:
            if isinstance(device, dict) and isinstance(device.get("port"), str) \
                    and not device["port"].startswith("/") and "://" not in device["port"]:
                fix(device, "port")  # a relative port: next to the config (simulated lanes)
    tls = data.get("mqtt", {}).get("tls") if isinstance(data.get("mqtt"), dict) else None
    for key in ("ca_file", "cert_file", "key_file"):
        fix(tls, key)
    for key in ("tls_cert_file", "tls_key_file"):
        fix(data.get("http"), key)


_SECRET_KEYS: Final = ("password", "pseudonym_key")  # an error never echoes their value


def _format_errors(
    exc: ValidationError, source: str, env: dict[tuple[str, ...], tuple[str, str]]
) -> ConfigError:
    problems: list[str] = []
    first_key: str | None = None
    for err in exc.errors():
        loc = tuple(str(x) for x in err["loc"])
        key = ".".join(loc) or "(top level)"
        first_key = first_key or key
        where = source
        if loc in env:
            where = f"environment variable {env[loc][0]}"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (misspelt, or in the wrong section?)"
        elif err["type"] != "missing" and not any(s in key for s in _SECRET_KEYS):
            shown = repr(err.get("input"))
            msg += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
        problems.append(f"{where}: {key}: {msg}")
    if len(problems) == 1:
        src, key, problem = problems[0].split(": ", 2)
        return ConfigError(src, problem, key)
    return ConfigError(source, "\n  " + "\n  ".join(problems), None)


def toml_problem(exc: ValueError | RecursionError) -> str:
    """What tomllib's failure means, in words a user can act on."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, tomllib.TOMLDecodeError):
        return str(exc)
    return f"a value too long to read ({str(exc).split(';')[0]})"  # the 4300-digit limit


def parse(
    text: str, *, source: str, base: Path, environ: Mapping[str, str] | None = None
) -> Config:
    """Parse and validate TOML text; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    # ValueError: TOMLDecodeError, or an integer over Python's 4300-digit limit;
    # RecursionError: arrays nested thousands deep (tomllib recurses per level)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(source, f"not valid TOML: {toml_problem(exc)}") from exc
    env = _env_overrides(os.environ if environ is None else environ)
    for path, (var, value) in env.items():
        _apply(data, path, value, var)
    _resolve_paths(data, base)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise _format_errors(exc, source, env) from exc


def load(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Load a config file; every failure is a ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(str(path), "file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read: {exc}") from exc
    return parse(text, source=str(path), base=path.resolve().parent, environ=environ)


def defaults_dir() -> Path:
    return Path(str(resources.files("storegate.defaults")))


def demo_text() -> str:
    return resources.files("storegate.defaults").joinpath(DEMO_CONFIG).read_text("utf-8")


def load_default(environ: Mapping[str, str] | None = None) -> Config:
    """The embedded demo store, its storage under the user's state directory."""
    env = os.environ if environ is None else environ
    state = Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return parse(demo_text(), source="<embedded demo config>", base=state / "storegate",
                 environ=env)


def redacted(config: Config) -> dict[str, Any]:
    """The effective config as plain data, secrets masked (for ``config show``)."""
    return config.model_dump(mode="json")  # SecretStr dumps as '**********'
