"""The retailer's HTTP API to central (FastAPI): customers and consents with their proof,
loyalty ids, the computed profile, campaigns and their uplift, click-and-collect orders,
erasure requests and their confirmation by every gateway, and the fleet's state
(gateways, gaps, commands and what the gateways answered).

Every route but ``/healthz`` needs ``Authorization: Bearer <token>``; tokens are
compared as SHA-256 digests in constant time. The OpenAPI document (``/openapi.json``)
names every route, model and error response.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from storegate.adapters.central.storage import StorageError
from storegate.app.central import models as m
from storegate.app.central.service import (
    CentralService,
    ConflictError,
    InvalidError,
    NotFoundError,
)
from storegate.core.identity_records import CUSTOMER_PATTERN
from storegate.core.personal.campaigns import Campaign


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not JSON (or not of the kind "
          "declared), or holds a value central cannot accept (a consent dated in the "
          "future, one loyalty id twice)."},
    401: {"model": Problem, "description": "Missing or wrong bearer token."},
    404: {"model": Problem, "description": "No such record."},
    409: {"model": Problem, "description": "Conflicts with what central holds."},
    503: {"model": Problem, "description": "Central's storage is not available; try "
          "again (Retry-After)."},
}
RESERVED_CAMPAIGN_IDS = frozenset({"uplift"})
CustomerId = Annotated[str, Path(pattern=CUSTOMER_PATTERN, description="A pseudonym.")]

_bearer = HTTPBearer(scheme_name="centralToken", auto_error=False,
                     description="A retailer API token (STOREGATE_CENTRAL_TOKENS).")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def build_app(service: CentralService, tokens: Iterable[str],
              *, status: Callable[[], dict[str, Any]] | None = None) -> FastAPI:
    digests = [_digest(t) for t in tokens if t]
    if not digests:
        raise ValueError("the central API needs at least one token")

    def auth(cred: Annotated[HTTPAuthorizationCredentials | None,
                             Depends(_bearer)]) -> None:
        got = _digest(cred.credentials) if cred is not None else b""
        ok = False
        for d in digests:
            ok |= secrets.compare_digest(got, d)
        if not ok:
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="storegate central", version="1",
                  description="The retailer's side of storegate central (docs/central.md).")
    secured = [Depends(auth)]

    def call(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except NotFoundError as exc:
            raise HTTPException(404, f"not found: {exc}") from exc
        except ConflictError as exc:
            raise HTTPException(409, str(exc)) from exc
        except InvalidError as exc:
            raise HTTPException(400, str(exc)) from exc

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/status", tags=["operations"], dependencies=secured, responses=ERRORS)
    def get_status() -> dict[str, Any]:
        """Ingest counters and the MQTT source's state."""
        return status() if status is not None else {}

    @app.put("/customers/{customer}", tags=["customers"], dependencies=secured,
             responses=ERRORS)
    def put_customer(customer: CustomerId, body: m.CustomerIn) -> m.CustomerOut:
        """Create or update a customer (a new version), record consents with their
        proof, and push the record to every known store."""
        out: m.CustomerOut = call(service.put_customer, customer, body)
        return out

    @app.get("/customers", tags=["customers"], dependencies=secured, responses=ERRORS)
    def list_customers(limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                       offset: Annotated[int, Query(ge=0, le=1 << 62)] = 0) -> list[str]:
        return service.list_customers(limit, offset)

    @app.get("/customers/{customer}", tags=["customers"], dependencies=secured,
             responses=ERRORS)
    def get_customer(customer: CustomerId) -> m.CustomerOut:
        out: m.CustomerOut = call(service.get_customer, customer)
        return out

    @app.get("/customers/{customer}/consents", tags=["customers"], dependencies=secured,
             responses=ERRORS)
    def consents(customer: CustomerId) -> list[m.ConsentOut]:
        """Every consent change, oldest first, with its proof (when, where, how)."""
        out: list[m.ConsentOut] = call(service.consent_history, customer)
        return out

    @app.get("/customers/{customer}/profile", tags=["customers"], dependencies=secured,
             responses=ERRORS)
    def get_profile(customer: CustomerId) -> m.ProfileOut:
        """Computed from the events of every store."""
        call(service.get_customer, customer)
        p = service.profile(customer)
        return m.ProfileOut(
            customer=p.customer, store_visits=p.store_visits, purchases=p.purchases,
            first_seen=p.first_seen, last_seen=p.last_seen, recency_days=p.recency_days,
            visits_per_30_days=p.visits_per_30_days, rfm=list(p.rfm), segment=p.segment,
            lifetime_spend_minor=p.lifetime_spend_minor,
            favourite_categories=p.favourite_categories, preferred_store=p.preferred_store,
            preferred_zones=p.preferred_zones,
            time_to_serve_s_median=p.time_to_serve_s_median,
            offers={c: m.OfferCountsOut(issued=o.issued, redeemed=o.redeemed,
                                        control=o.control) for c, o in p.offers.items()})

    @app.get("/loyalty/{loyalty_id}", tags=["customers"], dependencies=secured,
             responses=ERRORS)
    def by_loyalty(loyalty_id: Annotated[str, Path(pattern=r"^ps1:[0-9a-f]{32}$")],
                   ) -> dict[str, str]:
        """The customer holding a loyalty pseudonym."""
        return {"customer": call(service.by_loyalty, loyalty_id)}

    @app.post("/stores/{store}/sync", tags=["stores"], dependencies=secured,
              responses=ERRORS)
    def sync(store: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")],
             ) -> dict[str, str | None]:
        """Send the store the whole registry (customers replace); it is synced when
        its gateways answer (``GET /stores/{store}/sync``)."""
        return {"command_id": call(service.sync_store, store)}

    @app.get("/stores/{store}/sync", tags=["stores"], dependencies=secured,
             responses=ERRORS)
    def sync_state(store: Annotated[str, Path(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]) -> m.StoreSyncOut:
        """Where the store's registry sync stands: per gateway pending (sent, not
        answered), synced (the gateway answered applied) or failed (its reason; sent
        again after a backoff)."""
        out: m.StoreSyncOut = call(service.store_sync, store)
        return out

    @app.put("/campaigns/{campaign_id}", tags=["campaigns"], dependencies=secured,
             responses=ERRORS)
    def put_campaign(campaign_id: str, body: Campaign) -> m.CampaignOut:
        """Create or update (a new version) and send to every store."""
        if body.id != campaign_id:
            raise HTTPException(409, "the body's id is not the path's")
        if campaign_id in RESERVED_CAMPAIGN_IDS:
            raise HTTPException(409, f"{campaign_id!r} is a route (GET /campaigns/"
                                f"{campaign_id}), not a campaign id")
        return service.put_campaign(body)

    @app.delete("/campaigns/{campaign_id}", tags=["campaigns"], dependencies=secured,
                responses=ERRORS)
    def delete_campaign(campaign_id: str) -> m.CampaignOut:
        out: m.CampaignOut = call(service.remove_campaign, campaign_id)
        return out

    @app.get("/campaigns", tags=["campaigns"], dependencies=secured, responses=ERRORS)
    def list_campaigns() -> list[m.CampaignOut]:
        return service.campaigns()

    @app.get("/campaigns/uplift", tags=["campaigns"], dependencies=secured,
             responses=ERRORS)
    def get_uplift() -> list[m.UpliftOut]:
        """Per campaign: issued vs control-group visits and their conversion."""
        return [m.UpliftOut(campaign=u.campaign, issued=u.issued, redeemed=u.redeemed,
                            control=u.control, treated_visits=u.treated_visits,
                            control_visits=u.control_visits, treated_rate=u.treated_rate,
                            control_rate=u.control_rate, uplift=u.uplift)
                for u in service.uplift()]

    @app.post("/pickups", tags=["click and collect"], dependencies=secured,
              responses=ERRORS, status_code=201)
    def create_pickup(body: m.PickupIn) -> m.PickupOut:
        """A click-and-collect order, created (preparing)."""
        out: m.PickupOut = call(service.create_pickup, body)
        return out

    @app.post("/pickups/{order_id}/ready", tags=["click and collect"], dependencies=secured,
              responses=ERRORS)
    def pickup_ready(order_id: str) -> m.PickupOut:
        out: m.PickupOut = call(service.pickup_state, order_id, "ready")
        return out

    @app.post("/pickups/{order_id}/collected", tags=["click and collect"],
              dependencies=secured, responses=ERRORS)
    def pickup_collected(order_id: str) -> m.PickupOut:
        out: m.PickupOut = call(service.pickup_state, order_id, "collected")
        return out

    @app.post("/pickups/{order_id}/cancelled", tags=["click and collect"],
              dependencies=secured, responses=ERRORS)
    def pickup_cancelled(order_id: str) -> m.PickupOut:
        out: m.PickupOut = call(service.pickup_state, order_id, "cancelled")
        return out

    @app.get("/pickups/{order_id}", tags=["click and collect"], dependencies=secured,
             responses=ERRORS)
    def get_pickup(order_id: str) -> m.PickupOut:
        out: m.PickupOut = call(service.get_pickup, order_id)
        return out

    @app.post("/erasures", tags=["erasure"], dependencies=secured, responses=ERRORS,
              status_code=202)
    def erase(body: m.ErasureIn) -> m.ErasureOut:
        """Forget customers at central and send ``erase`` to every store; tracked until
        every gateway confirms."""
        return service.erase(body.customers)

    @app.get("/erasures/{erasure_id}", tags=["erasure"], dependencies=secured,
             responses=ERRORS)
    def get_erasure(erasure_id: str) -> m.ErasureOut:
        out: m.ErasureOut = call(service.erasure, erasure_id)
        return out

    @app.post("/erasures/{erasure_id}/resend", tags=["erasure"], dependencies=secured,
              responses=ERRORS)
    def resend_erasure(erasure_id: str) -> m.ErasureOut:
        """Send again to the stores not yet confirmed (erasing twice is harmless)."""
        out: m.ErasureOut = call(service.resend_erasure, erasure_id)
        return out

    @app.get("/gateways", tags=["operations"], dependencies=secured, responses=ERRORS)
    def gateways() -> list[m.GatewayOut]:
        """Every gateway: watermark, highest sequence, open gaps, ranges lost."""
        return service.gateways()

    @app.get("/commands/{command_id}", tags=["operations"], dependencies=secured,
             responses=ERRORS)
    def command(command_id: str) -> m.CommandOut:
        """A command central sent and what each gateway answered."""
        out: m.CommandOut = call(service.command, command_id)
        return out

    @app.exception_handler(StorageError)
    async def storage_down(_request: Request, exc: StorageError) -> JSONResponse:
        # the database, not the request: 503 with the reason, never a bare 500
        return JSONResponse({"detail": str(exc)}, status_code=503,
                            headers={"Retry-After": "5"})

    _allow_every_method(app)
    _limit_body(app)
    return app


MAX_BODY_BYTES = 4 << 20  # the largest body the API takes (1000 customers to erase...)


def _limit_body(app: FastAPI) -> None:
    """A body over :data:`MAX_BODY_BYTES` is refused with 413 before it is read whole
    (by its Content-Length; a chunked body is counted as it arrives)."""

    @app.middleware("http")
    async def limit(request: Request, call_next: Callable[[Request], Awaitable[Response]],
                    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"the body is over {MAX_BODY_BYTES} bytes"},
                                status_code=413)
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return JSONResponse({"detail": f"the body is over {MAX_BODY_BYTES} "
                                         "bytes"}, status_code=413)
            request._body = body  # read once here; Starlette replays it to the route
        return await call_next(request)


def _allow_every_method(app: FastAPI) -> None:
    """A 405 names every method of the path (Starlette's names only the first route
    that matched the path, so ``OPTIONS /customers/x`` said ``Allow: PUT``)."""
    routes = [r for r in app.routes if isinstance(r, APIRoute)]

    @app.middleware("http")
    async def allow(request: Request, call_next: Callable[[Request], Awaitable[Response]],
                    ) -> Response:
        response = await call_next(request)
        if response.status_code == 405:
            path = request.url.path
            # a fixed path (/campaigns/uplift) is its own resource, not {campaign_id}
            matched = ([r for r in routes if r.path == path]
                       or [r for r in routes if r.path_regex.match(path)])
            methods = sorted({m for r in matched for m in r.methods or ()})
            if methods:
                response.headers["Allow"] = ", ".join(methods)
        return response
