"""The demo's child processes (broker, central, gateway), each in its own session.

Ctrl-C in a terminal sends SIGINT to the whole foreground process group: a child left
in the demo's group would get it at the same moment as the demo, and the broker would
go before the gateway could drain (issue 15). In their own sessions only the demo
signals them, one at a time, in its order.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_the_demo() -> Callable[[], None] | None:
    """A preexec function: the child gets SIGTERM when the demo dies, even by SIGKILL
    (own sessions, so no terminal signal reaches it). The kernel sends it when the
    thread that started the child ends: the demo starts them from one worker thread
    that lives as long as its event loop. Linux only; elsewhere the next start's
    :func:`stop_leftovers` is what remains."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the demo died before the line above took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat field 22):
    with the pid, it names one process; a reused pid has another. None when there is
    no such process, or only its zombie (dead, waiting to be reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


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
                env=self.env, cwd=self.cwd, start_new_session=True,
                preexec_fn=_die_with_the_demo())  # noqa: PLW1509 - prctl only
        # for the next run to stop it if it outlived this demo: the pid and its start
        # time, so a pid reused by another process is never signalled
        started = start_time(self.proc.pid)
        if started is not None:  # else gone already
            self.pid_path.write_text(f"{self.proc.pid} {started}\n")
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
    the very process the pid file names (same pid and start time: a pid reused since,
    by a production gateway or the system's mosquitto say, is left alone). Returns what
    was stopped."""
    stopped = []
    for name in order:
        for pid_file in sorted(run_dir.rglob(f"{name}*.pid")):
            try:
                pid_s, started_s = pid_file.read_text().split()
                pid, started = int(pid_s), int(started_s)
            except (OSError, ValueError):
                log.warning("%s: not a pid and start time; not used", pid_file)
                continue
            if pid <= 1 or start_time(pid) != started:
                continue  # gone, or the pid is another process's now
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            except PermissionError:
                log.warning("%s (pid %d) left by an earlier demo is another user's: not "
                            "stopped (stop it yourself)", name, pid)
                continue
            deadline = time.monotonic() + timeout_s
            while start_time(pid) == started and time.monotonic() < deadline:
                time.sleep(0.1)
            if start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stopped.append(f"{name} (pid {pid})")
    return stopped
