"""`rolling_restart`: restart the app hosts over SSH, one at a time, each gated on its
service, its health check and the database before the next is touched.

Plan = the preflight of every target host, in parallel and read-only; nothing is
restarted unless every host passed it. The SSH connections the preflight opened are the
ones the roll uses. Apply = the roll (`connfix.actions.restart.roll`), each host through its
gates (`connfix.actions.restart.gates`) by `connfix.actions.restart.host`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from connfix import ExitStatus
from connfix.actions.base import Action, Operation, Outcome, Params, Plan
from connfix.config.records import Rule
from connfix.config.units import between

if TYPE_CHECKING:  # the restart's machinery is imported when a roll is planned, not
    # when a runbook that names one is validated
    from connfix.actions.restart.preflight import Preflight
    from connfix.config.inventory import Host, Service
    from connfix.engine.context import RunContext

Gate = Annotated[float, between(1, 3600)]
Pause = Annotated[float, between(0, 3600)]


@dataclass(frozen=True, kw_only=True)
class RestartParams(Params):
    """Which hosts, how many at once, and how long each gate may take."""

    hosts: list[str] = field(default_factory=list)
    only_suspects: bool = False
    batch: Annotated[int, Rule(ge=1, le=100)] = 1
    pause: Pause = 0.0
    active_timeout: Gate = 60.0
    health_timeout: Gate | None = None  # default: the inventory's service.health_timeout
    db_timeout: Gate = 60.0
    settle: Pause = 2.0  # how long a unit without a readiness protocol must stay up
    include_failed: bool = False  # also restart units that failed or crash-loop


@dataclass(frozen=True)
class RollPlan:
    """What apply needs of a roll's plan: the hosts in order, and each one's preflight
    (its open SSH connection and unit states)."""

    targets: list[Host]
    checks: dict[str, Preflight]


class RollingRestartAction(Action[RestartParams, RollPlan]):
    """Restart app hosts one at a time, leak suspects first, gated on health and the DB."""

    name = "rolling_restart"
    effect_name = "restart_hosts"
    description = "restart app hosts one batch at a time, each gated before the next"
    params_model = RestartParams
    mutating = True
    waits_from_start = False  # the restart gate says when a host's restart is under way

    def targets(self, ctx: RunContext, p: RestartParams) -> list[Host]:
        """Return the hosts to restart, leakiest first.

        With only_suspects: the hosts that need it, which are the leak suspects (their
        service holds what it should not) and the hosts whose health check fails (a pool
        broken under the app); never a host for connections no service owns (pgbench,
        psql, a cron job on it): restarting its service could not free those."""
        hosts = [h for h in ctx.env.hosts if not p.hosts or h.name in p.hosts]
        over: dict[str, int] = {}
        suspects: list[str] = []
        if ctx.latest is not None:
            suspects = ctx.latest.suspects + [
                h for h in ctx.latest.unhealthy_hosts if h not in ctx.latest.suspects
            ]
            for usage in ctx.latest.by_host:
                if usage.max_capacity is not None:
                    over[usage.host] = usage.owned - usage.max_capacity
        if p.only_suspects:
            hosts = [h for h in hosts if h.name in suspects]
        order = {h.name: i for i, h in enumerate(ctx.env.hosts)}
        return sorted(
            hosts, key=lambda h: (h.name not in suspects, -over.get(h.name, 0), order[h.name])
        )

    @staticmethod
    def services_to_restart(ctx: RunContext, p: RestartParams, host: Host) -> list[Service]:
        """Return the services to restart on a host: with only_suspects, those that leak
        and those whose health check fails there; else every service the host runs."""
        on_host = ctx.env.services_on(host)
        if not p.only_suspects or ctx.latest is None:
            return on_host
        usage = next((u for u in ctx.latest.by_host if u.host == host.name), None)
        wanted = {s.service for s in usage.services if s.suspect} if usage else set()
        if host.name in ctx.latest.unhealthy_hosts:
            health = ctx.latest.host_health.get(host.name, {})
            wanted |= set(health.get("failing") or [s.label for s in on_host])
        return [s for s in on_host if s.label in wanted]

    def plan(self, ctx: RunContext, params: RestartParams) -> Plan[RollPlan]:
        """The stages: a batch the service allows, the targets (less what a resumed run
        already restarted), the alert policy's cap, the read-only preflight of every
        target, then one operation per host in order."""
        service = ctx.env.service
        if params.batch > service.max_unavailable:
            return Plan(
                summary="nothing",
                blocked=(
                    f"batch {params.batch} is more than service.max_unavailable"
                    f" {service.max_unavailable}"
                ),
                blocked_exit_status=ExitStatus.BAD_INPUT,
            )
        done_before = set(ctx.resume_done.get(self.name, []))
        targets = [h for h in self.targets(ctx, params) if h.name not in done_before]
        if not targets:
            return self._nothing_to_restart(ctx, params, done_before)
        over = self._over_cap(ctx, targets)
        if over is not None:
            return over
        checks = self._preflight(ctx, params, targets)
        failed = [c for c in checks if not c.ok]
        summary = (
            f"restart {len(targets)} host(s) in this order: "
            f"{', '.join(h.name for h in targets)} (batch {params.batch})"
        )
        if done_before:
            summary += (
                f"; left out: {', '.join(sorted(done_before))}, restarted and verified by the"
                " interrupted run this one resumes (whether or not still a suspect)"
            )
        blocked = None
        if failed:
            blocked = "preflight failed, nothing was restarted: " + "; ".join(
                f"{c.host}: {c.detail}" for c in failed
            )
        return Plan(
            summary=summary,
            operations=self._operations(ctx, params, targets, checks),
            details={
                "preflight": [c.journal() for c in checks],
                "order": [h.name for h in targets],
                "skipped_done": sorted(done_before),
            },
            data=RollPlan(targets, {c.host: c for c in checks}),
            blocked=blocked,
            blocked_exit_status=ExitStatus.UNREACHABLE,
        )

    @staticmethod
    def _nothing_to_restart(
        ctx: RunContext, params: RestartParams, done_before: set[str]
    ) -> Plan[RollPlan]:
        """No target: say why (no suspect; connections no service owns; all done)."""
        why = (
            "no leak suspect and no failing health check to restart"
            if params.only_suspects
            else "no host to restart"
        )
        if params.only_suspects and ctx.latest is not None and ctx.latest.unowned_connections:
            owners = "; ".join(
                f"{u.host}: " + ", ".join(f"{k} {v}" for k, v in u.unowned_clients.items())
                for u in ctx.latest.by_host
                if u.unowned
            )
            why += (
                f"; {ctx.latest.unowned_connections} connection(s) belong to no service"
                f" ({owners}): restarting a service cannot free them"
            )
        if done_before:
            why = f"every host was already restarted ({', '.join(sorted(done_before))})"
        return Plan(summary=why, details={"skipped_done": sorted(done_before)})

    @staticmethod
    def _over_cap(ctx: RunContext, targets: list[Host]) -> Plan[RollPlan] | None:
        """Refused when this run's restarts would pass the alert policy's max_hosts."""
        cap = ctx.max_restart_hosts
        earlier = ctx.totals.get("hosts_touched", 0)  # by this run's earlier roll steps
        if cap is None or earlier + len(targets) <= cap:
            return None
        why = (
            f"{len(targets)} host(s) to restart ({', '.join(h.name for h in targets)})"
            + (f", after {earlier} this run already restarted," if earlier else "")
            + f" is more than the alert policy allows in one run ({cap},"
            " alerts.caps.max_hosts): an operator must decide"
        )
        return Plan(summary=why, blocked=why, details={"max_hosts": cap, "earlier": earlier})

    def _preflight(
        self, ctx: RunContext, params: RestartParams, targets: list[Host]
    ) -> list[Preflight]:
        """Check every target in parallel (read-only), show the table and the warnings;
        the connections opened are closed when the run ends."""
        from connfix.actions.restart.preflight import preflight
        from connfix.hosts import remote

        ctx.progress(f"preflight of {len(targets)} host(s), in parallel (read-only)")
        checks: list[Preflight] = remote.parallel(
            targets,
            lambda h: preflight(
                h,
                ctx.env,
                params.include_failed,
                self.services_to_restart(ctx, params, h),
                ctx.remotes.get(h.name),
            ),
        )
        for check in checks:
            if check.remote is not None:
                ctx.cleanups.append(check.remote.close)
        ctx.ui.table(
            "preflight",
            [
                "host",
                "result",
                "ssh",
                "host key",
                "unit",
                "main pid",
                "restart allowed",
                "time",
                "why",
            ],
            [
                [
                    c.host,
                    "ok" if c.ok else "FAILED",
                    "ok" if c.reachable else "no",
                    c.host_key,
                    c.unit,
                    str(c.main_pid or "-"),
                    {True: "yes", False: "no", None: "unknown"}[c.permitted] if c.probed else "n/a",
                    f"{c.seconds:.2f}s",
                    "; ".join(c.warnings) if c.ok else c.detail,
                ]
                for c in checks
            ],
        )
        for check in checks:
            for warning in check.warnings:
                ctx.progress(f"{check.host}: {warning}")
        return checks

    @staticmethod
    def _operations(
        ctx: RunContext, params: RestartParams, targets: list[Host], checks: list[Preflight]
    ) -> list[Operation]:
        """One ssh operation per host, in order, each saying its batch and its gates."""
        service = ctx.env.service
        health = (
            f"health: {service.health_check}"
            if service.health_check
            else "no health check configured"
        )
        operations = []
        by_host = {c.host: c for c in checks}
        for position, host in enumerate(targets, start=1):
            batch_no = (position - 1) // params.batch + 1
            check = by_host[host.name]
            units = [u.id for u in check.units] or service.unit_specs()
            of_service = {s.label: s for s in ctx.env.services_on(host)}
            operations.append(
                Operation(
                    kind="ssh",
                    target=host.name,
                    command="; ".join(
                        of_service.get(check.unit_services.get(u, ""), service).restart_argv(u)
                        for u in units
                    ),
                    description=(
                        f"{position}/{len(targets)} (batch {batch_no}) restart {host.name}"
                        f" ({host.ssh_address}): {', '.join(units)}, each then active as a"
                        f" new invocation; then {health}, its old sessions gone"
                        f" and at most {host.max_capacity(service)} new ones"
                    ),
                    details={"host": host.name, "position": position, "batch": batch_no},
                )
            )
        return operations

    def apply(self, ctx: RunContext, params: RestartParams, plan: Plan[RollPlan]) -> Outcome:
        from connfix.actions.restart.host import GateTimeouts, restart_host
        from connfix.actions.restart.roll import roll
        from connfix.hosts import remote

        assert plan.data is not None  # a plan with operations carries its data
        targets, checks = plan.data.targets, plan.data.checks
        timeouts = GateTimeouts(
            active=params.active_timeout,
            health=params.health_timeout,
            database=params.db_timeout,
            settle=params.settle,
        )
        result = roll(
            ctx,
            targets,
            lambda h: restart_host(
                ctx, h, checks[h.name], timeouts, targets.index(h) + 1, len(targets)
            ),
            params.batch,
            params.pause,
            remote.parallel,
        )
        if not result.interrupted:
            ctx.diagnose()
        return Outcome(
            result.ok,
            result.summary(),
            {"done": result.done, "failed": result.failed, "untouched": result.untouched},
            interrupted=result.interrupted,
            # every host whose restart was sent counts against a per-run cap
            changed={
                "restarted": len(result.done),
                "hosts_touched": len(result.done) + len(result.failed),
            },
        )
