"""Handles commands central sends to this store over MQTT.

The publisher thread only queues what arrives (bounded, by count and bytes); one
command thread checks and applies it, so a large identities sync never holds up
publishing or the event loop. The checks are pure (core.topics, core.trust,
core.commands): exact topic, size, signature and key, time window, then this gateway's
memory of command ids (a captured command cannot be replayed), then the payload, then
the seal. A command that fails any of them is never acted on: it is counted by reason,
logged once, and answered with a ``gateway.command_rejected`` event (answers are
rate-limited per reason, so forgeries cannot fill the outbox; counts are not).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from storegate.adapters.command_ledger import CommandLedger
from storegate.adapters.outbox_sqlite import Outbox
from storegate.app import collector
from storegate.app.logs import LogOnce
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.commands import (
    COMMANDS,
    AnswerBudget,
    CommandRejected,
    IdentitiesCommand,
    IdentityChange,
    ReplayCommand,
    open_identities,
    ranges,
    validate_payload,
)
from storegate.core.topics import parse_command_topic
from storegate.core.trust import Rejected, TrustPolicy, verify

log = logging.getLogger(__name__)

QUEUE_MAX: Final = 32
BULK_BYTES: Final = 1 << 20  # a command this large is bulk work (app/collector.py)


def _let_others_run() -> None:
    """Release the interpreter for a moment, between batches of long command work."""
    time.sleep(0)
QUEUE_MAX_BYTES_FACTOR: Final = 2  # at most this many max-size commands wait in memory


class CommandHandler:
    def __init__(
        self,
        *,
        store_id: str,
        gateway_id: str,
        policy: TrustPolicy,
        max_bytes: int,
        outbox: Outbox,
        ledger: CommandLedger,
        seal_key: X25519PrivateKey,
        resend: Callable[[list[int]], None],
        identities: Callable[[IdentityChange], None],
        wall_clock: Callable[[], float],
    ) -> None:
        self._store_id = store_id
        self._gateway_id = gateway_id
        self._policy = policy
        self._max_bytes = max_bytes
        self._outbox = outbox
        self._ledger = ledger
        self._seal_key = seal_key
        self._resend = resend
        self._identities = identities
        self._wall = wall_clock
        self._warn = LogOnce(log)
        self._budget = AnswerBudget()
        self._inbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue(QUEUE_MAX)
        self._queued_bytes = 0
        self._lock = threading.Lock()  # guards _queued_bytes and the counters below
        self._thread: threading.Thread | None = None
        # observable state (written under _lock, read by anyone)
        self.accepted_total = 0
        self.rejected_total = 0
        self.rejected_by_reason: dict[str, int] = {}
        self.last_rejection: str | None = None
        if not policy.keys:
            log.warning("no central keys configured ([trust] central_keys): every command "
                        "will be rejected")

    # --- any thread ----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the command being applied; what is still queued is dropped (central
        sees no answer and sends it again)."""
        if self._thread is None:
            return
        while True:
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                break
        self._inbox.put(None)
        self._thread.join(timeout_s)
        self._thread = None

    def __call__(self, topic: str, payload: bytes) -> None:
        """From the publisher thread: queue, never block it."""
        size = len(payload)
        if size > self._max_bytes:
            self._reject(CommandRejected(
                None, "too_large", f"{size} bytes, more than trust.max_command_bytes "
                f"({self._max_bytes})"), topic)
            return
        with self._lock:
            room = self._queued_bytes + size <= self._max_bytes * QUEUE_MAX_BYTES_FACTOR
            if room:
                self._queued_bytes += size
        if room:
            try:
                self._inbox.put_nowait((topic, payload))
            except queue.Full:
                with self._lock:
                    self._queued_bytes -= size
            else:
                return
        self._reject(CommandRejected(None, "overloaded", "too many commands waiting"), topic)

    # --- command thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            topic, payload = item
            with self._lock:
                self._queued_bytes -= len(payload)
            try:
                if len(payload) >= BULK_BYTES:
                    with collector.paused():
                        self.handle(topic, payload)
                else:
                    self.handle(topic, payload)
            except Exception:  # a bug must not end command handling
                log.exception("command handling failed")

    def handle(self, topic: str, payload: bytes) -> None:  # noqa: PLR0911 - check by check
        """Check one command and act on it (the command thread; tests call it too)."""
        now = self._wall()
        where = parse_command_topic(topic, self._store_id)
        if where is None:
            self._reject(CommandRejected(None, "wrong_topic", "not a command topic of this "
                                         "store (parsed exactly)"), topic)
            return
        name = where.name
        if name not in COMMANDS:
            self._reject(CommandRejected(name, "unknown_command", "no such command"), topic)
            return
        checked = verify(payload, name=name, store=where.store, policy=self._policy, now=now,
                         pause=_let_others_run)
        if isinstance(checked, Rejected):
            self._reject(CommandRejected(name, checked.reason, checked.detail,
                                         checked.command_id), topic)
            return
        cid = checked.command_id
        if not self._ledger.first_time(cid, checked.issued_at, now):
            self._reject(CommandRejected(name, "duplicate", "already accepted", cid), topic)
            return
        cmd = validate_payload(name, checked.payload, now=now, command_id=cid,
                               pause=_let_others_run)
        if isinstance(cmd, CommandRejected):
            self._reject(cmd, topic)
            return
        if isinstance(cmd, IdentitiesCommand):
            change = open_identities(cmd, key=self._seal_key, store=checked.store,
                                     gateway=self._gateway_id, command_id=cid)
            if isinstance(change, CommandRejected):
                self._reject(change, topic)
                return
            self._accepted()
            self._identities(change)
        elif isinstance(cmd, ReplayCommand):
            if cmd.gateway != self._gateway_id:
                return  # addressed to another gateway of this store
            self._accepted()
            log.info("replay of sequences %d..%d requested (command %s, request %s)",
                     cmd.from_sequence, cmd.to_sequence, cid, cmd.request_id)
            self._outbox.requeue(
                cmd.from_sequence, cmd.to_sequence,
                lambda requeued, missing: self._replayed(cmd, cid, requeued, missing),
            )

    def _accepted(self) -> None:
        with self._lock:
            self.accepted_total += 1

    def _reject(self, r: CommandRejected, topic: str) -> None:
        with self._lock:
            self.rejected_total += 1
            self.rejected_by_reason[r.reason] = self.rejected_by_reason.get(r.reason, 0) + 1
            self.last_rejection = f"{r.name or '?'}: {r.reason}: {r.detail}"[:300]
        # The topic is attacker-chosen: logged only by length, never echoed.
        self._warn(f"{r.name}:{r.reason}", "command %s rejected (%s): %s", r.name or "?",
                   r.reason, r.detail, topic_bytes=len(topic))
        suppressed = self._budget.take(r.reason, self._wall())
        if suppressed is None:
            return
        data = p.GatewayCommandRejected(
            command=r.name, command_id=r.command_id, reason=r.reason,
            detail=r.detail[:300], suppressed=suppressed)
        self._submit(ev.EventDraft(ev.GATEWAY_COMMAND_REJECTED,
                                   f"gateway/{self._gateway_id}", self._wall(), data))

    def _submit(self, draft: ev.EventDraft) -> None:
        try:
            self._outbox.submit([draft])  # the answer travels like any event
        except Exception as exc:  # closing or full: counted above, logged by the outbox
            log.debug("command answer not accepted: %s", exc)

    def _replayed(self, cmd: ReplayCommand, command_id: str, requeued: list[int],
                  missing: list[int]) -> None:
        """On the writer thread, after the requeue committed."""
        self._resend(requeued)
        if missing:
            log.warning("replay %s: %d sequence(s) no longer held: %s", command_id,
                        len(missing), ranges(missing)[:10])
        data = p.GatewayReplayed(
            request_id=cmd.request_id, command_id=command_id,
            from_sequence=cmd.from_sequence, to_sequence=cmd.to_sequence,
            republished=len(requeued), unavailable=ranges(missing),
        )
        self._submit(ev.EventDraft(ev.GATEWAY_REPLAYED, f"gateway/{self._gateway_id}",
                                   self._wall(), data))
