"""deploy/install.sh's decisions, each on its own (deploy/install-lib.sh, and the checks
install.sh makes before it touches anything). Run as an unprivileged user where the
script itself runs: a check that were missing would stop at "run as root", never reach
the host's packages."""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.client import topic_matches_sub

pytestmark = pytest.mark.e2e  # runs bash, openssl and install.sh

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "deploy" / "install.sh"
LIB = REPO / "deploy" / "install-lib.sh"
DROP_IN = REPO / "deploy" / "mosquitto" / "store-broker.conf"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def lib(func: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", f'. "{LIB}"; {func} "$@"', func, *args],
                          input=stdin, capture_output=True, text=True, check=False)


@pytest.fixture
def lock_dir() -> Iterator[Path]:
    """A folder the unprivileged user reaches (pytest's tmp_path is root's only)."""
    with tempfile.TemporaryDirectory(prefix="sg-install-lock-") as d:
        Path(d).chmod(0o777)
        yield Path(d)


def install_as_nobody(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("setpriv to another user needs root (CI runs as root)")
    lock = tmp_path / "lock"
    env = {"PATH": os.environ["PATH"], "STOREGATE_INSTALL_LOCK": str(lock)}
    return subprocess.run([*NOBODY, "bash", str(INSTALL), *args], env=env,
                          capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize("store", ["../../victim", "a/b", "x&y", "..", "-x", "a b", ""])
def test_a_store_id_outside_the_id_rule_is_refused_first(lock_dir: Path, store: str) -> None:
    if store == "":  # `--store ""` is refused by the option parser itself
        result = install_as_nobody(lock_dir, "--store", store)
        assert result.returncode != 0 and "--store needs a store id" in result.stderr
        return
    result = install_as_nobody(lock_dir, "--store", store)
    assert result.returncode == 2, result.stderr
    assert "a store id is 1-64 of A-Z a-z 0-9 . _ -" in result.stderr
    assert "run as root" not in result.stderr  # refused before anything else


def test_a_second_install_waits_for_none_and_says_why(lock_dir: Path) -> None:
    lock = lock_dir / "lock"
    with lock.open("a") as held:
        lock.chmod(0o666)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first install.sh
        result = install_as_nobody(lock_dir, "--store", "store-0042")
    assert result.returncode == 1
    assert "another install.sh is running" in result.stderr, result.stderr
    free = install_as_nobody(lock_dir, "--store", "store-0042")  # lock free: next check
    assert "run as root" in free.stderr


def _cert(tmp_path: Path, san: str, days: int) -> Path:
    out = tmp_path / f"{san.replace(':', '_').replace(',', '+')}-{days}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", str(days), "-subj", "/CN=t",
                    "-addext", f"subjectAltName={san}", "-keyout", str(tmp_path / "k"),
                    "-out", str(out)], check=True, capture_output=True)
    return out


def test_a_certificate_fits_only_the_exact_names_and_not_near_expiry(tmp_path: Path) -> None:
    lan = _cert(tmp_path, "IP:192.168.10.20,DNS:box", 825)
    assert lib("cert_fits", str(lan), "192.168.10.20").returncode == 0
    assert lib("cert_fits", str(lan), "192.168.10.20", "box").returncode == 0
    # the text of the certificate contains "192.168.10.2", which is not its address
    assert lib("cert_fits", str(lan), "192.168.10.2").returncode == 1
    assert lib("cert_fits", str(lan), "bo").returncode == 1
    assert lib("cert_fits", str(lan), "192.168.10.20", "other").returncode == 1
    assert lib("cert_fits", str(_cert(tmp_path, "IP:192.168.10.20", 10)),
               "192.168.10.20").returncode == 1  # expires within 30 days: re-issued
    assert lib("cert_fits", str(tmp_path / "missing.pem"), "box").returncode == 1


def test_the_bridge_forwards_per_gateway_never_a_node_named_like_a_level() -> None:
    result = lib("bridge_per_gateway", "store-0042", "gw-1 gw-2", stdin=DROP_IN.read_text())
    assert result.returncode == 0, result.stderr
    out = [ln for ln in result.stdout.splitlines() if ln.startswith("topic ") and " out " in ln]
    assert out == ["topic storegate/v1/store-0042/gw-1/events/# out 1",
                   "topic storegate/v1/store-0042/gw-2/events/# out 1",
                   "topic storegate/v1/store-0042/gw-1/status out 1",
                   "topic storegate/v1/store-0042/gw-2/status out 1"]
    filters = [ln.split()[1] for ln in out]
    for leak in ("storegate/v1/store-0042/scanners/events/adverts",
                 "storegate/v1/store-0042/scanners/status"):
        assert not any(topic_matches_sub(f, leak) for f in filters), leak
    assert any(topic_matches_sub(f, "storegate/v1/store-0042/gw-2/events/visit")
               for f in filters)
    # the rest of the drop-in is untouched
    assert len(result.stdout.splitlines()) == len(DROP_IN.read_text().splitlines()) + 2
    # another store's lines (a sed that did not run) are an error, not a silent `+`
    assert lib("bridge_per_gateway", "store-0099", "gw-1",
               stdin=DROP_IN.read_text()).returncode == 1


@pytest.mark.parametrize(("drain", "seconds"), [("10", "60"), ("20", "60"), ("25.5", "71"),
                                                ("300", "620")])
def test_the_stop_budget_covers_the_drain(drain: str, seconds: str) -> None:
    result = lib("stop_timeout_s", drain)
    assert (result.returncode, result.stdout.strip()) == (0, seconds)


@pytest.mark.parametrize("drain", ["inf", "-5", "", "1e9x"])
def test_a_drain_that_is_no_number_is_refused(drain: str) -> None:
    assert lib("stop_timeout_s", drain).returncode == 1


def _listeners(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("listener ")]


def test_the_nodes_listeners_come_from_store_toml_every_run() -> None:
    """What deploy/README.md once asked operators to edit in the drop-in (lost at the
    next run): bind address and ESPresense's plain listener, rendered from [broker]."""
    shipped = DROP_IN.read_text()
    default = lib("render_listeners", "8883", "", "", stdin=shipped)
    assert default.returncode == 0
    assert _listeners(default.stdout) == ["listener 1883 127.0.0.1", "listener 8883"]
    bound = lib("render_listeners", "8884", "192.168.10.2", "1884", stdin=shipped)
    assert bound.returncode == 0
    assert _listeners(bound.stdout) == ["listener 1883 127.0.0.1", "listener 8884 192.168.10.2",
                                        "listener 1884 192.168.10.2"]
    plain = bound.stdout.split("listener 1884 192.168.10.2\n", 1)[1].splitlines()[:4]
    assert plain == ["allow_anonymous false", "use_username_as_clientid true",
                     "password_file /etc/mosquitto/scanners.passwd",
                     "acl_file /etc/mosquitto/scanners.acl"]
    # a drop-in without the lines to render is an error, not a silent default
    assert lib("render_listeners", "8883", "", "", stdin="listener 1883 127.0.0.1\n"
               ).returncode == 1
