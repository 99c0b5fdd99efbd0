"""Configuration: valid files load; every broken one names file, key and problem, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from storegate.config import Config, load, load_default, parse
from storegate.errors import ConfigError
from tests.support.gateway_proc import storegate

GOOD = """
store_id = "store-7"
gateway_id = "gw-1"
[mqtt]
host = "broker.local"
port = 8883
username = "gw"
[mqtt.tls]
ca_file = "ca.pem"
[storage]
path = "data/outbox.db"
"""


def test_good_config_resolves_relative_paths(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(GOOD)
    c = load(f, environ={})
    assert c.store_id == "store-7"
    assert c.mqtt.port == 8883
    assert c.storage.path == tmp_path / "data" / "outbox.db"
    assert c.mqtt.tls is not None
    assert c.mqtt.tls.ca_file == tmp_path / "ca.pem"
    assert c.client_id == "storegate-store-7-gw-1"
    assert c.storage.synchronous == "full"  # power-loss safe by default


def test_env_overrides_secrets_and_is_masked(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(GOOD)
    c = load(f, environ={"STOREGATE_MQTT__PASSWORD": "s3cret", "STOREGATE_MQTT__PORT": "1884"})
    assert c.mqtt.password is not None
    assert c.mqtt.password.get_secret_value() == "s3cret"
    assert c.mqtt.port == 1884
    assert "s3cret" not in repr(c)
    assert "s3cret" not in str(c.model_dump(mode="json"))


@pytest.mark.parametrize(
    ("text", "env", "expect"),
    [
        ('store_id = "s"\n', {}, r"c\.toml: gateway_id: Field required"),
        ('store_id = "s"\ngateway_id = "g"\n[mqtt]\nport = 70000\n', {},
         r"c\.toml: mqtt\.port: .*less than or equal to 65535 \(got 70000\)"),
        ('store_id = "s"\ngateway_id = "g"\n[mqtt]\nprot = 1\n', {},
         r"mqtt\.prot: unknown setting"),
        ('store_id = "a/b"\ngateway_id = "g"\n', {}, r"store_id: .*1-64 characters"),
        ('store_id = "s"\ngateway_id = "g"\n[storage]\nsynchronous = "off"\n', {},
         r"storage\.synchronous: Input should be 'full' or 'normal'"),
        ('store_id = "s"\ngateway_id = "g"\n[mqtt.tls]\ncert_file = "c.pem"\n', {},
         r"mqtt\.tls: .*cert_file and key_file go together"),
        ('store_id = "s"\ngateway_id = \n', {}, r"c\.toml: not valid TOML: .*line 2"),
        ('store_id = "s"\ngateway_id = "g"\n', {"STOREGATE_MQTT__PORT": "many"},
         r"environment variable STOREGATE_MQTT__PORT: mqtt\.port: .*valid integer"),
        ('store_id = "s"\ngateway_id = "g"\n', {"STOREGATE_MQTT__PASWORD": "x"},
         r"environment variable STOREGATE_MQTT__PASWORD: mqtt\.pasword: unknown setting"),
    ],
)
def test_broken_config_names_file_key_and_problem(
    tmp_path: Path, text: str, env: dict[str, str], expect: str
) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=expect) as info:
        load(f, environ=env)
    assert info.value.exit_code == 2


def test_password_never_echoed_in_errors(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('store_id = "s"\ngateway_id = "g"\n[mqtt]\npassword = 12345\n')
    with pytest.raises(ConfigError) as info:
        load(f, environ={})
    assert "12345" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: file not found"):
        load(tmp_path / "nope.toml", environ={})


def test_embedded_demo_config_is_valid(tmp_path: Path) -> None:
    c = load_default(environ={"XDG_STATE_HOME": str(tmp_path)})
    assert c.store_id == "demo-store"
    assert c.storage.path == tmp_path / "storegate" / "demo" / "outbox.db"


def test_parse_reports_several_problems_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse('store_id = "s"\n[mqtt]\nport = 0\n', source="x.toml", base=Path("/"), environ={})
    msg = str(info.value)
    assert "gateway_id: Field required" in msg
    assert "mqtt.port" in msg


def test_cli_config_check_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    r = storegate("config", "check", str(good))
    assert r.returncode == 0, r.stderr
    assert "OK (store store-7, gateway gw-1" in r.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text('store_id = "s"\ngateway_id = "g"\n[mqtt]\nport = "x"\n')
    r = storegate("config", "check", str(bad))
    assert r.returncode == 2
    assert f"config error in {bad}: mqtt.port:" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    r = storegate("run", "--config", str(bad))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_shipped_example_config_is_valid_and_complete() -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "storegate.example.toml"
    cfg = load(example, environ={})
    assert cfg.sources.ble.enabled and cfg.sources.ble.adapters[0].adapter == "hci0"
    assert cfg.sources.scanner_nodes.enabled and not cfg.sources.simulator.enabled
    # every section of the model appears in the example, so it documents everything
    text = example.read_text()
    for name, field in Config.model_fields.items():
        if hasattr(field.annotation, "model_fields"):
            assert f"[{name}" in text, name
    for name in ("ble", "scanner_nodes", "simulator", "telemetry"):
        assert f"[sources.{name}]" in text
