"""The HTTP surface's fast paths (issue 12, bench/bench_http.py) keep their meaning: a
screen change rendered once per (lane, role) and still logged per session; customer
tokens verified once, never a failure cached, never past their expiry or their key;
inbox reads inline only while no thread job holds the connection; /healthz answered
before routing exactly as the route answers; the collector's survivors frozen and
thawed. No timings here: the figures are the bench's."""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path

import pytest
from fastapi import HTTPException

from storegate.app import collector
from storegate.app.http.hub import Message
from storegate.app.http.security import Authenticator
from storegate.app.http.token_cache import VerifiedTokens
from storegate.core.webauth import CLOCK_LEEWAY_S
from tests.support.http import (
    APP_KID,
    METRICS_TOKEN,
    NOW,
    Clock,
    bearer,
    customer_token,
    http_settings,
    make_client,
)
from tests.test_app_channel import ALICE, World, offer
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
        before = gc.get_freeze_count()
        gc.collect()  # a full collection: its survivors are frozen next
        for _ in range(1000):
            await asyncio.sleep(0.001)
            if gc.get_freeze_count() > before:
                break
        assert gc.get_freeze_count() >= before + len(kept)
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
