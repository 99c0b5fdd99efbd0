"""What a gateway published, read the way central reads it: exactly one place decides
whether a message is an event central stores, a status certificate, or a rejection.

The contract is the AsyncAPI document (generated from core/events.py and
core/payloads.py): the topic ``storegate/v1/<store>/<gateway>/events/<kind>`` carries a
CloudEvents structured JSON object whose ``source`` names the same store and gateway,
whose ``type`` is in the catalogue with that ``kind``, whose ``sequence`` is the
20-digit counter and whose ``data`` validates against the type's model. Anything else
is a :class:`Rejection` with a reason (counted and kept by the caller, never dropped
silently). Pure: bytes in, values out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import ValidationError

from storegate.core import events as ev
from storegate.core.topics import ROOT, is_valid_id

MAX_EVENT_BYTES: Final = 1 << 20
MAX_SEQUENCE: Final = (1 << 63) - 1  # a BIGINT column: beyond it no store can hold it
_DIGITS: Final = re.compile(f"[0-9]{{{ev.SEQUENCE_DIGITS}}}")  # ASCII only: not isdigit()
# RFC 3339 as the contract writes it: a date, 'T', a time, seconds' fraction optional,
# 'Z' or an offset (checked for a real date and time by datetime after the shape)
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})")

RejectReason = Literal[
    "wrong_topic",     # not storegate/v1/<store>/<gateway>/events/<kind> or .../status
    "too_large",       # over MAX_EVENT_BYTES
    "malformed",       # not a CloudEvents JSON object with the required attributes
    "source_mismatch",  # source names another store or gateway than the topic
    "unknown_type",    # type not in the catalogue
    "kind_mismatch",   # the type's kind is not the topic's last level
    "invalid_data",    # data fails the type's model
    "unstorable",      # passed the checks but the database refused it (kept, not retried)
]

# Event types whose ``data.customer`` names the customer (the profile's input).
_CUSTOMER_FIELD: Final = "customer"


@dataclass(frozen=True, slots=True)
class Event:
    """An event as central stores it: the parsed envelope, with the original bytes."""

    id: str
    store: str
    gateway: str
    sequence: int
    type: str
    time: str
    subject: str
    customer: str | None
    data: dict[str, Any]
    raw: bytes


@dataclass(frozen=True, slots=True)
class Status:
    """A birth or death certificate: what central needs to seal to this gateway."""

    store: str
    gateway: str
    state: str
    session: int
    seal_key: str | None
    time: str
    raw: bytes
    last_sequence: int | None = None  # the newest sequence the gateway had accepted


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str
    store: str | None = None
    gateway: str | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class EventTopic:
    store: str
    gateway: str
    kind: str  # "status" for the status topic


def parse_topic(topic: str) -> EventTopic | None:
    """``storegate/v1/<s>/<g>/events/<kind>`` or ``storegate/v1/<s>/<g>/status``."""
    parts = topic.split("/")
    if "/".join(parts[:2]) != ROOT or len(parts) not in (5, 6):
        return None
    store, gateway = parts[2], parts[3]
    if not (is_valid_id(store) and is_valid_id(gateway)) or store == "central":
        return None
    if len(parts) == 6 and parts[4] == "events" and is_valid_id(parts[5]):
        return EventTopic(store, gateway, parts[5])
    if len(parts) == 5 and parts[4] == "status":
        return EventTopic(store, gateway, "status")
    return None


def clean_text(value: str) -> bool:
    """Text both databases store: valid UTF-8 (no lone surrogate, which JSON's
    ``\\ud800`` escape can carry) and no NUL (PostgreSQL's text refuses it)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_time(text: str) -> float | None:
    """An RFC 3339 timestamp to epoch seconds; None when it is not one."""
    if len(text) > 40 or not _RFC3339.fullmatch(text):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp()


def _storable_data(data: Any) -> bool:
    """The data object as stored (JSON text): every string in it UTF-8 encodable (NUL
    is escaped by JSON, so only surrogates can break it)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError):
        return False
    return True


def _unavailable_ok(data: dict[str, Any]) -> bool:
    """``gateway.replayed``'s ranges: pairs [first, last] with 1 <= first <= last."""
    for pair in data.get("unavailable") or ():
        if not (isinstance(pair, list) and len(pair) == 2
                and all(type(x) is int for x in pair)
                and 1 <= pair[0] <= pair[1] <= MAX_SEQUENCE):
            return False
    return True


def read(topic: str, payload: bytes) -> Event | Status | Rejection:  # noqa: PLR0911
    """Decide what one message is (see the module docstring)."""
    where = parse_topic(topic)
    if where is None:
        return Rejection("wrong_topic", f"not an events or status topic: {topic[:120]!r}")
    store, gateway = where.store, where.gateway
    if len(payload) > MAX_EVENT_BYTES:
        return Rejection("too_large", f"{len(payload)} bytes", store, gateway)
    try:
        ce = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Rejection("malformed", "not JSON", store, gateway)
    if not isinstance(ce, dict):
        return Rejection("malformed", "not a JSON object", store, gateway)
    event_id, type_, source = ce.get("id"), ce.get("type"), ce.get("source")
    if not (isinstance(event_id, str) and 0 < len(event_id) <= 64
            and isinstance(type_, str) and isinstance(source, str)
            and ce.get("specversion") == ev.SPEC_VERSION
            and isinstance(ce.get("time"), str) and isinstance(ce.get("data"), dict)):
        return Rejection("malformed", "CloudEvents 1.0 needs specversion, id, source, type, "
                         "time and an object data", store, gateway)
    subject = ce.get("subject", "")
    if not (clean_text(event_id) and clean_text(ce["time"])
            and (not isinstance(subject, str) or clean_text(subject))):
        return Rejection("malformed", "id, subject and time must be UTF-8 text without NUL",
                         store, gateway)
    if parse_time(ce["time"]) is None:
        return Rejection("malformed", f"time {ce['time'][:40]!r} is not RFC 3339", store,
                         gateway, event_id)
    if source != f"storegate://{store}/{gateway}":
        return Rejection("source_mismatch", f"source {source[:100]!r} on the topic of "
                         f"{store}/{gateway}", store, gateway, event_id)
    kind = ev.CATALOGUE.get(type_)
    if kind is None:
        return Rejection("unknown_type", f"type {type_[:100]!r}", store, gateway, event_id)
    if kind.kind != where.kind:
        return Rejection("kind_mismatch", f"{type_} on events/{where.kind[:40]}",
                         store, gateway, event_id)
    try:
        model = kind.model.model_validate(ce["data"])
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(x) for x in first["loc"]) or "data"
        return Rejection("invalid_data", f"{at}: {first['msg']}"[:200], store, gateway,
                         event_id)
    if not _storable_data(ce["data"]):
        return Rejection("invalid_data", "data holds text that is not UTF-8 (a lone "
                         "surrogate)", store, gateway, event_id)
    if type_ == "storegate.gateway.replayed.v1" and not _unavailable_ok(ce["data"]):
        return Rejection("invalid_data", "unavailable: pairs [first, last] with "
                         f"1 <= first <= last <= {MAX_SEQUENCE}", store, gateway, event_id)
    last_seq = getattr(model, "last_sequence", None)
    if isinstance(last_seq, int) and not 0 <= last_seq <= MAX_SEQUENCE:
        return Rejection("invalid_data", f"last_sequence beyond {MAX_SEQUENCE}", store,
                         gateway, event_id)
    if kind is ev.GATEWAY_STATUS:
        return Status(store, gateway, ce["data"]["state"], ce["data"]["session"],
                      getattr(model, "seal_key", None), ce["time"], payload,
                      getattr(model, "last_sequence", None))
    seq_text = ce.get("sequence")
    if not (isinstance(seq_text, str) and _DIGITS.fullmatch(seq_text)
            and 1 <= int(seq_text) <= MAX_SEQUENCE):
        return Rejection("malformed", "sequence is the 20-digit counter, 1 to "
                         f"{MAX_SEQUENCE}", store, gateway, event_id)
    customer = ce["data"].get(_CUSTOMER_FIELD)
    if isinstance(customer, str) and not clean_text(customer):
        return Rejection("invalid_data", "customer holds NUL or is not UTF-8", store,
                         gateway, event_id)
    return Event(event_id, store, gateway, int(seq_text), type_, ce["time"],
                 str(subject)[:200],
                 customer if isinstance(customer, str) else None, ce["data"], payload)
