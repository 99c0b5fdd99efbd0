"""Generic ``STX payload ETX [checksum]`` lanes: one frame is one printed job of text.

Many devices (Concert-style ECR links, Belgian blackbox, ZVT's ``DLE STX … DLE ETX``,
home-grown receipt mirrors) wrap text in a start and an end marker and differ only in
details, so every detail is a setting (:class:`StxEtxSettings`):

* ``start`` / ``end``: one byte (``STX`` / ``ETX``) or two (``DLE STX`` / ``DLE ETX``);
* ``escape``: an optional byte value that makes the next start, end or escape byte
  literal. With two-byte markers that begin with it (ZVT), ``DLE DLE`` is a literal DLE
  and ``DLE STX`` / ``DLE ETX`` are the markers; the escape followed by anything else is
  a broken frame (``bad-escape``);
* ``checksum``: ``none``, ``xor``, ``lrc`` (two's complement of the byte sum), ``sum8``,
  ``crc8`` (poly/init settable, default 0x31/0xFF) or ``crc16-xmodem`` (2 bytes, byte
  order settable), sent raw (never escaped) right after the end marker;
* ``covers``, what the checksum covers: the unescaped ``payload``, or ``payload+end``
  where "end" is the end marker's final byte (``ETX``: in ``DLE ETX`` the DLE is
  framing, not data, as in ZVT);
* ``encoding`` of the text and ``max_frame``, the longest payload accepted (bytes, after
  unescaping).

Each valid frame becomes one :class:`ReceiptText` whose lines are the payload split on
CR/LF, trailing blanks removed and empty lines dropped. Counted in ``rejected``:
``noise`` (bytes outside frames), ``cut`` (a new start inside a frame), ``bad-escape``,
``too-long``, ``bad-checksum``, ``timeout`` (the next byte of a frame more than
``byte_timeout_s`` late), ``empty`` (a frame without text). The parser is an incremental
state machine over chunks: no byte is looked at twice, literal runs are copied with
``bytes.find``, and only markers and escapes cost Python work.

This module is also the home of the checksums the fiscal dialects share.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Final, Literal

from storegate.core.pos.frames import Frame, ReceiptText, Rejections
from storegate.core.pos.framing import (
    TimedBuffer,
    crc8,
    crc16_xmodem,
    lrc8,
    sum8,
    xor8,
)

ChecksumKind = Literal["none", "xor", "lrc", "sum8", "crc8", "crc16-xmodem"]
ChecksumCovers = Literal["payload", "payload+end"]

CHECKSUM_KINDS: Final[tuple[str, ...]] = ("none", "xor", "lrc", "sum8", "crc8", "crc16-xmodem")
DEFAULT_MAX_FRAME: Final = 4096  # bytes of payload
DEFAULT_BYTE_TIMEOUT_S: Final = 0.5

_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_HUNT, _BODY, _CHECK = 0, 1, 2


# -- settings -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StxEtxSettings:
    """How one device frames its text; validated once, here."""

    start: bytes = b"\x02"
    end: bytes = b"\x03"
    escape: int | None = None  # a byte value, or None: no escaping
    checksum: ChecksumKind = "xor"
    covers: ChecksumCovers = "payload+end"
    encoding: str = "cp866"
    max_frame: int = DEFAULT_MAX_FRAME
    crc8_poly: int = 0x31
    crc8_init: int = 0xFF
    crc16_byteorder: Literal["big", "little"] = "big"
    byte_timeout_s: float | None = DEFAULT_BYTE_TIMEOUT_S  # None: a frame never times out

    def __post_init__(self) -> None:
        for label, marker in (("start", self.start), ("end", self.end)):
            if not isinstance(marker, bytes) or len(marker) not in (1, 2):
                raise ValueError(f"{label} must be 1 or 2 bytes, got {marker!r}")
        if self.start == self.end:
            raise ValueError("start and end markers must differ")
        if self.escape is not None:
            if not 0 <= self.escape <= 0xFF:
                raise ValueError(f"escape must be a byte value (0..255), got {self.escape}")
            for label, marker in (("start", self.start), ("end", self.end)):
                if len(marker) == 1 and marker[0] == self.escape:
                    raise ValueError(f"escape byte cannot be the one-byte {label} marker")
        if self.checksum not in CHECKSUM_KINDS:
            raise ValueError(f"checksum must be one of {', '.join(CHECKSUM_KINDS)}")
        if self.covers not in ("payload", "payload+end"):
            raise ValueError("covers must be 'payload' or 'payload+end'")
        if self.crc16_byteorder not in ("big", "little"):
            raise ValueError("crc16_byteorder must be 'big' or 'little'")
        if not (0 <= self.crc8_poly <= 0xFF and 0 <= self.crc8_init <= 0xFF):
            raise ValueError("crc8_poly and crc8_init must be bytes (0..255)")
        if self.max_frame < 1:
            raise ValueError("max_frame must be at least 1 byte")
        if self.byte_timeout_s is not None and not self.byte_timeout_s > 0:
            raise ValueError("byte_timeout_s must be positive (or None)")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"unknown text encoding {self.encoding!r}") from None

    @property
    def checksum_len(self) -> int:
        return {"none": 0, "crc16-xmodem": 2}.get(self.checksum, 1)

    def checksum_of(self, covered: bytes | bytearray) -> bytes:
        """The checksum bytes as sent after the end marker."""
        kind = self.checksum
        if kind == "none":
            return b""
        if kind == "crc16-xmodem":
            return crc16_xmodem(covered).to_bytes(2, self.crc16_byteorder)
        if kind == "xor":
            value = xor8(covered)
        elif kind == "lrc":
            value = lrc8(covered)
        elif kind == "sum8":
            value = sum8(covered)
        else:
            value = crc8(covered, self.crc8_poly, self.crc8_init)
        return bytes((value,))

    def covered(self, payload: bytes | bytearray) -> bytes:
        """What the checksum is computed over, for an unescaped payload."""
        if self.covers == "payload+end":
            return bytes(payload) + self.end[-1:]
        return bytes(payload)

    def literals(self) -> frozenset[int]:
        """Bytes that ``escape`` makes literal (the bytes an encoder must escape)."""
        if self.escape is None:
            return frozenset()
        esc = self.escape
        return frozenset({esc} | {m[0] for m in (self.start, self.end) if m[0] != esc})


# -- the parser -----------------------------------------------------------------------


class StxEtx(TimedBuffer):
    """Incremental parser of a generic start/end-framed text lane (see the module doc)."""

    __slots__ = ("_body", "_count", "_literals", "_started_at", "_state", "_triggers", "name",
                 "rejected", "settings")

    def __init__(self, settings: StxEtxSettings | None = None) -> None:
        s = settings if settings is not None else StxEtxSettings()
        self.settings = s
        self.name = "stx-etx"
        self.rejected: dict[str, int] = {}
        self._count = Rejections(self.rejected)
        self._buf = bytearray()  # bytes not yet consumed: at most a marker's first byte
        self._body = bytearray()  # the current frame's payload, unescaped
        self._state = _HUNT
        self._started_at = 0.0
        self._last_at = 0.0
        triggers = {s.start[0], s.end[0]}
        if s.escape is not None:
            triggers.add(s.escape)
        self._triggers = tuple(sorted(triggers))
        self._literals = s.literals()

    def _expire(self, now: float, out: list[Frame]) -> None:
        timeout = self.settings.byte_timeout_s
        if timeout is None or now - self._last_at <= timeout:
            return
        if self._state != _HUNT:
            self._count("timeout")
            self._state = _HUNT
            self._body.clear()
        self._buf.clear()  # at most a marker's first byte

    def _begin(self, now: float) -> None:
        self._state = _BODY
        self._body.clear()
        self._started_at = now

    def _parse(self, now: float, out: list[Frame]) -> None:
        s = self.settings
        buf = self._buf
        body = self._body
        n = len(buf)
        start, end = s.start, s.end
        esc = s.escape if s.escape is not None else -1
        end_escaped = len(end) == 2 and end[0] == esc
        start_escaped = len(start) == 2 and start[0] == esc
        ck_len = s.checksum_len
        max_frame = s.max_frame
        p = 0
        while p < n or self._state == _CHECK:  # (a frame without checksum ends at its end)
            if self._state == _HUNT:
                i = buf.find(start, p)
                if i < 0:
                    keep = len(start) == 2 and buf[n - 1] == start[0]
                    self._noise(n - p - keep)
                    p = n - keep
                    break
                self._noise(i - p)
                p = i + len(start)
                self._begin(now)
            elif self._state == _BODY:
                t = n
                for trig in self._triggers:
                    k = buf.find(trig, p, t)
                    if k >= 0:
                        t = k
                if t > p:
                    room = max_frame - len(body)
                    if t - p > room:  # the byte past the limit ends the frame
                        self._count("too-long")
                        self._state = _HUNT
                        p += room + 1
                        continue
                    body += buf[p:t]
                    p = t
                if t == n:
                    break
                b = buf[t]
                if b == esc:
                    if t + 1 >= n:
                        break  # wait for the escaped byte
                    x = buf[t + 1]
                    if end_escaped and x == end[1]:
                        p = t + 2
                        self._state = _CHECK
                    elif start_escaped and x == start[1]:
                        self._count("cut")
                        p = t + 2
                        self._begin(now)
                    elif x in self._literals:
                        body.append(x)
                        p = t + 2
                        self._check_length()
                    else:
                        self._count("bad-escape")
                        self._state = _HUNT
                        p = t + 1
                    continue
                if t + 1 >= n and ((b == end[0] and len(end) == 2)
                                   or (b == start[0] and len(start) == 2)):
                    break  # a two-byte marker may be completing
                if buf.startswith(end, t):
                    p = t + len(end)
                    self._state = _CHECK
                elif buf.startswith(start, t):
                    self._count("cut")
                    p = t + len(start)
                    self._begin(now)
                else:
                    body.append(b)
                    p = t + 1
                    self._check_length()
            else:  # _CHECK
                if n - p < ck_len:
                    break
                got = bytes(buf[p:p + ck_len])
                p += ck_len
                self._state = _HUNT
                if ck_len and got != s.checksum_of(s.covered(body)):
                    self._count("bad-checksum")
                    continue
                self._emit(now, out)
        del buf[:p]

    def _check_length(self) -> None:
        if len(self._body) > self.settings.max_frame:
            self._count("too-long")
            self._state = _HUNT

    def _noise(self, n: int) -> None:
        if n > 0:
            self._count("noise", n)

    def _emit(self, now: float, out: list[Frame]) -> None:
        text = self._body.decode(self.settings.encoding, "replace")
        lines = tuple(ln for ln in (raw.rstrip() for raw in _LINE_BREAK.split(text)) if ln)
        if not lines:
            self._count("empty")
            return
        out.append(ReceiptText(lines=lines, at=now, started_at=self._started_at))
