"""A real mosquitto broker on a free loopback port, which tests can kill and restart."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from tests.support.waiting import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")


class Mosquitto:
    """One broker process; ``kill`` is SIGKILL (a crash), ``stop`` is SIGTERM."""

    def __init__(self, workdir: Path, port: int | None = None, extra: str = "",
                 *, config: str | None = None) -> None:
        """``config``, when given, is the whole configuration (a test of a shipped file):
        it must listen on ``port`` on 127.0.0.1 and log to ``workdir/mosquitto.log``."""
        self.workdir = workdir
        self.port = port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.conf.write_text(config if config is not None else
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # As root, mosquitto drops to user 'mosquitto' and then cannot write its log
            # or persistence file in a private test directory: stay root in tests.
            + ("user root\n" if os.geteuid() == 0 else "")
            +
            # Persist sessions so a subscriber's subscription and queue survive restarts.
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            # Never drop for a slow or briefly absent subscriber (default is 1000).
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            f"log_dest file {self.log}\n"
            # SG_TEST_BROKER_LOG=all logs every packet, for debugging a test.
            + ("log_type all\n" if os.environ.get("SG_TEST_BROKER_LOG") == "all"
               else "log_type error\nlog_type warning\nlog_type notice\n")
            + extra
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.starts += 1
        wait_for(self._listening, 10, f"mosquitto on port {self.port}")

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {self.log.read_text(errors='replace')}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def restart(self) -> None:
        self.kill()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
