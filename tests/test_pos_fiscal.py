"""Fiscal and generic framed dialects (shtrih-m, atol-v3, stx-etx): hand-built byte
vectors, whole receipts over a merged two-way tap, retransmissions, error replies,
timeouts, noise, and properties (any bytes never raise; chunking never changes the
result; valid frames after noise are decoded)."""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storegate.core.pos.atol import AtolV3
from storegate.core.pos.frames import (
    Dialect,
    FiscalCancel,
    FiscalClose,
    FiscalDiscount,
    FiscalItem,
    FiscalRejected,
    Frame,
    ReceiptText,
    TenderKind,
)
from storegate.core.pos.framing import crc8, crc16_xmodem, lrc8, sum8, xor8
from storegate.core.pos.shtrih_m import ShtrihM
from storegate.core.pos.stx_etx import StxEtx, StxEtxSettings
from storegate.sim.fiscal import (
    ACK,
    ENQ,
    NAK,
    atol_cancel,
    atol_close,
    atol_frame,
    atol_item,
    shtrih_cancel,
    shtrih_close,
    shtrih_close_v2,
    shtrih_discount,
    shtrih_frame,
    shtrih_reply,
    shtrih_sale,
    shtrih_sale_v2,
    stx_etx_frame,
)

T = 100.0  # the lane clock in most tests


def feed_bytewise(parser: Dialect, stream: bytes, now: float = T) -> list[Frame]:
    out: list[Frame] = []
    for i in range(len(stream)):
        out += parser.feed(stream[i:i + 1], now)
    return out


def crc8_bitwise(data: bytes, poly: int = 0x31, init: int = 0xFF) -> int:
    """Independent of the table-driven implementation under test."""
    c = init
    for b in data:
        c ^= b
        for _ in range(8):
            c = ((c << 1) ^ poly) & 0xFF if c & 0x80 else (c << 1) & 0xFF
    return c


# -- checksums ------------------------------------------------------------------------


def test_checksum_catalogue_check_values() -> None:
    check = b"123456789"
    assert crc8(check) == 0xF7  # CRC-8/NRSC-5: poly 0x31, init 0xFF
    assert crc8(check, 0x07, 0x00) == 0xF4  # CRC-8/SMBUS
    assert crc16_xmodem(check) == 0x31C3
    assert xor8(b"\x41\x42\x03") == 0x00
    assert xor8(b"") == 0
    assert lrc8(b"\x41\x42\x03") == 0x7A  # -(0x86) mod 256
    assert sum8(b"\xff\x02") == 0x01
    assert crc8(bytes((0x01, 0x59))) == 0x83  # worked by hand, bit by bit


@given(st.binary(max_size=600))
def test_xor8_and_crc8_agree_with_the_obvious(data: bytes) -> None:
    assert xor8(data) == functools.reduce(operator.xor, data, 0)
    assert crc8(data) == crc8_bitwise(data)


# -- Shtrih-M -------------------------------------------------------------------------

CANCEL_BY_HAND = bytes.fromhex("02 05 88 1e000000 93")  # LRC 05^88^1E = 93
ERROR_REPLY_BY_HAND = bytes.fromhex("02 02 80 50 d2")  # sale refused with error 0x50


def hand_sale(name: str, qty: int, price: int) -> bytes:
    data = (bytes((0x1E, 0, 0, 0)) + qty.to_bytes(5, "little") + price.to_bytes(5, "little")
            + b"\x01" + b"\x00" * 4 + name.encode("cp1251").ljust(40, b"\x00"))
    body = bytes((1 + len(data), 0x80)) + data
    return b"\x02" + body + bytes((functools.reduce(operator.xor, body),))


def test_shtrih_hand_vectors() -> None:
    p = ShtrihM()
    assert p.feed(CANCEL_BY_HAND, T) == [FiscalCancel(T, 0x88)]
    assert shtrih_cancel() == CANCEL_BY_HAND
    sale = hand_sale("Сыр", 1500, 70000)
    assert sale[:16].hex(" ") == "02 3c 80 1e 00 00 00 dc 05 00 00 00 70 11 01 00"
    assert shtrih_sale("Сыр", 1500, 70000) == sale
    assert p.feed(ENQ + sale, T) == [FiscalItem("Сыр", 1500, 70000, T, 1, False, 0x80)]
    # the register's answer to it, the other direction of a merged tap
    assert p.feed(ACK + ERROR_REPLY_BY_HAND, T) == [FiscalRejected(0x80, 0x50, T)]
    assert shtrih_reply(0x80, 0x50) == ERROR_REPLY_BY_HAND
    assert p.rejected == {"error-reply": 1}


def full_receipt(merged: bool) -> bytes:
    """ENQ-polled commands; with ``merged`` also the register's side (NAK, ACK, reply)."""
    def exchange(request: bytes, reply: bytes) -> bytes:
        if not merged:
            return ENQ + request
        return ENQ + NAK + request + ACK + reply + ACK

    return b"".join((
        exchange(shtrih_sale("Яблоки Гренни", 1500, 12990), shtrih_reply(0x80)),
        exchange(shtrih_sale("Коньяк 0.5", 1000, 250000), shtrih_reply(0x80)),
        exchange(shtrih_sale("Пакет", 2000, 500, department=2), shtrih_reply(0x80)),
        exchange(shtrih_discount(1000, "скидка"), shtrih_reply(0x86)),
        exchange(shtrih_close(100000, 168485, text="спасибо"),
                 shtrih_reply(0x85, extra=(0).to_bytes(5, "little"))),
    ))


FULL_RECEIPT_FRAMES: list[Frame] = [
    FiscalItem("Яблоки Гренни", 1500, 12990, T, 1, False, 0x80),
    FiscalItem("Коньяк 0.5", 1000, 250000, T, 1, False, 0x80),  # price >= 65536 kopecks
    FiscalItem("Пакет", 2000, 500, T, 2, False, 0x80),
    FiscalDiscount(1000, T, 0x86),
    FiscalClose((("cash", 100000), ("card", 168485)), T, 0, "спасибо", 0x85),
]


@pytest.mark.parametrize("merged", [False, True])
def test_shtrih_full_receipt(merged: bool) -> None:
    stream = full_receipt(merged)
    p = ShtrihM()
    assert p.feed(stream, T) == FULL_RECEIPT_FRAMES
    assert p.rejected == {}
    q = ShtrihM()
    assert feed_bytewise(q, stream) == FULL_RECEIPT_FRAMES
    assert q.rejected == {}


def test_shtrih_close_maps_tenders_and_leaves_out_zero_sums() -> None:
    p = ShtrihM()
    f = p.feed(shtrih_close(0, 500, 0, 700, discount_percent_centi=-250), T)
    assert f == [FiscalClose((("card", 500), ("other", 700)), T, 0, "", 0x85,
                             discount_percent_centi=-250)]  # a 2.5 % surcharge


def test_shtrih_return_surcharge_and_longer_text() -> None:
    p = ShtrihM()
    assert p.feed(ENQ + shtrih_sale("Брак", 1000, 999, is_return=True), T) == [
        FiscalItem("Брак", 1000, 999, T, 1, True, 0x82)]
    assert p.feed(ENQ + shtrih_discount(250, surcharge=True), T) == [
        FiscalDiscount(-250, T, 0x87)]
    # later firmware: a text field past 40 bytes is read to the end of the frame
    long_name = "Х" * 60
    frame = hand_sale(long_name, 1000, 100)
    assert len(frame) == 3 + 80
    assert p.feed(ENQ + frame, T) == [FiscalItem(long_name, 1000, 100, T, 1, False, 0x80)]


def test_shtrih_v2_operation_and_close_of_fiscal_storage_registers() -> None:
    """FF46 / FF45 as the vendor's javapos_shtrih sends them (FSPrintRecItem,
    FSCloseReceipt): two command bytes, quantity in millionths, an explicit or
    register-computed line sum, 16 payment types, a rounding in kopecks."""
    sale = shtrih_sale_v2("Молоко", 2000, 8990)
    # STX LEN FF 46 password(4) op(1) qty(6) price(5) sum(5) tax(5) rate dept method subj
    assert sale[:4] == bytes((0x02, 2 + 4 + 1 + 6 + 5 + 5 + 5 + 4 + 40, 0xFF, 0x46))
    assert sale[8] == 1 and int.from_bytes(sale[9:15], "little") == 2_000_000
    weighed = shtrih_sale_v2("Сыр", 1254, 12900, sum_minor=16177, department=2)
    back = shtrih_sale_v2("Брак", 1000, 999, is_return=True)
    close = shtrih_close_v2({1: 20000, 2: 3000, 13: 2167, 15: 100}, rounding_minor=7,
                            text="спасибо")
    p = ShtrihM()
    out = p.feed(ENQ + sale + ENQ + weighed + ENQ + back + ENQ + close, T)
    assert out == [
        FiscalItem("Молоко", 2000, 8990, T, 1, False, 0xFF46),
        FiscalItem("Сыр", 1254, 12900, T, 2, False, 0xFF46, amount_minor=16177),
        FiscalItem("Брак", 1000, 999, T, 1, True, 0xFF46),
        FiscalClose((("cash", 20000), ("card", 3000), ("card", 2167), ("other", 100)), T, 7,
                    "спасибо", 0xFF45)]
    assert p.rejected == {}
    # the register refuses the next sale: its two-byte reply carries the error code
    assert p.feed(ENQ + sale + shtrih_frame(0xFF46, bytes((0x33,))), T) == [
        FiscalItem("Молоко", 2000, 8990, T, 1, False, 0xFF46), FiscalRejected(0xFF46, 0x33, T)]
    # an expense (operation 3) is no sale
    expense = bytearray(sale)
    expense[8] = 3
    expense[-1] = xor8(bytes(expense[1:-1]))
    assert p.feed(ENQ + bytes(expense), T) == []
    assert p.rejected == {"error-reply": 1, "ignored-operation": 1}


def test_shtrih_retransmission_versus_the_same_item_sold_again() -> None:
    sale = shtrih_sale("Хлеб", 1000, 4500)
    p = ShtrihM()
    # NAK, then the host resends at once: one sale
    assert len(p.feed(ENQ + sale + NAK + sale, T)) == 1
    # a missing ACK, resent again: still the same sale
    assert p.feed(sale, T + 0.5) == []
    assert p.rejected == {"duplicate": 2}
    # a new ENQ, the same bytes: the same item sold a second time
    assert p.feed(ENQ + sale, T + 1) == [FiscalItem("Хлеб", 1000, 4500, T + 1, 1, False, 0x80)]
    # a different frame in between does not make a repeat "new"
    cancel = shtrih_cancel()
    assert len(p.feed(ENQ + cancel + ENQ + sale + sale, T + 2)) == 2


def test_shtrih_error_replies() -> None:
    sale = shtrih_sale("Водка", 1000, 50000)
    p = ShtrihM()
    out = p.feed(ENQ + NAK + sale + ACK + shtrih_reply(0x80, 0x4A), T)
    assert out == [FiscalItem("Водка", 1000, 50000, T, 1, False, 0x80),
                   FiscalRejected(0x80, 0x4A, T)]
    # the host NAKs the reply and the register sends it again; or ENQ -> ACK -> reply
    assert p.feed(NAK + shtrih_reply(0x80, 0x4A) + ENQ + ACK + shtrih_reply(0x80, 0x4A),
                  T) == []
    assert p.rejected == {"error-reply": 1, "duplicate": 2}
    # a success reply is just the end of the exchange
    assert p.feed(ENQ + sale + ACK + shtrih_reply(0x80), T) == [
        FiscalItem("Водка", 1000, 50000, T, 1, False, 0x80)]
    # a reply to a request we never saw is not ours to act on
    assert p.feed(shtrih_reply(0x88, 0x4A), T) == []
    assert p.rejected["unmatched-reply"] == 1
    # the cancel's reply (LEN 3) is shorter than the cancel (LEN 5)
    assert p.feed(ENQ + shtrih_cancel() + ACK + shtrih_reply(0x88, 0x50), T) == [
        FiscalCancel(T, 0x88), FiscalRejected(0x88, 0x50, T)]


def test_shtrih_other_commands_are_ignored_not_errors() -> None:
    from storegate.sim.fiscal import shtrih_frame

    p = ShtrihM()
    status = shtrih_frame(0x11, (30).to_bytes(4, "little"))  # get status
    print_line = shtrih_frame(0x17, b"\x1e\0\0\0\x02" + "Итого".encode("cp1251").ljust(40, b"\0"))
    assert p.feed(ENQ + status + ENQ + print_line + CANCEL_BY_HAND, T) == [FiscalCancel(T, 0x88)]
    assert p.rejected == {"ignored-command": 2}


def test_shtrih_partial_frame_times_out() -> None:
    sale = shtrih_sale("Сметана", 1000, 8900)
    assert b"\x02" not in sale[1:]
    p = ShtrihM()
    assert p.feed(ENQ + sale[:20], 0.0) == []
    assert p.flush(0.040) == []  # within the per-byte timeout: still waiting
    assert p.feed(sale[20:40], 0.045) == []  # 45 ms after the last byte: fine
    assert p.flush(0.100) == []  # 55 ms: dropped
    # its other 39 bytes were searched again for a start: noise
    assert p.rejected == {"timeout": 1, "noise": 39}
    assert p.feed(sale[40:], 0.2) == []  # the rest is noise now
    assert p.feed(ENQ + sale, 0.3) == [FiscalItem("Сметана", 1000, 8900, 0.3, 1, False, 0x80)]
    # the late chunk itself ends the partial frame, then is parsed on its own
    assert p.feed(ENQ + sale[:30], 1.0) == []
    assert p.feed(ENQ + sale, 1.06) == [FiscalItem("Сметана", 1000, 8900, 1.06, 1, False, 0x80)]
    assert p.rejected["timeout"] == 2


def test_shtrih_false_start_hides_frames_until_the_timeout() -> None:
    # noise "02 FF" claims a 255-byte frame; the real frames sit inside it
    sale = shtrih_sale("Кефир", 1000, 7000)
    p = ShtrihM()
    assert p.feed(b"\x02\xff" + ENQ + sale + ENQ + CANCEL_BY_HAND, 5.0) == []
    assert p.flush(5.1) == [FiscalItem("Кефир", 1000, 7000, 5.0, 1, False, 0x80),
                            FiscalCancel(5.0, 0x88)]
    assert p.rejected == {"timeout": 1, "noise": 1}


def test_shtrih_noise_before_and_inside_frames() -> None:
    sale = shtrih_sale("Сок", 1000, 12000)
    corrupted = bytearray(shtrih_sale("Сок", 1000, 12001))
    corrupted[30] ^= 0x40  # a line hit inside a frame
    noise = bytes(range(0x30, 0x60)) + b"\xff\x00\x02\x03\xfe"  # holds an STX (false start)
    stream = noise + ENQ + bytes(corrupted) + ENQ + sale + b"\x99\x98" + CANCEL_BY_HAND
    p = ShtrihM()
    assert p.feed(stream, T) == [FiscalItem("Сок", 1000, 12000, T, 1, False, 0x80),
                                 FiscalCancel(T, 0x88)]
    assert p.rejected["bad-lrc"] == 2  # the false start, the hit frame
    q = ShtrihM()
    assert feed_bytewise(q, stream) == [FiscalItem("Сок", 1000, 12000, T, 1, False, 0x80),
                                        FiscalCancel(T, 0x88)]
    assert q.rejected == p.rejected


# -- ATOL v3 --------------------------------------------------------------------------

# A cancel as atol4j sends it: access password 00 00, then the command 0x59
ATOL_CANCEL_BY_HAND = bytes.fromhex("fe 03 00 01 00 00 59") + bytes((crc8_bitwise(
    bytes.fromhex("01 00 00 59")),))
PW = b"\x00\x00"


def hand_atol(packet_id: int, data: bytes) -> bytes:
    body = bytes((packet_id,)) + data
    body += bytes((crc8_bitwise(body),))
    stuffed = b"".join(b"\xfd\xee" if b == 0xFE else b"\xfd\xed" if b == 0xFD else bytes((b,))
                       for b in body)
    return bytes((0xFE, len(data) & 0x7F, len(data) >> 7)) + stuffed


def test_atol_hand_vectors() -> None:
    """Layouts of kurbatov/atol4j (ItemRegistrationCommand, CloseBillCommand,
    CancelBillCommand; CashRegister.execute puts the password before every command)."""
    p = AtolV3()
    assert p.feed(ATOL_CANCEL_BY_HAND, T) == [FiscalCancel(T, 0x59)]
    assert atol_frame(1, atol_cancel()) == ATOL_CANCEL_BY_HAND
    # id 0xFE and 0xFD are stuffed
    frame = hand_atol(0xFE, PW + b"\x59")
    assert frame[:5] == bytes.fromhex("fe 03 00 fd ee")
    assert atol_frame(0xFE, atol_cancel()) == frame
    assert p.feed(frame, T) == [FiscalCancel(T, 0x59)]
    assert p.feed(hand_atol(0xFD, PW + b"\x59"), T) == [FiscalCancel(T, 0x59)]
    # an item: name cp866, price 1234.56 (6 BCD), qty 1.5 (5 BCD), type 1, a discount of
    # 10.00 (sign 0), tax 2, section 3, padded to 104 bytes
    item = (b"\xe6\x02" + "Сыр ▓".encode("cp866").ljust(64, b"\0")
            + bytes.fromhex("000000123456") + bytes.fromhex("0000001500") + b"\x01\x00"
            + bytes.fromhex("000000001000") + b"\x02\x03" + b"\x00" * 17)
    assert len(item) == 104
    assert atol_item("Сыр ▓", 1500, 123456, department=3, discount_minor=1000, tax=2) == item
    assert p.feed(hand_atol(7, PW + item), T) == [
        FiscalItem("Сыр ▓", 1500, 123456, T, 3, False, 0xE6), FiscalDiscount(1000, T, 0xE6)]
    surcharge = atol_item("Сыр", 1000, 500, discount_minor=-50)
    assert p.feed(atol_frame(8, surcharge), T)[1] == FiscalDiscount(-50, T, 0xE6)
    # a long packet: LEN over 127 takes both 7-bit halves
    long_item = PW + item + b"\x00" * 100
    assert hand_atol(9, long_item)[1:3] == bytes((len(long_item) & 0x7F, len(long_item) >> 7))
    assert p.feed(hand_atol(9, long_item), T)[0] == FiscalItem("Сыр ▓", 1500, 123456, T, 3,
                                                               False, 0xE6)
    # a close: tender 1 cash, 2 electronic; a sum of 0 is "the receipt's sum"
    assert p.feed(hand_atol(10, PW + bytes.fromhex("4a 00 02 00 00 01 00 00")), T) == [
        FiscalClose((("card", 10000),), T, command=0x4A)]
    assert p.feed(atol_frame(11, atol_close(0, tender=1)), T) == [
        FiscalClose((), T, command=0x4A, rest="cash")]
    assert p.rejected == {}
    # the same command without its password is not read as a command
    assert p.feed(hand_atol(12, b"\x59"), T) == []
    assert p.rejected == {"bad-length": 1}


def test_atol_receipt_with_add_task_wrapper() -> None:
    stream = b"".join((
        atol_frame(0x10, atol_item("Молоко", 1500, 8990), task_id=1),
        atol_frame(0x11, atol_item("Хлеб", 1000, 70000), task_id=2),
        atol_frame(0x12, b"\xc2\x01", password=None),  # a transport command (ack)
        atol_frame(0x13, atol_close(83485, tender=1), task_id=3),
        atol_frame(0x14, atol_close(1000, tender=2)),
        atol_frame(0x15, atol_close(5, tender=5)),
        atol_frame(0x16, atol_cancel(), task_id=4),
    ))
    expected: list[Frame] = [
        FiscalItem("Молоко", 1500, 8990, T, 1, False, 0xE6),
        FiscalItem("Хлеб", 1000, 70000, T, 1, False, 0xE6),
        FiscalClose((("cash", 83485),), T, command=0x4A),
        FiscalClose((("card", 1000),), T, command=0x4A),
        FiscalClose((("other", 5),), T, command=0x4A),
        FiscalCancel(T, 0x59),
    ]
    p = AtolV3()
    assert p.feed(stream, T) == expected
    assert p.rejected == {"ignored-command": 1}
    q = AtolV3()
    assert feed_bytewise(q, stream) == expected
    assert q.rejected == p.rejected


def test_atol_retransmission_and_reuse_of_an_id() -> None:
    sale = atol_frame(5, atol_item("Чай", 1000, 15000), task_id=9)
    p = AtolV3()
    assert len(p.feed(sale + sale, T)) == 1
    assert p.rejected == {"duplicate": 1}
    # the same item again under a new packet id is a new sale
    assert len(p.feed(atol_frame(6, atol_item("Чай", 1000, 15000), task_id=9), T)) == 1


def test_atol_bad_crc_cut_frames_bad_escape_and_bad_bcd() -> None:
    good = atol_frame(1, atol_item("Вода", 1000, 5000))
    bad_crc = bytearray(atol_frame(2, atol_item("Вода", 1000, 5001)))
    bad_crc[-1] ^= 0x01
    cut = atol_frame(3, atol_item("Вода", 1000, 5002))[:40]
    bad_escape = bytes.fromhex("fe 01 00 fd 00 59 00")
    bad_bcd = hand_atol(4, PW + b"\x4a\x00\x01" + bytes.fromhex("000000001a"))
    p = AtolV3()
    out = p.feed(b"\x00\xfd\x13" + bytes(bad_crc) + cut + bad_escape + bad_bcd + good, T)
    assert out == [FiscalItem("Вода", 1000, 5000, T, 1, False, 0xE6)]
    assert p.rejected == {"noise": 3, "bad-crc": 1, "cut": 1, "bad-escape": 1, "bad-bcd": 1}


def test_atol_partial_packet_times_out() -> None:
    frame = atol_frame(1, atol_cancel())
    p = AtolV3(byte_timeout_s=0.2)
    assert p.feed(frame[:3], 0.0) == []
    assert p.flush(0.1) == []
    assert p.feed(frame[3:], 0.15) == [FiscalCancel(0.15, 0x59)]
    assert p.feed(frame[:3], 1.0) == []
    assert p.flush(1.3) == []
    assert p.rejected == {"timeout": 1}
    assert p.feed(atol_frame(2, atol_cancel()), 2.0) == [FiscalCancel(2.0, 0x59)]


# -- generic STX/ETX ------------------------------------------------------------------

ZVT = StxEtxSettings(start=b"\x10\x02", end=b"\x10\x03", escape=0x10, checksum="crc16-xmodem",
                     covers="payload", encoding="cp866")


@pytest.mark.parametrize(("cfg", "frame"), [
    (StxEtxSettings(checksum="lrc"), "02 41 42 03 7a"),
    (StxEtxSettings(checksum="xor"), "02 41 42 03 00"),
    (StxEtxSettings(checksum="xor", covers="payload"), "02 41 42 03 03"),
    (StxEtxSettings(checksum="sum8", covers="payload"), "02 41 42 03 83"),
    (StxEtxSettings(checksum="none"), "02 41 42 03"),
    (StxEtxSettings(checksum="crc8", covers="payload"),
     f"02 41 42 03 {crc8_bitwise(b'AB'):02x}"),
])
def test_stx_etx_hand_vectors(cfg: StxEtxSettings, frame: str) -> None:
    raw = bytes.fromhex(frame)
    assert stx_etx_frame(b"AB", cfg) == raw
    p = StxEtx(cfg)
    assert p.feed(raw, T) == [ReceiptText(("AB",), T, started_at=T)]
    assert p.rejected == {}


def test_stx_etx_dle_framing_with_crc16() -> None:
    raw = bytes.fromhex("10 02") + b"123456789" + bytes.fromhex("10 03 31 c3")
    p = StxEtx(ZVT)
    assert p.feed(raw, T) == [ReceiptText(("123456789",), T, started_at=T)]
    assert stx_etx_frame(b"123456789", ZVT) == raw
    # a literal DLE is doubled; "DLE DLE ETX" is DLE then ETX, not the end
    payload = b"A\x10\x03B\x10\x10\x02C"
    framed = stx_etx_frame(payload, ZVT)
    assert framed[:-2] == b"\x10\x02A\x10\x10\x03B\x10\x10\x10\x10\x02C\x10\x03"
    assert p.feed(framed, 1.0) == [ReceiptText(("A\x10\x03B\x10\x10\x02C",), 1.0, started_at=1.0)]
    little = StxEtxSettings(start=b"\x10\x02", end=b"\x10\x03", escape=0x10,
                            checksum="crc16-xmodem", crc16_byteorder="little")
    assert stx_etx_frame(b"1", little)[-2:] == crc16_xmodem(b"1\x03").to_bytes(2, "little")
    assert StxEtx(little).feed(stx_etx_frame(b"1", little), T) == [
        ReceiptText(("1",), T, started_at=T)]
    assert p.rejected == {}


def test_stx_etx_single_byte_escape() -> None:
    cfg = StxEtxSettings(escape=0x1B, checksum="lrc")
    raw = bytes.fromhex("02 41 1b 02 1b 03 1b 1b 42 03") + bytes((lrc8(b"A\x02\x03\x1bB\x03"),))
    assert stx_etx_frame(b"A\x02\x03\x1bB", cfg) == raw
    p = StxEtx(cfg)
    assert p.feed(raw, T) == [ReceiptText(("A\x02\x03\x1bB",), T, started_at=T)]
    assert p.feed(bytes.fromhex("02 41 1b 41 03 00") + raw, T) == [
        ReceiptText(("A\x02\x03\x1bB",), T, started_at=T)]
    assert p.rejected == {"bad-escape": 1, "noise": 3}


def test_stx_etx_lines_one_frame_per_job() -> None:
    cfg = StxEtxSettings(encoding="cp866")
    text = "ООО Ромашка\r\n\r\nЧЕК 12   \nМолоко      89.90\rИТОГ 89.90\n\n"
    p = StxEtx(cfg)
    assert p.feed(stx_etx_frame(text, cfg), T) == [ReceiptText(
        ("ООО Ромашка", "ЧЕК 12", "Молоко      89.90", "ИТОГ 89.90"), T, started_at=T)]
    assert p.feed(stx_etx_frame("\r\n \n", cfg), T) == []
    assert p.rejected == {"empty": 1}


def test_stx_etx_failures_resync() -> None:
    cfg = StxEtxSettings(checksum="xor", max_frame=32)
    good = stx_etx_frame("OK", cfg)
    bad = bytearray(stx_etx_frame("BAD", cfg))
    bad[-1] ^= 0xFF
    too_long = stx_etx_frame("X" * 40, cfg)
    cut = b"\x02half a frame"
    p = StxEtx(cfg)
    out = p.feed(b"junk" + bytes(bad) + too_long + cut + good, T)
    assert out == [ReceiptText(("OK",), T, started_at=T)]
    # junk (4), then the rest of the too-long frame after its 33rd X (7 X, ETX, XOR)
    assert p.rejected == {"noise": 13, "bad-checksum": 1, "too-long": 1, "cut": 1}


def test_stx_etx_timeout_and_started_at() -> None:
    cfg = StxEtxSettings(byte_timeout_s=0.3)
    frame = stx_etx_frame("ЧЕК", cfg)
    p = StxEtx(cfg)
    assert p.feed(frame[:2], 1.0) == []
    assert p.feed(frame[2:], 1.2) == [ReceiptText(("ЧЕК",), 1.2, started_at=1.0)]
    assert p.feed(frame[:2], 2.0) == []
    assert p.flush(2.4) == []
    assert p.feed(frame[2:] + frame, 2.5) == [ReceiptText(("ЧЕК",), 2.5, started_at=2.5)]
    assert p.rejected == {"timeout": 1, "noise": 4}  # the stale tail: 2 letters, ETX, XOR


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"start": b""}, "start"),
    ({"end": b"\x03\x03\x03"}, "end"),
    ({"start": b"\x03"}, "differ"),
    ({"escape": 0x02}, "escape"),
    ({"escape": 300}, "escape"),
    ({"checksum": "md5"}, "checksum"),
    ({"covers": "all"}, "covers"),
    ({"encoding": "klingon"}, "encoding"),
    ({"max_frame": 0}, "max_frame"),
    ({"byte_timeout_s": 0}, "byte_timeout_s"),
])
def test_stx_etx_settings_validate(kwargs: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        StxEtxSettings(**kwargs)  # type: ignore[arg-type]


def test_encoders_refuse_what_a_device_cannot_send() -> None:
    with pytest.raises(ValueError, match="marker"):
        stx_etx_frame(b"a\x03b", StxEtxSettings())
    with pytest.raises(ValueError, match="quantity"):
        shtrih_sale("x", 1 << 40, 1)
    with pytest.raises(ValueError, match="price"):
        atol_item("x", 1, 10**12)


# -- properties -----------------------------------------------------------------------

STX_SETTINGS = [
    StxEtxSettings(),
    StxEtxSettings(checksum="lrc", max_frame=100),  # generated payloads are <= 86 bytes
    StxEtxSettings(escape=0x1B, checksum="crc8", covers="payload"),
    ZVT,
    StxEtxSettings(start=b"\x10\x02", end=b"\x10\x03", checksum="sum8"),
]
PARSERS: list[tuple[str, Callable[[], Dialect]]] = [
    ("shtrih-m", ShtrihM), ("atol-v3", AtolV3),
    *((f"stx-etx/{i}", functools.partial(StxEtx, cfg)) for i, cfg in enumerate(STX_SETTINGS)),
]

cp1251_names = st.text(alphabet="абвгдЖЗИКЛ xyzXYZ0123456789.,%№-", max_size=40).map(str.rstrip)
cp866_names = st.text(alphabet="абвгдЖЗИКЛ xyzXYZ0123456789.,%№▓-", max_size=64).map(str.rstrip)
money = st.integers(min_value=0, max_value=10**10 - 1)


@st.composite
def shtrih_ops(draw: st.DrawFn) -> tuple[bytes, Frame]:
    kind = draw(st.sampled_from(["sale", "return", "discount", "surcharge", "cancel", "close"]))
    if kind in ("sale", "return"):
        name, qty, price = draw(cp1251_names), draw(money), draw(money)
        dept = draw(st.integers(0, 255))
        ret = kind == "return"
        return (shtrih_sale(name, qty, price, dept, is_return=ret),
                FiscalItem(name, qty, price, T, dept, ret, 0x82 if ret else 0x80))
    if kind in ("discount", "surcharge"):
        amount = draw(money)
        sur = kind == "surcharge"
        return (shtrih_discount(amount, surcharge=sur),
                FiscalDiscount(-amount if sur else amount, T, 0x87 if sur else 0x86))
    if kind == "cancel":
        return shtrih_cancel(draw(st.integers(0, 2**32 - 1))), FiscalCancel(T, 0x88)
    sums = draw(st.lists(money, min_size=4, max_size=4))
    kinds: tuple[TenderKind, ...] = ("cash", "card", "other", "other")
    return (shtrih_close(*sums), FiscalClose(
        tuple((k, s) for k, s in zip(kinds, sums, strict=True) if s), T, command=0x85))


@st.composite
def atol_ops(draw: st.DrawFn) -> tuple[bytes, Frame]:
    kind = draw(st.sampled_from(["item", "close", "cancel"]))
    if kind == "item":
        name, qty, price = draw(cp866_names), draw(money), draw(money)
        dept = draw(st.integers(0, 255))
        cmd: bytes = atol_item(name, qty, price, dept)
        frame: Frame = FiscalItem(name, qty, price, T, dept, False, 0xE6)
    elif kind == "close":
        amount, tender = draw(money), draw(st.integers(0, 255))
        cmd = atol_close(amount, tender)
        tender_kind: TenderKind = "cash" if tender == 1 else "card" if tender == 2 else "other"
        frame = FiscalClose(((tender_kind, amount),), T, command=0x4A) if amount else \
            FiscalClose((), T, command=0x4A, rest=tender_kind)
    else:
        cmd, frame = atol_cancel(), FiscalCancel(T, 0x59)
    return cmd, frame


@st.composite
def atol_stream(draw: st.DrawFn) -> tuple[bytes, list[Frame]]:
    ops = draw(st.lists(atol_ops(), max_size=6))
    first_id = draw(st.integers(0, 255))
    raw = b"".join(
        atol_frame((first_id + i) % 256, cmd,
                   task_id=draw(st.none() | st.integers(0, 255)))
        for i, (cmd, _) in enumerate(ops))
    return raw, [f for _, f in ops]


@st.composite
def stx_stream(draw: st.DrawFn, cfg: StxEtxSettings) -> tuple[bytes, list[Frame]]:
    texts = draw(st.lists(st.lists(st.text(alphabet="abcЖЗИ 019.-", min_size=1, max_size=20)
                                   .map(str.rstrip).filter(bool), min_size=1, max_size=4),
                          max_size=5))
    raw = b"".join(stx_etx_frame("\r\n".join(lines), cfg) for lines in texts)
    return raw, [ReceiptText(tuple(lines), T, started_at=T) for lines in texts]


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(("name", "make"), PARSERS, ids=[n for n, _ in PARSERS])
@settings(max_examples=150)
@given(chunks=st.lists(st.tuples(st.binary(max_size=80), st.floats(0, 0.2)), max_size=12),
       idle=st.floats(0, 1))
def test_arbitrary_bytes_never_raise(name: str, make: Callable[[], Dialect],
                                     chunks: list[tuple[bytes, float]], idle: float) -> None:
    p = make()
    assert p.name == name.split("/", maxsplit=1)[0]
    now = 0.0
    for data, dt in chunks:
        now += dt
        for f in p.feed(data, now):
            assert f.at <= now  # frames freed by a timeout keep their bytes' time
    p.flush(now + idle)
    assert all(isinstance(v, int) and v > 0 for v in p.rejected.values())


@settings(max_examples=100)
@given(ops=st.lists(shtrih_ops(), max_size=6), noise=st.binary(max_size=60),
       cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_shtrih_valid_frames_after_noise(ops: list[tuple[bytes, Frame]], noise: bytes,
                                         cuts: list[int]) -> None:
    frames = b"".join(ENQ + raw + ACK for raw, _ in ops)
    expected = [f for _, f in ops]
    # noise without a start byte: nothing is hidden, in any chunking
    clean = noise.replace(b"\x02", b"")
    p = ShtrihM()
    got = [f for part in chunked(clean + frames, cuts) for f in p.feed(part, T)]
    assert got == expected
    # any noise, then the line idles past the per-byte timeout: a false start is dropped
    q = ShtrihM()
    early = q.feed(noise, T - 1) + q.flush(T - 0.5)
    assert all(f.at == T - 1 for f in early)
    assert q.feed(frames, T) == expected


@settings(max_examples=100)
@given(stream=atol_stream(), noise=st.binary(max_size=60),
       cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_atol_valid_frames_after_any_noise(stream: tuple[bytes, list[Frame]], noise: bytes,
                                           cuts: list[int]) -> None:
    # FE only ever starts a packet: any noise before one is left behind, no idle needed
    raw, expected = stream
    p = AtolV3()
    got = [f for part in chunked(noise + raw, cuts) for f in p.feed(part, T)]
    assert got[len(got) - len(expected):] == expected
    q = AtolV3()
    assert feed_bytewise(q, noise + raw) == got


@pytest.mark.parametrize("cfg", STX_SETTINGS)
@settings(max_examples=60)
@given(data=st.data(), noise=st.binary(max_size=60),
       cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_stx_etx_valid_frames_after_noise(cfg: StxEtxSettings, data: st.DataObject,
                                          noise: bytes, cuts: list[int]) -> None:
    raw, expected = data.draw(stx_stream(cfg))
    clean = noise.replace(cfg.start[:1], b"")
    p = StxEtx(cfg)
    got = [f for part in chunked(clean + raw, cuts) for f in p.feed(part, T)]
    assert got == expected
    # any noise, then an idle gap past the timeout
    q = StxEtx(cfg)
    q.feed(noise, T - 2)
    q.flush(T - 1)
    assert q.feed(raw, T) == expected


@pytest.mark.parametrize(("name", "make"), PARSERS, ids=[n for n, _ in PARSERS])
@settings(max_examples=100)
@given(data=st.data(), noise=st.lists(st.binary(max_size=12), max_size=4),
       cuts=st.lists(st.integers(0, 10_000), max_size=10))
def test_chunking_never_changes_the_result(name: str, make: Callable[[], Dialect],
                                           data: st.DataObject, noise: list[bytes],
                                           cuts: list[int]) -> None:
    p = make()
    if isinstance(p, ShtrihM):
        raws = [ENQ + raw for raw, _ in data.draw(st.lists(shtrih_ops(), max_size=4))]
    elif isinstance(p, AtolV3):
        raws = [data.draw(atol_stream())[0]]
    else:
        assert isinstance(p, StxEtx)
        raws = [data.draw(stx_stream(p.settings))[0]]
    pieces: list[bytes] = []
    for i, raw in enumerate(raws):
        pieces += [noise[i] if i < len(noise) else b"", raw]
    stream = b"".join(pieces + noise[len(raws):])
    whole = make()
    expected = whole.feed(stream, T)
    got = [f for part in chunked(stream, cuts) for f in p.feed(part, T)]
    assert got == expected
    assert p.rejected == whole.rejected
