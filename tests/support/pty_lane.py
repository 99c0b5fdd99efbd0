"""A fake lane device on a pseudo-terminal, for testing serial taps with real pyserial.

The slave side is the "serial port" the tap opens, reached through a stable
``serial/by-id/...`` symlink like udev's; the test plays the device on the master side.
Anything the tapped side writes shows up on the master, so :attr:`PtyDevice.written`
proves a tap never sent a byte. Baud rate and parity mean nothing on a pty.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pty
import select
import sys
import termios
import tty
from pathlib import Path

DEFAULT_ID = "usb-FTDI_lane1-if00-port0"


class PtyDevice:
    """A pluggable device: ``write`` plays the till, ``unplug``/``replug`` the cable."""

    def __init__(self, root: Path, device_id: str = DEFAULT_ID) -> None:
        self.path = root / "serial" / "by-id" / device_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.written = bytearray()  # what the tapped side sent (must stay empty)
        self._master: int | None = None
        self._slave: int | None = None
        self.tty_name = ""
        self.replug()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def replug(self) -> None:
        """A new pty pair (as after a real replug, a new kernel device) behind the link."""
        if self.plugged:
            raise RuntimeError("already plugged in")
        master, slave = pty.openpty()
        # Raw: no echo back to the master (it would look like the tap writing), no CR/LF
        # translation, no signals. Holding the slave open keeps the master from seeing a
        # hang-up while the tap is between opens.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.tty_name = os.ttyname(slave)
        tmp = self.path.with_name(self.path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self.tty_name)
        tmp.replace(self.path)

    def write(self, data: bytes, timeout: float = 10.0) -> None:
        """Send ``data`` to the tap, waiting while the pty buffer is full (a UART would
        drop bytes instead, but a test wants every byte accounted for)."""
        master = self._fd()
        view = memoryview(data)
        while view:
            _, ready, _ = select.select([], [master], [], timeout)
            if not ready:
                raise TimeoutError(f"pty {self.tty_name} not writable for {timeout:g} s")
            try:
                n = os.write(master, view)
            except BlockingIOError:
                continue
            view = view[n:]
        self.collect()

    def unread(self) -> int:
        """Bytes written that the tapped side has not read yet (0: the tap took all)."""
        if self._slave is None:
            raise RuntimeError("unplugged")
        buf = fcntl.ioctl(self._slave, termios.FIONREAD, b"\0\0\0\0")
        return int.from_bytes(buf, sys.byteorder)

    def collect(self) -> bytes:
        """Read, without blocking, whatever the tapped side sent; also kept in ``written``."""
        master = self._master
        got = bytearray()
        while master is not None and select.select([master], [], [], 0)[0]:
            try:
                chunk = os.read(master, 65536)
            except BlockingIOError:
                break
            except OSError as exc:  # EIO: no slave open (nothing can have been sent)
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            got += chunk
        self.written += got
        return bytes(got)

    def unplug(self) -> None:
        """Pull the cable: the tap's fd hangs up and the by-id link goes away."""
        self.collect()
        self.path.unlink(missing_ok=True)
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def close(self) -> None:
        if self.plugged:
            self.unplug()

    def _fd(self) -> int:
        if self._master is None:
            raise RuntimeError("unplugged")
        return self._master

    def __enter__(self) -> PtyDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
