"""Benchmark: a fleet on central's NATS cluster (issue 14): the stream's throughput, central
instances sharing the durable, and what one node's loss costs.

Everything runs on this machine, on real parts: three nats-server nodes from the shipped
deploy/nats files (tests/support/nats_cluster.py), one mosquitto per simulated store with
the shipped bridge lines, ``storegate central --source nats://...`` processes storing
into one PostgreSQL database (Debian's, a throwaway cluster; fsync off, as in the tests).

1. **Raw baseline**: one paho client per store (MQTT 3.1.1, QoS 1, window 20, TLS, the
   store's login) publishing the same events straight to a node's MQTT listener:
   events/s acknowledged and in the R3 stream.
2. **Through the fleet**: the two stores deploy/nats/accounts.conf names, each
   publishing its share to its own mosquitto, bridged to the cluster, read by one
   central instance into PostgreSQL: events/s from the first publish to the last row
   stored. Ratio to 1.
3. **Central instances sharing the durable**: 1, 2 and 4 instances (each a fresh
   durable over the whole stream, a fresh database) drain what the stream holds:
   events/s between the first and last row stored (central's own received_at), ratio
   to one instance.
4. **A node's loss**: a real gateway per store (tests/support/driver.py) accepts
   purchases at ``--rate`` events/s in total for ``--duration`` s, read by one central
   instance with its gap scanner on; a third of the way in, the stream's leader node
   is SIGKILLed. Latency (accepted, from the UUIDv7 id -> stored) before and after,
   the longest, the gaps central found and had replayed, accepted vs stored.

From the figures: how many stores of ``--store-peak-eps`` events/s (a large store's
peak hour, see docs/fleet.md) one central instance and one 3-node cluster carry.

    .venv/bin/python bench/bench_fleet.py [--events 6000] [--rate 150] [--duration 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from storegate.adapters.central.storage import Database, Target  # noqa: E402
from storegate.core import events as ev  # noqa: E402
from tests.support.driver import purchase  # noqa: E402
from tests.support.gateway_proc import read_log, start_driver, write_config  # noqa: E402
from tests.support.mosquitto import Mosquitto  # noqa: E402
from tests.support.nats_cluster import (  # noqa: E402
    PASSWORD,
    STORES,
    NatsCluster,
    create_stream,
    start_central,
    start_cluster,
    start_store_broker,
    write_central_key,
)
from tests.support.postgres import Postgres  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

RESULTS = REPO / "bench" / "results" / "fleet.json"
WINDOW = 20  # QoS 1 messages in flight per publisher (as the gateway's publisher)


# --- events -------------------------------------------------------------------------------


@dataclass
class Gateway:
    """One simulated gateway: numbers its events 1, 2, 3... as a real one does."""

    store: str
    gateway: str
    sequence: int = 0

    def next_event(self, n: int) -> tuple[str, bytes]:
        self.sequence += 1
        draft = purchase(n)
        draft = ev.EventDraft(draft.type, draft.subject, time.time(), draft.data)
        payload = ev.encode_event(
            draft, event_id=str(uuid.uuid4()),
            source_json=json.dumps(f"storegate://{self.store}/{self.gateway}"),
            sequence=self.sequence)
        return f"storegate/v1/{self.store}/{self.gateway}/events/purchase", payload


def mqtt_client(client_id: str, port: int, *, tls_ca: Path | None = None,
                user: str | None = None) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv311, clean_session=True)
    if user is not None:
        c.username_pw_set(user, PASSWORD)
    if tls_ca is not None:
        c.tls_set(ca_certs=str(tls_ca))
    c.max_inflight_messages_set(WINDOW)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def publish_all(client: mqtt.Client, gw: Gateway, count: int, start: int,
                rate: float = 0.0) -> int:
    """QoS 1, bounded window; paced at ``rate`` per second if given; returns how many
    the broker acknowledged."""
    infos = []
    t0 = time.perf_counter()
    for i in range(count):
        topic, payload = gw.next_event(start + i)
        while len([x for x in infos[-WINDOW * 4:] if not x.is_published()]) >= WINDOW * 4:
            time.sleep(0.001)
        infos.append(client.publish(topic, payload, qos=1))
        if rate:
            delay = t0 + (i + 1) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    for info in infos:
        info.wait_for_publish(120)
    return sum(1 for info in infos if info.is_published())


# --- the cluster and the database ---------------------------------------------------------


def stream_info(cluster: NatsCluster) -> tuple[int, str | None]:
    async def go() -> tuple[int, str | None]:
        nc = await cluster.connect()  # TLS, the test CA
        try:
            info = await nc.jetstream().stream_info("STOREGATE_EVENTS")
            return info.state.messages, info.cluster.leader if info.cluster else None
        finally:
            await nc.close()
    return asyncio.run(go())


def rows(db: str) -> int:
    d = Database(Target.parse(db))
    try:
        return int(d.read("SELECT COUNT(*) FROM events")[0][0])
    finally:
        d.close()


def received_span(db: str) -> tuple[int, float]:
    d = Database(Target.parse(db))
    try:
        n, lo, hi = d.read("SELECT COUNT(*), MIN(received_at), MAX(received_at) FROM events")[0]
        return int(n), float(hi) - float(lo)
    finally:
        d.close()


def fresh_db(pg: Postgres) -> str:
    url = pg.create_database()
    Database(Target.parse(url)).close()  # the schema, once (instances then only open it)
    return url


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Centrals:
    """``storegate central --source`` processes on one durable."""

    def __init__(self, work: Path, cluster: NatsCluster, key: Path) -> None:
        self.work, self.cluster, self.key = work, cluster, key
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, db: str, n: int, durable: str, tag: str,
              gap_interval: float = 0) -> None:
        for k in range(n):
            log = self.work / f"central-{tag}-{k}.log"
            self.procs.append(start_central(
                db, self.cluster, log, self.key, batch=256, gap_interval=gap_interval,
                durable=durable))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.procs.clear()


# --- scenarios ----------------------------------------------------------------------------


def raw_baseline(cluster: NatsCluster, events: int) -> dict[str, Any]:
    """One raw client per store login, in parallel (as many connections as the fleet
    scenario has bridges), straight to a node's MQTT listener."""
    before, _ = stream_info(cluster)
    per_store = events // len(STORES)
    acked = [0] * len(STORES)

    def run(i: int, store: str) -> None:
        client = mqtt_client(f"bench-raw-{store}", cluster.mqtt_ports[0],
                             tls_ca=cluster.ca, user=store)
        acked[i] = publish_all(client, Gateway(store, "gw-raw"), per_store, i * 1_000_000)
        client.disconnect()
        client.loop_stop()

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(STORES)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    total = per_store * len(STORES)
    wait_for(lambda: stream_info(cluster)[0] >= before + total, 60, "raw events in stream")
    return {"clients": len(STORES), "events": total, "acked": sum(acked),
            "seconds": round(elapsed, 2), "events_per_s": round(total / elapsed, 1)}


def through_fleet(cluster: NatsCluster, brokers: dict[str, Mosquitto], centrals: Centrals,
                  db: str, events: int) -> dict[str, Any]:
    centrals.start(db, 1, "central", "fleet")
    wait_for(lambda: all("reading STOREGATE_EVENTS" in p.read_text()
                         for p in centrals.work.glob("central-fleet-*.log")), 60,
             "central reading")
    base = rows(db)
    per_store = events // len(brokers)
    t0 = time.perf_counter()
    threads = []
    for i, (store, broker) in enumerate(brokers.items()):
        client = mqtt_client(f"bench-{store}", broker.port)
        gw = Gateway(store, "gw-1")
        threads.append(threading.Thread(target=publish_all,
                                        args=(client, gw, per_store, i * 1_000_000)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published = time.perf_counter() - t0
    total = per_store * len(brokers)
    wait_for(lambda: rows(db) >= base + total, 300, "every event stored")
    elapsed = time.perf_counter() - t0
    centrals.stop()
    return {"stores": len(brokers), "events": total,
            "publish_seconds": round(published, 2), "seconds": round(elapsed, 2),
            "events_per_s": round(total / elapsed, 1)}


def sharing(cluster: NatsCluster, pg: Postgres, centrals: Centrals) -> dict[str, Any]:
    in_stream, _ = stream_info(cluster)
    out: dict[str, Any] = {"events_in_stream": in_stream}
    for n in (1, 2, 4):
        db = fresh_db(pg)
        centrals.start(db, n, f"share{n}", f"share{n}")
        wait_for(lambda db=db: rows(db) >= in_stream, 600,  # type: ignore[misc]
                 f"{n} instance(s) draining the stream")
        centrals.stop()
        stored, span = received_span(db)
        out[f"instances_{n}"] = {"events": stored, "seconds": round(span, 2),
                                 "events_per_s": round(stored / span, 1)}
    one = out["instances_1"]["events_per_s"]
    for n in (2, 4):
        out[f"instances_{n}"]["ratio_to_1"] = round(out[f"instances_{n}"]["events_per_s"]
                                                    / one, 2)
    return out


def accepted_at(event_id: str) -> float:
    """A gateway's event id is a UUIDv7: its first 48 bits are the accept time in ms."""
    return int(event_id.replace("-", "")[:12], 16) / 1000


def stored_latencies(db: str, ids: set[str]) -> dict[str, float]:
    """event id -> stored (central's received_at) - accepted (the id's time), for ``ids``."""
    d = Database(Target.parse(db))
    try:
        return {str(i): float(r) - accepted_at(str(i))
                for i, r in d.read("SELECT id, received_at FROM events") if str(i) in ids}
    finally:
        d.close()


def replayed(db: str) -> tuple[int, int]:
    """(gaps central found, events in them) for the gateways of this scenario."""
    d = Database(Target.parse(db))
    try:
        found = d.read("SELECT first, last FROM gaps WHERE gateway = 'gw-loss'")
        return len(found), sum(int(b) - int(a) + 1 for a, b in found)
    finally:
        d.close()


def node_loss(cluster: NatsCluster, brokers: dict[str, Mosquitto], centrals: Centrals,
              pg: Postgres, rate: float, duration: float) -> dict[str, Any]:
    """Real gateways (tests/support/driver.py: the gateway's composition root, its
    outbox and publisher) accept purchases at ``rate`` in total; the stream's leader
    dies a third of the way in; central (gap scanner on) asks for what is missing."""
    db = fresh_db(pg)
    in_stream, _ = stream_info(cluster)
    centrals.start(db, 1, "loss", "loss", gap_interval=1.0)
    wait_for(lambda: rows(db) >= in_stream, 600, "the backlog drained before the run")
    work = centrals.work / "loss"
    hold = work / "release"
    logs: list[Path] = []
    drivers: list[subprocess.Popen[str]] = []
    per_store = int(rate * duration / len(brokers))
    for store, broker in brokers.items():
        (work / store).mkdir(parents=True, exist_ok=True)
        config = write_config(work / store / "gw.toml", port=broker.port,
                              storage=work / store / "outbox.db", store=store,
                              gateway="gw-loss")
        logs.append(work / store / "accepted.log")
        drivers.append(start_driver(config, start=0, count=per_store, log=logs[-1],
                                    rate=rate / len(brokers), drain=True, hold=hold,
                                    stderr=work / store / "gw.err"))
    start = time.time()
    time.sleep(duration / 3)
    _, leader = stream_info(cluster)
    victim = next(n for n in cluster.nodes if n.name == leader)
    killed_at = time.time()
    victim.kill()
    wait_for(lambda: sum(len(read_log(log)) for log in logs) >= per_store * len(brokers),
             duration * 3 + 60, "every purchase accepted")
    ids = {i for log in logs for i in read_log(log)}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(stored_latencies(db, ids)) < len(ids):
        time.sleep(1)
    lat = stored_latencies(db, ids)
    gaps, in_gaps = replayed(db)
    hold.touch()
    for p in drivers:
        p.wait(60)
    centrals.stop()
    before = [x for i, x in lat.items() if accepted_at(i) < killed_at]
    after = [x for i, x in lat.items() if killed_at <= accepted_at(i) < killed_at + 30]
    return {
        "rate": rate, "duration_s": duration, "killed": victim.name,
        "killed_after_s": round(killed_at - start, 1),
        "accepted": len(ids), "stored": len(lat), "lost": len(ids) - len(lat),
        "gaps_found": gaps, "events_replayed": in_gaps,
        "latency_before_ms": {"p50": round(pct(before, 0.5) * 1000, 1),
                              "p99": round(pct(before, 0.99) * 1000, 1)},
        "latency_30s_after_ms": {"p50": round(pct(after, 0.5) * 1000, 1),
                                 "p99": round(pct(after, 0.99) * 1000, 1),
                                 "max": round(max(after, default=float("nan")) * 1000, 1)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=6000)
    ap.add_argument("--rate", type=float, default=150.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--store-peak-eps", type=float, default=1.5,
                    help="a large store's events/s in its peak hour (docs/fleet.md)")
    args = ap.parse_args()

    stores = list(STORES)
    results: dict[str, Any] = {"stores": len(stores)}
    with tempfile.TemporaryDirectory(prefix="sg-fleet-") as d:
        work = Path(d)
        cluster = start_cluster(work / "nats")
        pg = Postgres()
        pg.start()
        brokers: dict[str, Mosquitto] = {}
        centrals = Centrals(work, cluster, write_central_key(work / "central.key"))
        try:
            asyncio.run(create_stream(cluster))
            for s in stores:
                brokers[s] = start_store_broker(work / s, cluster, s)
            results["raw"] = raw_baseline(cluster, args.events)
            print("raw", results["raw"], flush=True)
            results["fleet"] = through_fleet(cluster, brokers, centrals, fresh_db(pg),
                                             args.events)
            results["fleet"]["ratio_to_raw"] = round(
                results["fleet"]["events_per_s"] / results["raw"]["events_per_s"], 2)
            print("fleet", results["fleet"], flush=True)
            results["sharing"] = sharing(cluster, pg, centrals)
            print("sharing", results["sharing"], flush=True)
            results["node_loss"] = node_loss(cluster, brokers, centrals, pg, args.rate,
                                             args.duration)
            print("node_loss", results["node_loss"], flush=True)
        finally:
            centrals.stop()
            for b in brokers.values():
                b.kill()
            cluster.stop()
            pg.stop()
    one = results["sharing"]["instances_1"]["events_per_s"]
    best = max(results["sharing"][f"instances_{n}"]["events_per_s"] for n in (1, 2, 4))
    results["capacity"] = {
        "store_peak_eps": args.store_peak_eps,
        "stores_per_central_instance": int(one / args.store_peak_eps),
        "stores_per_cluster_at_raw_rate": int(results["raw"]["events_per_s"]
                                              / args.store_peak_eps),
        "stores_with_best_instances_here": int(best / args.store_peak_eps),
        "median_latency_ms_before_loss": results["node_loss"]["latency_before_ms"]["p50"],
        "lost_after_replay": results["node_loss"]["lost"],
    }
    print("capacity", results["capacity"])
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
