"""Staff sign-in at a lane and the session it gives (the till and floor screens, issue
12, are built on :data:`~storegate.app.http.security.StaffPrincipal`)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request, Response

from storegate.app.http.models import AUTH_ERRORS, SignedOut, SignIn, StaffSessionView, errors
from storegate.app.http.security import (
    SESSION_COOKIE,
    StaffPrincipal,
    authenticator,
    new_session_cookie,
    public,
    rate_limited,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/staff", tags=["staff"])


def _set_cookie(response: Response, value: str, max_age: int) -> None:
    # Secure even on the loopback demo: browsers treat http://127.0.0.1 and localhost as
    # secure contexts, and a store LAN is served over TLS (docs/http.md).
    response.set_cookie(SESSION_COOKIE, value, max_age=max_age, path="/", secure=True,
                        httponly=True, samesite="strict")


@router.post("/signin", response_model=StaffSessionView,
             dependencies=[Depends(public), Depends(rate_limited("signin"))],
             responses=errors(400, 401, 413, 429))
async def sign_in(body: SignIn, request: Request, response: Response) -> StaffSessionView:
    """Sign in at a lane; sets the session cookie (Secure, HttpOnly, SameSite=Strict)."""
    auth = authenticator(request)
    cred = await auth.sign_in(body.lane, pin=body.pin, device_token=body.device_token)
    if cred is None:
        raise auth.reject("signin_failed")
    cookie = new_session_cookie()
    session = auth.sessions.create(cookie, cred, body.lane, auth.clock())
    _set_cookie(response, cookie, int(auth.settings.session_ttl_s))
    log.info("staff %s (%s) signed in at %s", cred.name, cred.role, body.lane)
    return StaffSessionView(name=session.name, lane=session.lane, role=session.role,
                            expires_at=session.expires_at)


@router.get("/session", response_model=StaffSessionView, responses=AUTH_ERRORS)
async def current_session(staff: StaffPrincipal) -> StaffSessionView:
    """Who is signed in on this screen, and until when."""
    assert staff.lane is not None  # a staff principal has both
    assert staff.staff_role is not None
    return StaffSessionView(name=staff.subject, lane=staff.lane, role=staff.staff_role,
                            expires_at=staff.expires_at or 0.0)


@router.post("/signout", response_model=SignedOut, responses=AUTH_ERRORS)
async def sign_out(staff: StaffPrincipal, request: Request, response: Response) -> SignedOut:
    """End this session now (the cookie is cleared as well)."""
    ended = authenticator(request).sessions.end(request.cookies.get(SESSION_COOKIE, ""))
    _set_cookie(response, "", 0)
    log.info("staff %s signed out at %s", staff.subject, staff.lane)
    return SignedOut(signed_out=ended)
