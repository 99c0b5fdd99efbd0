"""The HTTP surface's fast paths (issue 12, bench/bench_http.py) keep their meaning: a
screen change rendered once per (lane, role) and still logged per session; customer
tokens verified once, never a failure cached, never past their expiry or their key;
inbox reads inline only while no thread job holds the connection; /healthz answered
before routing exactly as the route answers; the collector's survivors frozen and
thawed. No timings here: the figures are the bench's."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import HTTPException
from fastapi.testclient import TestClient

from storegate.adapters.app_inbox import RedemptionEntry
from storegate.app import collector
from storegate.app.http.hub import Message
from storegate.app.http.security import Authenticator
from storegate.app.http.server import build_app
from storegate.app.http.token_cache import VerifiedTokens
from storegate.core.webauth import CLOCK_LEEWAY_S
from tests.support.http import (
    APP_KID,
    CASHIER_PIN,
    METRICS_TOKEN,
    NOW,
    Clock,
    bearer,
    customer_token,
    http_settings,
    make_client,
)
from tests.test_app_channel import ALICE, BOB, World, offer
from tests.test_screens import CARD_ANNA, entered, loyalty, record, registry, service

# --- screens: one render per change and role ------------------------------------------


def _notice(sub_queue: asyncio.Queue[Message | None]) -> Message:
    m = sub_queue.get_nowait()
    assert m is not None
    return m


def test_a_change_is_rendered_once_per_lane_and_role_and_logged_per_session() -> None:
    svc, emitted = service(registry(record("anna")))
    renders: list[str] = []
    real = svc.state.lane_view

    def counted(lane, role, offers_of=lambda _: ()):  # type: ignore[no-untyped-def]
        renders.append(role)
        return real(lane, role, offers_of)

    svc.state.lane_view = counted  # type: ignore[method-assign]
    subs = [svc.hub.subscribe("lane:lane-1") for _ in range(3)]
    svc.on_processed([loyalty(CARD_ANNA)])
    notices = [_notice(s._queue) for s in subs]
    assert notices[0] is notices[1] is notices[2]  # the hub fans out one object
    a = svc.lane_frame("lane-1", "cashier", "s1", notices[0])
    b = svc.lane_frame("lane-1", "cashier", "s2", notices[1])
    m = svc.lane_frame("lane-1", "manager", "s3", notices[2])
    assert renders == ["cashier", "manager"]  # not once per screen
    assert a == b and '"greeting_name":"Anna"' in a and "lifetime_spend_minor" in m
    assert [e.data.session for e in emitted] == ["s1", "s2", "s3"]  # type: ignore[union-attr]
    # a first frame (no notice) is rendered now, never taken from the cache
    svc.lane_frame("lane-1", "cashier", "s4", None)
    assert renders[-1] == "cashier" and len(renders) == 3
    # erasure: a new notice, a new render without her
    svc.forget(["anna"])
    after = svc.lane_frame("lane-1", "cashier", "s1", _notice(subs[0]._queue))
    assert "Anna" not in after and '"customer":null' in after


def test_the_floor_is_shared_the_same_way() -> None:
    svc, emitted = service(registry(record("anna")))
    sub = svc.hub.subscribe("floor")
    svc.on_processed([entered("anna", None)])
    notice = _notice(sub._queue)
    first = svc.floor_frame("floor", "s1", notice)
    assert svc.floor_frame("floor", "s2", notice) == first and "ORD-anna" in first
    assert sorted(e.data.session for e in emitted) == ["s1", "s2"]  # type: ignore[union-attr]


# --- customer tokens: verified once ---------------------------------------------------


def _auth(clock: Clock) -> Authenticator:
    return Authenticator(http_settings(), clock)


def test_a_token_is_verified_once_and_answers_the_same() -> None:
    auth = _auth(Clock())
    token = customer_token(ALICE)
    first = auth._bearer(token)
    assert auth._bearer(token) == first and auth.verified.hits_total == 1
    assert first.subject == ALICE and len(auth.verified) == 1


def test_failures_are_never_cached() -> None:
    auth = _auth(Clock())
    good = customer_token(ALICE)
    head, body, sig = good.split(".")
    forged = f"{head}.{body}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"
    for _ in range(2):
        with pytest.raises(HTTPException) as refused:
            auth._bearer(forged)
        assert refused.value.status_code == 401
    assert auth.rejected["token_bad_signature"] == 2 and len(auth.verified) == 0


def test_a_cached_token_expires_with_the_token_and_with_its_key() -> None:
    clock = Clock()
    auth = _auth(clock)
    token = customer_token(ALICE, lifetime_s=600)
    auth._bearer(token)
    clock.now = NOW + 600 + CLOCK_LEEWAY_S + 1  # past exp and the leeway: refused again
    with pytest.raises(HTTPException, match="token_expired"):
        auth._bearer(token)
    clock.now = NOW
    auth._bearer(token)
    del auth.app_keys[APP_KID]  # the key withdrawn: the cached entry goes with it
    with pytest.raises(HTTPException, match="token_unknown_kid"):
        auth._bearer(token)


def test_the_cache_is_bounded_and_a_clock_set_back_reverifies() -> None:
    auth = _auth(Clock())
    auth.verified = VerifiedTokens(max_entries=2)
    tokens = [customer_token(f"cust-{n:04d}") for n in range(3)]
    for t in tokens:
        auth._bearer(t)
    assert len(auth.verified) == 2
    claims = auth.verified.get(tokens[2], keys=auth.app_keys,
                               audience=auth.settings.app_audience, now=NOW - 1)
    assert claims is None and len(auth.verified) == 1


# --- the inbox: inline reads only when the connection is free -------------------------


def test_reads_run_inline_when_free_and_wait_behind_a_thread_job(tmp_path: Path) -> None:
    w = World(tmp_path)
    threads: list[int] = []
    real = w.inbox.offers

    def spied(customer: str, now: float):  # type: ignore[no-untyped-def]
        threads.append(threading.get_ident())
        return real(customer, now)

    w.inbox.offers = spied  # type: ignore[method-assign]

    async def run() -> None:
        await w.channel._in_thread(w.inbox.append, [offer(ALICE, 1)], NOW)
        assert len(await w.channel.offers(ALICE)) == 1
        assert threads == [threading.get_ident()]  # inline, on the loop
        w.channel._db_busy.acquire()  # a thread job whose awaiting task was cancelled
        task = asyncio.create_task(w.channel.offers(ALICE))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()  # it did not read under the other user
        w.channel._db_busy.release()
        assert len(await task) == 1
        assert threads[-1] != threading.get_ident()  # went the thread's way

    try:
        asyncio.run(run())
    finally:
        w.inbox.close()


# --- /healthz before routing ----------------------------------------------------------


def test_healthz_fast_path_answers_exactly_as_the_route(tmp_path: Path) -> None:
    client, _, _ = make_client(tmp_path)
    fast = client.get("/healthz")
    routed = client.get("/healthz", headers={"Origin": "https://elsewhere.example"})
    assert fast.status_code == routed.status_code == 200
    assert fast.content == routed.content == b'{"status":"ok"}'
    assert dict(fast.headers) == dict(routed.headers)
    metrics = client.get("/metrics", headers=bearer(METRICS_TOKEN)).text
    line = next(x for x in metrics.splitlines() if x.startswith(
        "storegate_http_request_duration_seconds_count") and '"/healthz"' in x)
    assert line.endswith(" 2.0")


# --- GET /app/offers before routing ---------------------------------------------------


def _answers(client: TestClient, headers: list[tuple[str, str]], query: str = "",
             ) -> tuple[int, bytes, list[tuple[str, str]]]:
    r = client.get(f"/app/offers{query}", headers=headers)
    return r.status_code, r.content, sorted(r.headers.multi_items())


def test_the_offers_fast_path_answers_exactly_as_the_route(tmp_path: Path) -> None:
    w = World(tmp_path)
    routed_app = build_app(w.gateway, http_settings(), w.clock, fast_paths=False)
    fast, routed = w.client(), TestClient(routed_app, base_url="https://testserver")
    first = offer(ALICE, 1)
    odd = dataclasses.replace(offer(ALICE, 2, issued_at=NOW + 5), title="Fröhlich \u2028 \"x\"",
                              text="<b>\n\t</b> ü €", image="https://cdn.example/ä.png",
                              discount={"kind": "amount_minor", "value": 250})
    w.inbox.append([first, odd, offer(BOB, 3),
                    RedemptionEntry(first.offer_id, "reserved", NOW + 1)], NOW)
    good = customer_token(ALICE)
    wrong_key = Ed25519PrivateKey.generate()
    head, body, sig = good.split(".")
    cookie = w.client().post("/staff/signin", json={"lane": "lane-1", "pin": CASHIER_PIN}
                             ).cookies["sg_session"]
    cases: dict[str, tuple[list[tuple[str, str]], str]] = {
        "valid": ([("Authorization", f"Bearer {good}")], ""),
        "valid again (cached)": ([("Authorization", f"Bearer {good}")], ""),
        "valid, scheme in lower case": ([("Authorization", f"bearer   {good} ")], ""),
        "valid, a query the route ignores": ([("Authorization", f"Bearer {good}")],
                                             "?since=abc&x=1&x=2"),
        "valid, no offers": ([("Authorization", f"Bearer {customer_token('cust-nobody')}")],
                             ""),
        "valid, with an Origin": ([("Authorization", f"Bearer {good}"),
                                   ("Origin", "https://elsewhere.example")], ""),
        "expired": ([("Authorization", "Bearer " + customer_token(
            ALICE, issued_at=NOW - 7200, lifetime_s=600))], ""),
        "foreign key": ([("Authorization", "Bearer " + customer_token(
            ALICE, key=wrong_key))], ""),
        "unknown kid": ([("Authorization", "Bearer " + customer_token(
            ALICE, key=wrong_key, kid="elsewhere"))], ""),
        "wrong audience": ([("Authorization", "Bearer " + customer_token(
            ALICE, audience="another-app"))], ""),
        "bad signature": ([("Authorization", f"Bearer {head}.{body}.{sig[::-1]}")], ""),
        "not a JWS": ([("Authorization", "Bearer abc.def")], ""),
        "empty bearer": ([("Authorization", "Bearer ")], ""),
        "basic": ([("Authorization", "Basic dXNlcjpwYXNz")], ""),
        "two tokens": ([("Authorization", f"Bearer {good}"),
                        ("Authorization", f"Bearer {customer_token(BOB)}")], ""),
        "missing": ([], ""),
        "missing, with a query": ([], "?since=-1"),
        "admin token": ([("Authorization", f"Bearer {METRICS_TOKEN}")], ""),
    }
    for name, (headers, query) in cases.items():
        before = fast.app.state.fast.answered_total  # type: ignore[attr-defined]
        a, b = _answers(fast, headers, query), _answers(routed, headers, query)
        assert a == b, name
        took = fast.app.state.fast.answered_total - before  # type: ignore[attr-defined]
        assert took == (name.startswith("valid") and "Origin" not in name), name
    # refusals are counted once each, by the route, on both apps alike
    assert fast.app.state.auth.rejected == routed_app.state.auth.rejected  # type: ignore[attr-defined]
    assert fast.app.state.auth.rejected["token_expired"] == 1  # type: ignore[attr-defined]
    # a staff session (the fast app's own): 403 from the route
    status, content, _ = _answers(fast, [("Cookie", f"sg_session={cookie}")])
    assert (status, json.loads(content)) == (403, {"detail": "forbidden_staff"})
    listed = json.loads(_answers(fast, cases["valid"][0])[1])["offers"]
    assert [(o["offer_id"], o["state"]) for o in listed] == [
        (odd.offer_id, "issued"), (first.offer_id, "reserved")]
    # one latency series for both ways of answering
    metrics = fast.get("/metrics", headers=bearer(METRICS_TOKEN)).text
    ok = next(x for x in metrics.splitlines() if x.startswith(
        "storegate_http_request_duration_seconds_count") and '"/app/offers"' in x
        and 'status="200"' in x)
    # 6 answered fast, 2 by the route (an Origin; two tokens: it takes the first)
    assert ok.endswith(" 8.0")
    w.inbox.close()


def test_a_kept_offers_body_follows_every_change_of_the_inbox(tmp_path: Path) -> None:
    w = World(tmp_path)
    routed_app = build_app(w.gateway, http_settings(), w.clock, fast_paths=False)
    fast, routed = w.client(), TestClient(routed_app, base_url="https://testserver")
    bodies = w.app.state.fast.bodies
    alice, bob = [[("Authorization", f"Bearer {customer_token(c, lifetime_s=86400)}")]
                  for c in (ALICE, BOB)]
    first, short = offer(ALICE, 1, ttl=7200), offer(ALICE, 2, issued_at=NOW + 1, ttl=600)

    def same(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        a, b = _answers(fast, headers), _answers(routed, headers)
        assert a == b
        return [(o["offer_id"], o["state"]) for o in json.loads(a[1])["offers"]]

    async def flushed() -> None:
        await w.channel.flush()

    assert same(alice) == [] and same(alice) == [] and bodies.hits_total == 1
    for step in ([first, short], [RedemptionEntry(first.offer_id, "reserved", NOW + 2)]):
        for e in step:
            w.channel._put(e)
        asyncio.run(flushed())  # the app channel's own writer: staged, committed
        hits = bodies.hits_total
        listed = same(alice)
        assert bodies.hits_total == hits  # changed: read again, not the kept body
        assert same(alice) == listed and bodies.hits_total == hits + 1
    assert same(alice) == [(short.offer_id, "issued"), (first.offer_id, "reserved")]
    w.inbox.append([offer(BOB, 3)], NOW)  # another customer: hers is still good
    hits = bodies.hits_total
    assert same(alice) == [(short.offer_id, "issued"), (first.offer_id, "reserved")]
    assert bodies.hits_total == hits + 1 and same(bob) == [(offer(BOB, 3).offer_id, "issued")]
    w.clock.now = NOW + 601  # the short one expires: the list changes with time alone
    assert same(alice) == [(first.offer_id, "reserved")]
    w.clock.now = NOW + 100  # the clock set back: read again
    hits = bodies.hits_total
    assert same(alice) == [(short.offer_id, "issued"), (first.offer_id, "reserved")]
    assert bodies.hits_total == hits
    w.inbox.prune(NOW + 601)  # a prune: every kept body dropped
    w.clock.now = NOW + 601
    assert same(alice) == [(first.offer_id, "reserved")]
    asyncio.run(w.channel.erase([ALICE]))  # erasure: nothing of hers answered, or kept
    assert same(alice) == [] and bodies._entries[ALICE].body == b'{"offers":[]}'
    assert all(first.token.encode() not in b.body for b in bodies._entries.values())
    w.inbox.close()


def test_the_offers_fast_path_steps_aside_without_an_app_channel(tmp_path: Path) -> None:
    client, app, _ = make_client(tmp_path)
    r = client.get("/app/offers", headers=bearer(customer_token(ALICE)))
    assert (r.status_code, r.json()) == (404, {
        "detail": "the app channel is not available on this gateway"})
    assert app.state.fast.answered_total == 0


# --- the collector ----------------------------------------------------------------------


def test_survivors_of_a_full_collection_are_frozen_then_thawed() -> None:
    async def run() -> None:
        stop = asyncio.Event()
        now = [0.0]
        task = asyncio.create_task(collector.tend(stop, settle_s=0, check_s=0.001,
                                                  thaw_s=100, clock=lambda: now[0]))
        for _ in range(1000):
            await asyncio.sleep(0.001)
            if gc.get_freeze_count():
                break
        assert gc.get_freeze_count() > 0  # start-up frozen
        kept = [[n] for n in range(1000)]  # new, long-lived
        gc.collect()  # a full collection: its survivors are frozen as it ends
        seen = {id(o) for o in gc.get_objects()}  # every generation but the frozen one
        assert all(gc.is_tracked(k) and id(k) not in seen for k in kept)
        now[0] = 101.0  # an hour on: thawed, so what died in a cycle is freed
        for _ in range(1000):
            await asyncio.sleep(0.001)
            if gc.get_freeze_count() == 0:
                break
        assert gc.get_freeze_count() == 0
        stop.set()
        await task
        assert collector._note_full not in gc.callbacks

    asyncio.run(run())
