"""Commands central sends down over MQTT, validated where they enter.

A command that fails validation is never acted on: the caller counts it and logs it
once with the reason. Pure: bytes in, a command or a :class:`CommandRejected` out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from pydantic import Field, ValidationError, model_validator

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


COMMANDS: Final[dict[str, type[Payload]]] = {"replay": ReplayCommand}


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
