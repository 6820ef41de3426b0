"""Taking a diagnosis: `take_snapshot` reads the server once; `analyse` is pure
arithmetic over those rows and the inventory (attribution to hosts and services, leak
suspects, blocking chains, severity, the pool check), so it can be tested on its own and
replayed from a journal."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from connfix.config.platforms import SELF_MANAGED
from connfix.config.platforms import platform as profile
from connfix.diagnosis.labels import app_label
from connfix.diagnosis.model import (
    CONNFIX,
    HA_AGENT,
    HIDDEN,
    HIDDEN_STATE,
    LOCAL,
    NOT_A_HOST,
    NOT_IN_INVENTORY,
    PGBOUNCER_ROW,
    PLATFORM_ROW,
    TOP_IDLE_IN_TRANSACTION,
    Backend,
    BlockingChain,
    ConnectionLimit,
    Diagnosis,
    HostUsage,
    IdleTransaction,
    PoolCheck,
    ServiceUsage,
)

if TYPE_CHECKING:
    from connfix.config.inventory import Environment, Host
    from connfix.db.pg import ServerInfo, Session
    from connfix.db.pgbouncer_console import BouncerClient, BouncerState


def platform_reserved(info: ServerInfo, platform: str = SELF_MANAGED) -> int:
    """The slots a managed platform reserves beyond PostgreSQL's own settings
    (connfix.config.platforms): RDS's rds_superuser reserve, Azure's 15 in all."""
    return profile(platform).platform_reserved(
        info.superuser_reserved_connections, info.rds_superuser_reserved_connections
    )


def usable_connections(info: ServerInfo, platform: str = SELF_MANAGED) -> int:
    """Return the slots ordinary roles can use: max − superuser reserved − reserved
    (16+) − what the platform reserves besides."""
    return max(
        0,
        info.max_connections
        - info.superuser_reserved_connections
        - info.reserved_connections
        - platform_reserved(info, platform),
    )


def pool_check(env: Environment, usable: int) -> PoolCheck:
    """Check servers × (pool size + max_overflow) against the usable limit minus the
    buffer: what the fleet may open in a burst is what must fit."""
    servers = len(env.hosts)
    workers = env.service.workers
    overflow = env.service.max_overflow
    total = sum(host.max_capacity(s) for host in env.hosts for s in env.services_on(host))
    buffer = env.thresholds.buffer
    limit = max(0, usable - buffer)
    # a size that stays within the limit in a burst (its overflow) and during a rolling
    # restart too, when max_unavailable hosts hold their old and their new pool at once
    # (connfix pool shows the full sum)
    at_once = min(env.service.max_unavailable, servers)
    recommended = max(0, limit // ((servers + at_once) * workers) - overflow) if servers else 0
    return PoolCheck(
        servers=servers,
        pool_size=env.service.pool_size,
        workers=workers,
        total=total,
        usable_connections=usable,
        buffer=buffer,
        limit=limit,
        safe=total <= limit,
        recommended_pool_size=recommended,
        max_overflow=overflow,
    )


def _severity(
    env: Environment, utilization: float, limits: list[ConnectionLimit]
) -> tuple[str, list[str]]:
    thresholds = env.thresholds
    level, reasons = 0, []
    if utilization >= thresholds.critical:
        level = 2
        reasons.append(f"utilization {utilization:.0%} ≥ critical {thresholds.critical:.0%}")
    elif utilization >= thresholds.warning:
        level = 1
        reasons.append(f"utilization {utilization:.0%} ≥ warning {thresholds.warning:.0%}")
    for item in limits:
        if item.limit == 0 or item.used >= item.limit:
            level = 2
            reasons.append(
                f"{item.kind} {item.name!r} is at its CONNECTION LIMIT ({item.used}/{item.limit})"
            )
        elif item.used >= thresholds.warning * item.limit:
            level = max(level, 1)
            reasons.append(
                f"{item.kind} {item.name!r} is near its CONNECTION LIMIT ({item.used}/{item.limit})"
            )
    return ("ok", "warning", "critical")[level], reasons


def _host_reasons(
    env: Environment, owned: list[Backend], pool: int, capacity: int
) -> tuple[list[str], int]:
    """Why a host's service looks like it leaks (empty: it does not); also its old idle
    sessions. Within pool size + max_overflow, a busy pool is a burst, not a leak: only
    sessions left idle for long beyond the pool size, or stuck in a transaction, are."""
    old_age = env.thresholds.idle_suspect_age
    iit_age = env.thresholds.idle_in_transaction_suspect_age
    idle = [b for b in owned if b.state == "idle"]
    old_idle = [b for b in idle if (b.idle_seconds or 0) >= old_age]
    stuck = [b for b in owned if b.idle_in_transaction and (b.xact_seconds or 0) >= iit_age]
    reasons = []
    count = len(owned)
    if count > capacity:
        if capacity > pool:
            reasons.append(
                f"holds {count} connections, more than pool size {pool} + max_overflow"
                f" {capacity - pool} (+{count - capacity})"
            )
        else:
            reasons.append(f"holds {count} connections, pool size {pool} (+{count - pool})")
        if old_idle:
            reasons.append(f"{len(old_idle)} idle for over {old_age:.0f}s")
    elif count > pool and old_idle:
        reasons.append(
            f"holds {count} connections, over pool size {pool} (within max_overflow), and"
            f" {len(old_idle)} idle for over {old_age:.0f}s: overflow that was never returned"
        )
    if stuck:
        reasons.append(f"{len(stuck)} idle in transaction for over {iit_age:.0f}s")
    return reasons, len(old_idle)


@dataclass
class PoolerJoin:
    """PgBouncers joined to pg_stat_activity: which backends are their server
    connections, which of those are lent to a client now, and each client address's
    client connections (a lent one as its server's backend, one without a server as a
    stand-in of pid 0 carrying its user, application and idle time)."""

    servers: dict[int, str] = field(default_factory=dict)  # backend pid → PgBouncer
    lent: dict[int, BouncerClient] = field(default_factory=dict)  # backend pid → client
    # a lent backend as its client's session: the client's address and application
    as_client: dict[int, Backend] = field(default_factory=dict)
    clients: dict[str, list[tuple[str, Backend]]] = field(default_factory=dict)
    unix_clients: int = 0


def join_poolers(bouncers: list[BouncerState], backends: list[Backend]) -> PoolerJoin:
    """Join what each PgBouncer said to the backends (see PoolerJoin)."""
    join = PoolerJoin()
    by_pid = {b.pid: b for b in backends}
    for state in bouncers:
        if state.error:
            continue
        server_pid = {s.ptr: s.remote_pid for s in state.servers if s.ptr}
        for server in state.servers:
            if server.remote_pid in by_pid:
                join.servers[server.remote_pid] = state.name
        for client in state.clients:
            if client.addr is None:
                join.unix_clients += 1
                continue
            pid = server_pid.get(client.link) if client.link else None
            backend = by_pid.get(pid) if pid else None
            if backend is not None:
                join.lent[backend.pid] = client
                stand_in = join.as_client[backend.pid] = replace(
                    backend,
                    client_addr=client.addr,
                    application_name=client.application_name or backend.application_name,
                )
            else:
                idle = client.idle_in_pool
                stand_in = Backend(
                    pid=0,
                    usename=client.user,
                    application_name=client.application_name,
                    client_addr=client.addr,
                    datname=client.database,
                    state="idle" if idle else client.state,
                    visible=True,
                    backend_start=None,
                    state_change=None,
                    idle_seconds=client.idle_seconds(state.read_at) if idle else None,
                    xact_seconds=None,
                    wait_event_type=None,
                    blocked_by=None,
                    query=None,
                )
            join.clients.setdefault(client.addr, []).append((state.name, stand_in))
    return join


def _bouncer_rows(join: PoolerJoin, backends: list[Backend]) -> list[HostUsage]:
    """One row per PgBouncer: its server connections lent to no client now."""
    rows = []
    for name in sorted(set(join.servers.values())):
        mine = [b for b in backends if join.servers.get(b.pid) == name and b.pid not in join.lent]
        if not mine:
            continue
        rows.append(replace(_plain_row(PGBOUNCER_ROW.format(name=name), mine), pgbouncer=name))
    return rows


def _hosts(
    env: Environment, backends: list[Backend], pooler: PoolerJoin | None = None
) -> list[HostUsage]:
    """One row per client address (every inventory host, also one holding nothing).
    Behind a pooler, `backends` holds the server connections lent to a host's clients
    under the host's address, and `pooler` the client connections each host holds open
    in a PgBouncer: a host's pool is judged on both, direct and pooled."""
    pooler = pooler or PoolerJoin()
    known_hosts = [] if env.zero_setup else env.hosts  # a bare DSN knows no host
    by_addr = {host.client_addr: host for host in known_hosts if host.client_addr}
    groups: dict[str | None, list[Backend]] = {}
    theirs = set(env.database.profile.roles)
    for backend in backends:
        key = (
            HA_AGENT
            if is_ha_agent(backend)
            else PLATFORM_ROW
            if backend.visible and backend.usename in theirs
            else backend.client_addr
        )
        groups.setdefault(key if backend.visible else HIDDEN, []).append(backend)
    usages = []
    for known in known_hosts:  # every inventory host, also one holding nothing
        if known.client_addr:
            groups.setdefault(known.client_addr, [])
    for pooled_addr in pooler.clients:
        groups.setdefault(pooled_addr, [])
    for addr, members in groups.items():
        apart = addr is None or addr in NOT_A_HOST
        pooled = pooler.clients.get(addr, []) if addr is not None and not apart else []
        host = by_addr.get(addr) if addr is not None and not apart else None
        idle = [b for b in members if b.state == "idle"]
        iit = [b for b in members if b.idle_in_transaction]
        ages = [b.idle_seconds for b in idle + iit if b.idle_seconds is not None]
        j = _judge(env, host, members, pooled, pooler) if host is not None else _Judged()
        usages.append(
            HostUsage(
                host=_row_name(host, addr),
                client_addr=None if addr in NOT_A_HOST else addr,
                count=len(members),
                idle=len(idle),
                idle_in_transaction=len(iit),
                active=sum(1 for b in members if b.state == "active"),
                old_idle=j.old_idle,
                oldest_idle_seconds=max(ages) if ages else None,
                pool_size=j.pool,
                suspect=bool(j.reasons),
                reasons=j.reasons,
                max_capacity=j.capacity,
                owned=len(j.owned) if host is not None else 0,
                # database sessions only: a client idle in a PgBouncer holds no slot
                unowned=sum(1 for b in j.unowned if b.pid > 0 and b.pid not in pooler.lent),
                lent=sum(1 for b in members if b.pid in pooler.lent),
                pooled=len(pooled),
                pooled_waiting=sum(1 for _, c in pooled if c.state == "waiting"),
                pooled_by=dict(Counter(name for name, _ in pooled)),
                unowned_clients=dict(Counter(app_label(b.application_name) for b in j.unowned)),
                services=j.services,
            )
        )
    # suspects first, most over what they may hold first; then by count
    usages.sort(
        key=lambda u: (
            not u.suspect,
            -(u.owned - (u.max_capacity or u.owned)),
            -u.count,
            u.host,
        )
    )
    return usages


@dataclass
class _Judged:
    """One inventory host's pools judged (_judge): its sessions by service, each
    service's pool and capacity, and why a service is a suspect."""

    pool: int | None = None
    capacity: int | None = None
    reasons: list[str] = field(default_factory=list)
    old_idle: int = 0
    owned: list[Backend] = field(default_factory=list)
    unowned: list[Backend] = field(default_factory=list)
    services: list[ServiceUsage] = field(default_factory=list)


def _judge(
    env: Environment,
    host: Host,
    members: list[Backend],
    pooled: list[tuple[str, Backend]],
    pooler: PoolerJoin,
) -> _Judged:
    """What each of the host's services holds — its direct sessions and its client
    connections in PgBouncers (a lent server connection stands for its client) — against
    its pool; what no service owns."""
    on_host = env.services_on(host)
    by_service: dict[str, list[Backend]] = {s.label: [] for s in on_host}
    j = _Judged(pool=0, capacity=0)
    for b in [*(m for m in members if m.pid not in pooler.lent), *(c for _, c in pooled)]:
        owner = env.owner(host, b.application_name, b.usename)
        if owner is None:
            j.unowned.append(b)
        else:
            by_service[owner.label].append(b)
            j.owned.append(b)
    for service in on_host:
        mine = by_service[service.label]
        s_pool, s_cap = host.pool_capacity(service), host.max_capacity(service)
        s_reasons, s_old = _host_reasons(env, mine, s_pool, s_cap)
        through = sum(1 for b in mine if b.pid <= 0 or b.pid in pooler.lent)
        if s_reasons and through:
            names = ", ".join(sorted({name for name, _ in pooled}))
            s_reasons[0] += f" ({through} of them through PgBouncer {names})"
        j.pool, j.capacity = (j.pool or 0) + s_pool, (j.capacity or 0) + s_cap
        j.old_idle += s_old
        j.services.append(
            ServiceUsage(service.label, len(mine), s_pool, s_cap, bool(s_reasons), s_reasons)
        )
        several = len(on_host) > 1
        j.reasons += [f"{service.label}: {r}" if several else r for r in s_reasons]
    return j


def _row_name(host: Host | None, addr: str | None) -> str:
    """The by-host row's name: the inventory host, or what the address is."""
    if host is not None:
        return host.name
    if addr in NOT_A_HOST:
        return addr
    if addr is None:
        return LOCAL
    return NOT_IN_INVENTORY


def is_ha_agent(b: Backend) -> bool:
    """Tell whether a session is the HA agent's own: Patroni connects as the superuser with
    application_name `Patroni` (newer releases: `Patroni heartbeat`, `Patroni restapi`)."""
    return b.visible and b.is_superuser and b.application_name.startswith("Patroni")


def _masked(query: str | None) -> str | None:
    """Another session's query text, with any password in it masked (ALTER ROLE …)."""
    from connfix.config.redact import mask_secrets

    return None if query is None else mask_secrets(query)


def blocking_chains(
    backends: list[Backend],
    host_of: dict[str | None, str],
    lent_host: dict[int, str] | None = None,
) -> list[BlockingChain]:
    """Group every waiting session under its root blocker(s), following pg_blocking_pids
    transitively: five sessions queued on one row lock, or a lock queue behind an ALTER
    TABLE, all land under the session that holds the lock and waits on no one."""
    blockers: dict[int, set[int]] = {b.pid: set(b.blocked_by or []) for b in backends}
    by_pid = {b.pid: b for b in backends}
    direct: dict[int, set[int]] = {}
    for waiter, held_by in blockers.items():
        for blocker in held_by:
            direct.setdefault(blocker, set()).add(waiter)

    def roots(pid: int) -> set[int]:
        found, seen, todo = set(), set(), [pid]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            above = blockers.get(current, set())
            if not above and current != pid:
                found.add(current)
            todo.extend(above)
        return found

    waiting: dict[int, set[int]] = {}
    for waiter, held_by in blockers.items():
        if held_by:
            for root in roots(waiter):
                waiting.setdefault(root, set()).add(waiter)
    chains = []
    for root, members in waiting.items():
        b = by_pid.get(root)
        chains.append(
            BlockingChain(
                root=root,
                host=(
                    (lent_host or {}).get(b.pid) or host_of.get(b.client_addr, NOT_IN_INVENTORY)
                    if b
                    else NOT_IN_INVENTORY
                ),
                usename=b.usename if b else None,
                application_name=b.application_name if b else "",
                state=(b.state or "") if b else "",
                xact_seconds=b.xact_seconds if b else None,
                waiting=sorted(members),
                direct=sorted(direct.get(root, set())),
                query=_masked(b.query) if b else None,
            )
        )
    chains.sort(key=lambda c: (-len(c.waiting), c.root))
    return chains


# Over 80 lines: half of it is the Diagnosis built field by field; the stages are calls
# (_severity, join_poolers, _hosts, blocking_chains, _idle_transaction, …).
def analyse(
    environment: str,
    env: Environment,
    info: ServerInfo,
    backends: list[Backend],
    limits: list[ConnectionLimit],
    *,
    via: str = "primary",
    refusal: str | None = None,
    seconds: float = 0.0,
    taken_at: str | None = None,
    bouncers: list[BouncerState] | None = None,
) -> Diagnosis:
    """Turn one snapshot of pg_stat_activity (and of the PgBouncers) into the diagnosis."""
    usable = usable_connections(info, env.database.platform)
    count = len(backends)  # connfix's own sessions included: they take slots too
    own = [b for b in backends if b.connfix]
    others = [b for b in backends if not b.connfix]
    utilization = count / usable if usable else 1.0
    severity, reasons = _severity(env, utilization, limits)
    join = join_poolers(bouncers or [], others)
    summaries = [_bouncer(state, join, env, usable - count) for state in bouncers or []]
    for state, summary in zip(bouncers or [], summaries, strict=True):
        if summary.get("saturated"):
            reasons.append(
                f"PgBouncer {state.name} pool saturated:"
                f" {summary['clients_waiting']} client(s) waiting"
            )
            if severity == "ok":
                severity = "warning"
    hidden = sum(1 for b in others if not b.visible)
    # the breakdowns are of everyone else; connfix's own sessions are counted in
    # client_backends and shown apart (own_sessions, the "(connfix)" row of by_host)
    states = Counter((b.state or "unknown") if b.visible else HIDDEN_STATE for b in others)
    # a server connection lent to a host's client counts as that host's session
    sessions = [
        join.as_client.get(b.pid, b)
        for b in others
        if b.pid not in join.servers or b.pid in join.lent
    ]
    hosts = _hosts(env, sessions, join) + _bouncer_rows(join, others)
    if own:
        hosts.append(_plain_row(CONNFIX, own))
    host_of = _host_of(hosts, join, others)
    lent_host = {
        pid: host_of.get(c.addr, NOT_IN_INVENTORY) for pid, c in join.lent.items() if c.addr
    }
    chains = blocking_chains(backends, host_of, lent_host)
    suspects = [u.host for u in hosts if u.suspect]
    if suspects:  # a leak is a problem before it fills the server: never "ok"
        reasons.append(f"leak suspect(s): {', '.join(suspects)}")
        if severity == "ok":
            severity = "warning"
    blocking = {c.root: c.waiting for c in chains}
    iit = sorted((b for b in others if b.idle_in_transaction), key=lambda b: -(b.xact_seconds or 0))
    return Diagnosis(
        environment=environment,
        taken_at=taken_at or datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=round(seconds, 4),
        connected_as=info.role,
        via=via,
        refusal=refusal,
        server_version=info.server_version,
        server_version_num=info.server_version_num,
        max_connections=info.max_connections,
        superuser_reserved_connections=info.superuser_reserved_connections,
        reserved_connections=info.reserved_connections,
        usable_connections=usable,
        client_backends=count,
        utilization=utilization,
        severity=severity,
        severity_reasons=reasons,
        visibility_complete=hidden == 0,
        hidden_sessions=hidden,
        by_state=dict(states.most_common()),
        by_host=hosts,
        by_application=dict(Counter(b.application_name for b in others).most_common()),
        by_user=dict(Counter(b.usename or "" for b in others).most_common()),
        by_database=dict(Counter(b.datname or "" for b in others).most_common()),
        idle_in_transaction=[
            _idle_transaction(b, lent_host.get(b.pid), host_of, blocking)
            for b in iit[:TOP_IDLE_IN_TRANSACTION]
        ],
        connection_limits=limits,
        pool_check=pool_check(env, usable),
        suspects=suspects,
        pgbouncers=summaries,
        pooler_sessions=_pooler_sessions(join, lent_host),
        own_sessions=len(own),
        unowned_connections=sum(u.unowned for u in hosts if u.pool_size is not None),
        blocking_chains=chains,
        role="standby" if info.in_recovery else "primary",
        ha_sessions=sum(1 for b in others if is_ha_agent(b)),
        platform=env.database.platform,
        platform_reserved_connections=platform_reserved(info, env.database.platform),
        platform_sessions=sum(
            1 for b in others if b.visible and b.usename in env.database.profile.roles
        ),
    )


def _plain_row(name: str, sessions: list[Backend]) -> HostUsage:
    """A row of sessions that are no host's pool (connfix's own, a PgBouncer's unlent
    server connections): counted by state, never a suspect."""
    return HostUsage(
        host=name,
        client_addr=sessions[0].client_addr,
        count=len(sessions),
        idle=sum(1 for b in sessions if b.state == "idle"),
        idle_in_transaction=sum(1 for b in sessions if b.idle_in_transaction),
        active=sum(1 for b in sessions if b.state == "active"),
        old_idle=0,
        oldest_idle_seconds=None,
        pool_size=None,
        suspect=False,
        reasons=[],
    )


def _host_of(
    hosts: list[HostUsage], join: PoolerJoin, others: list[Backend]
) -> dict[str | None, str]:
    """Which row each client address is shown in: a host's, or a PgBouncer's for the
    server connections it holds unlent."""
    host_of: dict[str | None, str] = {
        u.client_addr: u.host for u in hosts if u.client_addr and u.host != CONNFIX
    }
    for name in set(join.servers.values()):
        for b in others:
            if join.servers.get(b.pid) == name and b.pid not in join.lent and b.client_addr:
                host_of.setdefault(b.client_addr, PGBOUNCER_ROW.format(name=name))
    return host_of


def _idle_transaction(
    b: Backend, lent_to: str | None, host_of: dict[str | None, str], blocking: dict[int, list[int]]
) -> IdleTransaction:
    """One session idle in a transaction, with its host (through a pooler too) and what
    it blocks."""
    return IdleTransaction(
        pid=b.pid,
        usename=b.usename,
        application_name=b.application_name,
        host=lent_to
        or host_of.get(b.client_addr, LOCAL if b.client_addr is None else NOT_IN_INVENTORY),
        client_addr=b.client_addr,
        state=b.state or "",
        xact_seconds=b.xact_seconds,
        idle_seconds=b.idle_seconds,
        blocking=sorted(blocking.get(b.pid, [])),
        query=_masked(b.query),
    )


def _pooler_sessions(join: PoolerJoin, lent_host: dict[int, str]) -> dict[int, str]:
    """Whose each of PgBouncer's server connections is: the host it is lent to, or the
    PgBouncer's own row."""
    return {
        pid: (
            f"{lent_host[pid]} through PgBouncer {name}"
            if pid in lent_host
            else PGBOUNCER_ROW.format(name=name)
        )
        for pid, name in join.servers.items()
    }


def _bouncer(state: BouncerState, join: PoolerJoin, env: Environment, free: int) -> dict[str, Any]:
    """What one PgBouncer says: "the pool is saturated" (clients waiting in PgBouncer)
    told from "the database is full" (no free slot), and its clients by host."""
    from connfix.db.pgbouncer_console import KILL_CLIENT_SINCE

    head = {"name": state.name, "where": state.where, "version": state.version}
    if state.error:
        return {**head, "error": state.error}
    waiting = sum(p.cl_waiting for p in state.pools)
    longest = max((p.maxwait for p in state.pools), default=0.0)
    by_addr = {h.client_addr: h.name for h in env.hosts if h.client_addr}
    clients_by_host = Counter(
        by_addr.get(c.addr, NOT_IN_INVENTORY) if c.addr else LOCAL for c in state.clients
    )
    seen = sum(1 for pid, name in join.servers.items() if name == state.name)
    saturated, full = waiting > 0, free <= 0
    if saturated and not full:
        verdict = (
            f"the pool is saturated: {waiting} client(s) waiting in PgBouncer (longest"
            f" {longest:.1f}s) while the database has {free} free slot(s)"
        )
    elif saturated:
        verdict = "the pool is saturated and the database is full"
    elif full:
        verdict = "the database is full, but no client is waiting in PgBouncer"
    else:
        verdict = "PgBouncer keeps up: no client is waiting"
    return {
        **head,
        "pools": [asdict(p) for p in state.pools],
        "clients": len(state.clients),
        "clients_by_host": dict(clients_by_host.most_common()),
        "clients_active": sum(p.cl_active for p in state.pools),
        "clients_waiting": waiting,
        "max_wait_seconds": round(longest, 3),
        "server_connections": len(state.servers),
        "server_connections_in_pg_stat_activity": seen,
        "server_connections_lent": sum(1 for s in state.servers if s.link),
        "kill_client": state.has_kill_client,
        "kill_client_since": ".".join(map(str, KILL_CLIENT_SINCE)),
        "saturated": saturated,
        "database_full": full,
        "verdict": verdict,
    }


def take_snapshot(session: Session, environment: str, env: Environment) -> Diagnosis:
    """Read pg_stat_activity once (autocommit: a fresh snapshot) and analyse it. The
    server's role is read again too: a standby promoted keeps its sessions, so what the
    session learnt on connecting may no longer hold."""
    from connfix.db import pg

    started = time.monotonic()
    backends = session.all("activity", Backend)
    limits = session.all("connection_limits", ConnectionLimit)
    info = replace(session.info, in_recovery=pg.role_now(session) == "standby")
    bouncers = read_bouncers(env)
    d = analyse(
        environment,
        env,
        info,
        backends,
        limits,
        via=session.via,
        refusal=session.refusal,
        seconds=time.monotonic() - started,
        bouncers=bouncers,
    )
    if env.zero_setup:
        from connfix.diagnosis import zero_setup

        addresses = sorted({b.client_addr for b in backends if b.client_addr})
        d = zero_setup.suspects_by_share(d, env, zero_setup.resolve(addresses))
    return d


def read_bouncers(env: Environment) -> list[BouncerState]:
    """Read every PgBouncer of the environment, in parallel; one that cannot be read
    says why in its state (the diagnosis goes on without it)."""
    if not env.pgbouncers:
        return []
    from concurrent.futures import ThreadPoolExecutor

    from connfix.db import pgbouncer_console

    if len(env.pgbouncers) == 1:
        return [pgbouncer_console.read(env.pgbouncers[0])]
    with ThreadPoolExecutor(max_workers=min(8, len(env.pgbouncers))) as pool:
        return list(pool.map(pgbouncer_console.read, env.pgbouncers))


def diagnose(environment: str, env: Environment) -> Diagnosis:
    """Connect (falling back to the admin connection when full) and diagnose once."""
    from connfix.db import pg

    with pg.open_session(env.database) as session:
        return take_snapshot(session, environment, env)
