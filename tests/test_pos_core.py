"""POS lanes, pure parts: the ESC/POS grammar, receipt templates, fiscal QR, pole display,
scanner and lane assembly, on byte streams from the simulated lane (ground truth)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storegate.app.pos import read_template
from storegate.config import defaults_dir
from storegate.core import payloads as p
from storegate.core.events import EventDraft, rfc3339
from storegate.core.pos.display import PoleDisplay
from storegate.core.pos.escpos import EscPos
from storegate.core.pos.fiscal_qr import parse_fiscal_qr
from storegate.core.pos.frames import (
    DisplayUpdate,
    FiscalCancel,
    FiscalClose,
    FiscalDiscount,
    FiscalItem,
    FiscalRejected,
    Frame,
    JobStarted,
    ReceiptText,
    Scanned,
)
from storegate.core.pos.lane import LaneAssembler, LaneSettings
from storegate.core.pos.scanner import BarcodeScanner
from storegate.core.pos.template import Template, TemplateError, parse_money, parse_quantity
from storegate.core.pseudonyms import WITHHELD, PersonalData, parse_key, pseudonym
from storegate.sim.lane import (
    display_updates,
    escpos_job,
    fiscal_qr,
    random_receipt,
    receipt_lines,
    scanner_codes,
)

TEMPLATES = defaults_dir() / "pos" / "templates"
RU = read_template(TEMPLATES / "ru-generic.toml")
T0 = 1_795_000_000.0
KEY = bytes(range(32))
KEYED = PersonalData(KEY)


def jobs(data: bytes, chunks: list[int] | None = None, t: float = T0) -> tuple[list[ReceiptText],
                                                                              EscPos]:
    e = EscPos("cp437")
    out = []
    if chunks is None:
        out += e.feed(data, t)
    else:
        pos = 0
        for n in chunks:
            out += e.feed(data[pos:pos + n], t)
            pos += n
        out += e.feed(data[pos:], t)
    out += e.flush(t + 10)
    return [f for f in out if isinstance(f, ReceiptText)], e


# --- ESC/POS ---------------------------------------------------------------------------


def test_escpos_receipt_text_qr_barcode_and_cut() -> None:
    r = random_receipt(random.Random(1), 501)
    [job], e = jobs(escpos_job(r))
    assert list(job.lines) == [ln.rstrip() for ln in receipt_lines(r)]
    assert job.qr == (fiscal_qr(r),)
    assert job.barcodes == (r.items[0].ean,)
    assert job.cut and e.rejected == {}


@given(st.lists(st.integers(1, 64), max_size=400))
@settings(max_examples=60, deadline=None)
def test_escpos_any_chunking_gives_the_same_jobs(chunks: list[int]) -> None:
    r = random_receipt(random.Random(2), 77)
    data = escpos_job(r) * 2
    whole, _ = jobs(data)
    split, _ = jobs(data, chunks)
    assert split == whole and len(whole) == 2


def test_escpos_parameters_never_leak_and_code_pages_switch_mid_line() -> None:
    data = (b"\x1b@\x1b!\x41\x1ba\x01\x1dB\x41" + b"\x1bt\x11" + "Привет ".encode("cp866")
            + b"\x1bt\x10" + "café".encode("cp1252") + b"\x1bE\x41\n"
            + b"\x1d!\x11TOTAL\x1d!\x00\n\x1dV\x00")
    [job], e = jobs(data)
    assert job.lines == ("Привет café", "TOTAL")  # no 'A' from ESC ! 0x41 or GS B 0x41
    assert e.rejected == {}


def test_escpos_job_without_cut_ends_after_the_idle_gap() -> None:
    e = EscPos("cp437", idle_s=2.0)
    assert e.feed(b"LINE 1\nLINE 2\n", T0) == [JobStarted(T0)]  # the till closed a sale
    assert e.flush(T0 + 1.9) == []
    [job] = e.flush(T0 + 2.0)
    assert isinstance(job, ReceiptText)
    assert job.lines == ("LINE 1", "LINE 2") and not job.cut and job.at == T0


def test_escpos_images_are_skipped_by_length_even_across_chunks() -> None:
    raster = bytes(range(256)) * 8  # ESC, GS, LF ... inside the image data
    data = b"A\n\x1dv0\x00" + bytes([16, 0, 128, 0]) + raster + b"B\n\x1b*\x21\x02\x00" \
        + b"\x1b\x1d\n\n\n\x0a" + b"C\n\x1dV\x01"
    [job], e = jobs(data, [3] * 900)
    assert job.lines == ("A", "B", "C") and e.rejected == {}


@given(st.binary(max_size=2000))
@settings(max_examples=150, deadline=None)
def test_escpos_valid_jobs_after_noise_and_a_pause_are_decoded(noise: bytes) -> None:
    r = random_receipt(random.Random(3), 9)
    e = EscPos("cp437")
    e.feed(noise, T0)
    e.flush(T0 + 3)  # the line goes quiet
    out = e.feed(escpos_job(r), T0 + 5)
    done = [f for f in out if isinstance(f, ReceiptText)]
    assert done and list(done[-1].lines) == [ln.rstrip() for ln in receipt_lines(r)]


def test_escpos_implausible_lengths_and_long_lines_are_counted() -> None:
    e = EscPos("cp437")
    e.feed(b"\x1dv0\x00\xff\xff\xff\xff" + b"X" * 3000 + b"\n\x1dV\x00", T0)
    assert e.rejected["implausible-length"] == 1 and e.rejected["line-too-long"] == 1


# --- templates -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "minor"), [
    ("1 234,50", 123450), ("0.5", 50), ("12", 1200), ("-8.99", -899), ("64 990.00", 6499000),
    ("1\u00a0000.00", 100000), ("12.345", None), ("abc", None), ("", None),
])
def test_parse_money(text: str, minor: int | None) -> None:
    assert parse_money(text) == minor


def test_parse_quantity() -> None:
    assert parse_quantity("1.254") == 1254
    assert parse_quantity("2") == 2000
    assert parse_quantity("0,5") == 500
    assert parse_quantity("1.2345") is None


def test_ru_template_reads_every_simulated_receipt_exactly() -> None:
    rng = random.Random(4)
    for n in range(200):
        r = random_receipt(rng, 1000 + n)
        got = RU.parse(receipt_lines(r))
        assert got.receipt == r.number and got.cashier == r.cashier
        assert got.total_minor == r.total_minor
        assert got.loyalty == r.loyalty
        assert [(i.name, i.quantity_milli, i.unit_price_minor, i.amount_minor,
                 i.discount_minor) for i in got.items] == [
            (i.name, i.quantity_milli, i.price_minor, i.amount_minor, i.discount_minor)
            for i in r.items]
        want_tenders = [(k, v) for k, v in (("cash", r.cash_minor), ("card", r.card_minor)) if v]
        assert got.tenders == want_tenders
        assert got.unmatched == 0 and got.bad_amounts == 0


def test_en_template_one_line_items() -> None:
    en = read_template(TEMPLATES / "en-generic.toml")
    got = en.parse([
        "   ACME STORES", "RECEIPT NO: 88-1207", "CASHIER: Dana", "-" * 30,
        "MILK 1L           2 @ 1.15     2.30", "BREAD                  2.49",
        "  COUPON               -0.50", "SUBTOTAL               4.29",
        "TOTAL                  4.29", "CASH                  10.00",
        "CHANGE                 5.71", "LOYALTY CARD: LOY123456789", "THANK YOU"])
    assert got.receipt == "88-1207" and got.cashier == "Dana" and got.total_minor == 429
    assert [(i.name, i.quantity_milli, i.amount_minor, i.discount_minor) for i in got.items] \
        == [("MILK 1L", 2000, 230, 0), ("BREAD", 1000, 249, 50)]
    assert got.tenders == [("cash", 1000)] and got.loyalty == "LOY123456789"
    assert got.unmatched == 1  # the store's name: no pattern claims it, it is counted


@pytest.mark.parametrize(("text", "key"), [
    ('name = "x"\ncurrency = "RUB"\n', "items"),
    ('name = "x"\ncurrency = "rub"\n[[items]]\npattern = "(?P<name>a)(?P<amount>1)"\n',
     "currency"),
    ('name = "x"\ncurrency = "RUB"\n[[items]]\npattern = "(?P<name>a)"\n', "items[0].pattern"),
    ('name = "x"\ncurrency = "RUB"\n[[items]]\npattern = "(?P<name>a)(?P<amount>"\n',
     "items[0].pattern"),
    ('name = "x"\ncurrency = "RUB"\n[fields]\ntotl = "(?P<value>1)"\n', "fields.totl"),
    ('name = "x"\ncurrency = "RUB"\ncolour = 1\n', "colour"),
    ('name = "x"\ncurrency = "RUB"\n[[items]]\npattern = "(?P<name>a)(?P<amount>1)"\n'
     '[[tenders]]\nkind = "gold"\npattern = "(?P<amount>1)"\n', "tenders[0].kind"),
])
def test_broken_templates_name_the_key(text: str, key: str) -> None:
    with pytest.raises(TemplateError) as err:
        Template.from_toml(text)
    assert err.value.key == key


def test_fiscal_qr() -> None:
    sign = parse_fiscal_qr("t=20261128T1015&s=1234.56&fn=9999078900001234&i=12345&fp=987&n=1")
    assert sign is not None and sign.total_minor == 123456 and sign.fd == "12345"
    assert sign.operation == 1
    for bad in ("hello", "t=2026&s=1&fn=1&i=1&fp=1&n=1",
                "t=20261128T1015&s=x&fn=1&i=1&fp=1&n=1",
                "t=20261128T1015&s=1.00&fn=1&i=1&fp=1&n=9", "t=20261128T1015&s=1.00"):
        assert parse_fiscal_qr(bad) is None, bad


# --- display and scanner ---------------------------------------------------------------


def test_pole_display_follows_the_items_and_the_total() -> None:
    r = random_receipt(random.Random(5), 3)
    d = PoleDisplay("cp866")
    frames = []
    for i, chunk in enumerate(display_updates(r)):
        frames += d.feed(chunk, T0 + i)
    updates = [f for f in frames if isinstance(f, DisplayUpdate)]
    assert len(updates) == len(r.items) + 1
    assert updates[0].upper == r.items[0].name[:20]
    assert updates[-1].upper == "ИТОГО" and updates[-1].lower.endswith(
        f"{r.total_minor // 100}.{r.total_minor % 100:02d}")
    assert d.rejected == {}


def test_pole_display_plain_text_mode_and_garbage() -> None:
    d = PoleDisplay("cp437", idle_s=0.3)
    assert d.feed(b"\x0cWELCOME\n\x1f$\x01\x02PRICE 1.99", T0) == []
    [u] = d.flush(T0 + 0.5)
    assert isinstance(u, DisplayUpdate) and (u.upper, u.lower) == ("WELCOME", "PRICE 1.99")
    d.feed(b"\x1b\x99\x1f\x77", T0 + 1)
    assert d.rejected == {"unknown-command": 2}


def test_scanner_strips_prefix_aim_and_suffix() -> None:
    s = BarcodeScanner(suffix="CRLF", prefix=b"#")
    out = s.feed(b"#]E04601234567894\r\n#]Q1SGO1.abc\r\n#LOY1", T0)
    assert [(f.code, f.aim) for f in out if isinstance(f, Scanned)] == [
        ("4601234567894", "E0"), ("SGO1.abc", "Q1")]
    out = s.feed(b"23\r\nno-prefix\r\n", T0 + 0.1)
    assert [f.code for f in out if isinstance(f, Scanned)] == ["LOY123"]
    s.feed(b"#half", T0 + 0.2)
    s.flush(T0 + 1.0)
    assert s.rejected == {"no-prefix": 1, "no-suffix": 1}


# --- lane assembly ---------------------------------------------------------------------


def lane(source: str = "printer", personal: PersonalData = KEYED) -> LaneAssembler:
    import re

    return LaneAssembler(LaneSettings(
        "lane-1", "RUB", source, RU,
        loyalty_pattern=re.compile(r"^LOY\d{9}$"), offer_pattern=re.compile(r"^SGO1\."),
        personal=personal), os.urandom)


def run_lane(r_seed: int, number: int, personal: PersonalData = KEYED
             ) -> tuple[list[p.Payload], object]:
    r = random_receipt(random.Random(r_seed), number)
    la = lane(personal=personal)
    scanner, display, printer = BarcodeScanner(), PoleDisplay(), EscPos("cp437")
    t = T0
    drafts = []
    for code in scanner_codes(r):
        t += 1
        for f in scanner.feed(code, t):
            drafts += la.feed(f)
    for upd in display_updates(r):
        t += 1
        for f in display.feed(upd, t):
            drafts += la.feed(f)
    for f in printer.feed(escpos_job(r), t + 5):
        drafts += la.feed(f)
    return [d.data for d in drafts], r


def test_lane_purchase_with_scans_display_and_fiscal_qr() -> None:
    for seed in range(30):
        events, r = run_lane(seed, 2000 + seed)
        purchases = [e for e in events if isinstance(e, p.PurchaseCompleted)]
        scans = [e for e in events if isinstance(e, p.PosScanned)]
        assert len(purchases) == 1
        pc = purchases[0]
        assert pc.receipt == r.number and pc.total_minor == r.total_minor
        assert not pc.totals_mismatch and pc.currency == "RUB"
        loyalty = pseudonym(KEY, "loyalty", r.loyalty) if r.loyalty else None
        assert pc.loyalty_id == loyalty
        assert pc.operator == pseudonym(KEY, "operator", r.cashier)
        assert [s.value for s in scans if s.kind == "loyalty"] == ([loyalty] if loyalty else [])
        assert pc.offer_tokens == list(r.offers)
        assert pc.fiscal is not None and pc.fiscal.total_minor == r.total_minor
        assert pc.first_item_at == rfc3339(T0 + 1)  # the first product scanned
        kinds = [s.kind for s in scans]
        assert kinds == (["loyalty"] if r.loyalty else []) + ["offer"] * len(r.offers)
        assert all(s.transaction_id == pc.transaction_id for s in scans)


def test_lane_reprints_duplicates_voids_and_mismatches() -> None:
    la = lane()
    r = random_receipt(random.Random(7), 31)
    lines = tuple(ln.rstrip() for ln in receipt_lines(r))
    first = la.feed(ReceiptText(lines, T0, cut=True))
    again = la.feed(ReceiptText(lines, T0 + 1, cut=True))  # the till resent the job
    copy = la.feed(ReceiptText(("КОПИЯ ЧЕКА", *lines), T0 + 2, cut=True))
    assert len(first) == 1 and again == [] and copy == []
    assert la.counters["duplicate"] == 1 and la.counters["reprint"] == 1
    tampered = tuple(ln.replace("ИТОГ", "ИТОГ") if not ln.startswith("ИТОГ") else
                     "ИТОГ                =1.00" for ln in lines)
    [bad] = la.feed(ReceiptText(tuple(x.replace(f"№ {r.number}", "№ 32") for x in tampered),
                                T0 + 3, cut=True))
    assert isinstance(bad.data, p.PurchaseCompleted)
    assert bad.data.totals_mismatch and bad.data.total_minor == 100  # as printed, flagged
    [void] = la.feed(ReceiptText(("ЧЕК № 33", "ЧЕК АННУЛИРОВАН"), T0 + 4, cut=True))
    assert isinstance(void.data, p.PurchaseVoided) and void.data.receipt == "33"
    assert la.feed(ReceiptText(("X-ОТЧЕТ", "СМЕНА 12"), T0 + 5, cut=True)) == []
    assert la.counters["not-a-receipt"] == 1


def test_lane_from_the_fiscal_register() -> None:
    la = lane("fiscal")
    ops = [FiscalItem("Молоко", 2000, 8990, T0, command=0x80),
           FiscalItem("Сыр", 1254, 12900, T0 + 1, command=0x80),
           FiscalItem("Ошибка", 1000, 100, T0 + 2, command=0x80),
           FiscalRejected(0x80, 0x33, T0 + 2.1),  # the register refused the last sale
           FiscalDiscount(1000, T0 + 3, command=0x86)]
    for op in ops:
        assert la.feed(op) == []
    [done] = la.feed(FiscalClose((("cash", 40000), ("card", 1000)), T0 + 4, command=0x85))
    pc = done.data
    assert isinstance(pc, p.PurchaseCompleted)
    assert [i.amount_minor for i in pc.items] == [17980, 16177]  # 1.254 x 129.00 = 161.766
    assert pc.discount_minor == 1000 and pc.total_minor == 17980 + 16177 - 1000
    assert pc.source == "fiscal" and not pc.totals_mismatch
    assert pc.first_item_at is not None
    la.feed(FiscalItem("Молоко", 1000, 8990, T0 + 10, is_return=True, command=0x82))
    [ret] = la.feed(FiscalClose((("cash", 8990),), T0 + 11))
    assert isinstance(ret.data, p.PurchaseCompleted) and ret.data.kind == "return"
    la.feed(FiscalItem("Хлеб", 1000, 4550, T0 + 20))
    [void] = la.feed(FiscalCancel(T0 + 21))
    assert isinstance(void.data, p.PurchaseVoided) and void.data.transaction_id is not None
    [short] = (la.feed(FiscalItem("Кофе", 1000, 149900, T0 + 30))
               + la.feed(FiscalClose((("cash", 100000),), T0 + 31)))
    assert isinstance(short.data, p.PurchaseCompleted) and short.data.totals_mismatch


def test_shipped_templates_are_linked_from_firmware_configs() -> None:
    repo = Path(__file__).resolve().parents[1]
    for name in ("ru-generic", "en-generic"):
        shipped = repo / "firmware-configs" / "pos" / "templates" / f"{name}.toml"
        assert read_template(shipped).name == name


def test_lane_next_customer_scanned_while_the_receipt_prints() -> None:
    """Fast cashiers scan the next customer while the last receipt is printing."""
    la = lane(personal=PersonalData(raw_loyalty_ids=True))  # to see whose card is whose
    r1, r2 = random_receipt(random.Random(21), 41), random_receipt(random.Random(22), 42)
    printer, scanner = EscPos("cp437"), BarcodeScanner()

    def through(frames: list[Frame]) -> list[EventDraft]:
        return [d for f in frames for d in la.feed(f)]

    out = through(scanner.feed(b"]E04601234567894\r", T0))
    job = escpos_job(r1)
    out += through(printer.feed(job[:100], T0 + 10))  # printing...
    out += through(scanner.feed(b"]C0LOY123456789\r", T0 + 10.5))
    out += through(printer.feed(job[100:], T0 + 11))  # ...printed
    [first] = [d.data for d in out if isinstance(d.data, p.PurchaseCompleted)]
    assert first.first_item_at == rfc3339(T0) and first.loyalty_id != "LOY123456789"
    out2 = through(printer.feed(escpos_job(r2), T0 + 30))
    [second] = [d.data for d in out2 if isinstance(d.data, p.PurchaseCompleted)]
    assert second.loyalty_id == (r2.loyalty or "LOY123456789")
    assert second.first_item_at is None  # a loyalty card is not an item
    [scan] = [d.data for d in out if isinstance(d.data, p.PosScanned)]
    assert scan.transaction_id == second.transaction_id != first.transaction_id


def test_shtrih_m_stream_to_purchase_with_a_percent_discount() -> None:
    from storegate.core.pos.shtrih_m import ShtrihM
    from storegate.sim import fiscal

    stream = (fiscal.ENQ + fiscal.shtrih_sale("Молоко", 2000, 8990)
              + fiscal.ENQ + fiscal.shtrih_sale("Сыр", 1254, 12900)
              + fiscal.ENQ + fiscal.shtrih_close(50000, discount_percent_centi=1000))
    la, reg = lane("fiscal"), ShtrihM()
    drafts = [d for f in reg.feed(stream, T0) for d in la.feed(f)]
    [pc] = [d.data for d in drafts if isinstance(d.data, p.PurchaseCompleted)]
    subtotal = 17980 + 16177
    assert pc.discount_minor == (subtotal * 1000 + 5000) // 10000  # 10 %, half up
    assert pc.total_minor == subtotal - pc.discount_minor and not pc.totals_mismatch
    assert pc.tenders == [p.Tender(kind="cash", amount_minor=50000)]


@given(st.lists(st.binary(max_size=300), max_size=20))
@settings(max_examples=150, deadline=None)
def test_display_scanner_and_lane_never_raise_on_garbage(chunks: list[bytes]) -> None:
    la = lane()
    parsers = [PoleDisplay(), BarcodeScanner(prefix=b"#", suffix="CRLF"), EscPos("cp437")]
    t = T0
    for c in chunks:
        t += 0.4
        for parser in parsers:
            for f in parser.feed(c, t) + parser.flush(t + 5):
                la.feed(f)


# --- personal data ---------------------------------------------------------------------


def test_pseudonym_is_keyed_stable_and_separated_by_field_kind() -> None:
    a = pseudonym(KEY, "loyalty", "LOY123456789")
    assert a == pseudonym(KEY, "loyalty", "LOY123456789")  # central computes the same
    assert a.startswith("ps1:") and len(a) == 4 + 32 and "LOY" not in a
    int(a[4:], 16)
    assert a != pseudonym(KEY, "operator", "LOY123456789")  # domain-separated
    assert a != pseudonym(bytes(32), "loyalty", "LOY123456789")  # another key, unlinkable
    # the published form is HMAC-SHA256(key, "loyalty:" + value) cut to 128 bits
    import hashlib
    import hmac
    mac = hmac.new(KEY, b"loyalty:LOY123456789", hashlib.sha256).hexdigest()
    assert a == "ps1:" + mac[:32]


def test_pseudonym_key_parses_hex_or_base64_and_refuses_short_keys() -> None:
    import base64

    assert parse_key(KEY.hex()) == KEY
    assert parse_key(base64.b64encode(KEY).decode()) == KEY
    with pytest.raises(ValueError, match="too short"):
        parse_key("00" * 15)
    with pytest.raises(ValueError, match="not hex or base64") as err:
        parse_key("my secret passphrase!")
    assert "passphrase" not in str(err.value)  # an error never repeats the key


def test_lane_withholds_personal_data_without_a_key_and_publishes_raw_only_by_opt_in() -> None:
    seed = next(s for s in range(100)
                if random_receipt(random.Random(s), 1).loyalty is not None)
    events, r = run_lane(seed, 3000, WITHHELD)
    [pc] = [e for e in events if isinstance(e, p.PurchaseCompleted)]
    [scan] = [e for e in events if isinstance(e, p.PosScanned) and e.kind == "loyalty"]
    assert pc.loyalty_id is None and pc.operator is None and scan.value is None
    assert r.loyalty not in repr(events) and r.cashier not in repr(events)
    la = lane(personal=WITHHELD)
    for f in BarcodeScanner().feed(r.loyalty.encode() + b"\r", T0):
        la.feed(f)
    assert la.counters["loyalty-withheld"] == 1
    raw = PersonalData(key=None, raw_loyalty_ids=True, raw_operator_names=False)
    events, r = run_lane(seed, 3001, raw)
    [pc] = [e for e in events if isinstance(e, p.PurchaseCompleted)]
    assert pc.loyalty_id == r.loyalty and pc.operator is None
    both = PersonalData(key=KEY, raw_operator_names=True)
    events, r = run_lane(seed, 3002, both)
    [pc] = [e for e in events if isinstance(e, p.PurchaseCompleted)]
    assert pc.operator == r.cashier
    assert pc.loyalty_id == pseudonym(KEY, "loyalty", r.loyalty)


def test_a_code_both_patterns_match_is_treated_as_personal_never_published_raw() -> None:
    import dataclasses
    import re

    la = lane()
    la.settings = dataclasses.replace(
        la.settings, loyalty_pattern=re.compile(r"^\S+$"))  # too broad
    drafts = []
    for f in BarcodeScanner().feed(b"SGO1.card-4242\r", T0):
        drafts += la.feed(f)
    [scan] = [d.data for d in drafts if isinstance(d.data, p.PosScanned)]
    assert scan.kind == "loyalty"
    assert scan.value == pseudonym(KEY, "loyalty", "SGO1.card-4242")
