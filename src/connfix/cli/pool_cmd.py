"""`connfix pool`"""

from __future__ import annotations

import sys

import click

from connfix.cli import envelope
from connfix.cli.envelope import json_option
from connfix.cli.options import environment_argument, inventory_option, inventory_search, terminal


@click.command()
@environment_argument
@click.option(
    "--pgbouncer-config",
    "config_dir",
    metavar="DIR",
    help="Write pgbouncer.ini and a userlist.txt template for this environment.",
)
@click.option(
    "--listen-addr",
    default="*",
    show_default=True,
    help="PgBouncer's listen_addr in the generated config.",
)
@click.option(
    "--listen-port",
    default=6432,
    show_default=True,
    help="PgBouncer's listen_port in the generated config.",
)
@click.option(
    "--direct",
    "direct",
    multiple=True,
    metavar="HOST",
    help="A host that keeps connecting to the database directly (a migration in"
    " progress); repeat for each. Hosts seen reaching it directly while a PgBouncer of"
    " the inventory is live count as direct too.",
)
@click.option(
    "--auth",
    type=click.Choice(["auth_query", "userlist"]),
    default="auth_query",
    show_default=True,
    help="auth_query: PgBouncer looks each role's verifier up in the database through a"
    " SECURITY DEFINER function (auth_query.sql creates it); only that lookup role's"
    " secret is copied. userlist: every role's verifier in userlist.txt.",
)
@click.option(
    "--pgbouncer-version",
    metavar="X.Y",
    help="The PgBouncer the config is for; settings it lacks are written commented out."
    "  [default: the version of the environment's live PgBouncer, else 1.18]",
)
@click.option(
    "--force", is_flag=True, help="Overwrite existing files in the --pgbouncer-config directory."
)
@json_option
@inventory_option
def pool(
    environment: str,
    config_dir: str | None,
    listen_addr: str,
    listen_port: int,
    direct: tuple[str, ...],
    auth: str,
    pgbouncer_version: str | None,
    force: bool,
    as_json: bool,
    inventory_path: str | None,
) -> None:
    """Size the application pools and generate a PgBouncer config; read-only on the DB.

    From the inventory (servers, pool size, workers) and the live server (the real
    limit for ordinary roles, other clients' current use), work out what the fleet can
    open, what is left, and the largest safe pool size per server, keeping room for a
    rolling restart (a restarting host's old and new pools overlap). With
    --pgbouncer-config, write a pgbouncer.ini (transaction pooling, max_db_connections
    capped so the database can never be exhausted through it, with each timeout and cap
    explained), the auth_query setup (auth_query.sql) and a userlist.txt template, and
    print the new DATABASE_URL.

    Behind a live PgBouncer (pgbouncers: in the inventory), its server connections are
    counted as its own, not as other clients; during a migration, the hosts still
    connecting directly keep room for their pools, and PgBouncer gets the rest.

    Exit status 0 when the pool sizes are safe, 1 when they are not.

    \b
    Example:
      connfix pool prod
      connfix pool prod --pgbouncer-config ./pgbouncer
      connfix pool prod --pgbouncer-config ./pgbouncer --direct app3 --direct app4
    """
    if as_json:
        envelope.mark("pool", environment)
    from connfix import ExitStatus
    from connfix.cli import render
    from connfix.config.inventory_file import resolve_environment
    from connfix.diagnosis.pool_sizing import advise

    _, env = resolve_environment(inventory_path, environment, inventory_search())
    advice = advise(
        environment,
        env,
        config_dir=config_dir,
        listen_addr=listen_addr,
        listen_port=listen_port,
        direct=list(direct),
        pgbouncer_version=pgbouncer_version,
        auth=auth,
        force=force,
    )
    status = ExitStatus.OK if advice.safe else ExitStatus.UNHEALTHY
    if as_json:
        envelope.emit(
            "pool",
            "ok" if advice.safe else "failed",
            status,
            environment=environment,
            result=advice.to_json(),
        )
    elif advice.nodes:
        render.pool_nodes(terminal(), advice)
    else:
        render.pool(terminal(), advice.sizing, advice.written)
    if not advice.safe:
        sys.exit(status)
