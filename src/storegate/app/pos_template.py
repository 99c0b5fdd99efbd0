"""``storegate pos template check|detect``: a receipt template against a store's own receipts.

FILE is one of (the command says which it read):

* a capture, as ``storegate pos capture`` writes it (JSON lines of hex chunks): the
  printer chunks (``escpos``, ``stx-etx``) go through their dialect, job by job, exactly
  as ``run`` reads them;
* plain text (UTF-8): receipts separated by a form feed or by two or more empty lines;
* anything else: raw ESC/POS bytes (``--encoding``, default cp866).

``check TEMPLATE FILE`` prints each receipt line by line with what each line became
(item, discount, tax, tender, field, ignored, unmatched) and the arithmetic check, and
exits 1 when any receipt's items do not add up. ``detect FILE`` ranks the shipped
templates (and those of ``--templates DIR``) by the share of receipts that add up.
"""

from __future__ import annotations

import argparse
import codecs
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from storegate.app.offline import capture_chunks, read_whole
from storegate.app.pos import load_template, make_dialect
from storegate.config import defaults_dir
from storegate.core.pos.capture import Chunk, looks_like_capture
from storegate.core.pos.fiscal_qr import parse_fiscal_qr
from storegate.core.pos.frames import ReceiptText
from storegate.core.pos.pan import mask_card_numbers
from storegate.core.pos.template import MAX_LINE_CHARS as TEMPLATE_MAX_LINE_CHARS
from storegate.core.pos.template import Arithmetic, ParsedReceipt, Template, arithmetic
from storegate.errors import UsageError

PRINTER_DIALECTS: Final = ("escpos", "stx-etx")
_SPLIT: Final = re.compile(r"\f|\n[ \t]*\n(?:[ \t]*\n)+")
MAX_LINE_CHARS_SHOWN: Final = 2 * TEMPLATE_MAX_LINE_CHARS
# a long digit run on an echoed line (a card number, printed unmasked by a bad layout)
_LONG_DIGITS: Final = re.compile(r"\d{13,19}")


@dataclass(frozen=True, slots=True)
class Job:
    lines: tuple[str, ...]
    qr: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """One job read with one template."""

    parsed: ParsedReceipt
    check: Arithmetic
    what: str  # "receipt", "reprint", "void", "not a receipt"


def read_jobs(path: str, encoding: str) -> tuple[str, list[Job]]:
    """What FILE is (said to the operator) and its printed jobs."""
    raw = read_whole(path, "check a part of it")
    if looks_like_capture(raw[:4096]):
        chunks, bad = capture_chunks(raw)
        chunks = [c for c in chunks if c.dialect in PRINTER_DIALECTS]
        jobs = _decode(chunks, encoding)
        return (f"capture: {len(chunks)} printer chunk(s)"
                + (f", {len(bad)} bad line(s) skipped" if bad else "")), jobs
    if b"\x1b" not in raw and b"\x1d" not in raw:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            parts = [p for p in _SPLIT.split(text.replace("\r\n", "\n")) if p.strip()]
            return (f"plain text: {len(parts)} receipt(s) separated by form feeds or blank "
                    "lines"), [Job(tuple(p.strip("\n").split("\n"))) for p in parts]
    jobs = _decode([Chunk(0.0, "lane", "printer", "escpos", raw)], encoding)
    return f"raw ESC/POS bytes ({encoding})", jobs


def _decode(chunks: list[Chunk], encoding: str) -> list[Job]:
    dialects: dict[str, Any] = {}
    jobs: list[Job] = []
    last = 0.0
    for c in chunks:
        d = dialects.get(c.dialect)
        if d is None:
            d = dialects[c.dialect] = make_dialect(c.dialect, encoding=encoding)
        last = max(last, c.ts)
        jobs += [Job(f.lines, f.qr) for f in d.feed(c.data, c.ts)
                 if isinstance(f, ReceiptText)]
    for d in dialects.values():
        jobs += [Job(f.lines, f.qr) for f in d.flush(last + 3600) if isinstance(f, ReceiptText)]
    return jobs


def judge(template: Template, job: Job, *, trace: bool = False) -> Verdict:
    parsed = template.parse(job.lines, trace=trace)
    fiscal = next((s for s in map(parse_fiscal_qr, job.qr) if s is not None), None)
    check = arithmetic(parsed, fiscal.total_minor if fiscal is not None else None)
    if parsed.copy:
        what = "reprint"
    elif parsed.void:
        what = "void"
    elif not parsed.items and parsed.total_minor is None and fiscal is None:
        what = "not a receipt"
    else:
        what = "receipt"
    return Verdict(parsed, check, what)


def _echo(line: str) -> str:
    """The line as shown to the operator: card numbers masked (grouped ones too), and
    over-long lines cut (a 100 kB line is not read, nor printed whole)."""
    if len(line) > MAX_LINE_CHARS_SHOWN:
        line = line[:MAX_LINE_CHARS_SHOWN] + f"... ({len(line)} characters)"
    line = mask_card_numbers(line)
    return _LONG_DIGITS.sub(lambda m: "*" * (len(m.group()) - 4) + m.group()[-4:], line)


def check(template: Template, jobs: list[Job], *, quiet: bool) -> tuple[int, int]:
    """Print every receipt; (receipts, receipts that do not add up)."""
    receipts = failing = 0
    for n, job in enumerate(jobs, 1):
        v = judge(template, job, trace=True)
        ok = v.what != "receipt" or v.check.adds_up
        if v.what == "receipt":
            receipts += 1
            failing += not ok
        head = (f"receipt {n}: {v.what}" if v.what != "receipt" else
                f"receipt {n}: {len(v.parsed.items)} item(s), " + (
                    "adds up" if ok else f"DOES NOT ADD UP ({v.check.problem})"))
        if v.what == "receipt":
            head += (f"; items {v.check.items_minor / 100:.2f} - discount "
                     f"{v.check.discount_minor / 100:.2f} + tax "
                     f"{v.check.tax_added_minor / 100:.2f} = "
                     f"{v.check.computed_minor / 100:.2f}, total " + (
                         f"{v.check.total_minor / 100:.2f}" if v.check.total_minor is not None
                         else "none") + ("" if not v.parsed.is_return else "; a return"))
        print(head)
        if quiet and ok:
            continue
        for t in v.parsed.trace or ():
            for k in range(t.lines):
                label = f"{t.category:<9}" if k == 0 else " " * 9
                rule = f"  [{t.rule}]" if k == 0 and t.rule else ""
                print(f"  {t.line + k + 1:4d} {label} {_echo(job.lines[t.line + k])}{rule}")
        if v.parsed.bad_amounts:
            print(f"       {v.parsed.bad_amounts} amount(s) matched but did not parse")
        if v.parsed.long_lines:
            print(f"       {v.parsed.long_lines} line(s) over {TEMPLATE_MAX_LINE_CHARS} "
                  "characters: not read")
        if v.parsed.dropped_lines:
            print(f"       {v.parsed.dropped_lines} line(s) past the first "
                  f"{len(job.lines) - v.parsed.dropped_lines}: not read")
    return receipts, failing


@dataclass(frozen=True, slots=True)
class Rank:
    name: str
    path: str
    receipts: int
    adds_up: int
    unmatched_lines: int

    @property
    def share(self) -> float:
        return self.adds_up / self.receipts if self.receipts else 0.0


def detect(templates: list[tuple[str, Template]], jobs: list[Job]) -> list[Rank]:
    """The templates, best first: by the share of receipts that add up, then by fewer
    unmatched lines. A job is a receipt when a template sees one in it and none sees a
    reprint or a void."""
    verdicts = {path: [judge(t, j) for j in jobs] for path, t in templates}
    whats = [{verdicts[p][k].what for p, _ in templates} for k in range(len(jobs))]
    # a reprint or a void for one template is one, whatever another makes of it
    is_receipt = ["receipt" in w and not w & {"reprint", "void"} for w in whats]
    out = []
    for path, t in templates:
        vs = [v for v, r in zip(verdicts[path], is_receipt, strict=True) if r]
        out.append(Rank(t.name, path, len(vs), sum(v.what == "receipt" and v.check.adds_up
                                                      for v in vs),
                        sum(v.parsed.unmatched for v in vs)))
    return sorted(out, key=lambda r: (-r.share, r.unmatched_lines, r.name))


def shipped_templates(extra: str | None) -> list[tuple[str, Template]]:
    dirs = [defaults_dir() / "pos" / "templates"] + ([Path(extra)] if extra else [])
    out = []
    for d in dirs:
        if not d.is_dir():
            raise UsageError(f"--templates {d}: not a directory")
        out += [(str(p), load_template(p)) for p in sorted(d.glob("*.toml"))]
    return out


def _encoding(value: str) -> str:
    try:
        codecs.lookup(value)
    except LookupError as exc:
        raise UsageError(f"--encoding {value!r}: unknown text encoding (cp866, cp1251, "
                         "cp437, utf-8, ...)") from exc
    return value


def add_parser(psub: Any) -> None:
    """``pos template check|detect`` under the ``pos`` command."""
    pt = psub.add_parser("template", help="check a receipt template on a capture, or find "
                         "the shipped template that reads it")
    tsub = pt.add_subparsers(dest="template_action", required=True, metavar="ACTION")
    p = tsub.add_parser("check", help="every receipt of FILE line by line: what each line "
                        "became and whether the items add up (exit 1 if any does not)")
    p.add_argument("template", metavar="TEMPLATE", help="receipt template (TOML)")
    p.add_argument("file", metavar="FILE", help="a capture (storegate pos capture), plain "
                   "text, or raw ESC/POS bytes")
    p.add_argument("--encoding", default="cp866", help="printer code page before any ESC t "
                   "(default cp866)")
    p.add_argument("--quiet", "-q", action="store_true", help="lines only of receipts that "
                   "do not add up")

    def run_check(args: argparse.Namespace) -> int:
        template = load_template(Path(args.template))
        what, jobs = read_jobs(args.file, _encoding(args.encoding))
        print(f"{args.file}: {what}; template {template.name}")
        receipts, failing = check(template, jobs, quiet=args.quiet)
        print(f"{len(jobs)} job(s): {receipts} receipt(s), {receipts - failing} add up, "
              f"{failing} do not")
        return 1 if failing else 0

    p.set_defaults(func=run_check)
    p = tsub.add_parser("detect", help="rank the shipped templates by the share of FILE's "
                        "receipts that add up")
    p.add_argument("file", metavar="FILE", help="a capture, plain text, or raw ESC/POS bytes")
    p.add_argument("--templates", metavar="DIR", help="also rank the templates in DIR")
    p.add_argument("--encoding", default="cp866")
    p.add_argument("--json", action="store_true")

    def run_detect(args: argparse.Namespace) -> int:
        what, jobs = read_jobs(args.file, _encoding(args.encoding))
        ranks = detect(shipped_templates(args.templates), jobs)
        if args.json:
            json.dump({"input": what, "ranking": [
                {"template": r.name, "path": r.path, "receipts": r.receipts,
                 "adds_up": r.adds_up, "share": r.share,
                 "unmatched_lines": r.unmatched_lines} for r in ranks]}, sys.stdout, indent=2)
            print()
        else:
            print(f"{args.file}: {what}")
            for r in ranks:
                print(f"  {r.share:7.1%}  {r.name:<20} {r.adds_up}/{r.receipts} receipts add "
                      f"up, {r.unmatched_lines} unmatched line(s)   {r.path}")
        return 0 if ranks and ranks[0].receipts and ranks[0].share > 0 else 1

    p.set_defaults(func=run_detect)
