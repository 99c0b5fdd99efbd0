"""Customer pole display tap (CD5220 and Epson command sets): what the customer sees.

A two-line, 20-column display. Understood: ``ESC @`` (init), ``0x0C`` (clear),
``ESC Q A text CR`` / ``ESC Q B text CR`` (CD5220 upper / lower line), ``US $ x y``
(cursor), ``0x0B`` (home), ``CR``, ``LF``, ``BS``, ``US MD1..3`` and ``ESC =``/other
mode settings (consumed), and plain text written at the cursor. After each update is
complete (the bytes that arrived together end with a CD5220 line's CR; otherwise
after an idle gap of ``idle_s``) one :class:`DisplayUpdate` with both lines is emitted,
and only when what is shown changed. Pure; never raises.
"""

from __future__ import annotations

from typing import Final

from storegate.core.pos.frames import DisplayUpdate, Frame, Rejections

COLUMNS: Final = 20
ESC: Final = 0x1B
US: Final = 0x1F
_ESC_ARGS: Final[dict[int, int]] = {0x40: 0, 0x3D: 1, 0x74: 1, 0x52: 1, 0x73: 1, 0x6C: 2}
_US_ARGS: Final[dict[int, int]] = {0x24: 2, 0x01: 0, 0x02: 0, 0x03: 0, 0x58: 1, 0x45: 1,
                                   0x43: 1, 0x72: 1, 0x40: 0, 0x23: 2, 0x3A: 0, 0x5E: 2}


class PoleDisplay:
    name = "pole-display"

    def __init__(self, encoding: str = "cp866", idle_s: float = 0.3) -> None:
        self.encoding = encoding
        self.idle_s = idle_s
        self.rejected: dict[str, int] = {}
        self._reject = Rejections(self.rejected)
        self._screen = [bytearray(b" " * COLUMNS), bytearray(b" " * COLUMNS)]
        self._row = 0
        self._col = 0
        self._pending = b""
        self._qline: int | None = None  # ESC Q A/B in progress: the row it writes
        self._qbuf = bytearray()
        self._dirty = False
        self._last = float("-inf")
        self._emitted: tuple[str, str] | None = None
        self._complete = False  # the last bytes completed a CD5220 line

    def feed(self, data: bytes, now: float) -> list[Frame]:
        out = self.flush(now) if now - self._last >= self.idle_s else []
        if not data:
            return out
        self._last = now
        buf = self._pending + data
        self._pending = b""
        self._complete = False
        i, n = 0, len(buf)
        while i < n:
            b = buf[i]
            if self._qline is not None:  # ESC Q A/B text ... CR
                end = buf.find(b"\r", i)
                if end < 0:
                    self._qbuf += buf[i:]
                    if len(self._qbuf) > 4 * COLUMNS:
                        self._reject("line-too-long")
                        self._qline, self._qbuf = None, bytearray()
                    break
                self._qbuf += buf[i:end]
                row = self._qline
                text = bytes(self._qbuf[:COLUMNS]).ljust(COLUMNS)
                self._screen[row][:] = text
                self._qline, self._qbuf = None, bytearray()
                self._dirty = True
                self._complete = True
                if row == 1:  # CD5220 tills write the upper line, then the lower one
                    self._emit(now, out)
                i = end + 1
                continue
            if b in (ESC, US):
                if i + 1 >= n:
                    self._pending = buf[i:]
                    break
                cmd = buf[i + 1]
                if b == ESC and cmd == 0x51:  # ESC Q A|B
                    if i + 2 >= n:
                        self._pending = buf[i:]
                        break
                    which = buf[i + 2]
                    if which in (0x41, 0x42):
                        self._qline = 0 if which == 0x41 else 1
                    else:
                        self._reject("unknown-command")
                    i += 3
                    continue
                table = _ESC_ARGS if b == ESC else _US_ARGS
                args = table.get(cmd)
                if args is None:
                    self._reject("unknown-command")
                    i += 2
                    continue
                if i + 2 + args > n:
                    self._pending = buf[i:]
                    break
                if b == ESC and cmd == 0x40:
                    self._clear()
                elif b == US and cmd == 0x24:  # US $ x y (1-based)
                    self._col = min(max(buf[i + 2] - 1, 0), COLUMNS - 1)
                    self._row = min(max(buf[i + 3] - 1, 0), 1)
                i += 2 + args
                continue
            self._byte(b)
            self._complete = False
            i += 1
        if self._dirty and self._qline is None and not self._pending and self._complete:
            self._emit(now, out)  # the burst the POS wrote is on the screen
        return out

    def _byte(self, b: int) -> None:
        if b == 0x0C:
            self._clear()
        elif b == 0x0B:
            self._row, self._col = 0, 0
        elif b == 0x0D:
            self._col = 0
        elif b == 0x0A:
            self._row = 1
        elif b == 0x08:
            self._col = max(self._col - 1, 0)
        elif b >= 0x20:
            if self._col < COLUMNS:
                self._screen[self._row][self._col] = b
                self._col += 1
                self._dirty = True
            elif self._row == 0:
                self._row, self._col = 1, 0
                self._screen[1][0] = b
                self._col = 1
                self._dirty = True
        # other controls: nothing shown

    def _clear(self) -> None:
        self._screen = [bytearray(b" " * COLUMNS), bytearray(b" " * COLUMNS)]
        self._row = self._col = 0
        self._dirty = True

    def _emit(self, now: float, out: list[Frame]) -> None:
        upper = bytes(self._screen[0]).decode(self.encoding, "replace").rstrip()
        lower = bytes(self._screen[1]).decode(self.encoding, "replace").rstrip()
        self._dirty = False
        if (upper, lower) != self._emitted and (upper or lower):
            self._emitted = (upper, lower)
            out.append(DisplayUpdate(upper, lower, now))

    def flush(self, now: float) -> list[Frame]:
        out: list[Frame] = []
        if self._dirty and now - self._last >= self.idle_s:
            self._emit(self._last, out)
        return out
