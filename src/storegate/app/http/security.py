"""Who may call what: principals, the role each route declares, sessions, rate limits,
secure headers and bounded bodies.

Every route declares exactly one access rule as a dependency: :func:`public`,
:func:`customer`, :func:`staff` (optionally restricted to some staff roles),
:func:`admin` or :func:`metrics_reader`. ``build_app`` refuses to build an app with a
route that declares none (:func:`check_routes`), so a route cannot be added without
deciding who may call it; ``tests/test_http_security.py`` then calls every non-public
route anonymously (401) and with a wrong role (403).

Credentials, one per request (a Bearer header wins over the cookie):

* ``Authorization: Bearer <admin token>``: admin (its sha256 is in ``[http]
  admin_token_hashes``); the metrics token likewise, for ``/metrics`` only.
* ``Authorization: Bearer <JWS>``: a customer (core/webauth.py: EdDSA compact JWS from
  central, audience and expiry enforced); the subject is the customer pseudonym.
* ``Cookie: sg_session=<id>``: a staff session from ``POST /staff/signin`` (lane, role,
  expiry); server-side, so signing out or expiry ends it at once. Sessions live in
  memory: a restart signs staff out, which is the safe direction.
* ``Cookie: sg_session=<id>``: an admin session from ``POST /admin/signin`` (the admin
  token posted once), so a browser can open the admin page; the same kind of cookie,
  in its own store (``AdminSessions``), ended when the admin tokens change.

Bad credentials are 401 with a reason code (never which part of a PIN was wrong); a
valid credential of the wrong role is 403. Rejections are counted by reason for
``/metrics`` and logged once per reason, never with the token.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

import fastapi.routing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storegate.app.http.token_cache import VerifiedTokens
from storegate.config import HttpConfig, StaffCredentialConfig
from storegate.core.webauth import (
    AppTokenClaims,
    RateLimiter,
    RateRule,
    TokenRejected,
    load_ed25519_public,
    token_digest,
    verify_app_token,
    verify_secret,
)
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)
_once = LogOnce(log)

SESSION_COOKIE: Final = "sg_session"
MAX_SESSIONS: Final = 1000  # a store has tens of tills; beyond, the oldest is ended
MAX_ADMIN_SESSIONS: Final = 32  # an operator's browsers, not a crowd
Clock = Callable[[], float]

StaffRole = Literal["cashier", "floor", "manager"]


class Role(StrEnum):
    PUBLIC = "public"
    CUSTOMER = "customer"
    STAFF = "staff"
    ADMIN = "admin"
    METRICS = "metrics"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``subject`` is the customer pseudonym, the staff credential's
    label, or ``admin``/``metrics``."""

    role: Role
    subject: str
    expires_at: float | None = None
    lane: str | None = None  # staff: the lane signed in at ("*": any)
    staff_role: StaffRole | None = None


# The key in a request's ``scope["state"]`` under which a verdict already reached on its
# Bearer token is handed on (the offers fast path, fast.py, refused it): the route
# refuses it the same way without verifying the signature a second time.
REFUSAL_KEY: Final = "storegate.refusal"


@dataclass(frozen=True, slots=True)
class RefusedToken:
    token: str
    reason: str  # TokenRejected.reason


# --- staff sessions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaffSession:
    name: str
    lane: str
    role: StaffRole
    created_at: float
    expires_at: float


class SessionStore:
    """Server-side staff sessions, keyed by the SHA-256 of the cookie value (a heap dump
    does not hand out live cookies). Bounded: the oldest session ends first."""

    def __init__(self, ttl_s: float, *, max_sessions: int = MAX_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, StaffSession] = OrderedDict()

    @staticmethod
    def _key(cookie: str) -> str:
        return hashlib.sha256(cookie.encode()).hexdigest()

    def create(self, cookie: str, cred: StaffCredentialConfig, lane: str,
               now: float) -> StaffSession:
        session = StaffSession(name=cred.name, lane=lane, role=cred.role, created_at=now,
                               expires_at=now + self.ttl_s)
        self._sessions[self._key(cookie)] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return session

    def get(self, cookie: str, now: float) -> StaffSession | None:
        key = self._key(cookie)
        session = self._sessions.get(key)
        if session is not None and now >= session.expires_at:
            del self._sessions[key]
            return None
        return session

    def end(self, cookie: str) -> bool:
        return self._sessions.pop(self._key(cookie), None) is not None

    def end_where(self, ended: Callable[[StaffSession], bool]) -> int:
        gone = [k for k, s in self._sessions.items() if ended(s)]
        for k in gone:
            del self._sessions[k]
        return len(gone)

    def __len__(self) -> int:
        return len(self._sessions)


class AdminSessions:
    """Server-side admin sessions: cookie digest -> expiry. Few (an operator's
    browser or two): past the bound the oldest ends."""

    def __init__(self, ttl_s: float, *, max_sessions: int = MAX_ADMIN_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, float] = OrderedDict()

    def create(self, cookie: str, now: float) -> float:
        expires_at = now + self.ttl_s
        self._sessions[SessionStore._key(cookie)] = expires_at
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return expires_at

    def get(self, cookie: str, now: float) -> float | None:
        """The session's expiry, None if there is none (or it has expired)."""
        key = SessionStore._key(cookie)
        expires_at = self._sessions.get(key)
        if expires_at is not None and now >= expires_at:
            del self._sessions[key]
            return None
        return expires_at

    def end(self, cookie: str) -> bool:
        return self._sessions.pop(SessionStore._key(cookie), None) is not None

    def clear(self) -> int:
        n = len(self._sessions)
        self._sessions.clear()
        return n

    def __len__(self) -> int:
        return len(self._sessions)


# --- the authenticator ------------------------------------------------------------

# A dummy hash to verify against when a lane has no PIN credential, so the time taken
# does not tell which lanes exist (scrypt, same cost as a real PIN check).
_DUMMY_PIN_HASH: Final = ("scrypt$14$8$1$c3RvcmVnYXRlLWR1bW15$"
                          "bcLNUQtkQfoy4ylGtPTibYXtAJhRqaJlH7ttUAz2BnQ")


class Authenticator:
    """The credentials an app accepts, from ``[http]``; one per app (``app.state``)."""

    def __init__(self, settings: HttpConfig, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.app_keys: dict[str, Ed25519PublicKey] = {
            k.kid: load_ed25519_public(k.public_key) for k in settings.app_token_keys}
        self.admin_digests = frozenset(settings.admin_token_hashes)
        self.metrics_digest = settings.metrics_token_hash
        self.sessions = SessionStore(settings.session_ttl_s)
        self.admin_sessions = AdminSessions(settings.session_ttl_s)
        self.verified = VerifiedTokens()  # customer tokens: one verification each
        self.rejected: Counter[str] = Counter()  # by reason, for /metrics
        self.signin_failures = 0

    def reject(self, reason: str, *, status: int = 401) -> HTTPException:
        self.rejected[reason] += 1
        _once(f"http-auth:{reason}", "HTTP request refused: %s", reason)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return HTTPException(status, detail=reason, headers=headers)

    def identify(self, request: Request) -> Principal | None:
        """The caller, None if anonymous; HTTPException(401) for a bad credential."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.partition(" ")
            value = value.strip()
            if scheme.lower() != "bearer" or not value:
                raise self.reject("malformed_authorization")
            known = request.scope.get("state", {}).get(REFUSAL_KEY)
            return self._bearer(value, known if isinstance(known, RefusedToken) else None)
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie is not None:
            now = self.clock()
            session = self.sessions.get(cookie, now)
            if session is None:
                admin_until = self.admin_sessions.get(cookie, now)
                if admin_until is not None:
                    return Principal(Role.ADMIN, "admin", admin_until)
                raise self.reject("session_expired")
            return Principal(Role.STAFF, session.name, session.expires_at, session.lane,
                             session.role)
        return None

    def is_admin_token(self, token: str) -> bool:
        """Whether ``token`` is one of the admin tokens (by its SHA-256, as a Bearer)."""
        return len(token) <= 8192 and token_digest(token) in self.admin_digests

    def update_credentials(self, settings: HttpConfig) -> list[str]:
        """A config reload: the staff credentials and the admin and metrics tokens
        from ``settings``; everything else of ``[http]`` stays as started. Sessions of
        a staff credential removed or changed end; admin sessions end if the admin
        tokens changed. Returns what changed (setting names)."""
        old = self.settings
        changed = [name for name in ("staff", "admin_token_hashes", "metrics_token_hash")
                   if getattr(old, name) != getattr(settings, name)]
        if not changed:
            return []
        self.settings = old.model_copy(update={
            "staff": settings.staff, "admin_token_hashes": settings.admin_token_hashes,
            "metrics_token_hash": settings.metrics_token_hash})
        self.admin_digests = frozenset(settings.admin_token_hashes)
        self.metrics_digest = settings.metrics_token_hash
        if "staff" in changed:
            kept = {(c.name, c.lane, c.role, c.pin_hash, c.device_token_hash)
                    for c in old.staff} & {(c.name, c.lane, c.role, c.pin_hash,
                                            c.device_token_hash) for c in settings.staff}
            names = {k[0] for k in kept}
            self.sessions.end_where(lambda s: s.name not in names)
        if "admin_token_hashes" in changed:
            self.admin_sessions.clear()
        return changed

    def _bearer(self, token: str, known: RefusedToken | None = None) -> Principal:
        if len(token) > 8192:
            raise self.reject("malformed_token")
        if token.count(".") == 2:  # a JWS: customer
            if known is not None and known.token == token:  # refused before routing
                raise self.reject(f"token_{known.reason}")
            try:
                claims = self.customer_claims(token)
            except TokenRejected as exc:
                raise self.reject(f"token_{exc.reason}") from None
            return Principal(Role.CUSTOMER, claims.subject, claims.expires_at)
        digest = token_digest(token)
        # set membership hashes the digest, not the secret: no timing leak of the token
        if digest in self.admin_digests:
            return Principal(Role.ADMIN, "admin")
        if self.metrics_digest is not None and secrets.compare_digest(digest,
                                                                      self.metrics_digest):
            return Principal(Role.METRICS, "metrics")
        raise self.reject("unknown_token")

    def customer_claims(self, token: str) -> AppTokenClaims:
        """A customer token's claims if it is valid now: from the cache of tokens that
        verified (token_cache.py), else verified and remembered. TokenRejected
        otherwise (not counted here: the caller refuses the request)."""
        now, audience = self.clock(), self.settings.app_audience
        claims = self.verified.get(token, keys=self.app_keys, audience=audience, now=now)
        if claims is None:
            claims = verify_app_token(token, keys=self.app_keys, audience=audience, now=now)
            self.verified.put(token, claims, keys=self.app_keys, audience=audience, now=now)
        return claims

    async def sign_in(self, lane: str, *, pin: str | None,
                      device_token: str | None) -> StaffCredentialConfig | None:
        """The credential that matches, checked off the event loop (scrypt: ~50 ms)."""
        creds = [c for c in self.settings.staff if c.lane in (lane, "*")]

        def check() -> StaffCredentialConfig | None:
            found = None
            if pin is not None:
                pins = [c for c in creds if c.pin_hash is not None]
                for c in pins:  # all of them: the time does not tell which matched
                    if c.pin_hash is not None and verify_secret(c.pin_hash, pin) \
                            and found is None:
                        found = c
                if not pins:
                    verify_secret(_DUMMY_PIN_HASH, pin)
            elif device_token is not None:
                digest = token_digest(device_token)
                for c in creds:
                    if c.device_token_hash is not None and \
                            secrets.compare_digest(c.device_token_hash, digest):
                        found = c
            return found

        found = await asyncio.to_thread(check)
        if found is None:
            self.signin_failures += 1
        return found


def authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


# --- route access rules -------------------------------------------------------------

# Every access dependency is recorded here with its role, so the app can check that each
# route declares one (check_routes) and the route test can pick credentials.
ACCESS_RULES: dict[Callable[..., Any], tuple[Role, frozenset[str]]] = {}

_customer_scheme = HTTPBearer(scheme_name="customerToken", auto_error=False,
                              bearerFormat="JWS (EdDSA)",
                              description="A token central issues for the customer "
                              "pseudonym (docs/http.md).")
_admin_scheme = HTTPBearer(scheme_name="adminToken", auto_error=False,
                           description="An admin token ([http] admin_token_hashes); "
                           "/metrics also takes the metrics token.")
_staff_scheme = APIKeyCookie(name=SESSION_COOKIE, scheme_name="staffSession",
                             auto_error=False,
                             description="The session cookie POST /staff/signin sets.")
_admin_cookie_scheme = APIKeyCookie(name=SESSION_COOKIE, scheme_name="adminSession",
                                    auto_error=False,
                                    description="The session cookie POST /admin/signin "
                                    "sets (an admin token posted once, for a browser).")

BearerCreds = Annotated[HTTPAuthorizationCredentials | None, Security(_customer_scheme)]
AdminCreds = Annotated[HTTPAuthorizationCredentials | None, Security(_admin_scheme)]
StaffCookie = Annotated[str | None, Security(_staff_scheme)]
AdminCookie = Annotated[str | None, Security(_admin_cookie_scheme)]


def _rule(role: Role, staff_roles: Iterable[str] = ()) -> Callable[
        [Callable[..., Awaitable[Principal | None]]],
        Callable[..., Awaitable[Principal | None]]]:
    def mark(fn: Callable[..., Awaitable[Principal | None]]) -> Callable[
            ..., Awaitable[Principal | None]]:
        ACCESS_RULES[fn] = (role, frozenset(staff_roles))
        return fn
    return mark


def _require(request: Request, allowed: set[Role], staff_roles: frozenset[str] = frozenset(),
             ) -> Principal:
    auth = authenticator(request)
    principal = auth.identify(request)
    if principal is None:
        raise auth.reject("unauthenticated")
    if principal.role not in allowed:
        raise auth.reject(f"forbidden_{principal.role}", status=403)
    if staff_roles and principal.staff_role not in staff_roles:
        raise auth.reject(f"forbidden_staff_{principal.staff_role}", status=403)
    return principal


@_rule(Role.PUBLIC)
async def public() -> None:
    """Anyone: liveness, readiness, sign-in. Says nothing personal."""
    return None


@_rule(Role.CUSTOMER)
async def customer(request: Request, _: BearerCreds = None) -> Principal:
    return _require(request, {Role.CUSTOMER})


@_rule(Role.ADMIN)
async def admin(request: Request, _: AdminCreds = None, __: AdminCookie = None) -> Principal:
    """An admin token as a Bearer (API clients) or an admin session cookie (a
    browser, after ``POST /admin/signin``)."""
    return _require(request, {Role.ADMIN})


@_rule(Role.METRICS)
async def metrics_reader(request: Request, _: AdminCreds = None) -> Principal:
    """The metrics token or an admin token."""
    return _require(request, {Role.ADMIN, Role.METRICS})


_STAFF_RULES: dict[frozenset[str], Callable[..., Awaitable[Principal | None]]] = {}


def staff(*roles: StaffRole) -> Callable[..., Awaitable[Principal | None]]:
    """A staff session; with ``roles``, only those staff roles (others: 403)."""
    wanted = frozenset(roles)
    rule = _STAFF_RULES.get(wanted)
    if rule is None:
        async def staff_rule(request: Request, _: StaffCookie = None) -> Principal:
            return _require(request, {Role.STAFF}, wanted)
        rule = _rule(Role.STAFF, wanted)(staff_rule)
        _STAFF_RULES[wanted] = rule
    return rule


CustomerPrincipal = Annotated[Principal, Depends(customer)]
AdminPrincipal = Annotated[Principal, Depends(admin)]
StaffPrincipal = Annotated[Principal, Depends(staff())]


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """One API route as the app serves it (prefixes and router dependencies applied)."""

    path: str
    methods: frozenset[str]
    rules: tuple[tuple[Role, frozenset[str]], ...]  # the access rules it declares


def _rules(dependant: Dependant | None) -> tuple[tuple[Role, frozenset[str]], ...]:
    found: list[tuple[Role, frozenset[str]]] = []
    stack = [dependant] if dependant is not None else []
    while stack:
        dep = stack.pop()
        if dep.call is not None and dep.call in ACCESS_RULES:
            found.append(ACCESS_RULES[dep.call])
        stack.extend(dep.dependencies)
    return tuple(found)


def api_routes(app: FastAPI) -> list[RouteInfo]:
    """Every API route of ``app``. FastAPI >= 0.16x keeps included routers as branches
    (``iter_route_contexts`` flattens them); older versions list the routes flat."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    contexts: Iterable[Any] = iterate(app.routes) if iterate is not None else app.routes
    out = []
    for ctx in contexts:
        original = getattr(ctx, "original_route", ctx)
        if not isinstance(original, APIRoute):
            continue  # /openapi.json: the public API description
        out.append(RouteInfo(path=str(ctx.path), methods=frozenset(ctx.methods or ()),
                             rules=_rules(getattr(ctx, "dependant", None))))
    return out


def check_routes(app: FastAPI) -> None:
    """RuntimeError unless every API route declares exactly one access rule."""
    routes = api_routes(app)
    if not routes:
        raise RuntimeError("no API routes found: the route check cannot see them")
    for route in routes:
        if len({r for r, _ in route.rules}) != 1:
            raise RuntimeError(
                f"route {sorted(route.methods)} {route.path} declares "
                f"{'no access rule' if not route.rules else 'several access rules'}: add "
                "exactly one of Depends(public|customer|staff(...)|admin|metrics_reader)")


# --- rate limits -----------------------------------------------------------------------


class RateLimits:
    """Named limiters (``signin``, ``checkin``), one bucket per client address each."""

    def __init__(self, settings: HttpConfig, clock: Clock) -> None:
        self.clock = clock
        self.limiters = {
            "signin": RateLimiter(RateRule(settings.signin_burst, settings.signin_per_minute)),
            "checkin": RateLimiter(RateRule(settings.checkin_burst,
                                            settings.checkin_per_minute)),
        }


def rate_limited(name: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency: 429 with Retry-After once this client's bucket is empty."""
    async def limit(request: Request) -> None:
        limits: RateLimits = request.app.state.rate_limits
        client = request.client.host if request.client is not None else "unknown"
        wait = limits.limiters[name].allow(client, limits.clock())
        if wait > 0:
            authenticator(request).rejected[f"rate_limited_{name}"] += 1
            raise HTTPException(429, detail=f"too many requests: {name}",
                                headers={"Retry-After": str(max(1, int(wait + 0.999)))})
    limit.__name__ = f"rate_limited_{name}"
    return limit


def new_session_cookie() -> str:
    return secrets.token_urlsafe(32)


# --- headers and body bounds (pure ASGI: cheap, and they see every response) ----------

CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
              "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
              "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HSTS: Final = "max-age=31536000; includeSubDomains"


class SecureHeaders:
    """Secure headers on every response, errors included."""

    def __init__(self, app: ASGIApp, *, tls: bool) -> None:
        self.app = app
        extra = [(b"content-security-policy", CSP.encode()),
                 (b"x-content-type-options", b"nosniff"),
                 (b"referrer-policy", b"no-referrer"),
                 (b"x-frame-options", b"DENY"),
                 (b"cross-origin-opener-policy", b"same-origin"),
                 (b"permissions-policy", b"camera=(), microphone=(), geolocation=()")]
        if tls:
            extra.append((b"strict-transport-security", HSTS.encode()))
        self.extra = extra

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers.extend(h for h in self.extra if h[0] not in names)
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BoundedBody:
    """413 for a request body over ``max_bytes``, before any of it reaches a route: by
    Content-Length, or, for a chunked upload (no length), by reading it here first (at
    most ``max_bytes``, then replayed to the app), so chunking cannot get round it."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = chunked = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = value
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = True
            if too_big:
                await _send_json(send, 413, b'{"detail":"request body too large"}')
                return
        elif chunked is not None:
            buffered: list[Message] = []
            seen = 0
            while True:
                message = await receive()
                buffered.append(message)
                if message["type"] != "http.request":
                    break
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    await _send_json(send, 413, b'{"detail":"request body too large"}')
                    return
                if not message.get("more_body", False):
                    break

            async def replay() -> Message:
                return buffered.pop(0) if buffered else await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

