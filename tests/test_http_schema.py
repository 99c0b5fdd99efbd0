"""schemathesis against the app's own OpenAPI document, in process (ASGI): generated
requests for every operation, with valid credentials for the role each route declares,
must get no 5xx and responses that conform to the document (status codes, headers,
content types, bodies)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from storegate.app.http.security import Role, api_routes, new_session_cookie
from storegate.app.http.server import build_app
from tests.support.http import (
    ADMIN_TOKEN,
    Clock,
    StatusGateway,
    bearer,
    customer_token,
    healthy_status,
    http_settings,
    make_config,
)

SETTINGS = http_settings()


class _Personal:
    """The personalisation service's reload hook (the 501 without one is tested in
    test_http_ops.py; here the route's working path runs)."""

    def reload_campaigns(self) -> str:
        return "reloaded"


# no outbox file at this path: the routes that read it must cope (empty, not 5xx)
GATEWAY = StatusGateway(make_config(Path("/nonexistent-storegate-schema-test"), SETTINGS),
                        current=dataclasses.replace(healthy_status(), state="running"),
                        personal=_Personal())
GATEWAY.config_loader = lambda: GATEWAY.config  # the config reload's working path
APP = build_app(GATEWAY, SETTINGS, Clock())
RULES = {(method, r.path): r.rules[0] for r in api_routes(APP) for method in r.methods}
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


def _credentials(method: str, path: str) -> dict[str, str]:
    role, staff_roles = RULES[(method, path)]
    if role is Role.CUSTOMER:
        return bearer(customer_token())
    if role in (Role.ADMIN, Role.METRICS):
        return bearer(ADMIN_TOKEN)
    if role is Role.STAFF:  # a fresh session each time: a generated sign-out ends one
        wanted = [c for c in SETTINGS.staff if not staff_roles or c.role in staff_roles]
        cookie = new_session_cookie()
        APP.state.auth.sessions.create(cookie, wanted[0], wanted[0].lane, Clock()())
        return {"Cookie": f"sg_session={cookie}"}
    return {}


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case) -> None:
    method, path = case.operation.method.upper(), case.operation.path
    # Refusals that valid-looking data rightly gets: a wrong PIN (401), a check-in
    # without posters (409), a rate limit (429). Negative data is still generated and
    # must get no 5xx and conforming answers, but its "must be rejected" check is off: unknown query
    # parameters are ignored by design, and the credentials given here mask the
    # "missing Authorization" variants (test_http_security.py covers those per route).
    excluded = [positive_data_acceptance, negative_data_rejection]
    case.call_and_validate(headers=_credentials(method, path), excluded_checks=excluded)
