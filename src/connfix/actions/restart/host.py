"""One host of a rolling restart: its units restarted one after the other, each gate
passed in order (see `gates`), and what happened as a `HostOutcome`."""

from __future__ import annotations

import dataclasses
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from connfix.actions.restart import gates
from connfix.actions.restart.gates import GateContext, GateResult
from connfix.config.units import format_duration
from connfix.hosts import systemd
from connfix.record import events
from connfix.record.events import Event, HostOutcomeFields

if TYPE_CHECKING:
    from connfix.actions.restart.preflight import Preflight
    from connfix.config.inventory import Environment, Host, Service
    from connfix.db.pg import BackendId
    from connfix.hosts.remote import Remote
    from connfix.hosts.systemd import UnitState

PREFLIGHT_FRESH_S = 10.0  # unit states read by the preflight this recently are used as is


class RollContext(GateContext, Protocol):
    """What a host's restart needs of the run (the engine's RunContext is one)."""

    env: Environment

    def record(self, event: Event, **fields: Any) -> None: ...

    def slot_given_back(self, why: str) -> AbstractContextManager[None]: ...

    def backends(self, addr: str, service: Service) -> set[BackendId]: ...


@dataclass(frozen=True)
class GateTimeouts:
    """How long each waiting gate may take (the runbook step's parameters)."""

    active: float = 60.0
    health: float | None = None  # None: each service's own health_timeout
    database: float = 60.0
    settle: float = 2.0


@dataclass
class HostOutcome:
    """How one host's restart ended: done, or failed at a named gate."""

    host: str
    ok: bool
    old_main_pid: int
    units: list[events.UnitChange]  # as journaled
    gates: dict[str, float]  # seconds spent in each gate
    seconds: float
    new_main_pid: int | None = None
    gate: str | None = None  # the gate that failed
    detail: str = ""
    ssh_reconnects: list[str] = field(default_factory=list)
    command: str | None = None  # the command that failed the gate, if one did
    exit_code: int | None = None
    output_tail: str | None = None
    log_tail: str | None = None  # a failed unit's last log lines (journalctl)
    healed: str | None = None  # a failed start the unit's Restart= policy healed

    def journal(self) -> HostOutcomeFields:
        """The fields of the host's `host_done` / `host_failed` event."""
        entry = HostOutcomeFields(
            host=self.host,
            ok=self.ok,
            old_main_pid=self.old_main_pid,
            units=self.units,
            gates=self.gates,
            seconds=self.seconds,
        )
        if self.ok:
            entry["new_main_pid"] = self.new_main_pid
        else:
            entry["gate"], entry["detail"] = self.gate, self.detail
        if self.ssh_reconnects:
            entry["ssh_reconnects"] = self.ssh_reconnects
        if self.command is not None:
            entry["command"] = self.command
            entry["exit_code"] = self.exit_code
            entry["output_tail"] = self.output_tail
        if self.log_tail is not None:
            entry["log_tail"] = self.log_tail
        if self.healed is not None:
            entry["healed"] = self.healed
        return entry


class _HostRun:
    """The state of one host's restart while its gates run."""

    def __init__(
        self,
        ctx: RollContext,
        host: Host,
        check: Preflight,
        conn: Remote,
        label: str,
    ) -> None:
        self.ctx, self.host, self.check, self.conn, self.label = ctx, host, check, conn, label
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}
        self.before: dict[str, UnitState] = {u.id: u for u in check.units}
        self.after: dict[str, UnitState] = {}
        self.reconnects_before = len(conn.reconnects)
        self.healed: list[str] = []  # units whose failed start their Restart= policy healed
        self.failed_unit: str | None = None

    def timed(self, gate: str, result: GateResult, mark: float) -> GateResult:
        self.timings[gate] = round(self.timings.get(gate, 0) + time.monotonic() - mark, 3)
        if result.unit is not None:
            self.after[result.unit.id] = result.unit
        return result

    def elapsed(self) -> str:
        return format_duration(time.monotonic() - self.started)

    def outcome(self, failed: str | None = None, gate: GateResult | None = None) -> HostOutcome:
        names = list(self.before)
        fresh = self.conn.reconnects[self.reconnects_before :]
        if fresh:
            self.ctx.progress(
                f"{self.label}: the SSH connection had gone stale ({fresh[0]}); reopened"
                " before the command was sent"
            )
        done = HostOutcome(
            host=self.host.name,
            ok=failed is None,
            old_main_pid=self.before[names[0]].main_pid,
            units=[
                events.UnitChange(
                    unit=n,
                    type=self.before[n].type,
                    old_main_pid=self.before[n].main_pid,
                    old_invocation_id=self.before[n].invocation_id,
                    new_main_pid=self.after[n].main_pid if n in self.after else None,
                    new_invocation_id=self.after[n].invocation_id if n in self.after else None,
                )
                for n in names
            ],
            gates=self.timings,
            seconds=round(time.monotonic() - self.started, 3),
            ssh_reconnects=list(fresh),
        )
        if failed is None:
            done.new_main_pid = self.after[names[0]].main_pid
            done.healed = "; ".join(self.healed) or None
            self.ctx.record(Event.HOST_DONE, **done.journal())
            return done
        assert gate is not None
        done.gate, done.detail = failed, gate.detail
        if gate.result is not None and failed in ("restart", "active", "health"):
            done.command = gate.result.command
            done.exit_code = gate.result.exit_code
            done.output_tail = gate.result.output_tail
        if failed != "database":  # the unit's own words: its last log lines
            unit = self.failed_unit or (gate.unit.id if gate.unit else names[0])
            done.log_tail = systemd.log_tail(self.conn, unit)
        self.ctx.record(Event.HOST_FAILED, **done.journal())
        self.ctx.progress(f"{self.label}: FAILED at {failed}: {gate.detail}")
        if done.log_tail:
            self.ctx.progress(f"{self.label}: its last log lines:\n{done.log_tail}")
        return done


def restart_host(
    ctx: RollContext,
    host: Host,
    check: Preflight,
    timeouts: GateTimeouts,
    position: int,
    total: int,
) -> HostOutcome:
    """Restart one host's units and pass its gates in order; journal and return how it
    ended. The preflight `check` brings the host's open connection and unit states."""
    conn = check.remote
    assert conn is not None
    run = _HostRun(ctx, host, check, conn, f"host {position}/{total} {host.name}")
    if time.monotonic() - check.at > PREFLIGHT_FRESH_S:  # else the preflight's is current
        fresh, error = systemd.show_units(conn, list(run.before))
        if error is None:
            run.before = {u.id: u for u in fresh}
    names = list(run.before)
    service = ctx.env.service
    of_service = {s.label: s for s in ctx.env.services_on(host)}
    unit_service = {n: of_service.get(check.unit_services.get(n, ""), service) for n in names}
    services = [
        of_service[label]
        for label in dict.fromkeys(check.unit_services.get(n, service.label) for n in names)
        if label in of_service
    ] or [service]
    addr = host.client_addr
    old = {s.label: ctx.backends(addr, s) if addr else set() for s in services}
    ctx.record(
        Event.HOST_START,
        host=host.name,
        position=position,
        total=total,
        old_main_pid=run.before[names[0]].main_pid,
        units=[
            {"unit": u.id, "main_pid": u.main_pid, "invocation_id": u.invocation_id}
            for u in run.before.values()
        ],
        old_backends=sorted(b.pid for b in set().union(*old.values())),
    )
    with ctx.slot_given_back(f"{host.name} restarts and refills its pool"):
        failed = _restart_and_check(run, timeouts, names, unit_service, services)
    if failed is not None:
        return run.outcome(*failed)
    if addr:
        mark = time.monotonic()
        result = run.timed(
            "database",
            gates.database_gate(
                ctx,
                lambda s: ctx.backends(addr, s),
                host,
                services,
                old,
                timeouts.database,
                run.label,
            ),
            mark,
        )
        if not result.ok:
            return run.outcome("database", result)
        ctx.progress(
            f"{run.label}: database ok: old sessions gone, {result.detail} ({run.elapsed()})"
        )
    mark = time.monotonic()
    passed = {n: run.after[n] for n in names}
    result = run.timed("still_active", gates.still_active_gate(conn, passed), mark)
    if not result.ok:
        return run.outcome("still_active", result)
    return run.outcome()


def _restart_and_check(
    run: _HostRun,
    timeouts: GateTimeouts,
    names: list[str],
    unit_service: dict[str, Service],
    services: list[Service],
) -> tuple[str, GateResult] | None:
    """The gates passed while connfix holds no privileged slot: each unit's restart and
    active gates, then settle and health. Return the failed gate and its result, or None."""
    ctx, conn = run.ctx, run.conn
    for name in names:
        old = run.before[name]
        label = run.label if len(names) == 1 else f"{run.label} {name}"
        mark = time.monotonic()
        command = unit_service[name].restart_argv(name)
        result = run.timed(
            "restart",
            gates.restart_gate(ctx, conn, command, old, ctx.env.ssh.command_timeout, label),
            mark,
        )
        run.failed_unit = name
        if not result.ok:
            return "restart", result
        healing = result.unit if result.healing else None
        healing_text, restarted = result.healing, result.result
        mark = time.monotonic()
        result = run.timed(
            "active",
            gates.active_gate(ctx, conn, old, timeouts.active, label, healing_from=healing),
            mark,
        )
        if not result.ok:
            if healing is not None:  # it did not heal: the failed restart is the cause
                result = dataclasses.replace(result, result=restarted)
            return "active", result
        if healing is not None:
            now = run.after[name]
            run.healed.append(
                f"{name}: {healing_text}; healed: active as a new invocation after"
                f" {max(1, now.restarts - healing.restarts)} automatic restart(s)"
                f" (NRestarts {now.restarts})"
            )
            ctx.progress(f"{label}: healed by its Restart= policy ({run.elapsed()})")
        ctx.progress(
            f"{label}: active as a new invocation, main pid {old.main_pid} →"
            f" {run.after[name].main_pid} ({run.elapsed()})"
        )
    unproven = [run.after[n] for n in names if run.after[n].type in gates.NO_READINESS]
    if unproven and timeouts.settle:
        mark = time.monotonic()
        result = run.timed(
            "settle", gates.settle_gate(ctx, conn, unproven, timeouts.settle, run.label), mark
        )
        if not result.ok:
            return "settle", result
    run.failed_unit = None
    for service in services:
        if not service.health_check:
            continue
        who = f" of {service.label}" if len(services) > 1 else ""
        timeout = timeouts.health or service.health_timeout
        mark = time.monotonic()
        result = run.timed(
            "health",
            gates.health_gate(ctx, conn, service.health_check, timeout, run.label, who),
            mark,
        )
        if not result.ok:
            return "health", result
        ctx.progress(f"{run.label}: health check{who} passed ({run.elapsed()})")
    return None
