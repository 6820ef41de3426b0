"""What a diagnosis is: an exact, read-only picture of who holds the connections — the
rows read from pg_stat_activity and the figures and attributions computed from them
(`connfix.diagnosis.analysis` computes them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

HIDDEN_STATE = "unknown (insufficient privilege)"
LOCAL = "(local socket)"
HIDDEN = "(hidden)"
HA_AGENT = "(HA agent)"  # Patroni's own sessions: application_name Patroni…
PLATFORM_ROW = "(platform)"  # a managed service's own sessions (rdsadmin, cloudsqladmin…)
NOT_A_HOST = (HIDDEN, HA_AGENT, PLATFORM_ROW)  # rows that hold sessions but are no address
NOT_IN_INVENTORY = "(not in inventory)"
CONNFIX = "(connfix)"
PGBOUNCER_ROW = "(pgbouncer {name})"  # a PgBouncer's server connections, lent to no one
CONNFIX_APPLICATION = "connfix"  # the application_name connfix's sessions carry

TOP_IDLE_IN_TRANSACTION = 5


@dataclass(frozen=True)
class Backend:
    """One client backend from pg_stat_activity (queries/activity.sql): what a diagnosis
    counts and attributes, and what a termination plans with."""

    pid: int
    usename: str | None
    application_name: str
    client_addr: str | None
    datname: str | None
    state: str | None
    visible: bool
    backend_start: datetime | None
    state_change: datetime | None
    idle_seconds: float | None
    xact_seconds: float | None
    wait_event_type: str | None
    blocked_by: list[int] | None
    query: str | None
    own: bool = False  # connfix's own session
    is_superuser: bool = False  # the role's attributes (a termination never picks these)
    is_replication: bool = False

    @property
    def connfix(self) -> bool:
        """Tell whether this is a session of connfix (this run's, or another run's)."""
        return self.own or self.application_name == CONNFIX_APPLICATION

    @property
    def idle_in_transaction(self) -> bool:
        """Tell whether the session sits in an open transaction doing nothing."""
        return bool(self.state and self.state.startswith("idle in transaction"))


@dataclass(frozen=True)
class ConnectionLimit:
    """A role or database CONNECTION LIMIT and its use."""

    kind: str
    name: str
    limit: int
    used: int


@dataclass(frozen=True)
class ServiceUsage:
    """What one service holds on one host."""

    service: str
    count: int
    pool_size: int
    max_capacity: int
    suspect: bool
    reasons: list[str]


@dataclass(frozen=True)
class HostUsage:
    """The connections one client address holds, attributed to an inventory host."""

    host: str
    client_addr: str | None
    count: int
    idle: int
    idle_in_transaction: int
    active: int
    old_idle: int
    oldest_idle_seconds: float | None
    pool_size: int | None
    suspect: bool
    reasons: list[str]
    max_capacity: int | None = None  # (pool size + max_overflow) × workers
    owned: int = 0  # sessions the host's service owns (address, application name, user)
    unowned: int = 0  # sessions from the host that no service owns (pgbench, psql, cron…)
    unowned_clients: dict[str, int] = field(default_factory=dict)  # application → count
    services: list[ServiceUsage] = field(default_factory=list)  # each of the host's services
    # behind a pooler: of `count`, the server connections a PgBouncer lends this host's
    # clients now; and the client connections it holds open in PgBouncers (lent or not)
    lent: int = 0
    pooled: int = 0
    pooled_waiting: int = 0  # of those, waiting for a server connection
    pooled_by: dict[str, int] = field(default_factory=dict)  # PgBouncer name → clients
    pgbouncer: str | None = None  # this row is that PgBouncer's own server connections


@dataclass(frozen=True)
class BlockingChain:
    """A root blocker (holding a lock, waiting on no one) and everyone stuck behind it."""

    root: int
    host: str
    usename: str | None
    application_name: str
    state: str
    xact_seconds: float | None
    waiting: list[int]  # every session waiting on it, directly or transitively
    direct: list[int]  # those waiting on it directly
    query: str | None


@dataclass(frozen=True)
class IdleTransaction:
    """A session idle in transaction, with whom it blocks."""

    pid: int
    usename: str | None
    application_name: str
    host: str
    client_addr: str | None
    state: str
    xact_seconds: float | None
    idle_seconds: float | None
    blocking: list[int]  # every session stuck behind it, directly or transitively
    query: str | None


@dataclass(frozen=True)
class PoolCheck:
    """servers × (pool size + max_overflow) against what the database can give, minus a
    buffer: a burst opens the overflow too, so the worst case is what must fit."""

    servers: int
    pool_size: int
    workers: int
    total: int  # the worst case: Σ (pool size + max_overflow) × workers
    usable_connections: int
    buffer: int
    limit: int
    safe: bool
    recommended_pool_size: int
    max_overflow: int = 0

    def sentence(self) -> str:
        """Say the check the way an operator reads it."""
        per = (
            f"({self.pool_size} + {self.max_overflow} overflow)"
            if self.max_overflow
            else str(self.pool_size)
        )
        per += f" × {self.workers} workers" if self.workers > 1 else ""
        verdict = "safe" if self.safe else "NOT safe"
        relation = "≤" if self.safe else ">"
        text = (
            f"{self.servers} servers × {per} = {self.total} {relation} {self.limit}"
            f" ({self.usable_connections} usable − {self.buffer} buffer): {verdict}"
        )
        if not self.safe:
            text += (
                f"; pool size {self.recommended_pool_size} per server would fit,"
                + (f" its overflow of {self.max_overflow} and" if self.max_overflow else "")
                + " rolling restarts included"
            )
        return text


@dataclass(frozen=True)
class Diagnosis:
    """Everything `connfix diagnose` reports; `to_json` is the stable interface."""

    environment: str
    taken_at: str
    seconds: float
    connected_as: str
    via: str
    refusal: str | None
    server_version: str
    server_version_num: int
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    usable_connections: int
    client_backends: int
    utilization: float
    severity: str
    severity_reasons: list[str]
    visibility_complete: bool
    hidden_sessions: int
    by_state: dict[str, int]
    by_host: list[HostUsage]
    by_application: dict[str, int]
    by_user: dict[str, int]
    by_database: dict[str, int]
    idle_in_transaction: list[IdleTransaction]
    connection_limits: list[ConnectionLimit]
    pool_check: PoolCheck
    suspects: list[str] = field(default_factory=list)
    pgbouncers: list[dict[str, Any]] = field(default_factory=list)  # what each one said
    # each PgBouncer server connection's backend pid → whose it is: "app1 through
    # PgBouncer lab" when lent to app1's client now, else "(pgbouncer lab)"
    pooler_sessions: dict[int, str] = field(default_factory=dict)
    zero_setup: bool = False  # from a DSN alone: hosts are client addresses, pools unknown
    notes: list[str] = field(default_factory=list)  # what the operator should know of it
    own_sessions: int = 0  # connfix's (counted in client_backends, shown apart)
    # each host's health check, where a run checked them: {host: {"ok": …, "detail": …}}
    host_health: dict[str, dict[str, Any]] = field(default_factory=dict)
    unhealthy_hosts: list[str] = field(default_factory=list)
    unowned_connections: int = 0  # sessions from inventory hosts no service owns
    blocking_chains: list[BlockingChain] = field(default_factory=list)
    role: str = "primary"  # "standby" when the server is in recovery (a hot standby)
    node: str | None = None  # the node's name, in an environment of several
    ha_role: str | None = None  # what Patroni calls the member (leader, replica, …)
    ha_sessions: int = 0  # the HA agent's own sessions (Patroni): theirs, never a leak
    platform: str = "self-managed"  # who runs the server (database.platform)
    platform_reserved_connections: int = 0  # the platform's reserve beyond PostgreSQL's
    platform_sessions: int = 0  # the platform's own sessions: theirs, never a leak

    @property
    def healthy(self) -> bool:
        """Tell whether severity is ok."""
        return self.severity == "ok"

    def to_json(self) -> dict[str, Any]:
        """Return the machine-readable form (see docs/commands.md: diagnose --json)."""
        data = asdict(self)
        data["utilization"] = round(self.utilization, 4)
        return data
