"""A fleet on central's NATS cluster, on real parts: three nats-server nodes from the
shipped deploy/nats files, two stores (a real gateway process each, its own mosquitto
bridged to the cluster with the shipped bridge lines), two central instances sharing
the durable consumer into one PostgreSQL database. One cluster node (the stream's
leader) and one central instance are SIGKILLed mid-stream: every accepted event is
stored once, and nothing else is.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from storegate.adapters.central.storage import Database, Target
from tests.support.gateway_proc import (
    one_clear_line,
    read_log,
    start_driver,
    storegate,
    write_config,
)
from tests.support.nats_cluster import (
    PASSWORD,
    STORES,
    NatsCluster,
    create_stream,
    move_stream_leader,
    start_central,
    start_cluster,
    start_store_broker,
    write_central_key,
)
from tests.support.postgres import postgres_cluster, postgres_url  # noqa: F401 (fixtures)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

RECOVERY_S = 360.0  # after a node is killed: see the comment where it is used

EVENTS_PER_STORE = 1500
RATE = 150.0  # events/s per store: the stream runs for about 10 s


def stream_state(cluster: NatsCluster) -> tuple[int, str | None]:
    """(messages in the stream, the node leading it)."""
    async def go() -> tuple[int, str | None]:
        nc = await cluster.connect()
        try:
            info = await nc.jetstream().stream_info("STOREGATE_EVENTS")
            leader = info.cluster.leader if info.cluster else None
            return info.state.messages, leader
        finally:
            await nc.close()
    return asyncio.run(go())


def consumer_settled(cluster: NatsCluster) -> bool:
    """Nothing left for the durable: none pending, none delivered and unacked."""
    async def go() -> bool:
        nc = await cluster.connect()
        try:
            info = await nc.jetstream().consumer_info("STOREGATE_EVENTS", "central")
            return info.num_pending == 0 and info.num_ack_pending == 0
        finally:
            await nc.close()
    return asyncio.run(go())


def stored_ids(db: str, type_: str | None = None) -> dict[str, int]:
    """event id -> how many rows hold it (of one type, if given)."""
    d = Database(Target.parse(db))
    try:
        rows = d.read("SELECT id, type, COUNT(*) FROM events GROUP BY id, type")
        return {str(r[0]): int(r[2]) for r in rows if type_ in (None, r[1])}
    finally:
        d.close()


def test_node_and_central_lost_mid_stream_every_event_stored_once(
        tmp_path: Path, postgres_url: str) -> None:  # noqa: F811 (fixture)
    cluster = start_cluster(tmp_path / "nats")
    procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    brokers = []
    try:
        asyncio.run(create_stream(cluster))  # the operator's step, before any bridge
        logs: list[Path] = []
        hold = tmp_path / "release"  # the gateways stay up to answer replays until then
        for i, store in enumerate(STORES):
            broker = start_store_broker(tmp_path / store / "broker", cluster, store)
            brokers.append(broker)
            config = write_config(tmp_path / store / "gw.toml", port=broker.port,
                                  storage=tmp_path / store / "outbox.db",
                                  store=store, gateway="gw-1")
            logs.append(tmp_path / store / "accepted.log")
            procs.append(start_driver(config, start=i * 100_000, count=EVENTS_PER_STORE,
                                      log=logs[-1], rate=RATE, drain=True, hold=hold,
                                      stderr=tmp_path / store / "gw.err"))
        key = write_central_key(tmp_path / "central.key")
        centrals = []
        for k in range(2):
            log = tmp_path / f"central-{k}.log"
            # instance k sends its commands through node k's MQTT listener first
            centrals.append(start_central(postgres_url, cluster, log, key,
                                          commands_node=k))
            # one after the other: two instances creating the schema at the same
            # moment collide in PostgreSQL's catalogue (reported to central's owner)
            wait_for(lambda log=log: "reading STOREGATE_EVENTS" in log.read_text(), 60,  # type: ignore[misc]
                     "a central instance reading the stream")
        procs.extend(centrals)

        # Mid-stream: a third of the events are in the stream, then the node holding
        # the stores' bridges and the stream's leadership dies. (Both on one node: a
        # bridge left connected to a surviving node while the stream's leader dies can
        # stall with nats-server 2.15: docs/fleet.md, "Known limits".)
        wait_for(lambda: stream_state(cluster)[0] >= EVENTS_PER_STORE * 2 // 3, 60,
                 "a third of the events in the stream")
        victim = cluster.node_of_mqtt_client(f"bridge-{STORES[0]}")
        assert victim is not None
        assert cluster.node_of_mqtt_client(f"bridge-{STORES[1]}") is victim
        asyncio.run(move_stream_leader(cluster, victim.name))
        victim.kill()
        # ... and so does one central instance, with a batch in hand. (The bridges
        # reconnect to a surviving node first; under load that CONNECT has waited more
        # than 2 minutes for its CONNACK with nats-server 2.15 (docs/fleet.md, "Known
        # limits"): the waits after the kill allow for it; nothing may be lost meanwhile.)
        wait_for(lambda: len(stored_ids(postgres_url)) >= EVENTS_PER_STORE, RECOVERY_S,
                 "half the events stored")
        survivor = centrals[1]
        centrals[0].kill()
        centrals[0].wait(10)
        # The cluster carries on with two nodes of three, the central instance left
        # alone. (The node is not restarted mid-stream: measured here, a bridge whose
        # CONNECT lands on a node still recovering can wait minutes for its CONNACK;
        # docs/fleet.md, "Known limits".)

        wait_for(lambda: sum(len(read_log(log)) for log in logs)
                 == EVENTS_PER_STORE * len(STORES), RECOVERY_S, "every purchase accepted")
        accepted: dict[str, int] = {}
        for log in logs:
            accepted.update(read_log(log))

        # What the cluster acknowledged and lost while it elected new leaders (it
        # can: docs/fleet.md) is a gap central asks the gateway to replay.
        wait_for(lambda: set(accepted) <= set(stored_ids(postgres_url)), 180,
                 "every accepted event stored")
        # (a gap partly filled is "split" into the rest, which is then closed)
        wait_for(lambda: "open" not in gap_states(postgres_url).values(), 60,
                 "every gap closed")
        assert "lost" not in gap_states(postgres_url).values()
        wait_for(lambda: consumer_settled(cluster), 60, "the durable settled")
        stored = stored_ids(postgres_url)
        assert all(n == 1 for n in stored.values()), "an event stored twice"
        # the purchases are exactly those accepted (the rest: the gateways' answers
        # to replay commands, storegate.gateway.replayed)
        purchases = stored_ids(postgres_url, "storegate.purchase.completed.v1")
        assert set(purchases) == set(accepted), "stored purchases no gateway accepted"
        assert survivor.poll() is None, "the surviving central instance died"
        hold.touch()
        for p in procs[:len(STORES)]:
            assert p.wait(60) == 0, "a gateway did not stop cleanly"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for b in brokers:
            b.kill()
        cluster.stop()


def test_a_gap_in_the_stream_is_closed_by_replay(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    """Events lost between a store and central (here: deleted from the stream before
    central read them) are found as a sequence gap, asked for with the signed replay
    command (central -> cluster MQTT -> the store's bridge -> gateway), and stored."""
    cluster = start_cluster(tmp_path / "nats")
    procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = []
    broker = None
    try:
        asyncio.run(create_stream(cluster))
        store = STORES[0]
        broker = start_store_broker(tmp_path / "broker", cluster, store)
        config = write_config(tmp_path / "gw.toml", port=broker.port,
                              storage=tmp_path / "outbox.db", store=store, gateway="gw-1")
        log = tmp_path / "accepted.log"
        hold = tmp_path / "release"
        procs.append(start_driver(config, start=0, count=200, log=log, drain=True,
                                  hold=hold, stderr=tmp_path / "gw.err"))
        wait_for(lambda: len(read_log(log)) == 200 and events_in_stream(cluster) >= 200,
                 60, "200 events in the stream")
        lost = asyncio.run(delete_events(cluster, [20, 21, 22, 150]))
        assert len(lost) == 4

        key = write_central_key(tmp_path / "central.key")
        procs.append(start_central(postgres_url, cluster, tmp_path / "central.log", key))
        accepted = read_log(log)
        wait_for(lambda: set(accepted) <= set(stored_ids(postgres_url)), 90,
                 "the lost events replayed and stored")
        assert set(lost) <= set(stored_ids(postgres_url))
        # the gap scanner records each gap closed on its next pass
        wait_for(lambda: gap_states(postgres_url) == {(21, 23): "closed", (151, 151): "closed"},
                 30, f"the gaps recorded closed: {gap_states(postgres_url)}")
        hold.touch()
        assert procs[0].wait(60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        if broker is not None:
            broker.kill()
        cluster.stop()


def gap_states(db: str) -> dict[tuple[int, int], str]:
    """(first, last) sequence -> the latest state central recorded for that gap."""
    d = Database(Target.parse(db))
    try:
        rows = d.read("SELECT first, last, state FROM gaps ORDER BY found_at")
        return {(int(r[0]), int(r[1])): str(r[2]) for r in rows}
    finally:
        d.close()


def events_in_stream(cluster: NatsCluster) -> int:
    async def go() -> int:
        nc = await cluster.connect()
        try:
            info = await nc.jetstream().stream_info("STOREGATE_EVENTS",
                                                    subjects_filter="storegate.v1.*.*.events.>")
            return int(sum((info.state.subjects or {}).values()))
        finally:
            await nc.close()
    return asyncio.run(go())


async def delete_events(cluster: NatsCluster, positions: list[int]) -> list[str]:
    """Delete the events at these positions (0-based, among the stream's events) from
    the stream; returns their ids."""
    nc = await cluster.connect()
    try:
        js = nc.jetstream()
        info = await js.stream_info("STOREGATE_EVENTS")
        seqs: list[int] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("STOREGATE_EVENTS", seq)
            if ".events." in (msg.subject or ""):
                seqs.append(seq)
        ids = []
        for pos in positions:
            msg = await js.get_msg("STOREGATE_EVENTS", seqs[pos])
            ids.append(json.loads(msg.data or b"{}")["id"])
            assert await js.delete_msg("STOREGATE_EVENTS", seqs[pos])
        return ids
    finally:
        await nc.close()


def test_a_bad_source_url_is_one_clear_line(tmp_path: Path) -> None:
    r = storegate("central", "--source", "mqtt://broker:1883", "--http-port", "0",
                  "--storage", str(tmp_path / "central.db"))
    one_clear_line(r, "not a NATS URL", "mqtt://broker:1883")


def test_a_nats_ca_file_that_is_not_there_is_one_clear_line(tmp_path: Path) -> None:
    r = storegate("central", "--source", "tls://central@127.0.0.1:4222", "--http-port", "0",
                  "--nats-cafile", str(tmp_path / "missing.pem"),
                  "--storage", str(tmp_path / "central.db"))
    one_clear_line(r, "as the NATS cluster's CA", "missing.pem")


def test_a_batch_the_handler_cannot_store_is_handed_back_and_comes_again(
        tmp_path: Path) -> None:
    """Storage down: nothing acked, the batch is redelivered, stored once it is back."""
    from storegate.adapters.central.nats_source import NatsSource, NatsSourceSettings

    cluster = start_cluster(tmp_path / "nats")
    try:
        asyncio.run(create_stream(cluster))
        stored: list[tuple[str, bytes]] = []
        calls = {"n": 0}

        def handler(batch: Sequence[tuple[str, bytes]], received_at: float) -> None:
            calls["n"] += 1
            if calls["n"] <= 2:
                raise OSError("database unreachable")  # nothing committed
            stored.extend(batch)

        # 50 messages as a store's bridge sends them (MQTT, the store's login: central's
        # login may not publish events)
        store = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bridge-test",
                            protocol=mqtt.MQTTv311)
        store.username_pw_set(STORES[0], PASSWORD)
        store.tls_set(ca_certs=str(cluster.ca))
        store.connect("127.0.0.1", cluster.mqtt_ports[0])
        store.loop_start()
        for i in range(50):
            store.publish(f"storegate/v1/{STORES[0]}/gw-1/events/purchase",
                          f'{{"n": {i}}}'.encode(), qos=1).wait_for_publish(10)
        store.disconnect()
        store.loop_stop()
        wait_for(lambda: stream_state(cluster)[0] >= 50, 30, "50 in the stream")

        async def go() -> NatsSource:
            source = NatsSource(NatsSourceSettings(
                servers=tuple(cluster.urls), user="central", password=PASSWORD, batch=20,
                ca_file=str(cluster.ca)),
                handler)
            stop = asyncio.Event()
            task = asyncio.create_task(source.run(stop))
            deadline = asyncio.get_running_loop().time() + 60
            while len(stored) < 50 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
            stop.set()
            await task
            return source

        source = asyncio.run(go())
        assert sorted(json.loads(p)["n"] for _, p in stored) == list(range(50))
        assert source.counts.handler_failures == 2
        assert source.counts.redelivered >= 20  # the handed-back batches came again
        assert source.counts.acked == 50
        assert source.last_error is not None and "database unreachable" in source.last_error
        wait_for(lambda: consumer_settled(cluster), 30, "nothing left unacked")
    finally:
        cluster.stop()


def _probe(port: int, *, tls: ssl.SSLContext | None = None,
           info_first: bool = True, cluster: str = "") -> tuple[bytes, bytes]:
    """A raw connection to a node's port: (the server's INFO line if it sends one
    before TLS, everything it said after our CONNECT and PING until it closed). A PONG
    means it let us in. ``cluster``: a route's CONNECT, naming the cluster."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        info = b""
        while info_first and not info.endswith(b"\r\n"):
            chunk = raw.recv(4096)
            if not chunk:
                break
            info += chunk
        sock: socket.socket = raw
        after = b""
        try:
            if tls is not None:
                sock = tls.wrap_socket(raw, server_hostname="127.0.0.1")
            connect = {"verbose": False, "pedantic": False}
            if cluster:
                connect |= {"name": "NINTRUDER", "cluster": cluster, "headers": True}
            sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            while b"PONG" not in after and (chunk := sock.recv(4096)):
                after += chunk
        except (ssl.SSLError, ConnectionError) as e:
            after += f"<{type(e).__name__}>".encode()
        return info, after


def test_a_plain_client_and_a_route_without_the_nodes_certificate_are_refused(
        tmp_path: Path) -> None:
    """The shipped cluster: TLS only on the client port, mutual TLS with central's CA on
    the route port (routes carry every store's events)."""
    from tests.support.store_broker import TestCA

    cluster = start_cluster(tmp_path / "nats")
    try:
        node = cluster.nodes[0]
        # the client port: central over TLS gets in (the control)...
        async def tls_client() -> bool:
            nc = await cluster.connect()
            try:
                await nc.flush(5)
                return bool(nc.is_connected)
            finally:
                await nc.close()
        assert asyncio.run(tls_client())
        # ...a plain client does not: the server wants a TLS handshake after its INFO,
        # and our plain CONNECT (no password needed to show it) ends the connection
        info, after = _probe(node.ports.client)
        assert b'"tls_required":true' in info
        assert b"PONG" not in after, after

        # the route port: TLS first (it says nothing before the handshake); a plain
        # CONNECT is refused...
        _, after = _probe(node.ports.cluster, info_first=False, cluster="storegate-central")
        assert b"PONG" not in after and b"INFO" not in after, after
        # ...and so is TLS with a certificate central's CA did not issue (a would-be
        # node that could otherwise read every store's events)
        (tmp_path / "rogue").mkdir()
        rogue = TestCA(tmp_path / "rogue")
        issued = rogue.issue("nats-9", tmp_path / "rogue" / "node.pem",
                             tmp_path / "rogue" / "node.key", server=True, client_too=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the intruder trusts anything; it is refused
        ctx.load_cert_chain(str(issued.cert), str(issued.key))
        _, after = _probe(node.ports.cluster, tls=ctx, info_first=False,
                          cluster="storegate-central")
        assert b"PONG" not in after, after
        assert after.startswith(b"<"), after  # the handshake or the first read failed
        # the nodes themselves, with central's CA's certificates, form the cluster
        assert all(n.healthy() for n in cluster.nodes)
    finally:
        cluster.stop()
