"""The gap scanner: finds holes in each gateway's sequence from what storage holds, asks
for them with the signed replay command, and records how each ends (closed by the
replayed events, or lost as the gateway answered).

One pass (:meth:`GapScanner.scan`) per gateway: read the sequences above the watermark
(bounded), compute the holes (core/central/gaps.py), close the open gaps that are
filled, open new ones, advance the watermark over what is contiguous or known lost,
and send the replays that are due. Several instances may scan: replaying twice is
harmless (the events come again with the same ids).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from storegate.adapters.central import records
from storegate.adapters.central.storage import Database, StorageError
from storegate.app.central.commands import Commands
from storegate.core.central import gaps as g
from storegate.core.central.outbound import replay_payload
from storegate.log_once import LogOnce

log = logging.getLogger(__name__)

SCAN_LIMIT: Final = 200_000  # sequences read per gateway per pass


@dataclass(frozen=True, slots=True)
class ScanResult:
    opened: int = 0
    closed: int = 0
    lost: int = 0
    requested: int = 0


class GapScanner:
    def __init__(self, db: Database, commands: Commands | None, *,
                 grace_s: float = g.GRACE_S, retry_first_s: float = g.RETRY_FIRST_S) -> None:
        self._db = db
        self._commands = commands
        self.grace_s = grace_s
        self.retry_first_s = retry_first_s
        self._scan_lock = threading.Lock()  # one pass at a time in this process
        self.failures = 0  # gateways whose scan failed (counted, logged once each)
        self.capped_heads = 0  # announced heads beyond HEAD_BOUND (capped, alerted)
        self._log_once = LogOnce(log)
        self._seen: dict[tuple[str, str], tuple[object, ...]] = {}
        self.abandoned = 0  # gaps given up after MAX_ATTEMPTS (recorded lost, alerted)

    def scan(self, now: float) -> ScanResult:
        with self._scan_lock:
            total = ScanResult()
            with self._db.tx() as db:
                gws = records.gateways(db)
            for store, gateway, watermark in gws:
                try:
                    r = self._scan_one(store, gateway, watermark, now)
                except StorageError:
                    raise  # the storage failed: the pass ends (the next one retries)
                except Exception as exc:  # one gateway's bad state: never the fleet's
                    self.failures += 1
                    self._log_once(f"scan:{store}/{gateway}", "central: scanning %s/%s "
                                   "failed (%s: %s); the other gateways go on", store,
                                   gateway, type(exc).__name__, exc)
                    continue
                total = ScanResult(total.opened + r.opened, total.closed + r.closed,
                                   total.lost + r.lost, total.requested + r.requested)
            return total

    def _fingerprint(self, store: str, gateway: str,
                     now: float) -> tuple[tuple[object, ...], bool]:
        """What this gateway's scan reads, summed up cheaply (counts on the index),
        and whether a gap of it is due: a stuck watermark with many events above it
        is then not read whole every pass, holding the lock, while nothing changes."""
        with self._db.tx() as db:
            watermark = db.execute("SELECT watermark FROM gateways WHERE store = ? AND "
                                   "gateway = ?", (store, gateway)).fetchone()
            wm = 0 if watermark is None else int(watermark[0])
            mark = db.execute(
                "SELECT COUNT(*), MAX(sequence) FROM events WHERE store = ? AND "
                "gateway = ? AND sequence > ?", (store, gateway, wm)).fetchone()
            lost_n = db.execute("SELECT COUNT(*) FROM lost WHERE store = ? AND "
                                "gateway = ?", (store, gateway)).fetchone()[0]
            gaps_open = records.open_gaps(db, store, gateway)
            due = any(g.due(x, now, grace_s=self.grace_s, retry_first_s=self.retry_first_s)
                      for x in gaps_open)
            return ((wm, int(mark[0]), mark[1], int(lost_n),
                     records.announced(db, store, gateway), len(gaps_open)), due)

    def _scan_one(self, store: str, gateway: str, watermark: int, now: float) -> ScanResult:
        seen, due_now = self._fingerprint(store, gateway, now)
        if self._seen.get((store, gateway)) == seen and not due_now:
            return ScanResult()
        # kept as read before the pass: what the pass itself changes (the watermark, a
        # gap given up) makes the next pass read once more, then it settles
        self._seen[(store, gateway)] = seen
        return self._scan_read(store, gateway, watermark, now)

    def _scan_read(self, store: str, gateway: str, watermark: int,
                   now: float) -> ScanResult:
        opened = closed = lost_n = 0
        with self._db.tx() as db:
            seqs = records.sequences_above(db, store, gateway, watermark, SCAN_LIMIT)
            lost = records.lost_ranges(db, store, gateway)
            # a full read may stop short of the tail: the head counts only past it
            head = (records.announced(db, store, gateway) if len(seqs) < SCAN_LIMIT
                    else 0)
            believed = g.capped_head(head, max(seqs[-1] if seqs else 0, watermark))
            if believed < head:
                self.capped_heads += 1
                self._log_once(f"head:{store}/{gateway}", "central: %s/%s announced "
                               "last_sequence %d, more than %d past what central holds "
                               "(%d): not believed past %d (a corrupt or hostile head)",
                               store, gateway, head, g.HEAD_BOUND, believed - g.HEAD_BOUND,
                               believed)
                head = believed
            holes = g.missing(seqs, watermark, lost, head)
            current = records.open_gaps(db, store, gateway)
            covered: set[tuple[int, int]] = set()
            for gap in current:
                inside = [h for h in holes if gap.range.first <= h.first
                          and h.last <= gap.range.last]
                covered.update((h.first, h.last) for h in inside)
                if inside == [gap.range]:
                    continue  # still open as it was
                if not inside:
                    gone = any(lo.first <= gap.range.first and gap.range.last <= lo.last
                               for lo in lost)
                    records.close_gap(db, gap, "lost" if gone else "closed", now)
                    lost_n += gone
                    closed += not gone
                    continue
                # partly filled: the rest keeps its history (no immediate re-request)
                records.close_gap(db, gap, "split", now)
                for h in inside:
                    records.open_gap(db, replace(gap, range=h))
            for h in holes:
                if (h.first, h.last) not in covered:
                    records.open_gap(db, g.GapState(store, gateway, h, now))
                    opened += 1
            records.set_watermark(db, store, gateway, g.advance(watermark, seqs, lost))
            due = [x for x in records.open_gaps(db, store, gateway)
                   if g.due(x, now, grace_s=self.grace_s,
                            retry_first_s=self.retry_first_s)]
        requested = 0
        budget = g.RANGES_PER_PASS
        for gap in due if self._commands is not None else ():
            if budget <= 0:
                break  # the rest next pass: a bounded number of commands per gateway
            if gap.attempts >= g.MAX_ATTEMPTS:
                self._abandon(gap, now)
                lost_n += 1
                continue
            with self._db.tx() as db:
                # another instance may be at the same gap: only the one whose update
                # finds it as it read it sends
                if not records.claim_gap(db, gap, now):
                    continue
            parts = list(itertools.islice(g.split(gap.range), budget))
            budget -= len(parts)
            for part in parts:
                request_id = f"gap-{gateway}-{part.first}-{part.last}"
                command_id = self._send(store, gateway, part, request_id)
                with self._db.tx() as db:
                    records.gap_command(db, gap, command_id)
                requested += 1
                log.info("central: gap %s/%s [%d, %d] -> replay %s", store, gateway,
                         part.first, part.last, command_id)
        return ScanResult(opened, closed, lost_n, requested)

    def _abandon(self, gap: g.GapState, now: float) -> None:
        """Asked :data:`MAX_ATTEMPTS` times without events or an answer: recorded lost
        (the watermark moves on; events arriving later are still stored) and alerted."""
        with self._db.tx() as db:
            records.give_up_gap(db, gap, now)
        self.abandoned += 1
        log.warning("central: gap %s/%s [%d, %d] asked for %d times without events or an "
                    "answer: recorded lost (events still arriving are stored)", gap.store,
                    gap.gateway, gap.range.first, gap.range.last, gap.attempts)

    def _send(self, store: str, gateway: str, part: g.Range, request_id: str) -> str:
        assert self._commands is not None
        return self._commands.send(store, "replay", replay_payload(
            gateway, part.first, part.last, request_id), purpose="gap")


def run_periodically(scan: Callable[[float], object], clock: Callable[[], float],
                     stop: threading.Event, interval_s: float) -> None:
    """The scanner's thread: a pass every ``interval_s`` until ``stop``."""
    while not stop.wait(interval_s):
        try:
            scan(clock())
        except Exception:
            log.exception("central: gap scan failed; next pass in %g s", interval_s)
