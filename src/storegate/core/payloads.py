"""Typed ``data`` payloads of every event storegate publishes.

These models are the contract: the JSON Schemas in ``docs/schemas/`` and the AsyncAPI
document are generated from them. Money is integer minor units (never float), times
are RFC 3339 UTC strings, people appear only as pseudonyms.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Payload(BaseModel):
    """Base of all payloads: immutable, unknown fields rejected at the boundary."""

    model_config = ConfigDict(frozen=True, extra="forbid")


Timestamp = str  # RFC 3339 UTC, millisecond precision, e.g. 2026-11-28T10:15:00.123Z


# --- gateway -------------------------------------------------------------------------


class GatewayStatus(Payload):
    """Birth (online) and death (offline) certificate, retained on the status topic."""

    state: Literal["online", "offline"]
    session: int = Field(
        ge=1,
        description="Boot counter of this gateway, persisted: the death certificate of a "
        "session carries the same number as its birth.",
    )
    version: str = Field(description="storegate version of the gateway.")
    started_at: Timestamp = Field(description="When this session of the gateway started.")
    reason: Literal["started", "shutdown", "connection-lost"] = Field(
        description="Why the state is what it is: 'connection-lost' is the MQTT Last Will."
    )


class GatewayTelemetry(Payload):
    """Periodic health figures of the gateway (low priority: dropped first when full)."""

    last_sequence: int = Field(
        ge=0, description="Newest sequence accepted: lets central see a gap at the tail."
    )
    outbox_depth: int = Field(ge=0, description="Events accepted but not yet acknowledged.")
    oldest_pending_age_s: float | None = Field(
        ge=0, description="Age of the oldest unacknowledged event, null when none."
    )
    dropped_total: int = Field(ge=0, description="Events dropped by the retention budget.")
    published_total: int = Field(ge=0, description="Events acknowledged by the broker.")
    reconnects_total: int = Field(ge=0, description="Successful reconnections since start.")
    presence: PresenceHealth | None = Field(
        default=None, description="Presence pipeline health; null when presence is off.")
    lanes: list[LaneHealth] | None = Field(
        default=None, description="POS lanes' health; null when no lane is configured.")


class LaneHealth(Payload):
    """Counters since start for one POS lane."""

    lane: str
    purchases_total: int = Field(ge=0)
    rejected_total: int = Field(ge=0, description="Bytes, frames or jobs rejected by the "
                                "lane's parsers (noise, bad checksums, timeouts...).")
    totals_mismatch_total: int = Field(ge=0)
    devices_down: list[str] = Field(description="Roles whose tap is not open.")


class PresenceHealth(Payload):
    """Counters since start, so central can spot a dead scanner or a flood of garbage."""

    adverts_total: int = Field(ge=0)
    adverts_rejected_total: int = Field(ge=0, description="Malformed adverts and messages.")
    scan_restarts_total: int = Field(ge=0, description="Bluetooth scans the watchdog restarted.")
    sources_down: list[str] = Field(
        description="Sources not delivering: a scan restarting, a silent scanner node.")
    enrolled: int = Field(ge=0, description="Consenting customers whose ids resolve here.")
    customers_present: int = Field(ge=0)


class IdentitiesApplied(Payload):
    """The answer to an identities command: what this gateway holds afterwards. A
    withdrawal is confirmed only by ``applied: true`` (the keys are gone from the box)."""

    request_id: str | None
    op: Literal["upsert", "remove", "replace"]
    applied: bool = Field(description="False: nothing changed; send the command again.")
    error: str | None = Field(default=None, description="Why it was not applied.")
    received: int = Field(ge=0, description="Identities or pseudonyms in the command.")
    enrolled: int = Field(ge=0, description="Consenting customers enrolled afterwards.")


class GatewayReplayed(Payload):
    """The answer to a replay command: what was re-published and what was gone."""

    request_id: str | None
    from_sequence: int
    to_sequence: int
    republished: int = Field(ge=0, description="Events queued for publishing again.")
    unavailable: list[list[int]] = Field(
        description="Inclusive [first, last] sequence ranges no longer held (past the "
        "replay window or dropped by retention): lost to this gateway."
    )


# --- presence (completed by the presence issue) --------------------------------------


class VisitBase(Payload):
    visit_id: str = Field(description="Stable id of this visit (UUIDv7).")
    customer: str | None = Field(
        description="Pseudonymous customer id (consenting app users only); null for "
        "anonymous footfall."
    )
    zone: str | None = Field(description="Zone id, or null for the store visit itself.")
    entered_at: Timestamp


class VisitEntered(VisitBase):
    """A customer entered the store or a zone (after the minimum presence)."""


class VisitDwelled(VisitBase):
    """A dwell threshold was crossed during a visit."""

    dwell_s: float = Field(ge=0, description="Dwell so far, in seconds.")


class VisitExited(VisitBase):
    """A visit ended; ``exited_at`` is the last evidence of presence, not the timeout."""

    exited_at: Timestamp
    dwell_s: float = Field(ge=0)


class FootfallCounted(Payload):
    """Anonymous footfall: distinct devices heard inside a zone (or the store) in a
    period. Devices are counted by a keyed hash that rotates daily; no address, hash or
    payload leaves the box. Phones change their address about every 15 minutes, so a
    device staying longer than a period may be counted again in the next one."""

    period_start: Timestamp
    period_end: Timestamp
    zone: str | None = Field(description="Zone id, or null for the whole store.")
    devices: int = Field(ge=0)


class OccupancyMeasured(Payload):
    """How many are in a zone (or the store): anonymous devices heard inside during the
    interval, and consenting customers with an open visit at its end. A snapshot for
    live dashboards; ``footfall.counted`` is the one to add up over a day."""

    period_start: Timestamp
    period_end: Timestamp
    zone: str | None = Field(description="Zone id, or null for the whole store.")
    devices: int = Field(ge=0, description="Distinct devices heard inside in the interval.")
    customers: int = Field(ge=0, description="Consenting customers present at the end.")


# --- purchases (completed by the POS issue) ------------------------------------------


class LineItem(Payload):
    sku: str | None = None
    name: str
    quantity_milli: int = Field(description="Quantity in thousandths (1 piece = 1000).")
    unit_price_minor: int = Field(description="Unit price in minor units (e.g. kopecks).")
    amount_minor: int = Field(description="Extended amount in minor units.")
    discount_minor: int = Field(default=0, ge=0)


class Tender(Payload):
    kind: Literal["cash", "card", "voucher", "other"]
    amount_minor: int


class FiscalSign(Payload):
    """The fiscal attributes a Russian fiscal receipt prints in its QR code."""

    fn: str = Field(description="Fiscal drive number.")
    fd: str = Field(description="Fiscal document number (the QR's i=).")
    fp: str = Field(description="Fiscal sign (the QR's fp=).")
    operation: int = Field(description="n=: 1 sale, 2 sale return, 3 expense, 4 expense return.")
    issued_at: str = Field(description="t= as printed, YYYYMMDDTHHMM[SS], local time.")
    total_minor: int = Field(description="s=: the receipt total, minor units.")


class PurchaseCompleted(Payload):
    """A receipt closed at a lane."""

    receipt: str = Field(description="Receipt or sequence number as printed by the till.")
    lane: str
    kind: Literal["sale", "return"] = "sale"
    source: Literal["printer", "fiscal"] = Field(
        default="printer", description="Which tap the purchase was read from.")
    transaction_id: str | None = Field(
        default=None, description="Joins the pos.scanned events of the same transaction.")
    operator: str | None = None
    items: list[LineItem]
    tenders: list[Tender] = []
    discount_minor: int = Field(default=0, ge=0)
    total_minor: int
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code.")
    loyalty_id: str | None = Field(default=None, description="Pseudonymous loyalty id.")
    offer_tokens: list[str] = []
    fiscal: FiscalSign | None = None
    first_item_at: Timestamp | None = Field(
        default=None, description="First item scanned (from the display or scanner): "
        "completed_at minus this is the time to serve.")
    completed_at: Timestamp
    totals_mismatch: bool = Field(
        default=False,
        description="Items minus discounts differ from the total printed: published as "
        "read, never silently fixed.",
    )


class PurchaseVoided(Payload):
    """An open receipt was cancelled at a lane."""

    receipt: str | None
    lane: str
    voided_at: Timestamp
    reason: str | None = None
    transaction_id: str | None = None


class PosScanned(Payload):
    """A loyalty card or an offer token scanned at a lane, during a transaction."""

    lane: str
    kind: Literal["loyalty", "offer"]
    value: str = Field(description="The loyalty id or the offer token, as scanned.")
    scanned_at: Timestamp
    transaction_id: str = Field(description="The transaction it belongs to; the purchase "
                                "that completes it carries the same id.")
