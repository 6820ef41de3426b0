"""`connfix inventory ...`"""

from __future__ import annotations

import dataclasses
import sys

import click

from connfix import ExitStatus
from connfix.cli import envelope
from connfix.cli.envelope import json_option
from connfix.cli.options import environment_argument, inventory_option, inventory_search, terminal


@click.group()
def inventory() -> None:
    """Check the inventory of environments."""


@inventory.command("check")
@environment_argument
@json_option
@inventory_option
def check(environment: str, as_json: bool, inventory_path: str | None) -> None:
    """Check one environment read-only: database, admin connection, every host.

    Exit status 0 only when every check passes; 3 when the database or a host cannot
    be reached; 2 when the inventory is invalid.

    \b
    Example:
      connfix inventory check prod
      connfix inventory check lab
    """
    if as_json:
        envelope.mark("inventory check", environment)
    from connfix.cli import render
    from connfix.config.inventory_file import resolve_environment
    from connfix.diagnosis.inventory_check import check_environment

    _, env = resolve_environment(inventory_path, environment, inventory_search())
    result = check_environment(environment, env)
    render.environment_check(terminal(), result)
    code = ExitStatus.OK if result.ok else ExitStatus.UNREACHABLE
    if as_json:
        envelope.emit(
            "inventory check",
            "ok" if result.ok else "failed",
            code,
            environment=environment,
            result={
                "ok": result.ok,
                **dataclasses.asdict(result),
                "hosts": [{**dataclasses.asdict(h), "ok": h.ok} for h in result.hosts],
            },
        )
    sys.exit(code)
