"""Campaigns: what the offer engine may offer, to whom, on what trigger, and when.

A campaign arrives from central in a signed ``campaigns`` command (or, for the demo,
from a file: ``app/campaign_files.py``) and is validated here, once, with bounds on
every list and string: the engine trusts what passes. Pure: no clock; the validity
period is absolute (RFC 3339 with an offset), opening hours are in the store's local
time (the engine is given the store's ``tzinfo``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from storegate.core.payloads import OfferDiscount, Payload

MAX_CAMPAIGNS: Final = 2000  # one command, one store; the bench runs 500 active
MAX_TAGS: Final = 32
MAX_VARIANTS: Final = 8
MAX_HOURS_PER_DAY: Final = 4  # ranges per weekday (split shifts, lunch closures)
MIN_TTL_S: Final = 60
MAX_TTL_S: Final = 30 * 86_400
MAX_CONTROL_SHARE: Final = 0.5  # more held out than treated measures nothing useful
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
# Tags, segments, tiers, zones and categories are compared with the customer's profile:
# lower case, so "Vegan" from one system matches "vegan" from another.
TAG_PATTERN: Final = r"^[a-z0-9][a-z0-9_.:/&+-]{0,63}$"
REQUEST_ID_PATTERN: Final = r"^[\x20-\x7e]{1,128}$"
WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY: Final = 24 * 60

Tag = Annotated[str, Field(pattern=TAG_PATTERN)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _lower(v: object) -> object:
    """Tags are case-insensitive: normalised before the pattern is checked."""
    if isinstance(v, str):
        return v.strip().lower()
    if isinstance(v, list | tuple):
        return [x.strip().lower() if isinstance(x, str) else x for x in v]
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# --- triggers ------------------------------------------------------------------------


class StoreEntered(_Strict):
    """The customer's store visit starts."""

    kind: Literal["store_entered"]


class ZoneEntered(_Strict):
    kind: Literal["zone_entered"]
    zone: Tag

    _norm = field_validator("zone", mode="before")(_lower)


class ZoneDwelled(_Strict):
    """The customer has stayed ``min_dwell_s`` in the zone (presence reports dwell
    thresholds; the first at or past this one matches)."""

    kind: Literal["zone_dwelled"]
    zone: Tag
    min_dwell_s: float = Field(ge=0, le=86_400)

    _norm = field_validator("zone", mode="before")(_lower)


class NthVisit(_Strict):
    """The customer's n-th visit to this store starts (1: the first)."""

    kind: Literal["nth_visit"]
    n: int = Field(ge=1, le=10_000)


class BirthdayMonth(_Strict):
    """A store visit starts in the customer's birthday month (store local time)."""

    kind: Literal["birthday_month"]


class PurchaseCategory(_Strict):
    """A purchase with an item of this category completes (a follow-up offer)."""

    kind: Literal["purchase_category"]
    category: Tag

    _norm = field_validator("category", mode="before")(_lower)


class PickupReady(_Strict):
    """A store visit starts while an online order of the customer waits for pickup here."""

    kind: Literal["pickup_ready"]


TriggerSpec = Annotated[
    StoreEntered | ZoneEntered | ZoneDwelled | NthVisit | BirthdayMonth | PurchaseCategory
    | PickupReady,
    Field(discriminator="kind"),
]


# --- audience, content, hours --------------------------------------------------------


class Audience(_Strict):
    """Who the campaign is for. An empty list means anyone; a customer must match every
    list that is given: any of the segments, any of the tiers, any of the preferences."""

    segments: list[Tag] = Field(default=[], max_length=MAX_TAGS)
    tiers: list[Tag] = Field(default=[], max_length=MAX_TAGS)
    preferences: list[Tag] = Field(default=[], max_length=MAX_TAGS)
    customers: Literal["new", "returning", "any"] = Field(
        default="any", description="new: first visit to this store; returning: later ones.")

    _norm = field_validator("segments", "tiers", "preferences", mode="before")(_lower)


class Content(_Strict):
    title: str = Field(min_length=1, max_length=80)
    text: str = Field(default="", max_length=500)
    image_url: str | None = Field(
        default=None, max_length=512, pattern=r"^https://[\x21-\x7e]+$",
        description="https only: the app loads it, a plain-http image leaks the offer.")
    discount: OfferDiscount | None = None
    tags: list[Tag] = Field(default=[], max_length=MAX_TAGS, description="What the offer "
                            "is about: ranked against the customer's preferences and "
                            "favourite categories.")

    _norm = field_validator("tags", mode="before")(_lower)

    @field_validator("title", "text")
    @classmethod
    def _printable(cls, v: str) -> str:
        if any(ord(ch) < 0x20 and ch not in "\n\t" for ch in v):
            raise ValueError("control characters are not allowed")
        return v


class Variant(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    weight: int = Field(default=1, ge=1, le=1000)
    content: Content


class Span(_Strict):
    """One opening range of a day in local time, [start, end): "09:00"-"21:00";
    "24:00" ends at midnight."""

    start: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    end: str = Field(pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$")

    @model_validator(mode="after")
    def _order(self) -> Span:
        if minutes(self.end) <= minutes(self.start):
            raise ValueError(f"{self.start}-{self.end}: the end is not after the start "
                             "(opening hours do not cross midnight; split the range)")
        return self

    def range(self) -> tuple[int, int]:
        return minutes(self.start), minutes(self.end)


def minutes(hhmm: str) -> int:
    h, _, m = hhmm.partition(":")
    return int(h) * 60 + int(m)


# --- the campaign --------------------------------------------------------------------


class Campaign(_Strict):
    """One campaign, as central (or a demo file) defines it."""

    id: str = Field(pattern=ID_PATTERN)
    version: int = Field(ge=1, lt=1 << 53, description="Central's counter for this "
                         "campaign: an older or equal version never replaces a newer one.")
    trigger: TriggerSpec
    audience: Audience = Audience()
    content: Content
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    hours: dict[Weekday, Annotated[list[Span], Field(max_length=MAX_HOURS_PER_DAY)]] | None = Field(
        default=None, description="Opening hours per weekday in the store's local time; "
        "a weekday not listed is closed. Null: any time the store is open.")
    priority: int = Field(default=0, ge=0, le=1000, description="Higher wins.")
    control_share: float = Field(
        default=0.1, ge=0.0, le=MAX_CONTROL_SHARE, description="Share of customers held "
        "out (recorded as suppressed control_group, never sent), by a stable hash.")
    variants: list[Variant] = Field(default=[], max_length=MAX_VARIANTS)
    max_per_customer_per_day: int = Field(default=1, ge=1, le=100)
    offer_ttl_s: int = Field(default=4 * 3600, ge=MIN_TTL_S, le=MAX_TTL_S)

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: dict[str, list[Span]] | None) -> dict[str, list[Span]] | None:
        if v is None:
            return v
        for day, spans in v.items():
            ranges = sorted(s.range() for s in spans)
            for i in range(1, len(ranges)):
                if ranges[i][0] < ranges[i - 1][1]:
                    raise ValueError(f"{day}: ranges overlap")
        return v

    @model_validator(mode="after")
    def _whole(self) -> Campaign:
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValueError("valid_until is not after valid_from")
        ids = [v.id for v in self.variants]
        if len(set(ids)) != len(ids):
            raise ValueError("a variant id is listed twice")
        return self

    def valid_span(self) -> tuple[float, float]:
        """Epoch seconds [from, until); open ends are infinite."""
        return (_epoch(self.valid_from, float("-inf")), _epoch(self.valid_until,
                                                                float("inf")))


def _epoch(t: datetime | None, default: float) -> float:
    return default if t is None else t.timestamp()


class CampaignRef(_Strict):
    """A campaign to remove, at the version central removed it: a later upsert of that
    version or older is stale (the removal is remembered)."""

    id: str = Field(pattern=ID_PATTERN)
    version: int = Field(ge=1, lt=1 << 53)


class CampaignsCommand(Payload):
    """Campaigns from central (``storegate/v1/<store>/commands/campaigns``).

    ``upsert`` adds or replaces the campaigns given (newer versions only), ``remove``
    withdraws them, ``replace`` is a full sync: afterwards exactly these are active
    (still never older than what the gateway holds or has held). Every gateway of the
    store applies it and answers with ``gateway.campaigns_applied``.
    """

    op: Literal["upsert", "remove", "replace"]
    campaigns: list[Campaign] = Field(default=[], max_length=MAX_CAMPAIGNS)
    remove: list[CampaignRef] = Field(default=[], max_length=MAX_CAMPAIGNS)
    request_id: str | None = Field(default=None, pattern=REQUEST_ID_PATTERN)

    @model_validator(mode="after")
    def _shape(self) -> CampaignsCommand:
        if self.op == "remove" and (self.campaigns or not self.remove):
            raise ValueError("remove takes remove: [{id, version}], not campaigns")
        if self.op != "remove" and self.remove:
            raise ValueError(f"{self.op} takes campaigns, not remove")
        if self.op == "upsert" and not self.campaigns:
            raise ValueError("upsert without campaigns")
        ids = [c.id for c in self.campaigns] + [r.id for r in self.remove]
        if len(set(ids)) != len(ids):
            raise ValueError("a campaign is listed twice")
        return self
