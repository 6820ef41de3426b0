"""`connfix lab status`: the lab's server, each host's systemd, ssh and app, and the
connections per host, read live."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from connfix import LabError
from connfix.lab import cgroups, paths
from connfix.lab import hosts as lab_hosts
from connfix.lab.lab import app_request, problems
from connfix.lab.paths import UNIT
from connfix.lab.postgres import bootstrap_dsn
from connfix.lab.shell import alive
from connfix.lab.state import LabState


@dataclass(frozen=True)
class HostStatus:
    """One lab host as `lab status` shows it."""

    name: str
    address: str
    init_pid: int | None  # the host's systemd, as the machine sees it
    system: str  # `systemctl is-system-running` inside the host
    ssh: str  # ActiveState of ssh.service
    app: str  # ActiveState of the app's unit
    app_pid: int | None  # the app's main pid inside the host
    memory_mb: float | None  # what the host's memory cgroup counts
    pool: int
    leaked: int
    backends: int
    idle: int
    idle_in_transaction: int


@dataclass(frozen=True)
class Status:
    """The whole lab as `lab status` shows it."""

    up: bool
    problems: list[str]
    server_version: str
    max_connections: int
    client_backends: int
    hosts: list[HostStatus]
    pgbouncer: str | None = None  # SHOW VERSION of the running PgBouncer, read live
    pgbouncer_hosts: int = 0
    nodes: dict[str, str] = field(default_factory=dict)  # --ha: node → Patroni's role


@dataclass(frozen=True)
class _Count:
    client_addr: str | None
    total: int
    idle: int
    idle_in_transaction: int


def _host_units(pid: int | None) -> tuple[str, str, str, int | None]:
    """Return a host's system state, ssh's and the app's ActiveState, and the app's pid."""
    if pid is None or not alive(pid):
        return "down", "-", "-", None
    from connfix.hosts.systemd import parse_show

    system = lab_hosts.enter(pid, ["systemctl", "is-system-running"], check=False).stdout
    shown = lab_hosts.systemctl(
        pid, "show", "-p", "Id,ActiveState,MainPID", "ssh.service", UNIT, check=False
    ).stdout
    units = {u.get("Id", ""): u for u in parse_show(shown)}
    ssh, app = units.get("ssh.service", {}), units.get(UNIT, {})
    main = int(app.get("MainPID", "0") or 0)
    return (
        system.strip() or "?",
        ssh.get("ActiveState", "?"),
        app.get("ActiveState", "?"),
        main or None,
    )


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def status() -> Status:
    """Report the lab: server, hosts (systemd, ssh, app) and connections per host."""
    from connfix.db import pg

    state = LabState.load()
    if state is None:
        return Status(False, ["the lab is not up (run `connfix lab up`)"], "", 0, 0, [])
    found = problems(state)
    counts: dict[str | None, _Count] = {}
    version, max_conn, total = "", 0, 0
    nodes: dict[str, str] = {}
    dsns = [bootstrap_dsn()]
    if state.ha:  # every node: the apps reading from the standby hold its slots
        from connfix.lab import patroni

        dsns = [patroni.superuser_dsn(n) for n in patroni.NODES]
        try:
            members = patroni.cluster().get("members", [])
            nodes = {str(m.get("name")): str(m.get("role")) for m in members}
        except LabError as exc:
            found.append(str(exc))
    if not found or Path(state.pg_data, "postmaster.pid").exists():
        try:
            for dsn in dsns:
                with pg.Session(pg.connect(dsn), "admin", None) as session:
                    version = session.info.server_version
                    max_conn = session.info.max_connections
                    rows = session.all("lab_connections", _Count)
                for row in rows:
                    seen = counts.get(row.client_addr, _Count(row.client_addr, 0, 0, 0))
                    counts[row.client_addr] = _Count(
                        row.client_addr,
                        seen.total + row.total,
                        seen.idle + row.idle,
                        seen.idle_in_transaction + row.idle_in_transaction,
                    )
                total += sum(row.total for row in rows)
        except Exception as exc:
            found.append(f"cannot query PostgreSQL: {str(exc).strip()}")
    result = []
    for index in range(1, state.hosts + 1):
        name, address = paths.host_name(index), paths.host_address(index)
        try:
            app = app_request(index, "/status", timeout=2)
        except LabError:
            app = {}
        pid = state.init_pids.get(name)
        system, ssh, app_state, main_pid = _host_units(pid)
        row = counts.get(address, _Count(address, 0, 0, 0))
        result.append(
            HostStatus(
                name,
                address,
                pid if pid and alive(pid) else None,
                system,
                ssh,
                app_state,
                main_pid,
                _mb(cgroups.memory_bytes(name)),
                int(app.get("checked_out", 0)) + int(app.get("idle_in_pool", 0)),
                len(app.get("leaked", [])),
                row.total,
                row.idle,
                row.idle_in_transaction,
            )
        )
    return Status(
        not found,
        found,
        version,
        max_conn,
        total,
        result,
        _pgbouncer_version(state, found),
        state.pgbouncer_hosts,
        nodes,
    )


def _pgbouncer_version(state: LabState, found: list[str]) -> str | None:
    """What the lab's running PgBouncer says it is (SHOW VERSION on its console)."""
    if not state.pgbouncer_hosts or not alive(state.pgbouncer_pid):
        return None
    from connfix.db import pgbouncer_console
    from connfix.lab.postgres import passfile

    dsn = (
        f"host={paths.db_address()} port={paths.pgbouncer_port()} dbname=pgbouncer"
        f" user=connfix passfile={passfile()}"
    )
    try:
        with pgbouncer_console.connect(dsn, None, 5) as conn:
            return pgbouncer_console.state_of(conn, "lab", "lab").version
    except Exception as exc:
        found.append(f"cannot read PgBouncer's version: {str(exc).strip()}")
        return None
