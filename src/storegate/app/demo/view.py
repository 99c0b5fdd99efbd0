"""The demo's live terminal view (rich): what the store does, as a consumer of its
events sees it, beside the gateway's own figures, central's ingest and the URLs to
open. Pure rendering of a :class:`~storegate.app.demo.run.Snapshot`."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from storegate.app.demo.run import Snapshot

ADMIN_TOKEN = "demo-admin-token-not-secret"  # noqa: S105 - the demo config's public one


def _uptime(seconds: float) -> str:
    s = max(int(seconds), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _figures(rows: list[tuple[str, str]], title: str) -> Panel:
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(justify="right", no_wrap=True)
    for name, value in rows:
        t.add_row(name, value)
    return Panel(t, title=title, title_align="left")


def _zones(s: Snapshot) -> Panel:
    t = Table(box=None, padding=(0, 1), show_edge=False)
    t.add_column("zone", no_wrap=True)
    t.add_column("devices", justify="right")
    t.add_column("customers", justify="right")
    for zone in s.zones:
        devices, customers = s.tally.occupancy.get(zone, (0, 0))
        t.add_row(zone, str(devices), str(customers))
    return Panel(t, title="zone occupancy", title_align="left")


def render(s: Snapshot) -> RenderableType:
    c = s.tally
    by = c.by_type
    status = c.status
    status_text = "—" if status is None else f"{status.state} ({status.reason}, session " \
        f"{status.session})"
    header = Text.assemble(
        ("storegate demo", "bold"), "  ", (s.phase, "yellow" if s.phase != "running"
                                           else "green"),
        f"   up {_uptime(s.now - s.started_at)}   status on the broker: {status_text}")
    store = _figures([
        ("visits (store)", str(c.store_visits)),
        ("zone visits", str(by["storegate.visit.entered.v1"] - c.store_visits)),
        ("purchases", "  ".join(f"{lane} {n}" for lane, n in sorted(
            c.purchases_by_lane.items())) or "0"),
        ("offers issued", str(by["storegate.offer.issued.v1"])),
        ("offers suppressed", str(by["storegate.offer.suppressed.v1"])),
        ("tokens scanned", f"{s.tokens_scanned} ({s.tokens_waiting} waiting)"),
        ("redemptions", str(by["storegate.offer.redeemed.v1"])),
        ("tokens refused", str(by["storegate.offer.rejected.v1"])),
        ("pickups collected", f"{c.pickups_collected} of {s.pickups_sent} handed over"),
    ], "the store")
    g = s.gateway
    gateway = _figures([
        ("gateway", g.state),
        ("broker", f"127.0.0.1:{s.broker_port} " + (
            "up" if s.broker_running else "stopped" if s.broker_stopped else "DOWN")),
        ("gateway connected", "yes" if g.connected else "no"),
        ("outbox depth", str(g.depth)),
        ("acked by the broker", str(g.published_total)),
        ("events seen", str(c.events)),
        ("tills", "  ".join(f"{lane} {n}" for lane, n in sorted(s.lanes.items()))),
    ], "gateway and broker")
    ce = s.central
    central = Panel(Text.assemble(
        ("running" if ce.running else "not running", "bold"),
        "   events stored ", ("—" if ce.stored is None else str(ce.stored), "bold"),
        "   gaps open ", ("—" if ce.gaps_open is None else str(ce.gaps_open), "bold"),
        f"\n{ce.note}"), title="central", title_align="left")
    top = Table.grid(expand=True)
    for _ in range(3):
        top.add_column(ratio=1)
    top.add_row(store, gateway, _zones(s))
    b = s.http_base
    urls = Text.assemble(
        ("till screens  ", "bold"), f"{b}/staff/sign-in?lane=lane-1  (PIN 1234; lane-2 too)\n",
        ("floor         ", "bold"), f"{b}/staff/sign-in?lane=lane-1  (manager PIN 9999, "
                                    f"then {b}/floor)\n",
        ("customer app  ", "bold"), f"{b}/app/demo\n",
        ("metrics       ", "bold"), f"curl -H 'Authorization: Bearer {ADMIN_TOKEN}' "
                                    f"{b}/metrics\n",
        ("logs          ", "bold"), f"{s.log_path.parent}/  (demo.log, gateway.log, "
                                    "broker/, central/)")
    parts: list[RenderableType] = [header, top, central, Panel(urls, title="open",
                                                                title_align="left")]
    if s.shutdown:
        parts.append(Panel("\n".join(f"{n}. {step}" for n, step in enumerate(s.shutdown, 1)),
                           title="stopping, in order", title_align="left"))
    else:
        parts.append(Text("Ctrl-C stops everything in order: tills, gateway (drains), "
                          "central, broker.", style="dim"))
    return Group(*parts)
