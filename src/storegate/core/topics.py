"""The MQTT topic namespace: the stable address space central systems subscribe to.

    storegate/v1/<store>/<gateway>/events/<kind>   events (CloudEvents JSON, QoS 1)
    storegate/v1/<store>/<gateway>/status          retained birth / death certificate
    storegate/v1/<store>/commands/<command>        central -> one store
    storegate/v1/central/<command>                 central -> every store
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


def is_valid_id(value: str) -> bool:
    return ID_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one gateway; validates its ids once, on construction."""

    store: str
    gateway: str

    def __post_init__(self) -> None:
        for name, value in (("store", self.store), ("gateway", self.gateway)):
            if not is_valid_id(value):
                raise ValueError(f"invalid {name} id {value!r}: {ID_RULE}")

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
