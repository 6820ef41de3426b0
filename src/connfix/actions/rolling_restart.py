"""`rolling_restart`: restart the app hosts over SSH, one at a time, each gated on its
service, its health check and the database before the next is touched.

Plan = the preflight of every target host, in parallel and read-only; nothing is
restarted unless every host passed it. The SSH connections the preflight opened are the
ones the roll uses.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, Field

from connfix import systemd
from connfix.actions.base import Action, Operation, Outcome, Params, Plan
from connfix.actions.verify import _between
from connfix.errors import ExitStatus
from connfix.systemd import UnitState
from connfix.units import format_duration, parse_duration

if TYPE_CHECKING:
    from connfix.engine import RunContext
    from connfix.inventory import Host, Service
    from connfix.remote import CommandResult, Remote

Gate = Annotated[float, BeforeValidator(parse_duration), _between(1, 3600)]
Pause = Annotated[float, BeforeValidator(parse_duration), _between(0, 3600)]
POLL_S = 0.1
STILL_WAITING_S = 10.0  # while a gate waits, say so this often
PREFLIGHT_FRESH_S = 10.0  # unit states read by the preflight this recently are used as is
START_MARGIN_S = 5.0  # beyond a unit's own start timeout, while systemd is still starting it
# Service types whose "active" proves nothing yet: systemd considers them started as soon
# as the process is forked/executed. They must stay up for `settle` before the next host.
NO_READINESS = frozenset({"simple", "exec", "idle"})


class RestartParams(Params):
    """Which hosts, how many at once, and how long each gate may take."""

    hosts: list[str] = Field(default_factory=list)
    only_suspects: bool = False
    batch: int = Field(default=1, ge=1, le=100)
    pause: Pause = 0.0
    active_timeout: Gate = 60.0
    health_timeout: Gate | None = None  # default: the inventory's service.health_timeout
    db_timeout: Gate = 60.0
    settle: Pause = 2.0  # how long a unit without a readiness protocol must stay up
    include_failed: bool = False  # also restart units that failed or crash-loop


@dataclass
class Preflight:
    """What the read-only preflight found on one host."""

    host: str
    ok: bool = False
    reachable: bool = False
    host_key: str = "n/a"
    unit: str = "n/a"  # LoadState/ActiveState of each unit
    main_pid: int = 0
    permitted: bool | None = False  # None: sudo cannot tell without a password
    probed: bool = False  # the restart permission was checked (the units were fine)
    detail: str = ""
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    units: list[UnitState] = field(default_factory=list)
    unit_services: dict[str, str] = field(default_factory=dict)  # unit → its service
    at: float = field(default_factory=time.monotonic)
    remote: Remote | None = field(default=None, repr=False)

    def journal(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("remote", "at", "units")}
        data["units"] = [u.__dict__ for u in self.units]
        return data


# sudo's options that take an argument (sudo 1.9), short and long
_SUDO_ARG_SHORT = frozenset("CDghpRrtTUu")
_SUDO_ARG_LONG = frozenset(
    {
        "--close-from",
        "--chdir",
        "--group",
        "--host",
        "--prompt",
        "--chroot",
        "--role",
        "--type",
        "--command-timeout",
        "--other-user",
        "--user",
    }
)
# of those, the ones that choose whom the command runs as: the probe keeps them
_SUDO_TARGET = {"u": "-u", "g": "-g", "--user": "-u", "--group": "-g"}


def permission_probe(restart_command: str) -> str:
    """Return a read-only command telling whether the restart command may run.

    For `sudo [OPTIONS] COMMAND…`: `sudo -n -l [-u USER] [-g GROUP] -- COMMAND…`, as
    the same target user and group; sudo's own options are skipped with their
    arguments (`-u USER`, `-uUSER`, `--user=USER`, `-C 3`…). Otherwise: whether the
    command exists (`command -v`)."""
    words = shlex.split(restart_command)
    if not words or words[0] != "sudo":
        return "command -v " + shlex.quote(words[0]) if words else "false"
    target: list[str] = []
    rest = words[1:]
    while rest and rest[0].startswith("-") and rest[0] != "-":
        word = rest.pop(0)
        if word == "--":
            break
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if name in _SUDO_ARG_LONG and not eq:
                value = rest.pop(0) if rest else ""
            if name in _SUDO_TARGET:
                target += [_SUDO_TARGET[name], value]
            continue
        letters = word[1:]
        for position, letter in enumerate(letters):
            if letter in _SUDO_ARG_SHORT:
                value = letters[position + 1 :] or (rest.pop(0) if rest else "")
                if letter in _SUDO_TARGET:
                    target += [_SUDO_TARGET[letter], value]
                break
    probe = ["sudo", "-n", "-l", *target, "--", *rest]
    return " ".join(shlex.quote(w) for w in probe)


def probe_verdict(result: CommandResult) -> tuple[bool | None, str]:
    """Read the permission probe: (True, "") permitted, (False, why) not permitted,
    (None, why) sudo cannot tell without a password (`listpw=always`, say)."""
    if result.ok:
        return True, ""
    output = result.output_tail
    if result.exit_code is not None and "password is required" in output:
        return None, (
            "cannot check without a password: sudo asks for one to list permissions"
            " (its listpw setting); the restart itself runs with -n and fails at once"
            " if it needs one"
        )
    return False, (
        f"the restart command is not permitted: {result.command} exited"
        f" {result.exit_code}" + (f": {output}" if output else "")
    )


def unit_refusal(unit: UnitState, include_failed: bool) -> str | None:
    """Return why the preflight refuses to restart this unit, or None.

    active: restart. failed, or a crash loop (activating/auto-restart): refused unless
    include_failed, because restarting may be the fix but the operator decides.
    activating, deactivating, reloading: refused, never restart a unit mid-transition.
    inactive: refused, someone stopped it; connfix does not start stopped services."""
    if not unit.loaded:
        return unit.verdict()
    if unit.active_state == "active":
        return None
    broken = unit.active_state == "failed" or (
        unit.active_state == "activating" and unit.sub_state == "auto-restart"
    )
    if broken:
        if include_failed:
            return None
        return unit.verdict() + "; restarting it may be the fix: rerun with --include-failed"
    if unit.active_state == "inactive":
        return unit.verdict() + " (stopped, not failed: connfix does not start it)"
    return unit.verdict() + ": wait for it to settle, then retry"


def preflight(
    host: Host,
    ctx: RunContext,
    include_failed: bool = False,
    services: list[Service] | None = None,
) -> Preflight:
    """Check one host read-only: SSH, host key, the units of its services (all of the
    host's, or these) loaded and active, the restart of each allowed."""
    from connfix import remote

    started = time.monotonic()
    result = Preflight(host.name)
    conn, result.reachable, result.host_key, error = remote.open_checked(host, ctx.env.ssh)
    result.remote = conn
    if error is not None:
        result.detail = error
        return _done(result, started)
    chosen = services if services is not None else ctx.env.services_on(host)
    if not chosen:
        result.detail = "no service of this host to restart"
        return _done(result, started)
    by_label = {s.label: s for s in chosen}
    for service in chosen:
        names, error = systemd.resolve_units(conn, service.unit_specs())
        if error is not None:
            result.detail = error if len(chosen) == 1 else f"{service.label}: {error}"
            return _done(result, started)
        for name in names:
            result.unit_services.setdefault(name, service.label)
    result.units, error = systemd.show_units(conn, list(result.unit_services))
    if error is not None:
        result.detail = error
        return _done(result, started)
    result.unit = ", ".join(
        (u.label if len(result.units) == 1 else f"{u.id} {u.label}") for u in result.units
    )
    result.main_pid = result.units[0].main_pid
    refusals = [r for u in result.units if (r := unit_refusal(u, include_failed))]
    if refusals:
        result.detail = "; ".join(refusals)
        return _done(result, started)
    result.probed, result.permitted = True, True
    for unit in result.units:
        service = by_label[result.unit_services[unit.id]]
        allowed, why = probe_verdict(conn.run(permission_probe(service.restart_argv(unit.id))))
        if allowed is False:
            result.permitted, result.detail = False, why
            return _done(result, started)
        if allowed is None:
            result.permitted = None
            result.warnings.append(why)
    result.ok = True
    result.detail = "; ".join(result.warnings) or "ok"
    return _done(result, started)


def _done(result: Preflight, started: float) -> Preflight:
    result.seconds = round(time.monotonic() - started, 3)
    return result


class RollingRestartAction(Action):
    """Restart app hosts one at a time, leak suspects first, gated on health and the DB."""

    name = "rolling_restart"
    description = "restart app hosts one batch at a time, each gated before the next"
    params_model = RestartParams
    mutating = True

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

    def plan(self, ctx: RunContext, params: Params) -> Plan:
        from connfix import remote

        assert isinstance(params, RestartParams)
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
        ctx.progress(f"preflight of {len(targets)} host(s), in parallel (read-only)")
        checks: list[Preflight] = remote.parallel(
            targets,
            lambda h: preflight(
                h, ctx, params.include_failed, self.services_to_restart(ctx, params, h)
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
        details = {
            "preflight": [c.journal() for c in checks],
            "order": [h.name for h in targets],
            "skipped_done": sorted(done_before),
        }
        failed = [c for c in checks if not c.ok]
        for check in checks:
            for warning in check.warnings:
                ctx.progress(f"{check.host}: {warning}")
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
        summary = (
            f"restart {len(targets)} host(s) in this order: "
            f"{', '.join(h.name for h in targets)} (batch {params.batch})"
        )
        if done_before:
            summary += f"; already done before: {', '.join(sorted(done_before))}"
        blocked = None
        if failed:
            blocked = "preflight failed, nothing was restarted: " + "; ".join(
                f"{c.host}: {c.detail}" for c in failed
            )
        return Plan(
            summary=summary,
            operations=operations,
            details=details,
            data={"targets": targets, "checks": {c.host: c for c in checks}},
            blocked=blocked,
            blocked_exit_status=ExitStatus.UNREACHABLE,
        )

    def apply(self, ctx: RunContext, params: Params, plan: Plan) -> Outcome:
        from connfix import remote

        assert isinstance(params, RestartParams)
        targets: list[Host] = plan.data["targets"]
        checks: dict[str, Preflight] = plan.data["checks"]
        done: list[str] = []
        batches = [targets[i : i + params.batch] for i in range(0, len(targets), params.batch)]
        started = time.monotonic()
        for number, batch in enumerate(batches, start=1):
            if ctx.interrupt.requested:
                return self._halt(ctx, targets, done, None, "interrupted", interrupted=True)
            results = remote.parallel(
                batch,
                lambda h: self._restart_one(
                    ctx, params, h, checks[h.name], targets.index(h) + 1, len(targets)
                ),
            )
            failures = [r for r in results if not r["ok"]]
            done.extend(r["host"] for r in results if r["ok"])
            if failures:
                return self._halt(ctx, targets, done, failures, "a host failed its gates")
            if params.pause and number < len(batches):
                ctx.progress(f"pause {format_duration(params.pause)} before the next host")
                if not ctx.sleep(params.pause):
                    return self._halt(ctx, targets, done, None, "interrupted", interrupted=True)
        ctx.diagnose()
        return Outcome(
            True,
            f"restarted {len(done)} host(s) in"
            f" {format_duration(time.monotonic() - started)}: {', '.join(done)}",
            {"done": done, "failed": [], "untouched": []},
            changed={"restarted": len(done)},
        )

    def _halt(
        self,
        ctx: RunContext,
        targets: list[Host],
        done: list[str],
        failures: list[dict[str, Any]] | None,
        why: str,
        interrupted: bool = False,
    ) -> Outcome:
        failed = [f["host"] for f in failures or []]
        untouched = [h.name for h in targets if h.name not in done and h.name not in failed]
        ctx.record("roll_halted", reason=why, done=done, failed=failed, untouched=untouched)
        text = f"halted ({why}): done {', '.join(done) or 'none'}"
        if failures:
            text += "; failed " + "; ".join(
                f"{f['host']} at {f['gate']}: {f['detail']}" for f in failures
            )
        text += f"; not touched {', '.join(untouched) or 'none'}"
        if not interrupted:
            ctx.diagnose()
        return Outcome(
            False,
            text,
            {"done": done, "failed": failed, "untouched": untouched},
            interrupted=interrupted,
            changed={"restarted": len(done)},
        )

    def _restart_one(
        self,
        ctx: RunContext,
        p: RestartParams,
        host: Host,
        check: Preflight,
        position: int,
        total: int,
    ) -> dict[str, Any]:
        from connfix import pg

        service = ctx.env.service
        conn = check.remote
        assert conn is not None
        label = f"host {position}/{total} {host.name}"
        started = time.monotonic()
        gates: dict[str, float] = {}
        before = {u.id: u for u in check.units}
        if time.monotonic() - check.at > PREFLIGHT_FRESH_S:  # else the preflight's is current
            fresh, error = systemd.show_units(conn, list(before))
            if error is None:
                before = {u.id: u for u in fresh}
        names = list(before)
        old_pid = before[names[0]].main_pid
        addr = host.client_addr
        of_service = {s.label: s for s in ctx.env.services_on(host)}
        restarted_services = [
            of_service[label]
            for label in dict.fromkeys(check.unit_services.get(n, service.label) for n in names)
            if label in of_service
        ] or [service]
        old_by_service: dict[str, set[pg.BackendId]] = {}
        with ctx.db_lock:
            for each in restarted_services:
                old_by_service[each.label] = (
                    pg.host_backends(ctx.session, addr, each.application_name, each.user)
                    if addr
                    else set()
                )
        old_backends = set().union(*old_by_service.values())
        ctx.record(
            "host_start",
            host=host.name,
            position=position,
            total=total,
            old_main_pid=old_pid,
            units=[
                {"unit": u.id, "main_pid": u.main_pid, "invocation_id": u.invocation_id}
                for u in before.values()
            ],
            old_backends=sorted(b.pid for b in old_backends),
        )

        reconnects_before = len(conn.reconnects)
        after: dict[str, UnitState] = {}

        def reconnects() -> dict[str, Any]:
            """The stale SSH connections reopened for this host, if any, for its entry."""
            fresh = conn.reconnects[reconnects_before:]
            if fresh:
                ctx.progress(
                    f"{label}: the SSH connection had gone stale ({fresh[0]}); reopened"
                    " before the command was sent"
                )
            return {"ssh_reconnects": fresh} if fresh else {}

        def units_entry() -> list[dict[str, Any]]:
            return [
                {
                    "unit": name,
                    "type": before[name].type,
                    "old_main_pid": before[name].main_pid,
                    "new_main_pid": after[name].main_pid if name in after else None,
                    "old_invocation_id": before[name].invocation_id,
                    "new_invocation_id": after[name].invocation_id if name in after else None,
                }
                for name in names
            ]

        def fail(gate: str, detail: str, result: CommandResult | None = None) -> dict[str, Any]:
            entry = {
                "host": host.name,
                "ok": False,
                "gate": gate,
                "detail": detail,
                "old_main_pid": old_pid,
                "units": units_entry(),
                "gates": gates,
                "seconds": round(time.monotonic() - started, 3),
                **reconnects(),
            }
            if result is not None:
                entry.update(
                    command=result.command,
                    exit_code=result.exit_code,
                    output_tail=result.output_tail,
                )
            ctx.record("host_failed", **entry)
            ctx.progress(f"{label}: FAILED at {gate}: {detail}")
            return entry

        failure: dict[str, Any] | None = None
        with ctx.slot_given_back(f"{host.name} restarts and refills its pool"):
            failure = self._restart_and_wait(
                ctx,
                p,
                host,
                conn,
                names,
                before,
                after,
                gates,
                label,
                started,
                fail,
                {n: of_service.get(check.unit_services.get(n, ""), service) for n in names},
                restarted_services,
            )
        if failure is not None:
            return failure
        new_pid = after[names[0]].main_pid

        if addr:
            mark = time.monotonic()

            def database() -> tuple[bool, str]:
                counts = []
                for each in restarted_services:
                    with ctx.db_lock:
                        now = pg.host_backends(ctx.session, addr, each.application_name, each.user)
                    who = f"{each.label}: " if len(restarted_services) > 1 else ""
                    lingering = old_by_service[each.label] & now
                    if lingering:
                        return False, f"{who}{len(lingering)} old session(s) still open"
                    capacity = host.max_capacity(each)
                    if len(now) > capacity:
                        allows = (
                            f"its pool size {capacity}"
                            if capacity == host.pool_capacity(each)
                            else f"its pool size + max_overflow {capacity}"
                        )
                        return False, f"{who}{len(now)} sessions, more than {allows}"
                    counts.append(len(now))
                return True, f"{sum(counts)} sessions"

            ok, detail = _poll(
                ctx, database, p.db_timeout, f"{label}: database (old sessions gone)"
            )
            gates["database"] = round(time.monotonic() - mark, 3)
            if not ok:
                return fail("database", f"after {format_duration(p.db_timeout)}: {detail}")
            ctx.progress(
                f"{label}: database ok: old sessions gone, {detail}"
                f" ({format_duration(time.monotonic() - started)})"
            )

        # Still the invocations the gates passed: a unit that failed (or was restarted by
        # systemd) meanwhile is caught here, before the next host is touched.
        mark = time.monotonic()
        now_units, error = systemd.show_units(conn, names)
        gates["still_active"] = round(time.monotonic() - mark, 3)
        if error is not None:
            return fail("still_active", error)
        for unit in now_units:
            if unit.active_state != "active" or unit.started_since(after[unit.id]):
                after[unit.id] = unit
                return fail("still_active", f"after the gates: {unit.verdict()}")

        entry = {
            "host": host.name,
            "ok": True,
            "old_main_pid": old_pid,
            "new_main_pid": new_pid,
            "units": units_entry(),
            "gates": gates,
            "seconds": round(time.monotonic() - started, 3),
            **reconnects(),
        }
        ctx.record("host_done", **entry)
        return entry

    def _restart_and_wait(
        self,
        ctx: RunContext,
        p: RestartParams,
        host: Host,
        conn: Remote,
        names: list[str],
        before: dict[str, UnitState],
        after: dict[str, UnitState],
        gates: dict[str, float],
        label: str,
        started: float,
        fail: Callable[..., dict[str, Any]],
        unit_service: dict[str, Service],
        services: list[Service],
    ) -> dict[str, Any] | None:
        """Restart each unit and wait for it, then the settle and health gates; return
        the failure, or None. connfix holds no privileged slot meanwhile."""
        for name in names:
            old = before[name]
            command = unit_service[name].restart_argv(name)
            unit_label = label if len(names) == 1 else f"{label} {name}"
            ctx.progress(f"{unit_label}: restarting ({command})")
            mark = time.monotonic()
            restarted = conn.run(command, timeout=restart_timeout(ctx.env.ssh.command_timeout, old))
            gates["restart"] = round(gates.get("restart", 0) + time.monotonic() - mark, 3)
            if restarted.error and restarted.error.startswith("timed out"):
                # systemd may still be starting it (a slow Type=notify service): the
                # unit's own state decides, not how long the command took
                ctx.progress(
                    f"{unit_label}: the restart command is still running after"
                    f" {format_duration(restarted.duration)}; following the unit's state"
                )
            elif not restarted.ok:
                after_fail, _ = systemd.show_units(conn, [name])
                if after_fail:
                    after[name] = after_fail[0]
                why = restarted.describe()
                if after_fail:
                    why += f"\n{after_fail[0].verdict()}"
                return fail("restart", why, restarted)

            mark = time.monotonic()
            ok, detail, state = active_gate(ctx, conn, old, p.active_timeout, unit_label)
            if state is not None:
                after[name] = state
            gates["active"] = round(gates.get("active", 0) + time.monotonic() - mark, 3)
            if not ok:
                return fail("active", detail)
            ctx.progress(
                f"{unit_label}: active as a new invocation, main pid {old.main_pid} →"
                f" {after[name].main_pid} ({format_duration(time.monotonic() - started)})"
            )

        unproven = [n for n in names if after[n].type in NO_READINESS]
        if unproven and p.settle:
            mark = time.monotonic()
            ok, detail = settle_gate(ctx, conn, [after[n] for n in unproven], p.settle, label)
            gates["settle"] = round(time.monotonic() - mark, 3)
            if not ok:
                return fail("settle", detail)

        for service in services:
            if not service.health_check:
                continue
            mark = time.monotonic()
            last: list[CommandResult] = []
            check = service.health_check

            def healthy(check: str = check, last: list[CommandResult] = last) -> tuple[bool, str]:
                result = conn.run(check, timeout=10)
                last[:] = [result]
                return result.ok, result.describe()

            timeout = p.health_timeout or service.health_timeout
            who = f" of {service.label}" if len(services) > 1 else ""
            ok, detail = _poll(ctx, healthy, timeout, f"{label}: health check{who}")
            gates["health"] = round(gates.get("health", 0) + time.monotonic() - mark, 3)
            if not ok:
                return fail(
                    "health",
                    f"health check{who} did not pass within {format_duration(timeout)}: {detail}",
                    last[0] if last else None,
                )
            ctx.progress(
                f"{label}: health check{who} passed ({format_duration(time.monotonic() - started)})"
            )
        return None


def restart_timeout(command_timeout: float, unit: UnitState) -> float:
    """Return how long a restart command may run: ssh.command_timeout, or the unit's own
    start timeout when that is longer (systemctl waits until systemd gives up)."""
    if unit.start_timeout is None:
        return command_timeout
    return max(command_timeout, unit.start_timeout + START_MARGIN_S)


def active_gate(
    ctx: RunContext, conn: Remote, old: UnitState, timeout: float, label: str
) -> tuple[bool, str, UnitState | None]:
    """Wait until the unit is active as a new invocation (not only a new main pid: pids
    are reused, and a oneshot service has none). A new invocation that ends `failed`
    fails the gate at once."""
    seen: list[UnitState] = []
    started = time.monotonic()

    def check() -> tuple[bool, str] | None:
        units, error = systemd.show_units(conn, [old.id])
        if error is not None:
            return False, error
        unit = units[0]
        seen[:] = [unit]
        if not unit.started_since(old):
            return False, (
                f"still the old invocation (InvocationID {unit.invocation_id or '-'},"
                f" MainPID {unit.main_pid}, {unit.active_state}/{unit.sub_state})"
            )
        if unit.active_state == "active":
            return True, ""
        if unit.active_state == "failed":
            return None  # final: the new invocation failed
        return False, unit.verdict()

    ok, detail = _poll(ctx, check, timeout, f"{label}: active as a new invocation")
    if ok:
        return True, "", seen[0]
    if detail == "final" and seen:
        return False, f"the new invocation failed: {seen[0].verdict()}", seen[0]
    return (
        False,
        f"not active as a new invocation after {format_duration(time.monotonic() - started)}:"
        f" {detail}",
        seen[0] if seen else None,
    )


def settle_gate(
    ctx: RunContext, conn: Remote, units: list[UnitState], settle: float, label: str
) -> tuple[bool, str]:
    """Units whose type proves nothing by being active (simple, exec) must stay up, as the
    same invocation, for `settle` seconds; one that fails meanwhile fails the gate."""
    ctx.progress(
        f"{label}: {', '.join(u.id for u in units)} (Type={units[0].type}) must stay up"
        f" {format_duration(settle)}: systemd reports such a service active as soon as it"
        " is started"
    )
    deadline = time.monotonic() + settle
    while True:
        now, error = systemd.show_units(conn, [u.id for u in units])
        if error is not None:
            return False, error
        for unit, was in zip(now, units, strict=True):
            if unit.active_state != "active" or unit.started_since(was):
                return False, f"within {format_duration(settle)} of its start: {unit.verdict()}"
        if time.monotonic() >= deadline:
            return True, ""
        if not ctx.sleep(min(POLL_S * 2, max(0.0, deadline - time.monotonic()))):
            return False, "interrupted"


def _poll(
    ctx: RunContext,
    check: Callable[[], tuple[bool, str] | None],
    timeout: float,
    waiting_for: str,
) -> tuple[bool, str]:
    """Check until it passes or the timeout; say what it waits for, and now and then why.

    A check returning None has failed for good, no point waiting: (False, "final")."""
    started = time.monotonic()
    deadline = started + timeout
    told = None
    detail = ""
    while True:
        answer = check()
        if answer is None:
            return False, "final"
        ok, detail = answer
        if ok:
            return True, detail
        now = time.monotonic()
        if now >= deadline:
            return False, detail
        if told is None or now - told >= STILL_WAITING_S:
            first = told is None
            told = now
            ctx.progress(
                f"{waiting_for}: {'waiting' if first else 'still waiting'}"
                f" ({format_duration(now - started)} of {format_duration(timeout)})"
                + (f": {detail.splitlines()[0]}" if detail else "")
            )
        if not ctx.sleep(POLL_S):
            return False, "interrupted"
