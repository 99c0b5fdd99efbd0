"""The customer app channel (issue 12): who the token names, and check-in.

Offers over WebSocket/SSE, the offer list and QR codes are added here by the app-channel
work; every route takes :data:`~storegate.app.http.security.CustomerPrincipal`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request

from storegate.app.checkin import CheckinRefused, CheckinService
from storegate.app.http.models import (
    AUTH_ERRORS,
    CheckedIn,
    CheckIn,
    CustomerView,
    VisitView,
    errors,
)
from storegate.app.http.security import CustomerPrincipal, rate_limited
from storegate.core.presence.engine import VisitState

router = APIRouter(prefix="/app", tags=["customer"])


@router.get("/me", response_model=CustomerView, responses=AUTH_ERRORS)
async def me(customer: CustomerPrincipal) -> CustomerView:
    """The pseudonym the caller's token names (the app's own check of its token)."""
    return CustomerView(customer=customer.subject, expires_at=customer.expires_at or 0.0)


def _visit(v: VisitState) -> VisitView:
    return VisitView(visit_id=v.visit_id, zone=v.zone, entered=v.entered, entered_at=v.first,
                     last_evidence_at=v.last, held_until=v.held_until)


@router.post("/checkin", response_model=CheckedIn,
             dependencies=[Depends(rate_limited("checkin"))],
             responses={**AUTH_ERRORS, **errors(400, 409, 413, 429, 503)})
async def check_in(body: CheckIn, request: Request,
                   customer: CustomerPrincipal) -> CheckedIn:
    """Check in at a zone by scanning its poster (app/checkin.py): the poster verified,
    then presence consent (403 ``no_presence_consent``, nothing stored), then presence
    evidence for that zone at once. 400 ``poster_<reason>`` for a code that is not a
    valid poster of this store; 409 where check-in is not enabled; the same poster
    again while its visit is open is answered with ``repeat`` and changes nothing."""
    service: CheckinService | None = getattr(request.app.state.gateway, "checkin", None)
    if service is None:
        raise HTTPException(409, detail="check-in posters are not configured on this "
                            "gateway")
    result = service.check_in(customer.subject, body.code)
    if isinstance(result, CheckinRefused):
        if result.poster:
            raise HTTPException(400, detail=f"poster_{result.reason}")
        status = 403 if result.reason == "no_presence_consent" else 503
        raise HTTPException(status, detail=result.reason)
    return CheckedIn(zone=result.zone, poster_id=result.poster_id, repeat=result.repeat,
                     store_visit=_visit(result.store_visit),
                     zone_visit=_visit(result.zone_visit))
