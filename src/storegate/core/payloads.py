"""Typed ``data`` payloads of every event storegate publishes.

These models are the contract: the JSON Schemas in ``docs/schemas/`` and the AsyncAPI
document are generated from them. Money is integer minor units (never float), times
are RFC 3339 UTC strings, people appear only as pseudonyms.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from storegate.core.trust import Reason  # one list of reasons: the checks' own


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
    seal_key: str | None = Field(
        default=None,
        description="This gateway's X25519 public key (base64url, 32 bytes): central seals "
        "identity keys to it (identities command, sealed_to). Made on the box on first "
        "start; a new key means central must seal to the new one.")
    offer_key: OfferKey | None = Field(
        default=None,
        description="This gateway's offer-signing key: tills, the store's other gateways "
        "(redemption.trusted_token_keys) and central verify its offer tokens with it.")
    last_sequence: int | None = Field(
        default=None, ge=0,
        description="Newest sequence accepted when this certificate was made (the death "
        "certificate after the drain: the end of the stream; the Last Will: as of the "
        "connection): lets central see a gap at the tail without waiting for a later "
        "event.")


class GatewayTelemetry(Payload):
    """Periodic health figures of the gateway (low priority: dropped first when full)."""

    last_sequence: int = Field(
        ge=0, description="Newest sequence accepted: lets central see a gap at the tail."
    )
    outbox_depth: int = Field(ge=0, description="Events accepted but not yet acknowledged.")
    pending_accept: int = Field(
        default=0, ge=0, description="Events read but not yet accepted: the outbox refused "
        "them (disk full) and they wait in memory, retried (purchases are never dropped).")
    oldest_pending_age_s: float | None = Field(
        ge=0, description="Age of the oldest unacknowledged event, null when none."
    )
    dropped_total: int = Field(ge=0, description="Events dropped by the retention budget.")
    published_total: int = Field(ge=0, description="Events acknowledged by the broker.")
    reconnects_total: int = Field(ge=0, description="Successful reconnections since start.")
    refused_total: int = Field(
        default=0, ge=0, description="Publishes the broker refused (MQTT 5 reason code >= "
        "0x80, e.g. not authorised), every attempt counted.")
    refused_held: int = Field(
        default=0, ge=0, description="Events whose last publish was refused: kept in the "
        "outbox and retried with backoff (a broker ACL to fix).")
    commands_rejected_total: int = Field(
        default=0, ge=0, description="Commands not acted on (bad signature, unknown key, "
        "stale, replayed, invalid...): each is also answered, rate-limited, with "
        "gateway.command_rejected.")
    presence: PresenceHealth | None = Field(
        default=None, description="Presence pipeline health; null when presence is off.")
    lanes: list[LaneHealth] | None = Field(
        default=None, description="POS lanes' health; null when no lane is configured.")
    personal: PersonalHealth | None = Field(
        default=None, description="Offers, redemption and stitching counters; null when "
        "the personalisation service is not running.")


class LaneHealth(Payload):
    """Counters since start for one POS lane."""

    lane: str
    purchases_total: int = Field(ge=0)
    rejected_total: int = Field(ge=0, description="Bytes, frames or jobs rejected by the "
                                "lane's parsers (noise, bad checksums, timeouts...).")
    totals_mismatch_total: int = Field(ge=0)
    devices_down: list[str] = Field(description="Roles whose tap is not open.")
    adds_up_share: float | None = Field(
        default=None, ge=0, le=1, description="Of the lane's last 50 receipts, the share "
        "whose items add up to the total; null until 10 were read. A fall means the "
        "receipt layout changed (printer firmware, new till): check the template.")
    layout_alert: bool = Field(
        default=False, description="adds_up_share fell below 0.8 (clears at 0.95).")


class PresenceHealth(Payload):
    """Counters since start, so central can spot a dead scanner or a flood of garbage."""

    adverts_total: int = Field(ge=0)
    adverts_rejected_total: int = Field(ge=0, description="Malformed adverts and messages.")
    scan_restarts_total: int = Field(ge=0, description="Bluetooth scans the watchdog restarted.")
    sources_down: list[str] = Field(
        description="Sources not delivering: a scan restarting, a silent scanner node.")
    enrolled: int = Field(ge=0, description="Consenting customers whose ids resolve here.")
    customers_present: int = Field(ge=0)
    calibration: PresenceCalibration | None = Field(
        default=None, description="The store's radio model fitted from its own zone "
        "beacons; null when calibration is off.")


class IdentitiesApplied(Payload):
    """The answer to an identities command: what this gateway holds afterwards. A
    withdrawal is confirmed only by ``applied: true`` (the keys are gone from the box)."""

    request_id: str | None
    command_id: str | None = Field(default=None, description="The signed command's id.")
    op: Literal["upsert", "remove", "replace"]
    applied: bool = Field(description="False: nothing changed; send the command again.")
    error: str | None = Field(default=None, description="Why it was not applied.")
    received: int = Field(ge=0, description="Identities or pseudonyms in the command.")
    enrolled: int = Field(ge=0, description="Consenting customers enrolled afterwards.")


class GatewayReplayed(Payload):
    """The answer to a replay command: what was re-published and what was gone."""

    request_id: str | None
    command_id: str | None = Field(default=None, description="The signed command's id.")
    from_sequence: int
    to_sequence: int
    republished: int = Field(ge=0, description="Events queued for publishing again.")
    unavailable: list[list[int]] = Field(
        description="Inclusive [first, last] sequence ranges no longer held (past the "
        "replay window or dropped by retention): lost to this gateway."
    )


class GatewayCommandRejected(Payload):
    """The answer to a command this gateway did not act on, and why. Every rejection is
    counted (status, telemetry); answers are rate-limited per reason, so a flood of
    forgeries cannot fill the outbox: ``suppressed`` says how many went unanswered."""

    command: str | None = Field(description="The command's name from its topic; null when "
                                "the topic is not a command topic.")
    command_id: str | None = Field(description="The signed command's id; null unless the "
                                   "signature verified (forgeries are never echoed).")
    reason: Reason = Field(
        description="unknown_key / bad_signature: not signed by a configured central "
        "key; mismatch: signed for another command or store; expired / not_yet_valid: "
        "outside trust.max_age_s / max_future_s; duplicate: this command id was "
        "already accepted; not_sealed_for_this_gateway / unsealable: seal to the "
        "gateway's current key (its birth certificate).")
    detail: str = Field(max_length=300)
    suppressed: int = Field(ge=0, description="Rejections for the same reason since the "
                            "last answer that were counted but not answered.")


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
    """A visit ended; ``exited_at`` is the last evidence of presence, not the timeout.

    A store visit's exit (``zone`` null) of a customer also carries the visit's outcome,
    the figures a store is measured by, so central has no joins to do; they are null on
    zone visits and on store visits whose beginning this gateway did not see."""

    exited_at: Timestamp
    dwell_s: float = Field(ge=0)
    converted: bool | None = Field(
        default=None, description="Store visits: true when at least one sale was "
        "attributed to this visit (purchase.completed with this visit_id and kind "
        "'sale'); a return alone does not convert. Null: zone visit, or not measured.")
    basket_minor: int | None = Field(
        default=None, description="Store visits: the visit's spend in minor units, the "
        "sum of the totals of the purchases attributed to it, returns subtracted (so it "
        "can be negative). 0 when nothing was bought. Null: zone visit, or not measured.")
    time_to_serve_s: float | None = Field(
        default=None, ge=0, description="Store visits: seconds from entering the checkout "
        "zone of the lane (configured per lane) to the completion of the visit's first "
        "attributed receipt: queueing plus service. Null: no purchase, the lane has no "
        "checkout zone, or the customer was not seen there.")
    offers_redeemed: list[str] = Field(
        default=[], description="Store visits: offer ids (offer.issued's offer_id) "
        "redeemed on the receipts attributed to this visit.")


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
    operator: str | None = Field(
        default=None, description="The cashier, as a keyed pseudonym: 'ps1:' + 32 hex "
        "digits, the first 128 bits of HMAC-SHA256(privacy key, 'operator:' + name as "
        "printed). The name as printed only where the gateway sets "
        "privacy.raw_operator_names; null when none was printed, or when the gateway has "
        "no privacy key (withheld, counted).")
    items: list[LineItem]
    tenders: list[Tender] = []
    discount_minor: int = Field(default=0, ge=0)
    tax_minor: int = Field(default=0, ge=0, description="Sales tax printed on top of the "
                           "items (US receipts): total = items - discounts + tax. VAT "
                           "included in the prices (Russian, EU receipts) is not here.")
    total_minor: int
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code.")
    loyalty_id: str | None = Field(
        default=None, description="The loyalty card, as a keyed pseudonym: 'ps1:' + 32 "
        "hex digits, the first 128 bits of HMAC-SHA256(privacy key, 'loyalty:' + card "
        "number as scanned or printed); central, holding the key, computes the same to "
        "join. The number itself only where the gateway sets privacy.raw_loyalty_ids; "
        "null when no card was presented, or when the gateway has no privacy key "
        "(withheld, counted).")
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
    customer: str | None = Field(
        default=None, description="Pseudonymous customer id the purchase is attributed to "
        "(see attribution for how and how sure); null when nobody could be, or several "
        "could (attribution.method 'ambiguous').")
    visit_id: str | None = Field(
        default=None, description="The customer's store visit (visit.entered with zone "
        "null) open when the purchase completed; null when the customer was not tracked "
        "in the store (no presence consent, phone not heard).")
    attribution: Attribution | None = Field(
        default=None, description="How the customer was found; null from gateways that "
        "do not stitch.")
    offers_redeemed: list[str] = Field(
        default=[], description="Offer ids (offer.issued's offer_id) whose tokens were "
        "scanned and reserved in this transaction and confirmed by this receipt.")


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
    value: str | None = Field(
        description="offer: the token as scanned. loyalty: the card as a keyed pseudonym, "
        "the same as the purchase's loyalty_id ('ps1:' + 32 hex digits of HMAC-SHA256("
        "privacy key, 'loyalty:' + number)); the number itself only where the gateway "
        "sets privacy.raw_loyalty_ids; null when the gateway has no privacy key.")
    scanned_at: Timestamp
    transaction_id: str = Field(description="The transaction it belongs to; the purchase "
                                "that completes it carries the same id.")


# --- stitching: who bought (issue 11) -------------------------------------------------


class Attribution(Payload):
    """How a purchase was attributed to a customer, in order of confidence: a loyalty
    card (scanned or on the receipt), an offer token scanned at the lane, or the only
    consenting customer in the lane's checkout zone when the receipt started."""

    method: Literal["loyalty", "token", "presence", "ambiguous", "none"] = Field(
        description="loyalty: the card maps to a known customer; token: an offer token "
        "reserved for this transaction; presence: exactly one customer in the lane's "
        "checkout zone when the receipt started; ambiguous: several were (customer "
        "null); none: no evidence.")
    confidence: float = Field(
        ge=0, le=1, description="How sure the gateway is of the customer, per method as "
        "configured ([stitching]); 0 for ambiguous and none.")
    candidates: int = Field(
        ge=0, description="Customers the evidence pointed to: 1 for a match, n for "
        "ambiguous, 0 for none.")
    detail: str = Field(default="", max_length=200, description="Why, in words (no "
                        "personal data): e.g. '2 customers in checkout zone till'.")


# --- offers (issue 11: the offer engine, core/personal/offers.py) --------------------

OfferTriggerKind = Literal[
    "store_entered", "zone_entered", "zone_dwelled", "nth_visit", "birthday_month",
    "purchase_category", "pickup_ready",
]
OfferSuppressionReason = Literal[
    "no_consent", "capped", "quiet_hours", "control_group", "audience", "already_held",
    "outside_hours", "lower_rank", "not_valid",
]


class OfferDiscount(Payload):
    """What an offer takes off: a percentage of the eligible items, or a fixed amount in
    minor units (money is never a float)."""

    kind: Literal["percent", "amount_minor"]
    value: int = Field(ge=1, le=1_000_000_000, description="percent: 1..100; "
                       "amount_minor: minor units (e.g. kopecks).")

    @model_validator(mode="after")
    def _percent(self) -> OfferDiscount:
        if self.kind == "percent" and self.value > 100:
            raise ValueError("a percent discount is at most 100")
        return self


class OfferIssued(Payload):
    """An offer was decided for a consenting customer and is sent (its token signed)."""

    offer_id: str = Field(description="The offer token's id: redemption events carry it.")
    campaign: str
    campaign_version: int = Field(ge=1)
    variant: str | None = Field(description="The A/B variant, null when the campaign has "
                                "none (chosen by a stable hash of customer and campaign).")
    customer: str | None = Field(description="Pseudonymous customer id; null only in "
                                 "an event stored before the customer was erased.")
    visit_id: str | None = Field(description="The store visit it was decided in.")
    trigger: OfferTriggerKind = Field(description="The campaign trigger that matched.")
    zone: str | None = Field(default=None, description="The zone of a zone trigger.")
    title: str
    discount: OfferDiscount | None
    issued_at: Timestamp
    expires_at: Timestamp
    why: list[str] = Field(description="Why this campaign won: its priority, the "
                           "customer's preferences and favourite categories it matched, "
                           "its rank among those that qualified.")


class OfferSuppressed(Payload):
    """A campaign qualified for a customer's trigger but no offer was sent, and why.
    ``control_group`` members are the campaign's hold-out: central compares them with
    those issued to measure uplift."""

    campaign: str | None = Field(description="Null for no_consent: without marketing "
                                 "consent the customer's profile is not evaluated against "
                                 "any campaign.")
    campaign_version: int | None = Field(ge=1)
    customer: str | None = Field(description="Pseudonymous customer id; null only in "
                                 "an event stored before the customer was erased.")
    visit_id: str | None
    trigger: OfferTriggerKind
    zone: str | None = None
    reason: OfferSuppressionReason = Field(
        description="no_consent: no marketing consent; capped: a frequency cap (minimum "
        "gap, per visit, per day, the campaign's per-day cap); quiet_hours: the store's "
        "quiet hours; control_group: the campaign's hold-out (recorded, not sent); "
        "audience: not in the campaign's audience (only when the gateway reports it); "
        "already_held: an unexpired, unredeemed offer of this campaign is held; "
        "outside_hours: outside the campaign's opening hours; lower_rank: another "
        "campaign ranked higher for this trigger; not_valid: outside the campaign's "
        "validity period.")
    detail: str = Field(default="", max_length=200, description="The cap or rule, in "
                        "words (no personal data).")
    decided_at: Timestamp


# --- offer tokens and redemption (issue 11, docs/personalisation.md) ------------------


class OfferKey(Payload):
    """A gateway's offer-signing public key, as its tokens name it."""

    kid: str = Field(pattern=r"^[0-9a-f]{8}$", description="SHA-256 of the raw public key, "
                     "first 4 bytes in hex: the key id every token carries.")
    public_key: str = Field(description="Ed25519 public key, base64url of 32 bytes.")


class OfferReserved(Payload):
    """An offer token scanned at a lane, verified and reserved for that transaction: no
    other lane can redeem it until the transaction completes (redeemed) or is voided or
    times out (released)."""

    offer_id: str = Field(description="The token id (32 hex digits), as offer.issued has it.")
    campaign: str = Field(description="The campaign; for a token another gateway of the "
                          "store issued: 'ref:' + the token's 16-hex-digit offer reference.")
    customer: str | None = Field(description="Pseudonymous customer id; null when the "
                                 "token was issued by another gateway.")
    lane: str
    transaction_id: str
    reserved_at: Timestamp


class OfferRedeemed(Payload):
    """A reserved offer confirmed by the receipt of its transaction: the redemption."""

    offer_id: str
    campaign: str
    customer: str | None
    lane: str
    transaction_id: str
    receipt: str | None = Field(description="The receipt number as printed.")
    redeemed_at: Timestamp


class OfferReleased(Payload):
    """A reservation dropped: the offer can be redeemed again."""

    offer_id: str
    lane: str
    transaction_id: str
    reason: Literal["voided", "timeout", "not_on_receipt"] = Field(
        description="voided: the transaction was cancelled; timeout: neither completed nor "
        "voided within redemption.reservation_timeout_s; not_on_receipt: the receipt "
        "completed without it.")


class OfferRejected(Payload):
    """A scanned offer token the lane must not honour, and why."""

    lane: str
    transaction_id: str
    token_id: str | None = Field(description="The token id (32 hex digits) when the token "
                                 "parses; null for anything that is not a token.")
    reason: Literal[
        "malformed", "unknown_key", "bad_signature", "expired", "not_yet_valid",
        "wrong_store", "revoked", "redeemed", "reserved_elsewhere", "customer_mismatch",
    ] = Field(description="malformed: not a token; unknown_key: not signed by a gateway of "
              "this store; bad_signature: forged or altered; expired / not_yet_valid: "
              "outside its validity; wrong_store: another store's; revoked: withdrawn "
              "(consent, erasure); redeemed: already used; reserved_elsewhere: held by "
              "another open transaction; customer_mismatch: the lane knows its customer "
              "and the token is someone else's.")


# --- customer registry (issue 11) ------------------------------------------------------


class CustomersApplied(Payload):
    """The answer to a customers command: what this gateway holds afterwards. A
    withdrawal or removal is confirmed only by ``applied: true`` (keys gone, tracking
    stopped)."""

    request_id: str | None
    command_id: str | None = Field(default=None, description="The signed command's id.")
    op: Literal["upsert", "remove", "replace"]
    applied: bool = Field(description="False: nothing changed; send the command again.")
    error: str | None = Field(default=None, description="Why it was not applied.")
    received: int = Field(ge=0, description="Records and removals in the command.")
    stale: int = Field(ge=0, description="Records or removals not newer than what the box "
                       "holds or has held (duplicates, out of order): ignored, never "
                       "regressing a customer.")
    removed: int = Field(ge=0, description="Customers forgotten (remove, or not listed in "
                         "a replace).")
    known: int = Field(ge=0, description="Customers the registry holds afterwards.")
    enrolled: int = Field(ge=0, description="Customers enrolled for presence afterwards "
                          "(presence consent granted and an identity held).")


# --- personalisation in the event flow (issue 11, app/personal.py) ---------------------


class CampaignsApplied(Payload):
    """The answer to a campaigns command: what this gateway holds afterwards."""

    request_id: str | None
    command_id: str | None = Field(default=None, description="The signed command's id.")
    op: Literal["upsert", "remove", "replace"]
    applied: bool = Field(description="False: nothing changed; send the command again.")
    error: str | None = Field(default=None, description="Why it was not applied.")
    stale: int = Field(ge=0, description="Campaigns or removals not newer than what the "
                       "box holds or has held: ignored, never regressing a campaign.")
    removed: int = Field(ge=0, description="Active campaigns withdrawn (remove, or not "
                         "listed in a replace).")
    active: int = Field(ge=0, description="Campaigns active afterwards.")


class PersonalHealth(Payload):
    """Counters since start of the personalisation service: counts only, never ids."""

    customers_known: int = Field(ge=0, description="Customers in the registry.")
    campaigns_active: int = Field(ge=0)
    offers_issued_total: int = Field(ge=0)
    offers_suppressed_total: dict[str, int] = Field(
        description="Suppressed decisions by reason (no_consent, capped, ...).")
    tokens_reserved_total: int = Field(ge=0)
    tokens_redeemed_total: int = Field(ge=0)
    tokens_released_total: int = Field(ge=0)
    tokens_rejected_total: dict[str, int] = Field(
        description="Scanned offer tokens refused, by reason (malformed, expired, ...).")
    stitched_total: dict[str, int] = Field(
        description="Purchases by attribution method (loyalty, token, presence, "
        "ambiguous, none).")
    ledger_errors_total: int = Field(ge=0, description="Redemption ledger or campaign "
                                     "store failures (disk): the lane went on.")


# --- erasure (issue 11, core/personal/erasure.py) -------------------------------------


class Erased(Payload):
    """The answer to an erase command: what this gateway removed, per store, in counts.
    It names no customer (central knows whom it asked to erase: request_id,
    command_id). Erasure is confirmed only by ``applied: true``."""

    request_id: str | None
    command_id: str | None = Field(default=None, description="The signed command's id.")
    applied: bool = Field(description="False: not every store was reached; send the "
                          "command again (erasing twice is harmless).")
    error: str | None = Field(default=None, description="Why it was not applied.")
    customers: int = Field(ge=0, description="Customers in the command.")
    registry_records: int = Field(ge=0, description="Customer records deleted (a keyed-"
                                  "hash tombstone is kept for each customer named).")
    identity_keys: int = Field(ge=0, description="Presence identity keys deleted.")
    tracking_states: int = Field(ge=0, description="Customers whose presence tracking "
                                 "(resolvable ids, open visits) was dropped.")
    stitcher_states: int = Field(ge=0, description="Customers whose stitching state "
                                 "(open visits, checkout-zone stays, transactions) was "
                                 "dropped.")
    offers_revoked: int = Field(ge=0, description="Unredeemed offers revoked (their "
                                "tokens are refused from now on).")
    ledger_rows_pseudonymised: int = Field(
        ge=0, description="Redemption ledger rows whose customer was replaced by a keyed "
        "hash (kept for caps and reconciliation).")
    outbox_unsent_redacted: int = Field(
        ge=0, description="Events not yet sent whose customer fields were set to null "
        "(same id and sequence: no gap).")
    outbox_replay_redacted: int = Field(
        ge=0, description="Events already sent, kept for replay, redacted the same way.")
    files_rewritten: int = Field(ge=0, description="Files of the box rewritten (VACUUM) "
                                 "and their write-ahead log truncated.")


# --- staff screens (issue 12, core/personal/screens.py) ---------------------------------


class StaffViewed(Payload):
    """A staff member's screen showed a customer's personal profile: the access log.
    One per staff session, customer and transaction (not per screen update)."""

    lane: str | None = Field(description="The lane whose screen showed it; null: the "
                             "floor screen.")
    staff_role: Literal["cashier", "floor", "manager"]
    session: str = Field(description="The staff session, as a pseudonym (32 hex digits "
                         "of a hash of the session's cookie): joins the views of one "
                         "sign-in; never the PIN or the cookie.")
    customer: str | None = Field(description="Pseudonymous customer id; null only in an "
                                 "event stored before the customer was erased.")
    fields: list[str] = Field(description="The profile fields shown (greeting_name, "
                              "tier, preferences, sizes, offers, pickup...).")
    viewed_at: Timestamp


# --- presence calibration (issue 13, core/presence/calibration.py) ---------------------


class PresenceCalibration(Payload):
    """The live fit of the store's radio model: RSSI = P_beacon - 10·n·log10(d) +
    offset_scanner, from the zone beacons at known places."""

    state: Literal["no-plan", "waiting", "fitted"] = Field(
        description="no-plan: no positioned scanner hears a positioned beacon; waiting: "
        "not enough beacon adverts in the window yet.")
    exponent: float | None = Field(description="Path-loss exponent n (1.6-4.5).")
    offsets_db: dict[str, float] = Field(description="Receive offset per positioned "
                                         "scanner, dB (mean zero).")
    pairs: int = Field(ge=0, description="Scanner-beacon pairs in the fit.")
    residual_rms_db: float | None = Field(description="Pair levels about the model.")
    flags: list[str] = Field(description="at-bound:<parameter>, "
                             "disagrees-with-recent-fits, exponent-not-identified.")
    uncalibrated: list[str] = Field(description="Scanners without a position.")
