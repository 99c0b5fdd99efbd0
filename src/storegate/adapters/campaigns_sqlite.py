"""The store's campaigns on disk, so a restart keeps what central sent.

One row per campaign id: the newest version held or removed, and the campaign (JSON, as
central sent it) while it is active, NULL once removed. Removed versions are kept so an
older upsert still in flight after a restart is refused as before: versions never
regress. Campaigns hold no personal data; the file is still private (0600) like the
box's other stores. One connection, called from a worker thread one change at a time.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from storegate.adapters.private_sqlite import open_private, transaction
from storegate.core.personal.campaigns import Campaign, CampaignRef

_SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    campaign TEXT            -- NULL: removed at this version
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class LoadedCampaigns:
    active: list[Campaign]
    removed: list[CampaignRef]
    skipped: int  # rows today's model refuses (the next sync from central replaces them)


class CampaignStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_private(path, _SCHEMA, what="the campaigns store")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def load(self) -> LoadedCampaigns:
        active: list[Campaign] = []
        removed: list[CampaignRef] = []
        skipped = 0
        for cid, version, text in self._db.execute(
                "SELECT id, version, campaign FROM campaigns ORDER BY id"):
            try:
                if text is None:
                    removed.append(CampaignRef(id=cid, version=int(version)))
                else:
                    active.append(Campaign.model_validate_json(text))
            except (ValidationError, ValueError, TypeError):
                skipped += 1
        return LoadedCampaigns(active, removed, skipped)

    def save(self, active: Iterable[Campaign], removed: Iterable[CampaignRef]) -> None:
        """The engine's state after a change, in one transaction: the active campaigns,
        and the versions of those removed. A row never goes back to an older version."""
        with transaction(self._db):
            self._db.executemany(
                "INSERT INTO campaigns VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "version = excluded.version, campaign = excluded.campaign "
                "WHERE excluded.version >= campaigns.version",
                [(c.id, c.version, c.model_dump_json()) for c in active]
                + [(r.id, r.version, None) for r in removed])
