"""`connfix terminate`"""

from __future__ import annotations

import click

from connfix.cli import envelope
from connfix.cli.envelope import json_option
from connfix.cli.options import (
    DURATION,
    dsn_option,
    incidents_dir_option,
    inventory_option,
    inventory_search,
    optional_environment_argument,
    yes_option,
    zero_setup,
)
from connfix.config.defaults import TERMINATE_MAX, TERMINATE_MAX_FRACTION
from connfix.config.units import duration_text
from connfix.db.sessions import BY_FLAG
from connfix.engine.run import RunMode

# the flag's spelling (dashes) → the runbook parameter's (underscores)
STATE_FLAGS = {name.replace("_", "-"): name for name in BY_FLAG}


# Over 80 lines: the signature is its 18 options and the docstring is the --help text;
# the body only checks the flags, builds the step's params and runs it.
@click.command()
@optional_environment_argument
@dsn_option
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(list(STATE_FLAGS)),
    help="States to terminate (repeatable; default: idle-in-transaction).",
)
@click.option(
    "--older-than",
    default="5m",
    show_default=True,
    metavar="DURATION",
    type=DURATION,
    help="Only sessions in that state for longer than this (state_change age).",
)
@click.option(
    "--max",
    "max_count",
    type=int,
    default=TERMINATE_MAX,
    show_default=True,
    help="At most this many sessions.",
)
@click.option(
    "--max-fraction",
    type=float,
    default=TERMINATE_MAX_FRACTION,
    show_default=True,
    help="At most this fraction of all client backends.",
)
@click.option(
    "--until-free", type=int, metavar="N", help="Only as many as needed to reach N free slots."
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="Only sessions from this inventory host (repeatable).",
)
@click.option("--only-suspects", is_flag=True, help="Only sessions from leak suspects.")
@click.option(
    "--excess-only", is_flag=True, help="Per host, only the sessions it holds over its pool size."
)
@click.option(
    "--owner",
    type=click.Choice(["any", "service", "unowned"]),
    default="any",
    show_default=True,
    help="Whose sessions: the inventory service's (address, application_name, user), or"
    " those from an inventory host that no service owns (pgbench, psql, a job).",
)
@click.option(
    "--include-active",
    is_flag=True,
    help="Allow terminating sessions running a statement (with --state active).",
)
@click.option(
    "--cancel",
    is_flag=True,
    help="Cancel the running statement (pg_cancel_backend) instead of ending the session:"
    " for active sessions stuck on a long query (--state defaults to active).",
)
@click.option("--dry-run", is_flag=True, help="Show the sessions it would end; change nothing.")
@yes_option
@incidents_dir_option
@json_option
@inventory_option
def terminate(
    environment: str | None,
    dsn: str | None,
    platform: str | None,
    states: tuple[str, ...],
    older_than: float,
    max_count: int,
    max_fraction: float,
    until_free: int | None,
    hosts: tuple[str, ...],
    only_suspects: bool,
    excess_only: bool,
    owner: str,
    include_active: bool,
    cancel: bool,
    dry_run: bool,
    yes: bool,
    incidents_dir: str | None,
    as_json: bool,
    inventory_path: str | None,
) -> None:
    """Terminate idle sessions safely, oldest first.

    Never touches connfix's own sessions, superusers, replication roles, the inventory's
    protected users and applications, sessions it cannot see, or active sessions (unless
    --state active --include-active). Each pid is ended by its own statement that
    re-checks the pid, backend_start, state and state_change it was planned with: a
    session that woke up or a reused pid is skipped. At most --max sessions and at most
    --max-fraction of all client backends (default 0.5) per run. Slots freed are measured
    by a fresh diagnosis. Journaled like a triage.

    --cancel cancels the running statement instead (pg_cancel_backend): the session and
    its pool connection stay, its statement and transaction end — the gentler remedy for
    active sessions stuck on a long query, chosen and re-checked the same way.

    Exit status: 0 done, 1 a session could not be terminated, 2 bad flags or
    inventory, 3 database unreachable.

    \b
    Example:
      connfix terminate prod --state idle-in-transaction --older-than 1m --dry-run
      connfix terminate prod --state idle --older-than 10m --only-suspects --excess-only
      connfix terminate prod --state idle --older-than 10m --owner unowned
      connfix terminate prod --cancel --older-than 5m --dry-run
      connfix terminate --dsn "host=db1 dbname=app user=connfix" --state idle --older-than 30m
    """
    from connfix.cli.options import check_hosts, host_names, run_and_exit
    from connfix.engine.runbook import command_runbook

    bare = zero_setup(environment, dsn, inventory_path, platform)
    if bare is not None:
        needs = [
            flag
            for flag, given in (
                ("--host", bool(hosts)),
                ("--only-suspects", only_suspects),
                ("--excess-only", excess_only),
                ("--owner", owner != "any"),
            )
            if given
        ]
        if needs:
            raise click.UsageError(
                f"{', '.join(needs)} need(s) an inventory (hosts, pools, services); with"
                " --dsn, choose sessions by --state and --older-than"
            )
        environment, env = bare
        inventory = None
    else:
        assert environment is not None
        from connfix.config.inventory_file import resolve_environment  # (yaml)

        inventory, env = resolve_environment(inventory_path, environment, inventory_search())
    if as_json:
        envelope.mark("terminate", environment)
    names = host_names(hosts, "--host")
    check_hosts(names, environment, {h.name for h in env.hosts}, "--host")
    params = {
        "states": [STATE_FLAGS[s] for s in states]
        or (["active"] if cancel else ["idle_in_transaction"]),
        "signal": "cancel" if cancel else "terminate",
        "older_than": duration_text(older_than),
        "max": max_count,
        "max_fraction": max_fraction,
        "until_free": until_free,
        "include_active": include_active,
        "hosts": names,
        "only_suspects": only_suspects,
        "excess_only": excess_only,
        "owner": owner,
    }
    run_and_exit(
        environment,
        inventory,
        env,
        command_runbook("terminate", "terminate", params),
        incidents_dir=incidents_dir,
        dry_run=dry_run,
        yes=yes,
        as_json=as_json,
        command="terminate",
        mode=RunMode.COMMAND,
        host_health=False,  # terminate neither touches nor judges the hosts
    )
