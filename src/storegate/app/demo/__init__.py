"""``storegate demo``: the store in a box, one command (issue 15). See :mod:`.run`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _port(text: str) -> int:
    """A TCP port, 1-65535 (argparse says which option is wrong, in one line)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="the store in a box: broker, central, the gateway on "
                       "the demo store with its shoppers and two tills, a live view")
    p.add_argument("--headless", action="store_true",
                   help="no view; at the end print one JSON line of counts")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--state-dir", metavar="DIR", default=None,
                   help="the demo's own directory, emptied at start (default: "
                   "$XDG_STATE_HOME/storegate/demo-box)")
    p.add_argument("--mqtt-port", type=_port, default=None,
                   help="the demo broker's port (default: 1883 if free, else a free one)")
    p.add_argument("--http-port", type=_port, default=None,
                   help="the gateway's HTTP port (default: 8080 if free, else a free one)")
    p.add_argument("--every", type=_positive, default=8.0, metavar="SECONDS",
                   help="a customer at each till this often (default: 8)")
    p.add_argument("--no-central", action="store_true", help="run without central")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from storegate.app.demo.run import Demo, DemoOptions, default_state_dir, run_demo  # noqa: PLC0415

    if args.duration is not None and args.duration <= 0:
        print("storegate: --duration must be positive", file=sys.stderr)
        return 2
    options = DemoOptions(
        state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(),
        headless=args.headless, duration_s=args.duration, mqtt_port=args.mqtt_port,
        http_port=args.http_port, every_s=args.every, central=not args.no_central)
    demo = Demo(options)
    demo.prepare()
    if args.headless:
        result = run_demo(demo)
        sys.stdout.write(result.json_line() + "\n")
        return 0 if result.drained else 1
    return _with_view(demo)


def _with_view(demo: Any) -> int:
    """The live view owns the terminal: the log goes to the run directory's demo.log."""
    from rich.console import Console  # noqa: PLC0415 - only with the view
    from rich.live import Live  # noqa: PLC0415

    from storegate.app.demo.run import run_demo  # noqa: PLC0415
    from storegate.app.demo.view import render  # noqa: PLC0415

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(demo.run_dir / "demo.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    console = Console()
    with Live(render(demo.snapshot()), console=console, refresh_per_second=2,
              screen=False) as live:
        result = run_demo(demo, on_tick=lambda s: live.update(render(s)))
    console.print(f"demo stopped: {'drained' if result.drained else 'NOT drained'}, "
                  f"last status {result.last_status}; counts: {result.json_line()}")
    return 0 if result.drained else 1
