"""Offers issued as a group (app/personal.py, ``process_group``): the tokens of every
offer a group of queued batches issues go into the redemption ledger in one transaction,
and no offer reaches ``on_offer`` (the app channel, so a phone) before its token's row
is durable; a ledger that fails issues none of them, and the engine does not keep them.
Real SQLite files and real keys, as in test_personal.py."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from storegate.adapters.redemption_sqlite import IssueRow, RedemptionStore
from storegate.app.redemption import IssuedToken
from storegate.core import payloads as p
from storegate.core.personal.offers import Decision
from tests.test_personal import CUSTOMER, T0, WELCOME, Box, entered, names, record

BOB = "cust-bob"


def _committed(path: Path, token_id: str) -> bool:
    """Whether another connection sees the token's row: committed, not merely staged."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT 1 FROM offers WHERE token_id = ?",
                          (token_id,)).fetchone() is not None
    finally:
        db.close()


def test_a_group_records_its_tokens_in_one_transaction_before_any_is_shown(
        tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.know(record(), record(BOB))
    box.campaigns("upsert", WELCOME)
    ledger = box.svc.redemption.ledger
    seen: list[tuple[str, bool]] = []

    def on_offer(_d: Decision, token: IssuedToken) -> None:
        seen.append((token.token_id, _committed(ledger.path, token.token_id)))
    box.svc.on_offer = on_offer
    statements: list[str] = []
    ledger._db.set_trace_callback(statements.append)  # what the ledger's connection runs
    box.svc.submit([entered()])
    box.svc.submit([entered(BOB, "v-2")])

    asyncio.run(box.svc._drain())

    assert names(box.out) == ["visit.entered", "offer.issued", "visit.entered",
                              "offer.issued"]  # each offer right after its cause
    issued = [d.data.offer_id for d in box.out if isinstance(d.data, p.OfferIssued)]
    assert [tid for tid, _ in seen] == issued
    assert all(durable for _, durable in seen)  # on disk before on_offer saw it
    assert sum(s.strip().upper() == "COMMIT" for s in statements) == 1  # one fsync
    assert box.svc.snapshot().offers_issued_total == 2
    box.svc.close()


def test_a_failing_ledger_issues_none_of_the_group(tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.know(record(), record(BOB))
    box.campaigns("upsert", WELCOME)
    box.svc.redemption.ledger._db.close()  # every statement now raises sqlite3.Error

    outs = asyncio.run(box.svc.process_group([[entered()], [entered(BOB, "v-2")]], T0))

    assert [names(o) for o in outs] == [["visit.entered"], ["visit.entered"]]
    assert box.tokens == []  # nothing reached the app channel
    assert box.svc.errors_total == 2 and box.svc.snapshot().offers_issued_total == 0
    # the engine does not hold them: the campaign may be offered again
    assert box.svc.engine.held(CUSTOMER, T0) == [] and box.svc.engine.held(BOB, T0) == []
    box.svc.close()


def test_marketing_withdrawn_while_the_group_is_written_is_not_shown(
        tmp_path: Path) -> None:
    box = Box(tmp_path)
    box.know(record(), record(BOB))
    box.campaigns("upsert", WELCOME)
    ledger = box.svc.redemption.ledger
    record_tokens = box.svc.redemption.record_tokens

    def withdraw_then_record(signed: list[object]) -> None:
        record_tokens(signed)  # type: ignore[arg-type]
        box.know(record(BOB, version=2, marketing=False))  # meanwhile, on the loop's side

    box.svc.redemption.record_tokens = withdraw_then_record  # type: ignore[method-assign]
    outs = asyncio.run(box.svc.process_group([[entered()], [entered(BOB, "v-2")]], T0))

    assert [names(o) for o in outs] == [["visit.entered", "offer.issued"],
                                        ["visit.entered"]]
    assert len(box.tokens) == 1
    [bobs] = [o for o in ledger.history(T0 - 1) if o.customer == BOB]
    assert bobs.state == "revoked"
    box.svc.close()


def test_the_ledger_records_a_group_whole_or_not_at_all(tmp_path: Path) -> None:
    ledger = RedemptionStore(tmp_path / "ledger.db", reservation_timeout_s=600)
    a = IssueRow("a" * 32, "welcome", CUSTOMER, int(T0), int(T0) + 3600)
    b = IssueRow("b" * 32, "welcome", BOB, int(T0), int(T0) + 3600)
    assert [o.token_id for o in ledger.issue_many([a, b])] == [a.token_id, b.token_id]
    c = IssueRow("c" * 32, "welcome", CUSTOMER, int(T0), int(T0) + 3600)
    with pytest.raises(sqlite3.IntegrityError):
        ledger.issue_many([c, a])  # a is there already: the whole group refused
    assert ledger.get(c.token_id) is None
    assert ledger.issue_many([]) == []
    ledger.close()
