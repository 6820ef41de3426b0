"""PostgreSQL through psycopg 3: sessions, the ways in when full, set-based terminate;
SQL lives in queries/*.sql. Only connfix.db connects (this module, and PgBouncer's console
in pgbouncer_console, which uses this module's passwords and messages).
A connection string is parsed and written by connfix.config.dsn (no connection)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.rows import class_row

from connfix import ConnectionLost, DatabaseUnavailable, InputError, UnsupportedServer
from connfix.config.dsn import describe_dsn, parse_dsn

if TYPE_CHECKING:
    from connfix.config.inventory import Database, WayIn

APPLICATION_NAME = "connfix"
T = TypeVar("T")

# Prefixes of the server's refusal messages (see POSTGRES.md); the text follows lc_messages,
# so the raw message is always shown as well.
_REFUSALS: tuple[tuple[str, str], ...] = (
    ("sorry, too many clients already", "too_many_clients"),
    ("remaining connection slots are reserved", "reserved_slots"),
    ("too many connections for role", "role_limit"),
    ("too many connections for database", "database_limit"),
    ("too many connections for user", "role_limit"),
    ("rds_reserved", "reserved_slots"),
)

REFUSAL_TEXT = {
    "too_many_clients": "the server has no connection slots left (too many clients)",
    "reserved_slots": "only reserved connection slots are left",
    "role_limit": "the role reached its CONNECTION LIMIT",
    "database_limit": "the database reached its CONNECTION LIMIT",
}


def classify_refusal(message: str) -> str | None:
    """Return the kind of connection refusal a server message means, or None."""
    lowered = message.lower()
    for needle, kind in _REFUSALS:
        if needle in lowered:
            return kind
    return None


def one_line(text: str) -> str:
    """libpq's multi-line messages on one line, each line a sentence: `Connection
    refused\n\tIs the server running…` → `Connection refused. Is the server running…`."""
    parts = [" ".join(line.split()) for line in text.splitlines()]
    parts = [p for p in parts if p]
    joined = ""
    for part in parts:
        if joined:
            joined += " " if joined[-1] in ".:;!?," else ". "
        joined += part
    return joined


def server_message(exc: BaseException) -> str:
    """Return the server's own words from a connection error, one line."""
    text = one_line(str(exc))
    match = re.search(r"FATAL:\s*(.*)", text)
    return match.group(1) if match else text


MIN_SERVER_VERSION = 120000


def pick_variant(files: list[str], name: str, server_version_num: int | None) -> str:
    """Choose the file for a query: <name>.pgNN.sql with the highest NN not above the
    server's major version, else <name>.sql."""
    if server_version_num is not None:
        major = server_version_num // 10000
        variants = []
        for file in files:
            middle = file.removeprefix(f"{name}.pg").removesuffix(".sql")
            if file.startswith(f"{name}.pg") and file.endswith(".sql") and middle.isdigit():
                variants.append((int(middle), file))
        chosen = [file for version, file in sorted(variants) if version <= major]
        if chosen:
            return chosen[-1]
    return f"{name}.sql"


@cache
def query(name: str, server_version_num: int | None = None) -> str:
    """Return the SQL of a query for a server version (see pick_variant)."""
    folder = resources.files("connfix.db").joinpath("queries")
    files = [entry.name for entry in folder.iterdir()]
    return folder.joinpath(pick_variant(files, name, server_version_num)).read_text("utf-8")


@dataclass(frozen=True)
class ServerInfo:
    """What connfix learns about the server and itself on connecting."""

    role: str
    is_superuser: bool
    read_all_stats: bool
    signal_backend: bool
    server_version: str
    server_version_num: int
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    backend_pid: int
    database: str
    in_recovery: bool = False  # a hot standby
    rds_superuser_reserved_connections: int = 0  # Amazon RDS / Aurora's own reserve


class Session:
    """One autocommit connection, with how it was obtained."""

    def __init__(self, conn: psycopg.Connection[Any], via: str, refusal: str | None) -> None:
        self.conn = conn
        self.via = via  # "primary" or "admin"
        self.refusal = refusal  # the refusal that sent us to the admin connection
        # a run's identity, prefixed to each statement as a comment: pg_stat_activity.query
        # of this session then names the run to whoever finds the environment locked
        self.tag: str | None = None
        self.info = self.one("server_info", ServerInfo)
        if self.info.server_version_num < MIN_SERVER_VERSION:
            self.close()
            raise UnsupportedServer(
                f"PostgreSQL {self.info.server_version} is not supported: connfix needs 12 or newer"
            )

    def all(self, name: str, row: type[T], params: Sequence[Any] | dict[str, Any] = ()) -> list[T]:
        """Run queries/<name>.sql and return its rows as `row` instances."""
        try:
            with self.conn.cursor(row_factory=class_row(row)) as cur:
                version = getattr(getattr(self, "info", None), "server_version_num", None)
                text = query(name, version)
                if self.tag:
                    text = f"/* {self.tag} */ {text}"
                cur.execute(text, params)
                return cur.fetchall()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if not self.conn.closed and not self.conn.broken:
                raise  # a query-time error (e.g. a timeout), not a lost connection
            raise ConnectionLost(
                f"lost the connection to the database: {server_message(exc)}"
            ) from None

    def one(self, name: str, row: type[T], params: Sequence[Any] | dict[str, Any] = ()) -> T:
        """Run queries/<name>.sql and return its single row."""
        rows = self.all(name, row, params)
        if len(rows) != 1:
            raise DatabaseUnavailable(f"query {name} returned {len(rows)} rows, expected 1")
        return rows[0]

    def close(self) -> None:
        """Close the connection, ignoring a server that already went away."""
        with contextlib.suppress(psycopg.Error):
            self.conn.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def password_from(env_var: str | None, what: str) -> str | None:
    if not env_var:
        return None
    value = os.environ.get(env_var)
    if value is None:
        raise InputError(f"{what}: environment variable {env_var} is not set")
    return value


def connect(
    dsn: str,
    *,
    password: str | None = None,
    connect_timeout: float = 5.0,
    statement_timeout: float = 5.0,
) -> psycopg.Connection[Any]:
    """Open one autocommit connection named connfix with a short statement_timeout."""
    options = parse_dsn(dsn).get("options", "")
    timeout_ms = max(1, int(statement_timeout * 1000))
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "application_name": APPLICATION_NAME,
        "connect_timeout": max(1, round(connect_timeout)),
        "options": f"{options} -c statement_timeout={timeout_ms}".strip(),
    }
    if password is not None:
        kwargs["password"] = password
    return psycopg.connect(dsn, **kwargs)


WAYS_IN = (
    "database.reserved_dsn (a role granted pg_use_reserved_connections, PostgreSQL 16+)"
    " or database.admin_dsn (a superuser), written without a password, or"
    " reserved_dsn_env / admin_dsn_env (the name of an environment variable holding the"
    " DSN; export it in the shell that runs connfix)"
)


def open_session(db: Database) -> Session:
    """Connect to an environment's database; when refused for lack of slots, use the
    configured ways in (the reserved-slot role, then the admin), saying which.

    One attempt per way in: a full server is never hammered with retries.
    """
    try:
        conn = connect(
            db.dsn,
            password=password_from(db.password_env, "database.password_env"),
            connect_timeout=db.connect_timeout,
            statement_timeout=db.statement_timeout,
        )
        return Session(conn, "primary", None)
    except psycopg.OperationalError as exc:
        message = server_message(exc)
    kind = classify_refusal(message)
    where = describe_dsn(db.dsn)
    if kind is None:
        raise DatabaseUnavailable(f"cannot connect to {where}: {message}")
    ways = db.ways_in()
    profile = db.profile
    if not ways:
        advice = (
            f"no way in is configured for {profile.label}, which hands out no superuser:"
            f" {profile.way_in}"
            if profile.managed
            else f"configure a way in for a full server: {WAYS_IN}"
        )
        raise DatabaseUnavailable(
            f"the database refused connfix at {where}: {REFUSAL_TEXT[kind]}\n"
            f"  server said: {message}\n  {advice}"
        )
    failures = []
    for way in ways:
        if way.dsn is None:
            failures.append(f"{way.kind}: environment variable {way.dsn_env} is not set")
            continue
        try:
            conn = _connect_way(db, way)
        except psycopg.OperationalError as exc:
            failures.append(
                f"{way.kind} connection to {describe_dsn(way.dsn)}: {server_message(exc)}"
            )
            continue
        return Session(conn, way.kind, message)
    unset = any("is not set" in f for f in failures)
    raise DatabaseUnavailable(
        f"the database refused connfix at {where} ({message}), and every way in failed"
        " too:\n  "
        + "\n  ".join(failures)
        + (f"\n  the ways in for a full server: {WAYS_IN}" if unset and not profile.managed else "")
        + (f"\n  on {profile.label}: {profile.way_in}" if profile.managed else "")
    )


def _connect_way(db: Database, way: WayIn) -> psycopg.Connection[Any]:
    assert way.dsn is not None
    return connect(
        way.dsn,
        password=password_from(way.password_env, f"database.{way.kind}_password_env"),
        connect_timeout=db.connect_timeout,
        statement_timeout=db.statement_timeout,
    )


def probe_ways_in(db: Database) -> list[tuple[str, bool, str]]:
    """Try each way in once; return (kind, works, what happened) for each."""
    results = []
    for way in db.ways_in():
        if way.dsn is None:
            results.append((way.kind, False, f"environment variable {way.dsn_env} is not set"))
            continue
        try:
            conn = _connect_way(db, way)
        except psycopg.OperationalError as exc:
            results.append((way.kind, False, server_message(exc)))
            continue
        with Session(conn, way.kind, None) as session:
            info = session.info
        what = "superuser" if info.is_superuser else "not a superuser"
        results.append((way.kind, True, f"works as {info.role} ({what})"))
    return results


def execute_file(dsn: str, name: str, params: dict[str, Any]) -> None:
    """Run each statement of queries/<name>.sql on its own, binding params client-side.

    For utility statements (CREATE ROLE … PASSWORD), which take no server-side parameters.
    """
    statements = [s.strip() for s in query(name).split(";\n") if s.strip()]
    with connect(dsn) as conn, psycopg.ClientCursor(conn) as cur:
        for statement in statements:
            lines = [ln for ln in statement.splitlines() if not ln.lstrip().startswith("--")]
            if lines:
                cur.execute("\n".join(lines), params)


@dataclass(frozen=True)
class LockAcquired:
    """The answer of pg_try_advisory_lock."""

    acquired: bool


@dataclass(frozen=True)
class LockHolder:
    """The session holding an environment's lock."""

    pid: int
    usename: str | None
    client_addr: str | None
    application_name: str
    backend_start: Any
    held_seconds: float | None
    query: str | None = None  # its last statement: a connfix run's carries run_tag()


RUN_TAG = re.compile(
    r"connfix run operator=(?P<operator>\S+) host=(?P<host>\S+) pid=(?P<pid>\d+)"
    r" since=(?P<since>\S+) incident=(?P<incident>.*?) \*/"
)


def run_tag(operator: str, host: str, pid: int, since: str, incident: str) -> str:
    """The comment a run's statements carry (nothing secret; no `%`, `*/` or newline)."""

    def clean(value: object) -> str:
        text = str(value).replace("*/", "* /").replace("%", "_")
        return " ".join(text.split()) or "?"

    parts = (clean(operator).replace(" ", "_"), clean(host).replace(" ", "_"))
    return (
        f"connfix run operator={parts[0]} host={parts[1]} pid={int(pid)} since={clean(since)}"
        f" incident={clean(incident)}"
    )


def database_lock_key(database: str) -> dict[str, int]:
    """Return the two int4 keys of a database's connfix advisory lock (both
    non-negative). It is keyed by the database, not by the environment's name: two
    environments (or two inventories) naming the same database must not run at once;
    and an advisory lock lives in its database, so the name of the database is the key."""
    import zlib

    return {
        "key1": int.from_bytes(b"cnfx", "big"),
        "key2": zlib.crc32(f"database:{database}".encode()) & 0x7FFFFFFF,
    }


def try_environment_lock(session: Session, environment: str) -> LockHolder | None:
    """Take the lock of the database this session is in (one run per database, whatever
    environment names it); return the holder if someone has it."""
    key = database_lock_key(session.info.database)
    if session.one("lock_try", LockAcquired, key).acquired:
        return None
    holders = session.all("lock_holder", LockHolder, key)
    return holders[0] if holders else LockHolder(0, None, None, "", None, None)


@dataclass(frozen=True)
class Signalled:
    """The answer of the terminate statement."""

    pid: int
    signalled: bool


@dataclass(frozen=True)
class SessionNow:
    """A session's identity as it is now."""

    pid: int
    state: str | None
    backend_start: Any
    state_change: Any


@dataclass(frozen=True)
class _Pid:
    pid: int


def terminate_if_unchanged(
    session: Session, params: dict[str, Any], wait_ms: int | None = None, cancel: bool = False
) -> tuple[str, str]:
    """Signal one planned session to terminate if it is unchanged.

    With `wait_ms` (PostgreSQL 14+), wait for it to exit: ("terminated", ""), else
    ("signalled", "") and the caller confirms the exit. Otherwise ("skipped", why) or
    ("failed", error). A permission the server refuses skips this pid, with the
    server's words (a platform's or a superuser's session, a role connfix may not
    signal): the caller goes on.
    """
    if cancel:  # pg_cancel_backend: the statement, not the session (never waited on)
        wait_ms = None
    name = "terminate" if wait_ms is None else "terminate_wait"
    try:
        rows = session.all(name, Signalled, {**params, "timeout_ms": wait_ms, "cancel": cancel})
    except psycopg.errors.InsufficientPrivilege as exc:
        detail = exc.diag.message_detail  # PostgreSQL 16+ says why here
        text = str(exc).strip().splitlines()[0]
        return "skipped", f"refused by the server: {text}" + (f" ({detail})" if detail else "")
    except psycopg.Error as exc:
        return "failed", str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    if rows:
        if rows[0].signalled:
            return ("signalled", "") if wait_ms is None else ("terminated", "")
        if wait_ms is not None:
            return "failed", f"signalled, still present after {wait_ms} ms"
        what = "pg_cancel_backend" if cancel else "pg_terminate_backend"
        return "failed", f"{what} returned false (not a PostgreSQL backend?)"
    now = session.all("session_now", SessionNow, {"pid": params["pid"]})
    return "skipped", _why_skipped(params, now[0] if now else None)


def terminate_batch_if_unchanged(
    session: Session, planned: list[dict[str, Any]], cancel: bool = False
) -> dict[int, tuple[str, str]]:
    """Signal a batch of planned sessions to terminate, each only if it is unchanged, in
    one statement; return pid → ("signalled", "") or ("skipped", why) or ("failed",
    why). When the statement fails as a whole (a permission refused for one of them,
    say), nothing of the batch was signalled: its pids are then taken one at a time
    (terminate_if_unchanged), so one bad pid fails only itself."""
    try:
        rows = session.all(
            "terminate_batch",
            Signalled,
            {
                "pids": [p["pid"] for p in planned],
                "backend_starts": [p["backend_start"] for p in planned],
                "states": [p["state"] for p in planned],
                "state_changes": [p["state_change"] for p in planned],
                "cancel": cancel,
            },
        )
    except psycopg.Error as exc:
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) and (
            session.conn.closed or session.conn.broken
        ):
            raise
        # nothing of the batch was signalled (the statement failed as a whole): one at
        # a time, so the pid that cannot be terminated fails alone
        return {p["pid"]: terminate_if_unchanged(session, p, cancel=cancel) for p in planned}
    result: dict[int, tuple[str, str]] = {
        r.pid: ("signalled", "")
        if r.signalled
        else ("failed", "pg_terminate_backend returned false (not a PostgreSQL backend?)")
        for r in rows
    }
    missing = [p for p in planned if p["pid"] not in result]
    if missing:
        now = {
            r.pid: r
            for r in session.all("sessions_now", SessionNow, {"pids": [p["pid"] for p in missing]})
        }
        for p in missing:
            result[p["pid"]] = ("skipped", _why_skipped(p, now.get(p["pid"])))
    return result


def _why_skipped(planned: dict[str, Any], current: SessionNow | None) -> str:
    """Say why a planned session was not terminated: what changed since the plan."""
    if current is None:
        return "gone before it was signalled"
    if current.backend_start != planned["backend_start"]:
        return "pid reused by a new session"
    if current.state != planned["state"]:
        return f"state changed to {current.state!r} since it was planned"
    return "it ran a statement since it was planned (state_change moved)"


def client_backends(session: Session) -> int:
    """Count the client backends now (pg_stat_activity, as a diagnosis counts them)."""
    return session.all("client_backends", _Count)[0].count


@dataclass(frozen=True)
class _Count:
    count: int


@dataclass(frozen=True)
class _Recovery:
    in_recovery: bool


def role_now(session: Session) -> str:
    """The server's role now: `standby` while it is in recovery, else `primary`."""
    return "standby" if session.one("in_recovery", _Recovery).in_recovery else "primary"


def still_running(session: Session, planned: list[dict[str, Any]]) -> set[int]:
    """Return which cancelled sessions still run the statement that was cancelled."""
    if not planned:
        return set()
    params = {
        "pids": [p["pid"] for p in planned],
        "backend_starts": [p["backend_start"] for p in planned],
        "state_changes": [p["state_change"] for p in planned],
    }
    return {row.pid for row in session.all("still_running", _Pid, params)}


def alive(session: Session, pids: list[int]) -> set[int]:
    """Return which of `pids` still have a backend."""
    if not pids:
        return set()
    return {row.pid for row in session.all("backends_alive", _Pid, {"pids": pids})}


@dataclass(frozen=True)
class BackendId:
    """One backend, identified for good: a pid alone may be reused after it exits."""

    pid: int
    backend_start: datetime


def host_backends(
    session: Session,
    client_addr: str,
    application_name: str | None = None,
    user: str | None = None,
) -> set[BackendId]:
    """Return the client backends coming from one address (of one application and role,
    when given)."""
    params = {"addr": client_addr, "app": application_name, "user": user}
    return set(session.all("host_backends", BackendId, params))
