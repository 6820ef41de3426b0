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

from connfix.actions.base import Action, Operation, Outcome, Params, Plan
from connfix.actions.verify import _between
from connfix.errors import ExitStatus
from connfix.units import format_duration, parse_duration

if TYPE_CHECKING:
    from connfix.engine import RunContext
    from connfix.inventory import Host
    from connfix.remote import CommandResult, Remote

Gate = Annotated[float, BeforeValidator(parse_duration), _between(1, 3600)]
Pause = Annotated[float, BeforeValidator(parse_duration), _between(0, 3600)]
POLL_S = 0.1
STILL_WAITING_S = 10.0  # while a gate waits, say so this often
PREFLIGHT_FRESH_S = 10.0  # a main pid read by the preflight this recently is used as is


class RestartParams(Params):
    """Which hosts, how many at once, and how long each gate may take."""

    hosts: list[str] = Field(default_factory=list)
    only_suspects: bool = False
    batch: int = Field(default=1, ge=1, le=100)
    pause: Pause = 0.0
    active_timeout: Gate = 60.0
    health_timeout: Gate | None = None  # default: the inventory's service.health_timeout
    db_timeout: Gate = 60.0


@dataclass
class Preflight:
    """What the read-only preflight found on one host."""

    host: str
    ok: bool = False
    reachable: bool = False
    host_key: str = "n/a"
    unit: str = "n/a"  # LoadState/ActiveState
    main_pid: int = 0
    permitted: bool = False
    probed: bool = False  # the restart permission was checked (the unit was fine)
    detail: str = ""
    seconds: float = 0.0
    at: float = field(default_factory=time.monotonic)
    remote: Remote | None = field(default=None, repr=False)

    def journal(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("remote", "at")}


def _show(unit: str) -> str:
    return f"systemctl show -p LoadState -p ActiveState -p MainPID --value {shlex.quote(unit)}"


def permission_probe(restart_command: str) -> str:
    """Return a read-only command telling whether the restart command may run."""
    words = shlex.split(restart_command)
    if words and words[0] == "sudo":
        rest = words[1:]
        while rest and rest[0].startswith("-"):
            rest = rest[1:]  # sudo's own options (-n, -E, …)
        return "sudo -n -l -- " + " ".join(shlex.quote(w) for w in rest)
    return "command -v " + shlex.quote(words[0]) if words else "false"


def preflight(host: Host, ctx: RunContext) -> Preflight:
    """Check one host read-only: SSH, host key, unit loaded and active, restart allowed."""
    from connfix import remote

    started = time.monotonic()
    result = Preflight(host.name)
    conn, result.reachable, result.host_key, error = remote.open_checked(host, ctx.env.ssh)
    result.remote = conn
    if error is not None:
        result.detail = error
        return _done(result, started)
    service = ctx.env.service
    shown = conn.run(_show(service.unit))
    values = shown.stdout.split()
    if not shown.ok or len(values) != 3:
        result.detail = shown.describe()
        return _done(result, started)
    load, active, pid = values
    result.unit = f"{load}/{active}"
    result.main_pid = int(pid) if pid.isdigit() else 0
    if load != "loaded":
        result.detail = f"service {service.unit} not found (LoadState={load})"
        return _done(result, started)
    if active != "active":
        result.detail = f"service {service.unit} is {active}, not active"
        return _done(result, started)
    probe = conn.run(permission_probe(service.restart_argv()))
    result.probed, result.permitted = True, probe.ok
    if not probe.ok:
        result.detail = (
            f"the restart command is not permitted: {probe.command} exited"
            f" {probe.exit_code}" + (f": {probe.output_tail}" if probe.output_tail else "")
        )
        return _done(result, started)
    result.ok, result.detail = True, "ok"
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
        """Return the hosts to restart, leakiest first."""
        hosts = [h for h in ctx.env.hosts if not p.hosts or h.name in p.hosts]
        over: dict[str, int] = {}
        suspects: list[str] = []
        if ctx.latest is not None:
            suspects = ctx.latest.suspects
            for usage in ctx.latest.by_host:
                if usage.pool_size is not None:
                    over[usage.host] = usage.count - usage.pool_size
        if p.only_suspects:
            hosts = [h for h in hosts if h.name in suspects]
        order = {h.name: i for i, h in enumerate(ctx.env.hosts)}
        return sorted(
            hosts, key=lambda h: (h.name not in suspects, -over.get(h.name, 0), order[h.name])
        )

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
            why = "no leak suspect to restart" if params.only_suspects else "no host to restart"
            if done_before:
                why = f"every host was already restarted ({', '.join(sorted(done_before))})"
            return Plan(summary=why, details={"skipped_done": sorted(done_before)})
        ctx.progress(f"preflight of {len(targets)} host(s), in parallel (read-only)")
        checks: list[Preflight] = remote.parallel(targets, lambda h: preflight(h, ctx))
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
                    ("yes" if c.permitted else "no") if c.probed else "n/a",
                    f"{c.seconds:.2f}s",
                    "" if c.ok else c.detail,
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
        restart = service.restart_argv()
        health = (
            f"health: {service.health_check}"
            if service.health_check
            else "no health check configured"
        )
        operations = []
        for position, host in enumerate(targets, start=1):
            batch_no = (position - 1) // params.batch + 1
            operations.append(
                Operation(
                    kind="ssh",
                    target=host.name,
                    command=restart,
                    description=(
                        f"{position}/{len(targets)} (batch {batch_no}) restart {host.name}"
                        f" ({host.ssh_address}), then wait: active with a new main pid,"
                        f" {health}, its old sessions gone"
                        f" and at most {host.pool_capacity(service)} new ones"
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
        old_pid = check.main_pid
        if time.monotonic() - check.at > PREFLIGHT_FRESH_S:  # else the preflight's is current
            shown = conn.run(_show(service.unit))
            values = shown.stdout.split()
            if shown.ok and len(values) == 3 and values[2].isdigit():
                old_pid = int(values[2])
        addr = host.client_addr
        with ctx.db_lock:
            old_backends = pg.host_backends(ctx.session, addr) if addr else set()
        ctx.record(
            "host_start",
            host=host.name,
            position=position,
            total=total,
            old_main_pid=old_pid,
            old_backends=sorted(b.pid for b in old_backends),
        )

        reconnects_before = len(conn.reconnects)

        def reconnects() -> dict[str, Any]:
            """The stale SSH connections reopened for this host, if any, for its entry."""
            fresh = conn.reconnects[reconnects_before:]
            if fresh:
                ctx.progress(
                    f"{label}: the SSH connection had gone stale ({fresh[0]}); reopened"
                    " before the command was sent"
                )
            return {"ssh_reconnects": fresh} if fresh else {}

        def fail(gate: str, detail: str, result: CommandResult | None = None) -> dict[str, Any]:
            entry = {
                "host": host.name,
                "ok": False,
                "gate": gate,
                "detail": detail,
                "old_main_pid": old_pid,
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

        ctx.progress(f"{label}: restarting ({service.restart_argv()})")
        mark = time.monotonic()
        restarted = conn.run(service.restart_argv())
        gates["restart"] = round(time.monotonic() - mark, 3)
        if not restarted.ok:
            return fail("restart", restarted.describe(), restarted)

        mark = time.monotonic()
        new_pid = 0

        def active() -> tuple[bool, str]:
            nonlocal new_pid
            result = conn.run(_show(service.unit))
            values = result.stdout.split()
            if not result.ok or len(values) != 3:
                return False, result.describe()
            new_pid = int(values[2]) if values[2].isdigit() else 0
            if values[1] != "active":
                return False, f"ActiveState={values[1]}"
            if new_pid in (0, old_pid):
                return False, f"MainPID is still {new_pid}"
            return True, ""

        ok, detail = _poll(ctx, active, p.active_timeout, f"{label}: active with a new main pid")
        gates["active"] = round(time.monotonic() - mark, 3)
        if not ok:
            return fail(
                "active",
                f"not active with a new main pid after"
                f" {format_duration(p.active_timeout)}: {detail}",
            )
        ctx.progress(
            f"{label}: active, main pid {old_pid} → {new_pid}"
            f" ({format_duration(time.monotonic() - started)})"
        )

        if service.health_check:
            mark = time.monotonic()
            last: list[CommandResult] = []

            def healthy() -> tuple[bool, str]:
                result = conn.run(service.health_check or "true", timeout=10)
                last[:] = [result]
                return result.ok, result.describe()

            timeout = p.health_timeout or service.health_timeout
            ok, detail = _poll(ctx, healthy, timeout, f"{label}: health check")
            gates["health"] = round(time.monotonic() - mark, 3)
            if not ok:
                return fail(
                    "health",
                    f"health check did not pass within {format_duration(timeout)}: {detail}",
                    last[0] if last else None,
                )
            ctx.progress(
                f"{label}: health check passed ({format_duration(time.monotonic() - started)})"
            )

        if addr:
            mark = time.monotonic()
            capacity = host.pool_capacity(service)

            def database() -> tuple[bool, str]:
                with ctx.db_lock:
                    now = pg.host_backends(ctx.session, addr)
                lingering = old_backends & now
                if lingering:
                    return False, f"{len(lingering)} old session(s) still open"
                if len(now) > capacity:
                    return False, f"{len(now)} sessions, more than its pool size {capacity}"
                return True, f"{len(now)} sessions"

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
        entry = {
            "host": host.name,
            "ok": True,
            "old_main_pid": old_pid,
            "new_main_pid": new_pid,
            "gates": gates,
            "seconds": round(time.monotonic() - started, 3),
            **reconnects(),
        }
        ctx.record("host_done", **entry)
        return entry


def _poll(
    ctx: RunContext,
    check: Callable[[], tuple[bool, str]],
    timeout: float,
    waiting_for: str,
) -> tuple[bool, str]:
    """Check until it passes or the timeout; say what it waits for, and now and then why."""
    started = time.monotonic()
    deadline = started + timeout
    told = None
    while True:
        ok, detail = check()
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
