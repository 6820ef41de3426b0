"""`terminate`: end idle sessions safely, one re-checked statement per pid.

Never touched: non-client backends, connfix's own sessions, a managed platform's own
sessions, superusers, replication roles, protected users and applications, sessions
connfix cannot see, and `active` sessions unless explicitly asked. A session that changed
since it was planned is skipped, and so is one the server refuses to let connfix end
(a permission it lacks): said, never a failed run.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from connfix.actions.base import Action, Operation, Outcome, Params, Plan
from connfix.config.defaults import TERMINATE_MAX, TERMINATE_MAX_FRACTION
from connfix.config.records import Rule
from connfix.config.units import between, format_duration
from connfix.db.sessions import BY_FLAG, RUNNING

if TYPE_CHECKING:
    from connfix.config.inventory import Host
    from connfix.diagnosis.model import Backend
    from connfix.engine.context import RunContext

STATES = BY_FLAG
StateName = Literal[
    "idle", "idle_in_transaction", "idle_in_transaction_aborted", "active", "fastpath"
]
Age = Annotated[float, between(0, 7 * 86400)]
ExitTimeout = Annotated[float, between(0.1, 300)]


WAIT_EACH_MAX = 5  # plans up to this size wait on each pid (≤ 0.5 s in all, 14+)
BATCH = 250  # larger plans: this many pids per re-checking statement, one fsync each


def _default_states() -> list[StateName]:
    return ["idle_in_transaction"]


@dataclass(frozen=True, kw_only=True)
class TerminateParams(Params):
    """Which sessions to end, and how many at most."""

    states: Annotated[list[StateName], Rule(min_length=1)] = field(default_factory=_default_states)
    older_than: Age = 300.0
    max: Annotated[int, Rule(ge=1, le=100_000)] = TERMINATE_MAX
    max_fraction: Annotated[float, Rule(gt=0, le=1)] = TERMINATE_MAX_FRACTION
    until_free: Annotated[int | None, Rule(ge=1, le=100_000)] = None
    include_active: bool = False
    hosts: list[str] = field(default_factory=list)
    only_suspects: bool = False
    excess_only: bool = False
    # whose sessions: any; service (the inventory service's, by address, application name
    # and role); unowned (from an inventory host, but no service's: pgbench, psql, cron)
    owner: Literal["any", "service", "unowned"] = "any"
    exit_timeout: ExitTimeout = 5.0
    # terminate ends the session; cancel (pg_cancel_backend) only its running statement:
    # the gentler remedy for a session stuck on a long query
    signal: Literal["terminate", "cancel"] = "terminate"

    def __post_init__(self) -> None:
        if self.signal == "cancel":
            if any(s not in ("active", "fastpath") for s in self.states):
                raise ValueError(
                    "cancel ends a running statement: states must be active or fastpath"
                )
            return
        if ("active" in self.states or "fastpath" in self.states) and not self.include_active:
            raise ValueError(
                "terminating sessions that are running a statement needs"
                " include_active: true (--include-active)"
            )


def _exclusion(
    c: Backend, p: TerminateParams, ctx: RunContext, host: Host | None, wanted_states: set[str]
) -> str | None:
    """Return why a session must not be terminated, or None."""
    name = host.name if host is not None else None
    protected = ctx.env.protected
    if not c.visible:
        return "hidden (no pg_read_all_stats)"
    if c.application_name == "connfix":
        return "connfix"
    if c.usename in ctx.env.database.profile.roles:
        return f"the platform's own ({ctx.env.database.platform})"
    if c.is_superuser:
        return "superuser"
    if c.is_replication:
        return "replication role"
    if c.usename in protected.users:
        return "protected user"
    if c.application_name in protected.applications:
        return "protected application"
    if c.state in RUNNING and not p.include_active and p.signal == "terminate":
        return "active"
    if c.state not in wanted_states:
        return f"state {c.state}"
    if (c.idle_seconds or 0) < p.older_than:
        return f"younger than {format_duration(p.older_than)}"
    if p.hosts and name not in p.hosts:
        return "other host"
    owned = host is not None and ctx.env.owner(host, c.application_name, c.usename) is not None
    if p.owner == "unowned" and host is None:
        return "not from an inventory host"
    if p.owner == "unowned" and owned:
        return "the service's"
    if (p.owner == "service" or p.only_suspects) and not owned:
        return "no service's (pgbench, psql, a job…)" if host else "not from an inventory host"
    if p.only_suspects and name not in (ctx.latest.suspects if ctx.latest else []):
        return "host is not a suspect"
    return None


def _host_of(ctx: RunContext) -> dict[str | None, str]:
    if ctx.env.zero_setup:  # no inventory: the addresses as the diagnosis named them
        rows = ctx.latest.by_host if ctx.latest else []
        return {u.client_addr: u.host for u in rows if u.client_addr and u.pool_size is None}
    return {h.client_addr: h.name for h in ctx.env.hosts if h.client_addr}


@dataclass(frozen=True)
class TerminatePlan:
    """What apply needs of a terminate plan: the sessions chosen, re-checked when ended."""

    candidates: list[Backend]
    excluded: dict[str, int]  # why the others were left, and how many
    limits: dict[str, int]


def _identity(c: Backend) -> dict[str, Any]:
    """What must still hold for a planned session to be terminated: it is the same."""
    return {
        "pid": c.pid,
        "backend_start": c.backend_start,
        "state": c.state,
        "state_change": c.state_change,
    }


def _operation(c: Backend, cancel: bool, host: str | None, waiting: dict[int, int]) -> Operation:
    """One planned statement: what it ends, from where, and the re-check it carries."""
    from connfix.diagnosis.labels import app_label

    verb, function = (
        ("cancel the statement of", "pg_cancel_backend")
        if cancel
        else ("terminate", "pg_terminate_backend")
    )
    return Operation(
        kind="sql",
        description=(
            f"{verb} pid {c.pid}: {c.usename} / {app_label(c.application_name)}"
            " from " + (host or c.client_addr or "socket") + ","
            f" {c.state} for {format_duration(c.idle_seconds or 0)}"
            + (f", root blocker of {waiting[c.pid]} waiting session(s)" if c.pid in waiting else "")
        ),
        target=f"pid {c.pid}",
        command=(
            f"SELECT {function}({c.pid}) FROM pg_stat_activity"
            f" WHERE pid = {c.pid} AND backend_start = '{c.backend_start}'"
            f" AND state = '{c.state}' AND state_change = '{c.state_change}'"
        ),
        details={
            "pid": c.pid,
            "usename": c.usename,
            "application_name": c.application_name,
            "client_addr": c.client_addr,
            "host": host,
            "state": c.state,
            "idle_seconds": round(c.idle_seconds or 0, 3),
            "xact_seconds": c.xact_seconds,
            "query": c.query,
        },
    )


class TerminateAction(Action[TerminateParams, TerminatePlan]):
    """Plan which idle sessions to end; end them one re-checked statement at a time."""

    name = "terminate"
    description = "terminate idle sessions, oldest first, capped, re-checked per pid"
    params_model = TerminateParams
    mutating = True

    def effect(self, params: TerminateParams) -> str | None:
        """By the signal it sends, whatever the action is called."""
        return "cancel_queries" if params.signal == "cancel" else "end_sessions"

    def plan(self, ctx: RunContext, params: TerminateParams) -> Plan[TerminatePlan]:
        """The stages: every client backend read again, the excluded set aside (_chosen),
        root blockers first, only what is beyond each pool with --excess-only, the caps,
        then one re-checked statement per session (_operation)."""
        from connfix.diagnosis.model import Backend

        rows = [b for b in ctx.session.all("activity", Backend) if not b.own]
        host_of = _host_of(ctx)
        chosen, excluded = self._chosen(ctx, params, rows)
        # root blockers before anything: each frees every session queued behind it
        waiting = {
            c.root: len(c.waiting) for c in (ctx.latest.blocking_chains if ctx.latest else [])
        }
        chosen.sort(key=lambda c: -waiting.get(c.pid, 0))
        limits = self._limits(ctx, params, len(rows))
        if params.excess_only:
            chosen, left = self._excess(ctx, chosen, rows, host_of)
            excluded.update(left)
        cap = min(limits.values())
        if len(chosen) > cap:
            excluded[f"over the cap ({cap}: {self._binding(limits)})"] += len(chosen) - cap
            chosen = chosen[:cap]
        states = ", ".join(STATES[s] for s in params.states)
        cancel = params.signal == "cancel"
        summary = (
            f"{'cancel the statement of' if cancel else 'terminate'} {len(chosen)} session(s)"
            f" ({states}, {'running' if cancel else 'idle'} over"
            f" {format_duration(params.older_than)}), "
            + ("root blockers first, then " if any(c.pid in waiting for c in chosen) else "")
            + (
                "those beyond each host's pool, newest connected first (the pool's own"
                " connections are its oldest)"
                if params.excess_only
                else "oldest first"
            )
        )
        if excluded:
            summary += "; left alone: " + ", ".join(
                f"{n} {why}" for why, n in excluded.most_common()
            )
        # behind a pooler: whose each of PgBouncer's server connections is (latest diagnosis)
        pooled = ctx.latest.pooler_sessions if ctx.latest else {}
        return Plan(
            summary=summary,
            operations=[
                _operation(c, cancel, pooled.get(c.pid) or host_of.get(c.client_addr), waiting)
                for c in chosen
            ],
            data=TerminatePlan(chosen, dict(excluded), limits),
        )

    @staticmethod
    def _chosen(
        ctx: RunContext, params: TerminateParams, rows: list[Backend]
    ) -> tuple[list[Backend], Counter[str]]:
        """The sessions no exclusion holds back, oldest idle first; and why the others
        were left, counted."""
        hosts_at: dict[str | None, Host] = {
            h.client_addr: h for h in ctx.env.hosts if h.client_addr and not ctx.env.zero_setup
        }
        wanted: set[str] = {STATES[s] for s in params.states}
        excluded: Counter[str] = Counter()
        chosen: list[Backend] = []
        for c in rows:
            reason = _exclusion(c, params, ctx, hosts_at.get(c.client_addr), wanted)
            if reason:
                excluded[reason] += 1
            else:
                chosen.append(c)
        chosen.sort(key=lambda c: -(c.idle_seconds or 0))  # oldest idle first
        return chosen, excluded

    @staticmethod
    def _limits(ctx: RunContext, p: TerminateParams, client_backends: int) -> dict[str, int]:
        limits = {
            "max": p.max,
            "max_fraction": max(1, math.floor(p.max_fraction * client_backends)),
        }
        if p.until_free is not None and ctx.latest is not None:
            free = ctx.latest.usable_connections - ctx.latest.client_backends
            limits["until_free"] = max(0, p.until_free - free)
        return limits

    @staticmethod
    def _binding(limits: dict[str, int]) -> str:
        name = min(limits, key=lambda k: limits[k])
        return {
            "max": "--max",
            "max_fraction": "--max-fraction of client backends",
            "until_free": "enough for --until-free",
        }[name]

    @staticmethod
    def _excess(
        ctx: RunContext,
        chosen: list[Backend],
        rows: list[Backend],
        host_of: dict[str | None, str],
    ) -> tuple[list[Backend], dict[str, int]]:
        """Per inventory host, only the sessions beyond its pool: as many as it holds
        over its pool size, newest connected first (connfix.diagnosis.beyond_pool); return them in
        the plan's order, and why the others stay."""
        from connfix.diagnosis.beyond_pool import beyond_the_pool

        hosts = {h.name: h for h in ctx.env.hosts}
        env = ctx.env
        held = Counter(
            name
            for r in rows
            if r.visible
            and (name := host_of.get(r.client_addr)) is not None
            and env.owner(hosts[name], r.application_name, r.usename) is not None
        )
        per_host: dict[str, list[Backend]] = {}
        left: Counter[str] = Counter()
        for c in chosen:
            name = host_of.get(c.client_addr)
            if name is None:
                left["not from an inventory host"] += 1
            else:
                per_host.setdefault(name, []).append(c)
        keep: set[int] = set()
        for name, found in per_host.items():
            host = hosts[name]
            pool = sum(host.pool_capacity(s) for s in env.services_on(host))
            picked = beyond_the_pool(
                found,
                held=held[name],
                pool=pool,
                connected=lambda c: c.backend_start.timestamp() if c.backend_start else None,
                last_used=lambda c: c.state_change.timestamp() if c.state_change else None,
            )
            keep.update(c.pid for c in picked.chosen)
            left.update(picked.left)
        return [c for c in chosen if c.pid in keep], dict(left)

    def apply(self, ctx: RunContext, params: TerminateParams, plan: Plan[TerminatePlan]) -> Outcome:
        """The stages: the count before; each batch signalled, every pid re-checked in the
        statement (_signal); the exits confirmed together (_confirm); the count after."""
        from connfix.db import pg

        with ctx.db_lock:  # the count right before, to measure what was freed
            before = pg.client_backends(ctx.session)
        assert plan.data is not None  # a plan with operations carries its data
        candidates = plan.data.candidates
        counts: Counter[str] = Counter()
        # pg_terminate_backend(pid, timeout) (14+) confirms each exit itself, but waits in
        # 100 ms steps: used for small plans; larger ones signal every pid first and then
        # confirm the exits together with one pg_stat_activity poll every 20 ms.
        cancel = params.signal == "cancel"
        wait_ms = (
            round(params.exit_timeout * 1000)
            if ctx.session.info.server_version_num >= 140000
            and len(candidates) <= WAIT_EACH_MAX
            and not cancel
            else None
        )
        method = (
            "pg_terminate_backend(pid, timeout)"
            if wait_ms is not None
            else "signal, then pg_stat_activity poll"
        )
        done_word = "cancelled" if cancel else "terminated"
        planned = list(zip(plan.operations, candidates, strict=True))
        signalled, interrupted, stopped = _signal(ctx, planned, wait_ms, cancel, method, counts)
        _confirm(ctx, signalled, candidates, params, method, done_word, counts)
        after = ctx.diagnose()
        freed = before - after.client_backends
        summary = (
            f"{done_word} {counts[done_word]}, skipped {counts['skipped']},"
            f" failed {counts['failed']}"
        )
        if counts["not attempted"]:
            why = stopped or "interrupted"
            summary += f", not attempted {counts['not attempted']} ({why})"
        summary += (
            f"; {freed} slot(s) freed (client backends {before}"
            f" → {after.client_backends}, measured)"
        )
        return Outcome(
            ok=counts["failed"] == 0 and not interrupted and stopped is None,
            summary=summary,
            details={
                **{k: v for k, v in counts.items()},
                "slots_freed": freed,
                "client_backends_before": before,
                "client_backends_after": after.client_backends,
            },
            interrupted=interrupted,
            changed={done_word: counts[done_word]},
        )


def _signal(
    ctx: RunContext,
    planned: list[tuple[Operation, Backend]],
    wait_ms: int | None,
    cancel: bool,
    method: str,
    counts: Counter[str],
) -> tuple[dict[int, Operation], bool, str | None]:
    """Signal the planned sessions batch by batch, each statement re-checking that its
    session is the one planned, and each batch that the server's role is the planned one
    (a switchover makes it another server: nothing more is ended on it); journal what is
    already settled (skipped, failed, or confirmed by the timeout form). Return the pids
    signalled and awaiting their exit, whether a Ctrl-C stopped it, and why it stopped
    otherwise (the rest journaled as not attempted)."""
    from connfix.db import pg
    from connfix.record.events import Event

    signalled: dict[int, Operation] = {}
    size = 1 if wait_ms is not None else BATCH
    planned_role = ctx.latest.role if ctx.latest is not None else None
    for start in range(0, len(planned), size):
        batch = planned[start : start + size]
        records: list[tuple[Event, dict[str, Any]]] = []
        role = pg.role_now(ctx.session) if planned_role is not None else None
        if role != planned_role:  # a switchover since the plan: this is another server now
            reason = f"the node's role changed since the plan ({planned_role} → {role})"
            for op, _ in planned[start:]:
                records.append(
                    (Event.OPERATION, {"result": "not attempted", "reason": reason, **op.details})
                )
            counts["not attempted"] += len(planned) - start
            ctx.record_many(records)
            return signalled, False, reason
        if ctx.interrupt.requested:
            for op, _ in planned[start:]:
                records.append(
                    (Event.OPERATION, {"result": "not attempted", "reason": "interrupted",
                                       **op.details})
                )  # fmt: skip
            counts["not attempted"] += len(planned) - start
            ctx.record_many(records)
            return signalled, True, None
        identities = [_identity(c) for _, c in batch]
        if wait_ms is not None:  # one pid, waiting on its exit
            results = {
                i["pid"]: pg.terminate_if_unchanged(ctx.session, i, wait_ms) for i in identities
            }
        else:
            results = pg.terminate_batch_if_unchanged(ctx.session, identities, cancel)
        for op, c in batch:
            result, detail = results[c.pid]
            if result == "signalled":
                signalled[c.pid] = op
                continue
            counts[result] += 1
            records.append(
                (Event.OPERATION, {"result": result, "reason": detail,
                                   "confirmed_by": method, **op.details})
            )  # fmt: skip
        ctx.record_many(records)
    return signalled, False, None


def _confirm(
    ctx: RunContext,
    signalled: dict[int, Operation],
    candidates: list[Backend],
    params: TerminateParams,
    method: str,
    done_word: str,
    counts: Counter[str],
) -> None:
    """Poll until every signalled session is gone (or its statement ended, for a
    cancel), up to exit_timeout; journal each as done or failed."""
    from connfix.db import pg
    from connfix.record.events import Event

    cancel = params.signal == "cancel"
    deadline = time.monotonic() + params.exit_timeout
    by_pid = {c.pid: c for c in candidates}
    identities_of = [_identity(by_pid[pid]) for pid in signalled]

    def left(pids: set[int] | None = None) -> set[int]:
        if cancel:  # the statement ended: no longer active with that state_change
            wanted = [i for i in identities_of if pids is None or i["pid"] in pids]
            return pg.still_running(ctx.session, wanted)
        return pg.alive(ctx.session, list(signalled if pids is None else pids))

    remaining = left()
    while remaining and time.monotonic() < deadline:
        time.sleep(0.02)
        remaining = left(remaining)
    confirmed: list[tuple[Event, dict[str, Any]]] = []
    for pid, op in signalled.items():
        gone = pid not in remaining
        counts[done_word if gone else "failed"] += 1
        reason = (
            ""
            if gone
            else (f"signalled, still present after {format_duration(params.exit_timeout)}")
        )
        confirmed.append(
            (Event.OPERATION, {"result": done_word if gone else "failed",
                               "reason": reason, "confirmed_by": method, **op.details})
        )  # fmt: skip
    ctx.record_many(confirmed)


def _active_states() -> list[StateName]:
    return ["active"]


@dataclass(frozen=True, kw_only=True)
class CancelParams(TerminateParams):
    """Which running statements to cancel, and how many at most."""

    states: Annotated[list[StateName], Rule(min_length=1)] = field(default_factory=_active_states)
    signal: Literal["terminate", "cancel"] = "cancel"


class CancelAction(TerminateAction):
    """`cancel`: pg_cancel_backend for sessions stuck on a long statement — the session
    stays, its statement (and its transaction) ends. Same choice, caps, re-checks and
    journal as terminate."""

    name = "cancel"
    description = "cancel long-running statements, oldest first, capped, re-checked per pid"
    params_model = CancelParams
