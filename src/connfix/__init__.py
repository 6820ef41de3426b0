"""connfix: incident response for PostgreSQL connection exhaustion.

The package's root holds what every part of it shares: the version, the exit statuses
and the exception hierarchy that maps to them (each package raises these; only the CLI
turns them into an exit status and a message)."""

from __future__ import annotations

from enum import IntEnum

__version__ = "0.1.0"


class ExitStatus(IntEnum):
    """Exit statuses, as documented in the README and docs/commands.md."""

    OK = 0
    UNHEALTHY = 1  # still unhealthy, or a step failed and the run halted
    BAD_INPUT = 2  # inventory, runbook or flags
    UNREACHABLE = 3  # the database or a host cannot be reached
    INTERRUPTED = 130


class ConnfixError(Exception):
    """Base of every error connfix reports to the operator without a traceback."""

    exit_status: ExitStatus = ExitStatus.UNHEALTHY


class InputError(ConnfixError):
    """Bad input: a file, a field or a flag."""

    exit_status = ExitStatus.BAD_INPUT


class InventoryError(InputError):
    """The inventory is missing, unreadable or invalid."""


class RunbookError(InputError):
    """A runbook is missing, unreadable or invalid."""


class DatabaseUnavailable(ConnfixError):
    """The database cannot be reached, or refused every way in that is configured."""

    exit_status = ExitStatus.UNREACHABLE


class ConnectionLost(DatabaseUnavailable):
    """The database connection broke mid-run (a restart, a network cut)."""


class UnsupportedServer(ConnfixError):
    """The server's version is older than connfix supports."""


class LabError(ConnfixError):
    """The incident lab could not be built, inspected or removed."""


class LabInputError(LabError):
    """A lab flag or host name that cannot be used; nothing was done."""

    exit_status = ExitStatus.BAD_INPUT


class DsnError(ValueError, InputError):
    """A connection string that cannot be parsed; its message is already redacted
    (connfix.config.redact.dsn_error). A ValueError too, for the inventory's validators."""


FREEZE_ABOVE = 10_000  # a first threshold this high was set by connfix.__main__


def started_up() -> None:
    """A run's start-up is done: its modules, classes, inventory and runbook live until
    the process exits. In the installed command (connfix.__main__ raised the collector's
    first threshold for a short process) they are moved out of the garbage collector's
    way once (`gc.freeze`): the first collection of a triage otherwise scanned every one
    of them, 30-47 ms in the middle of the run (measured); what the run allocates after
    this is collected as before. Elsewhere (a library, the tests), nothing happens."""
    import gc

    if gc.get_threshold()[0] < FREEZE_ABOVE or gc.get_freeze_count():
        return
    gc.freeze()
