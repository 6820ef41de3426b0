"""`--json`: one envelope for every command's result, on stdout (progress stays on
stderr). Its JSON Schema ships with the package: connfix/cli/schemas/envelope.schema.json.

    {"schema": "connfix/1", "command": "triage", "environment": "prod",
     "status": "resolved", "exit_status": 0, "incident": "incidents/…", "result": {…}}

A command that fails with connfix's own error (bad inventory, database unreachable…)
still prints one envelope, status "error", with the message in result.error.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from pathlib import Path

SCHEMA = "connfix/1"


def mark(command: str, environment: str | None = None) -> None:
    """Note that this invocation answers in JSON (for the error handler)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    root = ctx.find_root()
    if not isinstance(root.obj, dict):
        root.obj = {}
    root.obj["json"] = {"command": command, "environment": environment}


def marked() -> dict[str, Any] | None:
    """Return what mark() noted, or None when the command does not answer in JSON."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj.get("json") if isinstance(obj, dict) else None


def _plain(value: Any) -> Any:
    if isinstance(value, os.PathLike):  # a Path, without importing pathlib for the test
        return os.fspath(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def envelope(
    command: str,
    status: str,
    exit_status: int,
    *,
    environment: str | None = None,
    incident: Path | str | None = None,
    result: Any = None,
) -> dict[str, Any]:
    """Build the envelope (see the module's docstring). Status "error" always carries
    result.error (a run that ended in error says why in its message)."""
    if status == "error" and (result is None or isinstance(result, dict)):
        result = dict(result or {})
        if not isinstance(result.get("error"), str):
            result["error"] = str(result.get("message") or "the command failed")
    return {
        "schema": SCHEMA,
        "command": command,
        "environment": environment,
        "status": status,
        "exit_status": int(exit_status),
        "incident": str(incident) if incident is not None else None,
        "result": result if result is not None else {},
    }


def emit(command: str, status: str, exit_status: int, **fields: Any) -> None:
    """Print the envelope on stdout, one line of JSON (json imported here: a command
    without --json does not load it)."""
    import json

    data = envelope(command, status, exit_status, **fields)
    sys.stdout.write(json.dumps(data, default=_plain) + "\n")
    sys.stdout.flush()


def error(message: str, exit_status: int) -> None:
    """The envelope of a command that failed with connfix's own error, a usage error, or
    was interrupted: with --json, stdout always holds exactly one envelope."""
    noted = marked() or _asked()
    if noted is None:
        return
    emit(
        noted["command"],
        "error",
        exit_status,
        environment=noted.get("environment"),
        result={"error": message},
    )


# the commands that answer with an envelope (the schema's `command`)
COMMANDS = frozenset(
    {
        "triage",
        "diagnose",
        "terminate",
        "restart",
        "report",
        "pool",
        "inventory check",
        "runbook validate",
        "lab status",
    }
)


def _asked() -> dict[str, Any] | None:
    """Before the command ran (a usage error while parsing it): whether its arguments
    asked for --json, and which command it was."""
    ctx = click.get_current_context(silent=True)
    argv = ctx.find_root().meta.get("connfix.argv") if ctx is not None else None
    if not argv or "--json" not in argv:
        return None
    words = [a for a in argv if not a.startswith("-")]
    for name in (" ".join(words[:2]), " ".join(words[:1])):
        if name in COMMANDS:
            return {"command": name, "environment": None}
    return None


def json_option(fn: Any) -> Any:
    """Add --json."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print one JSON envelope on stdout (progress stays on stderr).",
    )(fn)
