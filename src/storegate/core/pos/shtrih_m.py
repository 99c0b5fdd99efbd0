"""Shtrih-M fiscal register protocol, read from a passive tap.

Frame: ``STX(0x02) LEN CMD DATA LRC``; ``LEN`` counts ``CMD`` + ``DATA`` and ``LRC`` is
the XOR of ``LEN`` … ``DATA``. Between frames the line carries ``ENQ`` (0x05, the host
polls before each new command), ``ACK`` (0x06) and ``NAK`` (0x15). Numbers are
little-endian, text is cp1251 padded with NULs, and every command carries the 4-byte
operator password right after ``CMD``.

Requests understood (``LEN`` of the request layout in brackets):

* 0x80 Sale / 0x82 Return [60]: password(4) qty(5, thousandths) price(5, kopecks)
  department(1) taxes(4) text(40) -> :class:`FiscalItem`;
* 0x85 Close receipt [71]: password(4) sum1..sum4 (5 each: cash, card, other, other)
  discount(2, signed, hundredths of a percent) taxes(4) text(40) -> :class:`FiscalClose`
  with the non-zero sums as tenders. The percent discount is applied by the register to
  the receipt total and cannot be turned into an amount from this frame alone; it is not
  exposed (``discount_minor`` stays 0);
* 0x86 Discount / 0x87 Surcharge [54]: password(4) sum(5) taxes(4) text(40) ->
  :class:`FiscalDiscount` (a surcharge as a negative amount);
* 0x88 Cancel receipt [5]: password(4) -> :class:`FiscalCancel`;
* 0xFF46 Operation V2 [32 + text 0..128] (registers with a fiscal storage, FFD 1.05+):
  password(4) operation(1: 1 sale, 2 return of sale, 3 expense, 4 return of expense)
  qty(6, millionths) price(5) sum(5; FF…FF: price x qty by the register) tax(5)
  tax rate(1) department(1) payment method(1) subject(1) name(0-128) ->
  :class:`FiscalItem` (operations 3 and 4 are counted ``ignored-operation``);
* 0xFF45 Close receipt V2 [118 + text 0..64]: password(4) sum1..sum16 (5 each: 1 cash,
  2-13 electronic, 14 prepayment, 15 credit, 16 counter-provision) rounding(1, kopecks)
  taxes 1-6 (5 each) tax system(1) text -> :class:`FiscalClose` (the rounding as its
  discount).

Two-byte commands (``FF xx``) carry both bytes in ``CMD`` and ``LEN``. Layouts checked
for issue 16 against oleg-golovanov/pyshtrih (``commands.py``: 0x80-0x88, text at least
40 bytes) and the vendor's shtrih-m/javapos_shtrih (``FSPrintRecItem.java`` FF46,
``FSCloseReceipt.java`` FF45); before it, FF46/FF45 were ``ignored-command``, so a
register driven by a current driver gave no purchases at all.

A text field longer than 40 bytes (later firmware) is read to the end of the frame.
Frames of any other command are well-formed traffic we do not need: counted as
``ignored-command``, never an error.

When both directions are tapped, the register's replies (``CMD``, error code, then e.g.
the operator number) are told from requests by ``LEN`` shorter than the request layout.
A reply with a non-zero error code becomes :class:`FiscalRejected` (the operation did not
happen); a reply is used once, for the latest request of its command, so a reply resent
after the host's NAK or ENQ is counted, not emitted twice.

Retransmission: after a NAK or a missing ACK the host resends the same frame at once,
without a new ENQ. So a request identical to the previous one with no ENQ between them
is a ``duplicate``; after an ENQ it is a new command (the same item sold again).

Resynchronisation: the start byte can occur inside frames (nothing is escaped), so a
frame with a bad LRC is dropped and the hunt restarts one byte after its STX; a partial
frame whose next byte is more than ``byte_timeout_s`` late (50 ms in the protocol) is
dropped and the bytes after its STX are searched again.

Counted in ``rejected``: ``noise`` (bytes skipped while hunting for a start, including
those of a frame dropped for its LRC or its timeout), ``bad-lrc``, ``bad-length``,
``timeout``, ``duplicate``, ``unmatched-reply``, ``error-reply``, ``ignored-command``,
``ignored-operation`` (an FF46 expense or return of expense).
"""

from __future__ import annotations

from typing import Final

from storegate.core.pos.frames import (
    FiscalCancel,
    FiscalClose,
    FiscalDiscount,
    FiscalItem,
    FiscalRejected,
    Frame,
    Rejections,
    TenderKind,
)
from storegate.core.pos.framing import TimedBuffer, xor8

STX: Final = 0x02
ENQ: Final = 0x05
ACK: Final = 0x06
NAK: Final = 0x15
BYTE_TIMEOUT_S: Final = 0.050  # the protocol's per-byte timeout

SALE: Final = 0x80
RETURN: Final = 0x82
CLOSE: Final = 0x85
DISCOUNT: Final = 0x86
SURCHARGE: Final = 0x87
CANCEL: Final = 0x88
SALE_V2: Final = 0xFF46
CLOSE_V2: Final = 0xFF45
_NO_SUM: Final = 0xFF_FFFF_FFFF  # FF46: "the register computes price x quantity"

TEXT_ENCODING: Final = "cp1251"
_TEXT_LEN: Final = 40
# LEN (CMD + DATA) of each understood request; a shorter frame of the command is a reply.
REQUEST_LEN: Final[dict[int, int]] = {
    SALE: 1 + 4 + 5 + 5 + 1 + 4 + _TEXT_LEN,
    RETURN: 1 + 4 + 5 + 5 + 1 + 4 + _TEXT_LEN,
    CLOSE: 1 + 4 + 4 * 5 + 2 + 4 + _TEXT_LEN,
    DISCOUNT: 1 + 4 + 5 + 4 + _TEXT_LEN,
    SURCHARGE: 1 + 4 + 5 + 4 + _TEXT_LEN,
    CANCEL: 1 + 4,
    SALE_V2: 2 + 4 + 1 + 6 + 5 + 5 + 5 + 1 + 1 + 1 + 1,
    CLOSE_V2: 2 + 4 + 16 * 5 + 1 + 6 * 5 + 1,
}
_TENDERS: Final[tuple[TenderKind, ...]] = ("cash", "card", "other", "other")
_TENDERS_V2: Final[tuple[TenderKind, ...]] = ("cash", *(("card",) * 12), "other", "other",
                                              "other")


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode(TEXT_ENCODING, "replace").rstrip()


def _le(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


class ShtrihM(TimedBuffer):
    """Incremental parser of a Shtrih-M register line, one or both directions merged."""

    __slots__ = ("_count", "_last_reply", "_last_request", "_pending", "byte_timeout_s", "name",
                 "rejected")

    def __init__(self, byte_timeout_s: float = BYTE_TIMEOUT_S) -> None:
        if not byte_timeout_s > 0:
            raise ValueError("byte_timeout_s must be positive")
        self.name = "shtrih-m"
        self.byte_timeout_s = byte_timeout_s
        self.rejected: dict[str, int] = {}
        self._count = Rejections(self.rejected)
        self._buf = bytearray()  # after a parse: empty, or one partial frame from its STX
        self._last_at = 0.0  # arrival of the last byte in _buf
        self._last_request: bytes | None = None  # since the last ENQ: for retransmissions
        self._last_reply: bytes | None = None  # since the last request: for resent replies
        self._pending: int | None = None  # command of the latest request not yet answered

    def _expire(self, now: float, out: list[Frame]) -> None:
        """Drop stale partial frames; a false start may have hidden whole frames behind it."""
        if not self._buf or now - self._last_at <= self.byte_timeout_s:
            return
        reason = "timeout"
        while self._buf:
            self._count(reason)
            reason = "noise"  # later false starts among the same stale bytes
            del self._buf[0]
            self._parse(self._last_at, out)

    def _parse(self, now: float, out: list[Frame]) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        while True:
            i = buf.find(STX, pos)
            if i < 0:
                self._gap(buf, pos, n)
                pos = n
                break
            if i > pos:
                self._gap(buf, pos, i)
            pos = i
            if i + 1 >= n:
                break
            end = i + buf[i + 1] + 3
            if end > n:
                break
            frame = bytes(buf[i + 1:end])  # LEN CMD DATA LRC
            if xor8(frame):  # XOR over LEN..LRC is 0 for a good frame
                self._count("bad-lrc")
                pos = i + 1
                continue
            self._frame(frame, now, out)
            pos = end
        del buf[:pos]

    def _gap(self, buf: bytearray, lo: int, hi: int) -> None:
        """Bytes between frames: the handshake, or noise."""
        if hi - lo == 1:
            b = buf[lo]
            if b == ENQ:
                self._last_request = None
            elif b not in (ACK, NAK):
                self._count("noise")
            return
        enq = buf.count(ENQ, lo, hi)
        if enq:
            self._last_request = None
        noise = hi - lo - enq - buf.count(ACK, lo, hi) - buf.count(NAK, lo, hi)
        if noise:
            self._count("noise", noise)

    def _frame(self, frame: bytes, now: float, out: list[Frame]) -> None:
        length = frame[0]
        if length == 0:
            self._count("bad-length")
            return
        cmd = frame[1]
        if cmd == 0xFF and length >= 2:  # a two-byte command
            cmd = 0xFF00 | frame[2]
        layout = REQUEST_LEN.get(cmd)
        if layout is None:
            self._count("ignored-command")
            return
        if length < layout:
            self._reply(frame, cmd, now, out)
            return
        if frame == self._last_request:
            self._count("duplicate")
            return
        self._last_request = frame
        self._last_reply = None
        self._pending = cmd
        data = frame[2 if cmd <= 0xFF else 3:-1]  # password(4) first
        if cmd == SALE_V2:
            self._sale_v2(data, now, out)
        elif cmd == CLOSE_V2:
            out.append(FiscalClose(
                tenders=tuple((_TENDERS_V2[k], a) for k in range(16)
                              if (a := _le(data[4 + 5 * k:9 + 5 * k]))),
                at=now, discount_minor=data[84], text=_text(data[116:]), command=cmd))
        elif cmd in (SALE, RETURN):
            out.append(FiscalItem(
                name=_text(data[19:]),
                quantity_milli=_le(data[4:9]),
                price_minor=_le(data[9:14]),
                at=now,
                department=data[14],
                is_return=cmd == RETURN,
                command=cmd,
            ))
        elif cmd == CLOSE:
            tenders = tuple(
                (kind, amount) for kind, amount in
                ((_TENDERS[k], _le(data[4 + 5 * k:9 + 5 * k])) for k in range(4))
                if amount)
            percent = int.from_bytes(data[24:26], "little", signed=True)
            out.append(FiscalClose(tenders=tenders, at=now, text=_text(data[30:]),
                                   command=cmd, discount_percent_centi=percent))
        elif cmd in (DISCOUNT, SURCHARGE):
            amount = _le(data[4:9])
            out.append(FiscalDiscount(amount if cmd == DISCOUNT else -amount, now, cmd))
        else:
            out.append(FiscalCancel(now, cmd))

    def _sale_v2(self, data: bytes, now: float, out: list[Frame]) -> None:
        operation = data[4]
        if operation not in (1, 2):
            self._count("ignored-operation")
            return
        amount = _le(data[16:21])
        out.append(FiscalItem(
            name=_text(data[30:]), quantity_milli=(_le(data[5:11]) + 500) // 1000,
            price_minor=_le(data[11:16]), at=now, department=data[27],
            is_return=operation == 2, command=SALE_V2,
            amount_minor=None if amount == _NO_SUM else amount))

    def _reply(self, frame: bytes, cmd: int, now: float, out: list[Frame]) -> None:
        at = 2 if cmd <= 0xFF else 3  # the error code, after the command's byte(s)
        if frame[0] < at:  # not even an error code
            self._count("bad-length")
            return
        if frame == self._last_reply:
            self._count("duplicate")
            return
        if self._pending != cmd:
            self._count("unmatched-reply")
            return
        self._pending = None
        self._last_reply = frame
        error = frame[at]
        if error:
            self._count("error-reply")
            out.append(FiscalRejected(cmd, error, now))
