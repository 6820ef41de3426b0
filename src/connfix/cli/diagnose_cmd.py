"""`connfix diagnose`"""

from __future__ import annotations

import json
import sys

import click

from connfix.cli.options import inventory_option, terminal
from connfix.errors import ExitStatus


@click.command()
@click.argument("environment")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@inventory_option
def diagnose(environment: str, as_json: bool, inventory_path: str | None) -> None:
    """Show who holds the database's connections; read-only.

    Counts client backends only, against the real limit for ordinary roles
    (max_connections − superuser_reserved_connections − reserved_connections), and
    attributes them to inventory hosts, applications, users and states. A host over its
    pool size, or with sessions idle in transaction for too long, is a leak suspect.
    When the server is full it gets in through the reserved-slot or admin connection
    and says so.

    Exit status 0 when severity is ok, 1 for warning or critical, 3 when the database
    cannot be reached.

    \b
    Example:
      connfix diagnose prod
      connfix diagnose lab --json | jq .by_host
    """
    from connfix.analysis import diagnose as run
    from connfix.inventory_file import InventorySearch, resolve_environment

    _, env = resolve_environment(inventory_path, environment, InventorySearch.from_process())
    result = run(environment, env)
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    else:
        from connfix.cli import render

        render.diagnosis(terminal(), result)
    if not result.healthy:
        sys.exit(ExitStatus.UNHEALTHY)
