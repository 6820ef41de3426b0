"""`connfix diagnose`"""

from __future__ import annotations

import sys

import click

from connfix.cli import envelope
from connfix.cli.envelope import json_option
from connfix.cli.options import inventory_option, terminal
from connfix.errors import ExitStatus


@click.command()
@click.argument("environment")
@json_option
@click.option(
    "--prometheus-textfile",
    "textfile",
    metavar="PATH",
    help="Also write the diagnosis as Prometheus metrics to PATH (a .prom file, for"
    " node_exporter's textfile collector; written atomically).",
)
@inventory_option
def diagnose(
    environment: str, as_json: bool, textfile: str | None, inventory_path: str | None
) -> None:
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
      connfix diagnose lab --json | jq .result.by_host
      connfix diagnose prod --prometheus-textfile /var/lib/node_exporter/connfix.prom
    """
    if as_json:
        envelope.mark("diagnose", environment)
    from connfix.analysis import diagnose as run
    from connfix.inventory_file import InventorySearch, resolve_environment

    if textfile is not None and not textfile.endswith(".prom"):
        raise click.BadParameter(
            "node_exporter's textfile collector reads *.prom files only",
            param_hint="--prometheus-textfile",
        )
    _, env = resolve_environment(inventory_path, environment, InventorySearch.from_process())
    result = run(environment, env)
    if textfile is not None:
        from pathlib import Path

        from connfix import metrics
        from connfix.errors import InputError

        try:
            metrics.write_textfile(Path(textfile).expanduser(), [result])
        except OSError as exc:
            raise InputError(f"--prometheus-textfile {textfile}: {exc.strerror or exc}") from None
    code = ExitStatus.OK if result.healthy else ExitStatus.UNHEALTHY
    if as_json:
        envelope.emit(
            "diagnose", result.severity, code, environment=environment, result=result.to_json()
        )
    else:
        from connfix.cli import render

        render.diagnosis(terminal(), result)
    sys.exit(code)
