"""The permanent fixes: pool-size arithmetic, and a PgBouncer configuration sized so the
database can never be exhausted through it. Pure functions of the inventory and one
diagnosis; `connfix pool` and the `advise` action show and journal them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from connfix.config import quoting

if TYPE_CHECKING:
    from connfix.config.inventory import Environment, Host
    from connfix.diagnosis.model import Diagnosis

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


def per_server(pool_size: int, overflow: int = 0, workers: int = 1) -> str:
    """A server's pool as the tables say it: `3`, `(3 + 2 overflow)`, `… × 4 workers`."""
    text = f"({pool_size} + {overflow} overflow)" if overflow else str(pool_size)
    return text + (f" × {workers} workers" if workers > 1 else "")


@dataclass(frozen=True)
class PoolSizing:
    """What the fleet may open, against what the database can give."""

    servers: int
    workers: int
    pool_size: int  # per worker, as configured
    fleet_total: int  # the worst case: Σ (pool size + max_overflow) × workers over hosts
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
    platform_reserved_connections: int = 0  # a managed platform's own reserve (RDS, Azure)
    # behind PgBouncer: its server connections now (never "other clients"), the hosts
    # whose apps reach the database through it, and those still direct
    pooler_connections: int = 0
    pooled_hosts: list[str] = field(default_factory=list)
    direct_hosts: list[str] = field(default_factory=list)
    max_overflow: int = 0  # per worker: a burst opens this many beyond the pool

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
            "max_overflow": self.max_overflow,
            "per_server": per_server(self.pool_size, self.max_overflow, self.workers),
            "total": self.fleet_total,
            "available": self.available,
            "safe": self.safe,
        }
        after = {
            "label": "safe",
            "servers": self.servers,
            "pool_size": self.max_safe_pool_size,
            "max_overflow": self.max_overflow,
            "per_server": per_server(self.max_safe_pool_size, self.max_overflow, self.workers),
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
    connfix's own left out. A burst opens a pool's max_overflow o beyond its size s (per
    worker), so s + o is what each worker may hold. During a rolling restart a
    restarting batch holds its pools twice while the old ones drain and the new ones
    connect, so with u = max_unavailable hosts at a time and w workers per server:

        servers × w × (s + o)  +  u × w × (s + o)  ≤  base
            →   s = base // ((servers + u) × w) − o

    The overlap counts at the size being judged: now, the largest host's pool with its
    overflow; at the safe size, that size with its overflow.
    """
    service = env.service
    names = {h.name for h in env.hosts}
    pooled_hosts = sorted(u.host for u in d.by_host if u.pooled and u.host in names)
    direct = [h for h in env.hosts if h.name not in pooled_hosts]
    servers = len(direct)
    workers = service.workers
    overflow = service.max_overflow
    capacities = [h.max_capacity(service) for h in direct]  # pool + overflow, × workers
    other, pooler = _other_demand(env, d)
    at_once = min(service.max_unavailable, servers)
    overlap = at_once * max(capacities, default=0)
    buffer = env.thresholds.buffer
    base = d.usable_connections - buffer - other - pooler
    per_worker = (
        max(0, max(0, base) // ((servers + at_once) * workers) - overflow) if servers else 0
    )
    after_overlap = at_once * (per_worker + overflow) * workers if per_worker else 0
    sizing = PoolSizing(
        servers=servers,
        workers=workers,
        pool_size=service.pool_size,
        fleet_total=sum(capacities),
        max_connections=d.max_connections,
        superuser_reserved_connections=d.superuser_reserved_connections,
        reserved_connections=d.reserved_connections,
        usable_connections=d.usable_connections,
        platform_reserved_connections=d.platform_reserved_connections,
        buffer=buffer,
        other_clients=other,
        restart_overlap=overlap,
        available=base - overlap,
        safe=sum(capacities) <= base - overlap,
        max_safe_pool_size=per_worker,
        after_total=(per_worker + overflow) * servers * workers if per_worker else 0,
        after_restart_overlap=after_overlap,
        after_available=base - after_overlap,
        notes=[],
        pooler_connections=pooler,
        pooled_hosts=pooled_hosts,
        direct_hosts=[h.name for h in direct],
        max_overflow=overflow,
    )
    return replace(sizing, notes=_sizing_notes(env, sizing))


def _other_demand(env: Environment, d: Diagnosis) -> tuple[int, int]:
    """What holds slots besides the fleet's pools, now: other clients (sessions from
    outside the fleet, and the fleet hosts' sessions no service owns; connfix's own left
    out) and PgBouncer's server connections (the pooled apps' demand)."""
    from connfix.diagnosis.model import CONNFIX

    fleet_addresses = {h.client_addr for h in env.hosts if h.client_addr}
    pooler = sum(u.count for u in d.by_host if u.pgbouncer) + sum(u.lent for u in d.by_host)
    other = sum(
        u.count
        for u in d.by_host
        if u.client_addr not in fleet_addresses and u.host != CONNFIX and not u.pgbouncer
    ) + sum(u.unowned for u in d.by_host if u.client_addr in fleet_addresses)
    return other, pooler


def _sizing_notes(env: Environment, s: PoolSizing) -> list[str]:
    """How the safe size was reached, one line per term, and what to know about it."""
    service = env.service
    at_once = min(service.max_unavailable, s.servers)
    overflow, pooler = s.max_overflow, s.pooler_connections
    notes = [
        f"usable {s.usable_connections} = max_connections {s.max_connections}"
        f" − superuser_reserved_connections {s.superuser_reserved_connections}"
        f" − reserved_connections {s.reserved_connections}"
        + (
            f" − the platform's reserve {s.platform_reserved_connections}"
            if s.platform_reserved_connections
            else ""
        ),
        f"minus buffer {s.buffer}, other clients {s.other_clients} (open now, no service's),"
        + (f" PgBouncer's server connections {pooler} (now)," if pooler else "")
        + f" and what a rolling restart holds twice (max_unavailable"
        f" {service.max_unavailable} × one host's pool: its old and new pools overlap):"
        f" {s.restart_overlap} now, {s.after_restart_overlap} at the safe size",
        f"each worker may hold its pool size and max_overflow {overflow} in a burst: the"
        f" worst case, {s.servers} servers × {s.workers} workers × (pool size + {overflow}),"
        " is what must fit"
        if overflow
        else "max_overflow 0: a pool never opens more than its size",
        f"safe size = ({s.usable_connections} − {s.buffer} − {s.other_clients}"
        + (f" − {pooler}" if pooler else "")
        + ") //"
        f" (({s.servers} servers + {at_once} restarting) × {s.workers} workers)"
        + (f" − {overflow} overflow" if overflow else "")
        + f" = {s.max_safe_pool_size}",
    ]
    if s.max_safe_pool_size == 0 and s.servers:
        notes.append(
            f"{s.servers} servers × {s.workers} workers cannot each get even one"
            " connection: put PgBouncer in front of the database"
        )
    if any(h.pool_size for h in env.hosts):
        notes.append("some hosts set their own pool_size; the safe size applies to every host")
    if s.pooled_hosts:
        notes.append(
            f"behind PgBouncer: {', '.join(s.pooled_hosts)}; still direct:"
            f" {', '.join(s.direct_hosts) or 'none'} (this sizing is of the direct"
            " hosts' pools; PgBouncer's is in its config)"
        )
    return notes


@dataclass(frozen=True)
class Setting:
    """One pgbouncer.ini setting connfix chose, and why."""

    key: str
    value: str
    reason: str
    since: tuple[int, ...] = ()  # the PgBouncer version that has it; () = every one


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
    settings: list[Setting] = field(default_factory=list)
    auth: str = "auth_query"
    auth_sql: str = ""  # the SQL that creates the auth_query role and function
    pooled_hosts: list[str] = field(default_factory=list)
    direct_hosts: list[str] = field(default_factory=list)
    direct_capacity: int = 0  # what the direct hosts may open, restart overlap included
    pgbouncers: int = 1  # PgBouncers sharing the database (each gets its share)
    safe: bool = True
    version: str = ""


AUTH_ROLE = "pgbouncer_auth"
AUTH_SCHEMA = "pgbouncer"
LATEST_KNOWN = (1, 25)  # a PgBouncer version connfix has checked its settings against


def auth_query_sql(roles: list[str]) -> str:
    """The SQL (run as a superuser, in every database PgBouncer serves) for auth_query:
    a role that may log in and do one thing, call a SECURITY DEFINER function returning
    the verifier of one login role that is not a superuser and whose password has not
    expired (VALID UNTIL, CVE-2025-2291)."""
    return f"""\
-- PgBouncer's auth_query, generated by connfix pool. Run as a superuser in each database
-- PgBouncer serves. Then set the role's password (\\password {AUTH_ROLE}) and put it
-- in userlist.txt, in plain text: PgBouncer logs in as {AUTH_ROLE} itself to run the
-- lookup, and a SCRAM verifier cannot log in. It is the only secret PgBouncer keeps, of
-- a role that can do one thing; allow it in pg_hba.conf from the PgBouncer hosts only.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{AUTH_ROLE}') THEN
    CREATE ROLE {AUTH_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
  END IF;
END
$$;
CREATE SCHEMA IF NOT EXISTS {AUTH_SCHEMA};
REVOKE ALL ON SCHEMA {AUTH_SCHEMA} FROM PUBLIC;
CREATE OR REPLACE FUNCTION {AUTH_SCHEMA}.get_auth(p_usename text)
RETURNS TABLE (usename name, passwd text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
  SELECT rolname,
         CASE WHEN rolvaliduntil IS NULL OR rolvaliduntil > now() THEN rolpassword END
  FROM pg_catalog.pg_authid
  WHERE rolname = p_usename AND rolcanlogin AND NOT rolsuper AND NOT rolreplication
$fn$;
REVOKE ALL ON FUNCTION {AUTH_SCHEMA}.get_auth(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA {AUTH_SCHEMA} TO {AUTH_ROLE};
GRANT EXECUTE ON FUNCTION {AUTH_SCHEMA}.get_auth(text) TO {AUTH_ROLE};
-- roles the apps log in as, through PgBouncer: {
        quoting.comment(", ".join(quoting.sql_ident(r) for r in roles)) or "(none seen)"
    }
"""


@dataclass(frozen=True)
class _Budget:
    """The numbers a PgBouncer config is written from (pgbouncer_plan's first stage)."""

    pooled: list[Host]
    direct: list[Host]
    direct_capacity: int  # the direct hosts' pools with max_overflow, a batch twice
    count: int  # PgBouncers sharing the database
    cap: int  # max_db_connections of each
    safe: bool  # every PgBouncer gets at least one connection
    reserve: int
    default_pool: int
    clients: int  # what the pooled hosts' pools may open
    max_client: int

    @property
    def migration(self) -> bool:
        """Tell whether some hosts still connect directly."""
        return bool(self.direct)

    @property
    def who(self) -> str:
        """The direct hosts, for a comment."""
        return ", ".join(h.name for h in self.direct)


def _budget(
    env: Environment, d: Diagnosis, sizing: PoolSizing, roles: list[str], direct: list[str] | None
) -> _Budget:
    """Split the hosts into pooled and direct, and share the usable slots: what the direct
    hosts may open (a restarting batch's pools twice) comes off first, then the buffer
    and other clients; each PgBouncer gets an equal cap of the rest."""
    service = env.service
    direct_names = set(direct or []) | (set(sizing.direct_hosts) if sizing.pooled_hosts else set())
    direct_hosts = [h for h in env.hosts if h.name in direct_names]
    pooled = [h for h in env.hosts if h.name not in direct_names]
    caps = [sum(h.max_capacity(s) for s in env.services_on(h)) for h in direct_hosts]
    at_once = min(service.max_unavailable, len(direct_hosts))
    direct_capacity = sum(caps) + at_once * max(caps, default=0)
    count = max(1, len(env.pgbouncers))
    spare = d.usable_connections - sizing.buffer - sizing.other_clients - direct_capacity
    cap = max(1, spare // count)
    reserve = min(5, max(0, cap // 10))
    clients = sum(h.max_capacity(s) for h in pooled for s in env.services_on(h))
    return _Budget(
        pooled=pooled,
        direct=direct_hosts,
        direct_capacity=direct_capacity,
        count=count,
        cap=cap,
        safe=spare >= count,
        reserve=reserve,
        default_pool=max(1, (cap - reserve) // max(1, len(roles))),
        clients=clients,
        max_client=max(MIN_CLIENT_CONN, clients * 4),
    )


def _settings(
    env: Environment, d: Diagnosis, sizing: PoolSizing, b: _Budget, users: int
) -> list[Setting]:
    """Every setting connfix writes, each with the reason shown above it in the file."""
    iit = round(env.thresholds.idle_in_transaction_suspect_age)
    return [
        Setting(
            "max_db_connections",
            str(b.cap),
            f"usable {d.usable_connections} − buffer {sizing.buffer} − other clients"
            f" {sizing.other_clients}"
            + (f" − the direct hosts' {b.direct_capacity} ({b.who})" if b.migration else "")
            + (f", shared by {b.count} PgBouncers" if b.count > 1 else "")
            + ": the database cannot be exhausted through PgBouncer",
        ),
        Setting(
            "default_pool_size",
            str(b.default_pool),
            f"per (user, database) pair: the cap less the reserve, shared by {users} role(s)",
        ),
        Setting("reserve_pool_size", str(b.reserve), "a few more for a burst, within the cap"),
        Setting("reserve_pool_timeout", "3", "a client waits 3 s before the reserve opens"),
        Setting(
            "max_client_conn",
            str(b.max_client),
            f"the pooled hosts' pools may open {b.clients}; four times that, at least"
            f" {MIN_CLIENT_CONN} (a client costs PgBouncer a file descriptor, no more)",
        ),
        Setting(
            "max_user_connections",
            str(b.default_pool + b.reserve),
            "one role's server connections across databases: no role can take them all",
        ),
        Setting(
            "server_idle_timeout",
            "10" if b.migration else "60",
            "server connections left idle after a burst go back to the database within"
            " 10 s: the hosts still connecting directly may need those slots (PgBouncer's"
            " default keeps them 600 s)"
            if b.migration
            else "idle server connections are closed after a minute (default 600 s)",
        ),
        Setting(
            "idle_transaction_timeout",
            str(max(1, iit)),
            "a client idle in a transaction pins a server connection; PgBouncer closes it"
            f" after {iit} s, connfix's idle-in-transaction suspect age",
        ),
        Setting(
            "query_wait_timeout",
            "30",
            "a client waits at most 30 s for a server connection, then gets an error"
            " instead of piling up behind a leak (default 120 s)",
        ),
        Setting(
            "max_user_client_connections",
            str(max(1, b.clients * 2)),
            "client connections per role: twice what the pooled hosts' pools may open,"
            " so one leaking host cannot take every client slot",
            since=(1, 24),
        ),
    ]


def _setting_lines(settings: list[Setting], known: tuple[int, ...]) -> list[str]:
    """Each setting under its reason; one the PgBouncer is too old for, commented out."""
    lines = []
    for item in settings:
        lines.append(f"; {item.reason}")
        if item.since and known < item.since:
            need = ".".join(map(str, item.since))
            lines.append(f"; (PgBouncer {need} and later; this one is older)")
            lines.append(f"; {item.key} = {item.value}")
        else:
            lines.append(f"{item.key} = {item.value}")
    return lines


@dataclass(frozen=True)
class _Where:
    """Where the PgBouncer listens and what it serves (pgbouncer_plan's arguments)."""

    db_host: str
    db_port: int
    dbname: str
    directory: str  # already quoted for the ini
    listen_addr: str
    listen_port: int
    admin_users: list[str]
    auth: str


def _ini(
    env: Environment, d: Diagnosis, sizing: PoolSizing, b: _Budget, w: _Where, lines: list[str]
) -> str:
    """pgbouncer.ini: the header saying where the numbers come from, [databases],
    [pgbouncer] with the way in and auth, then the settings with their reasons."""
    caveats = "\n".join(f";   - {feature}" for feature in SESSION_FEATURES)
    if w.auth == "auth_query":
        auth_lines = (
            f"auth_type = scram-sha-256\nauth_file = {w.directory}/userlist.txt\n"
            f"auth_user = {AUTH_ROLE}\n"
            f"auth_query = SELECT usename, passwd FROM {AUTH_SCHEMA}.get_auth($1)"
        )
    else:
        auth_lines = f"auth_type = scram-sha-256\nauth_file = {w.directory}/userlist.txt"
    verdict = (
        ""
        if b.safe
        else (
            ";; NOT SAFE: the hosts still connecting directly can take every slot by themselves;\n"
            ";; move more of them behind PgBouncer or lower their pool size first.\n"
        )
    )
    return (
        f"""\
;; PgBouncer for environment {quoting.comment(env_name(env))}, generated by connfix pool.
;; The database can give {d.usable_connections} connections to ordinary roles; keeping
;; {sizing.buffer} spare, leaving {sizing.other_clients} for other clients{
            f" and {b.direct_capacity} for the hosts still direct ({quoting.comment(b.who)})"
            if b.migration
            else ""
        },
;; each of {b.count} PgBouncer(s) may open at most max_db_connections = {b.cap} server
;; connections, whatever the apps do.
{verdict};;
;; pool_mode = transaction: a server connection is lent per transaction. Applications
;; must not rely on session state across transactions:
{caveats}
;; Use pool_mode = session for an application that needs them.

[databases]
{quoting.ini_key(w.dbname, "database")} = host={
            quoting.connstr_value(w.db_host, "database host")
        } port={w.db_port} dbname={quoting.connstr_value(w.dbname, "database")}

[pgbouncer]
listen_addr = {quoting.ini_value(w.listen_addr, "--listen-addr")}
listen_port = {w.listen_port}
unix_socket_dir = {w.directory}
pidfile = {w.directory}/pgbouncer.pid
logfile = {w.directory}/pgbouncer.log
{auth_lines}
admin_users = {quoting.ini_list(w.admin_users, "admin role")}
stats_users = {quoting.ini_list(w.admin_users, "admin role")}
pool_mode = transaction
ignore_startup_parameters = extra_float_digits,options

"""
        + "\n".join(lines)
        + "\n"
    )


def _userlist(roles: list[str], admin_users: list[str], auth: str) -> str:
    """userlist.txt with placeholders: connfix never writes a secret."""
    listed = [] if auth == "auth_query" else sorted(set(roles))
    return (
        ';; One line per role: "name" "SCRAM-SHA-256$<iterations>:<salt>$<key>:<key>".\n'
        + (
            f";; auth_query: every app role's verifier is looked up in the database (see\n"
            f";; auth_query.sql); {AUTH_ROLE} logs in with its password, in plain text here.\n"
            f'"{AUTH_ROLE}" "<its password: PgBouncer logs in with it to run the lookup>"\n'
            if auth == "auth_query"
            else ""
        )
        + ";; Copy each secret from the database, as a superuser:\n"
        ";;   SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN (...);\n"
        ";; connfix never writes secrets: fill in the placeholders, keep this file 0600.\n"
        + "".join(
            f'{quoting.userlist_name(role)} "SCRAM-SHA-256$<fill in from pg_authid>"\n'
            for role in sorted(set(listed) | set(admin_users))
        )
    )


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
    direct: list[str] | None = None,
    version: tuple[int, ...] = (),
    auth: str = "auth_query",
) -> PgBouncerPlan:
    """Size and write pgbouncer.ini, the userlist, and the auth_query SQL.

    max_db_connections caps the server connections each PgBouncer may open, so that
    every PgBouncer's cap, plus what the hosts still connecting directly may open (their
    pools with max_overflow, and a restarting batch's pools twice), plus other clients
    and the buffer, fit in the usable slots: the database cannot be exhausted through
    the poolers, and a direct host can always start. Hosts behind PgBouncer keep its
    server connections while they restart: no overlap for them.
    """
    b = _budget(env, d, sizing, roles, direct)
    settings = _settings(env, d, sizing, b, max(1, len(roles)))
    known = version or (1, 18)  # unknown: what Debian 12 ships, the oldest in use here
    where = _Where(
        db_host,
        db_port,
        dbname,
        quoting.ini_value(directory, "--pgbouncer-config directory"),
        listen_addr,
        listen_port,
        admin_users,
        auth,
    )
    ini = _ini(env, d, sizing, b, where, _setting_lines(settings, known))
    user = quote(roles[0], safe="") if roles else "<user>"
    url = f"postgresql://{user}@<pgbouncer host>:{listen_port}/{quote(dbname, safe='')}"
    return PgBouncerPlan(
        b.cap,
        b.default_pool,
        b.reserve,
        b.max_client,
        "transaction",
        ini,
        _userlist(roles, admin_users, auth),
        url,
        settings=settings,
        auth=auth,
        auth_sql=auth_query_sql(sorted(set(roles))) if auth == "auth_query" else "",
        pooled_hosts=[h.name for h in b.pooled],
        direct_hosts=[h.name for h in b.direct],
        direct_capacity=b.direct_capacity,
        pgbouncers=b.count,
        safe=b.safe,
        version=".".join(map(str, version)) if version else "",
    )


def env_name(env: Environment) -> str:
    """Return a short label for comments."""
    return env.description or "(see the inventory)"


def pgbouncer_version_of(text: str | None) -> tuple[int, ...]:
    """--pgbouncer-version as a version tuple; () when not given; an input error when
    it is not a version."""
    from connfix import InputError
    from connfix.db.pgbouncer_console import parse_version

    if text is None:
        return ()
    version = parse_version(text)
    if not version:
        raise InputError(f"--pgbouncer-version {text!r}: not a version (1.18)")
    return version


def live_version(d: Diagnosis) -> tuple[int, ...]:
    """The oldest version among the environment's live PgBouncers; () when none answered."""
    from connfix.db.pgbouncer_console import parse_version

    live = [parse_version(b.get("version", "")) for b in d.pgbouncers if "error" not in b]
    return min((v for v in live if v), default=())


# Over 80 lines: the plan, then every file checked before any is written (an existing
# one refused without --force), then each written 0600; then what `pool` reports of it.
def write_pgbouncer_config(
    env: Environment,
    d: Diagnosis,
    sizing: PoolSizing,
    directory: Path,
    *,
    listen_addr: str,
    listen_port: int,
    direct: list[str],
    version: tuple[int, ...],
    auth: str,
    force: bool,
    flag: str,
) -> tuple[PgBouncerPlan, dict[str, Any]]:
    """Plan the PgBouncer configuration for this environment and write its files into
    `directory` (mode 0600, never over an existing one without `force`: every file is
    checked before any is written); return the plan and what `connfix pool` reports of
    it. `flag` is how the directory was given, for errors."""
    import os

    from connfix import InputError
    from connfix.config import files
    from connfix.config.dsn import parse_dsn

    parts = parse_dsn(env.database.dsn)
    roles = sorted(r for r in d.by_user if r and r != d.connected_as)
    plan = pgbouncer_plan(
        env,
        d,
        sizing,
        db_host=parts.get("host") or parts.get("hostaddr") or "localhost",
        db_port=int(parts.get("port", "5432")),
        dbname=parts.get("dbname", d.connected_as),
        roles=roles or ["app"],
        admin_users=[d.connected_as],
        directory=str(directory),
        listen_addr=listen_addr,
        listen_port=listen_port,
        direct=direct,
        version=version,
        auth=auth,
    )
    written = {"pgbouncer.ini": plan.ini, "userlist.txt": plan.userlist}
    if plan.auth_sql:
        written["auth_query.sql"] = plan.auth_sql
    try:
        files.make_dir(directory)
        for name in written:  # refuse before writing any
            if not force and os.path.lexists(directory / name):
                raise files.FileRefused(f"{name} already exists (--force to overwrite it)")
        for name, text in written.items():
            files.write_private(directory / name, text)
    except OSError as exc:
        raise InputError(f"--pgbouncer-config {flag}: {exc.strerror or exc}") from None
    report = {
        "directory": str(directory),
        "max_db_connections": plan.max_db_connections,
        "default_pool_size": plan.default_pool_size,
        "reserve_pool_size": plan.reserve_pool_size,
        "max_client_conn": plan.max_client_conn,
        "pool_mode": plan.pool_mode,
        "database_url": plan.database_url,
        "files": sorted(written),
        "auth": plan.auth,
        "version": plan.version,
        "pgbouncers": plan.pgbouncers,
        "pooled_hosts": plan.pooled_hosts,
        "direct_hosts": plan.direct_hosts,
        "direct_capacity": plan.direct_capacity,
        "safe": plan.safe,
        "settings": [
            {
                "key": x.key,
                "value": x.value,
                "reason": x.reason,
                "since": ".".join(map(str, x.since)),
                "written": not (x.since and version and version < x.since)
                and not (x.since and not version),
            }
            for x in plan.settings
        ],
    }
    return plan, report


@dataclass(frozen=True)
class NodeSizing:
    """One database node's sizing, of the hosts whose pools connect to it."""

    node: str
    role: str  # primary or standby
    max_connections: int
    hosts: list[str]
    sizing: PoolSizing


@dataclass(frozen=True)
class PoolAdvice:
    """What `connfix pool` answers: the sizing, and the PgBouncer config when asked; for
    several database nodes, each node's sizing and what to know of the cluster."""

    environment: str
    sizing: PoolSizing
    plan: PgBouncerPlan | None = None
    written: dict[str, Any] | None = None  # the files written, the URL, the settings
    nodes: list[NodeSizing] = field(default_factory=list)
    cluster_notes: list[str] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        """Tell whether the pool sizes (every node's, and the PgBouncer cap, if planned)
        are safe."""
        if self.nodes:
            return all(n.sizing.safe for n in self.nodes)
        return self.sizing.safe and (self.plan is None or self.plan.safe)

    def to_json(self) -> dict[str, object]:
        """The `--json` result."""
        result: dict[str, object] = {
            "environment": self.environment,
            "sizing": self.sizing.to_json(),
        }
        if self.written is not None:
            result["pgbouncer"] = self.written
        if self.nodes:
            result["nodes"] = [
                {
                    "node": n.node,
                    "role": n.role,
                    "max_connections": n.max_connections,
                    "hosts": n.hosts,
                    "sizing": n.sizing.to_json(),
                }
                for n in self.nodes
            ]
            result["cluster_notes"] = self.cluster_notes
        return result


def cluster_notes(nodes: list[tuple[str, str, int]]) -> list[str]:
    """What to know of pools on a primary with hot standbys, from each node's (name, role,
    max_connections): a standby below the primary is flagged, and raising the limit goes
    standbys first."""
    primary = next(((n, m) for n, r, m in nodes if r == "primary"), None)
    standbys = [(n, m) for n, r, m in nodes if r == "standby"]
    notes = []
    if primary is not None:
        for name, value in standbys:
            if value < primary[1]:
                notes.append(
                    f"standby {name} has max_connections {value}, below the primary's"
                    f" {primary[1]}: PostgreSQL stops replaying (and refuses to start) a hot"
                    " standby whose max_connections is below the primary's; raise it first"
                )
    if standbys:
        names = ", ".join(n for n, _ in standbys)
        notes.append(
            f"to raise max_connections, raise it on the standbys ({names}) first and restart"
            " them, then the primary: a standby below the primary cannot replay its WAL."
            " Under Patroni it is one cluster-wide setting (patronictl edit-config -p"
            " max_connections=N, then patronictl restart, which restarts the replicas"
            " before the leader)"
        )
    notes.append(
        "the HA agent's sessions (Patroni) are counted as other clients on each node and"
        " kept room for; replication uses max_wal_senders, not these slots"
    )
    return notes


def _advise_nodes(environment: str, env: Environment) -> PoolAdvice:
    """Each node sized for the hosts whose pools connect to it (seen there now; a host
    seen nowhere counts on the primary), its HA agent among the other clients."""
    from connfix import DatabaseUnavailable
    from connfix.diagnosis.cluster import diagnose_all

    found = diagnose_all(environment, env)
    if found.unreachable:
        why = "; ".join(f"{n}: {w}" for n, w in found.unreachable.items())
        raise DatabaseUnavailable(f"cannot size the pools of every node ({why})")
    seen: dict[str, set[str]] = {
        d.node or "?": {u.host for u in d.by_host if u.owned} for d in found.nodes
    }
    anywhere = set().union(*seen.values()) if seen else set()
    primary = next((d for d in found.nodes if d.role == "primary"), found.nodes[0])
    sized = []
    for d in sorted(found.nodes, key=lambda d: d.role != "standby"):  # standbys first
        names = seen[d.node or "?"] | (
            {h.name for h in env.hosts} - anywhere if d is primary else set()
        )
        hosts = [h for h in env.hosts if h.name in names]
        node_env = env.replace(hosts=hosts)
        sized.append(
            NodeSizing(
                d.node or "?", d.role, d.max_connections, [h.name for h in hosts],
                size_pools(node_env, d),
            )
        )  # fmt: skip
    notes = cluster_notes([(n.node, n.role, n.max_connections) for n in sized])
    return PoolAdvice(environment, sized[-1].sizing, nodes=sized, cluster_notes=notes)


def advise(
    environment: str,
    env: Environment,
    *,
    config_dir: str | None = None,
    listen_addr: str = "*",
    listen_port: int = PGBOUNCER_PORT,
    direct: list[str] | None = None,
    pgbouncer_version: str | None = None,
    auth: str = "auth_query",
    force: bool = False,
) -> PoolAdvice:
    """Diagnose the live server, size the pools, and with `config_dir` write the PgBouncer
    config for the given (or the live PgBouncer's) version. Bad input (a --direct host
    the environment lacks, a version that is not one) is refused before the database is
    read."""
    import os

    from connfix import InputError
    from connfix.diagnosis.analysis import diagnose

    if env.database.several and config_dir:
        raise InputError(
            f"environment {environment} has several database nodes: --pgbouncer-config"
            " writes one PgBouncer's config for one server, not yet for a cluster"
        )
    unknown = sorted(set(direct or []) - {h.name for h in env.hosts})
    if unknown:
        raise InputError(f"--direct: no host {', '.join(unknown)} in environment {environment}")
    version = pgbouncer_version_of(pgbouncer_version)
    if env.database.several:
        return _advise_nodes(environment, env)
    d = diagnose(environment, env)
    version = version or live_version(d)
    sizing = size_pools(env, d)
    if not config_dir:
        return PoolAdvice(environment, sizing)
    plan, written = write_pgbouncer_config(
        env,
        d,
        sizing,
        Path(os.path.expanduser(config_dir)).resolve(),
        listen_addr=listen_addr,
        listen_port=listen_port,
        direct=list(direct or []),
        version=version,
        auth=auth,
        force=force,
        flag=config_dir,
    )
    return PoolAdvice(environment, sizing, plan, written)
