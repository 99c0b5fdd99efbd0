"""Handles commands central sends to this store over MQTT.

The publisher thread only queues what arrives (bounded, by count and bytes); one
command thread checks and applies it, so a large identities sync never holds up
publishing or the event loop. The checks are pure (core.topics, core.trust,
core.commands): exact topic, size, signature and key, time window, then this gateway's
memory of the commands it applied (adapters/command_ledger.py: a captured command cannot
be replayed, whatever the box's clock does), then the payload, then the seal. A command
that fails any of them is never acted on: it is counted by reason, logged once, and
answered with a ``gateway.command_rejected`` event (answers are rate-limited per
reason, forgeries harder, so they cannot fill the outbox; counts are not). An
identities command's id is recorded only once the change took effect.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from storegate.adapters.command_ledger import CommandLedger
from storegate.adapters.outbox import Outbox
from storegate.app import collector
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.commands import (
    COMMANDS,
    AnswerBudget,
    CommandRejected,
    IdentitiesCommand,
    IdentityChange,
    ReplayCommand,
    open_customers,
    open_identities,
    ranges,
    validate_payload,
)
from storegate.core.payloads import Payload
from storegate.core.personal.registry import CustomersCommand
from storegate.core.topics import parse_command_topic
from storegate.core.trust import Rejected, TrustPolicy, Verified, verify
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

QUEUE_MAX: Final = 32
BULK_BYTES: Final = 1 << 20  # a command this large is bulk work (app/collector.py)
QUEUE_MAX_BYTES_FACTOR: Final = 2  # at most this many max-size commands wait in memory

# Applied: the callback the identities hand-over gets, called with True once the change
# took effect (the command id is then recorded), False if it did not (central may send
# the same command again).
Done = Callable[[bool], None]
# Any other command, validated (and opened, when it carries sealed keys: customers ->
# CustomersChange), with its signed envelope's facts; it calls Done as above.
CommandCallback = Callable[[object, Verified, Done], None]


class _Cancelled(Exception):  # noqa: N818 - control flow inside the command thread
    """The gateway is stopping: the command being checked is dropped, unanswered and
    unrecorded, so central's resend is accepted."""


class CommandHandler:
    def __init__(
        self,
        *,
        store_id: str,
        gateway_id: str,
        policy: TrustPolicy,
        max_bytes: int,
        outbox: Outbox,
        submit: Callable[[list[ev.EventDraft]], None],
        ledger: CommandLedger,
        seal_key: X25519PrivateKey,
        resend: Callable[[list[int]], None],
        identities: Callable[[IdentityChange, Done], None],
        wall_clock: Callable[[], float],
        handlers: Mapping[str, CommandCallback] | None = None,
    ) -> None:
        self._store_id = store_id
        self._gateway_id = gateway_id
        self._policy = policy
        self._max_bytes = max_bytes
        self._outbox = outbox  # replay: requeue
        self._submit = submit  # answers: through the intake, like every event
        self._ledger = ledger
        self._seal_key = seal_key
        self._resend = resend
        self._identities = identities
        self._handlers = dict(handlers or {})
        self._wall = wall_clock
        self._inbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue(QUEUE_MAX)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards everything below, across threads
        self._queued_bytes = 0
        self._in_flight: set[str] = set()  # handed over, not yet applied
        self._warn = LogOnce(log)
        self._budget = AnswerBudget()
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

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop checking: a command being checked is abandoned at its next pause (not
        recorded, so central's resend is accepted); what is queued is dropped."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(None)  # wakes an idle thread; a busy one sees the flag
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("the command thread did not stop within %g s; going on without it",
                        timeout_s)

    def __call__(self, topic: str, payload: bytes) -> None:
        """From the publisher thread: queue, never block it."""
        size = len(payload)
        if size > self._max_bytes:
            self._reject(CommandRejected(
                None, "too_large", f"{size} bytes, more than trust.max_command_bytes "
                f"({self._max_bytes})"))
            return
        with self._lock:
            room = self._queued_bytes + size <= self._max_bytes * QUEUE_MAX_BYTES_FACTOR
            if room:
                self._queued_bytes += size
        if room and not self._stopping.is_set():
            try:
                self._inbox.put_nowait((topic, payload))
            except queue.Full:
                pass
            else:
                return
        if room:
            with self._lock:
                self._queued_bytes -= size
        self._reject(CommandRejected(None, "overloaded", "too many commands waiting"))

    # --- command thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            item = self._inbox.get()
            if item is None:
                continue
            topic, payload = item
            with self._lock:
                self._queued_bytes -= len(payload)
            try:
                self.handle(topic, payload)
            except _Cancelled:
                log.info("stopping: a command being checked was abandoned (not applied, "
                         "not recorded: central's resend will be accepted)")
            except Exception:  # a bug must not end command handling
                log.exception("command handling failed")

    def _pause(self) -> None:
        """Between batches of long work: let other threads (the event loop) run, and
        give up when the gateway is stopping."""
        time.sleep(0)
        if self._stopping.is_set():
            raise _Cancelled

    def handle(self, topic: str, payload: bytes) -> None:
        """Check one command and act on it (the command thread; tests call it too)."""
        now = self._wall()
        where = parse_command_topic(topic, self._store_id)
        if where is None:
            self._reject(CommandRejected(None, "wrong_topic", "not a command topic of this "
                                         "store (parsed exactly)"))
            return
        name = where.name
        if name not in COMMANDS:
            self._reject(CommandRejected(name, "unknown_command", "no such command"))
            return
        with contextlib.ExitStack() as bulk:
            def authentic() -> None:  # large and signed by central: bulk work from here
                if len(payload) >= BULK_BYTES:
                    bulk.enter_context(collector.paused())

            checked = verify(payload, name=name, store=where.store, policy=self._policy,
                             now=now, pause=self._pause, authentic=authentic)
            if isinstance(checked, Rejected):
                self._reject(CommandRejected(name, checked.reason, checked.detail,
                                             checked.command_id))
                return
            self._checked(checked, now)

    def _checked(self, checked: Verified, now: float) -> None:
        """An authentic command, in its time window: ledger, payload, seal, effect."""
        name, cid = checked.name, checked.command_id
        if self._ledger.stale(checked.issued_at):
            self._reject(CommandRejected(
                name, "expired", "issued long before the newest command applied here "
                "(central's clock, whatever this box's clock says)", cid))
            return
        with self._lock:
            duplicate = cid in self._in_flight
        if duplicate or self._ledger.seen(cid):
            self._reject(CommandRejected(name, "duplicate", "already applied", cid))
            return
        cmd = validate_payload(name, checked.payload, now=now, command_id=cid,
                               pause=self._pause)
        if isinstance(cmd, CommandRejected):
            self._reject(cmd)
            return
        if isinstance(cmd, IdentitiesCommand):
            change = open_identities(cmd, key=self._seal_key, store=checked.store,
                                     gateway=self._gateway_id, command_id=cid,
                                     pause=self._pause)
            if isinstance(change, CommandRejected):
                self._reject(change)
                return
            self._hand_over(cid, checked.issued_at, lambda done: self._identities(change, done))
        elif isinstance(cmd, ReplayCommand):
            if cmd.gateway != self._gateway_id:
                return  # addressed to another gateway of this store
            self._ledger.record(cid, checked.issued_at)
            with self._lock:
                self.accepted_total += 1
            log.info("replay of sequences %d..%d requested (command %s, request %s)",
                     cmd.from_sequence, cmd.to_sequence, cid, cmd.request_id)
            self._outbox.requeue(
                cmd.from_sequence, cmd.to_sequence,
                lambda requeued, missing: self._replayed(cmd, cid, requeued, missing),
            )
        else:
            self._generic(cmd, checked)

    def _generic(self, cmd: Payload, checked: Verified) -> None:
        """Any other command: opened if it carries sealed keys, then handed over."""
        name, cid = checked.name, checked.command_id
        handler = self._handlers.get(name)
        if handler is None:
            self._reject(CommandRejected(name, "unknown_command", "this gateway does not "
                                         "handle it (not wired)", cid))
            return
        opened: object = cmd
        if isinstance(cmd, CustomersCommand):  # sealed keys: opened on this thread
            opened = open_customers(cmd, key=self._seal_key, store=checked.store,
                                    gateway=self._gateway_id, command_id=cid,
                                    pause=self._pause)
            if isinstance(opened, CommandRejected):
                self._reject(opened)
                return
        self._hand_over(cid, checked.issued_at, lambda done: handler(opened, checked, done))

    def _hand_over(self, cid: str, issued_at: float, give: Callable[[Done], None]) -> None:
        """Hand an accepted command over; its id is recorded only once it took effect."""
        with self._lock:
            self._in_flight.add(cid)
            self.accepted_total += 1
        give(lambda ok: self._applied(cid, issued_at, ok))

    def _applied(self, command_id: str, issued_at: float, ok: bool) -> None:
        """A handed-over change took effect (or not): record its id only if it did, so
        a withdrawal that did not happen can be sent again with the same id."""
        try:
            if ok:
                self._ledger.record(command_id, issued_at)
        finally:
            with self._lock:
                self._in_flight.discard(command_id)

    def _reject(self, r: CommandRejected) -> None:
        now = self._wall()
        with self._lock:
            self.rejected_total += 1
            self.rejected_by_reason[r.reason] = self.rejected_by_reason.get(r.reason, 0) + 1
            self.last_rejection = f"{r.name or '?'}: {r.reason}: {r.detail}"[:300]
            # Keyed by reason only: names come from the sender, who must not be able to
            # exhaust the log budget with invented ones. The topic is never echoed.
            self._warn(r.reason, "command %s rejected (%s): %s", r.name or "?", r.reason,
                       r.detail)
            suppressed = self._budget.take(r.reason, now)
        if suppressed is None:
            return
        data = p.GatewayCommandRejected(
            command=r.name, command_id=r.command_id, reason=r.reason,
            detail=r.detail[:300], suppressed=suppressed)
        self._submit([ev.EventDraft(ev.GATEWAY_COMMAND_REJECTED,
                                    f"gateway/{self._gateway_id}", now, data)])

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
        self._submit([ev.EventDraft(ev.GATEWAY_REPLAYED, f"gateway/{self._gateway_id}",
                                    self._wall(), data)])
