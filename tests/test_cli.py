"""The storegate CLI as a user runs it: a real process, exit codes, readable output."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from storegate import __version__
from tests.support.gateway_proc import start_run, storegate, write_config
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.outbox import make_outbox, purchase, telemetry
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for


def test_help_lists_every_command() -> None:
    r = storegate("--help")
    assert r.returncode == 0
    for cmd in ("run", "config", "status", "outbox", "contract", "version", "simulate",
                "replay", "capture", "pos"):
        assert cmd in r.stdout
    r = storegate("outbox", "--help")
    for action in ("count", "list", "purge"):
        assert action in r.stdout


def test_version() -> None:
    r = storegate("version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"storegate {__version__}"


def _offline_outbox(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path / "gw.toml", port=free_port(),
                       storage=tmp_path / "data" / "outbox.db")
    box = make_outbox(tmp_path / "data" / "outbox.db")
    box.open()
    box.accept_blocking([telemetry(i) for i in range(3)] + [purchase(i) for i in range(2)])
    box.close()
    return cfg


def test_status_of_a_stopped_gateway(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gw.toml", port=free_port(),
                       storage=tmp_path / "data" / "outbox.db")
    r = storegate("status", "-c", str(cfg))
    assert r.returncode == 1
    assert "not running" in r.stdout
    assert "none yet" in r.stdout
    _offline_outbox(tmp_path)
    r = storegate("status", "-c", str(cfg), "--json")
    rep = json.loads(r.stdout)
    assert rep["running"] is False
    assert rep["outbox"]["depth"] == 5
    assert rep["outbox"]["last_sequence"] == 5
    assert rep["outbox"]["oldest_pending_age_s"] >= 0


def test_outbox_count_list_and_purge_with_confirmation(tmp_path: Path) -> None:
    cfg = str(_offline_outbox(tmp_path))
    r = storegate("outbox", "count", "-c", cfg, "--json")
    assert json.loads(r.stdout) == {"total": 5, "by_type": {
        "storegate.gateway.telemetry.v1": 3, "storegate.purchase.completed.v1": 2}}
    r = storegate("outbox", "list", "-c", cfg, "--json", "--type",
                  "storegate.purchase.completed.v1")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["sequence"] for row in rows] == [4, 5]
    assert rows[0]["topic"] == "storegate/v1/s1/g1/events/purchase"

    r = storegate("outbox", "purge", "-c", cfg, "--type", "storegate.gateway.telemetry.v1")
    assert r.returncode == 1
    assert "without confirmation" in r.stderr
    assert json.loads(storegate("outbox", "count", "-c", cfg, "--json").stdout)["total"] == 5

    r = storegate("outbox", "purge", "-c", cfg, "--type", "storegate.gateway.telemetry.v1",
                  "--yes")
    assert r.returncode == 0, r.stderr
    assert "purged 3 event(s)" in r.stdout
    rep = json.loads(storegate("status", "-c", cfg, "--json").stdout)
    assert rep["outbox"]["depth"] == 2
    assert rep["outbox"]["dropped"] == {"storegate.gateway.telemetry.v1/purge": 3}


def test_status_and_purge_while_running(tmp_path: Path, broker: Mosquitto,
                                        subscriber: Subscriber) -> None:
    cfg = write_config(tmp_path / "gw.toml", port=broker.port,
                       storage=tmp_path / "data" / "outbox.db", telemetry=True)
    proc = start_run(cfg, tmp_path / "gw.log")
    try:
        wait_for(lambda: subscriber.retained_state() == "online", 20, "gateway online")

        def connected() -> bool:
            return storegate("status", "-c", str(cfg)).returncode == 0

        wait_for(connected, 20, "status reporting a connected gateway")
        r = storegate("status", "-c", str(cfg))
        assert "running (pid" in r.stdout
        assert f"mqtt://127.0.0.1:{broker.port}  connected" in r.stdout
        rep = json.loads(storegate("status", "-c", str(cfg), "--json").stdout)
        assert rep["gateway"]["broker"]["connected"] is True
        assert rep["gateway"]["session"] >= 1
        r = storegate("outbox", "purge", "-c", str(cfg), "--yes")
        # either nothing is pending, or the running gateway's lock refuses the purge
        assert r.returncode == 0 or "in use by another storegate" in r.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    r = storegate("status", "-c", str(cfg))
    assert "not running" in r.stdout


def test_corrupt_outbox_gives_one_clear_line(tmp_path: Path) -> None:
    db = tmp_path / "data" / "outbox.db"
    db.parent.mkdir()
    db.write_bytes(b"\x00garbage" * 500)
    cfg = write_config(tmp_path / "gw.toml", port=free_port(), storage=db)
    for args in (("run", "-c", str(cfg)), ("status", "-c", str(cfg))):
        r = storegate(*args)
        assert r.returncode == 3
        assert "not a storegate outbox" in r.stderr
        assert "Traceback" not in r.stderr
    assert db.read_bytes() == b"\x00garbage" * 500
