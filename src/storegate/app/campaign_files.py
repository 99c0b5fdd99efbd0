"""Campaigns from a file, for the demo and for stores run without central: JSON or TOML.

    # campaigns.toml                         // campaigns.json
    [[campaigns]]                            {"campaigns": [{"id": "welcome", ...}]}
    id = "welcome"                           (or the bare list)
    version = 1
    trigger = { kind = "store_entered" }
    content = { title = "Welcome back" }

Every campaign is validated with the model central's commands use
(:class:`~storegate.core.personal.campaigns.Campaign`): a file that loads here is one
central could have sent. A problem is a :class:`DataFileError` naming the file, the
campaign (by index and id) and the field, never a traceback.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from storegate.app.presence_files import read_data_file
from storegate.core.personal.campaigns import MAX_CAMPAIGNS, Campaign
from storegate.errors import DataFileError

MAX_CAMPAIGN_FILE_BYTES: Final = 8 * 1024 * 1024  # 2000 rich campaigns are ~4 MB


def load_campaigns(path: Path) -> list[Campaign]:
    """The campaigns of a ``.toml`` or ``.json`` file (by its suffix)."""
    text = read_data_file(path)
    source = str(path)
    if len(text.encode()) > MAX_CAMPAIGN_FILE_BYTES:
        raise DataFileError(source, f"larger than {MAX_CAMPAIGN_FILE_BYTES // 1024} KiB")
    suffix = path.suffix.lower()
    raw: Any
    if suffix == ".toml":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise DataFileError(source, f"not TOML: {exc}") from exc
    elif suffix == ".json":
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise DataFileError(source, f"not JSON: {exc}") from exc
    else:
        raise DataFileError(source, "a campaigns file is .toml or .json")
    return parse_campaigns(raw, source)


def parse_campaigns(raw: Any, source: str) -> list[Campaign]:
    if isinstance(raw, dict):
        extra = sorted(set(raw) - {"campaigns"})
        if extra:
            raise DataFileError(source, f"unknown top-level keys {extra}: only campaigns")
        raw = raw.get("campaigns", [])
    if not isinstance(raw, list):
        raise DataFileError(source, "campaigns is a list of campaigns")
    if len(raw) > MAX_CAMPAIGNS:
        raise DataFileError(source, f"more than {MAX_CAMPAIGNS} campaigns")
    out: list[Campaign] = []
    seen: set[str] = set()
    for i, rec in enumerate(raw):
        name = rec.get("id") if isinstance(rec, dict) else None
        label = f"campaigns[{i}]" + (f" ({str(name)[:64]!r})" if name is not None else "")
        try:
            campaign = Campaign.model_validate(rec)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(x) for x in first["loc"])
            raise DataFileError(source, first["msg"],
                                f"{label}.{key}" if key else label) from exc
        if campaign.id in seen:
            raise DataFileError(source, "this id is used by an earlier campaign", label)
        seen.add(campaign.id)
        out.append(campaign)
    return out
