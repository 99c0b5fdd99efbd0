"""Erasure: central asks the box to forget customers, every trace of them.

The ``erase`` command names customers by pseudonym; the gateway removes them from every
store it keeps (app/erasure.py orders the work) and answers with counts only
(``gateway.erased``): the answer names no customer, central knows what it asked by
``request_id`` and ``command_id``.

This module holds the command and the one pure rule every stored event goes through:
:func:`redact_event` rewrites a CloudEvents message so that no erased customer, and
none of their loyalty pseudonyms, is left in it, keeping its id and sequence (central
sees no gap; it sees an event whose personal fields are null).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Annotated, Any, Final

from pydantic import AfterValidator, Field, StringConstraints, field_validator

from storegate.core.events import EventDraft
from storegate.core.identity_records import (
    CUSTOMER_PATTERN,
    REQUEST_ID_PATTERN,
    check_pseudonym,
)
from storegate.core.payloads import Payload
from storegate.core.personal.registry import LoyaltyPseudonym

# Central erases in batches (a day's requests of a large chain fit easily); more than
# this in one command is refused, so one command's work on the box stays bounded.
MAX_ERASE: Final = 10_000
# The subject of an event that named an erased customer (none of today's do: visit,
# offer and receipt subjects carry ids of their own), replacing it whole.
REDACTED_SUBJECT: Final = "redacted"
SUBSTRING_SEARCH_MAX: Final = 64


# each checked where it stands, so a refusal names its index (customers.12)
Pseudonym = Annotated[str, StringConstraints(pattern=CUSTOMER_PATTERN),
                      AfterValidator(check_pseudonym)]
# a few cards per customer (a record holds at most MAX_LOYALTY_IDS; most hold one)
MAX_ERASE_CARDS: Final = 4 * MAX_ERASE


class EraseCommand(Payload):
    """Forget these customers (``storegate/v1/<store>/commands/erase``): the registry
    record (a keyed-hash tombstone stays, so nothing in flight brings them back), the
    identity key, presence and stitching state, issued offers (revoked), redemption
    ledger rows (pseudonymised) and every stored event naming them (redacted), then
    every file of the box is rewritten and its write-ahead log truncated. Answered with
    ``gateway.erased``."""

    customers: list[Pseudonym] = Field(min_length=1, max_length=MAX_ERASE,
                                       description="Pseudonyms of the customers to erase.")
    loyalty_ids: list[LoyaltyPseudonym] = Field(
        default_factory=list, max_length=MAX_ERASE_CARDS,
        description="The loyalty-card pseudonyms of these customers, as central knows "
        "them. Optional: the box erases the cards its registry holds for them, but a "
        "customer removed earlier (or never sent to this store) has no record left, and "
        "their cards would survive in stored purchases and scans. Listed cards are "
        "redacted wherever they appear, whoever's record names them.")
    request_id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)

    @field_validator("customers", "loyalty_ids")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("an id is listed twice")
        return v


def redact_event(payload: bytes, customers: Collection[str],
                 loyalty: Collection[str]) -> bytes | None:
    """The event without the erased: every string value of its ``data`` equal to an
    erased customer or one of their loyalty pseudonyms becomes null, and so does a
    purchase's ``loyalty_id`` when its customer is erased (the card is theirs); a
    ``subject`` containing one is replaced whole. Returns None when nothing changed
    (the stored bytes stay as they are). Id, type, time and sequence are kept."""
    try:
        ce = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None  # not ours to judge: the outbox only stores what it encoded
    if not isinstance(ce, dict):
        return None
    changed = False
    data = ce.get("data")
    if isinstance(data, dict):
        if data.get("customer") in customers and "loyalty_id" in data:
            changed |= data["loyalty_id"] is not None
            data["loyalty_id"] = None
        changed |= _null_matches(data, customers, loyalty)
    subject = ce.get("subject")
    if isinstance(subject, str) and _names_any(subject, customers, loyalty):
        ce["subject"] = REDACTED_SUBJECT
        changed = True
    if not changed:
        return None
    return json.dumps(ce, separators=(",", ":"), ensure_ascii=False).encode()


def redact_draft(draft: EventDraft, customers: Collection[str],
                 loyalty: Collection[str]) -> EventDraft | None:
    """:func:`redact_event`'s rule on an event not stored yet (queued for
    personalisation, held by the intake while the outbox refuses): the same fields
    nulled, the same subject replaced. Returns None when nothing names them (keep the
    draft as it is). A payload whose model refuses a null where the rule put one
    cannot be kept without the customer: that raises ValueError (the caller drops it,
    counted; no event type today has such a field)."""
    data = draft.data.model_dump(mode="json")
    changed = False
    if data.get("customer") in customers and data.get("loyalty_id") is not None:
        data["loyalty_id"] = None
        changed = True
    changed |= _null_matches(data, customers, loyalty)
    subject = draft.subject
    if _names_any(subject, customers, loyalty):
        subject = REDACTED_SUBJECT
        changed = True
    if not changed:
        return None
    return EventDraft(draft.type, subject, draft.time, type(draft.data).model_validate(data))


def _names_any(text: str, customers: Collection[str], loyalty: Collection[str]) -> bool:
    """Whether ``text`` contains any of the ids: a substring search for a few (one
    erasure is usually one customer), else its parts split on the separators subjects
    use, looked up (a substring search per id of 10,000 would be quadratic)."""
    if len(customers) + len(loyalty) <= SUBSTRING_SEARCH_MAX:
        return any(n in text for n in (*customers, *loyalty))
    return any(p in customers or p in loyalty for p in {text, *text.split("/")})


def _null_matches(node: Any, customers: Collection[str], loyalty: Collection[str]) -> bool:
    changed = False
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, str):
                if v in customers or v in loyalty:
                    node[k] = None
                    changed = True
            elif isinstance(v, dict | list):
                changed |= _null_matches(v, customers, loyalty)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, str):
                if v in customers or v in loyalty:
                    node[i] = None
                    changed = True
            elif isinstance(v, dict | list):
                changed |= _null_matches(v, customers, loyalty)
    return changed
