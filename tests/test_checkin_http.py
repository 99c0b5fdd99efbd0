"""POST /app/checkin over the real app (in process): a real registry with consents, the
real presence pipeline, real poster keys; the injected clock drives both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from storegate.app.checkin import CheckinService, load_poster_key, poster_key_path
from storegate.app.status import GatewayStatusView
from storegate.config import Config
from storegate.core import events as ev
from storegate.core.ble.eid import EidResolver
from storegate.core.personal.registry import CustomerRecord, CustomersChange, Registry
from storegate.core.presence.pipeline import PresencePipeline
from storegate.core.presence.posters import PosterSigner
from storegate.core.presence.settings import PresenceSettings, Zone
from storegate.core.trust import public_key_text
from tests.support.central import customer_record
from tests.support.http import (
    NOW,
    Clock,
    StatusGateway,
    bearer,
    customer_token,
    http_settings,
    make_client,
)

HOLD = 120.0


@dataclass
class CheckinGateway(StatusGateway):
    checkin: CheckinService | None = None


@dataclass
class Setup:
    client: TestClient
    service: CheckinService
    pipeline: PresencePipeline
    drafts: list[ev.EventDraft]
    signer: PosterSigner
    clock: Clock


def config(tmp_path: Path, **checkin: object) -> Config:
    return Config.model_validate({
        "store_id": "s1", "gateway_id": "g1",
        "storage": {"path": str(tmp_path / "outbox.db")},
        "presence": {"zones": [{"id": "entrance", "scanners": ["se"]},
                               {"id": "dairy", "scanners": ["sd"]}]},
        "checkin": {"enabled": True, "hold_s": HOLD, **checkin},
        "http": http_settings().model_dump()})


def setup(tmp_path: Path, *, burst: int = 10, **checkin: object) -> Setup:
    cfg = config(tmp_path, **checkin)
    clock = Clock()
    registry = Registry(tomb_key=b"t" * 32, keep_s=86_400)
    records = (CustomerRecord.model_validate(customer_record("cust-0001", 1)),
               CustomerRecord.model_validate(customer_record("cust-0002", 1, presence=False)))
    registry.apply(CustomersChange("upsert", records, {}, (), None), NOW)
    counter = iter(range(10**9))
    pipeline = PresencePipeline(
        PresenceSettings(zones=(Zone("entrance", ("se",)), Zone("dairy", ("sd",)))),
        EidResolver(), lambda n: next(counter).to_bytes(n, "big"), footfall_secret=b"f" * 32)
    drafts: list[ev.EventDraft] = []
    service = CheckinService.build(cfg, registry=registry, pipeline=lambda: pipeline,
                                   submit=drafts.extend, wall_clock=clock)
    gateway = CheckinGateway(cfg, checkin=service)
    client, _, _ = make_client(tmp_path, settings=http_settings(checkin_burst=burst),
                               clock=clock, gateway=gateway)
    return Setup(client, service, pipeline, drafts, service.signer, clock)


def post(s: Setup, code: object, customer: str = "cust-0001") -> tuple[int, dict[str, object]]:
    r = s.client.post("/app/checkin", json={"code": code},
                      headers=bearer(customer_token(customer)))
    return r.status_code, r.json()


def test_a_valid_check_in_enters_the_zone_at_once(tmp_path: Path) -> None:
    s = setup(tmp_path)
    code = s.signer.sign(zone="dairy", generation=1, issued_at=int(NOW) - 3600)
    status, body = post(s, code)
    assert status == 200, body
    assert body["zone"] == "dairy" and body["repeat"] is False
    zone, store = body["zone_visit"], body["store_visit"]
    assert isinstance(zone, dict) and isinstance(store, dict)
    assert zone["zone"] == "dairy" and zone["entered"] is True
    assert zone["entered_at"] == NOW and zone["held_until"] == NOW + HOLD
    assert store["zone"] is None and store["entered"] is True
    assert [(d.type, d.data.zone) for d in s.drafts] == [  # type: ignore[attr-defined]
        (ev.VISIT_ENTERED, None), (ev.VISIT_ENTERED, "dairy")]
    assert {d.data.customer for d in s.drafts} == {"cust-0001"}  # type: ignore[attr-defined]
    assert s.service.accepted_total == 1
    # the poster key was made beside the outbox, owner-only
    assert poster_key_path(config(tmp_path)).stat().st_mode & 0o077 == 0


def test_the_same_poster_again_is_a_repeat_that_changes_nothing(tmp_path: Path) -> None:
    s = setup(tmp_path)
    code = s.signer.sign(zone="dairy", generation=1, issued_at=int(NOW))
    first = post(s, code)[1]
    s.clock.now += 30
    status, again = post(s, code)
    assert status == 200 and again["repeat"] is True
    assert again["zone_visit"] == first["zone_visit"]  # the hold is not extended
    assert len(s.drafts) == 2
    assert (s.service.accepted_total, s.service.repeats_total) == (1, 1)
    # once the visit it opened has ended, the same poster checks in anew
    s.clock.now += HOLD
    s.drafts += s.pipeline.tick(s.clock.now)
    status, later = post(s, code)
    assert status == 200 and later["repeat"] is False
    assert later["zone_visit"]["visit_id"] != first["zone_visit"]["visit_id"]  # type: ignore[index]


def test_another_zones_poster_is_a_new_check_in(tmp_path: Path) -> None:
    s = setup(tmp_path)
    post(s, s.signer.sign(zone="entrance", generation=1, issued_at=int(NOW)))
    s.clock.now += 20
    status, body = post(s, s.signer.sign(zone="dairy", generation=1, issued_at=int(NOW)))
    assert status == 200 and body["repeat"] is False and body["zone"] == "dairy"
    assert [(d.type.name.split(".")[2], d.data.zone) for d in s.drafts] == [  # type: ignore[attr-defined]
        ("entered", None), ("entered", "entrance"), ("exited", "entrance"),
        ("entered", "dairy")]


@pytest.mark.parametrize("customer", ["cust-0002", "cust-0404"])
def test_without_presence_consent_403_and_nothing_is_stored(tmp_path: Path,
                                                            customer: str) -> None:
    s = setup(tmp_path)  # cust-0002: presence withdrawn; cust-0404: not known at all
    code = s.signer.sign(zone="dairy", generation=1, issued_at=int(NOW))
    status, body = post(s, code, customer)
    assert (status, body) == (403, {"detail": "no_presence_consent"})
    assert s.drafts == []
    assert s.pipeline.engine.tracked == 0
    assert s.service.rejected == {"no_presence_consent": 1}
    assert s.service.snapshot().rejected_by_reason == {"no_presence_consent": 1}


def test_a_poster_of_another_store_or_key_is_400_with_its_reason(tmp_path: Path) -> None:
    s = setup(tmp_path)
    other_store = PosterSigner(Ed25519PrivateKey.generate(), "s2")
    assert post(s, other_store.sign(zone="dairy", generation=1, issued_at=int(NOW))) == (
        400, {"detail": "poster_unknown_key"})
    ours_elsewhere = PosterSigner(load_poster_key(config(tmp_path)), "s2")
    assert post(s, ours_elsewhere.sign(zone="dairy", generation=1, issued_at=int(NOW))) == (
        400, {"detail": "poster_wrong_store"})
    assert post(s, s.signer.sign(zone="bakery", generation=1, issued_at=int(NOW))) == (
        400, {"detail": "poster_unknown_zone"})
    assert s.drafts == []
    assert s.service.rejected == {"unknown_key": 1, "wrong_store": 1, "unknown_zone": 1}


def test_retired_generations_are_refused(tmp_path: Path) -> None:
    s = setup(tmp_path, generation=2, min_generation=2)
    assert post(s, s.signer.sign(zone="dairy", generation=1, issued_at=int(NOW))) == (
        400, {"detail": "poster_retired"})
    assert post(s, s.signer.sign(zone="dairy", generation=2, issued_at=int(NOW)))[0] == 200


def test_another_gateways_trusted_poster_key_checks_in(tmp_path: Path) -> None:
    other = Ed25519PrivateKey.generate()
    signer = PosterSigner(other, "s1")
    s = setup(tmp_path, trusted_poster_keys=[{"kid": signer.kid,
                                              "public_key": public_key_text(
                                                  signer.public_key)}])
    assert post(s, signer.sign(zone="entrance", generation=1, issued_at=int(NOW)))[0] == 200


@pytest.mark.parametrize("code", ["", "SGZ1.", "SGZ1." + "A" * 200, "hello", "SGO1.AAAA",
                                  "\x00" * 100, "é" * 300])
def test_garbage_codes_are_400_malformed(tmp_path: Path, code: str) -> None:
    s = setup(tmp_path)
    status, body = post(s, code)
    if code == "":  # below the body's minimum length: FastAPI's 422
        assert status == 422
        return
    assert (status, body) == (400, {"detail": "poster_malformed"})
    assert s.drafts == []


@pytest.mark.parametrize("body", [{}, {"code": 5}, {"code": None}, {"code": "x" * 513},
                                  {"code": "SGZ1.AA", "zone": "dairy"}, [], "SGZ1."])
def test_bodies_that_are_not_a_check_in_are_422(tmp_path: Path, body: object) -> None:
    s = setup(tmp_path)
    r = s.client.post("/app/checkin", json=body, headers=bearer(customer_token()))
    assert r.status_code == 422
    assert s.drafts == [] and s.service.accepted_total == 0


def test_a_check_in_needs_a_customer_token(tmp_path: Path) -> None:
    s = setup(tmp_path)
    code = s.signer.sign(zone="dairy", generation=1, issued_at=int(NOW))
    assert s.client.post("/app/checkin", json={"code": code}).status_code == 401
    assert s.drafts == []


def test_check_in_is_rate_limited(tmp_path: Path) -> None:
    s = setup(tmp_path, burst=2)
    code = s.signer.sign(zone="dairy", generation=1, issued_at=int(NOW))
    codes = [post(s, code)[0] for _ in range(3)]
    assert codes == [200, 200, 429]


def test_presence_not_running_is_503(tmp_path: Path) -> None:
    s = setup(tmp_path)
    s.service._pipeline = lambda: None  # presence stopped
    code = s.signer.sign(zone="dairy", generation=1, issued_at=int(NOW))
    assert post(s, code) == (503, {"detail": "presence_off"})


def test_the_status_carries_the_counters_and_parses_back(tmp_path: Path) -> None:
    s = setup(tmp_path)
    post(s, s.signer.sign(zone="dairy", generation=1, issued_at=int(NOW)))
    post(s, "junk-code")
    snap = s.service.snapshot()
    assert (snap.accepted_total, dict(snap.rejected_by_reason)) == (1, {"malformed": 1})
    assert snap.poster_kid == s.signer.kid
    view = GatewayStatusView.from_json({"checkin": {"accepted_total": 1,
                                                    "rejected_by_reason": {"malformed": 1},
                                                    "poster_kid": "abcd0123"}})
    assert view is not None and view.checkin is not None
    assert view.checkin.rejected_by_reason == {"malformed": 1}


def test_forget_drops_the_customers_recent_check_ins(tmp_path: Path) -> None:
    s = setup(tmp_path)
    code = s.signer.sign(zone="dairy", generation=1, issued_at=int(NOW))
    post(s, code)
    s.service.forget({"cust-0001"})  # withdrawal or erasure (the gateway calls it)
    assert s.service._recent == {}
    status, body = post(s, code)
    assert status == 200 and body["repeat"] is False  # nothing remembered of them
