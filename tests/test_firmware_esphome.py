"""The rendered ESPHome YAML is a configuration ESPHome itself accepts: `esphome config`
(schema validation, no compile) on a node of store-0042, rendered with a real store CA.

ESPHome is a tool for the machine that flashes nodes, not a storegate dependency: it is
installed once into its own virtualenv under the CI cache (SG_CI_CACHE, as the clean
root of tests/test_install.py), pinned to the version these files were checked with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storegate.app.firmware import load_fleet, render

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SG_CI_CACHE", "/var/cache/storegate-ci"))
ESPHOME_VERSION = "2026.6.5"


def esphome() -> Path:
    venv = CACHE / f"esphome-{ESPHOME_VERSION}"
    exe = venv / "bin" / "esphome"
    if not exe.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                        f"esphome=={ESPHOME_VERSION}"], check=True, timeout=900)
    return exe


def test_esphome_accepts_a_rendered_node(tmp_path: Path) -> None:
    ca = tmp_path / "store-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-subj", "/CN=test CA",
                    "-keyout", str(tmp_path / "store-ca.key"), "-out", str(ca)],
                   check=True, capture_output=True)
    out = tmp_path / "out"
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"logins": {}, "ota": {},
                                   "wifi_password": "store-wifi-pass"}))
    render(load_fleet(REPO / "firmware-configs" / "store-0042"), out, secrets_path=secrets,
           ca_file=ca)
    result = subprocess.run([str(esphome()), "config", "sc-checkout-2.yaml"],
                            cwd=out / "esphome", capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Configuration is valid!" in result.stdout + result.stderr
    assert "BEGIN CERTIFICATE" in result.stdout  # the CA made it into the node's config
