"""The demo's broker: mosquitto with its own configuration and state directory, on
127.0.0.1:1883 when that port is free, else on a free port."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

from storegate.app.demo.children import Child
from storegate.errors import StoregateError

DEFAULT_PORT = 1883
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class DemoError(StoregateError):
    """The demo cannot start: what is missing and how to get it."""

    exit_code = 2


def mosquitto_binary() -> str | None:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen there now; SO_REUSEADDR as servers bind (mosquitto,
    uvicorn): a port left in TIME_WAIT by a closed connection is free for them."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def broker_config(state: Path, port: int) -> str:
    return (f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # as root mosquitto would drop to user 'mosquitto', who cannot write here
            + ("user root\n" if os.geteuid() == 0 else "")
            + "persistence true\n"
            f"persistence_location {state}/\n"
            f"log_dest file {state}/mosquitto.log\n"
            # never drop for a slow subscriber (the default is 1000 queued)
            "max_queued_messages 0\n")


class DemoBroker:
    """A mosquitto the demo owns (started in its own session, stopped last)."""

    def __init__(self, state: Path, port: int | None = None) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise DemoError("mosquitto is not installed: apt-get install mosquitto "
                            "(scripts/demo does it)")
        if port is None:
            port = DEFAULT_PORT if port_free(DEFAULT_PORT) else free_port()
        elif not port_free(port):
            raise DemoError(f"port {port} is taken: choose another with --mqtt-port, or "
                            "leave it out for a free one")
        self.port = port
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        conf = state / "mosquitto.conf"
        conf.write_text(broker_config(state, port))
        self.child = Child("mosquitto", [binary, "-c", str(conf)],
                           log_path=state / "mosquitto.out")

    def start(self) -> None:
        self.child.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not listening(self.port):
            if not self.child.running:
                raise DemoError(f"mosquitto exited at start:\n{self._log()}")
            if time.monotonic() > deadline:
                self.child.stop(STOP_TIMEOUT_S)
                raise DemoError(f"mosquitto not listening on {self.port} after "
                                f"{START_TIMEOUT_S:g} s:\n{self._log()}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.child.running

    def stop(self) -> int | None:
        return self.child.stop(STOP_TIMEOUT_S)

    def _log(self) -> str:
        try:
            return (self.state / "mosquitto.log").read_text(errors="replace")[-2000:]
        except OSError:
            return self.child.tail()
