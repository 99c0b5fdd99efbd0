"""Benchmark: the shipped receipt templates on hostile lines, against ordinary receipts in
the same run.

Python's regular expressions backtrack with no time limit, so what bounds a template's
cost is the line: the parser tries no pattern on a line over ``MAX_LINE_CHARS`` and the
loader refuses nested repeats (``(a+)+``). This measures what is left: for each shipped
template and each family of adversarial lines (runs of spaces, digits, amounts, "x" and
"=" between them, letters, Cyrillic: what makes lazy names and optional groups try every
split), a receipt of 40 such lines at widths 32, 64, 128 and 256 (the bound), and one
100 kB line (not read). Reported: microseconds per line at each width, the growth from
128 to 256 (2 is linear, 4 quadratic), and the worst width-256 line against an ordinary
generated receipt's line (the baseline, same run).

    .venv/bin/python bench/bench_receipts_hostile.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from storegate.app.pos import read_template
from storegate.config import defaults_dir
from storegate.core.pos.template import MAX_LINE_CHARS, Template
from storegate.sim.receipts import generate

WIDTHS = (32, 64, 128, MAX_LINE_CHARS)
LINES = 40


def _families() -> dict[str, Callable[[int], str]]:
    def rep(unit: str) -> Callable[[int], str]:
        return lambda n: (unit * (n // len(unit) + 1))[:n]
    return {
        "spaces": lambda n: "A" + " " * (n - 2) + "B",
        "digits": rep("1"),
        "one-space": rep("1 "),
        "amounts": rep("1.00 "),
        "x-amounts": rep("1 x 1.00 "),
        "eq-amounts": rep("=1.00 "),
        "name-spaces": lambda n: rep("AB  ")(n - 6) + "  1.00",
        "cyrillic": rep("Молоко 1 шт. х "),
        "minus": rep("-1.00 "),
        "tax": rep("TAX 1 % "),
    }


def _time(t: Template, lines: tuple[str, ...], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        t.parse(lines)
        best = min(best, time.perf_counter() - t0)
    return best / len(lines) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for family in ("ru", "en"):
        t = read_template(defaults_dir() / "pos" / "templates" / f"{family}-generic.toml")
        ordinary = [line for r in generate(family, 60, 16) for line in r.lines]  # type: ignore[arg-type]
        base = _time(t, tuple(ordinary), args.rounds)
        print(f"{family}-generic: ordinary receipt line {base:.1f} us (baseline)")
        worst = ("", 0.0, 0.0)
        for name, make in _families().items():
            us = [_time(t, (make(w),) * LINES, args.rounds) for w in WIDTHS]
            growth = us[-1] / us[-2] if us[-2] else 0.0
            if us[-1] > worst[1]:
                worst = (name, us[-1], growth)
            print(f"  {name:<12}" + "".join(f" {w:>4}: {u:7.1f} us" for w, u in zip(WIDTHS, us,
                                                                            strict=True))
                  + f"   growth 128->256 x{growth:.1f}")
        huge = _time(t, ("1 " * 50_000,), args.rounds)
        print(f"  100 kB line (not read): {huge:.1f} us")
        print(f"  worst at {MAX_LINE_CHARS}: {worst[0]} {worst[1]:.1f} us/line = "
              f"{worst[1] / base:.1f} x an ordinary line; growth x{worst[2]:.1f}")


if __name__ == "__main__":
    main()
