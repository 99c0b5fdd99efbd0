"""The fleet's shipped files and settings, without starting anything: the stream file
and central's own stream definition agree, the bridge lines say what NATS needs, every
store login is confined to its own store, and ``--source`` URLs parse or fail clearly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from nats.js.api import StreamConfig

from storegate.adapters.central.nats_source import (
    PASSWORD_ENV,
    SUBJECTS,
    NatsSourceError,
    NatsSourceSettings,
    events_stream,
)
from tests.support.nats_cluster import (
    BRIDGE,
    SHIPPED,
    STREAM_FILE,
    NatsCluster,
    NatsNode,
    Ports,
    as_tested,
    bridge_as_tested,
)

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_stream_is_the_one_central_creates() -> None:
    shipped = StreamConfig.from_response(json.loads(STREAM_FILE.read_text()))
    assert shipped.as_dict() == events_stream().as_dict()
    assert shipped.num_replicas == 3
    # every store's events and status certificates, nothing a store keeps local
    assert set(shipped.subjects or ()) == set(SUBJECTS)
    assert not any("scanners" in s or "commands" in s for s in SUBJECTS)


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key, []).append(value)
    return out


def test_the_bridge_speaks_what_nats_accepts_and_forwards_only_events() -> None:
    d = directives(BRIDGE.read_text())
    assert d["bridge_protocol_version"] == ["mqttv311"]  # NATS refuses MQTT 5
    assert d["try_private"] == ["false"]  # NATS refuses protocol level 0x84
    assert d["cleansession"] == ["false"]
    assert d["notifications_local_only"] == ["true"]
    assert len(d["address"][0].split()) == 3  # every node, to fail over
    assert sorted(d["topic"]) == sorted([
        "storegate/v1/store-0042/+/events/# out 1",
        "storegate/v1/store-0042/+/status out 1",
        "storegate/v1/store-0042/commands/# in 1",
        "storegate/v1/central/# in 1",
    ])
    # the store broker's own bridge section is the one this file replaces: same topics
    single = directives((REPO / "deploy" / "mosquitto" / "store-broker.conf").read_text())
    assert sorted(single["topic"]) == sorted(d["topic"])


def test_every_store_login_is_confined_to_its_own_store() -> None:
    text = (SHIPPED / "accounts.conf").read_text()
    for store in re.findall(r"user: (store-\d+)", text):
        block = text[text.index(f"user: {store}"):]
        block = block[:block.index("}\n            }") if "}\n            }" in block
                      else len(block)]
        subjects = re.findall(r'"(storegate\.[^"]+)"', block)
        assert subjects, store
        for subject in subjects:
            level = subject.split(".")[2]
            assert level in (store, "central"), (store, subject)
        assert 'allowed_connection_types: ["MQTT"]' in block
        assert "password: $STOREGATE_" in block  # from the environment, never the file


def test_the_test_cluster_changes_only_ports_routes_and_paths(tmp_path: Path) -> None:
    shared = (SHIPPED / "central-cluster.conf").read_text()
    ports = [Ports(10 + i, 20 + i, 30 + i, 40 + i) for i in range(3)]
    tested = as_tested(shared, ports[0], ports, tmp_path)
    changed = [(a, b) for a, b in zip(shared.splitlines(), tested.splitlines(), strict=True)
               if a != b]
    # 3 listens, http, store_dir, 7 certificate files (client, route and MQTT TLS), 3 routes
    assert len(changed) == 15
    assert f"ca_file: {tmp_path}/certs/central-ca.pem" in tested  # the routes' CA
    assert "listen: 127.0.0.1:30" in tested  # the MQTT block's listener
    assert "nats-route://127.0.0.1:22" in tested


def test_the_test_bridge_changes_only_addresses_ca_and_password(tmp_path: Path) -> None:
    nodes = [NatsNode(i + 1, Ports(1, 2, 3000 + i, 4), tmp_path) for i in range(3)]
    cluster = NatsCluster(nodes, tmp_path / "ca.pem")
    tested = bridge_as_tested(BRIDGE.read_text(), cluster, "store-0043")
    assert "address 127.0.0.1:3000 127.0.0.1:3001 127.0.0.1:3002" in tested
    assert "store-0042" not in tested
    assert "topic storegate/v1/store-0043/+/events/# out 1" in tested


def test_source_urls() -> None:
    s = NatsSourceSettings.from_url(
        "nats://central@n1.example.net:4222,n2.example.net:4222?durable=c2&batch=64",
        {PASSWORD_ENV: "secret"})
    assert s.servers == ("nats://n1.example.net:4222", "nats://n2.example.net:4222")
    assert (s.user, s.password, s.durable, s.batch, s.replicas) == (
        "central", "secret", "c2", 64, 3)
    assert "secret" not in repr(s)
    plain = NatsSourceSettings.from_url("tls://h:4222", {})
    assert plain.servers == ("tls://h:4222",) and plain.user is None
    for bad, says in (("mqtt://h:1883", "not a NATS URL"), ("nats://", "no server"),
                      ("nats://h:4222?batch=many", "integers"),
                      ("nats://h:4222?group=x", "unknown option"),
                      ("nats://h:4222?batch=0", "batch must be")):
        with pytest.raises(NatsSourceError, match=says):
            NatsSourceSettings.from_url(bad, {})


def test_commands_mqtt_addresses_list_every_node() -> None:
    from storegate.adapters.mqtt_client import MqttSettings
    from storegate.app.central.fleet import mqtt_addresses

    s = MqttSettings(host="n1.example.net:8883,n2.example.net:8883, n3.example.net",
                     port=1883, client_id="c")
    assert mqtt_addresses(s) == [("n1.example.net", 8883), ("n2.example.net", 8883),
                                 ("n3.example.net", 1883)]
    with pytest.raises(NatsSourceError, match="no MQTT address"):
        mqtt_addresses(MqttSettings(host=" , ", port=1883, client_id="c"))


def test_the_client_and_route_ports_are_tls_only() -> None:
    """No plain port but loopback monitoring (the refusals themselves are checked on a
    running cluster: tests/test_fleet.py)."""
    text = (SHIPPED / "central-cluster.conf").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.strip().startswith("#"))
    top_tls = re.search(r"^tls \{([^}]*)\}", code, re.M)
    assert top_tls is not None and "cert_file: /etc/nats/certs/node.pem" in top_tls.group(1)
    cluster = code[code.index("cluster {"):code.index("mqtt {")]
    route_tls = re.search(r"tls \{([^}]*)\}", cluster)
    assert route_tls is not None
    assert "ca_file: /etc/nats/certs/central-ca.pem" in route_tls.group(1)
    assert "insecure" not in code  # never skip verifying a peer
    assert "http: 127.0.0.1:" in code


def test_a_ca_file_central_cannot_use_is_a_clear_error(tmp_path: Path) -> None:
    from tests.support.store_broker import TestCA

    s = NatsSourceSettings.from_url("tls://central@h:4222", {}, ca_file=str(tmp_path / "no.pem"))
    with pytest.raises(NatsSourceError, match="cannot use .*no.pem.* as the NATS cluster's CA"):
        s.tls_context()
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(NatsSourceError, match="cannot use"):
        NatsSourceSettings(servers=("tls://h:4222",), ca_file=str(tmp_path / "junk.pem"),
                           ).tls_context()
    ca = TestCA(tmp_path)
    assert NatsSourceSettings(servers=("tls://h:4222",), ca_file=str(ca.path)).tls_context()
    assert NatsSourceSettings(servers=("tls://h:4222",)).tls_context() is None
