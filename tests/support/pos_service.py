"""A gateway's POS service with one ESC/POS printer lane, its port never opened: a test
feeds the printer's bytes through ``PosService._bytes`` as the reader thread would."""

from __future__ import annotations

from pathlib import Path

from storegate.app.pos import PosService
from storegate.config import load
from storegate.core.events import EventDraft


def printer_lane_service(tmp_path: Path,
                         template: Path) -> tuple[PosService, list[EventDraft]]:
    """The service (lane ``lane-1``, its one device a printer) and the list it submits
    events to."""
    cfg = tmp_path / "store.toml"
    cfg.write_text(f"""store_id = "s1"
gateway_id = "g1"
[storage]
path = "{tmp_path / 'outbox.db'}"
[[pos.lanes]]
id = "lane-1"
currency = "RUB"
template = "{template}"
[[pos.lanes.devices]]
role = "printer"
dialect = "escpos"
port = "{tmp_path / 'no-such-port'}"
""")
    submitted: list[EventDraft] = []
    return PosService(load(cfg), submit=submitted.extend), submitted
