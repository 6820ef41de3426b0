"""`connfix diagnose`"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from connfix import ExitStatus
from connfix.cli import envelope
from connfix.cli.envelope import json_option
from connfix.cli.options import (
    DURATION,
    dsn_option,
    inventory_option,
    inventory_search,
    optional_environment_argument,
    terminal,
    zero_setup,
)

if TYPE_CHECKING:
    from connfix.config.inventory import Environment
    from connfix.diagnosis.model import Diagnosis


# Over 80 lines: the signature is its options and the docstring is the --help text; the
# body picks the way (inventory, --dsn, --watch) and renders.
@click.command()
@optional_environment_argument
@dsn_option
@click.option(
    "--write-inventory",
    metavar="PATH",
    help="With --dsn: also write a starter inventory from what was seen (never over a file).",
)
@click.option(
    "--watch",
    "watch_every",
    is_flag=False,
    flag_value="2s",
    default=None,
    type=DURATION,
    metavar="[INTERVAL]",
    help="Refresh the picture in place every INTERVAL (default 2s) with each host's trend"
    " since the start; q quits, a / h / s sort the sessions by age, host or state.",
)
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
    environment: str | None,
    dsn: str | None,
    platform: str | None,
    write_inventory: str | None,
    watch_every: float | None,
    as_json: bool,
    textfile: str | None,
    inventory_path: str | None,
) -> None:
    """Show who holds the database's connections; read-only.

    Counts client backends only, against the real limit for ordinary roles
    (max_connections − superuser_reserved_connections − reserved_connections), and
    attributes them to inventory hosts, applications, users and states. A host over its
    pool size, or with sessions idle in transaction for too long, is a leak suspect.
    When the server is full it gets in through the reserved-slot or admin connection
    and says so.

    With no inventory yet (zero-setup): --dsn DSN, or libpq's PG* variables with no
    ENVIRONMENT. Hosts are then client addresses (reverse DNS names where they answer
    quickly), pools unknown: a leak suspect is an address holding a large share of the
    connections with old idle ones, or a transaction left idle too long. The output says
    what an inventory would add; --write-inventory PATH writes a starter one.

    Exit status 0 when severity is ok, 1 for warning or critical (a leak suspect makes it
    at least warning), 3 when the database cannot be reached.

    \b
    Example:
      connfix diagnose prod
      connfix diagnose --dsn "host=db1 dbname=app user=connfix"
      connfix diagnose --dsn "host=prod.abc123.eu-west-1.rds.amazonaws.com user=ops" --platform rds
      PGSERVICE=prod connfix diagnose --write-inventory inventory.yaml
      connfix diagnose lab --json | jq .result.by_host
      connfix diagnose prod --watch 5s
      connfix diagnose prod --prometheus-textfile /var/lib/node_exporter/connfix.prom
    """
    from connfix.diagnosis.analysis import diagnose as run

    bare = zero_setup(environment, dsn, inventory_path, platform)
    if write_inventory is not None and bare is None:
        raise click.UsageError("--write-inventory goes with --dsn (no inventory yet)")
    if bare is not None:
        environment, env = bare
    if as_json:
        envelope.mark("diagnose", environment)
    assert environment is not None
    if watch_every is not None:
        if as_json or textfile or write_inventory:
            raise click.UsageError(
                "--watch is a live view: not with --json, --prometheus-textfile or"
                " --write-inventory"
            )
        if watch_every < 0.2:
            raise click.BadParameter("at least 200ms", param_hint="--watch")
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise click.UsageError("--watch needs a terminal (run it without a pipe)")

    if textfile is not None and not textfile.endswith(".prom"):
        raise click.BadParameter(
            "node_exporter's textfile collector reads *.prom files only",
            param_hint="--prometheus-textfile",
        )
    if bare is None:
        from connfix.config.inventory_file import resolve_environment  # (yaml)

        _, env = resolve_environment(inventory_path, environment, inventory_search())
    if watch_every is not None:
        from connfix.cli.watch import watch

        sys.exit(watch(terminal(), environment, env, watch_every))
    if env.database.several:
        sys.exit(_diagnose_nodes(environment, env, as_json, textfile))
    result = run(environment, env)
    if write_inventory is not None:
        _write_starter(write_inventory, dsn, result)
    if textfile is not None:
        _write_textfile(textfile, [result])
    code = ExitStatus.OK if result.healthy else ExitStatus.UNHEALTHY
    if as_json:
        envelope.emit(
            "diagnose", result.severity, code, environment=environment, result=result.to_json()
        )
    else:
        from connfix.cli import render

        render.diagnosis(terminal(), result)
    sys.exit(code)


def _diagnose_nodes(
    environment: str, env: Environment, as_json: bool, textfile: str | None
) -> ExitStatus:
    """Every node of the environment, each diagnosed on its own; the worst severity
    decides the exit status (3 when no node could be reached). The textfile holds every
    node's metrics, labelled `node`."""
    from connfix.diagnosis.cluster import diagnose_all

    found = diagnose_all(environment, env)
    if textfile is not None:
        _write_textfile(textfile, found.nodes)
    if not found.nodes:
        code = ExitStatus.UNREACHABLE
    else:
        code = ExitStatus.OK if found.severity == "ok" else ExitStatus.UNHEALTHY
    if as_json:
        result = {
            "environment": environment,
            "severity": found.severity,
            "nodes": [d.to_json() for d in found.nodes],
            "unreachable": found.unreachable,
            "topology": {"source": found.topology.source, "notes": found.topology.notes},
        }
        envelope.emit("diagnose", found.severity, code, environment=environment, result=result)
    else:
        from connfix.cli import render

        render.nodes(terminal(), environment, found)
    return code


def _write_textfile(textfile: str, diagnoses: list[Diagnosis]) -> None:
    """Write node_exporter's textfile (atomically)."""
    from pathlib import Path

    from connfix import InputError
    from connfix.record import metrics

    try:
        metrics.write_textfile(Path(textfile).expanduser(), diagnoses)
    except OSError as exc:
        raise InputError(f"--prometheus-textfile {textfile}: {exc.strerror or exc}") from None


def _write_starter(path_text: str, dsn: str | None, result: Diagnosis) -> None:
    """Write the starter inventory; never over an existing file."""
    from pathlib import Path

    from connfix import InputError
    from connfix.config import files
    from connfix.config.dsn import parse_dsn
    from connfix.diagnosis import zero_setup

    path = Path(path_text).expanduser()
    if path.exists() or path.is_symlink():
        raise InputError(f"--write-inventory {path_text}: exists; connfix never overwrites it")
    name = parse_dsn(dsn or "").get("dbname") or os.environ.get("PGDATABASE") or "main"
    name = name if _valid(name) else "main"
    names = zero_setup.resolve(sorted({u.client_addr for u in result.by_host if u.client_addr}))
    text = zero_setup.starter_inventory(result, dsn, names, name)
    try:
        files.write_private(path, text)
    except OSError as exc:
        raise InputError(f"--write-inventory {path_text}: {exc.strerror or exc}") from None
    terminal().err.print(f"starter inventory written to {path} (environment {name!r})")


def _valid(name: str) -> bool:
    from connfix.config.inventory import NAME_RE

    return bool(NAME_RE.match(name))
