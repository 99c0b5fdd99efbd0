"""Signed commands: the envelope central wraps every command in, and its checks.

The broker is not trusted with authority: whoever holds any login on a store broker
can publish on a command topic, and a broker may be misconfigured. So every command
carries an Ed25519 signature by central, and a gateway holds only central's *public*
keys. On the wire (UTF-8 JSON, the MQTT payload)::

    {"kid": "central-2026-12",               the signing key, so keys can rotate
     "signed": "<base64url of the signed bytes>",
     "sig": "<base64url Ed25519 signature over exactly those bytes>"}

The signed bytes are themselves UTF-8 JSON::

    {"v": 1, "id": "<unique command id>", "command": "identities",
     "store": "store-0042" (or "*" for every store), "issued_at": 1796200000.25,
     "payload": {...the command's own fields...}}

Signing bytes rather than a re-serialised object means no canonical JSON is needed: a
verifier checks what it received, byte for byte. The command name and the store are
inside the signature, so a command cannot be moved to another topic or store; the id
and the time are inside too, so an old command cannot be replayed outside a short
window, and inside it its id has already been seen.

Pure: bytes, keys and the time in, a :class:`Verified` or a :class:`Rejected` out. The
duplicate check needs memory across restarts, so the caller does it with the id.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ENVELOPE_VERSION: Final = 1
KID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
COMMAND_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
SIGNATURE_B64_CHARS: Final = 86  # 64 bytes, base64url without padding
B64_SLICE: Final = 1 << 20  # characters, a multiple of 4
_B64: Final = re.compile(r"[A-Za-z0-9_-]*={0,2}")
# Wider than any real clock: a command dated before 2020 or after 2100 is garbage.
EARLIEST_ISSUED_AT: Final = 1_577_836_800.0
LATEST_ISSUED_AT: Final = 4_102_444_800.0

Reason = Literal[
    "too_large",        # over trust.max_command_bytes
    "wrong_topic",      # not exactly storegate/v1/<store>/commands/<name> or .../central/<name>
    "unknown_command",  # a name no gateway knows
    "malformed",        # not the envelope (JSON, fields, base64)
    "unknown_key",      # kid not among central's configured public keys
    "bad_signature",    # the signature does not verify with that key
    "mismatch",         # signed command name or store differ from the topic's
    "expired",          # issued longer ago than trust.max_age_s
    "not_yet_valid",    # issued further ahead than trust.max_future_s
    "duplicate",        # this command id was already accepted
    "invalid",          # authentic, but the payload fails validation
    "not_sealed_for_this_gateway",  # identity keys sealed to other gateways only
    "unsealable",       # sealed data does not open with this gateway's key
    "overloaded",       # too many commands waiting: sent again later, it will be read
]
# Failures an anonymous sender can cause at will: answered, but rate-limited harder.
UNAUTHENTICATED: Final = frozenset(
    {"too_large", "wrong_topic", "unknown_command", "malformed", "unknown_key",
     "bad_signature", "overloaded"})


@dataclass(frozen=True, slots=True)
class Verified:
    """An authentic command, inside its time window: still to be checked for a
    duplicate id (by the caller) and for its payload (by the command's model)."""

    command_id: str
    name: str
    store: str
    issued_at: float
    kid: str
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Reason
    detail: str
    command_id: str | None = None  # only once the signature verified: never echo forgeries


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """What a gateway accepts: central's public keys (by key id) and the time window."""

    keys: Mapping[str, Ed25519PublicKey]
    max_age_s: float
    max_future_s: float


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str, pause: Callable[[], None] | None = None) -> bytes:
    """base64url, padding optional; raises ValueError on anything else. With ``pause``,
    a large input is decoded in slices with a pause between them (a thread lets the
    event loop run: one 24 MB decode holds the interpreter for ~0.1 s)."""
    if not isinstance(text, str) or not _B64.fullmatch(text):
        raise ValueError("not base64url")
    text += "=" * (-len(text) % 4)
    try:
        if pause is None or len(text) <= B64_SLICE:
            return base64.urlsafe_b64decode(text)
        parts = []
        for i in range(0, len(text), B64_SLICE):
            parts.append(base64.urlsafe_b64decode(text[i:i + B64_SLICE]))
            pause()
        return b"".join(parts)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def public_key_text(key: Ed25519PublicKey) -> str:
    return b64e(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def raw_key(text: str, what: str) -> bytes:
    """A 32-byte key as configs and certificates carry it (base64url). ValueError."""
    raw = b64d(text.strip())
    if len(raw) != 32:
        raise ValueError(f"an {what} public key is 32 bytes, this is {len(raw)}")
    return raw


def load_public_key(text: str) -> Ed25519PublicKey:
    """Central's public key as config holds it. Raises ValueError."""
    return Ed25519PublicKey.from_public_bytes(raw_key(text, "Ed25519"))


def sign_command(
    key: Ed25519PrivateKey, *, kid: str, command: str, store: str, payload: Mapping[str, Any],
    issued_at: float, command_id: str,
) -> bytes:
    """The wire bytes of a signed command (central's side, and ``storegate keys sign``)."""
    if not KID_PATTERN.fullmatch(kid):
        raise ValueError(f"key id {kid!r}: 1-64 of A-Z a-z 0-9 . _ : -")
    if not COMMAND_ID_PATTERN.fullmatch(command_id):
        raise ValueError(f"command id {command_id!r}: 1-128 of A-Z a-z 0-9 . _ : -")
    signed = json.dumps(
        {"v": ENVELOPE_VERSION, "id": command_id, "command": command, "store": store,
         "issued_at": issued_at, "payload": payload},
        separators=(",", ":"), ensure_ascii=False, allow_nan=False,
    ).encode("utf-8")
    envelope = {"kid": kid, "signed": b64e(signed), "sig": b64e(key.sign(signed))}
    return json.dumps(envelope, separators=(",", ":")).encode("ascii")


def verify(  # noqa: PLR0911 - a list of early rejections, each with its reason
    message: bytes, *, name: str, store: str, policy: TrustPolicy, now: float,
    pause: Callable[[], None] | None = None,
    authentic: Callable[[], None] | None = None,
) -> Verified | Rejected:
    """Check one command as it arrived on the topic of command ``name`` for ``store``
    (``"*"`` on the every-store topic). Size is bounded by the caller before this;
    ``pause`` is called between slices of long work (see :func:`b64d`), ``authentic``
    once the signature verified, before the signed bytes are parsed (the gateway starts
    its bulk-work mode there, which no forgery may switch on)."""
    try:
        outer = json.loads(message)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Rejected("malformed", "not a signed command envelope (JSON)")
    if not isinstance(outer, dict) or set(outer) != {"kid", "signed", "sig"}:
        return Rejected("malformed", "the envelope has exactly kid, signed and sig")
    kid, signed_text, sig_text = outer["kid"], outer["signed"], outer["sig"]
    if not (isinstance(kid, str) and isinstance(signed_text, str)
            and isinstance(sig_text, str)):
        return Rejected("malformed", "kid, signed and sig are strings")
    if not KID_PATTERN.fullmatch(kid):
        return Rejected("malformed", "kid is not a key id")
    key = policy.keys.get(kid)
    if key is None:
        return Rejected("unknown_key", f"no central key {kid!r} is configured")
    if len(sig_text) > SIGNATURE_B64_CHARS + 2:
        return Rejected("malformed", "sig is not an Ed25519 signature")
    try:
        signed, sig = b64d(signed_text, pause), b64d(sig_text)
    except ValueError:
        return Rejected("malformed", "signed or sig is not base64url")
    try:
        key.verify(sig, signed)
    except InvalidSignature:
        return Rejected("bad_signature", f"signature does not verify with key {kid!r}")
    # Authentic from here on: central wrote these bytes; still check their shape.
    if authentic is not None:
        authentic()
    try:
        inner = json.loads(signed)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Rejected("malformed", "signed bytes are not JSON")
    if not isinstance(inner, dict):
        return Rejected("malformed", "signed bytes are not a JSON object")
    command_id = inner.get("id")
    if not isinstance(command_id, str) or not COMMAND_ID_PATTERN.fullmatch(command_id):
        return Rejected("malformed", "signed command has no valid id")
    issued_at = inner.get("issued_at")
    payload = inner.get("payload")
    if (inner.get("v") != ENVELOPE_VERSION or set(inner) != {
            "v", "id", "command", "store", "issued_at", "payload"}
            or not isinstance(payload, dict)
            or isinstance(issued_at, bool) or not isinstance(issued_at, int | float)
            or not math.isfinite(issued_at)
            or not EARLIEST_ISSUED_AT <= issued_at <= LATEST_ISSUED_AT):
        return Rejected("malformed", "signed command needs v=1, id, command, store, "
                        "issued_at (epoch seconds) and payload (an object)", command_id)
    if inner.get("command") != name or inner.get("store") != store:
        return Rejected("mismatch", f"signed for command {inner.get('command')!r} of store "
                        f"{inner.get('store')!r}, arrived as {name!r} for {store!r}",
                        command_id)
    age = now - float(issued_at)
    if age > policy.max_age_s:
        return Rejected("expired", f"issued {age:.0f} s ago (window {policy.max_age_s:g} s)",
                        command_id)
    if -age > policy.max_future_s:
        return Rejected("not_yet_valid", f"issued {-age:.0f} s in the future (window "
                        f"{policy.max_future_s:g} s): check the clocks", command_id)
    return Verified(command_id, name, store, float(issued_at), kid, payload)
