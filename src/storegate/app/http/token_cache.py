"""Customer tokens already verified, so a phone polling its offers does not pay an
Ed25519 verification (~90 µs, the largest single cost of ``GET /app/offers``, measured
in bench/bench_http.py) on every request.

Keyed by the exact token text: only the very bytes that verified hit. An entry answers
until the token's own ``exp`` (stricter than the verification's clock leeway: past it
the token is verified again and refused as usual), only while the key that verified it
is still trusted under its key id, and only for the audience it was checked against.
Failures are never stored: a bad token costs a verification every time, as before,
and cannot push good ones out. Bounded: past :data:`MAX_ENTRIES` the least recently
used goes. Caching does not widen access: a cached token is one that would verify
again right now; what it may read is decided per request as before (an erased
customer's inbox is empty, so their still-valid token reads nothing).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from storegate.core.webauth import AppTokenClaims

# A store's phones in a busy hour, with room to spare; ~0.5 KiB each.
MAX_ENTRIES: Final = 4096


@dataclass(frozen=True, slots=True)
class _Verified:
    claims: AppTokenClaims
    key: Ed25519PublicKey  # the key object that verified it
    audience: str
    verified_at: float


class VerifiedTokens:
    """A bounded LRU of verified customer tokens. Owned by the event loop."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Verified] = OrderedDict()
        self.hits_total = 0

    def get(self, token: str, *, keys: Mapping[str, Ed25519PublicKey], audience: str,
            now: float) -> AppTokenClaims | None:
        """The claims of ``token`` if it verified before and still would; else None
        (verify it, then :meth:`put`)."""
        hit = self._entries.get(token)
        if hit is None:
            return None
        claims = hit.claims
        if (now >= claims.expires_at or now < hit.verified_at  # expired; clock set back
                or keys.get(claims.kid) is not hit.key or audience != hit.audience):
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        self.hits_total += 1
        return claims

    def put(self, token: str, claims: AppTokenClaims, *,
            keys: Mapping[str, Ed25519PublicKey], audience: str, now: float) -> None:
        """Remember a token that has just verified at ``now``."""
        key = keys.get(claims.kid)
        if key is None or now >= claims.expires_at:
            return
        self._entries[token] = _Verified(claims, key, audience, now)
        self._entries.move_to_end(token)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
