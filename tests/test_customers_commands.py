"""The command handler hands a customers command over opened, and records it only once
applied (the same rule as identities)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from storegate.adapters.command_ledger import CommandLedger
from storegate.app.commands import CommandHandler
from storegate.core import seal
from storegate.core.personal.registry import CustomersChange
from storegate.core.trust import TrustPolicy, Verified
from tests.support.central import Central, customer_record
from tests.test_registry import ident

NOW = 1_796_000_000.0
CENTRAL = Central("central-1")
POLICY = TrustPolicy({"central-1": CENTRAL.key.public_key()}, max_age_s=3600,
                     max_future_s=60)
TOPIC = "storegate/v1/s1/commands/customers"


class Handler:
    def __init__(self, tmp_path: Path, *, wired: bool = True) -> None:
        self.key = X25519PrivateKey.generate()
        self.gateways = {"g1": seal.public_text(self.key.public_key())}
        self.answers: list[dict[str, object]] = []
        self.given: list[tuple[object, Verified, Callable[[bool], None]]] = []
        self.ledger = CommandLedger(tmp_path / "commands.db", keep_s=3660)
        self.handler = CommandHandler(
            store_id="s1", gateway_id="g1", policy=POLICY, max_bytes=1 << 20,
            outbox=None,  # type: ignore[arg-type]  # no replay here
            submit=lambda drafts: self.answers.extend(d.data.model_dump() for d in drafts),
            ledger=self.ledger, seal_key=self.key, resend=lambda s: None,
            identities=lambda c, done: None, wall_clock=lambda: NOW,
            handlers={"customers": lambda c, v, done: self.given.append((c, v, done))}
            if wired else None)

    def command(self, cid: str, gateways: dict[str, str] | None = None) -> bytes:
        return CENTRAL.customers(
            "upsert", [customer_record("cust-1", 1, identity=ident(1))],
            gateways=gateways or self.gateways, request_id="r", issued_at=NOW,
            command_id=cid)


def test_handed_over_opened_and_recorded_only_once_applied(tmp_path: Path) -> None:
    h = Handler(tmp_path)
    try:
        h.handler.handle(TOPIC, h.command("c-1"))
        [(change, verified, done)] = h.given
        assert isinstance(change, CustomersChange)
        assert dict(change.identities) == {"cust-1": ident(1)}  # unsealed on this thread
        assert change.command_id == "c-1" == verified.command_id and change.request_id == "r"
        assert not h.ledger.seen("c-1")  # not applied yet
        h.handler.handle(TOPIC, h.command("c-1"))  # in flight: a duplicate
        assert h.handler.rejected_by_reason == {"duplicate": 1}
        done(False)  # did not take effect: central's resend is accepted
        assert not h.ledger.seen("c-1")
        h.handler.handle(TOPIC, h.command("c-1"))
        assert len(h.given) == 2
        h.given[1][2](True)
        assert h.ledger.seen("c-1") and h.handler.accepted_total == 2
    finally:
        h.ledger.close()


def test_not_sealed_for_this_gateway_and_not_wired_are_answered(tmp_path: Path) -> None:
    h = Handler(tmp_path)
    try:
        other = {"g2": seal.public_text(X25519PrivateKey.generate().public_key())}
        h.handler.handle(TOPIC, h.command("c-2", other))
        assert h.given == [] and h.handler.rejected_by_reason == {
            "not_sealed_for_this_gateway": 1}
        assert h.answers[-1]["command"] == "customers"
    finally:
        h.ledger.close()
    unwired = Handler(tmp_path / "unwired", wired=False)
    try:
        unwired.handler.handle(TOPIC, unwired.command("c-3"))
        assert unwired.handler.rejected_by_reason == {"unknown_command": 1}
        assert not unwired.ledger.seen("c-3")
    finally:
        unwired.ledger.close()
