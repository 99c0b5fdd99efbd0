"""The offline commands' work: replay a capture, decode POS bytes, simulate a store.

These run the same pure pipelines as the gateway, driven by files and the capture's own
clock instead of live sources; nothing here touches the broker or the outbox. The CLI
parses and checks the arguments, calls one function here and prints what it returns.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO, get_args

from storegate.app.eventfile import EventFile
from storegate.app.pos import make_dialect
from storegate.app.presence_files import config_beacons, identity_records, presence_pipeline
from storegate.config import Config, PosDialect
from storegate.core.ble.capture import (
    MAX_LINE_CHARS,
    BadLine,
    advert_to_json,
    bounded_lines,
    read_capture,
)
from storegate.core.ble.eid import Identity
from storegate.core.pos.capture import MAX_LINE_CHARS as MAX_POS_LINE_CHARS
from storegate.core.pos.capture import Chunk, looks_like_capture, read_pos_capture
from storegate.core.pos.frames import Dialect, Frame
from storegate.core.pos.lane import LaneAssembler, LaneSettings
from storegate.core.pos.template import Template
from storegate.core.presence.pipeline import PipelineCounters
from storegate.core.topics import Topics
from storegate.errors import DataFileError, UsageError
from storegate.sim.store import adverts, build

MAX_DECODE_BYTES: Final = 256 * 2**20  # pos decode reads its input whole
FISCAL_DIALECTS: Final = ("shtrih-m", "atol-v3")  # purchases come from the fiscal device


def private_file(path: str) -> int:
    """A capture file only its owner can read (it holds addresses or loyalty ids),
    also when it existed before."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the capture: {exc.strerror}") from exc
    return fd


def open_out(path: str, option: str) -> TextIO:
    """An output file named on the command line, or one clear line saying why not.
    Owner-only: events name customers' pseudonyms and purchases."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when it existed before
        return os.fdopen(fd, "w", encoding="utf-8")  # the caller closes it
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write: {exc.strerror or exc}") from exc


# --- replay ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayResult:
    counters: PipelineCounters
    bad: tuple[BadLine, ...]
    events: int  # written
    by_type: dict[str, int]  # events written, by type


def replay(config: Config, capture: str, events_out: str, identities: list[Identity],
           speed: float) -> ReplayResult:
    """The presence pipeline over a capture file; the events it would publish go to
    ``events_out``. ``speed``: a multiple of real time (0: as fast as possible)."""
    pipe = presence_pipeline(config.presence, config_beacons(config.presence))
    resolver, settings = pipe.resolver, pipe.settings
    bad: list[BadLine] = []
    started = time.monotonic()
    first_ts: float | None = None
    try:
        src = open(capture, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError as exc:
        raise DataFileError(capture, f"cannot read the capture: {exc.strerror}") from exc
    with src, open_out(events_out, "--events-out") as out:
        events = EventFile(out, Topics(config.store_id, config.gateway_id))
        emit = events.write
        last = 0.0
        for item in read_capture(bounded_lines(src.readline, MAX_LINE_CHARS)):
            if isinstance(item, BadLine):
                bad.append(item)
                continue
            if first_ts is None:
                first_ts = item.ts
                resolver.enroll_all(identities, item.ts)
            if speed:
                delay = (item.ts - first_ts) / speed - (time.monotonic() - started)
                if delay > 0:
                    time.sleep(delay)
            last = max(last, item.ts)
            emit(pipe.feed(item))
        emit(pipe.tick(last + settings.exit_after_s + 1))  # close what is still open
    return ReplayResult(pipe.counters, tuple(bad), events.sequence, dict(events.counts))


# --- pos decode --------------------------------------------------------------------


def read_whole(path: str, advice: str) -> bytes:
    """FILE's bytes, read whole (``pos decode``, ``pos template``): past
    ``MAX_DECODE_BYTES`` a clear error ending in ``advice``."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_DECODE_BYTES + 1)
    except OSError as exc:
        raise DataFileError(path, f"cannot read: {exc.strerror}") from exc
    if len(raw) > MAX_DECODE_BYTES:
        raise DataFileError(path, f"larger than {MAX_DECODE_BYTES // 2**20} MiB: {advice}")
    return raw


def capture_chunks(raw: bytes,
                   dialects: Collection[str] = ()) -> tuple[list[Chunk], list[BadLine]]:
    """A POS capture's chunks and its bad lines (with ``dialects``, a chunk must name one
    of them)."""
    chunks: list[Chunk] = []
    bad: list[BadLine] = []
    lines = (line[:MAX_POS_LINE_CHARS + 1]  # an over-long line is reported, not parsed
             for line in raw.decode("utf-8", "replace").splitlines())
    for item in read_pos_capture(lines, dialects):
        if isinstance(item, Chunk):
            chunks.append(item)
        else:
            bad.append(item)
    return chunks, bad


def read_pos_input(path: str, dialect: str | None,
                   lane: str) -> tuple[list[Chunk], list[BadLine]]:
    """A capture's chunks (and its bad lines), or a raw byte file as one chunk."""
    raw = read_whole(path, "decode a part of it")
    if not looks_like_capture(raw[:4096]):
        if not dialect:
            raise UsageError(f"{path} is raw bytes (not a capture): give --dialect")
        return [Chunk(time.time(), lane, "", dialect, raw)], []
    return capture_chunks(raw, () if dialect else get_args(PosDialect))


@dataclass(frozen=True, slots=True)
class DecodeResult:
    bytes_total: int
    frames: dict[str, int]  # by frame type
    events: int  # written
    rejected: dict[str, dict[str, int]]  # by dialect, then by reason
    lane_counters: dict[str, int]
    fiscal: bool  # purchases came from a fiscal device (no template needed)


def decode(chunks: list[Chunk], *, dialect: str | None, encoding: str, lane: str,
           currency: str, template: Template | None, events_out: str | None) -> DecodeResult:
    """Dialects and lane assembly over ``chunks``; the events go to ``events_out``
    (standard output if None). ``dialect`` overrides each chunk's."""
    dialects: dict[str, Dialect] = {}
    for c in chunks:
        name = dialect or c.dialect
        if name not in dialects:
            dialects[name] = make_dialect(name, encoding=encoding)
    fiscal = any(n in FISCAL_DIALECTS for n in dialects)
    assembler = LaneAssembler(LaneSettings(
        lane=lane, currency=currency, purchases_from="fiscal" if fiscal else "printer",
        template=template, offer_pattern=re.compile(r"^SGO1\.")), os.urandom)
    frames: dict[str, int] = {}
    out = open_out(events_out, "--events-out") if events_out else sys.stdout
    try:
        events = EventFile(out, Topics("offline", "decode"))

        def take(fs: list[Frame]) -> None:
            for f in fs:
                frames[type(f).__name__] = frames.get(type(f).__name__, 0) + 1
                events.write(assembler.feed(f))

        last = 0.0
        for c in chunks:
            last = max(last, c.ts)
            take(dialects[dialect or c.dialect].feed(c.data, c.ts))
        for d in dialects.values():
            take(d.flush(last + 3600))
    finally:
        if out is not sys.stdout:
            out.close()
    return DecodeResult(
        bytes_total=sum(len(c.data) for c in chunks), frames=frames, events=events.sequence,
        rejected={name: dict(d.rejected) for name, d in dialects.items()},
        lane_counters=dict(assembler.counters), fiscal=fiscal)


# --- simulate ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimulateResult:
    adverts: int
    people: int
    identities: int


def simulate(out: Path, *, seed: int, duration_s: float, app_users: int, passers_by: int,
             other_devices: int) -> SimulateResult:
    """A simulated store hour in ``out``: identities.json, store.toml, capture.jsonl."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("identities.json", "store.toml", "capture.jsonl"):
            (out / name).touch()  # fail now, not after the simulation
    except OSError as exc:
        raise UsageError(f"--out-dir {out}: cannot write there: {exc.strerror or exc}") \
            from exc
    sim = build(seed, duration_s=duration_s, app_users=app_users, passers_by=passers_by,
                other_devices=other_devices)
    # identity keys (simulated, but in the real format): owner-only, like the real store
    with os.fdopen(private_file(str(out / "identities.json")), "w") as ids:
        ids.write(json.dumps(identity_records(sim.identities()), indent=1))
    zones = ""
    for z in sim.zones:
        scanners = sorted(s for s, zz in sim.scanner_zone.items() if zz == z.id)
        zones += (f'\n[[presence.zones]]\nid = "{z.id}"\nscanners = {json.dumps(scanners)}\n'
                  f"min_rssi_dbm = {z.min_rssi_dbm}\n")
    (out / "store.toml").write_text(
        "# Generated by storegate simulate: the simulated store.\n"
        'store_id = "sim-store"\ngateway_id = "gw-1"\n[storage]\npath = "outbox.db"\n'
        '[presence]\nidentities_file = "identities.json"\n' + zones)
    n = 0
    with (out / "capture.jsonl").open("w") as f:
        for a in adverts(sim, seed + 1):
            f.write(advert_to_json(a) + "\n")
            n += 1
    return SimulateResult(adverts=n, people=len(sim.people), identities=len(sim.identities()))
