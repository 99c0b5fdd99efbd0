"""The shipped bridge lines do what they say: a real store broker bridged to a real
"central" broker, with the bridge topic lines exactly as deploy/ ships them. The whole
shipped config (logins, ACLs, TLS, Debian's main config) is tests/test_broker_acl.py."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from storegate.adapters.sd_notify import Notifier
from storegate.app.gateway import Gateway
from storegate.config import load
from storegate.core.clock import clock_problem
from storegate.errors import ClockError
from tests.support.gateway_proc import env, write_config
from tests.support.mosquitto import Mosquitto
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "deploy" / "mosquitto" / "store-broker.conf"


def shipped_bridge_lines() -> list[str]:
    """The bridge settings that decide what crosses and how (not address or TLS)."""
    lines = [ln.strip() for ln in SHIPPED.read_text().splitlines()]
    keep = ("topic ", "bridge_protocol_version ", "cleansession ", "queue_qos0_messages ")
    return [ln for ln in lines if ln.startswith(keep)]


def test_bridge_forwards_events_and_status_but_never_raw_adverts(tmp_path: Path) -> None:
    central = Mosquitto(tmp_path / "central")
    central.start()
    shipped = "\n".join(shipped_bridge_lines())
    assert "cleansession false" in shipped and "topic " in shipped
    store = Mosquitto(tmp_path / "store", extra=(
        f"connection central\naddress 127.0.0.1:{central.port}\nrestart_timeout 1 2\n"
        f"{shipped}\n"))
    store.start()
    sub = Subscriber(central.port, topic="#", client_id="central-sub")
    node = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="esp32")
    node.connect("127.0.0.1", store.port)
    node.loop_start()
    try:
        wait_for(lambda: "$SYS" not in store.log.read_text() and "Connecting bridge"
                 in store.log.read_text(), 10, "bridge connecting")
        leak = {
            "storegate/v1/store-0042/scanners/esp-1/adverts": b'{"address":"5A:..."}',
            "espresense/devices/phone/entrance": b'{"mac":"5a0000000001"}',
        }
        ok = {
            "storegate/v1/store-0042/gw-1/events/visit": b'{"id":"e1"}',
            "storegate/v1/store-0042/gw-1/status": b'{"data":{"state":"online"}}',
        }
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the bridge is up and carrying
            for topic, body in {**leak, **ok}.items():
                node.publish(topic, body, qos=1).wait_for_publish(5)
            with sub.lock:
                if all(sub.by_topic.get(t) for t in ok):
                    break
            time.sleep(0.2)
        # The bridge is up. Device data once more, then a marker event: the marker
        # arriving means the adverts before it had their chance to cross.
        for topic, body in leak.items():
            node.publish(topic, body, qos=1).wait_for_publish(5)
        marker = "storegate/v1/store-0042/gw-1/events/marker"
        node.publish(marker, b'{"id":"marker"}', qos=1).wait_for_publish(5)
        wait_for(lambda: sub.by_topic.get(marker), 10, "the marker event at central")
        with sub.lock:
            seen = dict(sub.by_topic)
        assert all(seen.get(t) for t in ok), seen
        assert not any(t in seen for t in leak), seen  # device data stays in the store
        # down: commands for this store and for every store, not for other stores
        local = Subscriber(store.port, topic="storegate/v1/+/commands/#", client_id="gw")
        central_pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="central-pub")
        central_pub.connect("127.0.0.1", central.port)
        central_pub.loop_start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                for topic in ("storegate/v1/store-0042/commands/identities",
                              "storegate/v1/store-0099/commands/identities"):
                    central_pub.publish(topic, b"{}", qos=1).wait_for_publish(5)
                with local.lock:
                    if local.by_topic.get("storegate/v1/store-0042/commands/identities"):
                        break
                time.sleep(0.2)
            # Another store's command, then a marker for this store: once the marker is
            # here, the other store's command would be too if the bridge let it down.
            central_pub.publish("storegate/v1/store-0099/commands/identities", b"{}",
                                qos=1).wait_for_publish(5)
            marker = "storegate/v1/store-0042/commands/marker"
            central_pub.publish(marker, b"{}", qos=1).wait_for_publish(5)
            wait_for(lambda: local.by_topic.get(marker), 10, "the marker command locally")
            with local.lock:
                down = dict(local.by_topic)
            assert down.get("storegate/v1/store-0042/commands/identities")
            assert "storegate/v1/store-0099/commands/identities" not in down
        finally:
            central_pub.loop_stop()
            central_pub.disconnect()
            local.close()
    finally:
        node.loop_stop()
        node.disconnect()
        sub.close()
        store.kill()
        central.kill()


# --- systemd: Type=notify from the gateway's loop; the clock; the unit's budgets ------------


def _notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(30)
    return sock


def _until(sock: socket.socket, word: str, seen: list[str]) -> None:
    while not any(word in m for m in seen):
        seen.append(sock.recv(4096).decode())


def test_a_gateway_under_systemd_notifies_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    """`storegate run` as storegate.service starts it (NOTIFY_SOCKET, WATCHDOG_USEC): a
    real process, a real datagram socket, a real broker."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    cfg = write_config(tmp_path / "store.toml", port=broker.port,
                       storage=tmp_path / "data" / "outbox.db")
    # storage.status_file on the runtime directory, as deploy/storegate.example.toml
    cfg.write_text(cfg.read_text().replace(
        "[storage]\n", f'[storage]\nstatus_file = "{tmp_path / "run" / "status.json"}"\n'))
    (tmp_path / "run").mkdir()
    sock = _notify_socket(tmp_path)
    e = env()
    e.update(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="400000")
    proc = subprocess.Popen([sys.executable, "-m", "storegate", "--log-format", "json", "run",
                             "--config", str(cfg)], cwd=REPO, env=e,
                            stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    try:
        _until(sock, "READY=1", seen)
        wait_for((tmp_path / "run" / "status.json").exists, 10,
                 "the status file on the runtime directory")
        assert not (tmp_path / "data" / "outbox.db.status.json").exists()
        before = len(seen)
        _until(sock, "WATCHDOG=1", seen)  # from the loop, every WATCHDOG_USEC / 2
        seen.append(sock.recv(4096).decode())  # and again: it keeps coming
        assert sum("WATCHDOG=1" in m for m in seen[before:]) >= 2
        proc.send_signal(signal.SIGTERM)
        _until(sock, "STOPPING=1", seen)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
        broker.kill()
    ready = next(m for m in seen if "READY=1" in m)
    assert "STATUS=running" in ready
    assert not (tmp_path / "run" / "status.json").exists()  # removed at stop


def test_no_notify_socket_means_no_notifications() -> None:
    n = Notifier(environ={})
    assert not n.enabled and n.watchdog_s is None and not n.ready("x")


def test_watchdog_for_another_pid_is_not_ours(tmp_path: Path) -> None:
    sock = _notify_socket(tmp_path)
    try:
        env_ = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}
        assert Notifier(environ=env_).watchdog_s == 1.0
        assert Notifier(environ={**env_, "WATCHDOG_PID": "1"}).watchdog_s is None
        assert Notifier(environ=env_).stopping("draining")
        assert sock.recv(100) == b"STOPPING=1\nSTATUS=draining"
    finally:
        sock.close()


def test_a_clock_from_1970_is_refused_loudly(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    cfg = load(write_config(tmp_path / "store.toml", port=1,
                            storage=tmp_path / "data" / "outbox.db"), environ={})
    gateway = Gateway(cfg, wall_clock=lambda: 12.5)  # a Pi booted without its clock
    with pytest.raises(ClockError, match="1970-01-01 00:00:12 UTC") as err:
        gateway.start()
    assert err.value.exit_code == 4  # not 2: systemd restarts it until the clock is set
    assert "timedatectl" in caplog.text
    assert not cfg.storage.path.exists()  # nothing opened, nothing stamped 1970
    assert clock_problem(1_800_000_000.0) is None


def test_the_unit_covers_the_drain_and_restarts() -> None:
    unit = (REPO / "deploy" / "systemd" / "storegate.service").read_text()
    settings = dict(ln.split("=", 1) for ln in unit.splitlines()
                    if "=" in ln and not ln.startswith("#"))
    example = (REPO / "deploy" / "storegate.example.toml").read_text()
    assert "shutdown_drain_s = 10 " in example
    drain = 10
    assert int(settings["TimeoutStopSec"]) >= 2 * drain + 20
    assert settings["Type"] == "notify" and int(settings["WatchdogSec"]) > 0
    assert settings["Restart"] == "always" and settings["RestartPreventExitStatus"] == "2"
    assert settings["RuntimeDirectory"] == "storegate"
    assert "/opt/storegate/venv/bin/storegate" in settings["ExecStart"]
    assert "SupplementaryGroups" not in settings  # install.sh adds the groups that exist


def test_every_unit_that_owns_the_state_dir_keeps_it_owner_only() -> None:
    """StateDirectory= without StateDirectoryMode= resets /var/lib/storegate to 0755 at
    every start of that unit (systemd's default): the daily backup would reopen the
    outbox and identity keys to every local user."""
    units = sorted((REPO / "deploy" / "systemd").glob("*.service"))
    owning = 0
    for path in units:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        if "StateDirectory=storegate" in lines:
            owning += 1
            assert "StateDirectoryMode=0700" in lines, path.name
    assert owning == 2
