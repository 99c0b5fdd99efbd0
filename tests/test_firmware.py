"""firmware-configs/ as validated data: every shipped example loads with the functions the
gateway uses; a store folder is checked as a whole (``storegate firmware validate``) and
renders device and broker files whose secrets are made once, kept and never printed."""

from __future__ import annotations

import json
import shutil
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from storegate.app.campaign_files import load_campaigns
from storegate.app.cli import main
from storegate.app.firmware import FleetError, check_against_config, load_fleet, render
from storegate.app.pos import load_template
from storegate.app.presence_files import load_beacons
from storegate.config import PosLaneConfig, load
from storegate.core.firmware.fleet import NodesFile
from storegate.core.firmware.render import password_line, password_line_matches
from storegate.errors import DataFileError

REPO = Path(__file__).resolve().parents[1]
FW = REPO / "firmware-configs"
STORE = FW / "store-0042"
EXAMPLE_CONFIG = REPO / "deploy" / "storegate.example.toml"


def copy_store(tmp_path: Path) -> Path:
    """store-0042 with the pos/ folder beside it, as in firmware-configs/."""
    shutil.copytree(STORE, tmp_path / "fw" / "store-0042")
    shutil.copytree(FW / "pos", tmp_path / "fw" / "pos", symlinks=False)
    return tmp_path / "fw" / "store-0042"


# --- every shipped example --------------------------------------------------------------


def test_store_0042_is_valid_and_complete() -> None:
    fleet = load_fleet(STORE)
    assert fleet.store.store.id == "store-0042"
    zones = {n.zone for n in fleet.nodes}
    zone_beacons = [b for b in fleet.beacons if b.kind == "zone"]
    assert {b.zone for b in zone_beacons} == zones  # every zone has its beacon
    assert all(b.tx_power_dbm is not None and b.interval_ms and b.position
               for b in zone_beacons)
    assert {x.id for x in fleet.lanes} == {"lane-1", "lane-2"}


def test_the_example_config_agrees_with_store_0042() -> None:
    """deploy/storegate.example.toml points at /etc/storegate/firmware-configs; read here
    from the repository (the paths moved, nothing else)."""
    text = EXAMPLE_CONFIG.read_text().replace("/etc/storegate/firmware-configs", str(FW))
    data = tomllib.loads(text)
    assert data["presence"]["beacons_file"].endswith("store-0042/beacons.toml")
    cfg_file = REPO / ".pytest-example.toml"
    try:
        cfg_file.write_text(text)
        config = load(cfg_file, environ={})
    finally:
        cfg_file.unlink(missing_ok=True)
    assert check_against_config(load_fleet(STORE), config) == []
    fleet_lanes = {x.id: x for x in load_fleet(STORE).lanes}
    for lane in config.pos.lanes:  # the config's lanes are the folder's lanes
        assert lane.model_dump(exclude={"template"}) == \
            fleet_lanes[lane.id].model_dump(exclude={"template"})


def test_demo_store_files_load_as_the_gateway_reads_them() -> None:
    assert load_beacons(FW / "demo-store" / "beacons.toml")
    nodes = NodesFile.model_validate(
        tomllib.loads((FW / "demo-store" / "scanners.toml").read_text())).node
    assert len({n.name for n in nodes}) == len(nodes) == 8


def test_pos_examples_and_templates_load() -> None:
    for t in sorted((FW / "pos" / "templates").glob("*.toml")):
        load_template(t)
    lanes = tomllib.loads((FW / "pos" / "lanes.example.toml").read_text())["pos"]["lanes"]
    assert len(lanes) == 3
    for raw in lanes:
        if "template" in raw:  # shipped paths are the installed ones
            raw["template"] = str(FW / "pos" / "templates" / Path(raw["template"]).name)
        lane = PosLaneConfig.model_validate(raw)
        if lane.template:
            load_template(lane.template)


def test_campaign_example_loads() -> None:
    assert load_campaigns(FW / "campaigns" / "demo.toml")


# --- a broken folder: every problem, each named ------------------------------------------


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_problems_between_files_are_all_reported(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    d = copy_store(tmp_path)
    _edit(d / "scanners.toml", 'name = "sc-produce"', 'name = "sc-entrance"')
    _edit(d / "beacons.toml", "tx_power_dbm = -8\ninterval_ms = 500\nposition = [3.0, 2.0, 2.2]",
          "interval_ms = 500\nposition = [3.0, 2.0, 2.2]")
    _edit(d / "beacons.toml", 'zone = "dairy"', 'zone = "frozen"')
    _edit(d / "lanes.toml", 'checkout_zone = "checkout"', 'checkout_zone = "checkuot"')
    with pytest.raises(FleetError) as err:
        load_fleet(d)
    text = str(err.value)
    assert "'sc-entrance' is used twice" in text
    assert "zone-entrance) : a zone beacon needs tx_power_dbm".replace(" :", ":") in text
    assert "zone 'frozen' has no scanner node" in text
    assert "checkout_zone 'checkuot'" in text
    assert len(err.value.problems) == 4
    assert main(["firmware", "validate", str(d)]) == 2
    out = capsys.readouterr()
    assert out.err.count("\n") >= 4 and "Traceback" not in out.err


@pytest.mark.parametrize(("file", "old", "new", "says"), [
    ("store.toml", 'gateways = ["gw-1"]', 'gateways = ["commands"]', "reserved"),
    ("store.toml", 'id = "store-0042"', 'id = "store 42"', "1-64 characters"),
    ("scanners.toml", 'zone = "entrance"\n', 'zone = "entrance"\nfirmware = "espresense"\n',
     "plain_port"),
    ("scanners.toml", 'name = "sc-entrance"', 'name = "Sc-Entrance"\nfirmware = "espresense"',
     "room slug"),
    ("scanners.toml", "position = [4.0, 1.5, 2.6]", "position = [4.0, 1.5e9]", "within"),
    # a node named after a level the bridge forwards (storegate/v1/<store>/+/events/#):
    # its raw adverts would have been bridged to central
    ("scanners.toml", 'name = "sc-entrance"', 'name = "events"', "reserved"),
    ("scanners.toml", 'name = "sc-entrance"', 'name = "status"', "reserved"),
    # names ESPHome refuses as a host name
    ("scanners.toml", 'name = "sc-entrance"', 'name = "sc.entrance"', "host name"),
    ("scanners.toml", 'name = "sc-entrance"', 'name = "sc_entrance"', "host name"),
    ("scanners.toml", 'name = "sc-entrance"', 'name = "Sc-Entrance"', "host name"),
    ("scanners.toml", 'name = "sc-entrance"', f'name = "{"s" * 32}"', "at most 31"),
    # a zone is written into the rendered YAML: no line breaks, quotes or spaces
    ("scanners.toml", 'zone = "entrance"', r'zone = "entrance\nmqtt:\n  broker: evil"',
     "1-64 characters"),
    ("scanners.toml", 'zone = "entrance"', 'zone = "front door"', "1-64 characters"),
    ("beacons.toml", "tx_power_dbm = -8", "tx_power_dbm = 30", "less than or equal to 20"),
    ("beacons.toml", "interval_ms = 500", "interval_ms = 5", "greater than or equal to 20"),
    ("lanes.toml", "baudrate = 38400", "baudrate = 1", "greater than or equal to 50"),
    ("lanes.toml", "../pos/templates/ru-generic.toml", "../pos/templates/nope.toml",
     "template file not found"),
])
def test_each_file_is_checked_with_the_gateways_rules(
        tmp_path: Path, file: str, old: str, new: str, says: str) -> None:
    d = copy_store(tmp_path)
    _edit(d / file, old, new)
    with pytest.raises(DataFileError) as err:
        load_fleet(d)
    assert says in str(err.value), str(err.value)


def test_node_names_that_would_share_a_secret_key_are_refused(tmp_path: Path) -> None:
    """secrets.yaml keys are mqtt_<name> with . _ - as _: sc_produce and sc-produce
    would both read mqtt_sc_produce (the last line wins: one node gets the other's
    password). ESPresense allows _ in its room slugs, so the check is across nodes."""
    d = copy_store(tmp_path)
    _edit(d / "store.toml", "tls_port = 8883", "tls_port = 8883\nplain_port = 1884")
    _edit(d / "scanners.toml", 'name = "sc-produce"', 'name = "sc_produce"\n'
          'firmware = "espresense"')
    _edit(d / "scanners.toml", 'name = "sc-bakery"', 'name = "sc-produce"\n'
          'firmware = "espresense"')
    with pytest.raises(FleetError) as err:
        load_fleet(d)
    assert "'sc-produce' is too close to 'sc_produce'" in str(err.value), str(err.value)


def test_validate_against_a_config_names_the_disagreement(tmp_path: Path) -> None:
    d = copy_store(tmp_path)
    text = EXAMPLE_CONFIG.read_text().replace("/etc/storegate/firmware-configs", str(d.parent))
    text = text.replace('scanners = ["sc-dairy"]', 'scanners = ["sc-dairy", "sc-dairy-2"]')
    text = text.replace('"sc-produce" = [5.0, 12.0, 2.6]', '"sc-produce" = [5.0, 21.0, 2.6]')
    cfg = tmp_path / "store.toml"
    cfg.write_text(text)
    problems = [str(p) for p in check_against_config(load_fleet(d), load(cfg, environ={}))]
    assert problems == [
        "gateway config: presence.zones dairy: scanner 'sc-dairy-2' is neither a node in "
        "scanners.toml nor a BLE adapter",
        "gateway config: calibration.scanners sc-produce: [5.0, 21.0, 2.6], but "
        "scanners.toml places it at [5.0, 12.0, 2.6]"]
    assert main(["firmware", "validate", str(d), "-c", str(cfg)]) == 2


# --- render ------------------------------------------------------------------------------


class _Tagged(yaml.SafeLoader):
    """ESPHome's tags as plain values: !secret NAME -> ("secret", NAME)."""


_Tagged.add_constructor("!secret", lambda loader, node: ("secret", loader.construct_scalar(node)))
_Tagged.add_constructor("!lambda", lambda loader, node: ("lambda", loader.construct_scalar(node)))


def _ca(tmp_path: Path) -> Path:
    ca = tmp_path / "store-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n")
    return ca


def test_render_writes_every_device_file(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["firmware", "render", str(STORE), "--out", str(out),
                 "--ca", str(_ca(tmp_path))]) == 0
    printed = capsys.readouterr().out
    secrets = json.loads((out / "secrets.json").read_text())
    logins: dict[str, str] = secrets["logins"]
    assert set(logins) == {"gw-1", "sc-entrance", "sc-produce", "sc-bakery", "sc-dairy",
                           "sc-household", "sc-checkout-1", "sc-checkout-2"}
    assert len(set(logins.values())) == len(logins)  # one each
    assert all(len(p) >= 32 for p in logins.values())
    for secret in [*logins.values(), *secrets["ota"].values()]:  # never printed
        assert secret not in printed
    for path in [out / "secrets.json", out / "esphome" / "secrets.yaml",
                 out / "gateways" / "gw-1.env", *(out / "broker").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    node: dict[str, Any] = yaml.load((out / "esphome" / "sc-dairy.yaml").read_text(),
                                     Loader=_Tagged)
    mqtt = node["mqtt"]
    assert (mqtt["broker"], mqtt["port"], mqtt["username"]) == ("192.168.10.2", 8883,
                                                                "sc-dairy")
    assert mqtt["password"] == ("secret", "mqtt_sc_dairy")
    assert "BEGIN CERTIFICATE" in mqtt["certificate_authority"]
    publish = node["esp32_ble_tracker"]["on_ble_advertise"][0]["then"][0]["mqtt.publish_json"]
    assert publish["topic"] == "storegate/v1/store-0042/scanners/sc-dairy/adverts"
    assert node["esp32"]["framework"]["type"] == "esp-idf"
    esphome_secrets = yaml.safe_load((out / "esphome" / "secrets.yaml").read_text())
    assert esphome_secrets["mqtt_sc_dairy"] == logins["sc-dairy"]
    assert esphome_secrets["wifi_ssid"] == "store-0042-devices"
    env = (out / "gateways" / "gw-1.env").read_text()
    assert f"STOREGATE_MQTT__PASSWORD={logins['gw-1']}\n" in env
    lines = (out / "broker" / "scanners.passwd").read_text().splitlines()
    assert len(lines) == 7
    assert all(password_line_matches(ln, ln.split(":")[0], logins[ln.split(":")[0]])
               for ln in lines)


def test_secrets_are_made_once_and_kept(tmp_path: Path) -> None:
    d = copy_store(tmp_path)
    out = tmp_path / "out"
    first = render(load_fleet(d), out)
    assert (first.created, first.kept) == (15, 0)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    second = render(load_fleet(d), out)
    assert (second.created, second.kept, second.written) == (0, 15, 0)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # the operator adds the Wi-Fi password; a node leaves: its login stops working
    secrets = json.loads((out / "secrets.json").read_text())
    secrets["wifi_password"] = "shop-floor-wifi"
    (out / "secrets.json").write_text(json.dumps(secrets))
    _edit(d / "scanners.toml", '[[node]]\nname = "sc-household"\nzone = "household"\n'
          'position = [20.0, 9.0, 2.6]\n', "")
    _edit(d / "beacons.toml", 'zone = "household"', 'zone = "dairy"')
    third = render(load_fleet(d), out)
    assert (third.created, third.removed) == (0, 2)  # its login and its OTA password
    assert "sc-household" not in (out / "broker" / "scanners.passwd").read_text()
    assert yaml.safe_load((out / "esphome" / "secrets.yaml").read_text())[
        "wifi_password"] == "shop-floor-wifi"
    kept = json.loads((out / "secrets.json").read_text())["logins"]
    assert kept["gw-1"] == secrets["logins"]["gw-1"]


def test_an_espresense_node_gets_its_portal_settings(tmp_path: Path) -> None:
    d = copy_store(tmp_path)
    _edit(d / "store.toml", "# plain_port = 1884", "plain_port = 1884")
    _edit(d / "scanners.toml", 'zone = "produce"\n', 'zone = "produce"\nfirmware = "espresense"\n')
    out = tmp_path / "out"
    render(load_fleet(d), out)
    settings = json.loads((out / "espresense" / "sc-produce.json").read_text())
    login = json.loads((out / "secrets.json").read_text())["logins"]["sc-produce"]
    assert settings["room"] == settings["mqtt_user"] == "sc-produce"
    assert (settings["mqtt_port"], settings["mqtt_pass"]) == (1884, login)
    assert settings["discovery"] is False
    assert not (out / "esphome" / "sc-produce.yaml").exists()


def test_password_lines_match_only_their_password() -> None:
    line = password_line("gw-1", "right", lambda n: bytes(range(n)))
    assert password_line_matches(line, "gw-1", "right")
    assert not password_line_matches(line, "gw-1", "wrong")
    assert not password_line_matches(line, "gw-2", "right")
    assert not password_line_matches("gw-1:$6$abc$def", "gw-1", "right")
