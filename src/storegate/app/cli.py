"""The ``storegate`` command line.

Every :class:`~storegate.errors.StoregateError` becomes one line on stderr and its exit
code (2 for a bad config, data file or argument); only a bug shows a traceback.

This module is the parser and thin ``cmd_*`` functions: they check the arguments, call,
and print. The offline commands' work (replay, pos decode, simulate) is in
``app/offline.py``; ``status`` renders the typed view of ``app/status.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from storegate import __version__
from storegate.adapters import status_file
from storegate.adapters.outbox import OutboxReader, OutboxStats, purge
from storegate.adapters.plumbing import sleep_until_stopped
from storegate.app import (
    backup,
    calibrate,
    demo,
    firmware,
    keys,
    logs,
    pos_template,
    posters_cli,
)
from storegate.app.central import cli as central_cli
from storegate.app.status import (
    GatewayStatusView,
    PersonalStatus,
    PosStatus,
    PresenceStatus,
)
from storegate.config import ENV_CONFIG, Config, PosDialect, load, load_default, redacted
from storegate.core.topics import ID_RULE, is_valid_id
from storegate.errors import ConfigError, StoregateError, UsageError

if TYPE_CHECKING:
    from storegate.app.status import SourceStatus

log = logging.getLogger("storegate")

STATUS_STALE_S = 10.0


def _config(args: argparse.Namespace) -> Config:
    path = getattr(args, "config", None) or os.environ.get(ENV_CONFIG)
    return load(Path(path)) if path else load_default()


# --- commands ----------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from storegate.app.gateway import Gateway  # noqa: PLC0415 - keep --help fast

    config = _config(args)
    gateway = Gateway(config)
    gateway.config_loader = lambda: _config(args)  # the admin API's config reload
    # Not drained (broker down) is normal at shutdown: the outbox keeps the events.
    asyncio.run(gateway.run())
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from storegate.app.preflight import load_start_files  # noqa: PLC0415

    config = load(Path(args.file))
    # the files the config names, read exactly as `run` reads them at start
    files = load_start_files(config)
    for warning in files.warnings:
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    print(
        f"{args.file}: OK (store {config.store_id}, gateway {config.gateway_id}, "
        f"broker {config.mqtt.host}:{config.mqtt.port}, outbox {config.storage.path})"
    )
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    print(json.dumps(redacted(_config(args)), indent=2))
    return 0


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _live_status(config: Config, now: float) -> dict[str, Any] | None:
    """The running gateway's status file; None if it is not running (or not lately)."""
    live = status_file.read(config.status_path)
    running = bool(
        live and status_file.process_alive(int(live.get("pid", 0)))
        and now - float(live.get("updated_at", 0)) < STATUS_STALE_S
    )
    return live if running else None


def _outbox_stats(config: Config) -> OutboxStats | None:
    """The outbox's facts from the database itself; None: there is no outbox yet."""
    if not config.storage.path.exists():
        return None
    with OutboxReader(config.storage.path) as reader:
        return reader.stats()


def status_report(config: Config, live: dict[str, Any] | None, st: OutboxStats | None,
                  now: float) -> dict[str, Any]:
    """What ``storegate status --json`` shows: outbox facts from the database itself,
    live facts from the running gateway's status file (if it is running)."""
    path = str(config.storage.path)
    outbox: dict[str, Any] = {"path": path, "exists": False} if st is None else {
        "path": path,
        "exists": True,
        "depth": st.depth,
        "bytes": st.bytes,
        "oldest_pending_age_s": None if st.oldest_accepted_at is None
        else max(now - st.oldest_accepted_at, 0.0),
        "last_sequence": st.last_sequence,
        "retained_for_replay": st.retained,
        "dropped_total": st.dropped_total,
        "dropped": st.dropped,
    }
    return {"store_id": config.store_id, "gateway_id": config.gateway_id,
            "running": live is not None, "gateway": live, "outbox": outbox}


def cmd_status(args: argparse.Namespace) -> int:
    config = _config(args)
    now = time.time()
    live, st = _live_status(config, now), _outbox_stats(config)
    g = GatewayStatusView.from_json(live)
    connected = bool(g and g.broker and g.broker.connected)
    if args.json:
        print(json.dumps(status_report(config, live, st, now), indent=2))
        return 0 if connected else 1
    name = f"{config.store_id}/{config.gateway_id}"
    if g:
        _print_gateway(g, name, now)
    else:
        print(f"gateway   {name}  not running")
        print("broker    unknown (the gateway is not running)")
    if st is None:
        print(f"outbox    {config.storage.path}: none yet")
    else:
        age = None if st.oldest_accepted_at is None else max(now - st.oldest_accepted_at, 0.0)
        print(f"outbox    {st.depth} pending ({st.bytes} bytes), oldest "
              f"{'-' if age is None else _age(age)}, last sequence {st.last_sequence}, "
              f"{st.dropped_total} dropped, {st.retained} kept for replay")
        for key, n in sorted(st.dropped.items()):
            print(f"          dropped {key}: {n}")
    return 0 if connected else 1


def _print_gateway(g: GatewayStatusView, name: str, now: float) -> None:
    print(f"gateway   {name}  running (pid {g.pid}, session {g.session}, "
          f"up {_age(now - g.started_at)})")
    from storegate.adapters.mqtt_paho import PublisherStatus  # noqa: PLC0415 - --help fast

    # no publisher yet: shown as a disconnected broker with zero counters
    b = g.broker or PublisherStatus.from_json({})
    state = "connected" if b.connected else "DISCONNECTED"
    since = f" for {_age(now - b.since)}" if b.since else ""
    print(f"broker    {b.url}  {state}{since}"
          + (f"  last error: {b.last_error}" if b.last_error else ""))
    print(f"          published {b.published_total}, in flight {b.in_flight}, "
          f"reconnects {b.reconnects_total}, rejected {b.rejected_total}")
    lat = b.publish_latency
    if lat is not None and lat.count:
        def ms(bound: float | None) -> str:
            return "-" if bound is None else "over the last bucket" \
                if bound == float("inf") else f"<= {bound * 1000:g} ms"
        print(f"          publish->PUBACK: mean {lat.sum_s / lat.count * 1000:.1f} ms, "
              f"p50 {ms(lat.quantile_bound(0.5))}, p99 {ms(lat.quantile_bound(0.99))}")
    if b.refused_held:
        print(f"          REFUSED by the broker: {b.refused_held} event(s) held in the "
              f"outbox, retried with backoff (last: {b.last_refusal})")
    for warning in b.warnings:
        print(f"WARNING   {warning}")
    if g.outbox.last_error:
        print(f"accepting FAILING: {g.outbox.last_error}")
    held = g.outbox.pending_accept
    if held.pending or held.dropped:
        print(f"          {held.pending} event(s) waiting in memory to be accepted "
              f"({held.pending_purchases} purchases, never dropped); "
              f"{sum(held.dropped.values())} other(s) dropped while waiting")
    _print_commands(g)
    if g.presence:
        _print_presence(g.presence, now)
    if g.pos:
        _print_pos(g.pos, now)
    if g.personal:
        _print_personal(g.personal)
    if g.checkin:
        c = g.checkin
        refused = ", ".join(f"{k} {v}" for k, v in sorted(c.rejected_by_reason.items()))
        print(f"check-in  {c.accepted_total} accepted, {c.repeats_total} repeats; refused: "
              f"{refused or 'none'}; poster key {c.poster_kid}, generations "
              f"{c.min_generation}..{c.generation}")
    if g.app_channel:
        a = g.app_channel
        print(f"app       {a.streams} phone(s) connected, {a.inbox_messages} message(s) held, "
              f"{a.published_total} pushed" + (f"; {a.errors_total} INBOX ERRORS"
                                               if a.errors_total else ""))
    if g.screens:
        sc = g.screens
        print(f"screens   {sc.subscribers} staff screen(s) connected, {sc.accesses_total} "
              f"profile view(s) logged" + (f"; {sc.errors_total} ERRORS" if sc.errors_total
                                           else ""))


def _print_personal(ps: PersonalStatus) -> None:
    def counts(d: Mapping[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items()) if v) or "none"

    print(f"offers    {ps.customers_known} customers known, {ps.campaigns_active} campaigns "
          f"active; {ps.offers_issued_total} issued, suppressed: "
          f"{counts(ps.offers_suppressed_by_reason)}")
    print(f"tokens    {ps.tokens_reserved_total} reserved, {ps.tokens_redeemed_total} "
          f"redeemed, {ps.tokens_released_total} released; rejected: "
          f"{counts(ps.tokens_rejected_by_reason)}"
          + (f"; {ps.ledger_errors_total} LEDGER ERRORS" if ps.ledger_errors_total else ""))
    print(f"stitching purchases by method: {counts(ps.stitched_by_method)}")


def _print_commands(g: GatewayStatusView) -> None:
    c = g.commands
    if c is None:
        return
    keys_ = ", ".join(c.central_keys) or "NONE (every command is rejected)"
    print(f"commands  {c.accepted_total} accepted, {c.rejected_total} rejected; "
          f"central keys: {keys_}")
    for reason, n in sorted(c.rejected_by_reason.items()):
        print(f"          rejected {reason}: {n}")
    if c.last_rejection:
        print(f"          last rejected: {c.last_rejection}")
    print(f"seal key  {g.seal_key}  (central seals identity keys to it)")


def _print_presence(pr: PresenceStatus, now: float) -> None:
    present = ", ".join(f"{k} {v}" for k, v in pr.present.items())
    print(f"presence  {pr.enrolled} enrolled, {pr.tracked} tracked; present: {present}")
    c = pr.counters
    infra = ", ".join(f"{k} {v}" for k, v in sorted(c.infrastructure.items())) or "none"
    print(f"          adverts {c.adverts}: {c.resolved} of customers, {c.anonymous} "
          f"anonymous, {c.unresolved_eid} unknown EIDs; store beacons: {infra}"
          + (f"; {c.unknown_scanner} from scanners in no zone" if c.unknown_scanner
             else ""))
    if c.visits_entered or c.visits_exited:
        def zones(d: Mapping[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"
        print(f"          visits entered: {zones(c.visits_entered)}; exited: "
              f"{zones(c.visits_exited)}")
    cal = pr.calibration  # the store's radio model from its zone beacons (issue 13)
    if cal is not None and cal.exponent is not None:
        offs = ", ".join(f"{s} {o:+.1f}" for s, o in cal.offsets_db.items())
        print(f"          calibration: n {cal.exponent:.2f}, {cal.pairs} pairs, rms "
              f"{cal.residual_rms_db or 0:.1f} dB; offsets dB: {offs or 'none'}"
              + (f"; flags: {', '.join(cal.flags)}" if cal.flags else ""))
    elif cal is not None:
        print(f"          calibration: {cal.state}")
    for src in pr.sources:  # each source's own status (adapters/)
        print(_source_line(src, now))


def _source_line(src: SourceStatus, now: float) -> str:
    if src.kind == "ble":
        last = src.last_advert_at
        heard = f"last advert {_age(now - last)} ago" if last else "no adverts yet"
        line = (f"source    bluetooth {src.adapter} ({src.mode}, scanner {src.scanner}): "
                f"{src.state}, {src.adverts_total} adverts, {heard}, "
                f"{src.restarts_total} restarts")
        if src.last_error:
            line += f"; last error: {src.last_error}"
        return line
    if src.kind == "scanner-nodes":
        silent = sorted(n for n, st in src.nodes.items() if st.silent)
        return (f"source    scanner nodes: {src.state}, {len(src.nodes)} node(s)"
                + (f" ({len(silent)} SILENT: {', '.join(silent)})" if silent else "")
                + f", {src.adverts_total} adverts, {src.rejected_total} rejected")
    return f"source    {src.kind}: {src.state}, {src.adverts_total} adverts"


def _print_pos(pos: PosStatus, now: float) -> None:
    for lane_id, lane in pos.lanes.items():
        c = lane.counters
        print(f"lane      {lane_id}: {c.get('purchases', 0)} purchases, {c.get('voided', 0)} "
              f"voided, {c.get('totals-mismatch', 0)} totals mismatches, "
              f"{c.get('duplicate', 0)} duplicates" + (
                  f"; {lane.adds_up_share:.0%} of recent receipts add up"
                  if lane.adds_up_share is not None else "")
              + (" (LAYOUT ALERT: check the template)" if lane.layout_alert else ""))
        for d in lane.devices:
            tap = d.tap  # the serial tap's own status (adapters/); None: simulated
            last = tap.last_byte_at if tap else None
            heard = f"last byte {_age(now - last)} ago" if last else "no bytes yet"
            rejected = ", ".join(f"{k} {v}" for k, v in sorted(d.rejected.items()))
            line = (f"          {d.role} ({d.dialect}, {d.port}): "
                    f"{tap.state if tap else '?'}, {tap.bytes_total if tap else 0} bytes, "
                    f"{heard}")
            if rejected:
                line += f"; rejected: {rejected}"
            if tap and tap.last_error:
                line += f"; last error: {tap.last_error}"
            print(line)


def cmd_outbox_count(args: argparse.Namespace) -> int:
    config = _config(args)
    with OutboxReader(config.storage.path) as reader:
        counts = reader.count_by_type()
    if args.json:
        print(json.dumps({"total": sum(counts.values()), "by_type": counts}))
    else:
        print(sum(counts.values()))
        for t, n in sorted(counts.items()):
            print(f"  {t}: {n}")
    return 0


def cmd_outbox_list(args: argparse.Namespace) -> int:
    config = _config(args)
    with OutboxReader(config.storage.path) as reader:
        rows = reader.pending(args.limit, args.type)
    now = time.time()
    for r in rows:
        if args.json:
            print(json.dumps({"sequence": r.sequence, "id": r.id, "type": r.type,
                              "topic": r.topic, "size": r.size, "accepted_at": r.accepted_at}))
        else:
            print(f"{r.sequence:>10}  {r.id}  {r.type:<32} {r.size:>6} B  "
                  f"{_age(now - r.accepted_at)} ago")
    return 0


def cmd_outbox_purge(args: argparse.Namespace) -> int:
    config = _config(args)
    with OutboxReader(config.storage.path) as reader:
        counts = reader.count_by_type()
    n = counts.get(args.type, 0) if args.type else sum(counts.values())
    what = f"{n} pending {args.type or ''} event(s)".replace("  ", " ")
    if n == 0:
        print(f"nothing to purge in {config.storage.path}")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"refusing to purge {what} without confirmation: add --yes",
                  file=sys.stderr)
            return 1
        answer = input(f"Permanently delete {what} from {config.storage.path}? "
                       "They will never reach central. Type 'purge' to confirm: ")
        if answer.strip() != "purge":
            print("not purged")
            return 1
    removed = purge(config.storage.path, event_type=args.type)
    print(f"purged {removed} event(s); counted as dropped (reason 'purge')")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"storegate {__version__}")
    return 0


def cmd_contract(args: argparse.Namespace) -> int:
    from storegate.contract import asyncapi  # noqa: PLC0415

    docs = Path(args.dir)
    if args.action == "write":
        try:
            written = asyncapi.write(docs)
        except OSError as exc:
            raise UsageError(f"{docs}: cannot write the contract: "
                             f"{exc.strerror or exc} ({exc.filename})") from exc
        for path in written:
            print(path)
        return 0
    stale = [rel for rel, text in asyncapi.render().items()
             if not (docs / rel).exists() or (docs / rel).read_text("utf-8") != text]
    for rel in stale:
        print(f"stale: {docs / rel} (run: storegate contract write {docs})", file=sys.stderr)
    return 1 if stale else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from storegate.app import offline  # noqa: PLC0415

    _bounded(args.duration, "--duration", 1.0, 7 * 86_400.0)
    for option, n in (("--app-users", args.app_users), ("--passers-by", args.passers_by),
                      ("--other-devices", args.other_devices)):
        _bounded(n, option, 0, 10_000)
    out = Path(args.out_dir)
    r = offline.simulate(out, seed=args.seed, duration_s=args.duration,
                         app_users=args.app_users, passers_by=args.passers_by,
                         other_devices=args.other_devices)
    print(f"wrote {r.adverts} adverts of {r.people} people to {out / 'capture.jsonl'}, "
          f"{r.identities} identities, config {out / 'store.toml'}")
    return 0


def _bounded(value: float, option: str, lo: float, hi: float) -> None:
    """A number from the command line: finite and within [lo, hi], or one clear line."""
    if not lo <= value <= hi:  # NaN fails this too
        raise UsageError(f"{option} {value}: must be between {lo:.0f} and {hi:.0f}")


def cmd_replay(args: argparse.Namespace) -> int:
    from storegate.app import offline  # noqa: PLC0415
    from storegate.app.presence_files import load_identities  # noqa: PLC0415

    _bounded(args.speed, "--speed", 0.0, 1e6)
    config = _config(args)
    ident_path = Path(args.identities) if args.identities else config.presence.identities_file
    identities = load_identities(ident_path) if ident_path else []
    if not config.presence.zones:
        raise ConfigError(str(args.config or "<config>"), "no zones configured",
                          "presence.zones")
    r = offline.replay(config, args.file, args.events_out, identities, args.speed)
    c, bad = r.counters, r.bad
    print(f"replayed {c.adverts} adverts ({c.resolved} of enrolled customers, "
          f"{c.anonymous} anonymous, {sum(c.infrastructure.values())} from the store's "
          f"beacons), {len(bad)} bad line(s); wrote {r.events} event(s) to "
          f"{args.events_out}", file=sys.stderr)
    for t, n in sorted(r.by_type.items()):
        print(f"  {t}: {n}", file=sys.stderr)
    for b in bad[:10]:
        print(f"  bad line {b.line}: {b.reason}", file=sys.stderr)
    if len(bad) > 10:
        print(f"  ... and {len(bad) - 10} more bad line(s)", file=sys.stderr)
    return 0


async def _run_until_stopped(runs: Sequence[Callable[[asyncio.Event], Coroutine[Any, Any, None]]],
                             stop: asyncio.Event, duration: float) -> None:
    """Run the sources until Ctrl-C / SIGTERM, ``stop`` or ``duration`` (0: no limit)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with asyncio.TaskGroup() as tg:
        for run in runs:
            tg.create_task(run(stop))
        if duration:
            await sleep_until_stopped(stop, duration)
            stop.set()


def cmd_capture(args: argparse.Namespace) -> int:
    """Record adverts from the live sources to a capture file (JSON lines)."""
    from storegate.app.gateway import mqtt_settings  # noqa: PLC0415
    from storegate.app.offline import private_file  # noqa: PLC0415
    from storegate.app.presence import build_sources  # noqa: PLC0415
    from storegate.app.presence_files import config_beacons  # noqa: PLC0415
    from storegate.core.ble.capture import Advert, advert_to_json  # noqa: PLC0415

    _bounded(args.duration, "--duration", 0.0, 366 * 86_400.0)
    config = _config(args)
    fd = private_file(args.out)  # raw device addresses
    count = 0

    async def capture() -> None:
        nonlocal count
        stop = asyncio.Event()
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            def write(a: Advert) -> None:
                nonlocal count
                out.write(advert_to_json(a) + "\n")
                count += 1
                if args.max_adverts and count >= args.max_adverts:
                    stop.set()

            sources = build_sources(config, mqtt_settings(config), on_advert=write,
                                    enroll=lambda identities, now: None,
                                    beacons=config_beacons(config.presence),
                                    client_suffix=f"capture-{os.getpid()}")
            if not sources:
                raise ConfigError(str(args.config or "<config>"), "no advert source enabled "
                                  "(sources.ble, sources.scanner_nodes or sources.simulator)")
            print(f"capturing from {', '.join(s.name for s in sources)} to {args.out} "
                  "(raw device addresses: keep the file on this box); Ctrl-C stops",
                  file=sys.stderr)
            await _run_until_stopped([src.run for src in sources], stop, args.duration)

    asyncio.run(capture())
    print(f"captured {count} advert(s) to {args.out}", file=sys.stderr)
    return 0


def cmd_pos_capture(args: argparse.Namespace) -> int:
    """Record a lane's raw bytes, with arrival times, to a capture file."""
    from storegate.app.offline import private_file  # noqa: PLC0415
    from storegate.app.pos import device_tap  # noqa: PLC0415
    from storegate.core.pos.capture import Chunk, chunk_to_json  # noqa: PLC0415

    _bounded(args.duration, "--duration", 0.0, 366 * 86_400.0)
    config = _config(args)
    lane = next((ln for ln in config.pos.lanes if ln.id == args.lane), None)
    if lane is None:
        known = ", ".join(ln.id for ln in config.pos.lanes) or "none configured"
        raise ConfigError(str(args.config or "<config>"), f"no lane {args.lane!r} "
                          f"(lanes: {known})", "pos.lanes")
    fd = private_file(args.file)  # receipts carry loyalty ids
    count = [0, 0]

    async def capture() -> None:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            taps = []
            for d in lane.devices:
                def write(data: bytes, ts: float, d: Any = d) -> None:
                    out.write(chunk_to_json(Chunk(ts, lane.id, d.role, d.dialect, data)) + "\n")
                    out.flush()
                    count[0] += 1
                    count[1] += len(data)

                taps.append(device_tap(lane.id, d, write))
            print(f"capturing lane {lane.id} ({', '.join(d.port for d in lane.devices)}) to "
                  f"{args.file}; read-only; Ctrl-C stops", file=sys.stderr)
            await _run_until_stopped([tap.run for tap in taps], asyncio.Event(), args.duration)

    asyncio.run(capture())
    print(f"captured {count[1]} byte(s) in {count[0]} chunk(s) to {args.file}", file=sys.stderr)
    return 0


def cmd_pos_decode(args: argparse.Namespace) -> int:
    """Run dialects and lane assembly offline on a raw byte file or a capture."""
    from storegate.app import offline  # noqa: PLC0415
    from storegate.app.pos import load_template  # noqa: PLC0415

    if not is_valid_id(args.lane):
        raise UsageError(f"--lane {args.lane!r}: {ID_RULE}")
    if not re.fullmatch(r"[A-Z]{3}", args.currency):
        raise UsageError(f"--currency {args.currency!r}: an ISO 4217 code such as RUB")
    try:
        codecs.lookup(args.encoding)
    except LookupError as exc:
        raise UsageError(f"--encoding {args.encoding!r}: unknown text encoding "
                         "(cp866, cp1251, cp437, utf-8, ...)") from exc
    template = load_template(Path(args.template)) if args.template else None
    chunks, bad = offline.read_pos_input(args.file, args.dialect, args.lane)
    for b in bad:
        print(f"  bad line {b.line}: {b.reason}", file=sys.stderr)
    r = offline.decode(chunks, dialect=args.dialect, encoding=args.encoding, lane=args.lane,
                       currency=args.currency, template=template, events_out=args.events_out)
    print(f"decoded {r.bytes_total} byte(s): "
          + (", ".join(f"{n} {k}" for k, n in sorted(r.frames.items())) or "no frames")
          + f"; {r.events} event(s)" + (f"; {len(bad)} bad capture line(s)" if bad else ""),
          file=sys.stderr)
    for name, rejected in r.rejected.items():
        for reason, n in sorted(rejected.items()):
            print(f"  {name} rejected {n}: {reason}", file=sys.stderr)
    for what, n in sorted(r.lane_counters.items()):
        print(f"  lane {what}: {n}", file=sys.stderr)
    if template is None and not r.fiscal and r.frames.get("ReceiptText"):
        print("  (no --template: printed receipts cannot become purchases)", file=sys.stderr)
    return 0


# --- parser ------------------------------------------------------------------------


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE",
                   help=f"config file (default: ${ENV_CONFIG}, else the embedded demo store)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storegate",
        description="Edge gateway for physical stores: BLE presence and POS purchases, "
        "published durably over MQTT.",
    )
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="auto", choices=["auto", "json", "text"],
                        help="auto: readable on a terminal, JSON lines otherwise")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the gateway (the demo store if no config is given)")
    _add_config(p)
    p.set_defaults(func=cmd_run)

    pc = sub.add_parser("config", help="check or show a configuration")
    csub = pc.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = csub.add_parser("check", help="validate a config file and exit (2 if broken)")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_config_check)
    p = csub.add_parser("show", help="print the effective config, secrets masked")
    _add_config(p)
    p.set_defaults(func=cmd_config_show)

    p = sub.add_parser("status", help="outbox depth, oldest pending age, broker connection "
                       "(exit 0 only when running and connected)")
    _add_config(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    po = sub.add_parser("outbox", help="inspect or purge the durable outbox")
    osub = po.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = osub.add_parser("count", help="pending events, by type")
    _add_config(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_outbox_count)
    p = osub.add_parser("list", help="pending events, oldest first")
    _add_config(p)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--type", help="only this event type")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_outbox_list)
    p = osub.add_parser("purge", help="delete pending events (gateway stopped; asks first)")
    _add_config(p)
    p.add_argument("--type", help="only this event type")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_outbox_purge)

    p = sub.add_parser("contract", help="write or check docs/asyncapi.yaml and JSON Schemas")
    p.add_argument("action", choices=["write", "check"])
    p.add_argument("dir", nargs="?", default="docs")
    p.set_defaults(func=cmd_contract)

    p = sub.add_parser("simulate", help="generate a simulated store hour: capture, "
                       "identities and a config, for the demo and for tuning")
    p.add_argument("--out-dir", required=True, metavar="DIR")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=3600.0, metavar="SECONDS")
    p.add_argument("--app-users", type=int, default=30)
    p.add_argument("--passers-by", type=int, default=20)
    p.add_argument("--other-devices", type=int, default=40)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("replay", help="run the presence pipeline on a capture file and "
                       "write the events it would publish")
    p.add_argument("file", metavar="FILE", help="capture (JSON lines)")
    _add_config(p)
    p.add_argument("--identities", metavar="FILE", help="identity registry (JSON)")
    p.add_argument("--events-out", required=True, metavar="OUT.jsonl")
    p.add_argument("--speed", type=float, default=0.0,
                   help="replay at this multiple of real time (default: as fast as possible)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("capture", help="record adverts from the live sources (bluetooth "
                       "adapters, scanner nodes, simulator) to a capture file")
    _add_config(p)
    p.add_argument("--out", required=True, metavar="FILE.jsonl")
    p.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                   help="stop after this long (default: until Ctrl-C / SIGTERM)")
    p.add_argument("--max-adverts", type=int, default=0, metavar="N",
                   help="stop after N adverts")
    p.set_defaults(func=cmd_capture)

    pp = sub.add_parser("pos", help="POS lanes: capture raw bytes, decode them offline")
    psub = pp.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = psub.add_parser("capture", help="record a lane's raw bytes with timestamps "
                        "(read-only) to FILE")
    p.add_argument("lane", metavar="LANE")
    p.add_argument("file", metavar="FILE")
    _add_config(p)
    p.add_argument("--duration", type=float, default=0.0, metavar="SECONDS")
    p.set_defaults(func=cmd_pos_capture)
    p = psub.add_parser("decode", help="run a dialect and the lane assembly on a raw byte "
                        "file or a capture; print the events run would publish")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--dialect", choices=get_args(PosDialect),
                   help="required for a raw byte file; overrides a capture's")
    p.add_argument("--template", metavar="FILE", help="receipt template (TOML)")
    p.add_argument("--encoding", default="cp866")
    p.add_argument("--lane", default="lane-1")
    p.add_argument("--currency", default="RUB")
    p.add_argument("--events-out", metavar="OUT.jsonl", help="default: standard output")
    p.set_defaults(func=cmd_pos_decode)
    pos_template.add_parser(psub)

    keys.add_parser(sub, _add_config, _config)
    posters_cli.add_parser(sub, _add_config, _config)
    calibrate.add_parser(sub, _add_config, _config)
    demo.add_parser(sub)  # storegate demo: the store in a box (app/demo/)
    firmware.add_parser(sub, _add_config, _config)
    backup.add_parser(sub, _add_config, _config)  # storegate backup|restore
    central_cli.add_parser(sub, _add_config, _config)  # storegate central (app/central/)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"storegate: {exc}", file=sys.stderr)
        return exc.exit_code
    except StoregateError as exc:
        print(f"storegate: {exc}", file=sys.stderr)
        log.debug("details", exc_info=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code
