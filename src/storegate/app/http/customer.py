"""The customer app channel (issue 12): who the token names, and check-in.

Offers over WebSocket/SSE, the offer list and QR codes are added here by the app-channel
work; every route takes :data:`~storegate.app.http.security.CustomerPrincipal`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from storegate.app.http.models import AUTH_ERRORS, CheckIn, CustomerView, errors
from storegate.app.http.security import CustomerPrincipal, rate_limited

router = APIRouter(prefix="/app", tags=["customer"])


@router.get("/me", response_model=CustomerView, responses=AUTH_ERRORS)
async def me(customer: CustomerPrincipal) -> CustomerView:
    """The pseudonym the caller's token names (the app's own check of its token)."""
    return CustomerView(customer=customer.subject, expires_at=customer.expires_at or 0.0)


@router.post("/checkin", response_model=CustomerView,
             dependencies=[Depends(rate_limited("checkin"))],
             responses={**AUTH_ERRORS, **errors(400, 409, 413, 429)})
async def check_in(body: CheckIn, customer: CustomerPrincipal) -> CustomerView:
    """Check in at a zone by its poster's code. Placeholder until zone posters exist:
    every check-in is refused (409), after authentication and the rate limit."""
    raise HTTPException(409, detail="check-in posters are not configured on this gateway")
