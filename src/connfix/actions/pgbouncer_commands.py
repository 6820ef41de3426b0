"""PgBouncer remedies, sent to each PgBouncer's admin console.

`pgbouncer_kill_clients`: KILL_CLIENT (PgBouncer ≥ 1.24) for a leaking host's client
connections that sit idle in the pooler beyond its pool. Only clients that hold no server
connection are ended (one in a transaction holds a server connection: the terminate step
ends that backend, and PgBouncer then closes the client); only the host's service's;
never protected users or applications, never connfix's own. Which of a host's idle
clients are beyond its pool — the leaked ones, not the pool's own, which a quiet app
leaves idle longest — is `connfix.diagnosis.beyond_pool`'s rule: newest connected first. Each
client is re-read just before it is ended and skipped if it changed (used since, or
given a server). On an older PgBouncer the step is refused with what that version
offers instead.

`pgbouncer_reconnect`: RECONNECT a database's pool: its server connections are closed
once released and opened afresh (after a failover; or to hand back the idle server
connections a pooler keeps for server_idle_timeout). Clients are not disconnected.

`pgbouncer_pause` / `pgbouncer_resume`: PAUSE a database (new clients wait; returns once
every server connection is released) around a maintenance step, and RESUME it. A PAUSE
that is not released in `timeout` is undone at once (RESUME); a run that ends while a
database it paused is still paused resumes it on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from connfix.actions.base import Action, Operation, Outcome, Params, Plan
from connfix.config.records import Rule
from connfix.config.units import between, format_duration

if TYPE_CHECKING:
    from connfix.config.inventory import Environment, Host, PgBouncerAccess
    from connfix.db.pgbouncer_console import BouncerClient, BouncerState
    from connfix.engine.context import RunContext

Age = Annotated[float, between(0, 7 * 86400)]
PauseTimeout = Annotated[float, between(1, 600)]
OLDER_VERSIONS = (
    "KILL_CLIENT came with PgBouncer 1.24. What this version offers instead: a client in"
    " a transaction holds a server connection, and ending that backend (the terminate"
    " step for sessions idle in transaction) makes PgBouncer close the client; an idle"
    " client holds no database slot, and restarting its host frees it (the rolling"
    " restart). connfix never sends KILL <db>: it drops every client of every host"
)


def _accesses(env: Environment, names: list[str]) -> list[PgBouncerAccess]:
    return [b for b in env.pgbouncers if not names or b.name in names]


def _unknown(env: Environment, names: list[str]) -> str | None:
    known = {b.name for b in env.pgbouncers}
    missing = sorted(set(names) - known)
    if not env.pgbouncers:
        return "the environment has no PgBouncer (pgbouncers: in the inventory)"
    if missing:
        return f"no PgBouncer named {', '.join(missing)} (known: {', '.join(sorted(known))})"
    return None


def _read(access: PgBouncerAccess) -> BouncerState:
    from connfix.db import pgbouncer_console

    return pgbouncer_console.read(access)


def _command(access: PgBouncerAccess, statement: str) -> str | None:
    """Send one admin command; return the error, if any."""
    from connfix import ConnfixError
    from connfix.db import pgbouncer_console

    try:
        pgbouncer_console.command(access, statement)
    except ConnfixError as exc:
        return str(exc)
    return None


def _send(ctx: RunContext, access: PgBouncerAccess, statement: str, **about: Any) -> str | None:
    """Send one admin command and journal it (with `about`: whom it is for); return the
    error, if any."""
    from connfix.record.events import Event, PoolerOperation

    error = _command(access, statement)
    fields = PoolerOperation(**{**about, "pgbouncer": access.name, "command": statement})  # type: ignore[typeddict-item]
    if error:
        fields["error"] = error
    else:
        fields["ok"] = True
    ctx.record(Event.OPERATION, **fields)
    return error


# --- KILL_CLIENT ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class KillClientsParams(Params):
    """Whose idle client connections to end, through which PgBouncers."""

    pgbouncers: list[str] = field(default_factory=list)  # default: every one
    hosts: list[str] = field(default_factory=list)  # default: the leak suspects
    older_than: Age = 60.0  # idle in the pooler at least this long
    excess_only: bool = True  # keep as many as the host's pool keeps (pool size × workers)
    max: Annotated[int, Rule(ge=1, le=10_000)] = 200


@dataclass(frozen=True)
class ClientChoice:
    """One client chosen, as it was when planned (re-checked before it is ended)."""

    pgbouncer: str
    host: str
    client: BouncerClient
    idle: float  # seconds since its last request, when chosen


@dataclass(frozen=True)
class KillPlan:
    chosen: list[ClientChoice]


def _clock(epoch: float | None) -> str:
    """An epoch time as HH:MM:SS UTC, as PgBouncer shows it (to the second)."""
    from datetime import UTC, datetime

    if epoch is None:
        return "?"
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S UTC")


def _client_identity(c: ClientChoice) -> dict[str, Any]:
    return {
        "pgbouncer": c.pgbouncer,
        "host": c.host,
        "client_id": c.client.id,
        "addr": c.client.addr,
        "port": c.client.port,
        "user": c.client.user,
        "application_name": c.client.application_name,
    }


class KillClientsAction(Action[KillClientsParams, KillPlan]):
    name = "pgbouncer_kill_clients"
    effect_name = "kill_pooler_clients"
    description = "end a leaking host's idle client connections in PgBouncer (KILL_CLIENT, ≥ 1.24)"
    params_model = KillClientsParams
    mutating = True

    def plan(self, ctx: RunContext, params: KillClientsParams) -> Plan[KillPlan]:
        from connfix.diagnosis.labels import app_label

        env = ctx.env
        refused = _unknown(env, params.pgbouncers)
        if refused:
            return Plan(summary=refused, blocked=refused)
        wanted = params.hosts or (ctx.latest.suspects if ctx.latest else [])
        targets = {h.client_addr: h for h in env.hosts if h.name in wanted and h.client_addr}
        if not targets:
            return Plan(summary="no host to act on (no leak suspect)", data=KillPlan([]))
        states = [_read(a) for a in _accesses(env, params.pgbouncers)]
        unreadable = [s.error for s in states if s.error]
        if unreadable:
            return Plan(
                summary="; ".join(filter(None, unreadable)),
                blocked="; ".join(filter(None, unreadable)),
            )
        old = [s for s in states if not s.has_kill_client]
        if old:
            versions = ", ".join(f"{s.name} is {s.version or 'of an unknown version'}" for s in old)
            why = f"PgBouncer {versions}. {OLDER_VERSIONS}"
            return Plan(summary=why, blocked=why, details={"refused": "version"})
        chosen, excluded = self._choose(ctx, params, states, targets)
        operations = [
            Operation(
                "pgbouncer",
                f"end {c.host}'s client {c.client.addr}:{c.client.port}"
                f" ({c.client.user}, {app_label(c.client.application_name)},"
                f" connected {_clock(c.client.connect_time)}, idle {format_duration(c.idle)})",
                target=c.pgbouncer,
                command=f"KILL_CLIENT {c.client.id}",
                details=_client_identity(c),
            )
            for c in chosen
        ]
        hosts = sorted({c.host for c in chosen})
        summary = (
            f"end {len(chosen)} idle client connection(s) of {', '.join(hosts)} in PgBouncer"
            + (
                ", newest connected first (a pool's own are its oldest)"
                if params.excess_only
                else ""
            )
            if chosen
            else "no idle client connection to end"
        )
        if excluded:
            summary += "; left alone: " + ", ".join(
                f"{n} {why}" for why, n in sorted(excluded.items(), key=lambda kv: -kv[1])
            )
        return Plan(
            summary=summary,
            operations=operations,
            data=KillPlan(chosen),
            details={"excluded": excluded},
        )

    @staticmethod
    def _choose(
        ctx: RunContext,
        params: KillClientsParams,
        states: list[BouncerState],
        targets: dict[str, Host],
    ) -> tuple[list[ClientChoice], dict[str, int]]:
        from connfix.diagnosis.beyond_pool import beyond_the_pool

        env, protected = ctx.env, ctx.env.protected
        excluded: dict[str, int] = {}
        per_host: dict[str, list[ClientChoice]] = {}

        def skip(why: str) -> None:
            excluded[why] = excluded.get(why, 0) + 1

        for state in states:
            for client in state.clients:
                host = targets.get(client.addr or "")
                if host is None:
                    continue
                idle = client.idle_seconds(state.read_at)
                if client.application_name == "connfix":
                    skip("connfix")
                elif client.user in protected.users:
                    skip("protected user")
                elif client.application_name in protected.applications:
                    skip("protected application")
                elif env.owner(host, client.application_name, client.user) is None:
                    skip("no service's")
                elif not client.idle_in_pool:
                    skip("holds a server connection, or waits for one")
                elif client.id is None:
                    skip("no client id")
                elif idle is None or idle < params.older_than:
                    skip(f"idle less than {format_duration(params.older_than)}")
                else:
                    per_host.setdefault(host.name, []).append(
                        ClientChoice(state.name, host.name, client, idle)
                    )
        chosen: list[ClientChoice] = []
        by_name = {h.name: h for h in env.hosts}
        rows = {u.host: u for u in (ctx.latest.by_host if ctx.latest else [])}
        for name, found in per_host.items():
            if not params.excess_only:
                found.sort(key=lambda c: -c.idle)  # oldest idle first
                chosen += found
                continue
            host = by_name[name]
            row = rows.get(name)
            direct = max(0, row.owned - row.pooled) if row else 0
            in_pooler = sum(  # the host's services' clients (a psql or a job is not theirs)
                1
                for s in states
                for c in s.clients
                if c.addr == host.client_addr
                and env.owner(host, c.application_name, c.user) is not None
            )
            picked = beyond_the_pool(
                found,
                held=in_pooler + direct,
                pool=sum(host.pool_capacity(s) for s in env.services_on(host)),
                connected=lambda c: c.client.connect_time,
                last_used=lambda c: c.client.request_time,
            )
            chosen += picked.chosen
            for why, n in picked.left.items():
                excluded[why] = excluded.get(why, 0) + n
        if len(chosen) > params.max:
            excluded[f"over max {params.max}"] = len(chosen) - params.max
            chosen = chosen[: params.max]
        return chosen, excluded

    def apply(self, ctx: RunContext, params: KillClientsParams, plan: Plan[KillPlan]) -> Outcome:
        from connfix.record.events import Event

        assert plan.data is not None
        accesses = {a.name: a for a in ctx.env.pgbouncers}
        fresh = {name: _read(accesses[name]) for name in {c.pgbouncer for c in plan.data.chosen}}
        ended, skipped, failed = 0, 0, 0
        for choice in plan.data.chosen:
            if ctx.interrupted:
                return Outcome(
                    False,
                    f"interrupted after {ended} client(s)",
                    interrupted=True,
                    changed={"pgbouncer_clients_killed": ended},
                )
            now = {c.id: c for c in fresh[choice.pgbouncer].clients}.get(choice.client.id)
            before = choice.client
            same = (
                now is not None
                and (now.addr, now.port, now.connect_time)
                == (before.addr, before.port, before.connect_time)
                and now.request_time == before.request_time
                and now.idle_in_pool
            )
            if not same:
                skipped += 1
                ctx.record(
                    Event.OPERATION,
                    **_client_identity(choice),
                    skipped="changed since planned (used, given a server, or gone)",
                )
                continue
            error = _send(
                ctx,
                accesses[choice.pgbouncer],
                f"KILL_CLIENT {choice.client.id}",
                **_client_identity(choice),
                idle_seconds=round(choice.idle, 3),
            )
            if error:
                failed += 1
            else:
                ended += 1
        summary = f"ended {ended} client connection(s); skipped {skipped}, failed {failed}"
        return Outcome(
            failed == 0,
            summary,
            {"ended": ended, "skipped": skipped, "failed": failed},
            changed={"pgbouncer_clients_killed": ended},
        )


# --- RECONNECT, PAUSE, RESUME ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PoolParams(Params):
    """Which database's pool, in which PgBouncers."""

    pgbouncers: list[str] = field(default_factory=list)  # default: every one
    database: str | None = None  # default: the environment's database


@dataclass(frozen=True, kw_only=True)
class PauseParams(PoolParams):
    timeout: PauseTimeout = 30.0  # undone (RESUME) if not paused by then


def _database(ctx: RunContext, params: PoolParams) -> str:
    from connfix.config.dsn import parse_dsn

    if params.database:
        return params.database
    return parse_dsn(ctx.env.database.dsn).get("dbname", "postgres")


def _ident(name: str) -> str:
    """PgBouncer's admin commands take a bare database name; quote it as an identifier."""
    return '"' + name.replace('"', '""') + '"'


PP = TypeVar("PP", bound=PoolParams)


class _PoolCommand(Action[PP, None]):
    verb: str = ""
    mutating = True
    effect_name = "pooler_pools"
    params_model = PoolParams

    def caveat(self, params: PP) -> str:
        """What the summary adds after `VERB db in PgBouncer …`."""
        return ""

    def plan(self, ctx: RunContext, params: PP) -> Plan[None]:
        refused = _unknown(ctx.env, params.pgbouncers)
        if refused:
            return Plan(summary=refused, blocked=refused)
        db = _database(ctx, params)
        targets = _accesses(ctx.env, params.pgbouncers)
        return Plan(
            summary=f"{self.verb} {db} in PgBouncer {', '.join(a.name for a in targets)}"
            + self.caveat(params),
            operations=[
                Operation("pgbouncer", self.description, a.name, f"{self.verb} {_ident(db)}")
                for a in targets
            ],
        )

    def apply(self, ctx: RunContext, params: PP, plan: Plan[None]) -> Outcome:
        accesses = {a.name: a for a in ctx.env.pgbouncers}
        errors = [
            e
            for op in plan.operations
            if (e := _send(ctx, accesses[op.target or ""], op.command or ""))
        ]
        if errors:
            return Outcome(False, "; ".join(errors))
        return Outcome(True, plan.summary)


class ReconnectAction(_PoolCommand[PoolParams]):
    name = "pgbouncer_reconnect"
    verb = "RECONNECT"
    description = "close a pool's server connections once released; clients stay connected"


class ResumeAction(_PoolCommand[PoolParams]):
    name = "pgbouncer_resume"
    verb = "RESUME"
    description = "let a paused pool's clients through again"


class PauseAction(_PoolCommand[PauseParams]):
    name = "pgbouncer_pause"
    verb = "PAUSE"
    description = "pause a pool: new clients wait; returns once every server connection is released"
    params_model = PauseParams

    def caveat(self, params: PauseParams) -> str:
        return (
            f" (RESUME at once if not paused within {format_duration(params.timeout)}, and"
            " when the run ends)"
        )

    def apply(self, ctx: RunContext, params: PauseParams, plan: Plan[None]) -> Outcome:
        import threading

        from connfix.record.events import Event, PoolerOperation

        accesses = {a.name: a for a in ctx.env.pgbouncers}
        paused: list[str] = []
        db = _ident(_database(ctx, params))
        for op in plan.operations:
            access = accesses[op.target or ""]
            result: list[str | None] = []
            # the command alone runs in the thread: if PAUSE outlives its timeout, its
            # late answer is dropped, never journaled after the step (or the run) ended
            sender = threading.Thread(
                target=lambda a=access, out=result: out.append(_command(a, f"PAUSE {db}")),
                daemon=True,
            )
            sender.start()
            sender.join(params.timeout)
            late = sender.is_alive()
            why = (
                f"PAUSE did not complete within {format_duration(params.timeout)}: a client"
                " holds a server connection (a transaction left open?)"
                if late
                else result[0]
            )
            fields = PoolerOperation(pgbouncer=access.name, command=f"PAUSE {db}")
            if why:
                ctx.record(Event.OPERATION, **fields, error=why)
                for name in [*paused, access.name]:
                    _send(ctx, accesses[name], f"RESUME {db}")
                return Outcome(False, f"PgBouncer {access.name}: {why}; resumed")
            ctx.record(Event.OPERATION, **fields, ok=True)
            paused.append(access.name)

            def resume(a: PgBouncerAccess = access, name: str = _database(ctx, params)) -> None:
                from connfix.db import pgbouncer_console

                # the run ends with the database still paused (no resume step ran, or it
                # failed, or Ctrl-C): never leave a pool paused behind
                if pgbouncer_console.paused(a, name):
                    _send(ctx, a, f"RESUME {db}")

            ctx.cleanups.append(resume)
        return Outcome(True, plan.summary, {"paused": paused})
