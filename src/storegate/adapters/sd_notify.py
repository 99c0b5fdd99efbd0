"""systemd's notify protocol, spoken directly: one datagram per state to the socket in
``$NOTIFY_SOCKET`` (sd_notify(3)). No library needed, and nothing happens when the
gateway is not run by systemd with ``Type=notify``.

READY=1 once the gateway runs, WATCHDOG=1 from its event loop at half the
``$WATCHDOG_USEC`` period (so a loop stuck for a whole period gets the service
restarted), STOPPING=1 when the drain begins.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from typing import Final

from storegate.adapters.plumbing import sleep_until_stopped

log = logging.getLogger("storegate.systemd")

MIN_INTERVAL_S: Final = 0.1


class Notifier:
    """Thread ownership: used from the event loop only."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket (a leading NUL byte)
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self.watchdog_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if self._address and usec.isdigit() and int(usec) > 0 \
                and (not pid or pid == str(os.getpid())):
            self.watchdog_s = max(int(usec) / 2e6, MIN_INTERVAL_S)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, message: str) -> bool:
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self._address)
                s.sendall(message.encode())
        except OSError as exc:
            if not self._warned:  # once: a missing socket stays missing
                log.warning("cannot notify systemd at %s: %s", self._address.lstrip("\0"),
                            exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(f"READY=1\nSTATUS={status}")

    def stopping(self, status: str) -> bool:
        return self.send(f"STOPPING=1\nSTATUS={status}")

    async def keep_alive(self, stop: asyncio.Event) -> None:
        """WATCHDOG=1 every half period while the loop turns (only with a watchdog)."""
        if self.watchdog_s is None:
            return
        while not stop.is_set():
            self.send("WATCHDOG=1")
            if await sleep_until_stopped(stop, self.watchdog_s):
                return
