"""Configuration: valid files load; every broken one names file, key and problem, exit 2."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from storegate.config import Config, load, load_default, parse
from storegate.errors import ConfigError
from tests.support.gateway_proc import one_clear_line, storegate

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


def self_signed_pem(path: Path) -> Path:
    """A real CA certificate (PEM), so TLS settings can be checked as run loads them."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.e2e
def test_cli_config_check_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    self_signed_pem(tmp_path / "ca.pem")  # GOOD names it; config check loads it as run does
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


BASE = 'store_id = "s"\ngateway_id = "g"\n'


@pytest.mark.e2e
@pytest.mark.parametrize(("text", "needle"), [
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),  # once a RecursionError
    (BASE + "[mqtt]\nport = " + "9" * 5000 + "\n", "too long to read"),  # once a ValueError
    (BASE + "[storage]\nshutdown_drain_s = inf\n", "storage.shutdown_drain_s"),  # once OK
    (BASE + "[mqtt]\nconnect_timeout_s = nan\n", "mqtt.connect_timeout_s"),
    (BASE + "[presence]\ndwell_thresholds_s = [60.0, inf]\n", "finite"),
    ("\u00ff\ufffe" * 100, "not valid TOML"),
    ("a = 1" + " " * 1_000_000 + "\nb\n", "not valid TOML"),  # a huge line
])
def test_config_check_refuses_hostile_files_in_one_line(tmp_path: Path, text: str,
                                                        needle: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    one_clear_line(storegate("config", "check", str(f)), f"config error in {f}", needle)


@pytest.mark.e2e
def test_config_check_on_empty_file_binary_garbage_and_a_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    r = storegate("config", "check", str(empty))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "store_id: Field required" in r.stderr and "gateway_id: Field required" in r.stderr
    garbage = tmp_path / "garbage.toml"
    garbage.write_bytes(bytes(range(256)) * 4)
    one_clear_line(storegate("config", "check", str(garbage)), str(garbage), "cannot read")
    one_clear_line(storegate("config", "check", str(tmp_path)), str(tmp_path), "directory")


@pytest.mark.e2e
def test_config_check_on_an_unreadable_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(BASE)
    f.chmod(0)
    if os.geteuid() != 0:  # root reads a 000 file anyway
        one_clear_line(storegate("config", "check", str(f)), str(f), "cannot read")
    loop = tmp_path / "loop.toml"  # unreadable for root too
    loop.symlink_to(loop)
    one_clear_line(storegate("config", "check", str(loop)), str(loop), "cannot read")


BEACON = ('[[beacon]]\nlabel = "door"\nkind = "fixture"\n'
          'ibeacon = { uuid = "e2c56db5-dffb-48d2-b060-d0f5a71096e0" }\n')
REPO = Path(__file__).resolve().parents[1]
TEMPLATE = (REPO / "firmware-configs" / "pos" / "templates" / "ru-generic.toml").read_text()
LANE = ('[privacy]\npseudonym_key = "' + "ab" * 32 + '"\n'
        '[[pos.lanes]]\nid = "lane-1"\ntemplate = "t.toml"\n[[pos.lanes.devices]]\n'
        'role = "printer"\ndialect = "escpos"\nport = "/dev/serial/by-id/x"\n')


@pytest.mark.e2e
@pytest.mark.parametrize(("files", "extra", "name", "needle"), [
    ({}, '[presence]\nbeacons_file = "b.toml"\n', "b.toml", "file not found"),
    ({"b.toml": b"[[beacon]\n"}, '[presence]\nbeacons_file = "b.toml"\n', "b.toml",
     "not valid TOML"),
    ({"b.toml": BEACON.replace("fixture", "nope").encode()},
     '[presence]\nbeacons_file = "b.toml"\n', "b.toml", "beacon[0].kind"),
    ({}, '[presence]\nidentities_file = "ids.json"\n', "ids.json", "file not found"),
    ({"ids.json": b'[{"customer": "c", "identity_key": "00112233445566778899aabbccddeeff", '
                  b'"rotation_exponent": 0, "beacon_time_at_registration": 0, '
                  b'"registered_at": NaN}]'},
     '[presence]\nidentities_file = "ids.json"\n', "ids.json", "[0]"),
    ({"ids.json": b"[" * 100_000}, '[presence]\nidentities_file = "ids.json"\n', "ids.json",
     "not JSON"),
    ({"t.toml": b'name = "\xff"\n'}, LANE, "t.toml", "not UTF-8"),
    ({}, LANE, "t.toml", "not found"),
    ({"ca.pem": b"not a certificate"}, '[mqtt.tls]\nca_file = "ca.pem"\n', "ca.pem",
     "CA bundle not usable"),
    ({}, '[mqtt.tls]\nca_file = "ca.pem"\n', "ca.pem", "file not found"),
])
def test_config_check_checks_the_files_run_reads(
        tmp_path: Path, files: dict[str, bytes], extra: str, name: str, needle: str) -> None:
    for fname, content in files.items():
        (tmp_path / fname).write_bytes(content)
    cfg = tmp_path / "c.toml"
    cfg.write_text(BASE + f'[storage]\npath = "{tmp_path / "outbox.db"}"\n' + extra)
    r = storegate("config", "check", str(cfg))
    one_clear_line(r, f"bad data file {tmp_path / name}", needle)
    assert "config error" not in r.stderr  # the config is right, the file is not


@pytest.mark.e2e
def test_config_check_passes_when_the_files_are_good_and_run_refuses_a_bad_one(
        tmp_path: Path) -> None:
    (tmp_path / "b.toml").write_text(BEACON)
    (tmp_path / "t.toml").write_text(TEMPLATE)
    self_signed_pem(tmp_path / "ca.pem")
    cfg = tmp_path / "c.toml"
    cfg.write_text(BASE + f'[storage]\npath = "{tmp_path / "outbox.db"}"\n'
                   '[presence]\nbeacons_file = "b.toml"\n[mqtt.tls]\nca_file = "ca.pem"\n'
                   + LANE)
    r = storegate("config", "check", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "OK (store s" in r.stdout
    # the same function stops run, before anything is opened
    (tmp_path / "b.toml").write_text("[[beacon]\n")
    r = storegate("run", "-c", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"bad data file {tmp_path / 'b.toml'}: not valid TOML" in r.stderr
    assert not (tmp_path / "outbox.db").exists()


@pytest.mark.e2e
def test_config_check_of_the_shipped_example_says_what_run_would() -> None:
    # The example names store-0042's beacons under /etc/storegate, which only exist on
    # a provisioned box (issue 15: ship or point at real firmware-configs). config check
    # must fail exactly where run would, naming the file, not pass and let run die.
    example = Path(__file__).resolve().parents[1] / "deploy" / "storegate.example.toml"
    beacons = load(example, environ={}).presence.beacons_file
    r = storegate("config", "check", str(example))
    if beacons is not None and not beacons.exists():
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert f"bad data file {beacons}: file not found" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
