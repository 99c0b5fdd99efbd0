"""A store's registry sync, per gateway: sent, then synced only on the gateway's answer.

Central sends a store the whole registry (``customers`` replace, or upsert chunks)
sealed to the keys its gateways announced. Each gateway of the store answers each
command: ``gateway.customers_applied`` with ``applied: true``, or a rejection
(``gateway.command_rejected``: e.g. ``unsealable``, the identities sealed to a key it
no longer holds; or ``customers_applied`` with ``applied: false``). So per gateway:

* ``pending``: sent (the broker acknowledged every command), not answered yet;
* ``synced``: the gateway answered every command applied;
* ``failed``: the gateway refused one (``reason``); sent again after a backoff.

A gateway is due a sync when central has none for its current seal key (new gateway,
or a new key: the box was replaced), or when its sync failed or went unanswered
(and it is online) for longer than the backoff: :data:`RETRY_FIRST_S`, doubling, at
most :data:`RETRY_MAX_S`. Pure: the caller reads the rows and the clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

RETRY_FIRST_S: Final = 30.0
RETRY_MAX_S: Final = 300.0  # a rejecting gateway is sent the registry at most this often

SyncStateName = Literal["pending", "synced", "failed"]
StoreStateName = Literal["none", "pending", "synced", "failed"]

CUSTOMERS_APPLIED: Final = "storegate.gateway.customers_applied.v1"


@dataclass(frozen=True, slots=True)
class GatewaySync:
    """The last registry sync to one gateway (a row of ``syncs``)."""

    store: str
    gateway: str
    seal_key: str  # the key the sync sealed identities to
    commands: tuple[str, ...]  # its command ids (one replace, or upsert chunks)
    state: SyncStateName
    reason: str | None
    attempts: int  # syncs sent to this key
    sent_at: float
    answered_at: float | None


def retry_after(attempts: int, *, first_s: float = RETRY_FIRST_S,
                max_s: float = RETRY_MAX_S) -> float:
    """How long after its send a failed or unanswered sync is sent again."""
    return float(min(first_s * 2 ** max(attempts - 1, 0), max_s))


def retry_at(s: GatewaySync, *, first_s: float = RETRY_FIRST_S,
             max_s: float = RETRY_MAX_S) -> float | None:
    """When a sync is sent again on its own (None: synced, nothing to send)."""
    if s.state == "synced":
        return None
    return s.sent_at + retry_after(s.attempts, first_s=first_s, max_s=max_s)


def due(seal_key: str | None, online: bool, s: GatewaySync | None, now: float, *,
        first_s: float = RETRY_FIRST_S, max_s: float = RETRY_MAX_S) -> bool:
    """Whether this gateway needs the registry sent now."""
    if seal_key is None:
        return False  # no key announced: nothing sealed can reach it (records go anyway)
    if s is None or s.seal_key != seal_key:
        return True
    at = retry_at(s, first_s=first_s, max_s=max_s)
    if at is None or now < at:
        return False
    # unanswered: the broker holds it for the gateway's session; sent again only
    # while the gateway is online (and still not answering)
    return s.state == "failed" or online


def settle(s: GatewaySync, answers: Mapping[str, Sequence[Mapping[str, Any]]],
           ) -> GatewaySync:
    """The sync's state from what this gateway answered (``answers``: command id ->
    the gateway's answers to it, ``records.answers_to`` rows)."""
    if s.state != "pending":
        return s
    applied_at: list[float] = []
    for cid in s.commands:
        got = answers.get(cid, ())
        ok = [_at(a) for a in got if a["applied"] and a["type"] == CUSTOMERS_APPLIED]
        # a redelivered command is refused as a duplicate: it was applied before
        ok += [_at(a) for a in got if (a.get("data") or {}).get("reason") == "duplicate"]
        if ok:
            applied_at.append(max(ok))
            continue
        refused = [a for a in got if not a["applied"]]
        if refused:
            data = refused[0].get("data") or {}
            why = data.get("reason") or data.get("error") or "not applied"
            detail = data.get("detail")
            reason = f"{why}: {detail}" if detail else str(why)
            return replace(s, state="failed", reason=reason[:300],
                           answered_at=_at(refused[0]))
        return s  # this command not answered yet
    return replace(s, state="synced", reason=None, answered_at=max(applied_at, default=None))


def _at(answer: Mapping[str, Any]) -> float:
    at = answer.get("at")
    return float(at) if at is not None else 0.0


def store_state(syncs: Sequence[GatewaySync]) -> StoreStateName:
    """One word for the store: ``none`` (no gateway with a key synced yet), ``failed``
    (a gateway refused), ``pending``, or ``synced`` (every gateway answered)."""
    states = {s.state for s in syncs}
    if not states:
        return "none"
    if "failed" in states:
        return "failed"
    return "pending" if "pending" in states else "synced"
