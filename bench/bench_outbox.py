"""Benchmark: durable storegate outbox -> MQTT against raw, non-durable paho.

One run, one local mosquitto, each scenario in its own process (so peak RSS is its own):

  raw       paho-mqtt QoS 1, 100,000 ~300-byte messages, bounded window of 20 (baseline)
  outbox    storegate accepting the same number of events and draining them through the
            SQLite outbox (synchronous=FULL and NORMAL)
  latency   accept -> PUBACK at a steady 500 events/s (p50 / p99)
  backlog   100,000 events accepted while the broker is down, then drained: time to empty

    .venv/bin/python bench/bench_outbox.py [--events 100000] [--json bench/results/outbox.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from storegate.adapters.mqtt_client import MqttSettings  # noqa: E402
from storegate.adapters.mqtt_paho import MqttPublisher, StatusMessages  # noqa: E402
from storegate.adapters.outbox import Outbox  # noqa: E402
from storegate.core import events as ev  # noqa: E402
from storegate.core import payloads as p  # noqa: E402
from storegate.core.retention import RetentionBudget  # noqa: E402
from storegate.core.topics import Topics  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402

WINDOW = 20
ROUNDS = 3
TOPICS = Topics("bench-store", "gw-1")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def draft(n: int) -> ev.EventDraft:
    """A visit event: its CloudEvents envelope is ~300 bytes."""
    t = 1_795_000_000.0 + n / 1000
    data = p.VisitEntered(visit_id=f"v{n:08d}", customer=f"c{n % 5000:05d}", zone=f"z{n % 7}",
                          entered_at=ev.rfc3339(t))
    return ev.EventDraft(ev.VISIT_ENTERED, f"v{n:08d}", t, data)


def sample_payload() -> bytes:
    d = draft(12345)
    return ev.encode_event(d, event_id="0193a1b2-c3d4-7e5f-8a9b-0123456789ab",
                           source_json=json.dumps(TOPICS.source), sequence=12345)


# --- scenarios (each runs in a child process) --------------------------------------


def scenario_raw(port: int, n: int) -> dict[str, Any]:
    payload = sample_payload()
    topic = TOPICS.events("visit")
    window = threading.Semaphore(WINDOW)
    done = threading.Event()
    acked = 0

    def on_publish(client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        nonlocal acked
        acked += 1
        window.release()
        if acked == n:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(WINDOW)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for _ in range(n):
        window.acquire()
        c.publish(topic, payload, qos=1)
    done.wait(600)
    elapsed = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return {"events": n, "seconds": elapsed, "rate": n / elapsed, "bytes": len(payload),
            "peak_rss_mib": peak_rss_mib()}


class Pipeline:
    """The gateway's own wiring (outbox -> publisher), with an ack observer."""

    def __init__(self, port: int, db: Path, synchronous: str) -> None:
        self.ack_times: dict[int, float] = {}
        self.acked = 0
        self.all_acked = threading.Event()
        self.target = 0
        self.outbox = Outbox(db, source=TOPICS.source, topic_for=lambda t: TOPICS.events(t.kind),
                             budget=RetentionBudget(), clock=time.time,
                             synchronous=synchronous,  # type: ignore[arg-type]
                             on_commit=self._committed)
        self.outbox.open()
        self.publisher = MqttPublisher(
            MqttSettings("127.0.0.1", port, "bench-storegate", window=WINDOW),
            outbox_path=db, ack=self._ack,
            status=StatusMessages(TOPICS.status, lambda: b"{}", lambda: b"{}", lambda: b"{}"),
        )
        self.record = False

    def _committed(self, seq: int) -> None:
        self.publisher.notify_committed(seq)

    def _ack(self, seqs: list[int]) -> None:
        if self.record:
            now = time.perf_counter()
            for s in seqs:
                self.ack_times[s] = now
        self.acked += len(seqs)
        if self.acked >= self.target:
            self.all_acked.set()
        self.outbox.ack(seqs)

    def start(self) -> None:
        self.publisher.start(self.outbox.last_sequence)

    def close(self) -> None:
        self.publisher.stop(5)
        self.outbox.close()


async def accept_all(outbox: Outbox, n: int, producers: int = 64) -> None:
    async def producer(k: int) -> None:
        for i in range(k, n, producers):
            await outbox.accept(draft(i))

    await asyncio.gather(*(producer(k) for k in range(producers)))


def scenario_outbox(port: int, n: int, synchronous: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        pipe = Pipeline(port, Path(d) / "o.db", synchronous)
        pipe.target = n
        pipe.start()
        time.sleep(0.5)  # let it connect: the measurement starts with an idle, connected gateway
        t0 = time.perf_counter()
        asyncio.run(accept_all(pipe.outbox, n))
        t_accepted = time.perf_counter() - t0
        pipe.all_acked.wait(600)
        elapsed = time.perf_counter() - t0
        pipe.close()
    return {"events": n, "seconds": elapsed, "rate": n / elapsed,
            "accept_seconds": t_accepted, "synchronous": synchronous,
            "peak_rss_mib": peak_rss_mib()}


def scenario_latency(port: int, rate: float, seconds: float) -> dict[str, Any]:
    n = int(rate * seconds)
    with tempfile.TemporaryDirectory() as d:
        pipe = Pipeline(port, Path(d) / "o.db", "full")
        pipe.target = n
        pipe.record = True
        pipe.start()
        time.sleep(0.5)
        starts: dict[int, float] = {}

        async def run() -> None:
            t0 = time.perf_counter()
            for i in range(n):
                due = t0 + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                s = time.perf_counter()
                acc = await pipe.outbox.accept(draft(i))
                starts[acc.sequence] = s

        asyncio.run(run())
        pipe.all_acked.wait(60)
        pipe.close()
    lat = sorted((pipe.ack_times[s] - t) * 1000 for s, t in starts.items() if s in pipe.ack_times)
    return {"events": n, "rate": rate, "received": len(lat),
            "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)],
            "max_ms": lat[-1], "peak_rss_mib": peak_rss_mib()}


def scenario_backlog(port: int, n: int, broker_dir: str) -> dict[str, Any]:
    broker = Mosquitto(Path(broker_dir), port=port)  # stopped: the outage
    with tempfile.TemporaryDirectory() as d:
        pipe = Pipeline(port, Path(d) / "o.db", "full")
        pipe.target = n
        pipe.start()
        asyncio.run(accept_all(pipe.outbox, n))
        assert pipe.acked == 0
        broker.start()
        t0 = time.perf_counter()
        w0 = time.time()
        pipe.all_acked.wait(600)
        elapsed = time.perf_counter() - t0
        since = pipe.publisher.snapshot().since or w0  # wall time it (re)connected
        pipe.close()
        broker.kill()
    reconnect = max(since - w0, 0.0)
    return {"events": n, "drain_seconds": elapsed, "reconnect_seconds": reconnect,
            "rate": n / (elapsed - reconnect), "peak_rss_mib": peak_rss_mib()}


# --- orchestration -----------------------------------------------------------------


def rates(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['rate']:,.0f}" for r in runs)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]


def child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True,
                         capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "outbox.json"))
    ap.add_argument("--child", nargs="+")
    args = ap.parse_args()
    if args.child:
        kind, port, *rest = args.child
        res = {
            "raw": lambda: scenario_raw(int(port), int(rest[0])),
            "outbox": lambda: scenario_outbox(int(port), int(rest[0]), rest[1]),
            "latency": lambda: scenario_latency(int(port), float(rest[0]), float(rest[1])),
            "backlog": lambda: scenario_backlog(int(port), int(rest[0]), rest[1]),
        }[kind]()
        print(json.dumps(res))
        return 0

    n = args.events
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker")
        broker.start()
        port = str(broker.port)
        results: dict[str, Any] = {"events": n, "cpus": os.cpu_count(),
                                   "payload_bytes": len(sample_payload())}
        print(f"payload {results['payload_bytes']} bytes, {n} events, window {WINDOW}, "
              f"{ROUNDS} interleaved rounds (median)")
        runs: dict[str, list[dict[str, Any]]] = {"raw": [], "full": [], "normal": []}
        for _ in range(ROUNDS):  # interleaved, so drift in machine speed hits all alike
            runs["raw"].append(child(["raw", port, str(n)]))
            for sync in ("full", "normal"):
                runs[sync].append(child(["outbox", port, str(n), sync]))
        results["raw"] = raw = median_run(runs["raw"])
        print(f"(a) raw paho QoS 1:             {raw['rate']:>9,.0f} msg/s   "
              f"(rounds: {rates(runs['raw'])})")
        for sync in ("full", "normal"):
            results[f"outbox_{sync}"] = r = median_run(runs[sync])
            print(f"(b) storegate outbox ({sync:<6}):  {r['rate']:>9,.0f} ev/s    "
                  f"ratio {r['rate'] / raw['rate']:.2f}   peak RSS {r['peak_rss_mib']:.0f} MiB"
                  f"   (rounds: {rates(runs[sync])})")
        results["latency"] = lat = child(["latency", port, "500", "20"])
        print(f"    accept->PUBACK @500 ev/s:   p50 {lat['p50_ms']:.2f} ms   "
              f"p99 {lat['p99_ms']:.2f} ms   max {lat['max_ms']:.2f} ms")
        broker.kill()
        results["backlog"] = b = child(["backlog", port, str(n), str(Path(tmp) / "broker2")])
        print(f"    {n} backlog drained in      {b['drain_seconds']:.1f} s after the broker "
              f"returned ({b['reconnect_seconds']:.1f} s reconnect backoff, then "
              f"{b['rate']:,.0f} ev/s)   peak RSS {b['peak_rss_mib']:.0f} MiB")
        results["ratio_full"] = results["outbox_full"]["rate"] / raw["rate"]
        results["ratio_normal"] = results["outbox_normal"]["rate"] / raw["rate"]
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
