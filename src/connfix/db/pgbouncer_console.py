"""PgBouncer: reading its admin console (SHOW POOLS / SERVERS / CLIENTS / VERSION) and
the few admin commands connfix sends (KILL_CLIENT, RECONNECT, PAUSE, RESUME).

The admin console speaks the simple query protocol only, so every statement goes
through a ClientCursor. Behind a pooler the database sees PgBouncer's address, not the
app hosts': the clients' own addresses are in SHOW CLIENTS, and a client lent a server
connection names it (`link` = the server's `ptr`), whose `remote_pid` is the backend in
pg_stat_activity. That join is how connfix attributes sessions through the pooler.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

from connfix import ConnfixError, DatabaseUnavailable
from connfix.config.dsn import describe_dsn

if TYPE_CHECKING:
    from connfix.config.inventory import PgBouncerAccess

KILL_CLIENT_SINCE = (1, 24)  # KILL_CLIENT came with PgBouncer 1.24.0 (#1147)


@dataclass(frozen=True)
class BouncerPool:
    """One PgBouncer pool (SHOW POOLS)."""

    database: str
    user: str
    cl_active: int
    cl_waiting: int
    sv_active: int
    sv_idle: int
    sv_used: int
    maxwait: float  # seconds
    pool_mode: str


@dataclass(frozen=True)
class BouncerServer:
    """One PgBouncer server connection (SHOW SERVERS)."""

    database: str
    user: str
    state: str
    remote_pid: int  # the backend's pid in pg_stat_activity
    ptr: str = ""
    link: str = ""  # the client it is lent to, if any


@dataclass(frozen=True)
class BouncerClient:
    """One client connection to PgBouncer (SHOW CLIENTS)."""

    database: str
    user: str
    state: str  # active, waiting, … (PgBouncer's words)
    addr: str | None  # the client's address; None for a Unix socket
    port: int
    application_name: str
    connect_time: float | None  # epoch seconds
    request_time: float | None  # epoch seconds: its last request
    ptr: str
    link: str  # the server connection lent to it, if any
    id: int | None = None  # KILL_CLIENT's argument (PgBouncer ≥ 1.24)

    @property
    def idle_in_pool(self) -> bool:
        """Logged in, holding no server connection and waiting for none: idle in the
        pooler. PgBouncer up to 1.24 lists such a client as `active` (it is on the
        pool's active client list); 1.25.0 (#1191) and later say `idle`."""
        return not self.link and self.state in ("active", "idle")

    def idle_seconds(self, now: float) -> float | None:
        """Seconds since its last request."""
        return None if self.request_time is None else max(0.0, now - self.request_time)


@dataclass
class BouncerState:
    """What one PgBouncer said, or why it could not be read."""

    name: str
    where: str  # user@host:port/dbname of its admin console, nothing secret
    version: str = ""
    pools: list[BouncerPool] = field(default_factory=list)
    servers: list[BouncerServer] = field(default_factory=list)
    clients: list[BouncerClient] = field(default_factory=list)
    error: str | None = None
    read_at: float = 0.0  # epoch seconds

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return parse_version(self.version)

    @property
    def has_kill_client(self) -> bool:
        return self.version_tuple >= KILL_CLIENT_SINCE

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_version(text: str) -> tuple[int, ...]:
    """`PgBouncer 1.18.0` (SHOW VERSION) → (1, 18, 0); () when there is none."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return ()
    return tuple(int(g) for g in match.groups() if g is not None)


def _epoch(value: object) -> float | None:
    """PgBouncer's timestamps, `2026-11-25 21:57:42 UTC` (its local time and zone)."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    try:
        stamp = datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    zone = text[19:].strip()
    if zone in ("UTC", "GMT", "Z", "+00", "+0000"):
        return stamp.replace(tzinfo=UTC).timestamp()
    return time.mktime(stamp.timetuple())  # the zone connfix runs in


def _int(value: object) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


def connect(dsn: str, password: str | None, connect_timeout: float) -> psycopg.Connection[Any]:
    """Open PgBouncer's admin console."""
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(1, round(connect_timeout)),
        "cursor_factory": psycopg.ClientCursor,
    }
    if password is not None:
        kwargs["password"] = password
    return psycopg.connect(dsn, **kwargs)


def _rows(conn: psycopg.Connection[Any], command: str) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(command)
        return list(cur.fetchall())


def state_of(conn: psycopg.Connection[Any], name: str, where: str) -> BouncerState:
    """Read pools, servers, clients and the version from an open admin console."""
    state = BouncerState(name=name, where=where, read_at=time.time())
    version = _rows(conn, "SHOW VERSION")
    state.version = str(next(iter(version[0].values()))) if version else ""
    state.pools = [
        BouncerPool(
            database=str(r["database"]),
            user=str(r["user"]),
            cl_active=_int(r["cl_active"]),
            cl_waiting=_int(r["cl_waiting"]),
            sv_active=_int(r["sv_active"]),
            sv_idle=_int(r["sv_idle"]),
            sv_used=_int(r["sv_used"]),
            maxwait=_int(r["maxwait"]) + _int(r.get("maxwait_us")) / 1e6,
            pool_mode=str(r.get("pool_mode") or ""),
        )
        for r in _rows(conn, "SHOW POOLS")
    ]
    state.servers = [
        BouncerServer(
            database=str(r["database"]),
            user=str(r["user"]),
            state=str(r["state"]),
            remote_pid=_int(r.get("remote_pid")),
            ptr=str(r.get("ptr") or ""),
            link=str(r.get("link") or ""),
        )
        for r in _rows(conn, "SHOW SERVERS")
    ]
    state.clients = [
        BouncerClient(
            database=str(r["database"]),
            user=str(r["user"]),
            state=str(r["state"]),
            addr=None if str(r.get("addr") or "unix") == "unix" else str(r["addr"]),
            port=_int(r.get("port")),
            application_name=str(r.get("application_name") or ""),
            connect_time=_epoch(r.get("connect_time")),
            request_time=_epoch(r.get("request_time")),
            ptr=str(r.get("ptr") or ""),
            link=str(r.get("link") or ""),
            id=_int(r["id"]) if r.get("id") not in (None, "") else None,
        )
        for r in _rows(conn, "SHOW CLIENTS")
        if str(r.get("database")) != "pgbouncer"  # the admin console's own clients
    ]
    return state


@contextlib.contextmanager
def console(access: PgBouncerAccess) -> Iterator[psycopg.Connection[Any]]:
    """The admin console of one PgBouncer of the inventory (its password, if any, from
    the environment variable it names)."""
    from connfix.db import pg

    password = pg.password_from(
        access.admin_password_env, f"pgbouncers[{access.name}].admin_password_env"
    )
    with connect(access.admin_dsn, password, access.connect_timeout) as conn:
        yield conn


def read(access: PgBouncerAccess) -> BouncerState:
    """Read one PgBouncer; a failure is recorded in the state, never raised."""
    from connfix.db import pg

    name, where = access.name, describe_dsn(access.admin_dsn)
    try:
        with console(access) as conn:
            return state_of(conn, name, where)
    except psycopg.Error as exc:
        return BouncerState(
            name, where, error=f"cannot read PgBouncer {name} at {where}: {pg.server_message(exc)}"
        )
    except ConnfixError as exc:
        return BouncerState(name, where, error=f"cannot read PgBouncer {name}: {exc}")


def command(access: PgBouncerAccess, statement: str) -> None:
    """Send one admin command; raise DatabaseUnavailable with PgBouncer's own words."""
    from connfix.db import pg

    try:
        with console(access) as conn:
            conn.execute(statement)
    except psycopg.Error as exc:
        where = describe_dsn(access.admin_dsn)
        raise DatabaseUnavailable(
            f"PgBouncer {access.name} at {where} refused `{statement}`: {pg.server_message(exc)}"
        ) from None


def paused(access: PgBouncerAccess, db: str) -> bool:
    """Tell whether PgBouncer holds this database paused (SHOW DATABASES)."""
    try:
        with console(access) as conn:
            return any(
                str(r.get("name")) == db and _int(r.get("paused")) == 1
                for r in _rows(conn, "SHOW DATABASES")
            )
    except psycopg.Error:
        return True  # unknown: resuming a database that is not paused is harmless
