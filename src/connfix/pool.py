"""The permanent fixes: pool-size arithmetic, and a PgBouncer configuration sized so the
database can never be exhausted through it. Pure functions of the inventory and one
diagnosis; `connfix pool` and the `advise` action show and journal them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connfix.diagnosis import Diagnosis
    from connfix.inventory import Environment

PGBOUNCER_PORT = 6432
MIN_CLIENT_CONN = 500  # clients are cheap for PgBouncer; server connections are not
SESSION_FEATURES = (
    "session-level SET / RESET (use SET LOCAL inside a transaction)",
    "LISTEN / NOTIFY",
    "session advisory locks (pg_advisory_lock; use the _xact_ variants)",
    "temporary tables that outlive a transaction",
    "WITH HOLD cursors",
    "protocol-level prepared statements (PgBouncer < 1.21; from 1.21 set max_prepared_statements)",
)


@dataclass(frozen=True)
class PoolSizing:
    """What the fleet may open, against what the database can give."""

    servers: int
    workers: int
    pool_size: int  # per worker, as configured
    fleet_total: int  # Σ pool size × workers over hosts
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    usable_connections: int
    buffer: int
    other_clients: int  # sessions now open from outside the fleet (cron, monitoring, …)
    restart_overlap: int  # now: a restarting batch's old and new pools overlap
    available: int  # now: usable − buffer − other − restart overlap
    safe: bool
    max_safe_pool_size: int  # per worker; 0 when nothing fits
    after_total: int
    after_restart_overlap: int = 0  # the same overlap, at the safe size
    after_available: int = 0  # usable − buffer − other − that overlap
    notes: list[str] = field(default_factory=list)

    def verdict(self) -> str:
        """Say in one phrase whether the pools fit, and what would."""
        if self.safe:
            return "safe as configured"
        if self.max_safe_pool_size:
            return f"NOT safe: pool size {self.max_safe_pool_size} per server would fit"
        return "NOT safe: nothing fits; use PgBouncer"

    def table(self) -> list[dict[str, Any]]:
        """Return the before → after rows."""
        before = {
            "label": "now",
            "servers": self.servers,
            "pool_size": self.pool_size,
            "total": self.fleet_total,
            "available": self.available,
            "safe": self.safe,
        }
        after = {
            "label": "safe",
            "servers": self.servers,
            "pool_size": self.max_safe_pool_size,
            "total": self.after_total,
            "available": self.after_available,
            "safe": self.after_total <= self.after_available and self.max_safe_pool_size > 0,
        }
        return [before, after]

    def to_json(self) -> dict[str, Any]:
        """Return the machine-readable form."""
        return {**asdict(self), "table": self.table()}


def size_pools(env: Environment, d: Diagnosis) -> PoolSizing:
    """Work out the largest pool size per server that can never exhaust the database.

    The fleet may hold base = usable − buffer − other clients, where usable is
    max_connections − superuser_reserved_connections − reserved_connections and other
    clients are the sessions open now that no service of the fleet owns: from addresses
    outside the fleet, and from fleet hosts but no service's (pgbench, psql, a job);
    connfix's own left out. During a rolling restart a restarting batch holds its pools twice while
    the old ones drain and the new ones connect, so with u = max_unavailable hosts at a
    time, pool size s per worker and w workers per server:

        servers × w × s  +  u × w × s  ≤  base   →   s = base // ((servers + u) × w)

    The overlap counts at the size being judged: now, the largest host's pool; at the
    safe size, that size.
    """
    service = env.service
    servers = len(env.hosts)
    workers = service.workers
    capacities = [h.pool_capacity(service) for h in env.hosts]
    fleet_total = sum(capacities)
    fleet_addresses = {h.client_addr for h in env.hosts if h.client_addr}
    from connfix.diagnosis import CONNFIX

    other = sum(
        u.count for u in d.by_host if u.client_addr not in fleet_addresses and u.host != CONNFIX
    ) + sum(u.unowned for u in d.by_host if u.client_addr in fleet_addresses)
    at_once = min(service.max_unavailable, servers)
    overlap = at_once * max(capacities, default=0)
    buffer = env.thresholds.buffer
    base = d.usable_connections - buffer - other
    available = base - overlap
    per_worker = max(0, base) // ((servers + at_once) * workers) if servers else 0
    after_total = per_worker * servers * workers
    after_overlap = at_once * per_worker * workers
    notes = [
        f"usable {d.usable_connections} = max_connections {d.max_connections}"
        f" − superuser_reserved_connections {d.superuser_reserved_connections}"
        f" − reserved_connections {d.reserved_connections}",
        f"minus buffer {buffer}, other clients {other} (open now, no service's),"
        f" and what a rolling restart holds twice (max_unavailable"
        f" {service.max_unavailable} × one host's pool: its old and new pools overlap):"
        f" {overlap} now, {after_overlap} at the safe size",
        f"safe size = ({d.usable_connections} − {buffer} − {other}) //"
        f" (({servers} servers + {at_once} restarting) × {workers} workers) = {per_worker}",
    ]
    if per_worker == 0:
        notes.append(
            f"{servers} servers × {workers} workers cannot each get even one"
            " connection: put PgBouncer in front of the database"
        )
    if any(h.pool_size for h in env.hosts):
        notes.append("some hosts set their own pool_size; the safe size applies to every host")
    return PoolSizing(
        servers=servers,
        workers=workers,
        pool_size=service.pool_size,
        fleet_total=fleet_total,
        max_connections=d.max_connections,
        superuser_reserved_connections=d.superuser_reserved_connections,
        reserved_connections=d.reserved_connections,
        usable_connections=d.usable_connections,
        buffer=buffer,
        other_clients=other,
        restart_overlap=overlap,
        available=available,
        safe=fleet_total <= available,
        max_safe_pool_size=per_worker,
        after_total=after_total,
        after_restart_overlap=after_overlap,
        after_available=base - after_overlap,
        notes=notes,
    )


@dataclass(frozen=True)
class PgBouncerPlan:
    """A PgBouncer configuration for one environment, and what it means."""

    max_db_connections: int
    default_pool_size: int
    reserve_pool_size: int
    max_client_conn: int
    pool_mode: str
    ini: str
    userlist: str
    database_url: str


def pgbouncer_plan(
    env: Environment,
    d: Diagnosis,
    sizing: PoolSizing,
    *,
    db_host: str,
    db_port: int,
    dbname: str,
    roles: list[str],
    admin_users: list[str],
    directory: str,
    listen_addr: str = "*",
    listen_port: int = PGBOUNCER_PORT,
) -> PgBouncerPlan:
    """Size and write pgbouncer.ini and a userlist template.

    max_db_connections caps every server connection PgBouncer may open to this database
    at what the database can spare (usable − buffer − other clients), so the database
    cannot be exhausted through it. Apps restarting behind PgBouncer keep its server
    connections, so no restart overlap is needed there.
    """
    cap = max(1, d.usable_connections - sizing.buffer - sizing.other_clients)
    users = max(1, len(roles))
    reserve = min(5, max(0, cap // 10))
    default_pool = max(1, (cap - reserve) // users)
    clients = sizing.fleet_total + sizing.restart_overlap
    max_client = max(MIN_CLIENT_CONN, clients * 4)
    caveats = "\n".join(f";   - {feature}" for feature in SESSION_FEATURES)
    ini = f"""\
;; PgBouncer for environment {env_name(env)}, generated by connfix pool.
;; The database can give {d.usable_connections} connections to ordinary roles; keeping
;; {sizing.buffer} spare and leaving {sizing.other_clients} for other clients, PgBouncer
;; may open at most max_db_connections = {cap} server connections, whatever the apps do.
;;
;; pool_mode = transaction: a server connection is lent per transaction. Applications
;; must not rely on session state across transactions:
{caveats}
;; Use pool_mode = session for an application that needs them.

[databases]
{dbname} = host={db_host} port={db_port} dbname={dbname}

[pgbouncer]
listen_addr = {listen_addr}
listen_port = {listen_port}
unix_socket_dir = {directory}
pidfile = {directory}/pgbouncer.pid
logfile = {directory}/pgbouncer.log
auth_type = scram-sha-256
auth_file = {directory}/userlist.txt
admin_users = {", ".join(admin_users)}
stats_users = {", ".join(admin_users)}

pool_mode = transaction
; what the apps open: {sizing.servers} servers × {sizing.pool_size} × {sizing.workers} workers
; = {sizing.fleet_total}, plus {sizing.restart_overlap} while a host restarts; four times
; that, at least {MIN_CLIENT_CONN} (each client costs PgBouncer a file descriptor, no more)
max_client_conn = {max_client}
; per (user, database) pair; {users} role(s) share the cap
default_pool_size = {default_pool}
reserve_pool_size = {reserve}
reserve_pool_timeout = 3
max_db_connections = {cap}
server_idle_timeout = 60
ignore_startup_parameters = extra_float_digits,options
"""
    userlist = (
        ';; One line per role: "name" "SCRAM-SHA-256$<iterations>:<salt>$<key>:<key>".\n'
        ";; Copy each secret from the database, as a superuser:\n"
        ";;   SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN (...);\n"
        ";; connfix never writes secrets: fill in the placeholders, keep this file 0600.\n"
        + "".join(
            f'"{role}" "SCRAM-SHA-256$<fill in from pg_authid>"\n'
            for role in sorted(set(roles) | set(admin_users))
        )
    )
    user = roles[0] if roles else "<user>"
    url = f"postgresql://{user}@<pgbouncer host>:{listen_port}/{dbname}"
    return PgBouncerPlan(cap, default_pool, reserve, max_client, "transaction", ini, userlist, url)


def env_name(env: Environment) -> str:
    """Return a short label for comments."""
    return env.description or "(see the inventory)"
