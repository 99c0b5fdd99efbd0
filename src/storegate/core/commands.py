"""Commands central sends down over MQTT: their payloads, validated where they enter.

Every command arrives in the signed envelope of :mod:`storegate.core.trust`; this module
validates what is inside (the ``payload``) and opens what is sealed. A command that
fails is never acted on: the caller counts it, logs it once and answers it. Pure: data,
keys and the time in; a command, an :class:`IdentityChange` or a rejection out.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from storegate.core import seal
from storegate.core.ble.eid import Identity
from storegate.core.payloads import Payload
from storegate.core.topics import ID_PATTERN
from storegate.core.trust import UNAUTHENTICATED, Reason

MAX_REPLAY_SPAN: Final = 1_000_000
MAX_IDENTITIES: Final = 500_000  # a full sync of a very large store; ~100 MB on the wire
MAX_GATEWAYS_PER_STORE: Final = 64
# Identity records: registrations before Eddystone-EID existed, or more than a day
# ahead of the gateway's clock, are garbage (and would make the resolver's work and the
# beacon clock arithmetic unbounded).
EARLIEST_REGISTRATION: Final = 1_420_070_400.0  # 2015-01-01
MAX_REGISTRATION_AHEAD_S: Final = 86_400.0
CUSTOMER_PATTERN: Final = r"^[\x21-\x7e]{1,128}$"  # printable ASCII, no spaces or controls
REQUEST_ID_PATTERN: Final = r"^[\x20-\x7e]{1,128}$"
_CUSTOMER: Final = re.compile(CUSTOMER_PATTERN)


class ReplayCommand(Payload):
    """Re-publish events by sequence number (``storegate/v1/<store>/commands/replay``).

    Central sends it when it sees a gap in a gateway's ``sequence`` (for example after
    a broker crash lost messages it had already acknowledged). Events still in the
    gateway's replay window are published again with their original id and sequence;
    the answer is a ``storegate.gateway.replayed.v1`` event listing what was gone.
    """

    gateway: str = Field(pattern=ID_PATTERN.pattern,
                         description="The gateway asked; other gateways ignore it.")
    from_sequence: int = Field(ge=1, lt=1 << 63)
    to_sequence: int = Field(ge=1, lt=1 << 63)
    request_id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)

    @model_validator(mode="after")
    def _range(self) -> ReplayCommand:
        if self.to_sequence < self.from_sequence:
            raise ValueError("to_sequence is below from_sequence")
        if self.to_sequence - self.from_sequence >= MAX_REPLAY_SPAN:
            raise ValueError(f"a replay covers at most {MAX_REPLAY_SPAN} sequences")
        return self


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
        if len(v) == 17 and v.count(":") == 5:
            raise ValueError("looks like a MAC address: customers are pseudonyms")
        return v

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


class IdentitiesCommand(Payload):
    """Consent changes from central (``storegate/v1/<store>/commands/identities``).

    ``upsert`` enrols or re-keys the customers given (consent to presence given),
    ``remove`` forgets them (consent withdrawn, erasure: the keys are deleted from the
    box and their tracking state dropped), ``replace`` is a full sync: exactly these are
    enrolled afterwards. Every gateway of the store applies it. Identity keys are
    sealed: ``sealed_to`` holds the command's content key wrapped for each gateway's
    X25519 key (published in its birth certificate), so the broker and every other
    subscriber see ciphertext only.
    """

    op: Literal["upsert", "remove", "replace"]
    identities: list[SealedIdentityRecord] = Field(default=[], max_length=MAX_IDENTITIES)
    customers: list[str] = Field(default=[], max_length=MAX_IDENTITIES,
                                 description="Pseudonyms to remove (op remove).")
    sealed_to: dict[str, str] = Field(
        default={}, max_length=MAX_GATEWAYS_PER_STORE,
        description="Gateway id -> the content key sealed to that gateway (base64url of "
        "ephemeral X25519 key(32) | nonce(12) | ChaCha20-Poly1305(key, 32) | tag(16)).")
    request_id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)

    @field_validator("customers")
    @classmethod
    def _customers(cls, v: list[str]) -> list[str]:
        for c in v:
            if not _CUSTOMER.fullmatch(c):
                raise ValueError(f"customer {c[:40]!r} is not a pseudonym")
        return v

    @model_validator(mode="after")
    def _shape(self) -> IdentitiesCommand:
        if self.op == "remove" and (self.identities or not self.customers):
            raise ValueError("remove takes customers (a list of pseudonyms), not identities")
        if self.op != "remove" and self.customers:
            raise ValueError(f"{self.op} takes identities, not customers")
        if self.op == "upsert" and not self.identities:
            raise ValueError("upsert without identities")
        if self.identities and not self.sealed_to:
            raise ValueError("identities without sealed_to: keys are never sent in clear")
        if len({r.customer for r in self.identities}) != len(self.identities):
            raise ValueError("a customer is listed twice")
        for gw, wrapped in self.sealed_to.items():
            if not ID_PATTERN.fullmatch(gw) or not 0 < len(wrapped) <= 200:
                raise ValueError(f"sealed_to: {gw[:40]!r} is not a gateway with a key")
        return self


_RECORDS: Final = TypeAdapter(list[SealedIdentityRecord])
VALIDATE_BATCH: Final = 1000

COMMANDS: Final[dict[str, type[Payload]]] = {
    "replay": ReplayCommand, "identities": IdentitiesCommand,
}


@dataclass(frozen=True, slots=True)
class CommandRejected:
    """A command not acted on, with the reason the answer and the count carry."""

    name: str | None
    reason: Reason
    detail: str
    command_id: str | None = None


@dataclass(frozen=True, slots=True)
class IdentityChange:
    """An identities command, opened: what the gateway applies."""

    op: Literal["upsert", "remove", "replace"]
    identities: tuple[Identity, ...]
    customers: tuple[str, ...]
    request_id: str | None
    command_id: str | None = None

    @property
    def received(self) -> int:
        return len(self.identities) + len(self.customers)


def validate_payload(name: str, payload: Mapping[str, Any], *, now: float,
                     command_id: str | None = None,
                     pause: Callable[[], None] | None = None) -> Payload | CommandRejected:
    """Validate the signed payload of command ``name`` against the gateway's clock.

    A long identity list is validated in batches with ``pause()`` between them: one
    validation call of 100,000 records holds the interpreter for about a second, which
    a thread must not do to the event loop."""
    model = COMMANDS.get(name)
    if model is None:
        return CommandRejected(name, "unknown_command", "no such command", command_id)
    context = {"now": now}
    offset = 0
    try:
        records = payload.get("identities")
        if model is IdentitiesCommand and pause is not None and isinstance(records, list) \
                and VALIDATE_BATCH < len(records) <= MAX_IDENTITIES:  # longer: one error
            checked: list[SealedIdentityRecord] = []
            for offset in range(0, len(records), VALIDATE_BATCH):
                checked += _RECORDS.validate_python(records[offset:offset + VALIDATE_BATCH],
                                                    context=context)
                pause()
            offset = 0
            payload = {**payload, "identities": checked}  # instances: not validated again
        return model.model_validate(payload, context=context)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = list(first["loc"])
        if offset and loc and isinstance(loc[0], int):
            loc = ["identities", loc[0] + offset, *loc[1:]]
        where = ".".join(str(x) for x in loc) or "payload"
        return CommandRejected(name, "invalid", f"{where}: {first['msg']}", command_id)
    except (RecursionError, ValueError) as exc:
        return CommandRejected(name, "invalid", f"payload: {exc}"[:200], command_id)


def open_identities(cmd: IdentitiesCommand, *, key: X25519PrivateKey, store: str,
                    gateway: str, command_id: str | None = None,
                    pause: Callable[[], None] | None = None,
                    ) -> IdentityChange | CommandRejected:
    """Unseal every record's key with this gateway's private key; all or nothing
    (``pause`` is called between batches, as in :func:`validate_payload`)."""
    identities: list[Identity] = []
    if cmd.identities:
        wrapped = cmd.sealed_to.get(gateway)
        if wrapped is None:
            return CommandRejected(
                "identities", "not_sealed_for_this_gateway",
                f"sealed to {sorted(cmd.sealed_to)[:8]}, not to {gateway}: central needs "
                "this gateway's key (its birth certificate carries it)", command_id)
        try:
            sealer = seal.RecordSealer(
                seal.unwrap_key(wrapped, key, store=store, gateway=gateway))
            for n, rec in enumerate(cmd.identities):
                if pause is not None and n and n % VALIDATE_BATCH == 0:
                    pause()
                try:
                    identities.append(rec.with_key(sealer.open(rec.sealed_key, rec.aad())))
                except (seal.SealError, ValueError) as exc:
                    raise seal.SealError(f"identities.{n}: {exc}") from exc
        except seal.SealError as exc:
            return CommandRejected("identities", "unsealable", str(exc), command_id)
    return IdentityChange(cmd.op, tuple(identities), tuple(cmd.customers), cmd.request_id,
                          command_id)


def seal_identities(
    records: list[IdentityRecord], recipients: Mapping[str, X25519PublicKey], *,
    store: str, rand: Callable[[int], bytes],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Central's side: the sealed records and ``sealed_to`` for an identities command."""
    cek = rand(seal.KEY_BYTES)
    sealer = seal.RecordSealer(cek)
    sealed = []
    for r in records:
        fields = r.model_dump(exclude={"identity_key"})
        fields["sealed_key"] = sealer.seal(bytes.fromhex(r.identity_key), r.aad(), rand)
        sealed.append(fields)
    wrapped = {gw: seal.wrap_key(cek, pub, store=store, gateway=gw, rand=rand)
               for gw, pub in recipients.items()}
    return sealed, wrapped


@dataclass(slots=True)
class AnswerBudget:
    """How many rejections are answered with an event: a token bucket per reason, so a
    flood of forgeries cannot fill the outbox, while every rejection is still counted.
    Pure: the time is passed in."""

    burst: float = 10.0
    per_s: float = 0.2
    # failures anyone can cause at will (no valid signature needed): one a minute
    unauthenticated_per_s: float = 1 / 60
    _tokens: dict[str, tuple[float, float]] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)

    def take(self, reason: str, now: float) -> int | None:
        """None: do not answer (counted as suppressed); else how many were suppressed
        since the last answer for this reason (and that count is reset)."""
        rate = self.unauthenticated_per_s if reason in UNAUTHENTICATED else self.per_s
        tokens, at = self._tokens.get(reason, (self.burst, now))
        tokens = min(self.burst, tokens + max(now - at, 0.0) * rate)
        if tokens < 1.0:
            self._tokens[reason] = (tokens, now)
            self.suppressed[reason] = self.suppressed.get(reason, 0) + 1
            return None
        self._tokens[reason] = (tokens - 1.0, now)
        return self.suppressed.pop(reason, 0)


def ranges(numbers: list[int]) -> list[list[int]]:
    """[1, 2, 3, 7, 9, 10] -> [[1, 3], [7, 7], [9, 10]] (input sorted)."""
    out: list[list[int]] = []
    for n in numbers:
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out
