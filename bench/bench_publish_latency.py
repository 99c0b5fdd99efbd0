"""Benchmark: what the publish latency histogram costs the publisher (issue 12).

bench_outbox.py's durable scenario (accept N events through the SQLite outbox,
synchronous=FULL, drained to a local mosquitto with QoS 1), run with the publisher's
publish -> PUBACK histogram on (as shipped) and off (``publish_latency = None``), in
interleaved rounds of one run, each in its own process, the median of each reported.
Raw paho QoS 1 runs in the same rounds as the baseline the ratio is taken against.
On a shared 2-core box the end-to-end rates move by more than the histogram costs, so
the per-event work the publisher thread adds (a dict insert and pop, a clock read, one
observation) is also timed in process, where nothing else competes.

    .venv/bin/python bench/bench_publish_latency.py [--events 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import bench_outbox as bo  # noqa: E402

from storegate.core.histogram import Histogram  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402


def scenario(port: int, n: int, timed: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        pipe = bo.Pipeline(port, Path(d) / "o.db", "full")
        if not timed:
            pipe.publisher.publish_latency = None  # before start: the thread never times
        pipe.target = n
        pipe.start()
        time.sleep(0.5)  # connected and idle when the clock starts, as bench_outbox
        t0 = time.perf_counter()
        asyncio.run(bo.accept_all(pipe.outbox, n))
        pipe.all_acked.wait(600)
        elapsed = time.perf_counter() - t0
        snap = pipe.publisher.snapshot().publish_latency
        pipe.close()
    out: dict[str, Any] = {"events": n, "rate": n / elapsed, "timed": timed}
    if snap is not None:
        out["observed"] = snap.count
        out["mean_ms"] = snap.sum_s / max(snap.count, 1) * 1000
    return out


def per_event_ns(events: int = 400_000) -> float:
    """The publisher thread's added work per event, as in ``_fill_window`` and
    ``_on_publish`` (window of 20), minus the same loops doing nothing."""
    hist = Histogram()
    sent: dict[int, float] = {}

    def timed() -> None:
        now = time.monotonic()  # one per fill of the window
        for mid in range(bo.WINDOW):
            sent[mid] = now
        for mid in range(bo.WINDOW):
            at = sent.pop(mid, None)
            if at is not None:
                hist.observe(time.monotonic() - at)

    def bare() -> None:
        for _ in range(bo.WINDOW):
            pass
        for _ in range(bo.WINDOW):
            pass

    rounds = events // bo.WINDOW
    cost = min(timeit.repeat(timed, number=rounds, repeat=5))
    base = min(timeit.repeat(bare, number=rounds, repeat=5))
    return (cost - base) / (rounds * bo.WINDOW) * 1e9


def child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "publish_latency.json"))
    ap.add_argument("--child", nargs="+")
    args = ap.parse_args()
    if args.child:
        kind, port, n = args.child[:3]
        res = (bo.scenario_raw(int(port), int(n)) if kind == "raw"
               else scenario(int(port), int(n), kind == "on"))
        print(json.dumps(res))
        return 0
    n = args.events
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker")
        broker.start()
        try:
            for r in range(args.rounds):  # interleaved: machine drift hits all alike
                order = ("raw", "off", "on") if r % 2 == 0 else ("raw", "on", "off")
                for kind in order:
                    runs[kind].append(child([kind, str(broker.port), str(n)]))
        finally:
            broker.kill()
    med = {k: statistics.median(x["rate"] for x in v) for k, v in runs.items()}
    spread = {k: (min(x["rate"] for x in v), max(x["rate"] for x in v))
              for k, v in runs.items()}
    on = runs["on"]
    print(f"{n} events, {args.rounds} interleaved rounds (median, [min-max]):")
    for kind, label in (("raw", "raw paho QoS 1"), ("off", "outbox FULL, histogram off"),
                        ("on", "outbox FULL, histogram on")):
        lo, hi = spread[kind]
        print(f"  {label:<28} {med[kind]:>9,.0f} ev/s  [{lo:,.0f}-{hi:,.0f}]"
              + ("" if kind == "raw" else f"  ratio {med[kind] / med['raw']:.2f}"))
    cost = (med["off"] - med["on"]) / med["off"] * 100
    ns = per_event_ns()
    print(f"  end to end: {cost:+.1f} % of the untimed rate; every event observed: "
          f"{all(x['observed'] == n for x in on)}; mean publish->PUBACK "
          f"{statistics.median(x['mean_ms'] for x in on):.2f} ms")
    print(f"  in process: {ns:.0f} ns per event = {ns * med['on'] / 1e7:.2f} % of one core "
          f"at {med['on']:,.0f} ev/s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"events": n, "rounds": args.rounds, "median": med,
                               "spread": spread, "cost_percent": cost, "per_event_ns": ns,
                               "runs": runs},
                              indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
