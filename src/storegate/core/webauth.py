"""The HTTP surface's security decisions, pure: time and randomness come in as arguments.

Three things live here so they can be tested without a server and reused by central's
tools: the customer app token (verify, and sign for central and tests), stored secret
hashes (staff PINs, device and admin tokens) and a per-client token-bucket rate limiter.

The customer app token is a JWS in compact serialisation (RFC 7515) with the EdDSA
algorithm (RFC 8037, Ed25519), deliberately the only algorithm accepted::

    base64url(header) "." base64url(claims) "." base64url(signature)
    header  {"alg": "EdDSA", "kid": "<key id>", "typ": "JWT"}
    claims  {"sub": "<customer pseudonym>", "aud": "<audience>", "exp": <unix s>,
             "iat": <unix s>, ["nbf": <unix s>], ["iss": "..."]}

A standard JWT library can issue it; verifying here keeps a heavy dependency off the box
and makes the rules explicit: the header's ``alg`` must be exactly ``EdDSA`` (no
``none``, no HMAC keyed with the public key: the classic algorithm-confusion attacks),
``kid`` must name a configured key, the signature is checked before any claim is read,
the audience must match, ``exp`` is required.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from storegate.core.identity_records import CUSTOMER_PATTERN

MAX_TOKEN_BYTES: Final = 4096  # larger is refused unread
CLOCK_LEEWAY_S: Final = 60.0  # the phone's and central's clocks against ours
MAX_LIFETIME_S: Final = 31 * 86_400  # a token claiming to live longer is refused
APP_TOKEN_ALG: Final = "EdDSA"  # noqa: S105 - an algorithm name, not a secret
KID_RE: Final = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CUSTOMER_RE: Final = re.compile(CUSTOMER_PATTERN)
_B64URL_RE: Final = re.compile(r"^[A-Za-z0-9_-]*$")


class TokenRejected(ValueError):  # noqa: N818 - a verdict, read as "token rejected: reason"
    """A customer token that must not be trusted; ``reason`` is a short stable code
    (counted by reason, returned to the client)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding (RFC 7515 §2): anything else is refused, so a
    token has exactly one encoding (no malleable re-encodings of the same bytes)."""
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(raw) != text:  # non-canonical trailing bits
        raise ValueError("not canonical base64url")
    return raw


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def load_ed25519_public(text: str) -> Ed25519PublicKey:
    """base64url of the 32 raw bytes (as ``storegate keys`` prints them)."""
    try:
        raw = b64url_decode(text.strip())
    except (ValueError, binascii.Error) as exc:
        raise ValueError("public key is not base64url") from exc
    if len(raw) != 32:
        raise ValueError(f"public key is {len(raw)} bytes, an Ed25519 key is 32")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True, slots=True)
class AppTokenClaims:
    """What a verified token says: the customer's pseudonym and until when."""

    subject: str
    audience: str
    kid: str
    issued_at: float
    expires_at: float


def _json_part(text: str) -> dict[str, object]:
    try:
        value = json.loads(b64url_decode(text))
    except (ValueError, binascii.Error, RecursionError) as exc:
        raise TokenRejected("malformed") from exc
    if not isinstance(value, dict):
        raise TokenRejected("malformed")
    return value


def _number(claims: Mapping[str, object], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected(f"bad_{name}")
    return float(value)


def verify_app_token(token: str, *, keys: Mapping[str, Ed25519PublicKey], audience: str,
                     now: float) -> AppTokenClaims:
    """The claims of a token central issued for a customer, or TokenRejected(reason)."""
    if len(token) > MAX_TOKEN_BYTES or not token.isascii():
        raise TokenRejected("malformed")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise TokenRejected("malformed")
    header = _json_part(parts[0])
    if header.get("alg") != APP_TOKEN_ALG:
        raise TokenRejected("unsupported_alg")
    if "crit" in header:  # extensions we do not understand must be refused (RFC 7515 4.1.11)
        raise TokenRejected("unsupported_header")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        raise TokenRejected("unknown_kid")
    try:
        signature = b64url_decode(parts[2])
    except (ValueError, binascii.Error) as exc:
        raise TokenRejected("malformed") from exc
    try:
        keys[kid].verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature as exc:
        raise TokenRejected("bad_signature") from exc
    claims = _json_part(parts[1])  # read only once the signature holds
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if audience not in auds:
        raise TokenRejected("wrong_audience")
    exp = _number(claims, "exp")
    if exp is None:
        raise TokenRejected("no_expiry")
    if exp <= now - CLOCK_LEEWAY_S:
        raise TokenRejected("expired")
    nbf = _number(claims, "nbf")
    iat = _number(claims, "iat")
    if (nbf is not None and nbf > now + CLOCK_LEEWAY_S) or \
            (iat is not None and iat > now + CLOCK_LEEWAY_S):
        raise TokenRejected("not_yet_valid")
    if exp - (iat if iat is not None else now) > MAX_LIFETIME_S:
        raise TokenRejected("lifetime_too_long")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not _CUSTOMER_RE.fullmatch(sub):
        raise TokenRejected("bad_subject")
    return AppTokenClaims(subject=sub, audience=audience, kid=kid,
                          issued_at=iat if iat is not None else now, expires_at=exp)


def sign_app_token(key: Ed25519PrivateKey, *, kid: str, subject: str, audience: str,
                   issued_at: float, lifetime_s: float) -> str:
    """A customer app token (central's side; tests and ``storegate keys`` use it)."""
    header = {"alg": APP_TOKEN_ALG, "kid": kid, "typ": "JWT"}
    claims = {"sub": subject, "aud": audience, "iat": int(issued_at),
              "exp": int(issued_at + lifetime_s)}
    signing_input = ".".join(
        b64url_encode(json.dumps(x, separators=(",", ":")).encode()) for x in (header, claims))
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode('ascii')))}"


# --- stored secrets ----------------------------------------------------------------
#
# Staff PINs are short: stored with scrypt (memory-hard) or PBKDF2, never as a plain
# digest. Device and admin tokens are long random strings, so one SHA-256 is enough and
# keeps each request cheap:
#   scrypt$<log2 n>$<r>$<p>$<salt b64url>$<hash b64url>
#   pbkdf2-sha256$<iterations>$<salt b64url>$<hash b64url>
#   sha256$<hex>

SCRYPT_LOG2_N: Final = 14  # 16 MiB with r=8: ~50 ms on a Pi 4, per guess
PBKDF2_MIN_ITERATIONS: Final = 100_000
MIN_TOKEN_CHARS: Final = 20  # device/admin tokens: long and random, unlike a PIN


def hash_secret(secret: str, *, salt: bytes, kind: str = "scrypt") -> str:
    """A storable hash of ``secret`` (``salt``: 16 random bytes from the caller)."""
    data = secret.encode()
    if kind == "scrypt":
        digest = hashlib.scrypt(data, salt=salt, n=1 << SCRYPT_LOG2_N, r=8, p=1, dklen=32)
        return f"scrypt${SCRYPT_LOG2_N}$8$1${b64url_encode(salt)}${b64url_encode(digest)}"
    if kind == "pbkdf2-sha256":
        iterations = 600_000
        digest = hashlib.pbkdf2_hmac("sha256", data, salt, iterations)
        return f"pbkdf2-sha256${iterations}${b64url_encode(salt)}${b64url_encode(digest)}"
    if kind == "sha256":
        if len(secret) < MIN_TOKEN_CHARS:
            raise ValueError(f"a token is at least {MIN_TOKEN_CHARS} characters "
                             "(sha256 is for long random tokens; hash a PIN with scrypt)")
        return f"sha256${hashlib.sha256(data).hexdigest()}"
    raise ValueError(f"unknown hash kind {kind!r}")


def _hash_problem(parts: list[str]) -> str | None:
    """What is wrong with a split stored hash, None if nothing (raises ValueError or
    binascii.Error on a malformed number or encoding)."""
    if parts[0] == "scrypt" and len(parts) == 6:
        log2n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        if not (10 <= log2n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return "scrypt parameters out of range (log2 n 10..20, r 1..32, p 1..16)"
        b64url_decode(parts[4])
        return "scrypt hash too short" if len(b64url_decode(parts[5])) < 16 else None
    if parts[0] == "pbkdf2-sha256" and len(parts) == 4:
        if not PBKDF2_MIN_ITERATIONS <= int(parts[1]) <= 10_000_000:
            return f"pbkdf2 iterations out of range ({PBKDF2_MIN_ITERATIONS}..10,000,000)"
        b64url_decode(parts[2])
        return "pbkdf2 hash too short" if len(b64url_decode(parts[3])) < 16 else None
    if parts[0] == "sha256" and len(parts) == 2 and re.fullmatch(r"[0-9a-f]{64}", parts[1]):
        return None
    return ("expected scrypt$..., pbkdf2-sha256$... or sha256$<64 hex> "
            "(python -m storegate.app.http hash-secret prints one)")


def check_hash_format(stored: str) -> str:
    """``stored`` if it is a hash this module verifies, else ValueError naming the
    problem (config validation: a typo is caught at start, not at the first sign-in)."""
    try:
        problem = _hash_problem(stored.split("$"))
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"not a valid secret hash: {exc}") from exc
    if problem is not None:
        raise ValueError(f"not a valid secret hash: {problem}")
    return stored


def verify_secret(stored: str, presented: str) -> bool:
    """Whether ``presented`` matches ``stored``, compared in constant time. A malformed
    stored value (config validation prevents it) never matches."""
    parts = stored.split("$")
    data = presented.encode()
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            expected = b64url_decode(parts[5])
            got = hashlib.scrypt(data, salt=b64url_decode(parts[4]), n=1 << int(parts[1]),
                                 r=int(parts[2]), p=int(parts[3]), dklen=len(expected),
                                 maxmem=256 * 1024 * 1024)
        elif parts[0] == "pbkdf2-sha256" and len(parts) == 4:
            expected = b64url_decode(parts[3])
            got = hashlib.pbkdf2_hmac("sha256", data, b64url_decode(parts[2]),
                                      int(parts[1]), len(expected))
        elif parts[0] == "sha256" and len(parts) == 2:
            expected = bytes.fromhex(parts[1])
            got = hashlib.sha256(data).digest()
        else:
            return False
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, expected)


def token_digest(token: str) -> str:
    """The ``sha256$...`` form of a long token: looked up directly, no loop over hashes."""
    return f"sha256${hashlib.sha256(token.encode()).hexdigest()}"


# --- rate limits ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateRule:
    """``burst`` requests at once, refilled at ``per_minute``."""

    burst: int
    per_minute: float


class RateLimiter:
    """A token bucket per key (the client's address), in a bounded LRU map: an attacker
    cycling addresses evicts old buckets instead of growing memory (the evicted client
    just gets a full bucket back)."""

    def __init__(self, rule: RateRule, *, max_keys: int = 10_000) -> None:
        self.rule = rule
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self.limited_total = 0

    def allow(self, key: str, now: float) -> float:
        """0.0 if the request may proceed (and is counted), else seconds to wait."""
        rule = self.rule
        tokens, at = self._buckets.pop(key, (float(rule.burst), now))
        rate_s = rule.per_minute / 60.0
        tokens = min(float(rule.burst), tokens + max(now - at, 0.0) * rate_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / rate_s if rate_s > 0 else 3600.0
            self.limited_total += 1
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait
