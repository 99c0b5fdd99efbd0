"""The demo's child processes (broker, central, gateway), each in its own session.

Ctrl-C in a terminal sends SIGINT to the whole foreground process group: a child left
in the demo's group would get it at the same moment as the demo, and the broker would
go before the gateway could drain (issue 15). In their own sessions only the demo
signals them, one at a time, in its order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class Child:
    """One process the demo started: its output goes to a log file in the run directory."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True)
        # for the next run to stop it if this demo is killed before it can (SIGKILL)
        self.pid_path.write_text(f"{self.proc.pid}\n")
        log.info("%s started (pid %d, log %s)", self.name, self.proc.pid, self.log_path)

    @property
    def pid_path(self) -> Path:
        return self.log_path.with_name(self.log_path.name + ".pid")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float, sig: int = signal.SIGTERM) -> int | None:
        """Signal, wait up to ``timeout_s``, then SIGKILL (said in the log). Returns the
        exit code (negative: killed by that signal)."""
        proc = self.proc
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %g s after %s; killed", self.name,  # noqa: TRY400 - no traceback to show
                          timeout_s, signal.Signals(sig).name)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self.returncode = proc.returncode
        self.proc = None
        with contextlib.suppress(OSError):
            self.pid_path.unlink()
        log.info("%s stopped (exit %s)", self.name, self.returncode)
        return self.returncode

    def tail(self, lines: int = 20) -> str:
        """The end of the child's log, for an error message."""
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def stop_leftovers(run_dir: Path, order: Sequence[str], timeout_s: float) -> list[str]:
    """Children an earlier demo in ``run_dir`` left running (it was killed before it
    could stop them): SIGTERM in ``order`` (log names: gateway first, broker last), only
    a process whose command line is still storegate's or mosquitto's. Returns what
    was stopped."""
    stopped = []
    for name in order:
        for pid_file in sorted(run_dir.rglob(f"{name}*.pid")):
            try:
                pid = int(pid_file.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue  # gone already (or not ours to read)
            if b"storegate" not in cmdline and b"mosquitto" not in cmdline:
                continue  # the pid was reused by something else
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if Path(f"/proc/{pid}").exists():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stopped.append(f"{name} (pid {pid})")
    return stopped
