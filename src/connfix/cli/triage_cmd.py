"""`connfix triage`"""

from __future__ import annotations

import click

from connfix.cli import envelope
from connfix.cli.envelope import json_option
from connfix.cli.options import (
    environment_argument,
    incidents_dir_option,
    inventory_option,
    inventory_search,
    yes_option,
)
from connfix.engine.run import RunMode


@click.command()
@environment_argument
@click.option(
    "--runbook",
    "runbook_ref",
    metavar="NAME|PATH",
    help="Runbook to run (default: too-many-connections).",
)
@click.option(
    "--dry-run", is_flag=True, help="Diagnose for real, print every step's plan, change nothing."
)
@yes_option
@click.option(
    "--resume",
    metavar="INCIDENT",
    help="Continue an interrupted run: hosts its journal shows restarted are skipped.",
)
@incidents_dir_option
@json_option
@inventory_option
def triage(
    environment: str,
    runbook_ref: str | None,
    dry_run: bool,
    yes: bool,
    resume: str | None,
    incidents_dir: str | None,
    as_json: bool,
    inventory_path: str | None,
) -> None:
    """Diagnose ENVIRONMENT, then escalate step by step while it is unhealthy.

    Runs a runbook (default: too-many-connections). Every step first plans what it
    would do from the current state; a step that changes something asks first (or
    proceeds with --yes; without a terminal and without --yes the run stops before it);
    a step the runbook marks `approval: required` waits for `connfix approve` even with
    --yes. Everything is recorded in incidents/<UTC time>-<env>/journal.jsonl. One run per
    environment at a time (a PostgreSQL advisory lock).

    Exit status: 0 healthy at the end, 1 still unhealthy / a step failed / declined /
    rejected or not approved in time / another run holds the environment, 2 bad
    inventory, runbook or flags, 3 database unreachable, 130 interrupted.

    \b
    Example:
      connfix triage prod --dry-run
      connfix triage prod
      connfix triage lab --yes --runbook runbooks/too-many-connections.yaml
      connfix triage prod --resume incidents/20261125T021500Z-prod
    """
    if as_json:
        envelope.mark("triage", environment)
    from connfix.cli.options import run_and_exit
    from connfix.config.inventory_file import resolve_environment
    from connfix.engine.runbook import resolve_runbook

    loaded, env = resolve_environment(inventory_path, environment, inventory_search())
    run_and_exit(
        environment,
        loaded,
        env,
        resolve_runbook(runbook_ref),
        incidents_dir=incidents_dir,
        dry_run=dry_run,
        yes=yes,
        as_json=as_json,
        command="triage",
        mode=RunMode.TRIAGE,
        resume=resume,
    )
