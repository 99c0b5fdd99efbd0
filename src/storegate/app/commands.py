"""Handles commands central sends to this store over MQTT.

Runs on the publisher thread; validation is pure (core.commands); the effects go through
the outbox (requeue, the answer event) and the publisher (re-send).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from storegate.adapters.outbox_sqlite import Outbox
from storegate.app.logs import LogOnce
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.commands import (
    CommandRejected,
    IdentitiesCommand,
    ReplayCommand,
    parse_command,
    ranges,
)

log = logging.getLogger(__name__)


class CommandHandler:
    def __init__(
        self,
        *,
        gateway_id: str,
        outbox: Outbox,
        resend: Callable[[list[int]], None],
        wall_clock: Callable[[], float],
        identities: Callable[[IdentitiesCommand], None] | None = None,
    ) -> None:
        self._gateway_id = gateway_id
        self._outbox = outbox
        self._resend = resend
        self._wall = wall_clock
        self._identities = identities
        self._warn = LogOnce(log)
        self.accepted_total = 0
        self.rejected_total = 0

    def __call__(self, topic: str, payload: bytes) -> None:
        name = topic.rsplit("/", 1)[-1]
        cmd = parse_command(name, payload)
        if isinstance(cmd, CommandRejected):
            self.rejected_total += 1
            self._warn(f"{name}:{cmd.reason}", "invalid command on %s ignored: %s",
                       topic, cmd.reason, topic=topic, bytes=len(payload))
            return
        if isinstance(cmd, IdentitiesCommand):
            if self._identities is None:
                self.rejected_total += 1
                self._warn("identities:off", "identities command ignored: this gateway "
                           "keeps no identities", topic=topic)
                return
            self.accepted_total += 1
            self._identities(cmd)
            return
        if isinstance(cmd, ReplayCommand):
            if cmd.gateway != self._gateway_id:
                return  # addressed to another gateway of this store
            self.accepted_total += 1
            log.info("replay of sequences %d..%d requested (request %s)",
                     cmd.from_sequence, cmd.to_sequence, cmd.request_id)
            self._outbox.requeue(
                cmd.from_sequence, cmd.to_sequence,
                lambda requeued, missing: self._replayed(cmd, requeued, missing),
            )

    def _replayed(self, cmd: ReplayCommand, requeued: list[int], missing: list[int]) -> None:
        """On the writer thread, after the requeue committed."""
        self._resend(requeued)
        if missing:
            log.warning("replay %s: %d sequence(s) no longer held: %s", cmd.request_id,
                        len(missing), ranges(missing)[:10])
        data = p.GatewayReplayed(
            request_id=cmd.request_id, from_sequence=cmd.from_sequence,
            to_sequence=cmd.to_sequence, republished=len(requeued),
            unavailable=ranges(missing),
        )
        draft = ev.EventDraft(ev.GATEWAY_REPLAYED, f"gateway/{self._gateway_id}",
                              self._wall(), data)
        self._outbox.submit([draft])  # the answer travels like any event
