"""`connfix inventory check`: a read-only preflight of one environment."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from connfix import ConnfixError
from connfix.config.inventory import Environment, Host


@dataclass(frozen=True)
class DatabaseCheck:
    """Whether the database answers, as whom, and whether the admin way in works."""

    target: str
    ok: bool
    via: str | None = None
    role: str | None = None
    is_superuser: bool = False
    read_all_stats: bool = False
    signal_backend: bool = False
    server_version: str | None = None
    max_connections: int | None = None
    detail: str = ""
    ways_in: tuple[tuple[str, bool, str], ...] = ()  # (kind, works, detail) per way in


@dataclass(frozen=True)
class HostCheck:
    """Whether one host is reachable over SSH with a known key and has the unit."""

    name: str
    address: str
    reachable: bool
    host_key: str  # known | unknown/changed | n/a
    unit_present: bool
    detail: str
    seconds: float

    @property
    def ok(self) -> bool:
        """Tell whether every check passed on this host."""
        return self.reachable and self.host_key == "known" and self.unit_present


@dataclass(frozen=True)
class EnvironmentCheck:
    """The whole preflight of one environment."""

    environment: str
    database: DatabaseCheck
    hosts: list[HostCheck]
    nodes: list[DatabaseCheck] = field(default_factory=list)  # of several, each one's

    @property
    def ok(self) -> bool:
        """Tell whether the database (every node of it) and every host passed."""
        checks = self.nodes or [self.database]
        fine = all(c.ok and all(works for _, works, _ in c.ways_in) for c in checks)
        return fine and all(h.ok for h in self.hosts)


def check_database(env: Environment) -> DatabaseCheck:
    """Connect once (falling back to the admin connection) and read the server settings."""
    from connfix.config.dsn import describe_dsn
    from connfix.db import pg

    target = describe_dsn(env.database.dsn)
    try:
        with pg.open_session(env.database) as session:
            info = session.info
            via, refusal = session.via, session.refusal
    except ConnfixError as exc:
        result = DatabaseCheck(target=target, ok=False, detail=str(exc))
    else:
        detail = f"refused ({refusal}); used the {via} connection" if refusal else "connected"
        result = DatabaseCheck(
            target=target,
            ok=True,
            via=via,
            role=info.role,
            is_superuser=info.is_superuser,
            read_all_stats=info.read_all_stats or info.is_superuser,
            signal_backend=info.signal_backend or info.is_superuser,
            server_version=info.server_version,
            max_connections=info.max_connections,
            detail=detail,
        )
    if env.database.has_admin:
        result = DatabaseCheck(
            **{**result.__dict__, "ways_in": tuple(pg.probe_ways_in(env.database))}
        )
    return result


def check_host(env: Environment, host: Host) -> HostCheck:
    """Connect to one host and check the service's units are there; read-only.

    The units are read by property name (`systemctl show`), as the restart preflight
    reads them; a unit that is loaded but not active is said, not counted as missing."""
    from connfix.hosts import remote, systemd

    started = time.monotonic()
    conn, reachable, host_key, error = remote.open_checked(host, env.ssh)
    try:
        if error is not None:
            elapsed = time.monotonic() - started
            return HostCheck(
                host.name, host.ssh_address, reachable, host_key, False, error, elapsed
            )
        names: list[str] = []
        error = None
        for service in env.services_on(host):
            found, error = systemd.resolve_units(conn, service.unit_specs())
            if error is not None:
                break
            names += [n for n in found if n not in names]
        units: list[systemd.UnitState] = []
        if error is None and not names:
            error = "no service of the inventory runs on this host"
        if error is None:
            units, error = systemd.show_units(conn, names)
        present = error is None and all(u.loaded for u in units)
        if error is not None:
            detail = error
        else:
            findings = [u.verdict() for u in units if not u.loaded or u.active_state != "active"]
            detail = "; ".join(findings) or "ok"
        return HostCheck(
            host.name, host.ssh_address, True, "known", present, detail, time.monotonic() - started
        )
    finally:
        conn.close()


def check_environment(name: str, env: Environment) -> EnvironmentCheck:
    """Check the database and, in parallel, every host; change nothing."""
    from connfix.hosts import remote

    hosts = remote.parallel(env.hosts, lambda h: check_host(env, h))
    if not env.database.several:
        return EnvironmentCheck(name, check_database(env), hosts)
    from dataclasses import replace

    from connfix.diagnosis.cluster import topology

    topo = topology(env)
    nodes = []
    for member in topo.members:
        node_env = env.replace(database=env.database.of_node(member.node))
        check = check_database(node_env)
        role = f", Patroni: {member.ha_role}" if member.ha_role else ""
        nodes.append(replace(check, target=f"node {member.node.name}{role}: {check.target}"))
    return EnvironmentCheck(name, nodes[0] if nodes else check_database(env), hosts, nodes)
