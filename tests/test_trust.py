"""Signed commands and sealed identities, the pure parts: envelope, topics, seals, bounds."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from storegate.adapters.command_ledger import CommandLedger
from storegate.app.commands import QUEUE_MAX, CommandHandler
from storegate.core import seal
from storegate.core.ble.eid import Identity
from storegate.core.commands import (
    AnswerBudget,
    CommandRejected,
    IdentitiesCommand,
    IdentityChange,
    open_identities,
    validate_payload,
)
from storegate.core.topics import CommandTopic, Topics, parse_command_topic
from storegate.core.trust import Rejected, TrustPolicy, Verified, b64d, b64e, verify
from tests.support.central import Central
from tests.support.outbox import make_outbox
from tests.support.waiting import wait_for

NOW = 1_796_000_000.0
CENTRAL = Central("central-1")
POLICY = TrustPolicy({"central-1": CENTRAL.key.public_key()}, max_age_s=3600,
                     max_future_s=60)
REPLAY = {"gateway": "g1", "from_sequence": 1, "to_sequence": 2}


def check(message: bytes, name: str = "replay", store: str = "s1",
          policy: TrustPolicy = POLICY, now: float = NOW) -> Verified | Rejected:
    return verify(message, name=name, store=store, policy=policy, now=now)


def reason(result: Verified | Rejected) -> str:
    assert isinstance(result, Rejected), result
    return result.reason


def test_a_signed_command_verifies_and_says_what_it_is() -> None:
    ok = check(CENTRAL.sign("replay", REPLAY, issued_at=NOW - 5, command_id="c-1"))
    assert isinstance(ok, Verified)
    assert (ok.command_id, ok.name, ok.store, ok.kid) == ("c-1", "replay", "s1", "central-1")
    assert ok.payload == REPLAY
    every_store = check(CENTRAL.sign("replay", REPLAY, store="*", issued_at=NOW), store="*")
    assert isinstance(every_store, Verified)


def test_forgeries_are_rejected_by_reason_and_never_echo_their_id() -> None:
    stranger = Central("central-1")  # the same key id, another key: an attacker's
    forged = check(stranger.sign("replay", REPLAY, issued_at=NOW, command_id="evil"))
    assert reason(forged) == "bad_signature"
    assert isinstance(forged, Rejected) and forged.command_id is None
    assert reason(check(Central("rogue").sign("replay", REPLAY, issued_at=NOW))) == \
        "unknown_key"
    # the signed bytes changed after signing: a bigger replay range
    env = json.loads(CENTRAL.sign("replay", REPLAY, issued_at=NOW))
    inner = json.loads(b64d(env["signed"]))
    inner["payload"]["to_sequence"] = 10**6
    env["signed"] = b64e(json.dumps(inner).encode())
    assert reason(check(json.dumps(env).encode())) == "bad_signature"
    # no keys configured: nothing is accepted
    assert reason(check(CENTRAL.sign("replay", REPLAY, issued_at=NOW),
                        policy=TrustPolicy({}, 3600, 60))) == "unknown_key"


@pytest.mark.parametrize("message", [
    b"", b"null", b"[]", b"{}", b'{"kid": "central-1"}', b"\xff\xfe",
    b'{"kid": "central-1", "signed": "", "sig": "", "extra": 1}',
    b'{"kid": 1, "signed": "a", "sig": "b"}',
    b'{"kid": "central-1", "signed": "***", "sig": "AAAA"}',
    b'{"kid": "central-1", "signed": "e30", "sig": "' + b"A" * 5000 + b'"}',
    b"[" * 100_000 + b"]" * 100_000,
])
def test_malformed_envelopes_are_rejected_not_raised(message: bytes) -> None:
    assert reason(check(message)) in {"malformed", "bad_signature"}


def test_a_command_cannot_be_moved_to_another_topic_or_store() -> None:
    signed = CENTRAL.sign("replay", REPLAY, store="s1", issued_at=NOW, command_id="c-2")
    moved = check(signed, name="identities")
    assert reason(moved) == "mismatch"
    assert isinstance(moved, Rejected) and moved.command_id == "c-2"  # authentic: named
    assert reason(check(signed, store="s2")) == "mismatch"
    assert reason(check(signed, store="*")) == "mismatch"


def test_the_time_window() -> None:
    assert isinstance(check(CENTRAL.sign("replay", REPLAY, issued_at=NOW - 3599)), Verified)
    assert reason(check(CENTRAL.sign("replay", REPLAY, issued_at=NOW - 3601))) == "expired"
    assert isinstance(check(CENTRAL.sign("replay", REPLAY, issued_at=NOW + 59)), Verified)
    assert reason(check(CENTRAL.sign("replay", REPLAY, issued_at=NOW + 61))) == \
        "not_yet_valid"
    for garbage in (float("nan"), 1e300, -1.0):
        env = json.loads(CENTRAL.sign("replay", REPLAY, issued_at=NOW))
        inner = json.loads(b64d(env["signed"]))
        inner["issued_at"] = garbage
        signed = json.dumps(inner).encode()
        message = json.dumps({"kid": "central-1", "signed": b64e(signed),
                              "sig": b64e(CENTRAL.key.sign(signed))}).encode()
        assert reason(check(message)) == "malformed", garbage


@pytest.mark.parametrize(("topic", "expected"), [
    ("storegate/v1/s1/commands/identities", CommandTopic("identities", "s1")),
    ("storegate/v1/central/replay", CommandTopic("replay", "*")),
    # what the old "last level" reading obeyed
    ("storegate/v1/s1/commands/events/identities", None),
    ("storegate/v1/s1/g1/events/identities", None),
    ("storegate/v1/s2/commands/identities", None),
    ("storegate/v1/s1/commands/identities/", None),
    ("storegate/v1/s1/commands/", None),
    ("storegate/v1/central/x/identities", None),
    ("storegate/v2/s1/commands/identities", None),
    ("/storegate/v1/s1/commands/identities", None),
    ("storegate/v1/s1/commands/+", None),
])
def test_command_topics_are_parsed_exactly(topic: str, expected: CommandTopic | None) -> None:
    assert parse_command_topic(topic, "s1") == expected


def test_reserved_ids_cannot_name_a_store_or_gateway() -> None:
    for gateway in ("commands", "scanners", "central"):
        with pytest.raises(ValueError, match="reserved"):
            Topics("s1", gateway)
    with pytest.raises(ValueError, match="reserved"):
        Topics("central", "g1")


def ident(n: int, now: float = NOW) -> Identity:
    return Identity(f"cust-{n}", bytes([n]) * 16, 10, 1000 + n, now - 86400)


def sealed_command(identities: list[Identity], gateways: dict[str, X25519PrivateKey],
                   op: str = "upsert") -> IdentitiesCommand:
    body = Central.identities_payload(
        op, identities, gateways={g: seal.public_text(k.public_key())
                                  for g, k in gateways.items()})
    cmd = validate_payload("identities", body, now=NOW)
    assert isinstance(cmd, IdentitiesCommand)
    return cmd


def test_identity_keys_travel_sealed_and_open_only_for_their_gateway() -> None:
    g1, g2, other = (X25519PrivateKey.generate() for _ in range(3))
    people = [ident(n) for n in range(1, 4)]
    cmd = sealed_command(people, {"g1": g1, "g2": g2})
    wire = cmd.model_dump_json().encode()
    for i in people:  # ciphertext only, in any encoding
        for form in (i.identity_key, i.identity_key.hex().encode(),
                     base64.b64encode(i.identity_key)):
            assert form not in wire
    for gw, key in (("g1", g1), ("g2", g2)):
        opened = open_identities(cmd, key=key, store="s1", gateway=gw)
        assert isinstance(opened, IdentityChange) and list(opened.identities) == people
    wrong_key = open_identities(cmd, key=other, store="s1", gateway="g1")
    assert isinstance(wrong_key, CommandRejected) and wrong_key.reason == "unsealable"
    not_ours = open_identities(cmd, key=other, store="s1", gateway="g3")
    assert isinstance(not_ours, CommandRejected)
    assert not_ours.reason == "not_sealed_for_this_gateway"
    other_store = open_identities(cmd, key=g1, store="s2", gateway="g1")
    assert isinstance(other_store, CommandRejected) and other_store.reason == "unsealable"


def test_a_sealed_key_cannot_be_moved_to_another_customer_or_retimed() -> None:
    g1 = X25519PrivateKey.generate()
    cmd = sealed_command([ident(1), ident(2)], {"g1": g1})
    a, b = cmd.identities
    swapped = cmd.model_copy(update={"identities": [
        a.model_copy(update={"sealed_key": b.sealed_key}), b]})
    r = open_identities(swapped, key=g1, store="s1", gateway="g1")
    assert isinstance(r, CommandRejected) and r.reason == "unsealable"
    assert "identities.0" in r.detail
    retimed = cmd.model_copy(update={"identities": [
        a.model_copy(update={"rotation_exponent": 0}), b]})
    r = open_identities(retimed, key=g1, store="s1", gateway="g1")
    assert isinstance(r, CommandRejected) and r.reason == "unsealable"


def test_seal_key_text_round_trips_and_rejects_garbage() -> None:
    k = X25519PrivateKey.generate().public_key()
    assert seal.public_text(seal.load_public(seal.public_text(k))) == seal.public_text(k)
    for bad in ("", "AAAA", "not base64!", b64e(os.urandom(31))):
        with pytest.raises(ValueError):
            seal.load_public(bad)


def test_rejection_answers_are_rate_limited_but_counted() -> None:
    budget = AnswerBudget(burst=3, per_s=1.0, unauthenticated_per_s=0.1)
    answered = [budget.take("expired", 100.0) for _ in range(10)]
    assert answered[:3] == [0, 0, 0] and answered[3:] == [None] * 7
    assert budget.take("duplicate", 100.0) == 0  # per reason
    assert budget.take("expired", 101.5) == 7  # the next answer says how many
    assert budget.take("expired", 101.5) is None
    # what anyone can cause without a key is answered more sparingly
    assert [budget.take("bad_signature", 200.0) for _ in range(4)] == [0, 0, 0, None]
    assert budget.take("bad_signature", 201.5) is None  # 1.5 s: no new token yet
    assert budget.take("bad_signature", 211.0) == 2


def test_the_command_queue_is_bounded_and_overflow_is_answered(tmp_path: Path) -> None:
    outbox = make_outbox(tmp_path / "outbox.db")
    outbox.open()
    ledger = CommandLedger(tmp_path / "commands.db", keep_s=3660)
    handler = CommandHandler(
        store_id="s1", gateway_id="g1", policy=POLICY, max_bytes=4096, outbox=outbox,
        submit=outbox.submit, ledger=ledger, seal_key=X25519PrivateKey.generate(),
        resend=lambda s: None, identities=lambda c, done: None, wall_clock=lambda: NOW)
    try:  # not started: nothing drains the queue
        handler("storegate/v1/s1/commands/replay", b"x" * 4097)
        for _ in range(QUEUE_MAX + 3):
            handler("storegate/v1/s1/commands/replay", b"{}")
        assert handler.rejected_by_reason == {"too_large": 1, "overloaded": 3}
        wait_for(lambda: outbox.depth == 4, 10, "each answered (within the burst)")
    finally:
        outbox.close()
        ledger.close()


def test_a_command_id_is_accepted_once_even_after_a_restart(tmp_path: Path) -> None:
    ledger = CommandLedger(tmp_path / "commands.db", keep_s=100)
    assert not ledger.seen("c-1")
    ledger.record("c-1", NOW)
    assert ledger.seen("c-1")
    ledger.close()
    ledger = CommandLedger(tmp_path / "commands.db", keep_s=100)
    assert ledger.seen("c-1") and ledger.newest == NOW


class ReplayOnlyOutbox:
    """A replay only needs requeue: everything asked for is still held."""

    def requeue(self, first: int, last: int, done: Callable[..., None]) -> None:
        done(list(range(first, last + 1)), [])


class Handler:
    """A command handler as the gateway wires it, its answers and hand-overs recorded."""

    def __init__(self, tmp_path: Path, clock: list[float]) -> None:
        self.answers: list[dict[str, object]] = []
        self.changes: list[tuple[IdentityChange, Callable[[bool], None]]] = []
        self.ledger = CommandLedger(tmp_path / "commands.db", keep_s=3660)
        self.replays: list[list[int]] = []

        self.handler = CommandHandler(
            store_id="s1", gateway_id="g1", policy=POLICY, max_bytes=1 << 20,
            outbox=ReplayOnlyOutbox(),  # type: ignore[arg-type]
            submit=lambda drafts: self.answers.extend(d.data.model_dump() for d in drafts),
            ledger=self.ledger, seal_key=X25519PrivateKey.generate(),
            resend=self.replays.append,
            identities=lambda c, done: self.changes.append((c, done)),
            wall_clock=lambda: clock[0])

    def send(self, message: bytes, name: str = "replay") -> None:
        self.handler.handle(f"storegate/v1/s1/commands/{name}", message)


def test_a_captured_command_stays_refused_when_the_box_clock_goes_back(
        tmp_path: Path) -> None:
    clock = [NOW]
    h = Handler(tmp_path, clock)
    captured = CENTRAL.sign("replay", REPLAY, issued_at=NOW, command_id="c-old")
    h.send(captured)
    assert h.handler.accepted_total == 1
    # two days on, central keeps commanding; the ledger forgets c-old (central's clock)
    clock[0] = NOW + 2 * 86400
    for i in range(300):
        h.send(CENTRAL.sign("replay", REPLAY, issued_at=clock[0], command_id=f"c-{i}"))
    h.ledger.prune()
    assert not h.ledger.seen("c-old")
    # the box's clock is set back (no RTC, spoofed NTP): the captured bytes look fresh
    clock[0] = NOW + 60
    h.send(captured)
    assert h.handler.accepted_total == 301
    assert h.handler.rejected_by_reason == {"expired": 1}


def test_an_identities_command_is_recorded_only_once_applied(tmp_path: Path) -> None:
    h = Handler(tmp_path, [NOW])
    gw_key = X25519PrivateKey.generate()
    h.handler._seal_key = gw_key
    withdraw = CENTRAL.sign("identities", {"op": "remove", "customers": ["cust-1"]},
                            issued_at=NOW, command_id="w-1")
    h.send(withdraw, "identities")
    h.send(withdraw, "identities")  # while the first is being applied: a duplicate
    assert len(h.changes) == 1
    change, done = h.changes[0]
    assert change.customers == ("cust-1",)
    done(False)  # e.g. the gateway was stopping: it did not take effect
    assert not h.ledger.seen("w-1")
    h.send(withdraw, "identities")  # central's resend, same bytes: applied this time
    assert len(h.changes) == 2
    h.changes[1][1](True)
    assert h.ledger.seen("w-1")
    h.send(withdraw, "identities")
    assert h.handler.rejected_by_reason == {"duplicate": 2}


def test_bulk_mode_starts_only_for_what_central_signed() -> None:
    calls: list[str] = []
    big = {"gateway": "g1", "from_sequence": 1, "to_sequence": 2, "request_id": "x" * 100}
    forged = Central("central-1").sign("replay", big, issued_at=NOW)
    assert reason(verify(forged, name="replay", store="s1", policy=POLICY, now=NOW,
                         authentic=lambda: calls.append("forged"))) == "bad_signature"
    genuine = CENTRAL.sign("replay", big, issued_at=NOW)
    assert isinstance(verify(genuine, name="replay", store="s1", policy=POLICY, now=NOW,
                             authentic=lambda: calls.append("genuine")), Verified)
    assert calls == ["genuine"]
