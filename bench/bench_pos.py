"""Benchmark: POS lane parsers and the tap -> outbox latency, against baselines in one run.

  floor       a bare ``bytes.split`` loop over the same stream, in the same chunks
  dialects    MB/s of each dialect on a realistic stream (simulated lane), fed in
              4 KiB chunks as a serial read hands them over
  latency     a receipt written to a real pty -> read by the serial tap -> ESC/POS ->
              lane assembly -> committed in the SQLite outbox (synchronous FULL), p50/p99

    .venv/bin/python bench/bench_pos.py [--receipts 400] [--json bench/results/pos.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pty
import random
import statistics
import sys
import tempfile
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from storegate.adapters.outbox import Outbox  # noqa: E402
from storegate.adapters.serial_tap import SerialTap  # noqa: E402
from storegate.app.pos import make_dialect, read_template  # noqa: E402
from storegate.config import StxEtxConfig, defaults_dir  # noqa: E402
from storegate.core.backoff import Backoff  # noqa: E402
from storegate.core.pos.escpos import EscPos  # noqa: E402
from storegate.core.pos.lane import LaneAssembler, LaneSettings  # noqa: E402
from storegate.core.pos.stx_etx import StxEtxSettings  # noqa: E402
from storegate.core.retention import RetentionBudget  # noqa: E402
from storegate.sim import fiscal  # noqa: E402
from storegate.sim.lane import (  # noqa: E402
    display_updates,
    escpos_job,
    random_receipt,
    receipt_lines,
    scanner_codes,
)

CHUNK = 4096


def streams(n: int) -> dict[str, bytes]:
    rng = random.Random(7)
    receipts = [random_receipt(rng, 1000 + i) for i in range(n)]
    out = {
        "escpos": b"".join(escpos_job(r) for r in receipts),
        "pole-display": b"".join(b"".join(display_updates(r)) for r in receipts),
        "scanner": b"".join(b"".join(scanner_codes(r)) for r in receipts),
    }
    shtrih, atol, framed = bytearray(), bytearray(), bytearray()
    settings = StxEtxSettings(checksum="lrc", encoding="cp866")
    for n, r in enumerate(receipts):
        for i in r.items:
            shtrih += fiscal.ENQ + fiscal.shtrih_sale(i.name[:40], i.quantity_milli,
                                                      i.price_minor)
            atol += fiscal.atol_frame(n * 16 % 256, fiscal.atol_item(
                i.name, i.quantity_milli, i.price_minor), task_id=n % 256)
        shtrih += fiscal.ENQ + fiscal.shtrih_close(r.cash_minor + r.card_minor)
        atol += fiscal.atol_frame((n * 16 + 1) % 256, fiscal.atol_close(r.total_minor))
        for line in receipt_lines(r):
            framed += fiscal.stx_etx_frame(line, settings)
    out.update({"shtrih-m": bytes(shtrih), "atol-v3": bytes(atol), "stx-etx": bytes(framed)})
    return out


def chunks(data: bytes) -> list[bytes]:
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]


def timed(fn: Callable[[], int], repeat: int = 3) -> tuple[float, int]:
    best, result = float("inf"), 0
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def floor(parts: list[bytes]) -> int:
    n = 0
    for c in parts:
        n += len(c.split(b"\n"))
    return n


def dialect_run(name: str, parts: list[bytes]) -> int:
    stx = StxEtxConfig(checksum="lrc", covers="payload+end") if name == "stx-etx" else None
    d = make_dialect(name, encoding="cp866", stx_etx=stx)
    n = 0
    t = 1_795_000_000.0
    for c in parts:
        t += 0.001
        n += len(d.feed(c, t))
    return n + len(d.flush(t + 3600))


async def latency(samples: int, workdir: Path) -> dict[str, Any]:
    """Receipt bytes on a pty -> purchase committed in the outbox."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    link = workdir / "printer"
    link.symlink_to(os.ttyname(slave))
    template = read_template(defaults_dir() / "pos" / "templates" / "ru-generic.toml")
    lane = LaneAssembler(LaneSettings("lane-1", "RUB", "printer", template), os.urandom)
    printer = EscPos("cp437")
    committed: dict[int, float] = {}
    outbox = Outbox(workdir / "outbox.db", source="storegate://bench/gw",
                    topic_for=lambda t: f"bench/{t.kind}", budget=RetentionBudget(None, None, None),
                    clock=time.time, synchronous="full", replay_window_s=0,
                    on_commit=lambda seq: committed.setdefault(seq, time.perf_counter()))
    outbox.open()
    loop = asyncio.get_running_loop()
    accepted: list[asyncio.Future[Any]] = []

    def on_bytes(data: bytes, ts: float) -> None:
        drafts = []
        for f in printer.feed(data, ts):
            drafts += lane.feed(f)
        if drafts:
            accepted.append(asyncio.wrap_future(outbox.submit(drafts), loop=loop))

    tap = SerialTap(name="lane-1/printer", port=str(link), baudrate=115200, bytesize=8,
                    parity="N", stopbits=1, xonxoff=False, rtscts=False, on_bytes=on_bytes,
                    backoff=Backoff(0.05, 0.5))
    stop = asyncio.Event()
    task = asyncio.create_task(tap.run(stop))
    while tap.status().state != "open":
        await asyncio.sleep(0.01)
    rng = random.Random(9)
    lat: list[float] = []
    for i in range(samples):
        job = escpos_job(random_receipt(rng, 50_000 + i))
        os.write(master, job[:-1])
        await asyncio.sleep(0.02)
        sent = time.perf_counter()
        os.write(master, job[-1:])  # the last byte of the cut command
        while len(accepted) <= i:
            await asyncio.sleep(0.0005)
        [acc] = await accepted[i]
        while acc.sequence not in committed:
            await asyncio.sleep(0.0005)
        lat.append((committed[acc.sequence] - sent) * 1000)
        await asyncio.sleep(0.01)
    stop.set()
    await task
    outbox.close()
    for fd in (master, slave):
        with contextlib.suppress(OSError):
            os.close(fd)
    lat.sort()
    return {"samples": len(lat), "p50_ms": statistics.median(lat),
            "p99_ms": lat[int(len(lat) * 0.99) - 1], "max_ms": lat[-1]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--receipts", type=int, default=400)
    ap.add_argument("--latency-samples", type=int, default=200)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "pos.json"))
    args = ap.parse_args()
    res: dict[str, Any] = {"cpus": os.cpu_count(), "dialects": {}}
    for name, data in streams(args.receipts).items():
        parts = chunks(data)
        mb = len(data) / 1e6
        floor_s, _ = timed(lambda parts=parts: floor(parts))
        secs, frames = timed(lambda name=name, parts=parts: dialect_run(name, parts))
        res["dialects"][name] = {"bytes": len(data), "mb_per_s": mb / secs, "frames": frames,
                                 "floor_mb_per_s": mb / floor_s,
                                 "ratio_to_floor": floor_s / secs}
        print(f"{name:<14} {mb / secs:8.2f} MB/s  ({frames:,} frames from {mb:.2f} MB)   "
              f"floor bytes.split {mb / floor_s:8.1f} MB/s   ratio {floor_s / secs:.3f}")
    with tempfile.TemporaryDirectory(prefix="sg-bench-pos-") as tmp:
        res["latency"] = asyncio.run(latency(args.latency_samples, Path(tmp)))
    lat = res["latency"]
    print(f"last byte of a receipt (cut) -> purchase committed (pty, SQLite FULL): "
          f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms "
          f"({lat['samples']} receipts)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
