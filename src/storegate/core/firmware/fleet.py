"""The store's fleet files as validated values, and the checks across them.

``store.toml`` says how devices reach the store broker; ``scanners.toml`` lists the ESP32
scanner nodes. Beacons (``beacons.toml``, the file the gateway itself reads) and POS
lanes (``lanes.toml``, the gateway's ``[[pos.lanes]]`` tables) are validated by the
models the gateway uses; what they say about the fleet comes here as :class:`BeaconFacts`
and :class:`LaneFacts` so that :func:`cross_check` can compare the four files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from storegate.core.topics import ID_RULE, RESERVED_GATEWAY_IDS, is_valid_id

PLAN_LIMIT_M: Final = 1000.0  # a position further than this from the origin is a typo
# ESPresense publishes under slugify(room) (lower case): a login that is not already its
# own slug would never match the ACL's %u, so the node could write nothing.
ESPRESENSE_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# ESPHome's `esphome: name:` (a host name): lower case, digits and hyphens, at most 31
# characters (24 with name_add_mac_suffix, which the rendered YAML leaves off).
ESPHOME_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
# A node name is a topic level under storegate/v1/<store>/scanners/: these would read as
# (or, behind a `+`, match) the levels the bridge forwards or the broker routes.
RESERVED_NODE_NAMES: Final = RESERVED_GATEWAY_IDS | {"*", "#", "+"}
NodeFirmware = Literal["esphome", "espresense"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _id(value: str) -> str:
    if not is_valid_id(value):
        raise ValueError(ID_RULE)
    return value


def _position(value: tuple[float, ...]) -> tuple[float, ...]:
    if len(value) not in (2, 3) or not all(
            math.isfinite(c) and abs(c) <= PLAN_LIMIT_M for c in value):
        raise ValueError(f"[x, y] or [x, y, z] in metres, each within {PLAN_LIMIT_M:.0f} m")
    return value


class StoreSection(_Strict):
    id: str = Field(description="The store_id of the gateway config.")
    gateways: list[str] = Field(min_length=1, description="Gateway ids on this box: "
                                "each gets a broker login (its username).")

    _store_id = field_validator("id")(_id)

    @field_validator("gateways")
    @classmethod
    def _gateways(cls, value: list[str]) -> list[str]:
        for g in value:
            _id(g)
            if g in RESERVED_GATEWAY_IDS:
                raise ValueError(f"{g!r} is reserved (a topic level of its own)")
        if len(set(value)) != len(value):
            raise ValueError("a gateway is listed twice")
        return value


class BrokerSection(_Strict):
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$",
                      description="The box's address on the store LAN, as nodes reach "
                      "it; the broker's certificate is made for it.")
    tls_port: int = Field(default=8883, ge=1, le=65535)
    bind: str | None = Field(default=None, min_length=1, max_length=253,
                             pattern=r"^[A-Za-z0-9.:-]+$", description="The address the "
                             "nodes' listeners bind to (install.sh renders them from "
                             "here); unset: the TLS listener on every interface.")
    plain_port: int | None = Field(default=None, ge=1, le=65535, description="Only for "
                                   "ESPresense nodes (no MQTT over TLS): a plain listener "
                                   "on the nodes' own VLAN.")


class WifiSection(_Strict):
    ssid: str = Field(min_length=1, max_length=32)


class CentralSection(_Strict):
    bridge_address: str = Field(pattern=r"^[A-Za-z0-9.-]+:[0-9]{1,5}$",
                                description="central's MQTT host:port for the bridge.")


class StoreFile(_Strict):
    store: StoreSection
    broker: BrokerSection
    wifi: WifiSection
    central: CentralSection | None = None


class NodeRecord(_Strict):
    name: str = Field(description="The node's broker login and scanner name.")
    zone: str = Field(description="The zone id (the id rule): written into the rendered "
                      "files, so no spaces, quotes or line breaks.")
    position: tuple[float, ...] | None = None
    firmware: NodeFirmware = "esphome"
    board: str = Field(default="esp32dev", pattern=r"^[a-z0-9_-]{1,64}$",
                       description="ESPHome board id (esphome nodes).")
    scan_interval_ms: int = Field(default=320, ge=10, le=10240)
    scan_window_ms: int = Field(default=300, ge=10, le=10240)

    _zone = field_validator("zone")(_id)
    _pos = field_validator("position")(lambda v: None if v is None else _position(v))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        _id(value)
        if value in RESERVED_NODE_NAMES:
            raise ValueError(f"{value!r} is reserved (a topic level of its own): "
                             f"not one of {sorted(RESERVED_NODE_NAMES)}")
        return value

    @model_validator(mode="after")
    def _firmware_rules(self) -> NodeRecord:
        if self.firmware == "esphome" and not ESPHOME_NAME.match(self.name):
            raise ValueError("an ESPHome node's name is its host name: lower case a-z, "
                             "0-9 and -, starting with a letter or digit, at most 31")
        if self.firmware == "espresense" and not ESPRESENSE_NAME.match(self.name):
            raise ValueError("an ESPresense node's name is its room slug: lower case "
                             "a-z 0-9 _ -, starting with a letter or digit")
        if self.scan_window_ms > self.scan_interval_ms:
            raise ValueError("scan_window_ms cannot exceed scan_interval_ms")
        return self


class NodesFile(_Strict):
    node: list[NodeRecord] = Field(min_length=1, max_length=1000)


@dataclass(frozen=True, slots=True)
class BeaconFacts:
    label: str
    kind: str
    zone: str | None
    tx_power_dbm: int | None
    interval_ms: int | None
    position: tuple[float, ...] | None


@dataclass(frozen=True, slots=True)
class LaneFacts:
    id: str
    checkout_zone: str | None


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.where}: {self.problem}"


def secret_stem(name: str) -> str:
    """A node name as a YAML key (secrets.yaml's mqtt_<stem>, ota_<stem>): lower case,
    every character but a-z 0-9 as ``_``. Two nodes must never share one."""
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in name.lower())


def cross_check(store: StoreFile, nodes: list[NodeRecord], beacons: list[BeaconFacts],
                lanes: list[LaneFacts]) -> list[Problem]:
    """What is wrong between the files (each already valid on its own)."""
    out: list[Problem] = []
    names: dict[str, int] = {}
    for i, n in enumerate(nodes):
        # the same name, or one that differs only in case or in . _ - (ESPHome's secret
        # keys, host names and ESPresense's room slugs would not tell them apart)
        key = secret_stem(n.name)
        if key in names:
            j = names[key]
            same = "used twice" if nodes[j].name == n.name else \
                f"too close to {nodes[j].name!r} (the same once case and . _ - are ignored)"
            out.append(Problem("scanners.toml", f"node[{i}]", f"name {n.name!r} is {same} "
                               f"(also node[{j}])"))
        names.setdefault(key, i)
        if n.name in store.store.gateways:
            out.append(Problem("scanners.toml", f"node[{i}]", f"{n.name!r} is also a "
                               "gateway: logins must say who they are"))
        if n.firmware == "espresense" and store.broker.plain_port is None:
            out.append(Problem("scanners.toml", f"node[{i}]", "ESPresense has no MQTT over "
                               "TLS: set [broker] plain_port in store.toml (a listener on "
                               "the nodes' own VLAN) or use esphome firmware"))
    zones = {n.zone for n in nodes}
    for i, b in enumerate(beacons):
        if b.kind != "zone":
            continue
        where = f"beacon[{i}] ({b.label})"
        missing = [k for k, v in (("zone", b.zone), ("tx_power_dbm", b.tx_power_dbm),
                                  ("interval_ms", b.interval_ms), ("position", b.position))
                   if v is None]
        if missing:
            out.append(Problem("beacons.toml", where, "a zone beacon needs "
                               + ", ".join(missing)))
        if b.zone is not None and b.zone not in zones:
            out.append(Problem("beacons.toml", where, f"zone {b.zone!r} has no scanner "
                               f"node in scanners.toml (zones: {sorted(zones)})"))
    for lane in lanes:
        if lane.checkout_zone is not None and lane.checkout_zone not in zones:
            out.append(Problem("lanes.toml", f"lane {lane.id}", f"checkout_zone "
                               f"{lane.checkout_zone!r} has no scanner node"))
    seen: set[str] = set()
    for lane in lanes:
        if lane.id in seen:
            out.append(Problem("lanes.toml", f"lane {lane.id}", "lane id used twice"))
        seen.add(lane.id)
    return out
