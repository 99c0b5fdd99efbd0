"""Central's signing side, for tests: a key pair and signed (and sealed) commands.

Every gateway config written by tests/support/gateway_proc.py trusts ``CENTRAL``'s
public key, so a test that commands a gateway signs with it; a test about forgeries
makes a second ``Central`` the gateway does not know.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from storegate.core import seal
from storegate.core.ble.eid import Identity
from storegate.core.commands import IdentityRecord, seal_identities
from storegate.core.trust import public_key_text, sign_command


class Central:
    def __init__(self, kid: str = "central-test") -> None:
        self.kid = kid
        self.key = Ed25519PrivateKey.generate()

    @property
    def public_key(self) -> str:
        return public_key_text(self.key.public_key())

    def toml(self) -> str:
        """The [trust] section of a gateway config that trusts this central."""
        return (f'[trust]\ncentral_keys = [{{ kid = "{self.kid}", '
                f'public_key = "{self.public_key}" }}]\n')

    def sign(self, name: str, payload: Mapping[str, Any], *, store: str = "s1",
             issued_at: float | None = None, command_id: str | None = None) -> bytes:
        return sign_command(
            self.key, kid=self.kid, command=name, store=store, payload=payload,
            issued_at=time.time() if issued_at is None else issued_at,
            command_id=command_id or f"cmd-{uuid.uuid4()}")

    def identities(self, op: str, identities: Iterable[Identity] = (),
                   customers: Iterable[str] = (), *, gateways: Mapping[str, str],
                   store: str = "s1", request_id: str | None = None,
                   **sign_args: Any) -> bytes:
        """A signed identities command, keys sealed to ``gateways`` (id -> seal key)."""
        payload = self.identities_payload(op, identities, customers, gateways=gateways,
                                          store=store, request_id=request_id)
        return self.sign("identities", payload, store=store, **sign_args)

    @staticmethod
    def identities_payload(op: str, identities: Iterable[Identity] = (),
                           customers: Iterable[str] = (), *, gateways: Mapping[str, str],
                           store: str = "s1", request_id: str | None = None,
                           ) -> dict[str, Any]:
        records = [IdentityRecord.of(i) for i in identities]
        body: dict[str, Any] = {"op": op}
        if records:
            sealed, wrapped = seal_identities(
                records, {gw: seal.load_public(k) for gw, k in gateways.items()},
                store=store, rand=os.urandom)
            body["identities"] = sealed
            body["sealed_to"] = wrapped
        if customers:
            body["customers"] = list(customers)
        if request_id is not None:
            body["request_id"] = request_id
        return body

    def customers(self, op: str, records: Iterable[Mapping[str, Any]] = (),
                  remove: Iterable[tuple[str, int]] = (), *, gateways: Mapping[str, str],
                  store: str = "s1", request_id: str | None = None,
                  **sign_args: Any) -> bytes:
        """A signed customers command; records as :func:`customer_record` makes them
        (an identity in clear is sealed to ``gateways``, id -> seal key)."""
        payload = self.customers_payload(op, records, remove, gateways=gateways,
                                         store=store, request_id=request_id)
        return self.sign("customers", payload, store=store, **sign_args)

    @staticmethod
    def customers_payload(op: str, records: Iterable[Mapping[str, Any]] = (),
                          remove: Iterable[tuple[str, int]] = (), *,
                          gateways: Mapping[str, str], store: str = "s1",
                          request_id: str | None = None) -> dict[str, Any]:
        out = [dict(r) for r in records]
        clear = [(r, IdentityRecord.model_validate(r["identity"])) for r in out
                 if r.get("identity") is not None and "identity_key" in r["identity"]]
        body: dict[str, Any] = {"op": op, "customers": out}
        if clear:
            sealed, wrapped = seal_identities(
                [c for _, c in clear], {gw: seal.load_public(k) for gw, k in gateways.items()},
                store=store, rand=os.urandom)
            for (r, _), s in zip(clear, sealed, strict=True):
                r["identity"] = s
            body["sealed_to"] = wrapped
        if remove:
            body["remove"] = [{"customer": c, "version": v} for c, v in remove]
        if request_id is not None:
            body["request_id"] = request_id
        return body


CENTRAL = Central()


def customer_record(customer: str, version: int, *, identity: Identity | None = None,
                    presence: bool = True, marketing: bool = True, staff_view: bool = True,
                    loyalty_ids: Iterable[str] = (), at: float = 1_790_000_000.0,
                    **profile: Any) -> dict[str, Any]:
    """A valid CustomerRecord as central sends it (identity in clear: the command
    helpers seal it)."""
    def consent(granted: bool) -> dict[str, Any]:
        return {"granted": granted, "at": at, "source": "app"}

    record: dict[str, Any] = {
        "customer": customer, "version": version,
        "consents": {"presence": consent(presence), "marketing": consent(marketing),
                     "staff_view": consent(staff_view)},
        "loyalty_ids": list(loyalty_ids),
        "profile": {"greeting_name": "Alex", "tier": "gold", "segments": ["runner"],
                    **profile},
    }
    if identity is not None:
        record["identity"] = IdentityRecord.of(identity).model_dump()
    return record


def topic(name: str, store: str = "s1") -> str:
    return f"storegate/v1/{store}/commands/{name}"


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()
