"""Commands central sends down over MQTT: their payloads, validated where they enter.

Every command arrives in the signed envelope of :mod:`storegate.core.trust`; this module
validates what is inside (the ``payload``) and opens what is sealed. A command that
fails is never acted on: the caller counts it, logs it once and answers it. Pure: data,
keys and the time in; a command, an :class:`IdentityChange` or a rejection out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from storegate.core import seal
from storegate.core.ble.eid import Identity

# The identity records live in core/identity_records.py (the customers command in
# core/personal/ builds on them and is registered below); IdentityRecord and
# SealedIdentityRecord stay importable from here for the existing callers.
from storegate.core.identity_records import (
    CUSTOMER_RE,
    MAX_GATEWAYS_PER_STORE,
    MAX_IDENTITIES,
    REQUEST_ID_PATTERN,
    IdentityRecord,
    SealedIdentityRecord,
    check_sealed_to,
)
from storegate.core.payloads import Payload
from storegate.core.personal.campaigns import CampaignsCommand
from storegate.core.personal.erasure import EraseCommand
from storegate.core.personal.registry import (
    MAX_CUSTOMERS,
    CustomerRecord,
    CustomersChange,
    CustomersCommand,
)
from storegate.core.topics import ID_PATTERN
from storegate.core.trust import UNAUTHENTICATED, Reason

MAX_REPLAY_SPAN: Final = 1_000_000


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
            if not CUSTOMER_RE.fullmatch(c):
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
        check_sealed_to(self.sealed_to)
        return self


VALIDATE_BATCH: Final = 1000
# Commands whose record list can be long: (field, its records' validator, most records).
_BATCHED: Final[dict[type[Payload], tuple[str, TypeAdapter[list[Any]], int]]] = {
    IdentitiesCommand: ("identities", TypeAdapter(list[SealedIdentityRecord]),
                        MAX_IDENTITIES),
    CustomersCommand: ("customers", TypeAdapter(list[CustomerRecord]), MAX_CUSTOMERS),
}

COMMANDS: Final[dict[str, type[Payload]]] = {
    "replay": ReplayCommand, "identities": IdentitiesCommand,
    "campaigns": CampaignsCommand,
    "customers": CustomersCommand,
    "erase": EraseCommand,
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

    A long identity or customer list is validated in batches with ``pause()`` between
    them: one validation call of 100,000 records holds the interpreter for about a
    second, which a thread must not do to the event loop."""
    model = COMMANDS.get(name)
    if model is None:
        return CommandRejected(name, "unknown_command", "no such command", command_id)
    context = {"now": now}
    offset = 0
    batched = _BATCHED.get(model)
    try:
        if batched is not None and pause is not None:
            key, adapter, most = batched
            records = payload.get(key)
            if isinstance(records, list) and VALIDATE_BATCH < len(records) <= most:
                checked: list[Any] = []  # longer than most: one error, below
                for offset in range(0, len(records), VALIDATE_BATCH):
                    checked += adapter.validate_python(
                        records[offset:offset + VALIDATE_BATCH], context=context)
                    pause()
                offset = 0
                payload = {**payload, key: checked}  # instances: not validated again
        return model.model_validate(payload, context=context)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = list(first["loc"])
        if offset and loc and isinstance(loc[0], int) and batched is not None:
            loc = [batched[0], loc[0] + offset, *loc[1:]]
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
    identities = _open_sealed("identities", cmd.identities, cmd.sealed_to, key=key,
                              store=store, gateway=gateway, command_id=command_id,
                              pause=pause, where=lambda n: f"identities.{n}")
    if isinstance(identities, CommandRejected):
        return identities
    return IdentityChange(cmd.op, tuple(identities), tuple(cmd.customers), cmd.request_id,
                          command_id)


def open_customers(cmd: CustomersCommand, *, key: X25519PrivateKey, store: str,
                   gateway: str, command_id: str | None = None,
                   pause: Callable[[], None] | None = None,
                   ) -> CustomersChange | CommandRejected:
    """The customers command's identities unsealed, as :func:`open_identities` does;
    all or nothing."""
    at = [n for n, r in enumerate(cmd.customers) if r.identity is not None]
    sealed = [r.identity for r in cmd.customers if r.identity is not None]
    identities = _open_sealed("customers", sealed, cmd.sealed_to, key=key, store=store,
                              gateway=gateway, command_id=command_id, pause=pause,
                              where=lambda n: f"customers.{at[n]}.identity")
    if isinstance(identities, CommandRejected):
        return identities
    return CustomersChange(cmd.op, tuple(cmd.customers),
                           {i.customer: i for i in identities}, tuple(cmd.remove),
                           cmd.request_id, command_id)


def _open_sealed(name: str, records: Sequence[SealedIdentityRecord],
                 sealed_to: Mapping[str, str], *, key: X25519PrivateKey, store: str,
                 gateway: str, command_id: str | None, pause: Callable[[], None] | None,
                 where: Callable[[int], str]) -> list[Identity] | CommandRejected:
    """The one way sealed identity keys are opened, for every command carrying them."""
    identities: list[Identity] = []
    if not records:
        return identities
    wrapped = sealed_to.get(gateway)
    if wrapped is None:
        return CommandRejected(
            name, "not_sealed_for_this_gateway",
            f"sealed to {sorted(sealed_to)[:8]}, not to {gateway}: central needs "
            "this gateway's key (its birth certificate carries it)", command_id)
    try:
        sealer = seal.RecordSealer(seal.unwrap_key(wrapped, key, store=store, gateway=gateway))
        for n, rec in enumerate(records):
            if pause is not None and n and n % VALIDATE_BATCH == 0:
                pause()
            try:
                identities.append(rec.with_key(sealer.open(rec.sealed_key, rec.aad())))
            except (seal.SealError, ValueError) as exc:
                raise seal.SealError(f"{where(n)}: {exc}") from exc
    except seal.SealError as exc:
        return CommandRejected(name, "unsealable", str(exc), command_id)
    return identities


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
