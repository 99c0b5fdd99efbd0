"""`storegate demo`'s pieces that need no process: the view renders what the snapshot
holds (and says honestly when central is not running), the JSON line, the token box."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from rich.console import Console

from storegate.app.cli import main
from storegate.app.demo.broker import DemoError
from storegate.app.demo.central import CentralFigures
from storegate.app.demo.run import Demo, DemoOptions, DemoResult, GatewayFigures, Snapshot
from storegate.app.demo.tally import StatusSeen, Tally, TallyCounts
from storegate.app.demo.tills import TokenBox
from storegate.app.demo.view import render
from storegate.core.topics import Topics


def _snapshot(central: CentralFigures, shutdown: list[str] | None = None) -> Snapshot:
    tally = TallyCounts(
        events=321, store_visits=17,
        by_type=Counter({"storegate.visit.entered.v1": 40, "storegate.offer.issued.v1": 12,
                         "storegate.offer.suppressed.v1": 5,
                         "storegate.offer.redeemed.v1": 4}),
        purchases_by_lane=Counter({"lane-1": 6, "lane-2": 3}),
        occupancy={"dairy": (11, 2)}, pickups_collected=2,
        status=StatusSeen("online", "started", 1, True), connected=True)
    return Snapshot(
        phase="running", started_at=1000.0, now=1075.0, broker_port=1883,
        broker_running=True, broker_stopped=False, http_base="http://127.0.0.1:8080",
        tally=tally, gateway=GatewayFigures(True, True, 3, 318, 321, "running"),
        central=central, lanes={"lane-1": 6, "lane-2": 4}, tokens_waiting=1,
        tokens_scanned=5, pickups_sent=2, zones=["entrance", "dairy"],
        log_path=Path("/tmp/box/demo.log"), shutdown=shutdown or [])


def _text(snapshot: Snapshot) -> str:
    console = Console(record=True, width=170, color_system=None)
    console.print(render(snapshot))
    return console.export_text()


def test_view_shows_the_store_the_gateway_and_the_urls() -> None:
    text = _text(_snapshot(CentralFigures(True, "ingesting", stored=318, gaps_open=0)))
    lines = text.splitlines()

    def row(label: str) -> str:
        return next(line for line in lines if label in line)

    assert "17" in row("visits (store)") and "23" in row("zone visits")
    assert "lane-1 6" in row("purchases") and "lane-2 3" in row("purchases")
    assert "12" in row("offers issued") and "5" in row("offers suppressed")
    assert "4" in row("redemptions") and "2 of 2" in row("pickups collected")
    assert "3" in row("outbox depth") and "318" in row("acked by the broker")
    assert "11" in row("dairy") and "2" in row("dairy")
    assert "318" in row("events stored")
    assert "online (started, session 1)" in text and "up 0:01:15" in text
    for url in ("http://127.0.0.1:8080/staff/sign-in?lane=lane-1",
                "http://127.0.0.1:8080/floor", "http://127.0.0.1:8080/app/demo",
                "http://127.0.0.1:8080/metrics"):
        assert url in text
    assert "Ctrl-C stops everything in order" in text


def test_view_says_when_central_is_not_running_and_the_stop_order() -> None:
    text = _text(_snapshot(CentralFigures(False, "not running: this build has no "
                                                 "`storegate central`"),
                           shutdown=["producers: ...", "gateway: drains", "broker: last"]))
    assert "not running: this build has no `storegate central`" in text
    assert "events stored" in text and "—" in text  # no figure, not a zero
    assert "stopping, in order" in text
    assert text.index("1. producers") < text.index("2. gateway") < text.index("3. broker")


def test_the_json_line_is_one_line_with_every_count() -> None:
    result = DemoResult(visits=3, purchases=2, purchases_by_lane={"lane-2": 1, "lane-1": 1},
                        offers_issued=4, offers_suppressed=1, redemptions=1, pickups=1,
                        events_acked=50, events_stored_central=None, events_seen=50,
                        drained=True, last_status="offline/shutdown", outbox_depth=0,
                        duration_s=12.34)
    line = result.json_line()
    assert "\n" not in line
    data = json.loads(line)
    assert data["events_stored_central"] is None and data["events_acked"] == 50
    assert list(data["purchases_by_lane"]) == ["lane-1", "lane-2"]
    assert data["duration_s"] == 12.3


def test_token_box_hands_out_tokens_in_order_once() -> None:
    box = TokenBox()
    assert box.take() is None and box.scanned_total == 0
    box.put("SGO1.A")
    box.put("SGO1.B")
    assert len(box) == 2
    assert [box.take(), box.take(), box.take()] == ["SGO1.A", "SGO1.B", None]
    assert box.scanned_total == 2


class _Subscribing:
    """What the tally's ``_on_connect`` needs of paho's client: ``subscribe``."""

    def subscribe(self, topics: object, qos: int = 0) -> tuple[int, int]:
        return 0, 3


def test_the_tally_is_connected_once_its_subscription_is_granted() -> None:
    """The demo starts the gateway once the tally is connected; an event published
    before the SUBACK would never be seen and the counts would not add up."""
    tally = Tally(1, Topics("demo-store", "gw-1"))
    client = _Subscribing()
    tally._on_connect(client, None, None, ReasonCode(PacketTypes.CONNACK, "Success"),  # type: ignore[arg-type]
                      None)
    assert not tally.counts().connected
    tally._on_subscribe(client, None, 3,  # type: ignore[arg-type]
                        [ReasonCode(PacketTypes.SUBACK, "Granted QoS 1")] * 2, None)
    assert tally.counts().connected


def test_a_state_dir_the_demo_did_not_make_is_never_emptied(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(DemoError, match="not a storegate demo directory"):
        Demo(DemoOptions(state_dir=precious)).prepare()
    assert (precious / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("what", ["a file", "a symbolic link", "a port out of range",
                                  "a port that is no number", "every 0 s"])
def test_a_wrong_argument_is_one_clear_line(tmp_path: Path, what: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / ".storegate-demo").write_text("")
    (real / "kept").write_text("x")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "link").symlink_to(real)
    argv, says = {
        "a file": (["--state-dir", str(tmp_path / "afile")], "is a file, not a folder"),
        "a symbolic link": (["--state-dir", str(tmp_path / "link")], "is a symbolic link"),
        "a port out of range": (["--http-port", "99999"], "99999 is not a port (1-65535)"),
        "a port that is no number": (["--mqtt-port", "x"], "'x' is not a port number"),
        "every 0 s": (["--every", "0"], "must be a positive number of seconds"),
    }[what]
    try:
        code = main(["demo", "--headless", "--duration", "1", *argv])
    except SystemExit as exc:  # argparse's own exit, after its one line
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
    assert (real / "kept").exists() and (tmp_path / "afile").read_text() == "x"
