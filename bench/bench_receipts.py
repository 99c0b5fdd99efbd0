"""Benchmark: printed receipts that add up, per template family, before and after, in one run.

Generated receipt streams (``sim/receipts.py``: every layout of a family, reprints and
cancelled receipts among them, reproducible by seed) are read by

  before   the parser and shipped templates as they were before issue 16, read from git
           history at commit 3d437df (``git show``; a shallow clone needs
           ``git fetch --unshallow``) into a module of their own, ``template_v0``
  after    today's parser and shipped templates

and for each: the share of receipts (reprints and voids excluded) whose items add up to
the printed total (items - discounts + added tax == total, and == the fiscal QR's total
where there is one), the share whose items are exactly the ground truth, whether every
reprint and void was recognised, and the parser's throughput (receipts/s, best of 5
rounds, before and after timed in turn in each round).

    .venv/bin/python bench/bench_receipts.py [--receipts 1500] [--seed 16]
        [--json bench/results/receipts.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from storegate.config import defaults_dir  # noqa: E402
from storegate.core.pos.fiscal_qr import parse_fiscal_qr  # noqa: E402
from storegate.core.pos.template import Template, arithmetic  # noqa: E402
from storegate.sim.receipts import FAMILIES, GenReceipt, generate  # noqa: E402

BASELINE_REV = "3d437df"  # the last commit before issue 16
BASELINE_PARSER = "src/storegate/core/pos/template.py"
BASELINE_TEMPLATES = "src/storegate/defaults/pos/templates"
TEMPLATE_OF = {"ru": "ru-generic.toml", "en": "en-generic.toml"}


def _at_baseline(path: str) -> str:
    """A file as it was at ``BASELINE_REV``."""
    spec = f"{BASELINE_REV}:{path}"
    try:
        done = subprocess.run(["git", "-C", str(REPO), "show", spec], capture_output=True,
                              check=False, text=True, encoding="utf-8")
    except OSError as exc:
        raise SystemExit(f"bench_receipts: the baseline is read with git, which failed to "
                         f"start: {exc}") from exc
    if done.returncode != 0:
        raise SystemExit(f"bench_receipts: cannot read the baseline {spec} from git history "
                         f"({done.stderr.strip()}); in a shallow clone run "
                         "`git fetch --unshallow`")
    return done.stdout


def _baseline_module() -> ModuleType:
    """The parser of before issue 16 as a module of its own, ``template_v0``."""
    mod = ModuleType("template_v0")
    sys.modules["template_v0"] = mod  # dataclasses resolve their module by name
    code = compile(_at_baseline(BASELINE_PARSER), f"{BASELINE_REV}:{BASELINE_PARSER}", "exec")
    exec(code, mod.__dict__)  # our own source, from our own git history
    return mod


def _adds_up(parsed: Any, r: GenReceipt, new: bool) -> bool:
    fiscal = parse_fiscal_qr(r.qr) if r.qr else None
    qr_total = fiscal.total_minor if fiscal is not None else None
    if new:
        return arithmetic(parsed, qr_total).adds_up
    # the lane's check before issue 16: items - discounts == the printed total
    if not parsed.items or parsed.total_minor is None:
        return False
    computed = sum(i.amount_minor - i.discount_minor for i in parsed.items) \
        - parsed.discount_minor
    return computed == parsed.total_minor and qr_total in (None, parsed.total_minor)


def _exact(parsed: Any, r: GenReceipt) -> bool:
    got = [(i.name, i.quantity_milli, i.unit_price_minor, i.amount_minor, i.discount_minor)
           for i in parsed.items]
    want = [(i.name, i.quantity_milli, i.unit_price_minor, i.amount_minor, i.discount_minor)
            for i in r.items]
    return got == want and parsed.total_minor == r.total_minor


def measure(receipts: list[GenReceipt], parse: Callable[[tuple[str, ...]], Any],
            new: bool) -> dict[str, Any]:
    sales = adds = exact = copies = copies_ok = voids = voids_ok = returns_ok = returns = 0
    failed: dict[str, int] = {}
    for r in receipts:
        p = parse(r.lines)
        if r.copy:
            copies += 1
            copies_ok += bool(p.copy)
            continue
        if r.void:
            voids += 1
            voids_ok += bool(p.void)
            continue
        sales += 1
        ok = _adds_up(p, r, new)
        adds += ok
        exact += _exact(p, r)
        if not ok:
            failed[r.layout] = failed.get(r.layout, 0) + 1
        if r.kind == "return":
            returns += 1
            returns_ok += bool(getattr(p, "is_return", False))
    return {"receipts": sales, "adds_up": adds / sales, "exact_items": exact / sales,
            "failed_by_layout": failed, "reprints": copies, "reprints_recognised": copies_ok,
            "voids": voids, "voids_recognised": voids_ok, "returns": returns,
            "returns_recognised": returns_ok}


def throughput(receipts: list[GenReceipt],
               parsers: dict[str, Callable[[tuple[str, ...]], Any]],
               rounds: int = 5) -> dict[str, dict[str, float]]:
    """Receipts/s of each parser, best of ``rounds``, the parsers timed in turn within
    each round (a noisy machine slows both alike)."""
    lines = [r.lines for r in receipts]
    best = dict.fromkeys(parsers, float("inf"))
    for _ in range(rounds):
        for name, parse in parsers.items():
            t = time.perf_counter()
            for ls in lines:
                parse(ls)
            best[name] = min(best[name], time.perf_counter() - t)
    n_lines = sum(map(len, lines))
    return {name: {"receipts_per_s": len(lines) / s, "lines_per_s": n_lines / s}
            for name, s in best.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--receipts", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "receipts.json"))
    args = ap.parse_args()
    v0 = _baseline_module()
    shipped = defaults_dir() / "pos" / "templates"
    res: dict[str, Any] = {"cpus": os.cpu_count(), "seed": args.seed, "families": {}}
    for family in FAMILIES:
        receipts = generate(family, args.receipts, args.seed)
        name = TEMPLATE_OF[family]
        before_t = v0.Template.from_toml(_at_baseline(f"{BASELINE_TEMPLATES}/{name}"))
        after_t = Template.from_toml((shipped / name).read_text("utf-8"))
        before = measure(receipts, before_t.parse, new=False)
        after = measure(receipts, after_t.parse, new=True)
        speed = throughput(receipts, {"before": before_t.parse, "after": after_t.parse})
        before.update(speed["before"])
        after.update(speed["after"])
        res["families"][family] = {"template": name, "before": before, "after": after,
                                   "throughput_ratio": after["receipts_per_s"]
                                   / before["receipts_per_s"]}
        for label, m in (("before", before), ("after", after)):
            print(f"{family} {name:<16} {label:<6} adds up {m['adds_up']:7.2%}  exact items "
                  f"{m['exact_items']:7.2%}  of {m['receipts']} receipts   reprints "
                  f"{m['reprints_recognised']}/{m['reprints']}  voids "
                  f"{m['voids_recognised']}/{m['voids']}  returns "
                  f"{m['returns_recognised']}/{m['returns']}   "
                  f"{m['receipts_per_s']:8.0f} receipts/s")
            if m["failed_by_layout"]:
                print(f"   not adding up, by layout: {m['failed_by_layout']}")
        print(f"{family} throughput after/before: "
              f"{res['families'][family]['throughput_ratio']:.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
