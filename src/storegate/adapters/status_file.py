"""The running gateway's live status, in a small JSON file beside the outbox.

``storegate status`` runs in another process: it reads the outbox itself (depth, age,
drops) and this file for what only the running process knows (broker connection,
counters). Written atomically (temp file + rename), so a reader never sees half a file,
and owner-only (0600) like the outbox: it names the broker, lanes and their counters.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Final

FILE_MODE: Final = 0o600


def write(path: Path, status: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(status, indent=2, default=str).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # a temp file left by a crashed older version
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)  # e.g. disk full: leave no torn temp file behind
        raise
    os.close(fd)
    tmp.replace(path)


def read(path: Path) -> dict[str, Any] | None:
    """The last status written, or None if there is none or it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
