"""Events written to a file as the gateway would publish them: CloudEvents JSON lines.

For ``replay`` and ``pos decode``: the same envelope, ids and sequence numbering as the
outbox gives them, so a file can be diffed against what central received.
"""

from __future__ import annotations

import json
import os
from typing import TextIO

from storegate.core import events as ev
from storegate.core.ids import Uuid7Generator
from storegate.core.topics import Topics


class EventFile:
    def __init__(self, out: TextIO, topics: Topics) -> None:
        self._out = out
        self._source = json.dumps(topics.source)
        self._ids = Uuid7Generator()
        self.sequence = 0
        self.counts: dict[str, int] = {}

    def write(self, drafts: list[ev.EventDraft]) -> None:
        for d in drafts:
            self.sequence += 1
            self.counts[d.type.name] = self.counts.get(d.type.name, 0) + 1
            event_id = self._ids.next(int(d.time * 1000), os.urandom(8))
            self._out.write(ev.encode_event(d, event_id=event_id, source_json=self._source,
                                            sequence=self.sequence).decode() + "\n")
