"""`storegate demo`, the store in a box (issue 15): headless counts that add up, and
Ctrl-C on a real terminal stopping everything in order (the gateway drains before the
broker goes; the last status on the broker is a clean "offline")."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import signal
import socket
import sqlite3
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from storegate.adapters.outbox import OutboxReader
from tests.support.gateway_proc import REPO, env
from tests.support.mosquitto import free_port
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

COUNTS = {"visits", "purchases", "purchases_by_lane", "offers_issued", "offers_suppressed",
          "redemptions", "pickups", "events_acked", "events_stored_central", "events_seen",
          "drained", "last_status", "outbox_depth", "duration_s"}


def _demo_argv(state: Path, mqtt_port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "storegate", "--log-format", "json", "demo",
            "--state-dir", str(state), "--mqtt-port", str(mqtt_port),
            "--http-port", str(free_port()), "--every", "3", *extra]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_headless_demo_prints_one_line_of_counts_that_add_up(tmp_path: Path) -> None:
    state = tmp_path / "box"
    proc = subprocess.run(
        _demo_argv(state, free_port(), "--headless", "--duration", "60"),
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    counts = json.loads(lines[0])
    assert set(counts) == COUNTS
    # the whole story happened: shoppers walked in, both tills sold, offers were
    # issued and some suppressed, a real token from the customer app was redeemed at a
    # till, an order was collected
    assert counts["visits"] > 0 and counts["purchases"] >= 2
    assert counts["offers_issued"] > 0 and counts["offers_suppressed"] > 0
    assert 1 <= counts["redemptions"] <= counts["offers_issued"]
    assert counts["pickups"] >= 1
    # every event the broker acknowledged reached the demo's subscriber, and the outbox
    # is empty: nothing accepted was left behind
    assert counts["drained"] is True and counts["outbox_depth"] == 0
    assert counts["events_acked"] == counts["events_seen"] > 0
    if counts["events_stored_central"] is not None:  # central in this build
        assert counts["events_stored_central"] == counts["events_acked"]
        _pickups_went_through_central(state / "central" / "central.db", counts["pickups"])
    assert counts["last_status"] == "offline/shutdown"
    with OutboxReader(state / "demo" / "outbox.db") as reader:
        st = reader.stats()
    assert st.depth == 0 and st.last_sequence == counts["events_acked"]
    gateway_log = (state / "gateway.log").read_text()
    assert '"level": "error"' not in gateway_log and "Traceback" not in gateway_log
    assert "gateway stopped (drained, 0 event(s) left in the outbox)" in gateway_log
    # both lanes sold, read by the real taps: lane-1 from its printer's ESC/POS,
    # lane-2 from its register's Shtrih-M frames
    assert set(counts["purchases_by_lane"]) == {"lane-1", "lane-2"}
    assert sum(counts["purchases_by_lane"].values()) == counts["purchases"]


def _pickups_went_through_central(db: Path, pickups: int) -> None:
    """Central is the source of the store's registry and of its pickup orders, as in
    production: the app users enrolled there with consent proof, the registry the
    gateway applied came from central, and each pickup counted is an order central
    recorded collected, whose customers command the gateway applied (nothing stale)."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        assert c.execute("SELECT COUNT(*) FROM customers").fetchone()[0] == 30
        proofs = {json.loads(r[0])["method"] for r in c.execute("SELECT proof FROM consents")}
        assert proofs == {"app_toggle"}
        collected = c.execute("SELECT COUNT(*) FROM pickups WHERE state = 'collected'"
                              ).fetchone()[0]
        assert collected >= pickups
        answers = [json.loads(r[0]) for r in c.execute(
            "SELECT data FROM events WHERE type = 'storegate.gateway.customers_applied.v1'")]
        sent = {r[0]: r[1] for r in c.execute("SELECT id, purpose FROM commands")}
    # every customers command the gateway answered was central's; the registry came
    # whole (replace) and each collected order's upsert was applied
    assert answers and all(a["command_id"] in sent for a in answers)
    assert any(a["op"] == "replace" and a["applied"] and a["received"] == 30
               for a in answers)
    upserts = [a for a in answers if a["op"] == "upsert" and a["applied"] and not a["stale"]]
    assert len(upserts) >= pickups


def _controlling_tty() -> None:
    """In the child, after setsid: the pty on stdin becomes its terminal, as a shell's."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_ctrl_c_on_a_terminal_stops_everything_in_order(tmp_path: Path) -> None:
    state = tmp_path / "box"
    mqtt_port = free_port()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, b"\x00\x28\x00\xa0\x00\x00\x00\x00")  # 40x160
    screen = bytearray()

    def read_screen() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            screen.extend(data)

    e = env()
    e["TERM"] = "xterm-256color"
    proc = subprocess.Popen(_demo_argv(state, mqtt_port), cwd=REPO, env=e,
                            stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, preexec_fn=_controlling_tty)  # noqa: PLW1509
    os.close(slave)
    reader = threading.Thread(target=read_screen, daemon=True)
    reader.start()
    subscriber = None
    try:
        wait_for(lambda: _listening(mqtt_port) or proc.poll() is not None, 30,
                 "the demo's broker")
        assert proc.poll() is None, screen.decode(errors="replace")[-3000:]
        subscriber = Subscriber(mqtt_port, client_id="test-demo-ctrl-c")
        wait_for(lambda: subscriber is not None and subscriber.of_type(
            "storegate.purchase.completed.v1"), 90, "a purchase from a till")
        wait_for(lambda: b"running" in screen, 30, "the view showing the demo running")
        os.write(master, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground group
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, screen.decode(errors="replace")[-3000:]
    # the last status the broker held for the gateway: a clean goodbye, not the will
    assert subscriber.status, "no status seen"
    last = subscriber.status[-1]["data"]
    assert (last["state"], last["reason"]) == ("offline", "shutdown")
    subscriber.client.loop_stop()
    with OutboxReader(state / "demo" / "outbox.db") as reader:
        assert reader.stats().depth == 0
    gateway_log = (state / "gateway.log").read_text()
    assert "gateway stopped (drained, 0 event(s) left in the outbox)" in gateway_log
    demo_log = (state / "demo.log").read_text()
    order = ["producers:", "gateway: stops", "gateway stopped", "central: reads",
             "central stopped", "broker: stops last"]
    at = [demo_log.index(step) for step in order]
    assert at == sorted(at), demo_log
    text = screen.decode(errors="replace")
    assert "stopping, in order" in text and "demo stopped: drained" in text


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and b"zombie" not in Path(
        f"/proc/{pid}/status").read_bytes().lower()


def test_a_killed_demos_children_stop_with_it(tmp_path: Path) -> None:
    """Children live in their own sessions (no terminal signal reaches them), yet a
    SIGKILLed demo leaves none running: each gets SIGTERM from the kernel when the demo
    dies (PR_SET_PDEATHSIG). The next demo in that directory starts cleanly."""
    state = tmp_path / "box"
    mqtt_port = free_port()
    first = subprocess.Popen(_demo_argv(state, mqtt_port, "--headless"), cwd=REPO, env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        wait_for(lambda: "connected to" in _read(state / "gateway.log")
                 or first.poll() is not None, 90, "the first demo's gateway connected")
        pids = {name: int(p.read_text().split()[0]) for name, p in (
            ("gateway", state / "gateway.log.pid"),
            ("central", state / "central" / "central.log.pid"),
            ("broker", state / "broker" / "mosquitto.out.pid"))}
    finally:
        first.kill()
        first.wait()
    wait_for(lambda: not any(_alive(pid) for pid in pids.values()), 60,
             f"the killed demo's children ending with it: {pids}")
    second = subprocess.run(
        _demo_argv(state, mqtt_port, "--headless", "--duration", "5"), cwd=REPO,
        env=env(), capture_output=True, text=True, timeout=240, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stopped what an earlier demo left running" not in second.stderr
    assert json.loads(second.stdout)["drained"] is True


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
