"""What the framed dialects (Shtrih-M, ATOL, STX/ETX) share: checksums, and the
buffer that holds a partial frame until its next bytes or its per-byte timeout. Pure."""

from __future__ import annotations

import binascii
from functools import cache

from storegate.core.pos.frames import Frame

# -- checksums ------------------------------------------------------------------------


def xor8(data: bytes | bytearray) -> int:
    """XOR of all bytes, folded in C-sized steps rather than one Python step per byte."""
    n = len(data)
    if n == 0:
        return 0
    x = int.from_bytes(data, "little")
    width = 8 << (n - 1).bit_length()
    while width > 8:
        width >>= 1
        x = (x >> width) ^ (x & ((1 << width) - 1))
    return x


def sum8(data: bytes | bytearray) -> int:
    return sum(data) & 0xFF


def lrc8(data: bytes | bytearray) -> int:
    """Two's complement of the byte sum: adding it to the sum gives 0 mod 256."""
    return -sum(data) & 0xFF


@cache
def crc8_table(poly: int = 0x31) -> tuple[int, ...]:
    """MSB-first CRC-8 lookup table for ``poly``."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ poly) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return tuple(table)


def crc8(data: bytes | bytearray, poly: int = 0x31, init: int = 0xFF) -> int:
    """MSB-first CRC-8, no reflection, no final XOR (poly 0x31 init 0xFF: CRC-8/NRSC-5)."""
    table = crc8_table(poly)
    c = init
    for b in data:
        c = table[c ^ b]
    return c


def crc16_xmodem(data: bytes | bytearray) -> int:
    """CRC-16/XMODEM: poly 0x1021, init 0, MSB first (``binascii.crc_hqx``, in C)."""
    return binascii.crc_hqx(data, 0)


# -- the partial-frame buffer ---------------------------------------------------------


class TimedBuffer:
    """Base of the framed dialects: bytes are buffered and parsed as they arrive, and
    ``_expire`` deals with a partial frame whose next byte is overdue (before new bytes
    are added, and on every flush). Subclasses set ``_buf`` and ``_last_at`` in their
    ``__init__`` and implement ``_expire`` and ``_parse``."""

    __slots__ = ("_buf", "_last_at")
    _buf: bytearray
    _last_at: float  # arrival of the last byte in _buf

    def feed(self, data: bytes, now: float) -> list[Frame]:
        out: list[Frame] = []
        if not data:
            return out
        self._expire(now, out)
        self._buf += data
        self._last_at = now
        self._parse(now, out)
        return out

    def flush(self, now: float) -> list[Frame]:
        out: list[Frame] = []
        self._expire(now, out)
        return out

    def _expire(self, now: float, out: list[Frame]) -> None:
        raise NotImplementedError

    def _parse(self, now: float, out: list[Frame]) -> None:
        raise NotImplementedError
