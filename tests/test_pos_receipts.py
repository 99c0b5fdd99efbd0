"""Receipts as real tills print them (issue 16): golden receipts per layout variant, the
template language, the generated streams, the lane's adds-up share and alert, and
``storegate pos template check|detect``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from storegate.app import cli
from storegate.app.pos import read_template
from storegate.app.status import LaneStatus
from storegate.config import defaults_dir
from storegate.core import payloads as p
from storegate.core.pos import lane as lane_mod
from storegate.core.pos.capture import Chunk, chunk_to_json
from storegate.core.pos.escpos import EscPos
from storegate.core.pos.frames import ReceiptText
from storegate.core.pos.lane import LaneAssembler, LaneSettings
from storegate.core.pos.template import Template, TemplateError, arithmetic, parse_money
from storegate.sim.receipts import FAMILIES, LAYOUTS, escpos, generate
from tests.support.pos_service import printer_lane_service

TEMPLATES = defaults_dir() / "pos" / "templates"
GOLDEN = Path(__file__).parent / "data" / "receipts"
T0 = 1_795_000_000.0


def _template(name: str) -> Template:
    return read_template(TEMPLATES / name)


GOLDENS = sorted(p.stem for p in GOLDEN.glob("*.txt"))


def test_a_golden_receipt_for_every_generated_layout() -> None:
    for family in FAMILIES:
        for layout in LAYOUTS[family]:
            assert layout in GOLDENS
    assert {"ru-return", "ru-marked", "ru-receipt-discount", "ru-reprint", "ru-void",
            "en-reprint", "en-void", "ru-issue16", "en-eu-thousands"} <= set(GOLDENS)


@pytest.mark.parametrize("name", GOLDENS)
def test_golden_receipt(name: str) -> None:
    lines = (GOLDEN / f"{name}.txt").read_text("utf-8").splitlines()
    want = json.loads((GOLDEN / f"{name}.json").read_text("utf-8"))
    got = _template(want["template"]).parse(lines, trace=True)
    assert got.copy == want["copy"] and got.void == want["void"]
    if want["copy"] or want["void"]:
        return
    assert [[i.name, i.quantity_milli, i.unit_price_minor, i.amount_minor, i.discount_minor]
            for i in got.items] == want["items"]
    assert got.total_minor == want["total_minor"]
    assert got.discount_minor == want["discount_minor"]
    assert got.tax_added_minor == want["tax_added_minor"]
    assert got.is_return == (want["kind"] == "return")
    check = arithmetic(got)
    assert check.adds_up, check.problem
    assert got.bad_amounts == 0
    # every line is accounted for; only the shop's own header may be unclaimed
    unmatched = [lines[t.line] for t in got.trace or () if t.category == "unmatched"]
    assert all(not any(ch.isdigit() for ch in u) or "ST" in u for u in unmatched), unmatched


def test_golden_receipt_through_escpos_and_the_lane_a_return_with_its_qr() -> None:
    r = next(r for r in generate("ru", 200, 7) if r.kind == "return" and not r.void)
    e = EscPos("cp437")
    frames = e.feed(escpos(r), T0) + e.flush(T0 + 10)
    job = next(f for f in frames if isinstance(f, ReceiptText))
    lane = LaneAssembler(LaneSettings("lane-1", "RUB", "printer", _template("ru-generic.toml")),
                         os.urandom)
    drafts = [d for f in frames for d in lane.feed(f)]
    [draft] = drafts
    data = draft.data
    assert isinstance(data, p.PurchaseCompleted)
    assert data.kind == "return" and not data.totals_mismatch
    assert data.total_minor == r.total_minor == (data.fiscal.total_minor if data.fiscal else 0)
    assert [i.name for i in data.items] == [i.name for i in r.items]
    assert job.qr and "n=2" in job.qr[0]


def test_us_sales_tax_is_added_and_published() -> None:
    lines = (GOLDEN / "en-us-weighed.txt").read_text("utf-8").splitlines()
    lane = LaneAssembler(LaneSettings("lane-1", "USD", "printer", _template("en-generic.toml")),
                         os.urandom)
    [draft] = lane.feed(ReceiptText(tuple(lines), T0))
    data = draft.data
    assert isinstance(data, p.PurchaseCompleted)
    assert data.tax_minor == 269 and data.total_minor == 4965 and not data.totals_mismatch
    assert sum(i.amount_minor - i.discount_minor for i in data.items) + data.tax_minor \
        == data.total_minor
    # the masked card number is no part of what is published
    assert "4859" not in data.model_dump_json()


@pytest.mark.parametrize(("text", "minor"), [
    ("≡1 234,50", 123450), ("=439.80", 43980), ("= 1 000.00", 100000), ("$1,234.50", 123450),
    ("€1.234,50", 123450), ("1.79-", -179), ("-£0.50", -50), ("=-6.72", -672),
    ("1,23.45", None), ("12.345", None), ("1.234.567", None),
])
def test_parse_money_as_receipts_print_it(text: str, minor: int | None) -> None:
    assert parse_money(text) == minor


def test_template_defines_taxes_and_the_return_sign() -> None:
    t = Template.from_toml(r"""
name = "t"
currency = "USD"
[defines]
num = '\d+\.\d{2}'
money = '\$?{{num}}'
[fields]
total = '^TOTAL\s+(?P<value>{{money}})$'
return = '^REFUND$'
[[items]]
pattern = '^(?P<name>\S.*?)\s+(?P<amount>{{money}})$'
[[taxes]]
pattern = '^TAX\s+(?P<amount>{{money}})$'
added = true
[[taxes]]
pattern = '^VAT\s+(?P<amount>{{money}})$'
""")
    r = t.parse(["REFUND", "A 1.00", "B $2.00", "TAX 0.21", "VAT 0.10", "TOTAL 3.21"])
    assert r.is_return and r.tax_added_minor == 21 and r.tax_included_minor == 10
    assert arithmetic(r).adds_up
    assert not arithmetic(t.parse(["A 1.00", "TOTAL 1.21"])).adds_up
    assert arithmetic(t.parse(["TOTAL 1.21"])).problem == "no items"


@pytest.mark.parametrize(("text", "key"), [
    ('name = "x"\ncurrency = "RUB"\n[defines]\nm = "a"\n[[items]]\n'
     'pattern = "(?P<name>{{n}})(?P<amount>1)"\n', "items[0].pattern"),
    ('name = "x"\ncurrency = "RUB"\n[defines]\nBad = "a"\n', "defines.Bad"),
    ('name = "x"\ncurrency = "RUB"\n[[items]]\npattern = "(?P<name>a)(?P<amount>1)"\n'
     '[[taxes]]\npattern = "(?P<amount>1)"\nadded = "yes"\n', "taxes[0].added"),
    ('name = "x"\ncurrency = "RUB"\n[[items]]\n'
     'pattern = "(?P<name>a)\\\\n\\\\n\\\\n\\\\n\\\\n\\\\n(?P<amount>1)"\n', "items[0].pattern"),
])
def test_broken_template_extensions_name_the_key(text: str, key: str) -> None:
    with pytest.raises(TemplateError) as err:
        Template.from_toml(text)
    assert err.value.key == key


def test_generated_streams_are_reproducible_by_seed_and_varied() -> None:
    a, b = generate("ru", 60, 3), generate("ru", 60, 3)
    assert a == b
    assert generate("ru", 60, 4) != a
    assert {r.layout for r in a} == set(LAYOUTS["ru"])
    text = "\n".join(line for r in generate("ru", 400, 1) for line in r.lines)
    for needle in ("шт.", "кг", "упак", " л ", "≡", "ИТОГО", "ИТОГ ", " х ", " x ", "[М",
                   "ВОЗВРАТ ПРИХОДА", "НДС 20%", "ПОЛНЫЙ РАСЧЕТ", "СКИДКА НА ЧЕК", "КОПИЯ ЧЕКА",
                   "ЧЕК АННУЛИРОВАН"):
        assert needle in text or needle.lower() in text.lower(), needle
    en = "\n".join(line for r in generate("en", 400, 1) for line in r.lines)
    for needle in ("SUBTOTAL", "TAX", "TOTAL", "CHANGE", "************", " @ ", "/lb",
                   "€", "£", "$", "VAT"):
        assert needle in en, needle


@pytest.mark.parametrize("family", FAMILIES)
def test_at_least_99_percent_of_generated_receipts_add_up(family: str) -> None:
    t = _template(f"{family}-generic.toml")
    sales = [r for r in generate(family, 1000, 99) if not r.copy and not r.void]  # type: ignore[arg-type]
    adds = sum(arithmetic(t.parse(r.lines)).adds_up for r in sales)
    assert adds / len(sales) >= 0.99


def _lane() -> LaneAssembler:
    return LaneAssembler(LaneSettings("lane-1", "RUB", "printer", _template("ru-generic.toml")),
                         os.urandom)


def test_lane_share_of_receipts_adding_up_and_the_layout_alert() -> None:
    lane = _lane()
    good = [r for r in generate("ru", 200, 11) if not r.copy and not r.void]
    t = T0
    for r in good[:lane_mod.ADDS_UP_MIN - 1]:
        t += 60
        lane.feed(ReceiptText(r.lines, t))
    assert lane.adds_up_share is None and not lane.layout_alert
    for r in good[lane_mod.ADDS_UP_MIN - 1:40]:
        t += 60
        lane.feed(ReceiptText(r.lines, t))
    assert lane.adds_up_share == 1.0 and not lane.layout_alert
    # a firmware update: amounts now printed with a trailing currency word
    for r in good[40:60]:
        t += 60
        lines = tuple(ln + " руб" if "=" in ln or "≡" in ln else ln for ln in r.lines)
        lane.feed(ReceiptText(lines, t))
    share = lane.adds_up_share
    assert share is not None and share < lane_mod.ALERT_BELOW
    assert lane.layout_alert and lane.counters["layout-alerts"] == 1
    assert lane.counters["unreadable-receipt"] == 20  # nothing read, yet full of amounts
    for r in good[60:120]:  # the template fixed: the alert clears
        t += 60
        lane.feed(ReceiptText(r.lines, t))
    assert not lane.layout_alert and lane.adds_up_share == 1.0
    status = LaneStatus.from_json({"counters": {}, "adds_up_share": 0.5, "layout_alert": True})
    assert status.adds_up_share == 0.5 and status.layout_alert


def _capture(path: Path, receipts: list[bytes]) -> None:
    with path.open("w") as f:
        t = T0
        for data in receipts:
            for i in range(0, len(data), 300):
                f.write(chunk_to_json(Chunk(t, "lane-1", "printer", "escpos",
                                            data[i:i + 300])) + "\n")
                t += 0.01
            t += 10


def test_cli_template_check_a_capture_line_by_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cap = tmp_path / "lane1.jsonl"
    rs = generate("ru", 12, 5)
    _capture(cap, [escpos(r) for r in rs])
    code = cli.main(["pos", "template", "check", str(TEMPLATES / "ru-generic.toml"), str(cap)])
    out = capsys.readouterr().out
    assert code == 0
    assert "capture:" in out and "add up, 0 do not" in out
    for category in ("item", "tax", "tender", "field", "ignored"):
        assert f" {category} " in out
    # a template that reads only two-line items and the total (as before issue 16) on
    # today's layouts: receipts that do not add up, exit 1
    old = tmp_path / "ru-items-only.toml"
    old.write_text(r"""name = "ru-items-only"
currency = "RUB"
[fields]
total = '^\s*ИТОГО?\s*=?\s*(?P<value>[\d ]+[.,]\d{2})\s*$'
[[items]]
pattern = '^(?P<name>\S.*?)\s*\n\s*(?P<qty>\d+(?:[.,]\d{1,3})?)\s*[xX*]\s*(?P<price>[\d ]+[.,]\d{2})\s*=\s*(?P<amount>[\d ]+[.,]\d{2})\s*$'
""", "utf-8")  # noqa: E501 - a pattern on one line, as in a template file
    code = cli.main(["pos", "template", "check", "-q", str(old), str(cap)])
    out = capsys.readouterr().out
    assert code == 1 and "DOES NOT ADD UP" in out and "unmatched" in out


def test_cli_template_detect_ranks_the_shipped_templates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "receipts.txt"
    text.write_text("\f".join("\n".join(r.lines) for r in generate("en", 20, 5)), "utf-8")
    assert cli.main(["pos", "template", "detect", str(text), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["input"].startswith("plain text: ")
    best = got["ranking"][0]
    assert best["template"] == "en-generic" and best["share"] == 1.0
    assert got["ranking"][-1]["share"] == 0.0
    raw = tmp_path / "printer.bin"
    raw.write_bytes(b"".join(escpos(r) for r in generate("ru", 10, 6)))
    assert cli.main(["pos", "template", "detect", str(raw)]) == 0
    out = capsys.readouterr().out
    assert "raw ESC/POS bytes" in out
    assert out.splitlines()[1].split()[1] == "ru-generic"


def test_lane_from_registers_as_current_drivers_drive_them() -> None:
    """Shtrih-M FF46/FF45 (the line's sum as sent, payment types 1-16) and ATOL 0xE6/0x4A
    with a close sum of 0 ("the receipt's sum") become purchases that add up."""
    from storegate.core.pos.atol import AtolV3
    from storegate.core.pos.shtrih_m import ShtrihM
    from storegate.sim import fiscal

    shtrih = (fiscal.ENQ + fiscal.shtrih_sale_v2("Молоко", 2000, 8990)
              + fiscal.ENQ + fiscal.shtrih_sale_v2("Сыр", 1254, 12900, sum_minor=16177)
              + fiscal.ENQ + fiscal.shtrih_close_v2({1: 20000, 2: 14157}))
    atol = (fiscal.atol_frame(1, fiscal.atol_item("Молоко", 2000, 8990, discount_minor=990),
                              task_id=1)
            + fiscal.atol_frame(2, fiscal.atol_close(0, tender=2), task_id=2))
    for dialect, stream, total, tenders in (
            (ShtrihM(), shtrih, 34157, [("cash", 20000), ("card", 14157)]),
            (AtolV3(), atol, 16990, [("card", 16990)])):
        lane = LaneAssembler(LaneSettings("lane-1", "RUB", "fiscal"), os.urandom)
        [draft] = [d for f in dialect.feed(stream, T0) for d in lane.feed(f)]
        data = draft.data
        assert isinstance(data, p.PurchaseCompleted)
        assert data.total_minor == total and not data.totals_mismatch
        assert [(t.kind, t.amount_minor) for t in data.tenders] == tenders
        assert lane.adds_up_share is None  # one receipt: too few for a share yet


def test_pos_service_reports_the_share_in_health_and_status_and_warns_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    svc, _ = printer_lane_service(tmp_path, TEMPLATES / "ru-generic.toml")
    [dev] = svc.devices
    good = [r for r in generate("ru", 120, 21) if not r.copy and not r.void]
    t = T0
    for r in good[:30]:
        t += 30
        svc._bytes(dev, escpos(r), t)
    [health] = svc.health()
    assert health.adds_up_share == 1.0 and not health.layout_alert
    caplog.set_level("WARNING")
    for r in good[30:60]:  # new firmware prints amounts with a currency word
        t += 30
        broken = type(r)(r.family, r.layout, tuple(
            ln + " руб" if "=" in ln or "≡" in ln else ln for ln in r.lines), r.items,
            r.total_minor, qr=None)
        svc._bytes(dev, escpos(broken), t)
    [health] = svc.health()
    assert health.layout_alert and health.adds_up_share is not None
    assert health.adds_up_share < 0.8
    assert svc.snapshot().lanes["lane-1"].layout_alert
    warnings = [r for r in caplog.records if "layout may have changed" in r.getMessage()]
    assert len(warnings) == 1
