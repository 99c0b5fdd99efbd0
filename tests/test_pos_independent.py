"""Receipts nobody here generated (issue 16 review): an independent corpus written from
real till layouts (ATOL, Shtrih-M, Evotor, Mercury, a 1C sales slip, a paid-by-card FFD
1.2 receipt; Walmart-, Target-, CVS-, Tesco-, REWE-style and dot-leader receipts), two
of them also as the ESC/POS bytes the printer receives (cp866 and cp1251 with ``ESC t``),
and hostile input: a 100 kB line, 10,000 lines without a cut, templates whose patterns
backtrack exponentially, NUL and invalid UTF-8, 30-digit amounts, negative totals, card
numbers printed whole.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from storegate.app import cli
from storegate.app.pos import read_template
from storegate.app.pos_template import detect, judge, read_jobs, shipped_templates
from storegate.config import defaults_dir
from storegate.core.pos.escpos import MAX_JOB_LINES, EscPos
from storegate.core.pos.fiscal_qr import parse_fiscal_qr
from storegate.core.pos.frames import ReceiptText
from storegate.core.pos.lane import LaneAssembler, LaneSettings
from storegate.core.pos.pan import has_card_number, luhn_ok, mask_card_numbers
from storegate.core.pos.template import (
    MAX_LINE_CHARS,
    MAX_RECEIPT_LINES,
    Template,
    TemplateError,
    parse_money,
)
from tests.support.pos_service import printer_lane_service

CORPUS = Path(__file__).parent / "data" / "receipts" / "independent"
TEMPLATES = defaults_dir() / "pos" / "templates"
EXPECTED: dict[str, Any] = json.loads((CORPUS / "expected.json").read_text("utf-8"))
LAYOUTS = sorted(k for k in EXPECTED if not k.startswith("_"))
BYTES: dict[str, str] = EXPECTED["_bytes"]
T0 = 1_795_000_000.0


def _template(family: str) -> Template:
    return read_template(TEMPLATES / f"{family}-generic.toml")


def _verdicts(fname: str, family: str) -> list[Any]:
    _, jobs = read_jobs(str(CORPUS / fname), "cp866")
    t = _template(family)
    return [judge(t, j) for j in jobs]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_independent_layout_reads_items_total_and_kind(layout: str) -> None:
    e = EXPECTED[layout]
    verdicts = _verdicts(f"{layout}.txt", e["family"])
    assert len(verdicts) == len(e["receipts"])
    for k, (v, want) in enumerate(zip(verdicts, e["receipts"], strict=True)):
        assert v.what == "receipt"
        assert v.parsed.total_minor == want["total_minor"], (layout, k)
        assert v.parsed.is_return == want["return"], (layout, k)
        assert v.check.adds_up, (layout, k, v.check.problem)
        assert len(v.parsed.items) == want["items"], (layout, k)
        assert v.parsed.unmatched <= 12  # headers and footers, never amounts
        for item in v.parsed.items:  # names only: no code, flag, number or card left
            assert item.name and not has_card_number(item.name)
            assert item.name == " ".join(item.name.split())


def test_wrapped_names_qty_lines_before_and_after_and_foreign_numbers() -> None:
    """What the layouts have that the generator did not: a name wrapped over two lines,
    Shtrih's zero-padded numbers, a quantity line after the item (Target, REWE) and
    before it (CVS) in one stream, SKU and flag columns, '1.234,50' amounts."""
    atol = _verdicts("ru-atol-57.txt", "ru")[1].parsed
    assert atol.items[0].name == 'Шоколад молочный "Альпен Гольд" с фундуком 85г'
    assert atol.items[0].discount_minor == 800
    shtrih = _verdicts("ru-shtrih-48.txt", "ru")[0].parsed
    assert shtrih.items[0].name == 'Хлеб "Дарницкий" нарезка'
    assert shtrih.items[2].quantity_milli == 412 and shtrih.discount_minor == 2069
    # НАДБАВКА under an item: added to its amount (the payload has no markup field)
    tv = _verdicts("ru-shtrih-48.txt", "ru")[1].parsed
    assert [i.amount_minor for i in tv.items] == [2499000, 60000]
    assert _template("ru").parse(("НАДБАВКА  =10.00", *RECEIPT)).unmatched == 1
    target = _verdicts("en-us-target-42.txt", "en")[0].parsed
    assert [(i.name, i.quantity_milli, i.unit_price_minor) for i in target.items][2:] == [
        ("LIGHT BULB 4PK", 1000, 999), ("STORAGE BIN", 2000, 450)]
    assert target.tax_added_minor == 140 and target.tenders == [("card", 2617)]
    dots = _verdicts("en-us-dotleader-32.txt", "en")[0].parsed
    assert dots.items[1].name == "BAGEL EVERYTHING" and dots.total_minor == 1160  # not BAL DUE
    cvs = _verdicts("en-us-pharmacy-38.txt", "en")[0].parsed
    assert [(i.quantity_milli, i.amount_minor, i.discount_minor) for i in cvs.items] == [
        (1000, 1349, 0), (1000, 899, 0), (2000, 438, 100)]
    rewe = _verdicts("en-de-rewe-32.txt", "en")
    assert rewe[0].parsed.items[1].quantity_milli == 2000
    assert rewe[1].parsed.items[0].quantity_milli == 746
    assert rewe[0].parsed.change_minor == 360 and rewe[1].parsed.tenders == [("card", 1322)]


@pytest.mark.parametrize("fname", sorted(BYTES))
def test_printer_bytes_in_their_code_page_read_as_the_text(fname: str) -> None:
    layout = BYTES[fname]
    family = EXPECTED[layout]["family"]
    from_bytes = _verdicts(fname, family)
    from_text = _verdicts(f"{layout}.txt", family)
    assert [(v.parsed.total_minor, len(v.parsed.items), v.check.adds_up) for v in from_bytes] \
        == [(v.parsed.total_minor, len(v.parsed.items), v.check.adds_up) for v in from_text]
    assert [i.name for v in from_bytes for i in v.parsed.items] \
        == [i.name for v in from_text for i in v.parsed.items]


def test_decode_through_the_lane_publishes_the_atol_stream(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    code = cli.main(["pos", "decode", "--dialect", "escpos", "--currency", "RUB",
                     "--template", str(TEMPLATES / "ru-generic.toml"),
                     str(CORPUS / "ru-atol-57.cp866.escpos"), "--events-out", str(out)])
    assert code == 0
    events = [json.loads(line)["data"] for line in out.read_text("utf-8").splitlines()]
    assert [(e["kind"], e["total_minor"], len(e["items"]), e["totals_mismatch"])
            for e in events] == [("sale", 26903, 3, False), ("sale", 42099, 2, False),
                                 ("return", 23800, 1, False)]
    assert [e["fiscal"]["fd"] for e in events] == ["45871", "45872", "45873"]


@pytest.mark.parametrize("fname", [f"{k}.txt" for k in LAYOUTS] + sorted(BYTES))
def test_detect_ranks_the_right_family_first(fname: str) -> None:
    layout = BYTES.get(fname, fname.removesuffix(".txt"))
    _, jobs = read_jobs(str(CORPUS / fname), "cp866")
    ranks = detect(shipped_templates(None), jobs)
    assert ranks[0].name == f"{EXPECTED[layout]['family']}-generic"
    assert ranks[0].share > ranks[1].share


# --- hostile input ---------------------------------------------------------------------

RECEIPT = ("Молоко 3,2% 930мл", "1 шт. х 89.90             ≡89.90", "ИТОГ  ≡89.90")


def test_a_100_kb_line_is_not_read_and_counted() -> None:
    huge = "1 шт. х " + "9" * 100_000 + ".00 ≡1.00"
    t = _template("ru")
    r = t.parse((RECEIPT[0], huge, *RECEIPT), trace=True)
    assert r.long_lines == 1 and [i.amount_minor for i in r.items] == [8990]
    assert r.trace is not None and r.trace[1].rule == "too long"
    lane = LaneAssembler(LaneSettings("l1", "RUB", "printer", t), os.urandom)
    drafts = lane.feed(ReceiptText((huge, *RECEIPT), T0))
    assert lane.counters["receipt-line-too-long"] == 1
    assert len(drafts) == 1 and not drafts[0].data.totals_mismatch  # type: ignore[union-attr]
    # a line at the bound is still read
    assert len(RECEIPT[1].ljust(MAX_LINE_CHARS)) == MAX_LINE_CHARS


def test_ten_thousand_lines_without_a_cut_are_bounded_and_counted() -> None:
    p = EscPos("cp866")
    frames = p.feed(b"\x1b@" + b"x 1.00\n" * 10_000, T0)
    frames += p.flush(T0 + 60)
    jobs = [f for f in frames if isinstance(f, ReceiptText)]
    assert len(jobs) == 1 and len(jobs[0].lines) == MAX_JOB_LINES
    assert p.rejected["job-too-long"] == 1
    lines = tuple(f"ITEM {k}  1.00" for k in range(10_000))
    r = _template("en").parse(lines)
    assert r.dropped_lines == 10_000 - MAX_RECEIPT_LINES
    assert len(r.items) == MAX_RECEIPT_LINES


@pytest.mark.parametrize(("pattern", "why"), [
    (r"^(?P<name>(?:\w+\s?)+)(?P<amount>\d+\.\d\d)$", "itself repeats"),
    (r"^(?P<name>(a+)+)(?P<amount>1)$", "itself repeats"),
    (r"^(?P<name>(?:\s*x?)*)(?P<amount>1)$", "itself repeats"),
    (r"^(?P<name>(?:a|ab)*)c(?P<amount>1)$", "start alike"),
    (r"^(?P<name>(\w))\2(?P<amount>1)$", "backreference"),
    ("(?P<name>x)(?P<amount>1)" + "x?" * 3000, "characters"),
])
def test_a_template_whose_pattern_backtracks_exponentially_is_refused(pattern: str,
                                                                     why: str) -> None:
    text = f"name = 't'\ncurrency = 'EUR'\n[[items]]\npattern = '''{pattern}'''\n"
    with pytest.raises(TemplateError, match=why) as err:
        Template.from_toml(text)
    assert err.value.key == "items[0].pattern"


def test_a_malicious_define_is_refused_where_it_is_used() -> None:
    text = ("name = 't'\ncurrency = 'EUR'\n[defines]\nw = '(?:\\w+\\s?)+'\n"
            "[fields]\ntotal = 'TOTAL {{w}}(?P<value>1)'\n"
            "[[items]]\npattern = '(?P<name>x)(?P<amount>1)'\n")
    with pytest.raises(TemplateError, match="itself repeats") as err:
        Template.from_toml(text)
    assert err.value.key == "fields.total"


def test_nul_and_invalid_utf8_never_crash_and_the_rest_is_read(tmp_path: Path) -> None:
    lines = ("Мол\x00око", "1 шт. х 89.90 ≡89.90", "\ufffd\ufffd", "ИТОГ ≡89.90")
    r = _template("ru").parse(lines)
    assert [i.amount_minor for i in r.items] == [8990] and r.total_minor == 8990
    f = tmp_path / "bad.txt"
    f.write_bytes("Молоко\n1 шт. х 89.90 ≡89.90\nИТОГ ≡89.90\n".encode() + b"\xff\xfe\x00\n")
    what, jobs = read_jobs(str(f), "cp866")
    assert what.startswith("raw ESC/POS") and len(jobs) == 1  # not UTF-8: read as bytes
    p = EscPos("cp866")
    frames = p.feed(b"\x1b@\x1bt\x11" + "ИТОГ =1.00".encode("cp866") + b"\x00\xff\n\x1dVA\x00",
                    T0)
    assert [f.lines for f in frames if isinstance(f, ReceiptText)] == [("ИТОГ =1.00",)]


def test_thirty_digit_amounts_are_bad_amounts_not_numbers() -> None:
    assert parse_money("123456789012345678901234567890.00") is None
    assert parse_money("999 999 999 999.99") == 99_999_999_999_999
    r = _template("ru").parse(("Молоко", "1 шт. х 89.90 ≡89.90",
                               "ИТОГ ≡123456789012345678901234567890.00"))
    assert r.total_minor is None and r.bad_amounts == 1
    r = _template("en").parse(("MILK  1" + "0" * 29 + ".00", "TOTAL  1.00"))
    assert not r.items and r.bad_amounts == 1
    r = _template("ru").parse(("Гвозди", "1" + "0" * 20 + " шт. х 1.00 ≡1.00", "ИТОГ ≡1.00"))
    assert not r.items and r.bad_amounts == 1  # a 21-digit quantity
    qr = f"t=20251124T1842&s=1{'0' * 29}.00&fn=9960440301234567&i=1&fp=1&n=1"
    assert parse_fiscal_qr(qr) is None


def test_a_refund_printed_with_negative_amounts_is_a_return() -> None:
    lines = ("STORE 12", "MILK 2% GAL  3.49-",
             "EGGS LARGE  4.29-", "COUPON  0.50", "SUBTOTAL  7.28-", "TAX  0.45-",
             "TOTAL  7.73-", "CASH  7.73-")
    lane = LaneAssembler(LaneSettings("l1", "USD", "printer", _template("en")), os.urandom)
    (draft,) = lane.feed(ReceiptText(lines, T0))
    data = draft.data
    assert data.kind == "return" and data.total_minor == 773  # type: ignore[union-attr]
    assert [i.amount_minor for i in data.items] == [349, 429]  # type: ignore[union-attr]
    assert not data.totals_mismatch  # type: ignore[union-attr]
    # a sale whose total alone reads negative is not turned into a return: flagged
    (draft,) = lane.feed(ReceiptText(("MILK  3.49", "TOTAL  3.49-"), T0 + 60))
    assert draft.data.kind == "sale" and draft.data.totals_mismatch  # type: ignore[union-attr]


FULL_PAN = "4111 1111 1111 1111"


def test_card_numbers_masked_or_whole_never_reach_an_event() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert mask_card_numbers(f"CARD {FULL_PAN}") == "CARD ************1111"
    assert not has_card_number("4601234567893 МОЛОКО")  # an EAN-13 is not a card
    lines = ("STORE 12", "RECEIPT # 4111111111111111", "MILK 2% GAL  3.49",
             f"{FULL_PAN}      3.49", "4111-1111-1111-1111 VISA", "VISA **** **** **** 1111 I 0",
             "CARD#: ************1111", "TOTAL  3.49", "VISA  3.49")
    t = _template("en")
    r = t.parse(lines)
    assert [i.name for i in r.items] == ["MILK 2% GAL"] and r.card_lines >= 4
    lane = LaneAssembler(LaneSettings("l1", "USD", "printer", t), os.urandom)
    drafts = lane.feed(ReceiptText(lines, T0))
    published = json.dumps([d.data.model_dump(mode="json") for d in drafts])
    assert drafts and not re.search(r"1111[ -]?1111|\*{4}", published)
    assert "4111" not in published
    assert lane.counters["card-number-lines"] >= 4


def test_check_echoes_card_numbers_masked_and_long_lines_cut(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "r.txt"
    f.write_text("\n".join(("MILK  3.49", f"{FULL_PAN}  3.49", "Z" * 5000, "TOTAL  3.49")),
                 "utf-8")
    cli.main(["pos", "template", "check", str(TEMPLATES / "en-generic.toml"), str(f)])
    out = capsys.readouterr().out
    assert FULL_PAN not in out and "************1111" in out
    assert "Z" * 600 not in out and "(5000 characters)" in out and "not read" in out


def test_the_service_logs_refused_receipt_lines_once_and_counts_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    svc, submitted = printer_lane_service(tmp_path, TEMPLATES / "ru-generic.toml")
    [dev] = svc.devices
    caplog.set_level("WARNING")
    job = "\n".join((*RECEIPT[:2], "Z" * 600, "КАРТА 4111 1111 1111 1111", RECEIPT[2]))
    for k in range(3):
        data = job.replace("≡", "=").encode("cp866")  # cp866 has no '≡': printers send '='
        svc._bytes(dev, b"\x1b@\x1bt\x11" + data + b"\n\x1dVA\x00", T0 + k * 60)
    counters = svc.snapshot().lanes["lane-1"].counters
    assert counters["receipt-line-too-long"] == 3 and counters["card-number-lines"] == 3
    said = [r.getMessage() for r in caplog.records]
    assert sum("receipt-line-too-long" in m for m in said) == 1
    assert sum("card-number-lines" in m for m in said) == 1
    assert "4111" not in json.dumps([d.data.model_dump(mode="json") for d in submitted])
