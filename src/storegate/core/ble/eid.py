"""Eddystone-EID: compute rotating ids and resolve them to consenting customers.

The computation follows google/eddystone ``eid-computation.md``:

    temporary key = AES-128(IK, 00*11 | FF | 00 00 | top 16 bits of the beacon time)
    EID           = AES-128(temporary key, 00*11 | K | beacon time, low K bits cleared)[:8]

A resolver holds, per enrolled identity, its identity key, rotation exponent K and the
beacon clock at registration. It precomputes the EIDs of the previous, current and next
periods (more when clock drift could exceed a period), so resolving an advert is one
dictionary lookup however many identities are enrolled. Pure: time is passed in.

The work and memory per identity are bounded whatever the record says: at most
``2 * MAX_DRIFT_PERIODS + 1`` periods are held (and computed, two AES blocks each) per
identity, however far its clock is off or however small K is. Past that, drift is not
covered (150 ppm drift stays within the bound for about 3.5 years at K = 10, 10 months
at K = 8, 30 hours at K = 0). Periods outside the beacon's 32-bit clock are never computed.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

DRIFT_PPM: Final = 150  # beacon clocks may run this far off (spec)
MAX_ROTATION_EXPONENT: Final = 15
# Periods held either side of the current one, at most. Three records with K = 0 and a
# registration 120 years off once asked for 1.1 million periods each (540 MB, 30 s of a
# blocked event loop); this caps every identity at 33 EIDs, 66 AES blocks to enrol.
MAX_DRIFT_PERIODS: Final = 16
BEACON_CLOCK_END: Final = 1 << 32  # the Eddystone beacon clock is a 32-bit counter


def _aes(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - one block
    return enc.update(block) + enc.finalize()


def temporary_key(identity_key: bytes, beacon_time: int) -> bytes:
    block = b"\x00" * 11 + b"\xff" + b"\x00\x00" + ((beacon_time >> 16) & 0xFFFF).to_bytes(2, "big")
    return _aes(identity_key, block)


def compute_eid(identity_key: bytes, rotation_exponent: int, beacon_time: int) -> bytes:
    """The 8-byte EID a beacon advertises at ``beacon_time`` (seconds, 32-bit)."""
    t = (beacon_time & 0xFFFFFFFF) >> rotation_exponent << rotation_exponent
    return _eid_with(temporary_key(identity_key, t), rotation_exponent, t)


def _eid_with(tk: bytes, rotation_exponent: int, t: int) -> bytes:
    block = b"\x00" * 11 + bytes([rotation_exponent]) + t.to_bytes(4, "big")
    return _aes(tk, block)[:8]


@dataclass(frozen=True, slots=True)
class Identity:
    """One consenting customer's beacon parameters (from central or the registry file)."""

    customer: str  # pseudonym
    identity_key: bytes  # 16 bytes
    rotation_exponent: int  # K, 0..15
    beacon_time_at_registration: int
    registered_at: float  # epoch seconds

    def __post_init__(self) -> None:
        if len(self.identity_key) != 16:
            raise ValueError("identity_key must be 16 bytes (32 hex characters)")
        if isinstance(self.rotation_exponent, bool) \
                or not 0 <= self.rotation_exponent <= MAX_ROTATION_EXPONENT:
            raise ValueError(f"rotation_exponent must be 0..{MAX_ROTATION_EXPONENT}")
        if isinstance(self.beacon_time_at_registration, bool) \
                or not 0 <= self.beacon_time_at_registration < BEACON_CLOCK_END:
            raise ValueError("beacon_time_at_registration must be 0..2^32-1 (a 32-bit "
                             "beacon clock)")
        if isinstance(self.registered_at, bool) or not math.isfinite(self.registered_at):
            raise ValueError("registered_at must be a finite number (epoch seconds)")

    def beacon_time(self, now: float) -> int:
        return int(self.beacon_time_at_registration + (now - self.registered_at))


class EidResolver:
    """EID -> customer, for every enrolled identity, kept current by :meth:`advance`."""

    def __init__(self) -> None:
        self._by_eid: dict[bytes, str] = {}
        self._identities: dict[str, Identity] = {}
        # customer -> (when the window must move, first quantum, EID of that quantum, of
        # the next, ...): one compact tuple, 100,000 identities are held on a Raspberry Pi.
        # The heap may hold stale entries (re-enrolments); only the one whose time equals
        # the tuple's counts.
        self._eids_of: dict[str, tuple[float, int, *tuple[bytes, ...]]] = {}
        self._due: list[tuple[float, str]] = []  # (epoch when the window must move, customer)
        self.periods_computed = 0  # EIDs computed since start (two AES blocks each)

    def __len__(self) -> int:
        return len(self._identities)

    def customers(self) -> list[str]:
        return list(self._identities)

    @property
    def eid_count(self) -> int:
        """EIDs currently resolvable (about three per identity)."""
        return len(self._by_eid)

    def enroll(self, identity: Identity, now: float) -> None:
        self.remove(identity.customer)
        self._identities[identity.customer] = identity
        self._compute(identity, now)

    def remove(self, customer: str) -> None:
        """Forget a customer (consent withdrawn, erasure): their EIDs stop resolving."""
        self._identities.pop(customer, None)
        for e in self._eids_of.pop(customer, (0.0, 0))[2:]:
            if self._by_eid.get(e) == customer:
                del self._by_eid[e]

    def enroll_all(self, identities: Iterable[Identity], now: float) -> None:
        for identity in identities:
            self.enroll(identity, now)

    def resolve(self, eid: bytes) -> str | None:
        return self._by_eid.get(eid)

    def advance(self, now: float) -> int:
        """Move every identity whose period rolled over; returns how many moved."""
        moved = 0
        while self._due and self._due[0][0] <= now:
            at, customer = heapq.heappop(self._due)
            identity = self._identities.get(customer)
            current = self._eids_of.get(customer)
            if identity is None or current is None or current[0] != at:
                continue  # removed or re-enrolled since: a stale entry
            self._compute(identity, now)
            moved += 1
        return moved

    def _compute(self, identity: Identity, now: float) -> None:
        """Slide the identity's window of periods to ``now``: EIDs still in the window
        are kept, only the periods that entered it are computed."""
        customer = identity.customer
        k = identity.rotation_exponent
        period = 1 << k
        bt = identity.beacon_time(now)
        drift = abs(now - identity.registered_at) * DRIFT_PPM / 1e6
        # periods either side to cover drift; capped, so a clock that is far off (or a
        # record that lies) costs a fixed amount of work and memory, not a blocked loop
        spread = min(1 + int(drift // period), MAX_DRIFT_PERIODS)
        quantum = bt >> k
        first = max(quantum - spread, 0)
        end = min(quantum + spread + 1, BEACON_CLOCK_END >> k)  # beyond: never advertised
        old = self._eids_of.get(customer)
        kept: dict[int, bytes] = {}
        if old is not None:
            q0 = old[1]
            kept = {q0 + i: e for i, e in enumerate(old[2:])}
        eids: list[bytes] = []
        for q in range(first, end):
            e = kept.pop(q, None)
            if e is None:
                e = compute_eid(identity.identity_key, k, q << k)
                self.periods_computed += 1
            self._by_eid[e] = customer
            eids.append(e)
        for e in kept.values():  # periods that left the window
            if self._by_eid.get(e) == customer:
                del self._by_eid[e]
        next_boundary = now + (((quantum + 1) << k) - bt)
        self._eids_of[customer] = (next_boundary, first, *eids)
        heapq.heappush(self._due, (next_boundary, customer))
