"""What central sends each store, built from what it holds: the payloads of the signed
commands the gateway consumes (core/commands.py validates them on the box), and the
erasure fan-out's bookkeeping.

* ``replay``: a gap's range for one gateway (core/central/gaps.py decides when).
* ``customers``: a store's registry snapshot: consents, loyalty pseudonyms, the presence
  identity sealed to the store's gateways (their birth certificates' seal keys), the
  profile snapshot the box uses (segments, favourite categories, lifetime spend, visits)
  and the customer's pickup orders for that store.
* ``campaigns``: upsert / replace of central's campaigns.
* ``erase``: the customers and their loyalty pseudonyms.

An erasure is done for a store when every gateway central knows there answered
``gateway.erased`` with ``applied: true`` to that store's command; done when every
store is. Pure: records and keys in, payloads out (``rand`` for sealing comes in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from storegate.core import seal
from storegate.core.commands import seal_identities
from storegate.core.identity_records import IdentityRecord


def replay_payload(gateway: str, first: int, last: int, request_id: str) -> dict[str, Any]:
    return {"gateway": gateway, "from_sequence": first, "to_sequence": last,
            "request_id": request_id}


def customers_payload(op: str, records: Sequence[Mapping[str, Any]],
                      identities: Mapping[str, IdentityRecord], seal_keys: Mapping[str, str],
                      *, store: str, request_id: str, rand: Callable[[int], bytes],
                      remove: Iterable[tuple[str, int]] = ()) -> dict[str, Any]:
    """A customers command: ``records`` are CustomerRecord dicts without ``identity``;
    ``identities`` (customer -> key in clear) are sealed to ``seal_keys`` (gateway ->
    X25519 public key text). Without a gateway key, identities cannot travel: they are
    left out (the caller reports it) and the rest of the record goes."""
    out = [dict(r) for r in records]
    body: dict[str, Any] = {"op": op, "customers": out, "request_id": request_id}
    wanted = [(r, identities[r["customer"]]) for r in out if r["customer"] in identities]
    if wanted and seal_keys:
        sealed, wrapped = seal_identities(
            [i for _, i in wanted], {gw: seal.load_public(k) for gw, k in seal_keys.items()},
            store=store, rand=rand)
        for (r, _), s in zip(wanted, sealed, strict=True):
            r["identity"] = s
        body["sealed_to"] = wrapped
    removals = [{"customer": c, "version": v} for c, v in remove]
    if removals:
        body["remove"] = removals
    return body


def erase_payload(customers: Sequence[str], loyalty_ids: Sequence[str],
                  request_id: str) -> dict[str, Any]:
    return {"customers": list(customers), "loyalty_ids": list(loyalty_ids),
            "request_id": request_id}


@dataclass(frozen=True, slots=True)
class StoreConfirmation:
    store: str
    command_id: str
    gateways: tuple[str, ...]      # gateways central knows in this store
    confirmed: tuple[str, ...]     # of those, answered applied: true
    failed: tuple[str, ...]        # answered applied: false (to be sent again)

    @property
    def done(self) -> bool:
        return bool(self.gateways) and set(self.gateways) <= set(self.confirmed)


def erasure_state(asked: Mapping[str, str], gateways: Mapping[str, Sequence[str]],
                  answers: Mapping[str, Mapping[str, bool]]) -> list[StoreConfirmation]:
    """``asked``: store -> the erase command id sent there; ``gateways``: store -> its
    known gateways; ``answers``: command id -> {gateway: applied}."""
    out = []
    for store, command_id in sorted(asked.items()):
        got = answers.get(command_id, {})
        gws = tuple(sorted(gateways.get(store, ())))
        out.append(StoreConfirmation(
            store, command_id, gws,
            tuple(sorted(g for g, ok in got.items() if ok)),
            tuple(sorted(g for g, ok in got.items() if not ok))))
    return out
