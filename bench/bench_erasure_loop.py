"""Erasure of many customers: how long the event loop is held at a time.

The personal service as the gateway builds it (real ledger, real outbox), 10,000
customers known, each with an offer held in the engine, an open store visit and a
checkout-zone stay in the stitcher, 512 open lane transactions with loyalty scans;
then one erase command naming all 10,000 (app/erasure.py). A probe task wakes every
millisecond; the longest gap between its wake-ups, less the millisecond, is the
longest time the loop was held by one step (lanes, presence and MQTT wait that long).

    .venv/bin/python bench/bench_erasure_loop.py      # ~10-30 s
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from storegate.adapters.outbox import Outbox
from storegate.app.erasure import ErasureTargets, erase
from storegate.app.personal import PersonalService
from storegate.config import parse
from storegate.core import events as ev
from storegate.core import payloads as p
from storegate.core.personal.offers import HeldOffer
from storegate.core.personal.registry import CustomerRecord, CustomersChange, Registry
from storegate.core.personal.stitching import Stitcher
from storegate.core.retention import RetentionBudget

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
T0 = 1_795_000_000.0
PROBE_S = 0.001


def build(root: Path) -> tuple[PersonalService, Registry, Outbox]:
    cfg = parse(f"""
store_id = "s1"
gateway_id = "g1"
[storage]
path = "{root}/outbox.db"
""", source="bench", base=root, environ={})
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support.central import customer_record  # noqa: PLC0415 - bench only

    registry = Registry(tomb_key=b"k" * 32, keep_s=86400)
    records = tuple(CustomerRecord.model_validate(customer_record(
        f"c{i:05d}", 1, loyalty_ids=[f"ps1:{i:032x}"])) for i in range(N))
    registry.apply(CustomersChange("upsert", records, {}, (), None), T0)
    stitcher = Stitcher(cfg.stitching.settings(), {"lane-1": "checkout"},
                        registry.customer_of_loyalty)
    svc = PersonalService.build(cfg, registry, stitcher=stitcher, emit=lambda _d: None,
                                wall_clock=lambda: T0)
    drafts: list[ev.EventDraft] = []
    for i in range(N):
        c = f"c{i:05d}"
        svc.engine.record_issued(HeldOffer(f"{i:032x}", c, "welcome", 1, None, f"v{i}", T0,
                                           T0 + 3600))
        drafts.append(ev.EventDraft(ev.VISIT_ENTERED, f"visit/v{i}", T0, p.VisitEntered(
            visit_id=f"v{i}", customer=c, zone=None, entered_at=ev.rfc3339(T0))))
        drafts.append(ev.EventDraft(ev.VISIT_ENTERED, f"visit/z{i}", T0, p.VisitEntered(
            visit_id=f"z{i}", customer=c, zone="checkout", entered_at=ev.rfc3339(T0))))
    for t in range(512):
        drafts.append(ev.EventDraft(ev.POS_SCANNED, "lane/lane-1", T0, p.PosScanned(
            lane="lane-1", kind="loyalty", value=f"ps1:{t:032x}", scanned_at=ev.rfc3339(T0),
            transaction_id=f"tx-{t}")))
    stitcher.process(drafts, T0)
    outbox = Outbox(root / "outbox.db", source="storegate://s1/g1",
                    topic_for=lambda t: f"e/{t.kind}", budget=RetentionBudget(),
                    clock=lambda: T0)
    outbox.open()
    return svc, registry, outbox


async def probe(stop: asyncio.Event, worst: list[float]) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(PROBE_S)
        now = time.perf_counter()
        worst[0] = max(worst[0], now - last - PROBE_S)
        last = now


async def main() -> None:
    root = Path(tempfile.mkdtemp())
    svc, registry, outbox = build(root)
    targets = ErasureTargets(registry=registry, registry_store=None, identities=None,
                             outbox=outbox, personal=svc,
                             ledger_path=root / "outbox.redemption.db")
    stop = asyncio.Event()
    worst = [0.0]
    task = asyncio.create_task(probe(stop, worst))
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    counts = await erase([f"c{i:05d}" for i in range(N)], targets, T0 + 10)
    total = time.perf_counter() - t0
    stop.set()
    await task
    left = sum(svc.stitcher.holds(f"c{i:05d}") for i in range(0, N, max(N // 100, 1)))
    print(f"{N} customers erased in {total:.2f} s, errors {counts.errors}, stitcher "
          f"states {counts.stitcher_states}, offers revoked {counts.offers_revoked}; "
          f"longest loop hold {worst[0] * 1000:.1f} ms; sampled left {left}")
    outbox.close()
    svc.close()


if __name__ == "__main__":
    asyncio.run(main())
