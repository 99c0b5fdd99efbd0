"""The retailer's side of central, as the HTTP API takes and gives it (validated where
it enters; the OpenAPI document is generated from these)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from storegate.core.identity_records import CUSTOMER_PATTERN, IdentityRecord
from storegate.core.personal.campaigns import Campaign
from storegate.core.personal.registry import (
    EARLIEST_AT,
    LATEST_AT,
    MAX_LOYALTY_IDS,
    MAX_TAGS,
    Purpose,
    Source,
    Tag,
)
from storegate.core.topics import ID_PATTERN

Epoch = Annotated[float, Field(ge=EARLIEST_AT, le=LATEST_AT)]
LoyaltyId = Annotated[str, StringConstraints(pattern=r"^ps1:[0-9a-f]{32}$")]
OrderId = Annotated[str, StringConstraints(min_length=1, max_length=40,
                                           pattern=r"^[\x21-\x7e]+$")]
StoreId = Annotated[str, StringConstraints(pattern=ID_PATTERN.pattern)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Proof(_In):
    """How the consent was captured, so it can be shown later: the method, a reference
    to the evidence (form id, app screen version, signed paper scan) and the wording
    the customer agreed to."""

    method: Literal["app_toggle", "web_form", "paper_form", "in_store_tablet",
                    "call_recording", "email_link"]
    reference: str = Field(min_length=1, max_length=200)
    text_version: str | None = Field(default=None, max_length=80,
                                     description="The version of the consent wording.")


class ConsentIn(_In):
    """One purpose's consent: when (at), where (source and store), how (proof)."""

    granted: bool
    at: Epoch = Field(description="When it was given or withdrawn (epoch seconds).")
    source: Source = Field(description="Channel: app, web, store, call-centre...")
    store: StoreId | None = Field(default=None, description="The store, if in a store.")
    proof: Proof


class ConsentOut(ConsentIn):
    purpose: Purpose
    recorded_at: float


class CustomerProfileIn(_In):
    """What the retailer's CRM knows and the stores may show (consent permitting)."""

    greeting_name: str | None = Field(default=None, max_length=80)
    tier: Tag | None = None
    segments: list[Tag] = Field(default=[], max_length=MAX_TAGS)
    preferences: list[Tag] = Field(default=[], max_length=MAX_TAGS)
    birthday_month: int | None = Field(default=None, ge=1, le=12)
    store_visits: int | None = Field(
        default=None, ge=0, le=1_000_000,
        description="Store visits the CRM knows of from before central's events (a "
        "loyalty history migrated in); stores are sent this plus the visits central "
        "stored.")


class CustomerIn(_In):
    """A customer as the CRM sends it. ``consents`` may be partial: purposes not named
    keep their last recorded consent."""

    consents: dict[Purpose, ConsentIn] = {}
    loyalty_ids: list[LoyaltyId] = Field(default=[], max_length=MAX_LOYALTY_IDS)
    profile: CustomerProfileIn = CustomerProfileIn()
    identity: IdentityRecord | None = Field(
        default=None, description="The app's presence identity (Eddystone-EID key in "
        "clear, over TLS): central seals it to each store's gateways.")


class CustomerOut(BaseModel):
    customer: str
    version: int
    consents: dict[str, ConsentOut]
    loyalty_ids: list[str]
    profile: CustomerProfileIn
    has_identity: bool
    created_at: float
    updated_at: float


class OfferCountsOut(BaseModel):
    issued: int
    redeemed: int
    control: int


class ProfileOut(BaseModel):
    customer: str
    store_visits: int
    purchases: int
    first_seen: float | None
    last_seen: float | None
    recency_days: float | None
    visits_per_30_days: float
    rfm: list[int]
    segment: str
    lifetime_spend_minor: int
    favourite_categories: list[str]
    preferred_store: str | None
    preferred_zones: list[str]
    time_to_serve_s_median: float | None
    offers: dict[str, OfferCountsOut]


class UpliftOut(BaseModel):
    campaign: str
    issued: int
    redeemed: int
    control: int
    treated_visits: int
    control_visits: int
    treated_rate: float | None
    control_rate: float | None
    uplift: float | None


class CampaignOut(BaseModel):
    id: str
    version: int
    campaign: dict[str, Any]
    removed: bool
    command_id: str | None = None


class PickupIn(_In):
    order_id: OrderId
    customer: str = Field(pattern=CUSTOMER_PATTERN)
    store: StoreId
    items: int = Field(ge=0, le=10_000)
    counter: Tag | None = None


class PickupOut(BaseModel):
    order_id: str
    customer: str
    store: str
    state: Literal["preparing", "ready", "collected", "cancelled"]
    counter: str | None
    items: int
    created_at: float
    ready_at: float | None
    collected_at: float | None
    command_id: str | None = None


class ErasureIn(_In):
    customers: list[Annotated[str, StringConstraints(pattern=CUSTOMER_PATTERN)]] = Field(
        min_length=1, max_length=1000)


class StoreConfirmationOut(BaseModel):
    store: str
    command_id: str
    gateways: list[str]
    confirmed: list[str]
    failed: list[str]
    done: bool


class ErasureOut(BaseModel):
    id: str
    customers: list[str]
    requested_at: float
    done: bool
    done_at: float | None
    stores: list[StoreConfirmationOut]


class CommandOut(BaseModel):
    id: str
    store: str
    name: str
    purpose: str | None
    issued_at: float
    sent_at: float | None
    answers: list[dict[str, Any]]


class GatewaySyncOut(BaseModel):
    """The last registry sync to one gateway: ``pending`` (sent, not answered),
    ``synced`` (the gateway answered every command applied) or ``failed`` (it refused
    one: ``reason``; sent again at ``retry_at``)."""

    gateway: str
    state: Literal["pending", "synced", "failed"]
    reason: str | None
    attempts: int
    sent_at: float
    answered_at: float | None
    retry_at: float | None
    commands: list[str]


class StoreSyncOut(BaseModel):
    """A store's registry sync: ``synced`` when every gateway with a seal key answered
    applied; ``failed`` if one refused; ``none`` before any sync."""

    store: str
    state: Literal["none", "pending", "synced", "failed"]
    gateways: list[GatewaySyncOut]


class GatewayOut(BaseModel):
    store: str
    gateway: str
    state: str | None
    session: int | None
    watermark: int
    highest: int | None
    events: int
    open_gaps: list[list[int]]
    lost: list[list[int]]
    sync: GatewaySyncOut | None = None


class CampaignIn(_In):
    campaign: Campaign
