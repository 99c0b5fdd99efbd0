"""The demo's children: they die with the demo (even a SIGKILLed one), and the next
demo's clean-up signals only the very processes an earlier demo started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from storegate.app.demo.children import Child, start_time, stop_leftovers
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status


@pytest.fixture
def stray() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not the demo's, with "storegate" and "mosquitto" in its command
    line (what the old clean-up took for proof of ownership)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)",
                             "storegate", "mosquitto"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_reused_pid_is_never_signalled(tmp_path: Path,
                                         stray: subprocess.Popen[bytes]) -> None:
    started = start_time(stray.pid)
    assert started is not None
    # an earlier demo's pid file, its pid since reused by the stray process
    (tmp_path / "gateway.log.pid").write_text(f"{stray.pid} {started - 1}\n")
    # an old-style file, the pid alone
    (tmp_path / "central.log.pid").write_text(f"{stray.pid}\n")
    assert stop_leftovers(tmp_path, ("gateway", "central"), 2) == []
    assert stray.poll() is None


def test_the_demos_own_leftover_is_stopped(tmp_path: Path) -> None:
    child = Child("gateway", ["sleep", "300"], log_path=tmp_path / "gateway.log")
    child.start()
    assert child.proc is not None
    pid = child.proc.pid
    try:
        assert child.pid_path.read_text().split() == [str(pid), str(start_time(pid))]
        assert stop_leftovers(tmp_path, ("gateway",), 5) == [f"gateway (pid {pid})"]
        assert child.proc.wait(10) == -signal.SIGTERM
    finally:
        child.stop(5)


def test_another_users_leftover_is_reported_not_a_crash(
        stray: subprocess.Popen[bytes]) -> None:
    """Run by an unprivileged user, the clean-up meets a root process it may not signal
    (EPERM): it says so and goes on."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the clean-up as another user")
    with tempfile.TemporaryDirectory(prefix="sg-demo-left-") as d:
        Path(d).chmod(0o755)
        (Path(d) / "gateway.log.pid").write_text(f"{stray.pid} {start_time(stray.pid)}\n")
        code = ("import logging, sys; logging.basicConfig(); "
                "from pathlib import Path; "
                "from storegate.app.demo.children import stop_leftovers; "
                "print(stop_leftovers(Path(sys.argv[1]), ('gateway',), 2))")
        run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              sys.executable, "-c", code, d], cwd=REPO, capture_output=True,
                             text=True, timeout=60, check=False,
                             env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
    assert "another user's: not stopped" in run.stderr
    assert stray.poll() is None


def test_children_die_with_a_sigkilled_demo(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; "
            "from storegate.app.demo.children import Child; "
            "c = Child('broker', ['sleep', '300'], log_path=Path(sys.argv[1]) / 'b.log'); "
            "c.start(); print(c.proc.pid, flush=True); time.sleep(300)")
    demo = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    assert demo.stdout is not None
    child = int(demo.stdout.readline())
    try:
        assert _alive(child)
        demo.kill()
        demo.wait()
        wait_for(lambda: not _alive(child), 30, "the child ending with its demo")
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_zombie_is_no_leftover(tmp_path: Path) -> None:
    """A child that died but is not reaped yet (its parent, the killed demo, is gone and
    the reaper is slow) still has /proc/<pid>/stat: it is dead, not to be waited for."""
    proc = subprocess.Popen(["true"])
    try:
        wait_for(lambda: Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1]
                 .split()[0] == "Z", 10, "true exiting (a zombie until waited for)")
        assert start_time(proc.pid) is None
        (tmp_path / "gateway.log.pid").write_text(f"{proc.pid} 1\n")
        assert stop_leftovers(tmp_path, ("gateway",), 5) == []
    finally:
        proc.wait()
