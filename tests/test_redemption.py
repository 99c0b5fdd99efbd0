"""The redemption ledger (real SQLite files), the service over event drafts, the offer
key and the QR codes (decoded back with a real QR reader)."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from storegate.adapters import gateway_key, qr
from storegate.adapters.redemption_sqlite import RedemptionStore, Unlisted
from storegate.app.redemption import RedemptionService
from storegate.config import parse
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.personal import tokens as t
from storegate.core.trust import public_key_text
from storegate.errors import ConfigError

STORE = "store-0042"
T0 = 1_796_000_000.0
TIMEOUT = 600.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox.redemption.db"


@pytest.fixture
def ledger(db: Path) -> RedemptionStore:
    s = RedemptionStore(db, reservation_timeout_s=TIMEOUT)
    yield s  # type: ignore[misc]
    s.close()


def issue(ledger: RedemptionStore, tid: str = "a" * 32, customer: str = "cust-1",
          campaign: str = "spring") -> str:
    ledger.issue(tid, campaign=campaign, customer=customer, issued_at=int(T0),
                 expires_at=int(T0) + 86400)
    return tid


# --- the ledger -----------------------------------------------------------------------


def test_file_is_private_wal_and_full(db: Path, ledger: RedemptionStore) -> None:
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_reserve_confirm(ledger: RedemptionStore) -> None:
    tid = issue(ledger)
    r = ledger.reserve(tid, "lane-1", "tx-1", T0 + 5)
    assert r.outcome == "reserved" and r.offer is not None and r.offer.state == "reserved"
    assert ledger.reserve(tid, "lane-1", "tx-1", T0 + 6).outcome == "again"
    assert ledger.reserve(tid, "lane-2", "tx-2", T0 + 7).outcome == "reserved_elsewhere"
    done = ledger.confirm("tx-1", T0 + 30, receipt="R-17")
    assert [(o.token_id, o.state, o.receipt, o.lane) for o in done] == [
        (tid, "redeemed", "R-17", "lane-1")]
    assert ledger.confirm("tx-1", T0 + 31) == []  # idempotent: nothing twice
    assert ledger.reserve(tid, "lane-2", "tx-3", T0 + 40).outcome == "redeemed"
    got = ledger.get(tid)
    assert got is not None and got.state == "redeemed" and got.redeemed_at == T0 + 30


def test_release_by_transaction_and_by_token(ledger: RedemptionStore) -> None:
    a, b = issue(ledger, "a" * 32), issue(ledger, "b" * 32)
    ledger.reserve(a, "lane-1", "tx-1", T0)
    ledger.reserve(b, "lane-1", "tx-1", T0)
    gone = ledger.release(transaction_id="tx-1")
    assert sorted(o.token_id for o in gone) == [a, b]
    assert all(o.transaction_id == "tx-1" for o in gone)  # as they were
    assert {ledger.get(x).state for x in (a, b)} == {"issued"}  # type: ignore[union-attr]
    assert ledger.confirm("tx-1", T0 + 1) == []  # nothing left to confirm
    assert ledger.reserve(a, "lane-2", "tx-2", T0 + 2).outcome == "reserved"  # usable again
    assert [o.token_id for o in ledger.release(token_id=a)] == [a]
    with pytest.raises(ValueError, match="one of them"):
        ledger.release()


def test_timeouts_release_only_old_reservations(ledger: RedemptionStore) -> None:
    a, b = issue(ledger, "a" * 32), issue(ledger, "b" * 32)
    ledger.reserve(a, "lane-1", "tx-1", T0)
    ledger.reserve(b, "lane-2", "tx-2", T0 + 100)
    assert ledger.timeouts(T0 + TIMEOUT - 1) == []
    assert [o.token_id for o in ledger.timeouts(T0 + TIMEOUT)] == [a]
    assert ledger.get(a).state == "issued"  # type: ignore[union-attr]
    assert ledger.get(b).state == "reserved"  # type: ignore[union-attr]


def test_expiry(ledger: RedemptionStore) -> None:
    a = issue(ledger)
    assert ledger.expire(T0 + 86399) == 0
    assert ledger.held("cust-1", T0 + 86399)[0].token_id == a
    assert ledger.held("cust-1", T0 + 86400) == []  # unexpired only
    assert ledger.expire(T0 + 86400) == 1
    assert ledger.reserve(a, "lane-1", "tx", T0 + 86401).outcome == "expired"


def test_revoke_customer(ledger: RedemptionStore) -> None:
    a = issue(ledger, "a" * 32)
    b = issue(ledger, "b" * 32)
    c = issue(ledger, "c" * 32)
    other = issue(ledger, "d" * 32, customer="cust-2")
    ledger.reserve(b, "lane-1", "tx-b", T0)
    ledger.reserve(c, "lane-1", "tx-c", T0)
    ledger.confirm("tx-c", T0 + 1)
    revoked = ledger.revoke_customer("cust-1")
    assert sorted(o.token_id for o in revoked) == [a, b]  # the redeemed one is history
    assert ledger.reserve(a, "lane-1", "tx", T0 + 2).outcome == "revoked"
    assert ledger.confirm("tx-b", T0 + 3) == []  # a reservation in progress is void too
    assert ledger.held("cust-1", T0) == []
    assert [o.token_id for o in ledger.held("cust-2", T0)] == [other]


def test_held_and_history(ledger: RedemptionStore) -> None:
    a = issue(ledger, "a" * 32, campaign="c1")
    b = issue(ledger, "b" * 32, campaign="c2")
    ledger.reserve(b, "lane-1", "tx", T0)
    assert {o.campaign for o in ledger.held("cust-1", T0)} == {"c1", "c2"}
    ledger.confirm("tx", T0)
    assert [o.token_id for o in ledger.held("cust-1", T0)] == [a]
    # a token of another gateway has no customer and is not this gateway's history
    ledger.reserve("e" * 32, "lane-1", "tx-e", T0,
                   unlisted=Unlisted("ref:00", int(T0) - 5, int(T0) + 60))
    assert [o.token_id for o in ledger.history(T0 - 10)] == [a, b]
    assert ledger.history(T0 + 1) == []
    # issued before the window but still held (unexpired, unredeemed): still history,
    # or a restart would issue the same campaign again; redeemed or expired ones are not
    assert [o.token_id for o in ledger.history(T0 + 1, now=T0 + 3600)] == [a]
    assert ledger.history(T0 + 1, now=T0 + 86400) == []


def test_unlisted_tokens(ledger: RedemptionStore) -> None:
    assert ledger.reserve("f" * 32, "lane-1", "tx", T0).outcome == "unknown"
    u = Unlisted("ref:0011", int(T0), int(T0) + 60)
    r = ledger.reserve("f" * 32, "lane-1", "tx", T0, unlisted=u)
    assert r.outcome == "reserved" and r.offer is not None
    assert (r.offer.customer, r.offer.campaign, r.offer.issued_here) == (None, "ref:0011", False)
    assert ledger.reserve("f" * 32, "lane-2", "tx2", T0, unlisted=u).outcome == (
        "reserved_elsewhere")
    ledger.confirm("tx", T0 + 1)
    assert ledger.reserve("f" * 32, "lane-2", "tx3", T0, unlisted=u).outcome == "redeemed"


def test_pseudonymise_leaves_no_copy_in_the_files(db: Path, ledger: RedemptionStore) -> None:
    secret = "cust-erase-me-7f3a9c"
    for i in range(20):
        issue(ledger, f"{i:032x}", customer=secret)
    ledger.reserve(f"{3:032x}", "lane-1", "tx", T0)
    ledger.confirm("tx", T0 + 1)
    assert any(secret.encode() in f.read_bytes() for f in db.parent.iterdir())  # it was there
    assert ledger.pseudonymise(secret, lambda c: "erased:" + "0" * 16) == 20
    assert ledger.held(secret, T0) == []
    assert len(ledger.history(0)) == 20  # the history stays, under the keyed hash
    ledger.close()
    for f in db.parent.iterdir():
        assert secret.encode() not in f.read_bytes(), f


def test_two_connections_racing_for_one_token_exactly_one_wins(db: Path) -> None:
    rounds = 150
    setup = RedemptionStore(db, reservation_timeout_s=TIMEOUT)
    for i in range(rounds):
        issue(setup, f"{i:032x}")
    setup.close()
    stores = [RedemptionStore(db, reservation_timeout_s=TIMEOUT) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes: list[list[str]] = [[], []]

    def lane(n: int) -> None:
        for i in range(rounds):
            barrier.wait()
            r = stores[n].reserve(f"{i:032x}", f"lane-{n}", f"tx-{n}-{i}", T0)
            outcomes[n].append(r.outcome)

    threads = [threading.Thread(target=lane, args=(n,)) for n in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    for s in stores:
        s.close()
    assert len(outcomes[0]) == len(outcomes[1]) == rounds
    for i, pair in enumerate(zip(*outcomes, strict=True)):
        assert sorted(pair) == ["reserved", "reserved_elsewhere"], (i, pair)
    check = RedemptionStore(db, reservation_timeout_s=TIMEOUT)
    assert all(check.get(f"{i:032x}").state == "reserved"  # type: ignore[union-attr]
               for i in range(rounds))
    check.close()


# --- the service over drafts ----------------------------------------------------------


class World:
    def __init__(self, db: Path) -> None:
        self.ledger = RedemptionStore(db, reservation_timeout_s=TIMEOUT)
        self.key = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
        self.signer = t.TokenSigner(self.key, STORE)
        self.other = Ed25519PrivateKey.from_private_bytes(b"\x08" * 32)
        self.lane_customers: dict[str, str] = {}
        self.reserved_calls: list[tuple[str, str, str | None]] = []
        counter = iter(range(1, 10**6))
        self.svc = RedemptionService(
            self.ledger, self.signer, store=STORE, offer_ttl_s=86400,
            trusted={t.key_id(self.other.public_key()): self.other.public_key()},
            rand=lambda n: next(counter).to_bytes(n, "big"),
            lane_customer=self.lane_customers.get,
            on_reserved=lambda *a: self.reserved_calls.append(a),
            campaign_of_ref={t.offer_ref("spring"): "spring"}.get)


def scan(value: str | None, lane: str = "lane-1", tx: str = "tx-1", at: float = T0 + 10) -> (
    ev.EventDraft
):
    return ev.EventDraft(ev.POS_SCANNED, f"lane/{lane}", at, p.PosScanned(
        lane=lane, kind="offer", value=value, scanned_at=ev.rfc3339(at), transaction_id=tx))


def completed(tx: str = "tx-1", lane: str = "lane-1", at: float = T0 + 60) -> ev.EventDraft:
    return ev.EventDraft(ev.PURCHASE_COMPLETED, f"lane/{lane}", at, p.PurchaseCompleted(
        receipt="R-1", lane=lane, transaction_id=tx, items=[], total_minor=100,
        currency="RUB", completed_at=ev.rfc3339(at)))


def voided(tx: str = "tx-1", lane: str = "lane-1", at: float = T0 + 60) -> ev.EventDraft:
    return ev.EventDraft(ev.PURCHASE_VOIDED, f"lane/{lane}", at, p.PurchaseVoided(
        receipt=None, lane=lane, voided_at=ev.rfc3339(at), transaction_id=tx))


def types(drafts: list[ev.EventDraft]) -> list[str]:
    return [d.type.name.split(".")[1] + "." + d.type.name.split(".")[2] for d in drafts]


def test_scan_reserve_receipt_redeem(db: Path) -> None:
    w = World(db)
    issued = w.svc.issue_token("cust-1", "spring", T0)
    assert issued.token_id == (1).to_bytes(16, "big").hex()
    assert issued.expires_at == int(T0) + 86400
    assert [o.campaign for o in w.ledger.held("cust-1", T0)] == ["spring"]

    out = w.svc.process([scan(issued.text)], T0 + 10)
    assert types(out) == ["pos.scanned", "offer.reserved"]
    r = out[1].data
    assert isinstance(r, p.OfferReserved)
    assert (r.offer_id, r.campaign, r.customer, r.lane, r.transaction_id) == (
        issued.token_id, "spring", "cust-1", "lane-1", "tx-1")
    assert w.reserved_calls == [("tx-1", "lane-1", "cust-1")]

    # scanned twice in the same transaction: nothing new
    assert types(w.svc.process([scan(issued.text)], T0 + 11)) == ["pos.scanned"]
    # another lane at the same time: refused
    out = w.svc.process([scan(issued.text, lane="lane-2", tx="tx-2")], T0 + 12)
    assert isinstance(out[1].data, p.OfferRejected)
    assert out[1].data.reason == "reserved_elsewhere"
    assert out[1].data.token_id == issued.token_id

    out = w.svc.process([completed()], T0 + 60)
    assert types(out) == ["purchase.completed", "offer.redeemed"]
    d = out[1].data
    assert isinstance(d, p.OfferRedeemed)
    assert (d.offer_id, d.customer, d.receipt, d.transaction_id) == (
        issued.token_id, "cust-1", "R-1", "tx-1")
    assert out[1].type.priority is ev.Priority.CRITICAL

    # replayed after redemption
    out = w.svc.process([scan(issued.text, tx="tx-3", at=T0 + 100)], T0 + 100)
    assert out[1].data.reason == "redeemed"  # type: ignore[union-attr]
    assert w.svc.redeemed_total == 1 and w.svc.reserved_total == 1


def test_void_and_timeout_release(db: Path) -> None:
    w = World(db)
    a = w.svc.issue_token("cust-1", "spring", T0)
    b = w.svc.issue_token("cust-1", "summer", T0)
    w.svc.process([scan(a.text, tx="tx-a"), scan(b.text, lane="lane-2", tx="tx-b")], T0 + 10)
    out = w.svc.process([voided(tx="tx-a")], T0 + 20)
    assert types(out) == ["purchase.voided", "offer.released"]
    rel = out[1].data
    assert isinstance(rel, p.OfferReleased)
    assert (rel.offer_id, rel.reason, rel.lane, rel.transaction_id) == (
        a.token_id, "voided", "lane-1", "tx-a")
    assert w.svc.tick(T0 + 10 + TIMEOUT - 1) == []
    out = w.svc.tick(T0 + 10 + TIMEOUT)
    assert [(d.data.offer_id, d.data.reason) for d in out] == [  # type: ignore[union-attr]
        (b.token_id, "timeout")]
    # both redeemable again
    out = w.svc.process([scan(a.text, tx="tx-c", at=T0 + 700), scan(b.text, tx="tx-c",
                                                                     at=T0 + 700)], T0 + 700)
    assert types(out).count("offer.reserved") == 2


def test_rejections_with_reasons(db: Path) -> None:
    w = World(db)
    good = w.svc.issue_token("cust-1", "spring", T0)
    forged = t.TokenSigner(Ed25519PrivateKey.from_private_bytes(b"\x09" * 32), STORE).sign(
        token_id=b"f" * 16, offer="spring", customer="cust-1", issued_at=int(T0),
        expires_at=int(T0) + 60)
    elsewhere = t.TokenSigner(w.key, "store-9").sign(
        token_id=b"g" * 16, offer="spring", customer="cust-1", issued_at=int(T0),
        expires_at=int(T0) + 60)
    altered = good.text[:-10] + ("A" if good.text[-10] != "A" else "B") + good.text[-9:]
    w.lane_customers["lane-3"] = "cust-2"
    cases = [
        (scan("SGO1.nonsense"), "malformed", None),
        (scan(None), "malformed", None),
        (scan(forged), "unknown_key", (b"f" * 16).hex()),
        (scan(altered), "bad_signature", good.token_id),
        (scan(elsewhere), "wrong_store", (b"g" * 16).hex()),
        (scan(good.text, at=T0 + 86400), "expired", good.token_id),
        (scan(good.text, at=T0 - 3600), "not_yet_valid", good.token_id),
        (scan(good.text, lane="lane-3"), "customer_mismatch", good.token_id),
    ]
    for draft, why, tid in cases:
        out = w.svc.process([draft], draft.time)
        assert len(out) == 2 and isinstance(out[1].data, p.OfferRejected), why
        assert (out[1].data.reason, out[1].data.token_id) == (why, tid)
        assert out[1].data.lane == draft.data.lane  # type: ignore[attr-defined]
    w.ledger.revoke_customer("cust-1")
    out = w.svc.process([scan(good.text)], T0 + 10)
    assert out[1].data.reason == "revoked"  # type: ignore[union-attr]
    assert w.svc.rejected["malformed"] == 2 and w.svc.rejected["revoked"] == 1
    assert w.reserved_calls == []


def test_the_right_customer_at_the_lane_is_accepted(db: Path) -> None:
    w = World(db)
    good = w.svc.issue_token("cust-1", "spring", T0)
    w.lane_customers["lane-1"] = "cust-1"
    assert types(w.svc.process([scan(good.text)], T0 + 10))[1] == "offer.reserved"


def test_a_token_of_another_gateway_of_the_store_is_single_use_here(db: Path) -> None:
    w = World(db)
    theirs = t.TokenSigner(w.other, STORE).sign(
        token_id=b"h" * 16, offer="spring", customer="cust-5", issued_at=int(T0),
        expires_at=int(T0) + 600)
    out = w.svc.process([scan(theirs)], T0 + 10)
    r = out[1].data
    assert isinstance(r, p.OfferReserved)
    assert (r.campaign, r.customer) == ("spring", None)  # named through campaign_of_ref
    w.svc.process([completed()], T0 + 20)
    out = w.svc.process([scan(theirs, tx="tx-9")], T0 + 30)
    assert out[1].data.reason == "redeemed"  # type: ignore[union-attr]
    unnamed = t.TokenSigner(w.other, STORE).sign(
        token_id=b"i" * 16, offer="autumn", customer="cust-5", issued_at=int(T0),
        expires_at=int(T0) + 600)
    out = w.svc.process([scan(unnamed, tx="tx-10")], T0 + 40)
    assert out[1].data.campaign == "ref:" + t.offer_ref("autumn").hex()  # type: ignore[union-attr]


def test_other_drafts_pass_through_in_order_and_async_matches(db: Path) -> None:
    w = World(db)
    a = w.svc.issue_token("cust-1", "spring", T0)
    loyalty = ev.EventDraft(ev.POS_SCANNED, "lane/lane-1", T0 + 5, p.PosScanned(
        lane="lane-1", kind="loyalty", value="ps1:" + "0" * 32, scanned_at=ev.rfc3339(T0 + 5),
        transaction_id="tx-1"))
    drafts = [loyalty, scan(a.text), completed(tx="tx-other"), completed()]

    async def run() -> list[ev.EventDraft]:
        assert await w.svc.process_async([loyalty], T0) == [loyalty]
        return await w.svc.process_async(drafts, T0 + 60)

    out = asyncio.run(run())
    assert types(out) == ["pos.scanned", "pos.scanned", "offer.reserved",
                          "purchase.completed", "purchase.completed", "offer.redeemed"]
    assert out[0] is loyalty
    assert w.reserved_calls == [("tx-1", "lane-1", "cust-1")]


def test_a_broken_ledger_is_counted_not_raised(db: Path) -> None:
    w = World(db)
    a = w.svc.issue_token("cust-1", "spring", T0)
    w.ledger._db.execute("DROP TABLE offers")  # a ledger that fails every statement
    out = w.svc.process([scan(a.text)], T0 + 10)
    assert types(out) == ["pos.scanned"]
    assert w.svc.tick(T0 + 1000) == []
    assert w.svc.ledger_errors_total == 2


# --- the gateway's offer key and config ---------------------------------------------


def test_offer_key_is_made_once_private_and_published(tmp_path: Path) -> None:
    path = tmp_path / "outbox.offer.key"
    key = gateway_key.load_or_create_offer_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = gateway_key.load_or_create_offer_key(path)
    assert public_key_text(again.public_key()) == public_key_text(key.public_key())
    status = p.GatewayStatus(state="online", session=1, version="x", started_at="t",
                             reason="started", offer_key=p.OfferKey(
                                 kid=t.key_id(key.public_key()),
                                 public_key=public_key_text(key.public_key())))
    assert status.offer_key is not None and len(status.offer_key.kid) == 8
    # the sealing key's file is not an offer key: refused, never overwritten
    seal = tmp_path / "outbox.seal.key"
    gateway_key.load_or_create(seal)
    before = seal.read_bytes()
    with pytest.raises(ConfigError, match="not an Ed25519"):
        gateway_key.load_or_create_offer_key(seal)
    assert seal.read_bytes() == before


def test_redemption_config(tmp_path: Path) -> None:
    other = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32).public_key()
    kid, pub = t.key_id(other), public_key_text(other)
    base = 'store_id = "s1"\ngateway_id = "g1"\n[storage]\npath = "outbox.db"\n'
    cfg = parse(base, source="x", base=tmp_path, environ={})
    assert cfg.redemption.reservation_timeout_s == 600
    assert cfg.redemption.offer_ttl_s == 7 * 86400
    assert cfg.offer_key_path == tmp_path / "outbox.offer.key"
    assert cfg.redemption_path == tmp_path / "outbox.redemption.db"
    cfg = parse(base + f'[[redemption.trusted_token_keys]]\nkid = "{kid}"\n'
                f'public_key = "{pub}"\n', source="x", base=tmp_path, environ={})
    assert cfg.redemption.trusted_token_keys[0].kid == kid
    with pytest.raises(ConfigError, match="not this public key's id"):
        parse(base + f'[[redemption.trusted_token_keys]]\nkid = "00000000"\n'
              f'public_key = "{pub}"\n', source="x", base=tmp_path, environ={})


# --- QR codes -------------------------------------------------------------------------


def test_qr_png_and_svg_are_well_formed_and_decode_to_the_token(db: Path) -> None:
    from PIL import Image

    zxingcpp = pytest.importorskip("zxingcpp")
    w = World(db)
    text = w.svc.issue_token("cust-1", "spring", T0).text
    symbol = qr.code(text)
    assert symbol.version == 8 and symbol.error_correction == qr.ERROR_CORRECTION
    assert len(symbol.data_list) == 1 and symbol.data_list[0].data == text.encode()
    assert len(symbol.get_matrix()) == 49 + 2 * qr.BORDER_MODULES

    data = qr.png(text)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(data))
    img.verify()
    img = Image.open(io.BytesIO(data))
    assert img.size == ((49 + 8) * qr.DEFAULT_MODULE_PX,) * 2
    found = zxingcpp.read_barcodes(img)
    assert [r.text for r in found] == [text]
    assert found[0].format == zxingcpp.BarcodeFormat.QRCode
    assert isinstance(t.verify_token(found[0].text, keys={w.signer.kid: w.signer.public_key},
                                     store=STORE, now=T0 + 1), t.VerifiedToken)

    svg = qr.svg(text)
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag.endswith("svg") and root.get("viewBox") == "0 0 57 57"
    assert len(root.findall(".//{http://www.w3.org/2000/svg}path")) == 1


def test_os_urandom_is_the_default_entropy(db: Path) -> None:
    ledger = RedemptionStore(db, reservation_timeout_s=TIMEOUT)
    svc = RedemptionService(ledger, t.TokenSigner(Ed25519PrivateKey.generate(), STORE),
                            store=STORE, offer_ttl_s=60)
    assert svc.rand is os.urandom
    a, b = svc.issue_token("c", "x", T0), svc.issue_token("c", "x", T0)
    assert a.token_id != b.token_id


# --- a restart mid-transaction, and tokens left off the receipt (review 11, item 10) -----


def listing(tokens: list[str], tx: str, lane: str = "lane-1", at: float = T0 + 60) -> (
    ev.EventDraft
):
    """A purchase whose lane listed the offer tokens scanned in its transaction."""
    d = completed(tx=tx, lane=lane, at=at)
    assert isinstance(d.data, p.PurchaseCompleted)
    return ev.EventDraft(d.type, d.subject, d.time,
                         d.data.model_copy(update={"offer_tokens": tokens}))


def test_a_reservation_from_before_a_restart_is_redeemed_by_the_receipt_listing_it(
        db: Path) -> None:
    before = World(db)
    a = before.svc.issue_token("cust-1", "spring", T0)
    b = before.svc.issue_token("cust-2", "spring", T0)
    c = before.svc.issue_token("cust-3", "spring", T0)
    before.svc.process([scan(a.text, tx="tx-old"), scan(b.text, tx="tx-old"),
                        scan(c.text, lane="lane-2", tx="tx-other")], T0 + 10)
    before.ledger.close()
    # the gateway restarts: the lane's transaction gets a new id, the reservations stay
    after = World(db)
    after.svc.started_at = T0 + 20
    after.svc.rand = lambda n: b"\xee" * n  # its own token ids
    late = after.svc.issue_token("cust-4", "spring", T0 + 30)
    after.svc.process([scan(late.text, tx="tx-late", at=T0 + 30)], T0 + 30)  # since start

    out = after.svc.process([listing([a.text, c.text, late.text], tx="tx-new")], T0 + 60)

    # a: this lane's, before the start, listed → redeemed on the new transaction;
    # b: not listed; c: another lane's; late: reserved since the start → all as they were
    assert types(out) == ["purchase.completed", "offer.redeemed"]
    r = out[1].data
    assert isinstance(r, p.OfferRedeemed)
    assert (r.offer_id, r.transaction_id, r.customer) == (a.token_id, "tx-new", "cust-1")
    states = {x.token_id: after.ledger.get(x.token_id).state  # type: ignore[union-attr]
              for x in (a, b, c, late)}
    assert states == {a.token_id: "redeemed", b.token_id: "reserved",
                      c.token_id: "reserved", late.token_id: "reserved"}
    # without a start time nothing is looked for
    after.svc.started_at = None
    out = after.svc.process([listing([b.text], tx="tx-newer")], T0 + 70)
    assert types(out) == ["purchase.completed"]


def test_a_reserved_token_the_receipt_does_not_list_is_released(db: Path) -> None:
    w = World(db)
    a = w.svc.issue_token("cust-1", "spring", T0)
    b = w.svc.issue_token("cust-1", "summer", T0)
    w.svc.process([scan(a.text), scan(b.text)], T0 + 10)

    out = w.svc.process([listing([a.text, "SGO1.not-a-token"], tx="tx-1")], T0 + 60)

    assert types(out) == ["purchase.completed", "offer.released", "offer.redeemed"]
    rel, red = out[1].data, out[2].data
    assert isinstance(rel, p.OfferReleased) and isinstance(red, p.OfferRedeemed)
    assert (rel.offer_id, rel.reason) == (b.token_id, "not_on_receipt")
    assert red.offer_id == a.token_id
    assert w.ledger.get(b.token_id).state == "issued"  # type: ignore[union-attr]
    # an expired token still names its reservation on the receipt
    c = w.svc.issue_token("cust-1", "autumn", T0, expires_at=T0 + 100)
    w.svc.process([scan(c.text, tx="tx-2", at=T0 + 90)], T0 + 90)
    out = w.svc.process([listing([c.text], tx="tx-2", at=T0 + 200)], T0 + 200)
    assert types(out) == ["purchase.completed", "offer.redeemed"]
