"""Identity records: a consenting customer's presence identity as central sends it.

Shared by the commands that carry identities (``identities``, ``customers``): the
fields bound to a sealed key, the record with its key in clear (the box's own file, what
central seals) and the sealed record as it travels. Also the few patterns and bounds
every command about customers uses. Pure.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from storegate.core.ble.eid import Identity
from storegate.core.topics import ID_PATTERN

MAX_IDENTITIES: Final = 500_000  # a full sync of a very large store; ~100 MB on the wire
MAX_GATEWAYS_PER_STORE: Final = 64
# Identity records: registrations before Eddystone-EID existed, or more than a day
# ahead of the gateway's clock, are garbage (and would make the resolver's work and the
# beacon clock arithmetic unbounded).
EARLIEST_REGISTRATION: Final = 1_420_070_400.0  # 2015-01-01
MAX_REGISTRATION_AHEAD_S: Final = 86_400.0
CUSTOMER_PATTERN: Final = r"^[\x21-\x7e]{1,128}$"  # printable ASCII, no spaces or controls
REQUEST_ID_PATTERN: Final = r"^[\x20-\x7e]{1,128}$"
CUSTOMER_RE: Final = re.compile(CUSTOMER_PATTERN)


def check_pseudonym(v: str) -> str:
    """A customer id must be a pseudonym: a MAC address is refused outright (the
    pattern alone would let one through)."""
    if len(v) == 17 and v.count(":") == 5:
        raise ValueError("looks like a MAC address: customers are pseudonyms")
    return v


def check_sealed_to(sealed_to: Mapping[str, str]) -> None:
    """``sealed_to`` of a command carrying sealed keys: gateway ids, bounded wrappings."""
    for gw, wrapped in sealed_to.items():
        if not ID_PATTERN.fullmatch(gw) or not 0 < len(wrapped) <= 200:
            raise ValueError(f"sealed_to: {gw[:40]!r} is not a gateway with a key")


class IdentityFields(BaseModel):
    """What an identity record says besides its key. The beacon clock at epoch time t
    is ``beacon_time_at_registration + (t - registered_at)``.

    Validated against the gateway's clock when one is given (``context={"now": t}``):
    the registration is not in the future and the beacon clock is a 32-bit counter now.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    customer: str = Field(pattern=CUSTOMER_PATTERN, description="A pseudonym.")
    rotation_exponent: int = Field(ge=0, le=15, description="A new EID every 2^K s.")
    beacon_time_at_registration: int = Field(ge=0, lt=1 << 32)
    registered_at: float = Field(
        ge=EARLIEST_REGISTRATION,
        description="Epoch seconds of the registration (2015 or later, not in the future).")

    @field_validator("customer")
    @classmethod
    def _pseudonym(cls, v: str) -> str:
        return check_pseudonym(v)

    @model_validator(mode="after")
    def _clock(self, info: ValidationInfo) -> IdentityFields:
        now = (info.context or {}).get("now") if info is not None else None
        if isinstance(now, float | int):
            if self.registered_at > now + MAX_REGISTRATION_AHEAD_S:
                raise ValueError("registered_at is in the future")
            beacon_now = self.beacon_time_at_registration + (now - self.registered_at)
            if not 0 <= beacon_now < 1 << 32:
                raise ValueError("the beacon clock it implies is not a 32-bit counter now")
        return self

    def aad(self) -> bytes:
        """The record's fields, bound to its sealed key."""
        return (b"storegate identity v1|" + self.customer.encode() + b"|" + struct.pack(
            ">BId", self.rotation_exponent, self.beacon_time_at_registration,
            self.registered_at))

    def with_key(self, identity_key: bytes) -> Identity:
        return Identity(self.customer, identity_key, self.rotation_exponent,
                        self.beacon_time_at_registration, self.registered_at)


class IdentityRecord(IdentityFields):
    """An identity with its key in clear: the box's own ``identities_file`` registry,
    and what central seals (``storegate keys sign --seal-to``)."""

    identity_key: str = Field(pattern=r"^[0-9a-fA-F]{32}$", description="AES-128 key, hex.")

    def identity(self) -> Identity:
        return self.with_key(bytes.fromhex(self.identity_key))

    @classmethod
    def of(cls, i: Identity) -> IdentityRecord:
        return cls(customer=i.customer, identity_key=i.identity_key.hex(),
                   rotation_exponent=i.rotation_exponent,
                   beacon_time_at_registration=i.beacon_time_at_registration,
                   registered_at=i.registered_at)


class SealedIdentityRecord(IdentityFields):
    """An identity as it travels: the key sealed to the store's gateways."""

    sealed_key: str = Field(
        min_length=58, max_length=60, pattern=r"^[A-Za-z0-9_-]+={0,2}$",
        description="base64url of nonce(12) | ChaCha20-Poly1305(identity key, 16) | tag(16) "
        "under the command's content key, the other fields as associated data.")
