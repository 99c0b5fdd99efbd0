"""A read-only tap on one POS serial line: raw bytes in, with their arrival time.

The tap listens to a line a till already uses, so it must never send anything: it never
calls ``write()``, and it opens the port with software and hardware flow control off,
whatever the tapped line uses, because on Linux ``IXOFF`` lets the kernel transmit XOFF
when our buffer fills, ``IXON`` makes the tty layer swallow 0x11/0x13 bytes from the
stream (binary ESC/POS data contains them), and ``CRTSCTS`` lets the UART drive RTS.

Reading happens in one thread per open port (blocked in ``poll()`` on the port and a
wake-up pipe), not with ``loop.add_reader``: the kernel's tty buffer is 4 KiB, so a loop
busy for a few hundred milliseconds (an fsync on an SD card) would lose bytes at
115200 baud, and arrival times taken on the loop would be the loop's, not the line's.
The thread reads whatever is available in one ``os.read`` (pyserial's ``read(n)`` waits
for ``n`` bytes or its timeout), stamps it at once, and hands batches to the loop with
``call_soon_threadsafe``: one loop wake-up per batch, order preserved.

DTR/RTS: the kernel raises both when a serial port is opened (``tty_port_block_til_ready``)
and drops them on the last close (``HUPCL``); no user-space library avoids that. pyserial
then sets them from ``Serial.dtr``/``.rts``: the default ``True`` repeats what the kernel
did, while ``None`` or ``False`` set before ``open()`` *clear* them (``TIOCMBIC``) right
after the kernel raised them, a glitch on the wire. So the tap keeps the defaults.

Unplug: Linux reports a hung-up tty as readable, then ``read()`` returns no data (pyserial
turns that into ``SerialException("device reports readiness to read but returned no
data ...")``) or raises ``EIO``. The tap checks ``tcgetattr`` (``EIO`` once hung up) to tell
an unplug from another, non-locking process reading the same port, closes the port and
reopens it with backoff once the path is back. The device path missing, busy or not
permitted is reported in :meth:`SerialTap.status` and logged once per outage; the tap
never raises over the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import select
import termios
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import serial  # type: ignore[import-untyped, unused-ignore]

from storegate.adapters.plumbing import LoopHandoff, describe_error, sleep_until_stopped
from storegate.core.backoff import Backoff
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

TapState = Literal["waiting for device", "open", "reopening", "stopped"]

READ_TIMEOUT_S: Final = 0.05  # pyserial's timeout; reads go through poll() on the fd
PRESENCE_POLL_S: Final = 0.5  # how often a missing device path is looked for (a stat)
STABLE_AFTER_S: Final = 5.0  # a port open this long resets the backoff
JOIN_TIMEOUT_S: Final = 2.0  # a reader thread stuck in the driver is abandoned after this
MAX_BACKLOG_BYTES: Final = 4 * 1024 * 1024  # waiting for the loop; beyond, oldest shed
MAX_EMPTY_READS: Final = 100  # readable-but-empty reads in a row on a live tty: give up

_WAKE: Final = b"\0"


@dataclass(frozen=True, slots=True)
class SerialTapStatus:
    """One serial tap, as the status file shows it (names and order are its keys)."""

    kind: Literal["serial"] = field(default="serial", init=False)
    name: str
    port: str
    line: str  # e.g. "9600 8N1"
    flow: str  # "rtscts", "xonxoff" or "none"
    state: str  # a TapState
    since: float  # wall time of the last change of state
    last_error: str | None
    bytes_total: int
    chunks_total: int
    last_byte_at: float | None
    opens_total: int
    last_open_at: float | None
    open_failures_total: int
    disconnects_total: int
    shed_bytes_total: int
    empty_reads_total: int
    callback_errors_total: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SerialTapStatus:
        """Parsed back from the status file; a missing key takes its empty value."""
        return cls(name=str(d.get("name", "")), port=str(d.get("port", "")),
                   line=str(d.get("line", "")), flow=str(d.get("flow", "")),
                   state=str(d.get("state", "")), since=float(d.get("since") or 0),
                   last_error=d.get("last_error"), bytes_total=int(d.get("bytes_total", 0)),
                   chunks_total=int(d.get("chunks_total", 0)),
                   last_byte_at=d.get("last_byte_at"), opens_total=int(d.get("opens_total", 0)),
                   last_open_at=d.get("last_open_at"),
                   open_failures_total=int(d.get("open_failures_total", 0)),
                   disconnects_total=int(d.get("disconnects_total", 0)),
                   shed_bytes_total=int(d.get("shed_bytes_total", 0)),
                   empty_reads_total=int(d.get("empty_reads_total", 0)),
                   callback_errors_total=int(d.get("callback_errors_total", 0)))


@dataclass(slots=True)
class _Session:
    """One open attempt and, if it opened, the reads until it ended.

    The reader thread writes ``opened_ok``, ``error`` and ``empty_reads``; the loop reads
    them only after joining the thread.
    """

    opened: asyncio.Future[None]
    ended: asyncio.Future[None]
    wake_r: int
    wake_w: int
    opened_ok: bool = False
    error: BaseException | str | None = None
    empty_reads: int = 0
    thread: threading.Thread | None = None


@dataclass(frozen=True, slots=True)
class _Outcome:
    opened: bool
    open_for_s: float


class SerialTap:
    """Bytes from one serial port, read-only, reopened across unplugs."""

    def __init__(
        self,
        *,
        name: str,
        port: str,
        baudrate: int,
        bytesize: int,
        parity: str,
        stopbits: float,
        xonxoff: bool,
        rtscts: bool,
        on_bytes: Callable[[bytes, float], None],
        backoff: Backoff,
        wall_clock: Callable[[], float] = time.time,
        read_size: int = 4096,
        poll_s: float = PRESENCE_POLL_S,
    ) -> None:
        """``xonxoff``/``rtscts`` describe the tapped line (reported in status); the tap
        itself reads with flow control off, see the module docstring.

        ``on_bytes(data, arrival_ts)`` runs on the event loop thread, in arrival order.
        ``wall_clock`` is called on the reader thread, right after each read returns.
        Raises ``ValueError`` for settings pyserial rejects.
        """
        if read_size < 1:
            raise ValueError(f"read_size must be >= 1, got {read_size}")
        self.name = name
        self.port = port
        self.baudrate = baudrate
        self.bytesize = bytesize
        self.parity = parity
        self.stopbits = stopbits
        self.xonxoff = xonxoff
        self.rtscts = rtscts
        self._on_bytes = on_bytes
        self._backoff = backoff
        self._wall = wall_clock
        self._read_size = read_size
        self._poll_s = poll_s
        self._rng = random.Random()
        self._new_serial()  # validate the settings now, not at the first open

        # (bytes, arrival time) from the reader thread to the loop, bounded in bytes
        self._handoff: LoopHandoff[tuple[bytes, float]] = LoopHandoff(
            self._drain, max_size=MAX_BACKLOG_BYTES, size=lambda chunk: len(chunk[0]))

        self._warn = LogOnce(log)  # renewed at each successful open: once per outage
        self._missing_expected = False  # after an unplug the path going away is no news
        self.state: TapState = "waiting for device"
        self.since = self._wall()
        self.last_error: str | None = None
        self.last_byte_at: float | None = None
        self.last_open_at: float | None = None
        self.bytes_total = 0
        self.chunks_total = 0
        self.opens_total = 0
        self.open_failures_total = 0
        self.disconnects_total = 0
        self.empty_reads_total = 0
        self.callback_errors_total = 0

    @property
    def shed_bytes_total(self) -> int:
        return self._handoff.shed_total

    # --- settings ------------------------------------------------------------------

    def _new_serial(self) -> Any:
        """An unopened port: pyserial validates the settings without touching the device."""
        return serial.Serial(
            port=None, baudrate=self.baudrate, bytesize=self.bytesize, parity=self.parity,
            stopbits=self.stopbits, timeout=READ_TIMEOUT_S, exclusive=True,
            xonxoff=False, rtscts=False, dsrdtr=False,  # passive: see the module docstring
        )

    @property
    def line(self) -> str:
        """``9600 8N1``, the way tills and manuals write it."""
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits:g}"

    # --- reader thread -------------------------------------------------------------

    def _read_thread(self, ser: Any, s: _Session) -> None:
        """Open, read until hang-up or wake-up, close. Every outcome ends up in ``s``."""
        try:
            ser.open()
            s.opened_ok = True
            self._handoff.post(_resolve, s.opened)
            s.error = self._pump(ser.fileno(), s)
        except Exception as exc:  # pyserial, OS and driver errors alike: the loop decides
            s.error = exc
        finally:
            with contextlib.suppress(Exception):
                ser.close()
            self._handoff.post(_resolve, s.ended)

    def _pump(self, fd: int, s: _Session) -> BaseException | str | None:
        """Read until the device hangs up (the reason) or the loop wakes us (``None``)."""
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        poller.register(s.wake_r, select.POLLIN)
        empty_in_a_row = 0
        while True:
            events = poller.poll()
            if any(ev_fd == s.wake_r for ev_fd, _ in events):
                return None
            try:
                data = os.read(fd, self._read_size)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:  # EIO: the other end went away
                return exc
            now = self._wall()
            if data:
                empty_in_a_row = 0
                self._handoff.put(((data, now),))
                continue
            # Readable but empty: a hung-up tty, or another (non-locking) process took the
            # bytes first. A hung-up tty fails every ioctl with EIO.
            try:
                termios.tcgetattr(fd)
            except termios.error:
                return "hung up: readable but no data, and the tty fails ioctls (unplugged)"
            s.empty_reads += 1
            empty_in_a_row += 1
            if empty_in_a_row >= MAX_EMPTY_READS:
                return (f"{MAX_EMPTY_READS} empty reads in a row on a live port "
                        "(another process reading it?)")

    # --- event loop ----------------------------------------------------------------

    def _drain(self) -> None:
        batch, shed = self._handoff.take()
        if shed:
            self._warn("backlog", "serial %s: the pipeline is behind; %d byte(s) shed",
                       self.name, shed, port=self.port)
        for data, ts in batch:
            self.bytes_total += len(data)
            self.chunks_total += 1
            self.last_byte_at = ts
            try:
                self._on_bytes(data, ts)
            except Exception:  # a consumer bug must not cost the bytes behind it
                self.callback_errors_total += 1
                if self.callback_errors_total == 1:
                    log.exception("serial %s: on_bytes failed (further failures are "
                                  "counted, not logged)", self.name)

    def _set_state(self, state: TapState) -> None:
        if state != self.state:
            self.state = state
            self.since = self._wall()

    async def run(self, stop: asyncio.Event) -> None:
        """Tap the port until ``stop``; device problems are reported, never raised."""
        self._handoff.loop = asyncio.get_running_loop()
        failures = 0
        try:
            while not stop.is_set():
                if not os.path.exists(self.port):
                    self._missing()
                    await sleep_until_stopped(stop, self._poll_s)
                    continue
                outcome = await self._session(stop)
                if stop.is_set():
                    break
                if outcome.opened and outcome.open_for_s >= STABLE_AFTER_S:
                    failures = 0
                self._set_state("reopening")
                delay = self._backoff.delay(failures, self._rng.random())
                failures += 1
                await sleep_until_stopped(stop, delay)
        finally:
            self._set_state("stopped")
            self._handoff.loop = None

    def _missing(self) -> None:
        self._set_state("waiting for device")
        self.last_error = f"{self.port} does not exist"
        if not self._missing_expected:
            self._warn("missing", "serial %s: %s does not exist; waiting for the device",
                       self.name, self.port, port=self.port)

    async def _session(self, stop: asyncio.Event) -> _Outcome:
        """One open-and-read cycle in its own thread, which is joined before returning."""
        loop = asyncio.get_running_loop()
        wake_r, wake_w = os.pipe()
        s = _Session(loop.create_future(), loop.create_future(), wake_r, wake_w)
        ser = self._new_serial()
        ser.port = self.port  # setting the port of an unopened Serial does not open it
        thread = threading.Thread(target=self._read_thread, args=(ser, s),
                                  name=f"serial-tap {self.name}", daemon=True)
        s.thread = thread
        thread.start()
        opened_at: float | None = None
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((s.opened, s.ended, stopping),
                               return_when=asyncio.FIRST_COMPLETED)
            if s.opened.done():
                opened_at = time.monotonic()
                self._opened(self.port)
                await asyncio.wait((s.ended, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self._join(s)
        self._drain()  # every byte read is delivered before the outcome is acted on
        if s.opened_ok and opened_at is None:  # opened, then stopped before we noticed
            opened_at = time.monotonic()
            self._opened(self.port)
        open_for = time.monotonic() - opened_at if opened_at is not None else 0.0
        if s.empty_reads:
            self.empty_reads_total += s.empty_reads
            self._warn("empty", "serial %s: %s was readable but empty %d time(s): another "
                       "process may be reading this port", self.name, self.port,
                       s.empty_reads, port=self.port)
        if stop.is_set() and s.error is None:
            return _Outcome(opened=s.opened_ok, open_for_s=open_for)
        if s.opened_ok:
            self._disconnected(s.error)
        else:
            self._open_failed(s.error)
        return _Outcome(opened=s.opened_ok, open_for_s=open_for)

    def _join(self, s: _Session) -> None:
        """Wake the reader and wait for it; it only has to close the port."""
        thread = s.thread
        assert thread is not None
        if thread.is_alive():
            with contextlib.suppress(OSError):
                os.write(s.wake_w, _WAKE)
            thread.join(JOIN_TIMEOUT_S)
        if thread.is_alive():
            # Stuck in the driver (a USB control transfer): leave it, and its pipe, alone.
            self._warn("stuck", "serial %s: the reader of %s did not stop within %g s",
                       self.name, self.port, JOIN_TIMEOUT_S, port=self.port)
            return
        os.close(s.wake_r)
        os.close(s.wake_w)

    def _opened(self, port: str) -> None:
        self.opens_total += 1
        self.last_open_at = self._wall()
        self.last_error = None
        self._missing_expected = False
        self._warn = LogOnce(log)
        self._set_state("open")
        log.info("serial %s: %s open (%s, read-only)", self.name, port, self.line,
                 extra={"port": port})

    def _disconnected(self, error: BaseException | str | None) -> None:
        self.disconnects_total += 1
        self.last_error = f"disconnected: {describe_error(error)}"
        self._missing_expected = True
        self._set_state("reopening")
        log.warning("serial %s: %s disconnected (%s); reopening when it is back",
                    self.name, self.port, describe_error(error), extra={"port": self.port})

    def _open_failed(self, error: BaseException | str | None) -> None:
        self.open_failures_total += 1
        key, text = describe_open_error(self.port, error)
        self.last_error = text
        self._set_state("reopening")
        self._warn(key, "serial %s: %s; retrying with backoff", self.name, text,
                   port=self.port)

    def status(self) -> SerialTapStatus:
        flow = "rtscts" if self.rtscts else "xonxoff" if self.xonxoff else "none"
        return SerialTapStatus(
            name=self.name, port=self.port, line=self.line, flow=flow, state=self.state,
            since=self.since, last_error=self.last_error, bytes_total=self.bytes_total,
            chunks_total=self.chunks_total, last_byte_at=self.last_byte_at,
            opens_total=self.opens_total, last_open_at=self.last_open_at,
            open_failures_total=self.open_failures_total,
            disconnects_total=self.disconnects_total,
            shed_bytes_total=self.shed_bytes_total,
            empty_reads_total=self.empty_reads_total,
            callback_errors_total=self.callback_errors_total,
        )


def describe_open_error(port: str, error: BaseException | str | None) -> tuple[str, str]:
    """A log key and a line a technician can act on, for a port that would not open."""
    code = getattr(error, "errno", None)
    if code in (errno.EAGAIN, errno.EWOULDBLOCK) and "lock" in str(error):
        return "busy", (f"{port} is busy: another process holds it open exclusively "
                        "(a second tap, a till driver or a terminal program?)")
    if code in (errno.EACCES, errno.EPERM):
        return "denied", (f"permission denied opening {port}: add the gateway's user to "
                          "the group owning it (usually dialout)")
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return "missing", f"{port} went away while opening ({describe_error(error)})"
    return f"open:{code}", f"cannot open {port}: {describe_error(error)}"


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
