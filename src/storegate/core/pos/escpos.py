"""ESC/POS receipt printer tap: a grammar state machine, bytes in, printed jobs out.

Every command is consumed with exactly its arguments (fixed counts, NUL-terminated or
length-prefixed), so no parameter byte ever leaks into the text, and image data
(``GS v 0`` rasters, ``ESC *`` bit images, ``GS ( L`` / ``GS 8 L`` graphics) is skipped
by its declared length without being buffered. Text is decoded in the code page in
force (``ESC t n`` switches are honoured per segment), LF ends a line, ``GS V`` (or
``ESC i``/``ESC m``) cuts and ends the job; a job without a cut ends after ``idle_s``
without bytes. Native QR data (``GS ( k`` cn 49 fn 80) and barcode data (``GS k``)
are collected with the job.

Bad input never raises: an implausible length (wrong baud rate noise) drops the command
and resynchronises on the next byte; over-long lines are cut; everything rejected is
counted by reason in ``rejected``. Pure: the arrival time is passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from storegate.core.pos.frames import Frame, JobStarted, ReceiptText, Rejections

ESC: Final = 0x1B
GS: Final = 0x1D
FS: Final = 0x1C
DLE: Final = 0x10
LF: Final = 0x0A
MAX_LINE: Final = 1024  # characters; longer is not a receipt line
# lines of one job; a stream that never cuts (a journal, noise at the wrong baud rate)
# would otherwise grow a job without bound until the idle flush: the rest is dropped and
# the job counted once as "job-too-long"
MAX_JOB_LINES: Final = 2000
MAX_IMAGE: Final = 4 * 1024 * 1024  # declared image bytes beyond this: noise, not an image
MAX_QR: Final = 7089  # QR capacity

# ESC t n -> Python codec (Epson's table; the ones tills use)
CODE_PAGES: Final[dict[int, str]] = {
    0: "cp437", 2: "cp850", 3: "cp860", 4: "cp863", 5: "cp865", 16: "cp1252",
    17: "cp866", 18: "cp852", 19: "cp858", 45: "cp1250", 46: "cp1251", 47: "cp1253",
    48: "cp1254", 49: "cp1255", 50: "cp1256", 51: "cp1257", 52: "cp1258",
}

# Fixed argument counts after the command byte (ESC x / GS x / FS x / DLE x).
_ESC_FIXED: Final[dict[int, int]] = {
    **dict.fromkeys(b"2<", 0), 0x0C: 0,  # (ESC @ and ESC t are handled before the table)
    **dict.fromkeys(b" !-3EGJMRSTUVade{r?=%", 1), 0x70: 3,  # ESC p m t1 t2
    **dict.fromkeys(b"$\\", 2), ord("W"): 8, ord("c"): 2,
}
_ESC_CUTS: Final = frozenset(b"im")  # ESC i / ESC m: partial cut on many printers
_ESC_LINE_ENDS: Final = frozenset(b"Jd")  # print and feed: ends the line
_GS_FIXED: Final[dict[int, int]] = {
    **dict.fromkeys(b":c", 0),
    **dict.fromkeys(b"!BHIabfhrwT/Ej", 1), **dict.fromkeys(b"LWP$\\", 2),
    ord("^"): 3, ord("g"): 4,
}
_FS_FIXED: Final[dict[int, int]] = {
    **dict.fromkeys(b"&.", 0), **dict.fromkeys(b"!-CW", 1), **dict.fromkeys(b"pS", 2),
}
_DLE_FIXED: Final[dict[int, int]] = {0x04: 1, 0x05: 1, 0x14: 3}  # EOT n, ENQ n, DC4 fn m t
_CONTROL: Final = re.compile(rb"[\x00-\x1f]")


class _NeedMoreError(Exception):
    """The command is not complete yet: wait for more bytes."""


@dataclass(slots=True)
class _Job:
    lines: list[str] = field(default_factory=list)
    qr: list[str] = field(default_factory=list)
    barcodes: list[str] = field(default_factory=list)
    started_at: float | None = None
    over: bool = False  # MAX_JOB_LINES reached: further lines are dropped


class EscPos:
    name = "escpos"

    def __init__(self, encoding: str = "cp437", idle_s: float = 2.0) -> None:
        self._default = encoding
        self._codec = encoding
        self.idle_s = idle_s
        self.rejected: dict[str, int] = {}
        self._reject = Rejections(self.rejected)
        self._pending = b""  # an incomplete command
        self._skip = 0  # image bytes still to skip
        self._segments: list[tuple[bytes, str]] = []  # the current line, by code page
        self._line_len = 0
        self._job = _Job()
        self._last = float("-inf")  # arrival of the last byte

    # --- input -----------------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> list[Frame]:
        out = self.flush(now) if now - self._last >= self.idle_s else []
        if not data:
            return out
        self._last = now
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        buf = self._pending + data if self._pending else data
        self._pending = b""
        pos, end = 0, len(buf)
        search = _CONTROL.search
        while pos < end:
            if self._job.started_at is None:  # the first byte of a job
                self._job.started_at = now
                out.append(JobStarted(now))
            if self._skip:  # an image declared inside this buffer
                n = min(self._skip, end - pos)
                self._skip -= n
                pos += n
                continue
            m = search(buf, pos)
            stop = m.start() if m else end
            if stop > pos:
                self._text(buf[pos:stop])
                pos = stop
                if pos >= end:
                    break
            try:
                pos = self._control(buf, pos, now, out)
            except _NeedMoreError:
                self._pending = buf[pos:]
                if len(self._pending) > 65536 + 16:  # a length-prefixed block too long
                    self._reject("too-long")
                    self._pending = b""
                break
        return out

    def flush(self, now: float) -> list[Frame]:
        """A job without a cut ends after ``idle_s`` of silence. A real image streams
        without pauses, so an image or a command still incomplete after the gap was
        noise (wrong baud rate, a cable unplugged mid-job): it is dropped, and the next
        job is read from its first byte."""
        if now - self._last < self.idle_s:
            return []
        if self._skip:
            self._reject("truncated-image")
            self._skip = 0
        if self._pending:
            self._reject("truncated-command")
            self._pending = b""
        out: list[Frame] = []
        self._end_job(self._last, cut=False, out=out)
        return out

    # --- text ------------------------------------------------------------------------

    def _text(self, raw: bytes) -> None:
        room = MAX_LINE - self._line_len
        if len(raw) > room:
            self._reject("line-too-long")
            raw = raw[:max(room, 0)]
        if raw:
            segs = self._segments
            if segs and segs[-1][1] == self._codec:
                segs[-1] = (segs[-1][0] + raw, self._codec)
            else:
                segs.append((raw, self._codec))
            self._line_len += len(raw)

    def _end_line(self) -> None:
        line = "".join(raw.decode(codec, "replace") for raw, codec in self._segments)
        self._segments = []
        self._line_len = 0
        job = self._job
        if len(job.lines) >= MAX_JOB_LINES:
            if not job.over:
                job.over = True
                self._reject("job-too-long")
            return
        job.lines.append(line.rstrip())

    def _end_job(self, at: float, *, cut: bool, out: list[Frame]) -> None:
        if self._segments:
            self._end_line()
        job = self._job
        lines = job.lines
        while lines and not lines[-1]:
            lines.pop()
        if lines or job.qr or job.barcodes:
            out.append(ReceiptText(tuple(lines), at, tuple(job.qr), tuple(job.barcodes),
                                   cut, job.started_at))
        self._job = _Job()  # the code page persists, as on the printer (ESC @ resets it)

    # --- commands ------------------------------------------------------------------

    def _control(self, buf: bytes, pos: int, now: float, out: list[Frame]) -> int:  # noqa: PLR0911 - one return per command form
        """Consume the control byte at ``pos`` and its command; the next position."""
        b = buf[pos]
        if b == LF:
            self._end_line()
            return pos + 1
        if b == 0x09:  # HT
            self._text(b" ")
            return pos + 1
        if b == 0x0C:  # FF: end of page
            self._end_line()
            return pos + 1
        if b == ESC:
            return self._esc(buf, pos, now, out)
        if b == GS:
            return self._gs(buf, pos, now, out)
        if b == FS:
            return self._fs(buf, pos)
        if b == DLE:
            return self._fixed(buf, pos, _DLE_FIXED, "unknown-dle")
        return pos + 1  # CR, NUL and other controls print nothing

    @staticmethod
    def _arg(buf: bytes, i: int) -> int:
        if i >= len(buf):
            raise _NeedMoreError
        return buf[i]

    @staticmethod
    def _nul(buf: bytes, start: int, limit: int) -> int:
        """Where the NUL ending an argument of at most ``limit`` bytes from ``start`` is;
        -1 when there is none within the limit (not this command: noise)."""
        end = buf.find(b"\x00", start, start + limit + 1)
        if end < 0 and len(buf) - start <= limit:
            raise _NeedMoreError
        return end

    def _fixed(self, buf: bytes, pos: int, table: dict[int, int], unknown: str) -> int:
        cmd = self._arg(buf, pos + 1)
        n = table.get(cmd)
        if n is None:
            self._reject(unknown)
            return pos + 2
        if pos + 2 + n > len(buf):
            raise _NeedMoreError
        return pos + 2 + n

    def _esc(self, buf: bytes, pos: int, now: float, out: list[Frame]) -> int:  # noqa: PLR0911
        cmd = self._arg(buf, pos + 1)
        if cmd == 0x74:  # ESC t n: code page
            n = self._arg(buf, pos + 2)
            codec = CODE_PAGES.get(n)
            if codec is None:
                self._reject("unknown-code-page")
            else:
                self._codec = codec
            return pos + 3
        if cmd == 0x40:  # ESC @: initialise (the printer's default code page again)
            self._codec = self._default
            return pos + 2
        if cmd in _ESC_CUTS:
            self._end_job(now, cut=True, out=out)
            return pos + 2
        if cmd == 0x2A:  # ESC * m nL nH data: bit image
            m = self._arg(buf, pos + 2)
            nl, nh = self._arg(buf, pos + 3), self._arg(buf, pos + 4)
            return self._image(pos + 5, (nl + nh * 256) * (1 if m in (0, 1) else 3))
        if cmd == 0x44:  # ESC D n1..nk NUL: tab stops
            end = self._nul(buf, pos + 2, 32)
            if end < 0:
                self._reject("bad-tab-stops")
                return pos + 2
            return end + 1
        nxt = self._fixed(buf, pos, _ESC_FIXED, "unknown-esc")
        if cmd in _ESC_LINE_ENDS and self._segments:
            self._end_line()
        return nxt

    def _gs(self, buf: bytes, pos: int, now: float, out: list[Frame]) -> int:  # noqa: PLR0911
        cmd = self._arg(buf, pos + 1)
        if cmd == 0x56:  # GS V m [n]: cut
            m = self._arg(buf, pos + 2)
            end = pos + 3 + (1 if m in (65, 66, 97, 98, 103, 104) else 0)
            if end > len(buf):
                raise _NeedMoreError
            self._end_job(now, cut=True, out=out)
            return end
        if cmd == 0x76:  # GS v 0 m xL xH yL yH data: raster image
            if pos + 8 > len(buf):
                raise _NeedMoreError
            xl, xh, yl, yh = buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]
            return self._image(pos + 8, (xl + xh * 256) * (yl + yh * 256))
        if cmd == 0x28:  # GS ( fn pL pH ...: length-prefixed
            if pos + 5 > len(buf):
                raise _NeedMoreError
            fn, size = buf[pos + 2], buf[pos + 3] + buf[pos + 4] * 256
            start = pos + 5
            if fn == 0x4C:  # GS ( L: graphics, may be large
                return self._image(start, size)
            if start + size > len(buf):
                raise _NeedMoreError
            if fn == 0x6B and size >= 3:  # GS ( k: 2D codes
                self._code2d(buf[start:start + size])
            return start + size
        if cmd == 0x38:  # GS 8 L p1 p2 p3 p4 ...: large graphics
            if pos + 7 > len(buf):
                raise _NeedMoreError
            size = int.from_bytes(buf[pos + 3:pos + 7], "little")
            return self._image(pos + 7, size)
        if cmd == 0x2A:  # GS * x y data: downloaded bit image
            x, y = self._arg(buf, pos + 2), self._arg(buf, pos + 3)
            return self._image(pos + 4, x * y * 8)
        if cmd == 0x6B:  # GS k m ...: barcode
            return self._barcode(buf, pos)
        return self._fixed(buf, pos, _GS_FIXED, "unknown-gs")

    def _fs(self, buf: bytes, pos: int) -> int:
        cmd = self._arg(buf, pos + 1)
        if cmd == 0x28:  # FS ( fn pL pH ...
            if pos + 5 > len(buf):
                raise _NeedMoreError
            size = buf[pos + 3] + buf[pos + 4] * 256
            if pos + 5 + size > len(buf):
                raise _NeedMoreError
            return pos + 5 + size
        return self._fixed(buf, pos, _FS_FIXED, "unknown-fs")

    def _image(self, start: int, size: int) -> int:
        """Skip ``size`` image bytes from ``start`` (streamed, never buffered)."""
        if size > MAX_IMAGE:
            self._reject("implausible-length")
            return start  # not an image: resynchronise right after its header
        self._skip = size
        return start

    def _code2d(self, params: bytes) -> None:
        cn, fn = params[0], params[1]
        if cn == 49 and fn == 80 and len(params) > 3:  # QR: store data (m = 48)
            data = params[3:3 + MAX_QR]
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = data.decode(self._codec, "replace")
            self._job.qr.append(text)

    def _barcode(self, buf: bytes, pos: int) -> int:
        m = self._arg(buf, pos + 2)
        if m <= 6:  # NUL-terminated data
            end = self._nul(buf, pos + 3, 255)
            if end < 0:
                self._reject("bad-barcode")
                return pos + 3
            data, nxt = buf[pos + 3:end], end + 1
        else:
            n = self._arg(buf, pos + 3)
            if pos + 4 + n > len(buf):
                raise _NeedMoreError
            data, nxt = buf[pos + 4:pos + 4 + n], pos + 4 + n
        self._job.barcodes.append(data.decode("latin-1"))
        return nxt
