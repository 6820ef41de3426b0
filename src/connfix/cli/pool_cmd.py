"""`connfix pool`"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from connfix.cli.options import inventory_option, terminal


@click.command()
@click.argument("environment")
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
@click.option("--force", is_flag=True, help="Overwrite an existing pgbouncer.ini / userlist.txt.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@inventory_option
def pool(
    environment: str,
    config_dir: str | None,
    listen_addr: str,
    listen_port: int,
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
    capped so the database can never be exhausted through it) and a userlist.txt
    template, and print the new DATABASE_URL.

    Exit status 0 when the pool sizes are safe, 1 when they are not.

    \b
    Example:
      connfix pool prod
      connfix pool prod --pgbouncer-config ./pgbouncer
    """
    from connfix import pg
    from connfix.analysis import diagnose
    from connfix.cli import render
    from connfix.errors import ExitStatus, InputError
    from connfix.inventory_file import InventorySearch, resolve_environment
    from connfix.pool import pgbouncer_plan, size_pools

    _, env = resolve_environment(inventory_path, environment, InventorySearch.from_process())
    d = diagnose(environment, env)
    sizing = size_pools(env, d)
    result: dict[str, object] = {"environment": environment, "sizing": sizing.to_json()}
    if config_dir:
        directory = Path(os.path.expanduser(config_dir)).resolve()
        parts = pg.parse_dsn(env.database.dsn)
        host = parts.get("host") or parts.get("hostaddr") or "localhost"
        roles = sorted(r for r in d.by_user if r and r != d.connected_as)
        plan = pgbouncer_plan(
            env,
            d,
            sizing,
            db_host=host,
            db_port=int(parts.get("port", "5432")),
            dbname=parts.get("dbname", d.connected_as),
            roles=roles or ["app"],
            admin_users=[d.connected_as],
            directory=str(directory),
            listen_addr=listen_addr,
            listen_port=listen_port,
        )
        from connfix import files

        try:
            files.make_dir(directory)
            for name in ("pgbouncer.ini", "userlist.txt"):  # refuse before writing either
                if not force and os.path.lexists(directory / name):
                    raise files.FileRefused(f"{name} already exists (--force to overwrite it)")
            files.write_private(directory / "pgbouncer.ini", plan.ini)
            files.write_private(directory / "userlist.txt", plan.userlist)
        except OSError as exc:
            raise InputError(f"--pgbouncer-config {config_dir}: {exc.strerror or exc}") from None
        result["pgbouncer"] = {
            "directory": str(directory),
            "max_db_connections": plan.max_db_connections,
            "default_pool_size": plan.default_pool_size,
            "reserve_pool_size": plan.reserve_pool_size,
            "max_client_conn": plan.max_client_conn,
            "pool_mode": plan.pool_mode,
            "database_url": plan.database_url,
        }
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        render.pool(terminal(), sizing, result.get("pgbouncer"))  # type: ignore[arg-type]
    if not sizing.safe:
        sys.exit(ExitStatus.UNHEALTHY)
