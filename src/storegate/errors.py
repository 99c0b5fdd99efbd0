"""The typed errors a user of storegate can meet, each carrying what is needed to fix it.

The CLI turns every ``StoregateError`` into one clear line and the error's exit code;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class StoregateError(Exception):
    """Base of every error storegate reports to a user."""

    exit_code: int = 1


class _FileProblemError(StoregateError):
    """A problem in one file: ``source`` names the file (or environment variable),
    ``key`` where in it, ``problem`` what is wrong."""

    exit_code = 2
    label = "problem in"

    def __init__(self, source: str, problem: str, key: str | None = None) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{self.label} {where}: {problem}")


class ConfigError(_FileProblemError):
    """The configuration file (or an environment override) is unusable.

    ``source`` names the file or variable, ``key`` the dotted setting, ``problem`` what
    is wrong with it.
    """

    label = "config error in"


class DataFileError(_FileProblemError):
    """A data file (capture, receipt template, identity registry, beacons) is unusable:
    missing, unreadable, not the format, or a value out of bounds.

    Not a :class:`ConfigError`: the config may be right and the file wrong. ``source``
    names the file, ``key`` the entry (``[3].registered_at``), ``problem`` what is wrong.
    """

    label = "bad data file"


class UsageError(StoregateError):
    """A command-line argument is unusable (an unknown ``--encoding``, an output file
    that cannot be written): the option and the problem."""

    exit_code = 2


class OutboxError(StoregateError):
    """The durable outbox cannot be used."""

    exit_code = 3


class OutboxNotOursError(OutboxError):
    """The file at the outbox path is corrupt or belongs to something else.

    storegate refuses to start rather than overwrite it.
    """


class OutboxUnavailableError(OutboxError):
    """The storage path cannot be created, opened or written."""


class OutboxFullError(OutboxError):
    """The disk (or the database size limit) is full: the event was NOT accepted."""


class OutboxClosedError(OutboxError):
    """The outbox is shutting down and accepts nothing more."""


class ClockError(StoregateError):
    """The wall clock is not set (a Raspberry Pi before time sync): events would carry a
    time from 1970. Not exit code 2: under systemd the service is started again (after
    RestartSec) until the clock is synced."""

    exit_code = 4
