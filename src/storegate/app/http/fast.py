"""Hot customer reads answered before FastAPI's routing (issue 12's API target).

A phone polls ``GET /app/offers``; through FastAPI each request paid ~120 µs of routing,
dependency solving and response-model handling, more than the token check and the
inbox read together (bench/bench_http.py, cProfile). So the plain case of that one
request is answered here, in front of the app, the way ``/healthz`` is
(server._Latency), and everything else goes to the route, which stays the reference
and the contract (OpenAPI unchanged):

* handled here: ``GET /app/offers`` (any query string: the route takes none and
  ignores it), no ``Origin`` header (CORS is the route's middleware's), exactly one
  ``Authorization: Bearer <JWS>`` that is valid now (the token cache, else a full
  verification, the same :meth:`Authenticator.customer_claims` the route's access rule
  uses), a gateway with an app channel;
* everything else — no token, a refused token (expired, foreign key, bad signature,
  …: the route refuses it, counts and logs it, in its own error shape, from the
  verdict given here in ``scope["state"]`` (security.RefusedToken), not verifying it
  twice), a staff or admin credential (403 there), a failure of any kind before
  anything was sent (counted, logged once: the route meets it again and answers its
  way, a 500 in the latency metric) — is passed to the app as if this were not here.
* a customer being erased or withdrawing consent (AppChannel.withheld, from the
  first in-memory step of it) is read through the channel, which answers nothing of
  theirs, and never kept.

The body is the route's own: the same models (``app_channel.offer_list``) serialised
the same way, kept per customer while the inbox says nothing of theirs changed
(:class:`OfferBodies`); the security headers are added outside (SecureHeaders), the latency is
observed under the route's template. ``tests/test_http_perf.py`` compares the answers
of an app with and without this for valid, expired, foreign, missing and malformed
tokens and odd query strings.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from starlette.datastructures import State
from starlette.types import Scope, Send

from storegate.adapters.plumbing import describe_error
from storegate.app.app_channel import AppChannel
from storegate.app.http.app_channel import offer_list
from storegate.app.http.security import REFUSAL_KEY, Authenticator, RefusedToken
from storegate.core.webauth import TokenRejected
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

OFFERS_PATH: Final = "/app/offers"
MAX_BODIES: Final = 1024  # customers' lists kept (a store's phones in a busy hour)
MAX_BODY_BYTES: Final = 16 * 1024  # ~30 offers; a longer list is read each time
OFFERS_TEMPLATE: Final = OFFERS_PATH  # the route's template: one latency series for both


class FastReads:
    """The fast path over one app's state (``app.state``: gateway, auth)."""

    def __init__(self, state: State, *, enabled: bool = True) -> None:
        self.state = state
        self.enabled = enabled
        self.answered_total = 0  # answered here (observable: tests, status)
        self.failed_total = 0  # failed here before sending: passed to the route
        self.bodies = OfferBodies()
        self._warn = LogOnce(log)

    def wants(self, scope: Scope) -> bool:
        """Cheap first look: the request this may answer."""
        return self.enabled and scope["path"] == OFFERS_PATH and scope["method"] == "GET"

    async def offers(self, scope: Scope, send: Send) -> bool:
        """Answer ``GET /app/offers`` if it is the plain case; False: not answered,
        nothing sent (the app answers it)."""
        token = _bearer_token(scope)
        if token is None:
            return False
        channel = getattr(self.state.gateway, "app_channel", None)
        if not isinstance(channel, AppChannel):
            return False
        auth: Authenticator = self.state.auth
        try:
            body = await self._body(auth, channel, token, scope)
        except Exception as exc:  # the route meets the same failure and answers it its way
            self.failed_total += 1
            self._warn(f"fast-offers:{type(exc).__name__}", "GET /app/offers failed before "
                       "routing, passed to the route: %s", describe_error(exc))
            return False
        if body is None:
            return False
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()),
                                (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        self.answered_total += 1
        return True

    async def _body(self, auth: Authenticator, channel: AppChannel, token: str,
                    scope: Scope) -> bytes | None:
        """The list's body for the token's customer; None: a refused token, whose
        verdict is left for the route (it answers the 401, counts and logs it)."""
        try:
            claims = auth.customer_claims(token)
        except TokenRejected as exc:
            scope.setdefault("state", {})[REFUSAL_KEY] = RefusedToken(token, exc.reason)
            return None
        customer = claims.subject
        body = self.bodies.get(channel, customer)
        if body is None:
            version, read_at = channel.inbox.offers_version(customer), channel.now()
            rows = await channel.offers(customer)
            body = offer_list(rows).model_dump_json().encode()
            if not channel.withheld(customer):  # an erasure began: nothing of it kept
                self.bodies.put(customer, body, version=version, read_at=read_at,
                                valid_until=min((r.expires_at for r in rows),
                                                default=math.inf))
        return body


@dataclass(frozen=True, slots=True)
class _Body:
    body: bytes
    version: tuple[int, int]  # AppInbox.offers_version when it was read
    read_at: float
    valid_until: float  # the first expiry among its offers: then the list changes


class OfferBodies:
    """The offers list's body per customer, as last answered, kept while it is what the
    route would answer: the inbox's version for that customer unchanged (every commit
    touching them, any prune or erasure, moves it), the clock not past the first
    expiry among the offers nor set back. A phone polling its list costs a token-cache
    look-up and this, not a read, a parse and a serialisation. Bounded (LRU, small
    bodies only). A customer withheld by the channel (an erasure or withdrawal under
    way, from its first step) is neither answered from here nor kept; the erasure's
    end moves every version: nothing kept is answered again, and the whole store is
    dropped at the next look-up (it lives in memory only)."""

    def __init__(self, max_entries: int = MAX_BODIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Body] = OrderedDict()
        self._epoch = 0
        self.hits_total = 0

    def get(self, channel: AppChannel, customer: str) -> bytes | None:
        if channel.withheld(customer):  # being erased: read through the channel
            self._entries.pop(customer, None)
            return None
        version = channel.inbox.offers_version(customer)
        if version[0] != self._epoch:  # a prune or an erasure since: all of it stale
            self._entries.clear()
            self._epoch = version[0]
            return None
        hit = self._entries.get(customer)
        if hit is None:
            return None
        now = channel.now()
        if hit.version != version or now >= hit.valid_until or now < hit.read_at:
            del self._entries[customer]
            return None
        self._entries.move_to_end(customer)
        self.hits_total += 1
        return hit.body

    def put(self, customer: str, body: bytes, *, version: tuple[int, int], read_at: float,
            valid_until: float) -> None:
        if len(body) > MAX_BODY_BYTES or version[0] != self._epoch:
            return
        self._entries[customer] = _Body(body, version, read_at, valid_until)
        self._entries.move_to_end(customer)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _bearer_token(scope: Scope) -> str | None:
    """The JWS of the request's single ``Authorization: Bearer`` header, parsed as
    ``Authenticator.identify`` parses it; None for anything else (no header, two, an
    ``Origin`` (CORS), another scheme, not a JWS)."""
    header: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if header is not None:
                return None
            header = value
        elif name == b"origin":
            return None
    if header is None:
        return None
    scheme, _, value = header.decode("latin-1").partition(" ")
    token = value.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 8192 \
            or token.count(".") != 2:
        return None
    return token
