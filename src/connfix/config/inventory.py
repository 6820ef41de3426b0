"""The inventory: environments, their database, app service, SSH settings and hosts.

Each is a frozen record (connfix.config.records): a standard dataclass whose fields'
constraints and checks pydantic reads when a file is validated — and only then: an
inventory validated before is built from connfix's cache without pydantic."""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from connfix.config.platforms import Platform, platform
from connfix.config.records import Record, Rule
from connfix.config.units import duration

# full-string matches (\Z, not $: `$` also matches before a trailing newline)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_UNIT = re.compile(r"^[A-Za-z0-9*?\[][A-Za-z0-9:_.@\\*?\[\]-]{0,250}\Z")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*\Z"
)
_ZONE = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")  # an IPv6 zone id: an interface name

DEFAULT_RESTART = "sudo -n systemctl restart {unit}"
LAB_ENVIRONMENT = "lab"


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse an IP address; an IPv6 zone id (`%eth0`) must be an interface name."""
    address = ipaddress.ip_address(value)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        if not _ZONE.match(address.scope_id):
            raise ValueError(f"not an interface name: {address.scope_id!r}")
    elif value != value.strip():
        raise ValueError("surrounding whitespace")
    return address


def _check_env_var(value: str | None) -> str | None:
    if value is not None and not _ENV_VAR.match(value):
        raise ValueError(f"not an environment variable name: {value!r}")
    return value


def dsn_has_password(dsn: str) -> bool:
    """Tell whether a libpq DSN (key=value or URI) carries a secret: a password, an
    sslpassword, an oauth_client_secret (connfix.config.redact.SECRET_KEYWORDS), parsed by
    libpq or — a string libpq refuses — read tolerantly."""
    from connfix.config.dsn import parse_dsn
    from connfix.config.redact import SECRET_KEYWORDS, has_secret

    if has_secret(dsn):
        return True
    return any(k in parse_dsn(dsn) for k in SECRET_KEYWORDS)


def _check_ssh_address(value: str) -> str:
    """An SSH address: an IP address or a host name."""
    try:
        _ip(value)
    except ValueError:
        if not _HOSTNAME.match(value):
            raise ValueError(f"not an IP address or host name: {value!r}") from None
    return value


def _check_secretless(value: str | None) -> str | None:
    """A connection string with no secret in it (they live in passfiles and variables)."""
    if value is None:
        return value
    try:
        has_password = dsn_has_password(value)
    except ValueError as exc:
        raise ValueError(f"not a valid libpq connection string: {exc}") from None
    if has_password:
        raise ValueError(
            "the connection string contains a secret (password, sslpassword or"
            " oauth_client_secret); secrets never live in the inventory or on a"
            " command line: use .pgpass (passfile=...), PGPASSWORD, a service file, or"
            " password_env / admin_dsn_env"
        )
    return value


def _node_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError("a node name is letters, digits, '.', '_' or '-' (at most 63)")
    return value


@dataclass(frozen=True, kw_only=True)
class Node(Record):
    """One database node the apps reach (a primary or a hot standby), by its own DSN."""

    name: Annotated[str, Rule(_node_name)]
    dsn: Annotated[str, Rule(_check_secretless, min_length=1)]
    reserved_dsn: Annotated[str | None, Rule(_check_secretless)] = None
    admin_dsn: Annotated[str | None, Rule(_check_secretless)] = None


def _patroni_urls(value: list[str]) -> list[str]:
    for url in value:
        if not re.match(r"^https?://[^\s/@]+(:\d+)?/?\Z", url):
            raise ValueError(f"{url!r} is not a Patroni REST API address (http://host:8008)")
    return [u.rstrip("/") for u in value]


@dataclass(frozen=True, kw_only=True)
class Patroni(Record):
    """Where Patroni's REST API answers (any member's): the cluster's members and roles
    are read from GET /cluster, and read again during a run."""

    urls: Annotated[list[str], Rule(_patroni_urls, min_length=1, max_length=16)]
    timeout: Annotated[float, duration()] = 2.0


def _log_path(value: str) -> str:
    if not re.match(r"^/[A-Za-z0-9_./*?\[\]-]*\Z", value) or ".." in value.split("/"):
        raise ValueError(
            "an absolute path or glob of letters, digits and _ . / * ? [ ] - (no spaces,"
            " no quotes, no ..)"
        )
    return value


@dataclass(frozen=True, kw_only=True)
class LogOverSsh(Record):
    """The server's log files on the database host, read over SSH: `grep` runs there, so
    only the lines of refused connection attempts travel."""

    address: Annotated[str, Rule(_check_ssh_address)]  # the database host's SSH address
    # an absolute glob, e.g. /var/log/postgresql/*.log
    path: Annotated[str, Rule(_log_path, max_length=1024)]


def _unique_nodes(value: list[Node]) -> list[Node]:
    seen = set()
    for node in value:
        if node.name in seen:
            raise ValueError(f"two nodes are named {node.name!r}")
        seen.add(node.name)
    return value


def _timeout_range(value: float) -> float:
    if not 0.1 <= value <= 300:
        raise ValueError("must be between 100ms and 5m")
    return value


EnvVar = Annotated[str | None, Rule(_check_env_var)]
SecretlessDsn = Annotated[str | None, Rule(_check_secretless)]


@dataclass(frozen=True, kw_only=True)
class Database(Record):
    """How to reach the database, and how to get in when it is full."""

    dsn: Annotated[str, Rule(_check_secretless, min_length=1)]
    password_env: EnvVar = None
    reserved_dsn: SecretlessDsn = None
    reserved_dsn_env: EnvVar = None
    reserved_password_env: EnvVar = None
    admin_dsn: SecretlessDsn = None
    admin_dsn_env: EnvVar = None
    admin_password_env: EnvVar = None
    connect_timeout: Annotated[float, duration(_timeout_range)] = 5.0
    statement_timeout: Annotated[float, duration(_timeout_range)] = 5.0
    # several nodes (a primary and hot standbys): listed, or found through Patroni
    nodes: Annotated[list[Node], Rule(_unique_nodes, max_length=32)] = field(default_factory=list)
    patroni: Patroni | None = None
    # who runs the server: a managed service hands out no superuser, keeps its own
    # sessions and reserved slots (connfix.config.platforms)
    platform: Literal["self-managed", "rds", "aurora", "cloudsql", "azure"] = "self-managed"
    # the server's log files, where connfix runs (a glob), for the refused connection
    # attempts in the report; without it they are read through SQL (pg_ls_logdir)
    log_files: Annotated[str | None, Rule(min_length=1, max_length=4096)] = None
    # or on the database host over SSH (the environment's ssh: settings and known_hosts)
    log_ssh: LogOverSsh | None = None

    def __post_init__(self) -> None:
        profile = platform(self.platform)
        admin = self.admin_dsn or self.admin_dsn_env or any(n.admin_dsn for n in self.nodes)
        if profile.managed and admin:
            raise ValueError(
                f"admin_dsn: {profile.label} hands out no superuser; for a full server use"
                f" reserved_dsn: {profile.way_in}"
            )

    @property
    def profile(self) -> Platform:
        """The platform's profile (connfix.config.platforms)."""
        return platform(self.platform)

    @property
    def several(self) -> bool:
        """Tell whether the environment has several nodes (listed or from Patroni)."""
        return bool(self.nodes) or self.patroni is not None

    def of_node(self, node: Node) -> Database:
        """This database's settings with a node's DSN and ways in (the node's own where
        it gives them, else this database's, pointed at the node's host and port)."""
        from connfix.config.dsn import make_dsn, parse_dsn

        target = {k: v for k, v in parse_dsn(node.dsn).items() if k in ("host", "hostaddr", "port")}

        def pointed(dsn: str | None) -> str | None:
            if dsn is None:
                return None
            parts = {k: v for k, v in parse_dsn(dsn).items() if k not in ("hostaddr",)}
            return make_dsn({**parts, **target})

        return self.replace(
            dsn=node.dsn,
            reserved_dsn=node.reserved_dsn or pointed(self.reserved_dsn),
            admin_dsn=node.admin_dsn or pointed(self.admin_dsn),
            nodes=[],
            patroni=None,
        )

    def node_at(self, name: str, host: str, port: int) -> Node:
        """A node found by discovery (Patroni's member `name` at host:port): listed nodes
        keep their own DSN; another gets this database's DSN pointed at it (validated:
        the name comes from the cluster)."""
        from connfix.config.dsn import make_dsn, parse_dsn

        for node in self.nodes:
            if node.name == name:
                return node
        parts = {k: v for k, v in parse_dsn(self.dsn).items() if k != "hostaddr"}
        dsn = make_dsn({**parts, "host": host, "port": str(port)})
        return Node.validate({"name": name, "dsn": dsn})

    @property
    def has_admin(self) -> bool:
        """Tell whether any way in for a full server is configured."""
        return bool(self.ways_in())

    def ways_in(self) -> list[WayIn]:
        """Return the configured ways in for a full server, least privileged first."""
        ways = []
        for kind, dsn, dsn_env, password_env in (
            ("reserved", self.reserved_dsn, self.reserved_dsn_env, self.reserved_password_env),
            ("admin", self.admin_dsn, self.admin_dsn_env, self.admin_password_env),
        ):
            if dsn or dsn_env:
                from_env = os.environ.get(dsn_env) if dsn_env else None
                ways.append(WayIn(kind, from_env or dsn, dsn_env, password_env))
        return ways


@dataclass(frozen=True)
class WayIn:
    """A connection for when the ordinary slots are full."""

    kind: str  # "reserved" or "admin"
    dsn: str | None  # None: only an environment variable was named, and it is not set
    dsn_env: str | None
    password_env: str | None

    @property
    def label(self) -> str:
        """Say which reserve this way in uses."""
        if self.kind == "reserved":
            return (
                "the reserved-slot connection (a role with pg_use_reserved_connections,"
                " using reserved_connections)"
            )
        return "the admin connection (a superuser, using superuser_reserved_connections)"


def _printable(value: str | None) -> str | None:
    if value is not None and any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise ValueError(f"contains a control character: {value!r}")
    return value


def _service_name(value: str | None) -> str | None:
    if value is not None and not NAME_RE.match(value):
        raise ValueError(f"not a service name: {value!r} (letters, digits and ._- only)")
    return value


def _unit_name(value: str) -> str:
    if not _UNIT.match(value):
        raise ValueError(
            f"not a systemd unit name or pattern: {value!r} (letters, digits, :_.@-"
            " and the glob characters *?[] only)"
        )
    return value


def _unit_names(values: list[str]) -> list[str]:
    for value in values:
        _unit_name(value)
    return values


def _restart(value: str) -> str:
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot be parsed as a command: {exc}") from None
    if not words:
        raise ValueError("must not be empty")
    placeholders = set(re.findall(r"\{([^{}]*)\}", value))
    if placeholders - {"unit"}:
        raise ValueError(
            f"unknown placeholder(s) {sorted(placeholders - {'unit'})}; only {{unit}} exists"
        )
    if "{" in value.replace("{unit}", "") or "}" in value.replace("{unit}", ""):
        raise ValueError("a brace outside the one placeholder {unit} (write it exactly so)")
    return value


@dataclass(frozen=True, kw_only=True)
class Service(Record):
    """An application service on the app hosts."""

    # required when an environment lists several `services`
    name: Annotated[str | None, Rule(_service_name)] = None
    # a unit name, or a glob pattern resolved on each host (app@*.service)
    unit: Annotated[str, Rule(_unit_name)]
    units: Annotated[list[str], Rule(_unit_names, max_length=100)] = field(default_factory=list)
    pool_size: Annotated[int, Rule(ge=1, le=10_000)]
    # a burst may open this many more
    max_overflow: Annotated[int, Rule(ge=0, le=10_000)] = 0
    workers: Annotated[int, Rule(ge=1, le=1_000)] = 1
    application_name: Annotated[str | None, Rule(_printable, max_length=63)] = None
    # its database role
    user: Annotated[str | None, Rule(_printable, min_length=1, max_length=63)] = None
    restart_command: Annotated[str, Rule(_restart)] = DEFAULT_RESTART
    health_check: str | None = None
    health_timeout: Annotated[float, duration()] = 60.0
    max_unavailable: Annotated[int, Rule(ge=1, le=1_000)] = 1

    @property
    def label(self) -> str:
        """Return the service's name, or its unit when it has none."""
        return self.name or self.unit

    def owns(self, application_name: str, usename: str | None) -> bool:
        """Tell whether a session from one of the service's hosts is the service's: its
        application_name (and database user) match where the inventory names them."""
        if self.application_name is not None and application_name != self.application_name:
            return False
        return self.user is None or usename == self.user

    def unit_specs(self) -> list[str]:
        """Return the unit names and patterns of the service, `unit` first."""
        return list(dict.fromkeys([self.unit, *self.units]))

    def restart_argv(self, unit: str | None = None) -> str:
        """Return the restart command of one unit (default: `unit`), its name quoted."""
        return self.restart_command.replace("{unit}", shlex.quote(unit or self.unit))


def _ssh_user(value: str | None) -> str | None:
    if value is not None and not re.match(r"^[a-z_][a-z0-9_.-]{0,31}\Z", value):
        raise ValueError(f"not a user name: {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class Ssh(Record):
    """SSH settings; unset values come from ~/.ssh/config and the agent."""

    user: Annotated[str | None, Rule(_ssh_user)] = None
    port: Annotated[int | None, Rule(ge=1, le=65535)] = None
    identity_file: str | None = None
    known_hosts_file: str | None = None
    connect_timeout: Annotated[float, duration()] = 10.0
    command_timeout: Annotated[float, duration()] = 120.0
    # SSH keepalive on open connections (0: off). A long roll keeps the preflight's
    # connection to the last hosts for minutes: through a NAT or a firewall that drops
    # idle flows it stays alive, and a dead one is noticed and reopened before use.
    keepalive: Annotated[float, duration(ge=0, le=3600)] = 15.0


def _host_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"not a host name: {value!r} (letters, digits and ._- only)")
    return value


def _db_address(value: str | None) -> str | None:
    if value is None:
        return value
    try:
        return str(_ip(value))
    except ValueError:
        raise ValueError(
            f"not an IP address: {value!r} (the client_addr PostgreSQL sees)"
        ) from None


@dataclass(frozen=True, kw_only=True)
class Host(Record):
    """One app server: its name, its SSH address, and the address PostgreSQL sees."""

    name: Annotated[str, Rule(_host_name)]
    ssh_address: Annotated[str, Rule(_check_ssh_address)]
    db_address: Annotated[str | None, Rule(_db_address)] = None
    pool_size: Annotated[int | None, Rule(ge=1, le=10_000)] = None
    services: list[str] | None = None  # the services this host runs (default: every one)

    def pool_capacity(self, service: Service) -> int:
        """Return how many connections this host keeps: pool size × workers."""
        return (self.pool_size or service.pool_size) * service.workers

    def max_capacity(self, service: Service) -> int:
        """Return how many connections this host may hold in a burst:
        (pool size + max_overflow) × workers."""
        return ((self.pool_size or service.pool_size) + service.max_overflow) * service.workers

    @property
    def client_addr(self) -> str | None:
        """Return the address this host's sessions show in pg_stat_activity."""
        if self.db_address:
            return self.db_address
        try:
            return str(ipaddress.ip_address(self.ssh_address))
        except ValueError:
            return None


Share = Annotated[float, Rule(gt=0, le=1)]


@dataclass(frozen=True, kw_only=True)
class Thresholds(Record):
    """When utilization counts as warning or critical, and the pool-math buffer."""

    warning: Share = 0.8
    critical: Share = 0.95
    buffer: Annotated[int, Rule(ge=0, le=10_000)] = 5
    idle_suspect_age: Annotated[float, duration()] = 600.0
    idle_in_transaction_suspect_age: Annotated[float, duration()] = 60.0

    def __post_init__(self) -> None:
        if self.warning > self.critical:
            raise ValueError("warning must not be above critical")


@dataclass(frozen=True, kw_only=True)
class Protected(Record):
    """Users and application names that are never terminated."""

    users: list[str] = field(default_factory=list)
    applications: list[str] = field(default_factory=list)


def _bouncer_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError("letters, digits, '.', '_' and '-' only, at most 63")
    return value


@dataclass(frozen=True, kw_only=True)
class PgBouncerAccess(Record):
    """How to reach one PgBouncer in front of the database (its admin console)."""

    # how tables, the journal and runbook steps name it
    name: Annotated[str, Rule(_bouncer_name)] = "pgbouncer"
    admin_dsn: Annotated[str, Rule(_check_secretless, min_length=1)]
    admin_password_env: EnvVar = None
    connect_timeout: Annotated[float, duration()] = 3.0


NotifyEvent = Literal["start", "step", "end", "approval"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("start", "step", "end", "approval")


def _webhook_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("an http:// or https:// URL")
    return value


@dataclass(frozen=True, kw_only=True)
class NotifyTarget(Record):
    """Where a run says what it does: a Slack-compatible incoming webhook (`{"text":
    …}`) or a generic JSON webhook. The URL of a Slack webhook is a secret: give it by
    environment variable (url_env)."""

    name: str = "notify"
    kind: Literal["slack", "webhook"]
    url: Annotated[str | None, Rule(_webhook_url)] = None
    url_env: EnvVar = None
    events: Annotated[list[NotifyEvent], Rule(min_length=1)] = field(
        default_factory=lambda: list(NOTIFY_EVENTS)
    )
    timeout: Annotated[float, duration()] = 3.0

    def __post_init__(self) -> None:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give url or url_env (one of them)")
        if self.kind == "slack" and self.url is not None:
            raise ValueError(
                "a Slack webhook URL is a secret: give it by environment variable (url_env)"
            )


def _known_actions(value: list[str]) -> list[str]:
    from connfix.config.effects import ACTION_EFFECTS, EFFECTS

    unknown = [v for v in value if v not in ACTION_EFFECTS and v not in EFFECTS]
    if unknown:
        raise ValueError(
            f"unknown {', '.join(map(repr, unknown))}: give effects"
            f" ({', '.join(EFFECTS)}) or actions ({', '.join(ACTION_EFFECTS)})"
        )
    return value


@dataclass(frozen=True, kw_only=True)
class AlertCaps(Record):
    """What an alert-triggered `auto` run may do. `actions` names what may happen — an
    effect (cancel_queries, end_sessions, restart_hosts, kill_pooler_clients,
    pooler_pools) or an action standing for its effects (terminate: end_sessions and
    cancel_queries; cancel: cancel_queries; rolling_restart: restart_hosts; …); each
    step is checked by what it will do (a `cancel` step with `signal: terminate` ends
    sessions)."""

    actions: Annotated[list[str], Rule(_known_actions)] = field(
        default_factory=lambda: ["diagnose", "advise", "wait", "verify", "terminate"]
    )
    max_hosts: Annotated[int, Rule(ge=0, le=1000)] = 1  # hosts one run may restart
    # between two runs that may change things
    min_interval: Annotated[float, duration()] = 1800.0

    def effects(self) -> set[str]:
        """The effects these caps allow."""
        from connfix.config.effects import ACTION_EFFECTS

        allowed: set[str] = set()
        for name in self.actions:
            allowed |= ACTION_EFFECTS.get(name, frozenset({name}))
        return allowed


def _prometheus_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL of the Prometheus server")
    if parts.username or parts.password:
        raise ValueError("no credentials in the URL (it is journaled): none belong here")
    return value.rstrip("/")


Promql = Annotated[str | None, Rule(min_length=1, max_length=2000)]


@dataclass(frozen=True, kw_only=True)
class PrometheusSource(Record):
    """The Prometheus that scrapes this environment (connfix serve's /metrics, the
    textfile, or postgres_exporter): the report's chart and onset start before the run."""

    url: Annotated[str, Rule(_prometheus_url, max_length=2048)]
    # history before a run
    lookback: Annotated[float, duration(ge=60, le=7 * 86400)] = 3600.0
    timeout: Annotated[float, duration(gt=0, le=60)] = 3.0
    # PromQL for the connections in use and the usable limit (default: connfix's own
    # series for the environment); e.g. sum(pg_stat_activity_count{instance="db1:9187"})
    connections: Promql = None
    limit: Promql = None


@dataclass(frozen=True, kw_only=True)
class ApprovalPolicy(Record):
    """How a step that needs approval waits for it: how long (`ttl`; then the run ends
    `expired`), and whether the person who started the run may approve it."""

    ttl: Annotated[float, duration(gt=0, le=7 * 86400)] = 900.0
    two_person: bool = False


@dataclass(frozen=True, kw_only=True)
class AlertPolicy(Record):
    """How `connfix serve` answers an alert for this environment. `approve`: the run goes
    as far as the caps let it alone, then waits for an approval at each step beyond them
    (and at every step its runbook marks `approval: required`)."""

    mode: Literal["observe", "dry-run", "auto", "approve"] = "observe"
    caps: AlertCaps = field(default_factory=AlertCaps)
    approval: ApprovalPolicy = field(default_factory=ApprovalPolicy)
    runbook: str | None = None  # default: too-many-connections
    pagerduty_services: list[str] = field(default_factory=list)  # PagerDuty service ids


def _one_or_several(data: object) -> object:
    """`services` without `service`: the first is the one service; `pgbouncer` (one) is
    `pgbouncers` (a list) of it."""
    if isinstance(data, dict) and data.get("services") and "service" not in data:
        first = data["services"][0]
        data = {**data, "service": first}
    if isinstance(data, dict) and "pgbouncer" in data:  # the one-PgBouncer form
        if "pgbouncers" in data:
            raise ValueError("give either pgbouncer (one) or pgbouncers (a list), not both")
        one = data["pgbouncer"]
        data = {k: v for k, v in data.items() if k != "pgbouncer"}
        data["pgbouncers"] = [] if one is None else [one]
    return data


@dataclass(frozen=True, kw_only=True)
class Environment(Record):
    """One environment: a database and the app fleet in front of it."""

    description: str | None = None
    database: Database
    service: Service  # the one service; with `services`, the first of them
    services: Annotated[list[Service], Rule(max_length=50)] = field(default_factory=list)
    ssh: Ssh = field(default_factory=Ssh)
    hosts: Annotated[list[Host], Rule(min_length=1)]
    thresholds: Thresholds = field(default_factory=Thresholds)
    protected: Protected = field(default_factory=Protected)
    # the PgBouncers in front of the database: one per app host, a pair behind a VIP…
    pgbouncers: Annotated[list[PgBouncerAccess], Rule(max_length=50)] = field(default_factory=list)
    notify: Annotated[list[NotifyTarget], Rule(max_length=20)] = field(default_factory=list)
    alerts: AlertPolicy | None = None  # absent: serve refuses this environment's alerts
    prometheus: PrometheusSource | None = None  # the history before a run, for the report
    incidents_dir: str | None = None
    # set by connfix itself for a DSN given without an inventory (never from a file):
    # no hosts, pools or services known
    zero_setup: bool = field(default=False, init=False, repr=False)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """Validated as a dataclass, after the one-or-several forms are read."""
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(_one_or_several, handler(source))

    def __post_init__(self) -> None:
        names = [b.name for b in self.pgbouncers]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"pgbouncers: the name {twice[0]!r} is given twice")

    def replace(self, **changes: Any) -> Environment:
        """A copy with some fields changed; a zero-setup environment stays one."""
        copy = super().replace(**changes)
        if self.zero_setup:
            object.__setattr__(copy, "zero_setup", True)
        return copy

    def as_zero_setup(self) -> Environment:
        """This environment, marked as made by connfix from a bare DSN."""
        copy = super().replace()
        object.__setattr__(copy, "zero_setup", True)
        return copy

    def all_services(self) -> list[Service]:
        """Return every service of the environment, in inventory order."""
        return list(self.services) or [self.service]

    def services_on(self, host: Host) -> list[Service]:
        """Return the services one host runs."""
        if host.services is None:
            return self.all_services()
        return [s for s in self.all_services() if s.label in host.services]

    def owner(self, host: Host, application_name: str, usename: str | None) -> Service | None:
        """Return the service a session from this host belongs to: the first of the
        host's services whose application_name (and user) match; None: no service's."""
        for service in self.services_on(host):
            if service.owns(application_name, usename):
                return service
        return None


def _version(value: int) -> int:
    if value != 1:
        raise ValueError("only version 1 exists")
    return value


@dataclass(frozen=True, kw_only=True)
class Inventory(Record):
    """The whole inventory file."""

    version: Annotated[int, Rule(_version)] = 1
    environments: Annotated[dict[str, Environment], Rule(min_length=1)]
