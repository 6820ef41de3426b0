"""Taking a diagnosis: `take_snapshot` reads the server once; `analyse` is pure
arithmetic over those rows and the inventory (attribution to hosts and services, leak
suspects, blocking chains, severity, the pool check), so it can be tested on its own and
replayed from a journal."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from connfix.diagnosis import (
    CONNFIX,
    HIDDEN,
    HIDDEN_STATE,
    LOCAL,
    NOT_IN_INVENTORY,
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
    from connfix.inventory import Environment
    from connfix.pg import BouncerPool, BouncerServer, ServerInfo, Session


def usable_connections(info: ServerInfo) -> int:
    """Return the slots ordinary roles can use: max − superuser reserved − reserved."""
    return max(
        0,
        info.max_connections - info.superuser_reserved_connections - info.reserved_connections,
    )


def pool_check(env: Environment, usable: int) -> PoolCheck:
    """Check servers × pool size against the usable limit minus the buffer."""
    servers = len(env.hosts)
    workers = env.service.workers
    total = sum(host.pool_capacity(s) for host in env.hosts for s in env.services_on(host))
    buffer = env.thresholds.buffer
    limit = max(0, usable - buffer)
    # a size that stays within the limit during a rolling restart too, when max_unavailable
    # hosts hold their old and their new pool at once (connfix pool shows the full sum)
    at_once = min(env.service.max_unavailable, servers)
    recommended = limit // ((servers + at_once) * workers) if servers else 0
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


def _hosts(env: Environment, backends: list[Backend]) -> list[HostUsage]:
    by_addr = {host.client_addr: host for host in env.hosts if host.client_addr}
    groups: dict[str | None, list[Backend]] = {}
    for backend in backends:
        key = backend.client_addr if backend.visible else HIDDEN
        groups.setdefault(key, []).append(backend)
    usages = []
    for known in env.hosts:  # every inventory host, also one holding nothing
        if known.client_addr:
            groups.setdefault(known.client_addr, [])
    for addr, members in groups.items():
        host = by_addr.get(addr) if addr not in (None, HIDDEN) else None
        idle = [b for b in members if b.state == "idle"]
        iit = [b for b in members if b.idle_in_transaction]
        ages = [b.idle_seconds for b in idle + iit if b.idle_seconds is not None]
        pool: int | None = None
        capacity: int | None = None
        reasons: list[str] = []
        old_idle = 0
        owned: list[Backend] = members
        unowned: list[Backend] = []
        services: list[ServiceUsage] = []
        if host is not None:
            on_host = env.services_on(host)
            by_service: dict[str, list[Backend]] = {s.label: [] for s in on_host}
            owned = []
            for b in members:
                owner = env.owner(host, b.application_name, b.usename)
                if owner is None:
                    unowned.append(b)
                else:
                    by_service[owner.label].append(b)
                    owned.append(b)
            pool, capacity = 0, 0
            for service in on_host:
                mine = by_service[service.label]
                s_pool, s_cap = host.pool_capacity(service), host.max_capacity(service)
                s_reasons, s_old = _host_reasons(env, mine, s_pool, s_cap)
                pool, capacity = (pool or 0) + s_pool, (capacity or 0) + s_cap
                old_idle += s_old
                services.append(
                    ServiceUsage(
                        service.label, len(mine), s_pool, s_cap, bool(s_reasons), s_reasons
                    )
                )
                several = len(on_host) > 1
                reasons += [f"{service.label}: {r}" if several else r for r in s_reasons]
        if host is not None:
            name = host.name
        elif addr == HIDDEN:
            name = HIDDEN
        elif addr is None:
            name = LOCAL
        else:
            name = NOT_IN_INVENTORY
        usages.append(
            HostUsage(
                host=name,
                client_addr=None if addr == HIDDEN else addr,
                count=len(members),
                idle=len(idle),
                idle_in_transaction=len(iit),
                active=sum(1 for b in members if b.state == "active"),
                old_idle=old_idle,
                oldest_idle_seconds=max(ages) if ages else None,
                pool_size=pool,
                suspect=bool(reasons),
                reasons=reasons,
                max_capacity=capacity,
                owned=len(owned) if host is not None else 0,
                unowned=len(unowned),
                unowned_clients=dict(
                    Counter(b.application_name or "(no application_name)" for b in unowned)
                ),
                services=services,
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


def _masked(query: str | None) -> str | None:
    """Another session's query text, with any password in it masked (ALTER ROLE …)."""
    from connfix.journal import mask_passwords

    return None if query is None else mask_passwords(query)


def blocking_chains(backends: list[Backend], host_of: dict[str | None, str]) -> list[BlockingChain]:
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
                host=host_of.get(b.client_addr, NOT_IN_INVENTORY) if b else NOT_IN_INVENTORY,
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
    bouncer: tuple[list[BouncerPool], list[BouncerServer]] | str | None = None,
) -> Diagnosis:
    """Turn one snapshot of pg_stat_activity (and of PgBouncer) into the diagnosis."""
    usable = usable_connections(info)
    count = len(backends)  # connfix's own sessions included: they take slots too
    own = [b for b in backends if b.connfix]
    others = [b for b in backends if not b.connfix]
    utilization = count / usable if usable else 1.0
    severity, reasons = _severity(env, utilization, limits)
    pgbouncer = None
    if bouncer is not None:
        pgbouncer = _bouncer(bouncer, backends, usable - count)
        if pgbouncer.get("saturated"):
            reasons.append(
                f"PgBouncer pool saturated: {pgbouncer['clients_waiting']} client(s) waiting"
            )
            if severity == "ok":
                severity = "warning"
    hidden = sum(1 for b in others if not b.visible)
    # the breakdowns are of everyone else; connfix's own sessions are counted in
    # client_backends and shown apart (own_sessions, the "(connfix)" row of by_host)
    states = Counter((b.state or "unknown") if b.visible else HIDDEN_STATE for b in others)
    hosts = _hosts(env, others)
    if own:
        hosts.append(
            HostUsage(
                host=CONNFIX,
                client_addr=own[0].client_addr,
                count=len(own),
                idle=sum(1 for b in own if b.state == "idle"),
                idle_in_transaction=sum(1 for b in own if b.idle_in_transaction),
                active=sum(1 for b in own if b.state == "active"),
                old_idle=0,
                oldest_idle_seconds=None,
                pool_size=None,
                suspect=False,
                reasons=[],
            )
        )
    host_of: dict[str | None, str] = {
        u.client_addr: u.host for u in hosts if u.client_addr and u.host != CONNFIX
    }
    chains = blocking_chains(backends, host_of)
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
            IdleTransaction(
                pid=b.pid,
                usename=b.usename,
                application_name=b.application_name,
                host=host_of.get(
                    b.client_addr, LOCAL if b.client_addr is None else NOT_IN_INVENTORY
                ),
                client_addr=b.client_addr,
                state=b.state or "",
                xact_seconds=b.xact_seconds,
                idle_seconds=b.idle_seconds,
                blocking=sorted(blocking.get(b.pid, [])),
                query=_masked(b.query),
            )
            for b in iit[:TOP_IDLE_IN_TRANSACTION]
        ],
        connection_limits=limits,
        pool_check=pool_check(env, usable),
        suspects=[u.host for u in hosts if u.suspect],
        pgbouncer=pgbouncer,
        own_sessions=len(own),
        unowned_connections=sum(u.unowned for u in hosts if u.pool_size is not None),
        blocking_chains=chains,
    )


def _bouncer(
    state: tuple[list[BouncerPool], list[BouncerServer]] | str,
    backends: list[Backend],
    free: int,
) -> dict[str, Any]:
    """Tell "the pool is saturated" (clients waiting in PgBouncer) from "the database is
    full" (no free slot), joining PgBouncer's server connections to pg_stat_activity."""
    if isinstance(state, str):
        return {"error": state}
    pools, servers = state
    waiting = sum(p.cl_waiting for p in pools)
    longest = max((p.maxwait for p in pools), default=0.0)
    pids = {b.pid for b in backends}
    seen = sum(1 for s in servers if s.remote_pid in pids)
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
        "pools": [asdict(p) for p in pools],
        "clients_active": sum(p.cl_active for p in pools),
        "clients_waiting": waiting,
        "max_wait_seconds": round(longest, 3),
        "server_connections": len(servers),
        "server_connections_in_pg_stat_activity": seen,
        "saturated": saturated,
        "database_full": full,
        "verdict": verdict,
    }


def take_snapshot(session: Session, environment: str, env: Environment) -> Diagnosis:
    """Read pg_stat_activity once (autocommit: a fresh snapshot) and analyse it."""
    started = time.monotonic()
    backends = session.all("activity", Backend)
    limits = session.all("connection_limits", ConnectionLimit)
    bouncer: tuple[list[BouncerPool], list[BouncerServer]] | str | None = None
    if env.pgbouncer is not None:
        from connfix import pg
        from connfix.errors import ConnfixError

        try:
            bouncer = pg.read_pgbouncer(
                env.pgbouncer.admin_dsn,
                env.pgbouncer.admin_password_env,
                env.pgbouncer.connect_timeout,
            )
        except ConnfixError as exc:
            bouncer = str(exc)
    return analyse(
        environment,
        env,
        session.info,
        backends,
        limits,
        via=session.via,
        refusal=session.refusal,
        seconds=time.monotonic() - started,
        bouncer=bouncer,
    )


def diagnose(environment: str, env: Environment) -> Diagnosis:
    """Connect (falling back to the admin connection when full) and diagnose once."""
    from connfix import pg

    with pg.open_session(env.database) as session:
        return take_snapshot(session, environment, env)
