"""Log the first occurrence of each distinct problem, count the rest.

Neutral ground: adapters and app both use it, so it lives outside both (adapters never
import app/; ``app/logs.py`` keeps the logging setup).
"""

from __future__ import annotations

import logging


class LogOnce:
    """Log the first occurrence of each distinct problem, count the rest.

    Bad input must never be dropped silently, but a flood of the same bad input must
    not flood the log either.
    """

    def __init__(self, logger: logging.Logger, limit: int = 1000) -> None:
        self._log = logger
        self._seen: dict[str, int] = {}
        self._limit = limit

    def __call__(self, key: str, msg: str, *args: object, **extra: object) -> None:
        n = self._seen.get(key, 0)
        if n == 0 and len(self._seen) < self._limit:
            self._log.warning(msg + " (further occurrences are counted, not logged)", *args,
                              extra=extra)
        if n or len(self._seen) < self._limit:
            self._seen[key] = n + 1

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._seen)
