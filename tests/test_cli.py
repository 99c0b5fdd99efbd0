"""The storegate CLI as a user runs it: a real process, exit codes, readable output."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from storegate import __version__
from tests.support.gateway_proc import one_clear_line, start_run, storegate, write_config
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.outbox import make_outbox, purchase, telemetry
from tests.support.subscriber import Subscriber
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


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


# --- bad input never gives a traceback ------------------------------------------------

ZONES = ('store_id = "s"\ngateway_id = "g"\n[[presence.zones]]\nid = "entrance"\n'
         'scanners = ["sc-1"]\n')
ADVERT = ('{"ts": 1795000000.0, "scanner": "sc-1", "address": "5A:00:00:00:00:01", '
          '"rssi": -50}\n')
CHUNK = ('{"ts": 1795000000.0, "lane": "lane-1", "role": "printer", "dialect": "escpos", '
         '"data": "1b404142430a1d5600"}\n')
IDENTITY = ('{"customer": "c-1", "identity_key": "00112233445566778899aabbccddeeff", '
            '"rotation_exponent": 10, "beacon_time_at_registration": 0, '
            '"registered_at": %s}')


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "store.toml").write_text(ZONES)
    (tmp_path / "capture.jsonl").write_text(ADVERT)
    (tmp_path / "pos.jsonl").write_text(CHUNK)
    (tmp_path / "garbage").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "latin1.toml").write_bytes(b'name = "\xe9"\n')
    (tmp_path / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "nan.json").write_text("[" + IDENTITY % "NaN" + "]")
    (tmp_path / "deep.json").write_text("[" * 100_000)
    return tmp_path


# (arguments, with {d} the folder of files; what the one line must say)
HOSTILE = [
    # replay
    (("replay", "{d}/capture.jsonl", "-c", "{d}/store.toml", "--events-out",
      "{d}/missing/out.jsonl"), ("--events-out", "{d}/missing/out.jsonl", "cannot write")),
    (("replay", "{d}", "-c", "{d}/store.toml", "--events-out", "{d}/out.jsonl"),
     ("bad data file {d}", "cannot read the capture")),
    (("replay", "{d}/missing.jsonl", "-c", "{d}/store.toml", "--events-out", "{d}/o.jsonl"),
     ("bad data file {d}/missing.jsonl", "No such file")),
    (("replay", "{d}/capture.jsonl", "-c", "{d}/store.toml", "--identities", "{d}/nan.json",
      "--events-out", "{d}/out.jsonl"), ("bad data file {d}/nan.json", "[0]", "finite")),
    (("replay", "{d}/capture.jsonl", "-c", "{d}/store.toml", "--identities",
      "{d}/deep.json", "--events-out", "{d}/out.jsonl"), ("{d}/deep.json", "not JSON")),
    (("replay", "{d}/capture.jsonl", "-c", "{d}/store.toml", "--identities", "{d}/garbage",
      "--events-out", "{d}/out.jsonl"), ("{d}/garbage", "not UTF-8")),
    (("replay", "{d}/capture.jsonl", "-c", "{d}/store.toml", "--identities", "{d}",
      "--events-out", "{d}/out.jsonl"), ("bad data file {d}", "directory")),
    (("replay", "{d}/capture.jsonl", "-c", "{d}/store.toml", "--speed", "nan",
      "--events-out", "{d}/out.jsonl"), ("--speed nan",)),
    # pos decode
    (("pos", "decode", "{d}/pos.jsonl", "--encoding", "klingon"),
     ("--encoding 'klingon'", "unknown text encoding")),
    (("pos", "decode", "{d}/pos.jsonl", "--template", "{d}/latin1.toml"),
     ("bad data file {d}/latin1.toml", "not UTF-8")),
    (("pos", "decode", "{d}/pos.jsonl", "--template", "{d}/deep.toml"),
     ("bad data file {d}/deep.toml", "nested too deeply")),
    (("pos", "decode", "{d}/pos.jsonl", "--template", "{d}"), ("bad data file {d}",)),
    (("pos", "decode", "{d}/pos.jsonl", "--events-out", "{d}/missing/out.jsonl"),
     ("--events-out", "cannot write")),
    (("pos", "decode", "{d}"), ("bad data file {d}", "cannot read")),
    (("pos", "decode", "{d}/empty"), ("raw bytes", "--dialect")),
    (("pos", "decode", "{d}/pos.jsonl", "--lane", "a/b#"), ("--lane 'a/b#'",)),
    # others that write files named on the command line
    (("simulate", "--out-dir", "{d}/garbage"), ("--out-dir {d}/garbage", "cannot write")),
    (("simulate", "--out-dir", "{d}/sim", "--duration", "nan"), ("--duration nan",)),
    (("capture", "--out", "{d}/missing/c.jsonl", "-c", "{d}/store.toml"),
     ("{d}/missing/c.jsonl", "cannot write")),
    (("contract", "write", "{d}/garbage"), ("{d}/garbage", "cannot write the contract")),
]


@pytest.mark.parametrize(("args", "needles"), HOSTILE,
                         ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _) in enumerate(HOSTILE)])
def test_hostile_input_gets_one_clear_line_and_exit_2(
        files: Path, args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    d = str(files)
    r = storegate(*(a.format(d=d) for a in args))
    line = one_clear_line(r, *(n.format(d=d) for n in needles))
    if "bad data file" in line:
        assert "config error" not in line  # the config is fine: a data file is not


def test_out_of_range_capture_lines_are_counted_with_their_numbers(files: Path) -> None:
    # ts 1e300 once hung replay (and crashed pos decode): now a numbered bad line each
    (files / "capture.jsonl").write_text(
        ADVERT + ADVERT.replace("1795000000.0", "1e300") + ADVERT.replace("-50", "NaN")
        + '{"ts": ' + "1" * 100_000 + "}\n" + ADVERT.replace("1795000000.0", "1795000001.0"))
    r = storegate("replay", str(files / "capture.jsonl"), "-c", str(files / "store.toml"),
                  "--events-out", str(files / "out.jsonl"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "replayed 2 adverts" in r.stderr and "3 bad line(s)" in r.stderr
    assert "bad line 2: ts must be epoch seconds" in r.stderr
    assert "bad line 3: rssi" in r.stderr
    assert "bad line 4: line longer than" in r.stderr

    (files / "pos.jsonl").write_text(CHUNK + CHUNK.replace("1795000000.0", "-1e300")
                                     + CHUNK.replace("escpos", "teletype"))
    r = storegate("pos", "decode", str(files / "pos.jsonl"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "bad line 2: ts must be epoch seconds" in r.stderr
    assert "bad line 3: unknown dialect 'teletype'" in r.stderr
    assert "2 bad capture line(s)" in r.stderr


def test_binary_garbage_and_empty_captures_are_reported_not_fatal(files: Path) -> None:
    for name in ("garbage", "empty"):
        r = storegate("replay", str(files / name), "-c", str(files / "store.toml"),
                      "--events-out", str(files / "out.jsonl"))
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert "replayed 0 adverts" in r.stderr
        r = storegate("pos", "decode", str(files / name), "--dialect", "escpos")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
