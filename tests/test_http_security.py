"""The HTTP surface's security: every route's access rule, staff sessions, customer
tokens, rate limits, CORS, secure headers and bounded bodies (in process: the real app,
real cryptography, an injected clock)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from storegate.app.http.security import (
    Principal,
    Role,
    SessionStore,
    api_routes,
    public,
    staff,
)
from storegate.config import HttpConfig
from storegate.core.webauth import (
    RateLimiter,
    RateRule,
    TokenRejected,
    b64url_decode,
    b64url_encode,
    check_hash_format,
    hash_secret,
    sign_app_token,
    verify_app_token,
    verify_secret,
)
from tests.support.http import (
    ADMIN_TOKEN,
    APP_KEY,
    APP_KID,
    AUDIENCE,
    CASHIER_PIN,
    DEVICE_TOKEN,
    MANAGER_PIN,
    METRICS_TOKEN,
    NOW,
    Clock,
    bearer,
    customer_token,
    http_settings,
    make_client,
)

# --- every route declares who may call it ---------------------------------------------


def _signed_in(client: TestClient, lane: str, pin: str) -> dict[str, str]:
    r = client.post("/staff/signin", json={"lane": lane, "pin": pin})
    assert r.status_code == 200, r.text
    return {"Cookie": f"sg_session={client.cookies['sg_session']}"}


def _credentials(client: TestClient) -> dict[str, dict[str, str]]:
    """One credential per kind of principal (a fresh client per staff sign-in, so the
    jar does not mix them)."""
    creds = {"admin": bearer(ADMIN_TOKEN), "metrics": bearer(METRICS_TOKEN),
             "customer": bearer(customer_token())}
    for who, lane, pin in (("cashier", "lane-1", CASHIER_PIN),
                           ("manager", "lane-3", MANAGER_PIN), ("floor", "floor", "5555")):
        creds[who] = _signed_in(TestClient(client.app, base_url="https://testserver"),
                                lane, pin)
    return creds


def _allowed(role: Role, staff_roles: frozenset[str], who: str) -> bool:
    if role is Role.PUBLIC:
        return True
    if role is Role.METRICS:
        return who in ("admin", "metrics")
    if role is Role.STAFF:
        return who in ("cashier", "manager", "floor") and (not staff_roles
                                                            or who in staff_roles)
    return who == role.value


_manager_only = APIRouter()


@_manager_only.get("/lanes/{lane}/override", dependencies=[Depends(staff("manager"))])
async def _override(lane: str) -> dict[str, str]:
    return {"lane": lane}


def test_every_route_rejects_anonymous_and_wrong_roles(tmp_path: Path) -> None:
    client, app, _ = make_client(tmp_path, extra_routers=[_manager_only])
    creds = _credentials(client)
    # signing out ends the session the later calls use: that route goes last
    routes = sorted(api_routes(app), key=lambda r: r.path == "/staff/signout")
    assert len(routes) >= 10
    checked = 0
    for route in routes:
        (role, staff_roles), = set(route.rules)
        path = re.sub(r"\{[^}]+\}", "lane-1", route.path)
        for method in route.methods:
            def call(headers: dict[str, str], method: str = method,
                     path: str = path) -> int:
                # a fresh client: no cookie jar carried over between credentials
                fresh = TestClient(app, base_url="https://testserver")
                return fresh.request(method, path, headers=headers, json={}).status_code
            if role is Role.PUBLIC:
                assert call({}) not in (401, 403), f"{method} {path} is public"
                continue
            assert call({}) == 401, f"{method} {path} anonymous"
            for who, headers in creds.items():
                status = call(headers)
                if _allowed(role, staff_roles, who):
                    assert status not in (401, 403), f"{method} {path} as {who}: {status}"
                else:
                    assert status == 403, f"{method} {path} as {who}: {status}"
                checked += 1
    assert checked >= 40
    # the public ones are exactly these: nothing else slipped through as public
    public_paths = {r.path for r in routes if r.rules[0][0] is Role.PUBLIC}
    assert public_paths == {"/healthz", "/readyz", "/staff/signin", "/staff/sign-in",
                            "/admin/signin", "/admin/sign-in"}


def test_a_route_without_an_access_rule_is_refused_at_build(tmp_path: Path) -> None:
    bare = APIRouter()

    @bare.get("/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match=r"/forgotten declares no access rule"):
        make_client(tmp_path, extra_routers=[bare])

    both = APIRouter()

    @both.get("/confused", dependencies=[Depends(public), Depends(staff())])
    async def confused() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="several access rules"):
        make_client(tmp_path, extra_routers=[both])


def test_manager_only_route_refuses_a_cashier(tmp_path: Path) -> None:
    client, _, _ = make_client(tmp_path, extra_routers=[_manager_only])
    cashier = _signed_in(client, "lane-1", CASHIER_PIN)
    r = client.get("/lanes/lane-1/override", headers=cashier)
    assert r.status_code == 403
    assert r.json() == {"detail": "forbidden_staff_cashier"}
    manager = TestClient(client.app, base_url="https://testserver")
    _signed_in(manager, "lane-1", MANAGER_PIN)
    assert manager.get("/lanes/lane-1/override").json() == {"lane": "lane-1"}


# --- staff sign-in and sessions ---------------------------------------------------------


def test_signin_sets_a_secure_httponly_strict_expiring_cookie(tmp_path: Path) -> None:
    client, _, _ = make_client(tmp_path)
    r = client.post("/staff/signin", json={"lane": "lane-1", "pin": CASHIER_PIN})
    assert r.status_code == 200
    assert r.json() == {"name": "till-1", "lane": "lane-1", "role": "cashier",
                        "expires_at": NOW + 3600}
    cookie = r.headers["set-cookie"]
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"secure", "httponly", "samesite", "max-age", "path"} <= attrs
    assert "samesite=strict" in cookie.lower() and "max-age=3600" in cookie.lower()
    value = cookie.split(";")[0].split("=", 1)[1]
    assert len(value) >= 40  # 32 random bytes


def test_session_expires_by_the_injected_clock_and_on_signout(tmp_path: Path) -> None:
    clock = Clock()
    client, app, _ = make_client(tmp_path, clock=clock)
    _signed_in(client, "lane-1", CASHIER_PIN)
    assert client.get("/staff/session").status_code == 200
    clock.now += 3599
    assert client.get("/staff/session").status_code == 200
    clock.now += 1
    r = client.get("/staff/session")
    assert (r.status_code, r.json()["detail"]) == (401, "session_expired")
    assert len(app.state.auth.sessions) == 0  # removed, not just refused
    _signed_in(client, "lane-1", CASHIER_PIN)
    kept = client.cookies["sg_session"]
    assert client.post("/staff/signout").json() == {"signed_out": True}
    r = client.get("/staff/session", headers={"Cookie": f"sg_session={kept}"})
    assert r.status_code == 401  # the old cookie is dead server-side too


def test_signin_refusals_say_nothing_about_which_part_was_wrong(tmp_path: Path) -> None:
    client, app, _ = make_client(tmp_path, settings=http_settings(signin_burst=100))
    for body in ({"lane": "lane-1", "pin": "0000"},  # wrong PIN
                 {"lane": "lane-9", "pin": CASHIER_PIN},  # no such lane
                 {"lane": "lane-2", "pin": CASHIER_PIN},  # lane-2 signs in by device only
                 {"lane": "lane-1", "device_token": DEVICE_TOKEN}):  # lane-2's device
        r = client.post("/staff/signin", json=body)
        assert (r.status_code, r.json()) == (401, {"detail": "signin_failed"}), body
        assert "set-cookie" not in r.headers
    assert app.state.auth.signin_failures == 4
    r = client.post("/staff/signin", json={"lane": "lane-2", "device_token": DEVICE_TOKEN})
    assert r.json()["name"] == "till-2"
    # the manager's '*' credential signs in at any lane, and the session names that lane
    r = client.post("/staff/signin", json={"lane": "lane-7", "pin": MANAGER_PIN})
    assert (r.json()["lane"], r.json()["role"]) == ("lane-7", "manager")


@pytest.mark.parametrize("body", [{"lane": "lane-1"}, {"lane": "lane-1", "pin": "1",
                                                       "device_token": "x"},
                                  {"lane": "a/b", "pin": "1"}, {"lane": "", "pin": "1"},
                                  {"lane": "lane-1", "pin": "1" * 65}, [], "x"])
def test_bad_signin_bodies_are_422_not_5xx(tmp_path: Path, body: object) -> None:
    client, _, _ = make_client(tmp_path)
    r = client.post("/staff/signin", json=body)
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], list)


def test_session_store_is_bounded_oldest_first() -> None:
    store = SessionStore(60, max_sessions=3)
    cred = http_settings().staff[0]
    for i in range(5):
        store.create(f"c{i}", cred, "lane-1", NOW)
    assert len(store) == 3
    assert store.get("c0", NOW) is None and store.get("c1", NOW) is None
    assert store.get("c4", NOW) is not None


# --- rate limits ------------------------------------------------------------------------


def test_signin_is_rate_limited_per_client_and_refills(tmp_path: Path) -> None:
    clock = Clock()
    client, _, _ = make_client(tmp_path, clock=clock, settings=http_settings(
        signin_burst=3, signin_per_minute=6))
    codes = [client.post("/staff/signin", json={"lane": "lane-1", "pin": "0000"}).status_code
             for _ in range(3)]
    assert codes == [401, 401, 401]
    r = client.post("/staff/signin", json={"lane": "lane-1", "pin": CASHIER_PIN})
    assert r.status_code == 429  # even the right PIN: the limiter comes first
    assert r.headers["retry-after"] == "10"
    clock.now += 10  # one token back at 6 per minute
    assert client.post("/staff/signin", json={"lane": "lane-1",
                                              "pin": CASHIER_PIN}).status_code == 200
    assert client.post("/staff/signin", json={"lane": "lane-1",
                                              "pin": CASHIER_PIN}).status_code == 429


def test_checkin_is_rate_limited(tmp_path: Path) -> None:
    client, app, _ = make_client(tmp_path, settings=http_settings(checkin_burst=2))
    headers = bearer(customer_token())
    body = {"code": "SGZ1.x"}  # no check-in service on this stand-in: 409
    codes = [client.post("/app/checkin", json=body, headers=headers).status_code
             for _ in range(3)]
    assert codes == [409, 409, 429]
    assert app.state.auth.rejected["rate_limited_checkin"] == 1


def test_rate_limiter_is_a_token_bucket_with_bounded_keys() -> None:
    limiter = RateLimiter(RateRule(burst=2, per_minute=60), max_keys=2)
    assert limiter.allow("a", 0.0) == 0.0
    assert limiter.allow("a", 0.0) == 0.0
    assert limiter.allow("a", 0.0) == pytest.approx(1.0)
    assert limiter.allow("a", 0.5) == pytest.approx(0.5)  # a half token back, not enough
    assert limiter.allow("a", 1.0) == 0.0  # one full token back after a second
    assert limiter.allow("b", 1.0) == 0.0
    limiter.allow("c", 1.0)  # evicts "a", the least recently seen
    assert limiter.allow("a", 1.0) == 0.0 and limiter.allow("a", 1.0) == 0.0
    assert limiter.allow("x", -50.0) == 0.0  # a clock stepping back does not break it
    assert limiter.limited_total == 2


# --- CORS and headers -------------------------------------------------------------------


def test_cors_only_for_configured_origins(tmp_path: Path) -> None:
    client, _, _ = make_client(tmp_path, settings=http_settings(
        cors_origins=["https://app.example.com"]))
    ok = client.get("/healthz", headers={"Origin": "https://app.example.com"})
    assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
    assert ok.headers["access-control-allow-credentials"] == "true"
    evil = client.get("/healthz", headers={"Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in evil.headers
    pre = client.options("/app/me", headers={"Origin": "https://evil.example.com",
                                             "Access-Control-Request-Method": "GET"})
    assert pre.status_code == 400 and "access-control-allow-origin" not in pre.headers
    pre = client.options("/app/me", headers={"Origin": "https://app.example.com",
                                             "Access-Control-Request-Method": "GET",
                                             "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 200
    none, _, _ = make_client(tmp_path)  # the default: no CORS at all
    r = none.get("/healthz", headers={"Origin": "https://app.example.com"})
    assert not any(h.startswith("access-control") for h in r.headers)


def test_cors_origins_are_validated() -> None:
    for bad in ("*", "https://app.example.com/path", "app.example.com"):
        with pytest.raises(ValidationError, match="not an origin"):
            http_settings(cors_origins=[bad])


def test_secure_headers_on_every_response_hsts_only_with_tls(tmp_path: Path) -> None:
    client, _, _ = make_client(tmp_path, settings=http_settings(max_body_bytes=1024))
    responses = [client.get("/healthz"), client.get("/admin/status"),
                 client.get("/nowhere"), client.post("/staff/signin", json=[]),
                 client.post("/staff/signin", content=b"x" * 2048,
                             headers={"content-type": "application/json"}),
                 client.get("/admin", headers=bearer(ADMIN_TOKEN))]
    assert [r.status_code for r in responses] == [200, 401, 404, 422, 413, 200]
    for r in responses:
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-frame-options"] == "DENY"
        assert "strict-transport-security" not in r.headers
    tls, _, _ = make_client(tmp_path, settings=http_settings(
        tls_cert_file=tmp_path / "cert.pem", tls_key_file=tmp_path / "key.pem"))
    assert tls.get("/healthz").headers["strict-transport-security"].startswith("max-age=")


def test_request_bodies_are_bounded_even_when_chunked(tmp_path: Path) -> None:
    client, _, _ = make_client(tmp_path, settings=http_settings(max_body_bytes=1024))

    def chunks() -> object:
        for _ in range(10):
            yield b" " * 200

    r = client.post("/staff/signin", content=chunks(),  # type: ignore[arg-type]
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {"detail": "request body too large"}
    r = client.post("/staff/signin", content=b"{",
                    headers={"content-type": "application/json", "content-length": "abc"})
    assert r.status_code in (400, 413)


# --- customer tokens --------------------------------------------------------------------

KEYS = {APP_KID: APP_KEY.public_key()}


def _verify(token: str, now: float = NOW) -> str:
    return verify_app_token(token, keys=KEYS, audience=AUDIENCE, now=now).subject


def _reason(token: str, now: float = NOW) -> str:
    with pytest.raises(TokenRejected) as info:
        _verify(token, now)
    return info.value.reason


def _forge(header: dict[str, object], claims: dict[str, object],
           key: Ed25519PrivateKey = APP_KEY) -> str:
    h = b64url_encode(json.dumps(header).encode())
    c = b64url_encode(json.dumps(claims).encode())
    return f"{h}.{c}.{b64url_encode(key.sign(f'{h}.{c}'.encode()))}"


CLAIMS = {"sub": "cust-1", "aud": AUDIENCE, "iat": int(NOW), "exp": int(NOW + 600)}
HEADER = {"alg": "EdDSA", "kid": APP_KID}


def test_a_valid_token_names_the_pseudonym() -> None:
    assert _verify(customer_token("cust-42")) == "cust-42"
    assert _verify(_forge(HEADER, {**CLAIMS, "aud": ["other", AUDIENCE]})) == "cust-1"


def test_expiry_audience_and_kid_are_enforced() -> None:
    assert _reason(customer_token(lifetime_s=600), NOW + 600 + 61) == "expired"
    assert _verify(customer_token(lifetime_s=600), NOW + 600 + 59)  # within the leeway
    assert _reason(customer_token(audience="someone-else")) == "wrong_audience"
    assert _reason(customer_token(kid="central-app-2")) == "unknown_kid"
    assert _reason(_forge(HEADER, {k: v for k, v in CLAIMS.items() if k != "exp"})) \
        == "no_expiry"
    assert _reason(_forge(HEADER, {**CLAIMS, "nbf": NOW + 3600})) == "not_yet_valid"
    assert _reason(_forge(HEADER, {**CLAIMS, "exp": NOW + 365 * 86400})) \
        == "lifetime_too_long"
    assert _reason(_forge(HEADER, {**CLAIMS, "exp": "tomorrow"})) == "bad_exp"
    assert _reason(_forge(HEADER, {**CLAIMS, "sub": "has space"})) == "bad_subject"
    assert _reason(_forge(HEADER, {**CLAIMS, "sub": 7})) == "bad_subject"


def test_a_foreign_key_or_any_flipped_bit_fails_the_signature() -> None:
    foreign = Ed25519PrivateKey.generate()
    assert _reason(customer_token(key=foreign)) == "bad_signature"  # right kid, wrong key
    token = customer_token()
    head, claims, sig = token.split(".")
    raw = bytearray(b64url_decode(sig))
    for bit in (0, 77, 511):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert _reason(f"{head}.{claims}.{b64url_encode(bytes(flipped))}") == "bad_signature"
    other = json.loads(b64url_decode(claims))
    other["sub"] = "cust-0002"  # the payload changed under the same signature
    assert _reason(f"{head}.{b64url_encode(json.dumps(other).encode())}.{sig}") \
        == "bad_signature"


def test_algorithm_confusion_is_refused() -> None:
    import hashlib
    import hmac

    claims = b64url_encode(json.dumps(CLAIMS).encode())
    for alg in ("none", "None", "HS256", "RS256", "ES256", "eddsa", None):
        head = b64url_encode(json.dumps({"alg": alg, "kid": APP_KID}).encode())
        # HS256 keyed with the public key's bytes: the classic confusion attack
        mac = hmac.new(APP_KEY.public_key().public_bytes_raw(), f"{head}.{claims}".encode(),
                       hashlib.sha256).digest()
        assert _reason(f"{head}.{claims}.{b64url_encode(mac)}") == "unsupported_alg", alg
    head = b64url_encode(json.dumps({"alg": "none"}).encode())
    assert _reason(f"{head}.{claims}.") == "malformed"  # an empty signature part
    assert _reason(_forge({**HEADER, "crit": ["exp"]}, CLAIMS)) == "unsupported_header"


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "...", "é.a.b", "x" * 5000,
                                   "e30.e30.e30", "W10.e30.AA", "e30=.e30.AA"])
def test_malformed_tokens_are_rejected_never_crash(token: str) -> None:
    assert _reason(token) in {"malformed", "unsupported_alg"}


def test_base64url_is_strict_and_canonical() -> None:
    assert b64url_decode(b64url_encode(b"\xff\x00")) == b"\xff\x00"
    for bad in ("AB=", "A+B/", "AB C", "A", "AB!", "AF"):  # "AF": non-zero trailing bits
        with pytest.raises(ValueError, match="base64url"):
            b64url_decode(bad)


def test_token_failures_over_http_are_401_with_the_reason(tmp_path: Path) -> None:
    clock = Clock()
    client, app, _ = make_client(tmp_path, clock=clock)
    good = customer_token(lifetime_s=600)
    assert client.get("/app/me", headers=bearer(good)).json()["customer"] == "cust-0001"
    clock.now += 3600
    r = client.get("/app/me", headers=bearer(good))
    assert (r.status_code, r.json()["detail"]) == (401, "token_expired")
    assert r.headers["www-authenticate"] == "Bearer"
    for header, reason in (({"Authorization": "Basic abc"}, "malformed_authorization"),
                           ({"Authorization": "Bearer"}, "malformed_authorization"),
                           (bearer("not-a-known-token-at-all"), "unknown_token")):
        r = client.get("/app/me", headers=header)
        assert (r.status_code, r.json()["detail"]) == (401, reason)
    assert app.state.auth.rejected["token_expired"] == 1


def test_sign_and_verify_agree_on_the_documented_format() -> None:
    token = sign_app_token(APP_KEY, kid=APP_KID, subject="cust-9", audience=AUDIENCE,
                           issued_at=NOW, lifetime_s=60)
    head, claims, _ = token.split(".")
    assert json.loads(b64url_decode(head)) == {"alg": "EdDSA", "kid": APP_KID, "typ": "JWT"}
    assert json.loads(b64url_decode(claims)) == {"sub": "cust-9", "aud": AUDIENCE,
                                                 "iat": int(NOW), "exp": int(NOW + 60)}


# --- stored secrets and config ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pbkdf2-sha256", "scrypt"])
def test_pin_hashes_verify_only_the_right_pin(kind: str) -> None:
    stored = hash_secret("2468", salt=b"0123456789abcdef", kind=kind)
    assert check_hash_format(stored) == stored
    assert verify_secret(stored, "2468")
    assert not verify_secret(stored, "2469")
    assert not verify_secret(stored, "")


def test_malformed_hashes_never_match_and_fail_config() -> None:
    for bad in ("", "md5$abc", "sha256$xyz", "scrypt$30$8$1$AA$AA", "pbkdf2-sha256$10$AA$AA",
                "scrypt$14$8$1$!!$AA"):
        assert not verify_secret(bad, "1234")
        with pytest.raises(ValueError, match="not a valid secret hash"):
            check_hash_format(bad)
    with pytest.raises(ValueError, match="at least 20"):
        hash_secret("short", salt=b"", kind="sha256")


def test_http_config_refuses_unsafe_credentials() -> None:
    token_hash = hash_secret(ADMIN_TOKEN, salt=b"", kind="sha256")
    with pytest.raises(ValidationError, match="PIN is short"):
        HttpConfig.model_validate({"staff": [{"lane": "l", "role": "cashier", "name": "n",
                                              "pin_hash": token_hash}]})
    with pytest.raises(ValidationError, match="exactly one"):
        HttpConfig.model_validate({"staff": [{"lane": "l", "role": "cashier", "name": "n"}]})
    with pytest.raises(ValidationError, match="sha256"):
        HttpConfig.model_validate({"admin_token_hashes": [
            hash_secret("1234", salt=b"0123456789abcdef", kind="pbkdf2-sha256")]})
    with pytest.raises(ValidationError, match="both"):
        HttpConfig.model_validate({"tls_cert_file": "/x.pem"})
    with pytest.raises(ValidationError, match="32"):
        HttpConfig.model_validate({"app_token_keys": [{"kid": "k", "public_key": "AAAA"}]})
    assert HttpConfig().enabled is False and HttpConfig().cors_origins == []


def test_principal_roles_are_distinct() -> None:
    assert {r.value for r in Role} == {"public", "customer", "staff", "admin", "metrics"}
    assert Principal(Role.ADMIN, "admin").lane is None


def test_openapi_declares_the_three_security_schemes(tmp_path: Path) -> None:
    _, app, _ = make_client(tmp_path)
    doc = app.openapi()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["customerToken"] == {"type": "http", "scheme": "bearer",
                                        "bearerFormat": "JWS (EdDSA)",
                                        "description": schemes["customerToken"]["description"]}
    assert schemes["adminToken"]["scheme"] == "bearer"
    assert schemes["staffSession"] == {"type": "apiKey", "in": "cookie", "name": "sg_session",
                                       "description": schemes["staffSession"]["description"]}
    # admin: the token as a Bearer (API clients) or the session cookie of a browser
    assert doc["paths"]["/admin/status"]["get"]["security"] == [{"adminToken": []},
                                                                {"adminSession": []}]
    assert doc["paths"]["/app/me"]["get"]["security"] == [{"customerToken": []}]
    assert doc["paths"]["/staff/session"]["get"]["security"] == [{"staffSession": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "200" in op["responses"], (method, path)
            if "security" in op:
                assert {"401", "403"} <= set(op["responses"]), (method, path)


def test_the_test_app_is_a_fastapi_app(tmp_path: Path) -> None:
    _, app, _ = make_client(tmp_path)
    assert isinstance(app, FastAPI)
