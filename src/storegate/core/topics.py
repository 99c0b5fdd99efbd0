"""The MQTT topic namespace: the stable address space central systems subscribe to.

    storegate/v1/<store>/<gateway>/events/<kind>   events (CloudEvents JSON, QoS 1)
    storegate/v1/<store>/<gateway>/status          retained birth / death certificate
    storegate/v1/<store>/commands/<command>        central -> one store
    storegate/v1/central/<command>                 central -> every store
    (commands are signed by central: core/trust.py; topics are parsed exactly)
    storegate/v1/<store>/scanners/<node>/adverts   ESP32 scanner nodes -> gateways (local
                                                   to the store broker, never bridged)

``v1`` is the namespace version: it changes only with an incompatible change of layout;
payload versions live in the CloudEvents ``type`` (``...v1``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

ROOT: Final = "storegate/v1"
CENTRAL: Final = f"{ROOT}/central"

# Store and gateway ids become topic levels: no wildcards, separators or '$' prefixes,
# and short enough to read in a broker's admin console.
ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ID_RULE: Final = "1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"


# Levels that mean something in the layout: a store or gateway with one of these names
# would make its topics ambiguous (and, with ACL patterns that put the login in the
# gateway level, let a login named "commands" write command topics).
RESERVED_STORE_IDS: Final = frozenset({"central"})
RESERVED_GATEWAY_IDS: Final = frozenset({"commands", "scanners", "central", "events",
                                         "status"})
ALL_STORES: Final = "*"


def is_valid_id(value: str) -> bool:
    return ID_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class CommandTopic:
    """Where a command arrived: its name, and the store it addresses (``*``: all)."""

    name: str
    store: str


def parse_command_topic(topic: str, store: str) -> CommandTopic | None:
    """Exactly ``storegate/v1/<store>/commands/<name>`` for this store, or exactly
    ``storegate/v1/central/<name>``; anything else (more levels, another store, an
    empty or odd name) is None: rejected and counted, never read by its last level."""
    parts = topic.split("/")
    if parts[:2] != ["storegate", "v1"]:
        return None
    if len(parts) == 5 and parts[2] == store and parts[3] == "commands" \
            and is_valid_id(parts[4]):
        return CommandTopic(parts[4], store)
    if len(parts) == 4 and parts[2] == "central" and is_valid_id(parts[3]):
        return CommandTopic(parts[3], ALL_STORES)
    return None


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one gateway; validates its ids once, on construction."""

    store: str
    gateway: str

    def __post_init__(self) -> None:
        for name, value, reserved in (("store", self.store, RESERVED_STORE_IDS),
                                      ("gateway", self.gateway, RESERVED_GATEWAY_IDS)):
            if not is_valid_id(value):
                raise ValueError(f"invalid {name} id {value!r}: {ID_RULE}")
            if value in reserved:
                raise ValueError(f"{name} id {value!r} is reserved: {sorted(reserved)}")

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.store}/{self.gateway}"

    def events(self, kind: str) -> str:
        return f"{self.prefix}/events/{kind}"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def store_commands(self) -> str:
        """Subscription filter for commands addressed to this store."""
        return f"{ROOT}/{self.store}/commands/#"

    @property
    def central_commands(self) -> str:
        """Subscription filter for commands addressed to every store."""
        return f"{CENTRAL}/#"

    @property
    def scanner_adverts(self) -> str:
        """Subscription filter for raw adverts from this store's scanner nodes."""
        return f"{ROOT}/{self.store}/scanners/+/adverts"

    @property
    def source(self) -> str:
        """The CloudEvents ``source`` of everything this gateway emits."""
        return f"storegate://{self.store}/{self.gateway}"
