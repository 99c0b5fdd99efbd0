"""Commands central sends down over MQTT, validated where they enter.

A command that fails validation is never acted on: the caller counts it and logs it
once with the reason. Pure: bytes in, a command or a :class:`CommandRejected` out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from storegate.core.ble.eid import Identity
from storegate.core.payloads import Payload

MAX_REPLAY_SPAN: Final = 1_000_000


class ReplayCommand(Payload):
    """Re-publish events by sequence number (``storegate/v1/<store>/commands/replay``).

    Central sends it when it sees a gap in a gateway's ``sequence`` (for example after
    a broker crash lost messages it had already acknowledged). Events still in the
    gateway's replay window are published again with their original id and sequence;
    the answer is a ``storegate.gateway.replayed.v1`` event listing what was gone.
    """

    gateway: str = Field(description="The gateway asked; other gateways ignore it.")
    from_sequence: int = Field(ge=1)
    to_sequence: int = Field(ge=1)
    request_id: str | None = Field(default=None, max_length=128)

    @model_validator(mode="after")
    def _range(self) -> ReplayCommand:
        if self.to_sequence < self.from_sequence:
            raise ValueError("to_sequence is below from_sequence")
        if self.to_sequence - self.from_sequence >= MAX_REPLAY_SPAN:
            raise ValueError(f"a replay covers at most {MAX_REPLAY_SPAN} sequences")
        return self


class IdentityRecord(BaseModel):
    """One consenting customer's Eddystone-EID identity, as central sends it (and as the
    ``identities_file`` registry holds it). The beacon clock at epoch time t is
    ``beacon_time_at_registration + (t - registered_at)``."""

    model_config = ConfigDict(extra="forbid")

    customer: str = Field(min_length=1, max_length=128, description="A pseudonym.")
    identity_key: str = Field(pattern=r"^[0-9a-fA-F]{32}$", description="AES-128 key, hex.")
    rotation_exponent: int = Field(ge=0, le=15, description="A new EID every 2^K s.")
    beacon_time_at_registration: int = Field(ge=0, lt=1 << 32)
    registered_at: float = Field(description="Epoch seconds of the registration.")

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

    @classmethod
    def of(cls, i: Identity) -> IdentityRecord:
        return cls(customer=i.customer, identity_key=i.identity_key.hex(),
                   rotation_exponent=i.rotation_exponent,
                   beacon_time_at_registration=i.beacon_time_at_registration,
                   registered_at=i.registered_at)


class IdentitiesCommand(Payload):
    """Consent changes from central (``storegate/v1/<store>/commands/identities``).

    ``upsert`` enrols or re-keys the customers given (consent to presence given),
    ``remove`` forgets them (consent withdrawn, erasure: the keys are deleted from the
    box and their tracking state dropped), ``replace`` is a full sync: exactly these are
    enrolled afterwards. Every gateway of the store applies it.
    """

    op: Literal["upsert", "remove", "replace"]
    identities: list[IdentityRecord] = Field(default=[], max_length=1_000_000)
    customers: list[str] = Field(default=[], max_length=1_000_000,
                                 description="Pseudonyms to remove (op remove).")
    request_id: str | None = Field(default=None, max_length=128)

    @model_validator(mode="after")
    def _shape(self) -> IdentitiesCommand:
        if self.op == "remove" and (self.identities or not self.customers):
            raise ValueError("remove takes customers (a list of pseudonyms), not identities")
        if self.op != "remove" and self.customers:
            raise ValueError(f"{self.op} takes identities, not customers")
        if self.op == "upsert" and not self.identities:
            raise ValueError("upsert without identities")
        return self


COMMANDS: Final[dict[str, type[Payload]]] = {
    "replay": ReplayCommand, "identities": IdentitiesCommand,
}


@dataclass(frozen=True, slots=True)
class CommandRejected:
    name: str
    reason: str


def parse_command(name: str, payload: bytes) -> Payload | CommandRejected:
    """Validate the payload of command ``name`` (the last topic level)."""
    model = COMMANDS.get(name)
    if model is None:
        return CommandRejected(name, "unknown command")
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        return CommandRejected(name, f"payload is not JSON: {exc}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "payload"
        return CommandRejected(name, f"{where}: {first['msg']}")


def ranges(numbers: list[int]) -> list[list[int]]:
    """[1, 2, 3, 7, 9, 10] -> [[1, 3], [7, 7], [9, 10]] (input sorted)."""
    out: list[list[int]] = []
    for n in numbers:
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out
