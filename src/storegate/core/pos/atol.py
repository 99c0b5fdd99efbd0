"""ATOL fiscal register, transport protocol v3, read from a passive tap.

Transport packet: ``FE LEN0 LEN1 ID DATA CRC8``. ``LEN = LEN0 | LEN1 << 7`` (7 bits
each) counts the unescaped ``DATA`` bytes; ``ID`` is the packet id; ``CRC8`` (poly 0x31,
init 0xFF, MSB first, no final XOR) covers ``ID`` + ``DATA`` before stuffing. After the
``FE`` every 0xFE is sent as ``FD EE`` and every 0xFD as ``FD ED`` (``LEN`` is 7-bit and
so never stuffed). An unescaped ``FE`` therefore only ever starts a packet: one met
inside a packet means that packet was cut, and parsing restarts at it (``cut``).

``DATA`` is either a transport "add task" wrapper, ``C1 flags task-id message…``, or the
message itself. A message is the access password (``password_len`` bytes, BCD; 2 in the
ATOL protocol, ``00 00`` by default) followed by the device command.

Device commands, as the open-source atol4j client sends them (kurbatov/atol4j,
``command/registration/*.java``; checked for issue 16, see docs/pos.md, "Sources"):

* 0xE6 item registration: ``E6 flags(1) name(64, cp866, NUL padded) price(6, BCD, minor
  units) quantity(5, BCD, thousandths) type(1) discount-sign(1: 0 discount, 1
  surcharge) discount(6, BCD, minor units) tax(1) section(1)`` -> :class:`FiscalItem`
  (section as its department), then :class:`FiscalDiscount` when the discount is not 0;
* 0x4A close receipt: ``4A flags(1) tender(1: 1 cash, 2 electronic, 3 prepayment, 4
  credit, 5 other) sum(5, BCD, minor units)`` -> :class:`FiscalClose`; a sum of 0 means
  "the receipt's sum" (``rest``);
* 0x59 cancel receipt -> :class:`FiscalCancel`.

Before that check this parser read the quantity as 6 BCD bytes, the department from the
byte after it, the tender codes as 0 cash / 1 card, and no password: every real command
would have been ``ignored-command``. Trailing bytes after these layouts are ignored;
other commands (and the register's answers, when both directions are tapped) are
``ignored-command``. A packet identical to
the previous good one (same ``ID`` and ``DATA``) is a retransmission: ``duplicate``.

Counted in ``rejected``: ``noise`` (bytes outside packets), ``cut``, ``bad-length`` (a
LEN byte over 0x7F, a command shorter than its layout), ``bad-escape``, ``bad-crc``,
``bad-bcd``, ``duplicate``, ``ignored-command``, ``timeout`` (a partial packet whose
next byte is more than ``byte_timeout_s`` late).
"""

from __future__ import annotations

from typing import Final

from storegate.core.pos.frames import (
    FiscalCancel,
    FiscalClose,
    FiscalDiscount,
    FiscalItem,
    Frame,
    Rejections,
    TenderKind,
)
from storegate.core.pos.framing import TimedBuffer, crc8_table

FE: Final = 0xFE  # packet start
FD: Final = 0xFD  # stuffing escape
ADD_TASK: Final = 0xC1
ITEM: Final = 0xE6
CLOSE: Final = 0x4A
CANCEL: Final = 0x59
CRC8_POLY: Final = 0x31
CRC8_INIT: Final = 0xFF
TEXT_ENCODING: Final = "cp866"
NAME_LEN: Final = 64
PASSWORD_LEN: Final = 2  # the access password before every command (BCD)
# Not fixed by the transport spec we follow: long enough for any serial pause inside a
# packet at 4800 baud and up, short enough to count a dead partial packet promptly.
BYTE_TIMEOUT_S: Final = 0.5

_ITEM_LEN: Final = 1 + 1 + NAME_LEN + 6 + 5 + 1 + 1 + 6 + 1 + 1
_CLOSE_LEN: Final = 1 + 1 + 1 + 5
_CRC8: Final = crc8_table(CRC8_POLY)
# transport commands (atol4j transport/protocol/v3/Command.java): add task C1 (unwrapped
# above), ack C2, request C3, abort C4, ack-and-add C5; C5's layout is not documented in
# that source, so its task is not read (counted as ignored-command)
_TRANSPORT: Final = frozenset((0xC2, 0xC3, 0xC4, 0xC5))


def _bcd(raw: bytes) -> int | None:
    digits = raw.hex()
    return int(digits) if digits.isdigit() else None


def _tender(code: int) -> TenderKind:
    return "cash" if code == 1 else "card" if code == 2 else "other"


class AtolV3(TimedBuffer):
    """Incremental parser of an ATOL v3 transport line."""

    __slots__ = ("_count", "_last", "byte_timeout_s", "name", "password_len", "rejected")

    def __init__(self, byte_timeout_s: float = BYTE_TIMEOUT_S,
                 password_len: int = PASSWORD_LEN) -> None:
        if not byte_timeout_s > 0:
            raise ValueError("byte_timeout_s must be positive")
        if not 0 <= password_len <= 8:
            raise ValueError("password_len is 0..8 bytes")
        self.name = "atol-v3"
        self.password_len = password_len
        self.byte_timeout_s = byte_timeout_s
        self.rejected: dict[str, int] = {}
        self._count = Rejections(self.rejected)
        self._buf = bytearray()  # after a parse: empty, or one partial packet from its FE
        self._last_at = 0.0
        self._last: bytes | None = None  # ID + DATA of the previous good packet

    def _expire(self, now: float, out: list[Frame]) -> None:
        # A partial packet holds no later FE (it would have been cut there): drop it all.
        if self._buf and now - self._last_at > self.byte_timeout_s:
            self._count("timeout")
            self._buf.clear()

    def _parse(self, now: float, out: list[Frame]) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        while True:
            i = buf.find(FE, pos)
            if i < 0:
                if n > pos:
                    self._count("noise", n - pos)
                pos = n
                break
            if i > pos:
                self._count("noise", i - pos)
            pos = i
            if i + 3 > n:
                break
            len0, len1 = buf[i + 1], buf[i + 2]
            if (len0 | len1) & 0x80:  # LEN is 7-bit: an FE here is a restart, not a length
                self._count("cut" if FE in (len0, len1) else "bad-length")
                pos = i + 1
                continue
            size = (len0 | len1 << 7) + 2  # ID + DATA + CRC, unstuffed
            at = i + 3
            nxt = buf.find(FE, at)
            limit = n if nxt < 0 else nxt
            # the stuffed length: size plus one per FD escape inside it
            m = size
            while at + m <= limit:
                m2 = size + buf.count(FD, at, at + m)
                if m2 == m:
                    break
                m = m2
            if at + m > limit:
                if nxt < 0:
                    break  # wait for the rest
                self._count("cut")
                pos = nxt
                continue
            packet = bytes(buf[at:at + m])
            if m != size:
                packet = packet.replace(b"\xfd\xee", b"\xfe").replace(b"\xfd\xed", b"\xfd")
                if len(packet) != size:  # an FD followed by neither EE nor ED
                    self._count("bad-escape")
                    pos = at + m  # no FE can start inside it: skip it whole
                    continue
            crc = CRC8_INIT
            table = _CRC8
            for b in packet:
                crc = table[crc ^ b]
            if crc:  # running the CRC over its own value leaves 0 (no final XOR)
                self._count("bad-crc")
                pos = at + m
                continue
            self._packet(packet[:-1], now, out)
            pos = at + m
        del buf[:pos]

    def _packet(self, packet: bytes, now: float, out: list[Frame]) -> None:
        """``ID`` + ``DATA``, checked."""
        if packet == self._last:
            self._count("duplicate")
            return
        self._last = packet
        data = packet[1:]
        if data[:1] == bytes((ADD_TASK,)):
            data = data[3:]
        if data[:1] and data[0] in _TRANSPORT:  # the transport's own: no password
            self._count("ignored-command")
            return
        data = data[self.password_len:] if data else data
        if not data:
            self._count("bad-length")
            return
        cmd = data[0]
        if cmd == ITEM:
            self._item(data, now, out)
        elif cmd == CLOSE:
            self._close(data, now, out)
        elif cmd == CANCEL:
            out.append(FiscalCancel(now, cmd))
        else:
            self._count("ignored-command")

    def _item(self, data: bytes, now: float, out: list[Frame]) -> None:
        if len(data) < _ITEM_LEN:
            self._count("bad-length")
            return
        price = _bcd(data[66:72])
        quantity = _bcd(data[72:77])
        discount = _bcd(data[79:85])
        if price is None or quantity is None or discount is None:
            self._count("bad-bcd")
            return
        name = data[2:66].split(b"\x00", 1)[0].decode(TEXT_ENCODING, "replace").rstrip()
        out.append(FiscalItem(name=name, quantity_milli=quantity, price_minor=price,
                              at=now, department=data[86], command=ITEM))
        if discount:  # sign byte 0: a discount, else a surcharge
            out.append(FiscalDiscount(discount if data[78] == 0 else -discount, now, ITEM))

    def _close(self, data: bytes, now: float, out: list[Frame]) -> None:
        if len(data) < _CLOSE_LEN:
            self._count("bad-length")
            return
        amount = _bcd(data[3:8])
        if amount is None:
            self._count("bad-bcd")
            return
        kind = _tender(data[2])
        if amount:
            out.append(FiscalClose(tenders=((kind, amount),), at=now, command=CLOSE))
        else:  # 0: the receipt's sum
            out.append(FiscalClose(tenders=(), at=now, command=CLOSE, rest=kind))
