"""Run storegate gateways as real processes (so they can be SIGKILLed) from tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.central import CENTRAL, Central

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, *, port: int, storage: Path, extra: str = "",
                 telemetry: bool = False, store: str = "s1", gateway: str = "g1",
                 central: Central | None = CENTRAL) -> Path:
    """A gateway config; it trusts ``central``'s key for signed commands."""
    path.write_text(
        f'store_id = "{store}"\ngateway_id = "{gateway}"\n'
        + (central.toml() if central is not None else "") +
        f"[mqtt]\nport = {port}\nreconnect_min_s = 0.05\nreconnect_max_s = 0.5\n"
        "connect_timeout_s = 3\n"
        f'[storage]\npath = "{storage}"\nshutdown_drain_s = 10\n'
        f"[sources.telemetry]\nenabled = {'true' if telemetry else 'false'}\ninterval_s = 1\n"
        + extra
    )
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def start_driver(config: Path, *, start: int, count: int, log: Path, drain: bool = False,
                 rate: float = 0.0, stderr: Path | None = None,
                 hold: Path | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "tests.support.driver", str(config), "--start", str(start),
           "--count", str(count), "--log", str(log)]
    if drain:
        cmd.append("--drain")
    if rate:
        cmd += ["--rate", str(rate)]
    if hold is not None:
        cmd += ["--hold", str(hold)]
    err = open(stderr, "a") if stderr else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=err,
                            text=True)


def start_run(config: Path, stderr: Path | None = None) -> subprocess.Popen[str]:
    """`storegate run` as a real process (stop it with SIGTERM)."""
    err = open(stderr, "a") if stderr else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "storegate", "--log-format", "json", "run", "--config",
         str(config)],
        cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=err, text=True,
    )


def storegate(*args: str, input_: str | None = None, timeout: float = 60,
              extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `storegate` CLI."""
    e = env()
    e.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "storegate", *args], cwd=REPO, env=e, capture_output=True,
        text=True, input=input_, timeout=timeout, check=False,
    )


def live_status(storage: Path) -> dict[str, Any]:
    """What a running gateway writes to its status file (next to its outbox)."""
    return json.loads((storage.parent / (storage.name + ".status.json")).read_text())


def read_log(log: Path) -> dict[str, int]:
    """Accepted-event log -> {event id: purchase number} (ignores a torn last line)."""
    out: dict[str, int] = {}
    if not log.exists():
        return out
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[1]) == 36:
            out[parts[1]] = int(parts[0])
    return out


def one_clear_line(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, no traceback, exactly one line on stderr, saying each needle."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return str(lines[0])
