"""Benchmark: events/s one `storegate central` ingests and stores, and 2 and 4 sharing.

One run, one local mosquitto. N simulated stores (one gateway each) publish M events
(a store's mix: purchases, visits, offers, telemetry), QoS 1, on their own topics.

  raw         a bare paho subscriber (MQTT 5, the same shared subscription, QoS 1)
              counting the same stream: the baseline, what the broker and the client
              library deliver at most
  sqlite xK   K `storegate central` processes (the real CLI, --http-port 0) on one
              SQLite file (synchronous=FULL), K = 1, 2, 4
  postgres xK the same on a throwaway PostgreSQL 15 cluster (fsync on)
  ingest only Ingest.handle_many in the bench's process, batches of 500, on each
              storage: what storing costs without the broker and paho

For each, the consumers' persistent sessions are made first (subscribed, then
stopped), the M events are published and queued by the broker, then the consumers start
again and drain that backlog: the clock runs from all of them subscribed until storage
holds all M (polled) or the subscriber counted them, events/s = M / that time (so the
publisher's speed is not measured). Ratios: each against raw, and K instances
against one. The machine's cores are shared with everything else running.

    .venv/bin/python bench/bench_central.py [--events 20000] [--stores 20]
        [--instances 1,2,4] [--json bench/results/central.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from storegate.core import events as ev  # noqa: E402
from storegate.core import payloads as p  # noqa: E402
from tests.support.driver import purchase  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402
from tests.support.postgres import Postgres  # noqa: E402

WINDOW = 20  # publisher's QoS 1 messages in flight (paho is fastest near 20)


def stream(events: int, stores: int) -> list[tuple[str, bytes]]:
    """The events, round-robin over the stores, each gateway's sequence from 1."""
    seqs = [0] * stores
    out = []
    t0 = 1_795_000_000.0
    for n in range(events):
        s = n % stores
        seqs[s] += 1
        if n % 3 == 0:
            draft = purchase(n)
        else:
            draft = ev.EventDraft(ev.VISIT_EXITED, f"visit/v{n}", t0 + n, p.VisitExited(
                visit_id=f"v{n}", customer=f"cust-{n % 5000}", zone=None,
                entered_at=ev.rfc3339(t0 + n - 600), exited_at=ev.rfc3339(t0 + n),
                dwell_s=600.0, converted=n % 2 == 0, basket_minor=1000,
                time_to_serve_s=90.0))
        body = ev.encode_event(draft, event_id=str(uuid.uuid4()),
                               source_json=json.dumps(f"storegate://st-{s}/gw-1"),
                               sequence=seqs[s])
        out.append((f"storegate/v1/st-{s}/gw-1/events/{draft.type.kind}", body))
    return out


def publish(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Publish everything with a bounded window; returns the time of the first publish."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}",
                    protocol=mqtt.MQTTv5)
    sem = threading.Semaphore(WINDOW)
    c.on_publish = lambda *a: sem.release()
    c.connect("127.0.0.1", port)
    c.loop_start()
    started = time.monotonic()
    infos = []
    for topic, body in messages:
        sem.acquire()
        infos.append(c.publish(topic, body, qos=1))
    for i in infos[-WINDOW:]:
        i.wait_for_publish(60)
    c.loop_stop()
    c.disconnect()
    return started


def wait_count(count: Callable[[], int], target: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count() >= target:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"only {count()} of {target} after {timeout} s")


def raw(port: int, messages: list[tuple[str, bytes]]) -> dict[str, Any]:
    """The baseline: a bare paho client on the same shared subscription, persistent
    session, draining the same backlog (counting only)."""
    got = [0]
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got[0] += 1

    def client() -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw",
                        protocol=mqtt.MQTTv5)
        c.on_message = on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
        return c

    c = client()
    c.subscribe("$share/raw/storegate/v1/+/+/events/#", qos=1)
    c.loop_start()
    time.sleep(0.5)
    c.loop_stop()
    c.disconnect()
    publish(port, messages)  # queued by the broker for the session
    c = client()
    started = time.monotonic()
    c.loop_start()
    done = wait_count(lambda: got[0], len(messages), 600)
    c.loop_stop()
    c.disconnect()
    return {"events": len(messages), "seconds": round(done - started, 3),
            "events_per_s": round(len(messages) / (done - started))}


def central(port: int, storage: str, k: int, messages: list[tuple[str, bytes]],
            count: Callable[[], int], tmp: Path, tag: str) -> dict[str, Any]:
    """K instances: sessions made (subscribed, stopped), the backlog published, then
    the instances started again; the clock runs from all K subscribed to all stored."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)

    def start(rnd: int) -> list[subprocess.Popen[bytes]]:
        procs: list[subprocess.Popen[bytes]] = []
        for i in range(k):
            log = open(tmp / f"{tag}-{k}-{i}-{rnd}.log", "w")  # noqa: SIM115
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "storegate", "--log-format", "json", "central",
                 "--storage", storage, "--mqtt-port", str(port),
                 "--client-id", f"bench-{tag}-{k}-{i}", "--group", f"{tag}{k}",
                 "--http-port", "0", "--gap-interval", "1" if i == 0 else "0"],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log))
        try:
            wait_count(lambda: sum("subscribed to" in (tmp / f"{tag}-{k}-{i}-{rnd}.log")
                                   .read_text() for i in range(k)), k, 120)
        except RuntimeError:
            stop(procs)
            raise
        return procs

    def stop(procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)

    stop(start(0))
    base = count()
    publish(port, messages)
    procs = start(1)
    try:
        started = time.monotonic()
        done = wait_count(lambda: count() - base, len(messages), 900)
    finally:
        stop(procs)
    return {"instances": k, "events": len(messages), "seconds": round(done - started, 3),
            "events_per_s": round(len(messages) / (done - started))}


def ingest_only(url: str, messages: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Ingest.handle_many in this process, batches of 500 (what the MQTT source hands
    over at most): the storage path without the broker and the client library."""
    from storegate.app.central.ingest import Ingest  # noqa: PLC0415

    ingest = Ingest(url)
    started = time.perf_counter()
    for k in range(0, len(messages), 500):
        ingest.handle_many(messages[k:k + 500], time.time())
    took = time.perf_counter() - started
    ingest.close()
    return {"events": len(messages), "seconds": round(took, 3),
            "events_per_s": round(len(messages) / took)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--stores", type=int, default=20)
    ap.add_argument("--instances", default="1,2,4")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "central.json"))
    args = ap.parse_args()
    ks = [int(x) for x in args.instances.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-central-"))
    broker = Mosquitto(tmp / "mosquitto")
    broker.start()
    results: dict[str, Any] = {"events": args.events, "stores": args.stores,
                               "cpus": os.cpu_count()}
    pg: Postgres | None = None
    try:
        results["raw"] = r = raw(broker.port, stream(args.events, args.stores))
        print(f"raw paho subscriber      {r['events_per_s']:>8} ev/s", flush=True)
        backends: list[tuple[str, Callable[[int], tuple[str, Callable[[], int]]]]] = []

        def sqlite_backend(k: int) -> tuple[str, Callable[[], int]]:
            path = tmp / f"central-{k}.db"

            def count() -> int:
                if not path.exists():
                    return 0
                try:
                    with sqlite3.connect(path, timeout=30) as c:
                        return int(c.execute("SELECT COUNT(*) FROM events").fetchone()[0])
                except sqlite3.OperationalError:
                    return 0
            return str(path), count

        backends.append(("sqlite", sqlite_backend))
        if not args.no_postgres:
            import psycopg  # noqa: PLC0415 - only when PostgreSQL is measured

            pg = Postgres(fsync=True)
            pg.start()
            cluster = pg

            def pg_backend(k: int) -> tuple[str, Callable[[], int]]:
                url = cluster.create_database(f"bench_{k}")

                def count() -> int:
                    try:
                        with psycopg.connect(url) as c:
                            row = c.execute("SELECT COUNT(*) FROM events").fetchone()
                            return int(row[0]) if row else 0
                    except psycopg.Error:
                        return 0
                return url, count

            backends.append(("postgres", pg_backend))
        for name, backend in backends:
            url, _ = backend(0)
            results[f"{name}_ingest_only"] = r = ingest_only(url, stream(args.events,
                                                                         args.stores))
            print(f"{name:8} Ingest in-process {r['events_per_s']:>8} ev/s   (no broker)",
                  flush=True)
            results[name] = []
            for k in ks:
                url, count = backend(k)
                r = central(broker.port, url, k, stream(args.events, args.stores), count,
                            tmp, name)
                r["vs_raw"] = round(r["events_per_s"] / results["raw"]["events_per_s"], 3)
                results[name].append(r)
                one = results[name][0]["events_per_s"]
                r["vs_one_instance"] = round(r["events_per_s"] / one, 2)
                print(f"{name:8} x{k} instance(s)   {r['events_per_s']:>8} ev/s   "
                      f"vs raw {r['vs_raw']:.3f}   vs one {r['vs_one_instance']:.2f}",
                      flush=True)
    finally:
        broker.kill()
        if pg is not None:
            pg.stop()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
