"""The event contract: the catalogue of event types and the CloudEvents envelope.

Every event is a CloudEvents 1.0 structured-mode JSON message. Beside the required
attributes it carries ``time`` (when it happened, not when it was sent), ``subject``,
``datacontenttype`` and the ``sequence`` extension: a decimal string, zero-padded to
20 digits so that it orders both lexicographically (as the CloudEvents sequence
extension asks) and numerically. It is monotonic per gateway, never reused and survives
restarts, so a consumer detects a gap as a missing number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, Final

from storegate.core import payloads as p

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/json"
SEQUENCE_DIGITS: Final = 20


class Priority(IntEnum):
    """Retention priority: when the outbox budget is exceeded the highest number goes
    first; ``CRITICAL`` (purchases) is never dropped."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3


@dataclass(frozen=True, slots=True)
class EventType:
    name: str  # the CloudEvents type, e.g. storegate.visit.entered.v1
    kind: str  # the last topic level: storegate/v1/<store>/<gw>/events/<kind>
    priority: Priority
    model: type[p.Payload]
    summary: str


def _t(type_: str, kind: str, priority: Priority, model: type[p.Payload], summary: str) -> (
    EventType
):
    return EventType(type_, kind, priority, model, summary)


GATEWAY_STATUS: Final = _t(
    "storegate.gateway.status.v1", "status", Priority.NORMAL, p.GatewayStatus,
    "Birth and death certificate of a gateway session (retained on the status topic).",
)
GATEWAY_TELEMETRY: Final = _t(
    "storegate.gateway.telemetry.v1", "telemetry", Priority.LOW, p.GatewayTelemetry,
    "Periodic health figures of a gateway.",
)
GATEWAY_REPLAYED: Final = _t(
    "storegate.gateway.replayed.v1", "gateway", Priority.NORMAL, p.GatewayReplayed,
    "Answer to a replay command: events re-published and ranges no longer held.",
)
GATEWAY_IDENTITIES_APPLIED: Final = _t(
    "storegate.gateway.identities_applied.v1", "gateway", Priority.HIGH, p.IdentitiesApplied,
    "Answer to an identities command: applied or not, and how many are enrolled now.",
)
GATEWAY_COMMAND_REJECTED: Final = _t(
    "storegate.gateway.command_rejected.v1", "gateway", Priority.NORMAL,
    p.GatewayCommandRejected,
    "Answer to a command the gateway did not act on: bad signature, unknown key, outside "
    "its time window, a replayed id, invalid or unsealable.",
)
VISIT_ENTERED: Final = _t(
    "storegate.visit.entered.v1", "visit", Priority.HIGH, p.VisitEntered,
    "A consenting customer entered the store or a zone.",
)
VISIT_DWELLED: Final = _t(
    "storegate.visit.dwelled.v1", "visit", Priority.HIGH, p.VisitDwelled,
    "A visit crossed a dwell threshold.",
)
VISIT_EXITED: Final = _t(
    "storegate.visit.exited.v1", "visit", Priority.HIGH, p.VisitExited,
    "A visit ended.",
)
FOOTFALL_COUNTED: Final = _t(
    "storegate.footfall.counted.v1", "footfall", Priority.LOW, p.FootfallCounted,
    "Anonymous distinct devices per zone and period (aggregate, no identifiers).",
)
OCCUPANCY_MEASURED: Final = _t(
    "storegate.occupancy.measured.v1", "occupancy", Priority.LOW, p.OccupancyMeasured,
    "Devices and consenting customers present per zone (aggregate, no identifiers).",
)
PURCHASE_COMPLETED: Final = _t(
    "storegate.purchase.completed.v1", "purchase", Priority.CRITICAL, p.PurchaseCompleted,
    "A receipt closed at a lane.",
)
POS_SCANNED: Final = _t(
    "storegate.pos.scanned.v1", "pos", Priority.HIGH, p.PosScanned,
    "A loyalty id or an offer token scanned at a lane (joins the purchase that follows).",
)
PURCHASE_VOIDED: Final = _t(
    "storegate.purchase.voided.v1", "purchase", Priority.CRITICAL, p.PurchaseVoided,
    "An open receipt was cancelled at a lane.",
)
OFFER_ISSUED: Final = _t(
    "storegate.offer.issued.v1", "offer", Priority.HIGH, p.OfferIssued,
    "An offer decided for a consenting customer and sent, with why it won.",
)
OFFER_SUPPRESSED: Final = _t(
    "storegate.offer.suppressed.v1", "offer", Priority.NORMAL, p.OfferSuppressed,
    "A campaign qualified but no offer was sent: the reason (consent, caps, quiet hours, "
    "control group...).",
)
OFFER_RESERVED: Final = _t(
    "storegate.offer.reserved.v1", "offer", Priority.HIGH, p.OfferReserved,
    "An offer token scanned at a lane was verified and reserved for its transaction.",
)
OFFER_REDEEMED: Final = _t(
    "storegate.offer.redeemed.v1", "offer", Priority.CRITICAL, p.OfferRedeemed,
    "A reserved offer was confirmed by its transaction's receipt.",
)
OFFER_RELEASED: Final = _t(
    "storegate.offer.released.v1", "offer", Priority.HIGH, p.OfferReleased,
    "A reservation was dropped (voided, timed out): the offer is redeemable again.",
)
OFFER_REJECTED: Final = _t(
    "storegate.offer.rejected.v1", "offer", Priority.NORMAL, p.OfferRejected,
    "A scanned offer token was refused at a lane, with the reason.",
)
GATEWAY_CUSTOMERS_APPLIED: Final = _t(
    "storegate.gateway.customers_applied.v1", "gateway", Priority.HIGH, p.CustomersApplied,
    "Answer to a customers command: applied or not, stale and removed counts, how many "
    "customers are known and enrolled now.",
)
GATEWAY_CAMPAIGNS_APPLIED: Final = _t(
    "storegate.gateway.campaigns_applied.v1", "gateway", Priority.HIGH, p.CampaignsApplied,
    "Answer to a campaigns command: applied or not, stale and removed counts, how many "
    "campaigns are active now.",
)
GATEWAY_ERASED: Final = _t(
    "storegate.gateway.erased.v1", "gateway", Priority.HIGH, p.Erased,
    "Answer to an erase command: what was removed, per store, in counts (names no "
    "customer).",
)
STAFF_VIEWED: Final = _t(
    "storegate.staff.viewed.v1", "staff", Priority.NORMAL, p.StaffViewed,
    "A staff screen showed a customer's personal profile (the access log): lane, role, "
    "session pseudonym, customer, fields shown.",
)

CATALOGUE: Final[dict[str, EventType]] = {
    t.name: t
    for t in (
        GATEWAY_STATUS, GATEWAY_TELEMETRY, GATEWAY_REPLAYED, GATEWAY_IDENTITIES_APPLIED,
        GATEWAY_COMMAND_REJECTED,
        VISIT_ENTERED, VISIT_DWELLED, VISIT_EXITED, FOOTFALL_COUNTED, OCCUPANCY_MEASURED,
        PURCHASE_COMPLETED, PURCHASE_VOIDED, POS_SCANNED,
        OFFER_ISSUED, OFFER_SUPPRESSED,
        OFFER_RESERVED, OFFER_REDEEMED, OFFER_RELEASED, OFFER_REJECTED,
        GATEWAY_CUSTOMERS_APPLIED, GATEWAY_CAMPAIGNS_APPLIED,
        GATEWAY_ERASED,
        STAFF_VIEWED,
    )
}

# Event types that travel through the outbox on events/<kind>; the status certificate
# is published directly (retained) on the status topic.
OUTBOX_TYPES: Final = tuple(t for t in CATALOGUE.values() if t is not GATEWAY_STATUS)


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event as a producer hands it over: the outbox gives it id and sequence."""

    type: EventType
    subject: str
    time: float  # epoch seconds when it happened
    data: p.Payload

    def __post_init__(self) -> None:
        if not isinstance(self.data, self.type.model):
            raise TypeError(
                f"{self.type.name} needs {self.type.model.__name__} data, "
                f"got {type(self.data).__name__}"
            )


_second_cache: list[object] = [None, ""]  # [whole second, "YYYY-MM-DDTHH:MM:SS"]


def rfc3339(epoch_s: float) -> str:
    """UTC RFC 3339 with milliseconds: ``2026-11-28T10:15:00.123Z``.

    On the per-event hot path: the date-time text of the current second is cached."""
    ms_total = round(epoch_s * 1000)
    sec, ms = divmod(ms_total, 1000)
    if _second_cache[0] != sec:
        text = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache[0], _second_cache[1] = sec, text
    return f"{_second_cache[1]}.{ms:03d}Z"


def format_sequence(sequence: int) -> str:
    return f"{sequence:0{SEQUENCE_DIGITS}d}"


def envelope(draft: EventDraft, *, event_id: str, source: str, sequence: int | None) -> (
    dict[str, Any]
):
    """The CloudEvents structured-mode object of a draft (``sequence`` None: status)."""
    ce: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "source": source,
        "type": draft.type.name,
        "subject": draft.subject,
        "time": rfc3339(draft.time),
        "datacontenttype": CONTENT_TYPE,
    }
    if sequence is not None:
        ce["sequence"] = format_sequence(sequence)
    ce["data"] = draft.data.model_dump(mode="json")
    return ce


def encode_event(
    draft: EventDraft, *, event_id: str, source_json: str, sequence: int | None
) -> bytes:
    """The same bytes as ``encode(envelope(...))``, built without an intermediate dict.

    The outbox writer calls this for every event; ``source_json`` is the JSON string
    literal of the source (constant per gateway, so encoded once by the caller).
    """
    seq = f',"sequence":"{sequence:0{SEQUENCE_DIGITS}d}"' if sequence is not None else ""
    head = (
        f'{{"specversion":"{SPEC_VERSION}","id":"{event_id}","source":{source_json},'
        f'"type":"{draft.type.name}","subject":{_json_str(draft.subject)},'
        f'"time":"{rfc3339(draft.time)}","datacontenttype":"{CONTENT_TYPE}"{seq},"data":'
    )
    return head.encode() + draft.data.model_dump_json().encode() + b"}"


def _json_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def encode(ce: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, the bytes that go on the wire and into the outbox."""
    return json.dumps(ce, separators=(",", ":"), ensure_ascii=False).encode()
