"""The durable outbox: an event is *accepted* once it is committed to SQLite on disk.

One module per concept:

- :mod:`.file`: the file format (schema, application id), the checks that a file is
  ours, owner-only permissions and the single-writer lock;
- :mod:`.writer`: :class:`Outbox`, the group-commit writer thread, with retention;
- :mod:`.reader`: :class:`OutboxReader`, a read-only view, and the rows and stats it
  returns (what the publisher and the CLI read);
- :mod:`.redaction`: erasure, run on the writer thread (:meth:`Outbox.redact`);
- :mod:`.admin`: :func:`purge`, on a stopped gateway's file.
"""

from storegate.adapters.outbox.admin import purge
from storegate.adapters.outbox.reader import (
    OutboxReader,
    OutboxStats,
    PendingEvent,
    StoredEvent,
)
from storegate.adapters.outbox.redaction import Redacted
from storegate.adapters.outbox.writer import Accepted, Outbox, Synchronous

__all__ = [
    "Accepted",
    "Outbox",
    "OutboxReader",
    "OutboxStats",
    "PendingEvent",
    "Redacted",
    "StoredEvent",
    "Synchronous",
    "purge",
]
