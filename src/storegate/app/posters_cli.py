"""The ``storegate posters`` command line; the rendering (qrcode, Pillow) is imported only
when the command runs, so ``storegate --help`` stays fast."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from storegate.config import Config


def add_parser(sub: Any, add_config: Callable[[argparse.ArgumentParser], None],
               config_of: Callable[[argparse.Namespace], Config]) -> None:
    p = sub.add_parser("posters", help="render each zone's signed check-in poster (SVG, "
                       "PNG or PDF)")
    add_config(p)
    p.add_argument("--zone", action="append", default=[], metavar="ZONE",
                   help="only this zone (repeat for several; default: every zone)")
    p.add_argument("--format", choices=["svg", "png", "pdf"], default="pdf")
    p.add_argument("--paper", choices=["a4", "a5"], default="a5")
    p.add_argument("--out", default=".", metavar="DIR", help="where to write "
                   "poster-<zone>.<format> (default: here)")

    def run(args: argparse.Namespace) -> int:
        from storegate.app.posters import cmd_posters  # noqa: PLC0415 - keep --help fast

        return cmd_posters(args, config_of(args))

    p.set_defaults(func=run)
