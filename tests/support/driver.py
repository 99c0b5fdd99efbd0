"""A gateway process for fault-injection tests: the real composition root (Gateway),
fed by a deterministic purchase generator instead of POS lanes.

    python -m tests.support.driver CONFIG --start N --count M --log FILE [--drain]

Accepts purchases N..N+M-1 (up to --concurrency at once) and appends "<n> <id>" to
FILE after each one is accepted (committed), so the test knows exactly which events
storegate promised to deliver even if this process is SIGKILLed. With --drain it waits
for the outbox to empty before a graceful stop; with --hold FILE it then keeps running
(serving replay commands) until FILE exists.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from storegate.app import logs
from storegate.app.gateway import Gateway
from storegate.config import load
from storegate.core import events as ev
from storegate.core import payloads as p

BASE_TIME = 1_795_000_000.0


def purchase(n: int) -> ev.EventDraft:
    """Purchase number n: every field derived from n, so payloads can be checked."""
    items = [
        p.LineItem(sku=f"SKU{n % 97:03d}", name=f"Item {n} Ж", quantity_milli=1000 + n % 3,
                   unit_price_minor=100 + n % 1000, amount_minor=100 + n % 1000)
    ]
    data = p.PurchaseCompleted(
        receipt=f"R{n}", lane=f"lane-{n % 4}", operator="op-7", items=items,
        tenders=[p.Tender(kind="card", amount_minor=100 + n % 1000)],
        total_minor=100 + n % 1000, currency="RUB",
        completed_at=ev.rfc3339(BASE_TIME + n),
    )
    return ev.EventDraft(ev.PURCHASE_COMPLETED, f"receipt/R{n}", BASE_TIME + n, data)


def expected_data(n: int) -> dict[str, object]:
    return purchase(n).data.model_dump(mode="json")


async def main_async(args: argparse.Namespace) -> int:
    gw = Gateway(load(Path(args.config)))
    stop = asyncio.Event()
    runner = asyncio.create_task(gw.run(stop))
    while gw.state != "running":
        if runner.done():
            runner.result()  # raises the start-up error
            return 1
        await asyncio.sleep(0.01)
    log_fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sem = asyncio.Semaphore(args.concurrency)

    async def one(n: int) -> None:
        async with sem:
            acc = await gw.accept(purchase(n))
            os.write(log_fd, f"{n} {acc.id}\n".encode())

    async with asyncio.TaskGroup() as tg:
        for n in range(args.start, args.start + args.count):
            tg.create_task(one(n))
            if args.rate:
                await asyncio.sleep(1 / args.rate)
    os.close(log_fd)
    print("ACCEPTED", flush=True)
    if args.drain:
        while gw.outbox.depth > 0:
            await asyncio.sleep(0.02)
    if args.hold:
        while not Path(args.hold).exists():
            await asyncio.sleep(0.05)
    stop.set()
    await runner
    print("STOPPED", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--start", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as possible)")
    ap.add_argument("--drain", action="store_true")
    ap.add_argument("--hold", help="after that, keep running until this file exists")
    args = ap.parse_args()
    logs.setup("info", "json", sys.stderr)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
