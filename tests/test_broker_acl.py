"""The store broker as shipped is least-privilege: every role x topic x publish/read.

A real mosquitto runs deploy/mosquitto/store-broker.conf under Debian's main config,
with the shipped ACL files byte for byte and password files made by mosquitto_passwd,
bridged to a second mosquitto acting as central (tests/support/store_broker.py lists
the only substitutions: file paths, ports, the bridge address).

How each verdict is observed, without a sleep:
- publish: MQTT 5 PUBACK reason code; 0x87 (not authorised) is a denial. Each row
  publishes on a connection of its own: mosquitto 2.0.11 with the shipped
  ``max_queued_messages 0`` closes a client's connection right after a 0x87 PUBACK.
- read: every client subscribes to ``#``. mosquitto 2.0 grants every SUBSCRIBE and
  applies read rules when it delivers (a SUBACK never says 0x87), so a read is judged
  by what arrives. After each publish, markers go to every reader on a path the reader
  may read, from after the tested message (same bridge hop for central's messages);
  mosquitto delivers to one client in order, so once a reader has its marker, the
  tested message would already be there if the broker let it through.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.mosquitto import free_port, mosquitto_binary
from tests.support.probe import (
    NO_MATCHING_SUBSCRIBERS,
    NOT_AUTHORIZED,
    SUCCESS,
    Probe,
    token,
)
from tests.support.store_broker import (
    PASSWORD,
    STORE,
    StoreBroker,
    debian_main,
    directive,
    start_store_broker,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

S = f"storegate/v1/{STORE}"
GATEWAYS = ("gw-1", "gw-2")
NODES = ("sc-entrance", "sc-dairy")
# A node login no reader holds: the broker makes a node's client id its login, so a
# second connection as a reader's node would close the reader's.
SPARE = "sc-spare"
# Logins that must never exist (docs): created here to show the ACL refuses them anyway.
RESERVED_GATEWAYS = ("commands", "scanners", "central", "events", "status")
RESERVED_NODES = ("*",)
# Whose deliveries are judged, each on a connection kept for the whole module. The
# reserved logins are left out: they may read nothing, so no marker could ever reach
# them (their `topic deny #` is the line that refuses their writes below).
READERS = (*GATEWAYS, *NODES, "central")


@dataclass
class Roles:
    broker: StoreBroker
    clients: dict[str, Probe]


def login(broker: StoreBroker, name: str) -> Probe:
    """A connection as ``name``: gateways on the loopback listener, nodes over TLS on
    theirs, central anonymously on the central broker. A reserved gateway login is
    written ``gateway:<login>`` (one of them is named "central")."""
    if name == "central":
        probe = Probe(name, broker.central.port)
    elif name in GATEWAYS or name.startswith("gateway:"):
        username = name.removeprefix("gateway:")
        probe = Probe(name, broker.gateway_port, username=username, password=PASSWORD)
    else:
        probe = Probe(name, broker.node_port, username=name, password=PASSWORD,
                      ca=broker.ca)
    rc = probe.connect()
    assert rc == SUCCESS, f"{name} could not connect: {rc}"
    return probe


@pytest.fixture(scope="module")
def roles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Roles]:
    broker = start_store_broker(tmp_path_factory.mktemp("store-broker"),
                                gateways=(*GATEWAYS, *RESERVED_GATEWAYS),
                                nodes=(*NODES, SPARE, *RESERVED_NODES))
    clients: dict[str, Probe] = {}
    try:
        for name in READERS:
            clients[name] = login(broker, name)
        for probe in clients.values():
            assert probe.subscribe("#") == [1]  # granted: reads are judged on delivery
        bridge_up(clients)
        yield Roles(broker, clients)
    finally:
        for probe in clients.values():
            probe.close()
        broker.stop()


def bridge_up(c: dict[str, Probe]) -> None:
    """Until the bridge carries both ways (its first connect and subscribe take a
    moment; messages before that are not queued for it)."""
    up, down = token(), token()

    def carried() -> bool:
        if not c["central"].saw(up):
            c["gw-1"].publish(f"{S}/gw-1/events/probe", up)
        if not c["gw-1"].saw(down):
            c["central"].publish(f"{S}/commands/probe", down)
        return c["central"].saw(up) and c["gw-1"].saw(down)

    wait_for(carried, 15, "the bridge carrying events up and commands down", interval=0.2)


def settle(c: dict[str, Probe], writer: str) -> None:
    """Give every reader its chance at what ``writer`` just published: a marker each
    reader may read, published after it, must have arrived."""
    if writer == "central":  # through the bridge: a marker on the same hop first
        hop = token()
        c["central"].publish(f"{S}/commands/marker", hop)
        for gw in GATEWAYS:
            c[gw].wait_for_payload(hop, "central's marker over the bridge")
    advert = token()
    assert c["sc-entrance"].publish(f"{S}/scanners/sc-entrance/adverts", advert) in (
        SUCCESS, NO_MATCHING_SUBSCRIBERS)
    for gw in GATEWAYS:
        c[gw].wait_for_payload(advert, "a node's marker advert")
    for node in NODES:
        mine = token()
        c[node].publish(f"espresense/rooms/{node}/marker/set", mine)
        c[node].wait_for_payload(mine, "its own marker setting")
    up = token()
    c["gw-1"].publish(f"{S}/gw-1/events/marker", up)
    c["central"].wait_for_payload(up, "a marker event over the bridge")


@dataclass(frozen=True)
class Row:
    writer: str
    topic: str
    readers: frozenset[str] | None  # who must receive it; None: refused (PUBACK 0x87)
    retain: bool = False

    def __str__(self) -> str:
        seen = "DENIED" if self.readers is None else ",".join(sorted(self.readers)) or "-"
        return f"{self.writer} > {self.topic} > {seen}"


def row(writer: str, topic: str, *readers: str, retain: bool = False) -> Row:
    return Row(writer, topic, frozenset(readers), retain)


def denied(writer: str, topic: str) -> Row:
    return Row(writer, topic, None)


GW = ("gw-1", "gw-2")
TABLE = [
    # --- a gateway: its own events and status go up to central, and nothing else ------
    row("gw-1", f"{S}/gw-1/events/visit", "central"),
    row("gw-1", f"{S}/gw-1/events/purchase", "central"),
    # its own status reaches central, and comes back to it (the 3.1.1 birth check)
    row("gw-1", f"{S}/gw-1/status", "central", "gw-1", retain=True),
    row("gw-2", f"{S}/gw-2/events/visit", "central"),  # gw-1 does not read it
    denied("gw-1", f"{S}/gw-2/events/visit"),  # another gateway's events
    denied("gw-1", f"{S}/gw-2/status"),  # another gateway's status
    denied("gw-1", f"{S}/gw-1/telemetry"),  # outside events/ and status
    denied("gw-1", "storegate/v1/store-0099/gw-1/events/visit"),  # another store
    denied("gw-1", f"{S}/commands/identities"),  # commands come only from central
    denied("gw-1", f"{S}/commands/events/identities"),  # issue 9's forged command
    denied("gw-1", f"{S}/commands/replay"),
    denied("gw-1", "storegate/v1/central/campaigns"),
    denied("gw-1", f"{S}/scanners/sc-entrance/adverts"),  # posing as a node
    denied("gw-1", "espresense/devices/phone-1/sc-entrance"),
    denied("gw-1", "espresense/rooms/*/max_distance/set"),
    # --- a scanner node: what it hears, to the gateways only --------------------------
    row("sc-entrance", f"{S}/scanners/sc-entrance/adverts", *GW),
    row("sc-entrance", "espresense/devices/phone-1/sc-entrance", *GW),
    row("sc-entrance", "espresense/rooms/sc-entrance/status", retain=True),
    row("sc-entrance", "espresense/rooms/sc-entrance/telemetry"),
    row("sc-entrance", "espresense/rooms/sc-entrance/max_distance"),
    row("sc-entrance", "espresense/rooms/sc-entrance/max_distance/set", "sc-entrance"),
    denied("sc-entrance", f"{S}/scanners/sc-dairy/adverts"),  # another node's name
    denied("sc-entrance", "espresense/devices/phone-1/sc-dairy"),
    denied("sc-entrance", "espresense/rooms/sc-dairy/max_distance/set"),  # another node
    denied("sc-entrance", "espresense/rooms/*/max_distance/set"),  # the whole fleet
    denied("sc-entrance", "espresense/settings/phone-1/config"),
    denied("sc-entrance", "storegate/v1/store-0099/scanners/sc-entrance/adverts"),
    denied("sc-entrance", f"{S}/sc-entrance/events/visit"),  # a node is no gateway
    denied("sc-entrance", f"{S}/gw-1/events/purchase"),
    denied("sc-entrance", f"{S}/gw-1/status"),
    denied("sc-entrance", f"{S}/commands/identities"),
    denied("sc-entrance", "storegate/v1/central/campaigns"),
    denied("sc-entrance", "homeassistant/sensor/espresense-sc-entrance/config"),
    # --- logins that must never exist: refused everything all the same ----------------
    denied("gateway:commands", f"{S}/commands/status"),  # a command of kind "status"
    denied("gateway:commands", f"{S}/commands/events/identities"),
    denied("gateway:scanners", f"{S}/scanners/events/adverts"),  # node "events"'s adverts
    denied("gateway:central", f"{S}/central/status"),
    denied("gateway:events", f"{S}/events/status"),
    denied("gateway:status", f"{S}/status/status"),
    denied("*", "espresense/rooms/*/restart/set"),
    denied("*", f"{S}/scanners/*/adverts"),
    # --- central, over the bridge: commands come down to the gateways only ------------
    row("central", f"{S}/commands/replay", "central", *GW),
    row("central", f"{S}/commands/identities", "central", *GW),
    row("central", "storegate/v1/central/campaigns", "central", *GW),
    row("central", "storegate/v1/store-0099/commands/replay", "central"),  # another store
    row("central", f"{S}/gw-1/events/visit", "central"),  # nothing comes down but commands
    row("central", f"{S}/scanners/sc-entrance/adverts", "central"),
    row("central", "espresense/rooms/*/max_distance/set", "central"),
]


@pytest.mark.parametrize("case", TABLE, ids=str)
def test_role_topic_table(roles: Roles, case: Row) -> None:
    c = roles.clients
    payload = token()
    # One connection per node login (use_username_as_clientid): a node writer takes the
    # reader's place, reading what it is let read before it publishes.
    node = case.writer in NODES
    if node:
        c[case.writer].close()
    writer = login(roles.broker, case.writer)
    if node:
        assert writer.subscribe("#") == [1]
    try:
        rc = writer.publish(case.topic, payload, retain=case.retain)
    finally:
        if node and rc != NOT_AUTHORIZED:
            c[case.writer] = writer
        else:
            writer.close()  # (a refused node's connection is closed by the broker)
            if node:
                c[case.writer] = login(roles.broker, case.writer)
                assert c[case.writer].subscribe("#") == [1]
    if case.readers is None:
        assert rc == NOT_AUTHORIZED, f"{case}: PUBACK {rc:#x}, expected 0x87"
    else:
        assert rc in (SUCCESS, NO_MATCHING_SUBSCRIBERS), f"{case}: PUBACK {rc:#x}"
    settle(c, case.writer)
    got = {r for r in READERS if c[r].saw(payload)}
    expected = set(case.readers or ())
    assert got == expected, f"{case}: delivered to {sorted(got)}"


# --- who may connect, where ---------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    what: str
    listener: str  # "gateways" (loopback, plain) or "nodes" (TLS)
    username: str | None
    password: str | None
    tls: bool
    connack: int | None  # None: no MQTT at all (the TLS port never saw a handshake)


LOGINS = [
    Login("gateway", "gateways", "gw-1", PASSWORD, False, SUCCESS),
    Login("gateway, wrong password", "gateways", "gw-1", "guess", False,
          NOT_AUTHORIZED),
    Login("gateway, no password", "gateways", "gw-1", None, False, NOT_AUTHORIZED),
    Login("anonymous on the gateways' listener", "gateways", None, None, False,
          NOT_AUTHORIZED),
    Login("node login on the gateways' listener", "gateways", "sc-entrance", PASSWORD,
          False, NOT_AUTHORIZED),
    Login("node over TLS", "nodes", SPARE, PASSWORD, True, SUCCESS),
    Login("node over TLS, wrong password", "nodes", SPARE, "guess", True,
          NOT_AUTHORIZED),
    Login("node over TLS, no password", "nodes", SPARE, None, True, NOT_AUTHORIZED),
    Login("anonymous over TLS", "nodes", None, None, True, NOT_AUTHORIZED),
    Login("gateway login on the nodes' listener", "nodes", "gw-1", PASSWORD, True,
          NOT_AUTHORIZED),
    Login("node without TLS", "nodes", SPARE, PASSWORD, False, None),
]


@pytest.mark.parametrize("attempt", LOGINS, ids=lambda x: x.what)
def test_who_may_connect(roles: Roles, attempt: Login) -> None:
    b = roles.broker
    probe = Probe(f"login-{attempt.username}",
                  port=b.gateway_port if attempt.listener == "gateways" else b.node_port,
                  username=attempt.username, password=attempt.password,
                  ca=b.ca if attempt.tls else None)
    try:
        assert probe.connect() == attempt.connack
    finally:
        probe.close()


def test_a_node_login_cannot_take_over_the_gateways_client_id(roles: Roles) -> None:
    """Client ids are broker-wide: a node login presenting the gateway's (predictable)
    client id would make mosquitto close the gateway. The node listener makes a node's
    client id its login (use_username_as_clientid), so both stay connected."""
    b = roles.broker
    gw = Probe("gw-1", b.gateway_port, username="gw-1", password=PASSWORD,
               client_id=f"storegate-{STORE}-gw-1")
    node = Probe(SPARE, b.node_port, username=SPARE, password=PASSWORD, ca=b.ca,
                 client_id=f"storegate-{STORE}-gw-1")
    try:
        assert gw.connect() == SUCCESS
        assert node.connect() == SUCCESS
        # mosquitto closes a taken-over client before it answers the newcomer's CONNECT
        assert gw.publish(f"{S}/gw-1/events/still-here", token()) in (
            SUCCESS, NO_MATCHING_SUBSCRIBERS)
        assert not gw.closed
        log = b.store.log.read_text()
        assert f"storegate-{STORE}-gw-1 already connected" not in log, log[-2000:]
    finally:
        node.close()
        gw.close()


def test_a_node_cannot_push_an_oversized_message(roles: Roles) -> None:
    """A node login (extractable from its ESP32) sending 2 MB: the broker disconnects it
    (max_packet_size) and no reader gets any of it; a gateway-sized event still passes."""
    c, b = roles.clients, roles.broker
    node = Probe(SPARE, b.node_port, username=SPARE, password=PASSWORD, ca=b.ca)
    big = token() + bytes(2_000_000)
    try:
        assert node.connect() == SUCCESS
        node.client.publish(f"{S}/scanners/{SPARE}/adverts", big, qos=1)
        wait_for(lambda: node.closed, 15, "the broker closing the oversized sender")
    finally:
        node.close()
    settle(c, "gw-1")
    assert not any(c[r].saw(big) for r in READERS)
    event = token() + bytes(1_000_000)  # an event of central's largest size
    assert c["gw-1"].publish(f"{S}/gw-1/events/big", event) in (SUCCESS,
                                                                 NO_MATCHING_SUBSCRIBERS)
    c["central"].wait_for_payload(event, "a 1 MB event over the bridge")


def test_a_last_will_speaks_only_for_its_own_gateway(roles: Roles) -> None:
    """A Will is a publish the broker makes later: on another gateway's status it is
    dropped when it fires (mosquitto 2.0.11 accepts the CONNECT and checks then); on
    the gateway's own status it reaches central."""
    c, b = roles.clients, roles.broker
    own, forged = token(), token()
    wills = [Probe("gw-1", b.gateway_port, username="gw-1", password=PASSWORD,
                   will=(f"{S}/{gw}/status", body)) for gw, body in (("gw-1", own),
                                                                     ("gw-2", forged))]
    for probe in wills:
        assert probe.connect() == SUCCESS
    for probe in wills:
        probe.drop()  # no DISCONNECT: the broker sends the Will
    log = b.store.log
    wait_for(lambda: all(f"Client {p.client_id} closed its connection" in log.read_text()
                         for p in wills), 10, "the broker noticing both connections gone")
    c["central"].wait_for_payload(own, "gw-1's own Will over the bridge")
    settle(c, "gw-1")
    assert not any(c[r].saw(forged) for r in READERS)


# --- the drop-in fits Debian's main config ----------------------------------------------


def test_drop_in_starts_under_debian_main_config(roles: Roles) -> None:
    """The fixture started it; its log has no error, and the only changes are the
    listed substitutions (checked line by line when it was written)."""
    b = roles.broker
    assert b.store.running
    lines = b.store.log.read_text().splitlines()
    startup = lines[:next(i for i, ln in enumerate(lines) if " running" in ln) + 1]
    expected = ("run as root",  # only the tests run it as root
                "does not contain '%c' or '%u'")  # read rules for every login (the ACLs say)
    assert not [ln for ln in startup if ("Error" in ln or "Warning" in ln)
                and not any(e in ln for e in expected)], startup
    shipped, tested = b.shipped.splitlines(), b.tested.splitlines()
    assert len(shipped) == len(tested)
    changed = {directive(a) for a, t in zip(shipped, tested, strict=True) if a != t}
    assert changed == {"listener", "password_file", "acl_file", "certfile", "keyfile",
                       "address", "bridge_cafile", "bridge_certfile", "bridge_keyfile"}


def test_drop_in_leaves_debian_settings_alone() -> None:
    """Debian's main config sets these; a second value stops mosquitto or overrides
    the packaged paths."""
    shipped = (Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
               / "store-broker.conf").read_text().splitlines()
    set_here = {directive(ln) for ln in shipped if not ln.startswith("#")}
    assert not set_here & {"persistence", "persistence_location", "persistence_file",
                           "pid_file", "log_dest", "include_dir", "user"}


def test_debian_main_config_stops_a_second_persistence_location(tmp_path: Path) -> None:
    """Why the drop-in must not set it: the test's main config is as strict as Debian's
    (mosquitto exits at once, a positive signal; a broker that ran would time out)."""
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "x.conf").write_text(
        f"listener {free_port()} 127.0.0.1\npersistence_location {tmp_path}/\n")
    main = tmp_path / "mosquitto.conf"
    main.write_text(debian_main(tmp_path))
    run = subprocess.run([mosquitto_binary(), "-c", str(main)], capture_output=True,
                         text=True, timeout=10, check=False)
    assert run.returncode != 0
    assert "Duplicate persistence_location" in run.stderr + run.stdout
