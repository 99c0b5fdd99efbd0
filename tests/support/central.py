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


CENTRAL = Central()


def topic(name: str, store: str = "s1") -> str:
    return f"storegate/v1/{store}/commands/{name}"


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()
