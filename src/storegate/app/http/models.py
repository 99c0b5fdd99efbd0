"""The HTTP surface's request and response bodies (pydantic: validated where data
enters, described in the OpenAPI document), and the error responses routes declare."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorBody(Body):
    """Every 4xx/5xx this server writes: a short reason code or sentence."""

    detail: str


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: these status codes, each with an :class:`ErrorBody`."""
    text = {400: "The body is not valid JSON.",
            401: "No credential, or a bad one (reason in detail).",
            403: "A valid credential of the wrong role.",
            404: "Not found.", 409: "Not possible in the current state.",
            413: "Request body too large.", 429: "Rate limited; see Retry-After.",
            501: "Not available on this gateway.", 503: "Not ready; reasons in the body."}
    return {c: {"model": ErrorBody, "description": text.get(c, "Error.")} for c in codes}


AUTH_ERRORS = errors(401, 403)


# --- staff --------------------------------------------------------------------------


class SignIn(Body):
    """Sign in at a lane with a PIN or the till's device token (exactly one)."""

    lane: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._*-]+$")
    pin: str | None = Field(default=None, min_length=1, max_length=64)
    device_token: str | None = Field(default=None, min_length=1, max_length=512)

    @model_validator(mode="after")
    def _one(self) -> SignIn:
        if (self.pin is None) == (self.device_token is None):
            raise ValueError("give exactly one of pin and device_token")
        return self


class StaffSessionView(Body):
    name: str
    lane: str
    role: Literal["cashier", "floor", "manager"]
    expires_at: float = Field(description="Unix time the session ends.")


class SignedOut(Body):
    signed_out: bool


# --- customer -----------------------------------------------------------------------


class CustomerView(Body):
    customer: str = Field(description="The pseudonym the token names.")
    expires_at: float


class CheckIn(Body):
    code: str = Field(min_length=1, max_length=512, description="The zone poster's code as "
                      "scanned (SGZ1. + base32, docs/http.md).")


class VisitView(Body):
    """One of the customer's open visits (the store's: zone null)."""

    visit_id: str
    zone: str | None
    entered: bool = Field(description="Entered (a check-in enters at once).")
    entered_at: float = Field(description="Unix time the visit began.")
    last_evidence_at: float = Field(description="The scan, or a later sighting.")
    held_until: float | None = Field(description="A check-in keeps the visit open until "
                                     "then without other evidence.")


class CheckedIn(Body):
    zone: str
    poster_id: str = Field(description="Which printed poster (a hash of its code).")
    repeat: bool = Field(description="The same poster again while its visit is open: "
                         "nothing changed.")
    store_visit: VisitView
    zone_visit: VisitView


# --- operations ---------------------------------------------------------------------


class Health(Body):
    status: Literal["ok"]


class Readiness(Body):
    """Whether this gateway does its job now; ``reasons`` name what is wrong (no
    personal data: states and counts only)."""

    ready: bool
    state: str
    checks: dict[str, str] = Field(description="Each check: 'ok' or what is wrong.")
    reasons: list[str]


class StatusDocument(Body):
    """``Gateway.status()`` as JSON: the same document as ``storegate status --json``."""

    model_config = ConfigDict(extra="allow", frozen=True)
    pid: int
    state: str
    store_id: str
    gateway_id: str
    version: str
    session: int
    started_at: float
    updated_at: float
    broker: dict[str, Any] | None
    outbox: dict[str, Any]
    seal_key: str | None
    commands: dict[str, Any] | None
    presence: dict[str, Any] | None
    pos: dict[str, Any] | None
    personal: dict[str, Any] | None = None


class RecentEvent(Body):
    """An event from the outbox, personal fields masked."""

    sequence: int
    topic: str
    id: str | None
    type: str | None
    time: str | None
    subject: str | None
    data: Any


class RecentEvents(Body):
    events: list[RecentEvent]


class Reloaded(Body):
    """What a reload did. ``applied``: what changed at runtime; ``restart_needed``: the
    settings that differ from the running config and take effect only after a restart."""

    reloaded: bool
    detail: str
    applied: list[str] = Field(default_factory=list)
    restart_needed: list[str] = Field(default_factory=list)


class AdminSignIn(Body):
    """An admin token, posted once for a browser session."""

    token: str = Field(min_length=1, max_length=512)


class AdminSessionView(Body):
    role: Literal["admin"]
    expires_at: float
