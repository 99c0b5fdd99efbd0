"""A simulated checkout lane on real pseudo-terminals, for the demo.

Each of the lane's devices (printer, display, scanner) gets a pty pair; the configured
port path becomes a symlink to the pty's slave side, exactly where a real
``/dev/serial/by-id/...`` link would be, so the gateway's real serial taps read it.
Every ``every_s`` a customer is rung up: scanner codes, display updates, the receipt
(ESC/POS to the printer, Shtrih-M frames to the fiscal register, whichever the lane
has). The bytes come from ``sim/lane.py`` and ``sim/fiscal.py`` (pure); the ptys and the
waits live here. ``tokens``, when given, is asked for an offer token to scan (a real one,
as a customer's app shows it); without it a receipt may carry a made-up one, which the
gateway refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pty
import random
import tty
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from storegate.adapters.plumbing import sleep_until_stopped
from storegate.sim import fiscal
from storegate.sim.lane import (
    SimItem,
    SimReceipt,
    display_updates,
    escpos_job,
    random_receipt,
    scanner_codes,
)

TokenSource = Callable[[], str | None]  # an offer token a customer shows, if any


@dataclass(frozen=True, slots=True)
class LaneSimulatorStatus:
    """The simulated till: receipts rung up, and where each device's pty link is."""

    kind: Literal["lane-simulator"] = field(default="lane-simulator", init=False)
    receipts: int
    ports: Mapping[str, str]  # role -> port path

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LaneSimulatorStatus:
        """Parsed back from JSON; a missing key takes its empty value."""
        ports = d.get("ports")
        return cls(receipts=int(d.get("receipts", 0)),
                   ports={str(k): str(v) for k, v in ports.items()}
                   if isinstance(ports, Mapping) else {})


class SimulatedLane:
    def __init__(self, *, ports: dict[str, str], every_s: float, seed: int = 1,
                 encoding: str = "cp866", sleep: Callable[[float], Any] = asyncio.sleep,
                 tokens: TokenSource | None = None) -> None:
        self.name = "lane-simulator"
        self.tokens = tokens
        self.ports = ports  # role -> port path (a symlink is made there)
        self.every_s = every_s
        self.encoding = encoding
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._fds: dict[str, tuple[int, int]] = {}
        self.receipts = 0

    def _open(self) -> None:
        for role, port in self.ports.items():
            master, slave = pty.openpty()
            tty.setraw(slave)
            path = Path(port)
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            path.symlink_to(os.ttyname(slave))
            self._fds[role] = (master, slave)

    def _close(self) -> None:
        for role, (master, slave) in self._fds.items():
            for fd in (master, slave):
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(OSError):
                Path(self.ports[role]).unlink()
        self._fds.clear()

    def _write(self, role: str, data: bytes) -> None:
        fds = self._fds.get(role)
        if fds is not None:
            with contextlib.suppress(OSError):
                os.write(fds[0], data)

    async def run(self, stop: asyncio.Event) -> None:
        self._open()
        try:
            while not stop.is_set():
                if await sleep_until_stopped(stop, self.every_s):
                    return
                await self._customer(stop)
        finally:
            self._close()

    async def _customer(self, stop: asyncio.Event) -> None:
        self.receipts += 1
        r = self._receipt(random_receipt(self._rng, 10_000 + self.receipts))
        codes = scanner_codes(r)
        items = iter(r.items)
        updates = display_updates(r, self.encoding)
        self._write("display", updates[0])
        for i, code in enumerate(codes):
            if stop.is_set():
                return
            self._write("scanner", code)
            if code.startswith(b"]E0"):  # a product: the register sells it
                self._write("fiscal", _fiscal_item(next(items)))
            if i + 1 < len(updates) - 1:
                self._write("display", updates[i + 1])
            await self._sleep(self._rng.uniform(0.3, 1.2))
        for upd in updates[len(codes):]:
            self._write("display", upd)
        await self._sleep(1.0)
        self._write("fiscal", fiscal.ENQ + fiscal.shtrih_close(r.cash_minor, r.card_minor))
        self._write("printer", escpos_job(r, encoding=self.encoding))

    def _receipt(self, r: SimReceipt) -> SimReceipt:
        """With a token source, the offer scanned is a real one or none; a receipt with
        a token carries no random loyalty card (another customer's card would make the
        gateway refuse the token as someone else's)."""
        if self.tokens is None:
            return r
        token = self.tokens()
        if token is None:
            return dataclasses.replace(r, offers=())
        return dataclasses.replace(r, offers=(token,), loyalty=None)

    def status(self) -> LaneSimulatorStatus:
        return LaneSimulatorStatus(receipts=self.receipts, ports=dict(self.ports))


def _fiscal_item(item: SimItem) -> bytes:
    """What the till sends the register for one product: ENQ, the sale, its discount."""
    out = fiscal.ENQ + fiscal.shtrih_sale(item.name, item.quantity_milli, item.price_minor)
    if item.discount_minor:
        out += fiscal.ENQ + fiscal.shtrih_discount(item.discount_minor, "СКИДКА")
    return out
