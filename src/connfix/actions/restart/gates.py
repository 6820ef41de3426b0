"""The gates a restarted host passes before the next host is touched, in this order:

1. `restart`      — the restart command, one unit at a time (its timeout follows the
                    unit's own start timeout);
2. `active`       — the unit is active as a *new invocation* (a new InvocationID: pids are
                    reused and a oneshot unit has none);
3. `settle`       — a unit whose type proves nothing by being active (simple, exec, idle)
                    stays up as the same invocation for `settle` seconds;
4. `health`       — each restarted service's health check passes;
5. `database`     — the host's old sessions of each service are gone and it holds no
                    more than its pool allows;
6. `still_active` — after all that, still the invocations the gates passed.

Each gate is a function returning a `GateResult`; it talks to the host only through
`Remote.run` and to the run only through a `GateContext`, so each can be tested with a
scripted SSH layer (tests/test_gates.py) as well as on the lab.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from connfix.config.units import format_duration
from connfix.hosts import systemd

if TYPE_CHECKING:
    from connfix.config.inventory import Host, Service
    from connfix.db.pg import BackendId
    from connfix.hosts.remote import CommandResult, Remote
    from connfix.hosts.systemd import UnitState

POLL_S = 0.1
STILL_WAITING_S = 10.0  # while a gate waits, say so this often
START_MARGIN_S = 5.0  # beyond a unit's own start timeout, while systemd is still starting it
# Service types whose "active" proves nothing yet: systemd considers them started as soon
# as the process is forked/executed. They must stay up for `settle` before the next host.
NO_READINESS = frozenset({"simple", "exec", "idle"})
GATES = ("restart", "active", "settle", "health", "database", "still_active")


class GateContext(Protocol):
    """What a gate needs of the run: to say how it goes, and to wait (Ctrl-C aware)."""

    def progress(self, message: str) -> None: ...

    def sleep(self, seconds: float) -> bool: ...

    def waiting(self) -> None: ...


@dataclass(frozen=True)
class GateResult:
    """How one gate ended."""

    ok: bool
    detail: str = ""
    result: CommandResult | None = None  # the command whose failure failed the gate
    unit: UnitState | None = None  # the unit's latest state the gate saw
    # the restart command failed, but the unit's own Restart= policy is starting it
    # again: what happened, for the report once it is active (the active gate waits)
    healing: str = ""


def poll(
    ctx: GateContext,
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


def restart_timeout(command_timeout: float, unit: UnitState) -> float:
    """Return how long a restart command may run: ssh.command_timeout, or the unit's own
    start timeout when that is longer (systemctl waits until systemd gives up)."""
    if unit.start_timeout is None:
        return command_timeout
    return max(command_timeout, unit.start_timeout + START_MARGIN_S)


def restart_gate(
    ctx: GateContext,
    conn: Remote,
    command: str,
    old: UnitState,
    command_timeout: float,
    label: str,
) -> GateResult:
    """Send the restart command. A command still running at its timeout passes (systemd
    may still be starting a slow unit: the active gate follows the unit's own state); a
    command that fails fails the gate, with the unit's state as systemd says it."""
    ctx.progress(f"{label}: restarting ({command})")
    # the host restarts for a while now: the run's work off the critical path (the
    # report's warm-up) may use the wait, not compete with what led to the command
    restarted = conn.run(command, timeout=restart_timeout(command_timeout, old), sent=ctx.waiting)
    if restarted.error and restarted.error.startswith("timed out"):
        ctx.progress(
            f"{label}: the restart command is still running after"
            f" {format_duration(restarted.duration)}; following the unit's state"
        )
        return GateResult(True, "still running", restarted)
    if restarted.ok:
        return GateResult(True, "", restarted)
    state, _ = systemd.show_units(conn, [old.id])
    why = restarted.describe()
    unit = state[0] if state else None
    if (
        unit is not None
        and unit.restarts_itself
        and (unit.auto_restarting or (unit.active_state == "active" and unit.started_since(old)))
    ):
        # the start failed, and systemd starts it again (Restart=): a transient failure
        # heals itself; the active gate waits for it, for a few automatic restarts
        first = " ".join(why.split())[:300]
        ctx.progress(f"{label}: the restart failed ({first}); {unit.verdict()}: waiting for it")
        return GateResult(
            True,
            "healing",
            restarted,
            unit,
            healing=f"the restart command failed ({first}); its Restart={unit.restart_policy}"
            " started it again",
        )
    if unit is not None:
        why += f"\n{unit.verdict()}"
    return GateResult(False, why, restarted, unit)


HEAL_RESTARTS = 3  # automatic restarts a unit healing itself is given, at most


def active_gate(
    ctx: GateContext,
    conn: Remote,
    old: UnitState,
    timeout: float,
    label: str,
    healing_from: UnitState | None = None,
) -> GateResult:
    """Wait until the unit is active as a new invocation. A new invocation that ends
    `failed` fails the gate at once. A unit healing itself (its start failed and its
    Restart= policy starts it again: `healing_from`, as seen then) is given at most
    HEAL_RESTARTS automatic restarts: one still failing after them is a crash loop."""
    seen: list[UnitState] = []
    started = time.monotonic()
    limit = healing_from.restarts + HEAL_RESTARTS if healing_from is not None else None

    def check() -> tuple[bool, str] | None:
        units, error = systemd.show_units(conn, [old.id])
        if error is not None:
            return False, error
        unit = units[0]
        seen[:] = [unit]
        if limit is not None and unit.auto_restarting and unit.restarts >= limit:
            return None  # final: it does not heal
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

    ok, detail = poll(ctx, check, timeout, f"{label}: active as a new invocation")
    last = seen[0] if seen else None
    if ok:
        return GateResult(True, "", unit=last)
    if detail == "final" and last is not None:
        if limit is not None and last.auto_restarting:
            return GateResult(
                False,
                f"it did not heal: still failing after {HEAL_RESTARTS} automatic restarts:"
                f" {last.verdict()}",
                unit=last,
            )
        return GateResult(False, f"the new invocation failed: {last.verdict()}", unit=last)
    return GateResult(
        False,
        f"not active as a new invocation after {format_duration(time.monotonic() - started)}:"
        f" {detail}",
        unit=last,
    )


def settle_gate(
    ctx: GateContext, conn: Remote, units: list[UnitState], settle: float, label: str
) -> GateResult:
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
            return GateResult(False, error)
        for unit, was in zip(now, units, strict=True):
            if unit.active_state != "active" or unit.started_since(was):
                return GateResult(
                    False,
                    f"within {format_duration(settle)} of its start: {unit.verdict()}",
                    unit=unit,
                )
        if time.monotonic() >= deadline:
            return GateResult(True)
        if not ctx.sleep(min(POLL_S * 2, max(0.0, deadline - time.monotonic()))):
            return GateResult(False, "interrupted")


def health_gate(
    ctx: GateContext, conn: Remote, check: str, timeout: float, label: str, who: str = ""
) -> GateResult:
    """Run the service's health check on the host until it passes or the timeout."""
    last: list[CommandResult] = []

    def healthy() -> tuple[bool, str]:
        result = conn.run(check, timeout=10)
        last[:] = [result]
        return result.ok, result.describe()

    ok, detail = poll(ctx, healthy, timeout, f"{label}: health check{who}")
    if ok:
        return GateResult(True, "", last[0] if last else None)
    return GateResult(
        False,
        f"health check{who} did not pass within {format_duration(timeout)}: {detail}",
        last[0] if last else None,
    )


def database_gate(
    ctx: GateContext,
    backends: Callable[[Service], set[BackendId]],
    host: Host,
    services: list[Service],
    old: dict[str, set[BackendId]],
    timeout: float,
    label: str,
) -> GateResult:
    """Wait until none of the host's old sessions of each restarted service is left and
    each holds no more sessions than its pool (plus overflow) allows."""

    def check() -> tuple[bool, str]:
        counts = []
        for service in services:
            now = backends(service)
            who = f"{service.label}: " if len(services) > 1 else ""
            lingering = old.get(service.label, set()) & now
            if lingering:
                return False, f"{who}{len(lingering)} old session(s) still open"
            capacity = host.max_capacity(service)
            if len(now) > capacity:
                allows = (
                    f"its pool size {capacity}"
                    if capacity == host.pool_capacity(service)
                    else f"its pool size + max_overflow {capacity}"
                )
                return False, f"{who}{len(now)} sessions, more than {allows}"
            counts.append(len(now))
        return True, f"{sum(counts)} sessions"

    ok, detail = poll(ctx, check, timeout, f"{label}: database (old sessions gone)")
    if ok:
        return GateResult(True, detail)
    return GateResult(False, f"after {format_duration(timeout)}: {detail}")


def still_active_gate(conn: Remote, passed: dict[str, UnitState]) -> GateResult:
    """Still the invocations the gates passed: a unit that failed (or was restarted by
    systemd) meanwhile is caught here, before the next host is touched."""
    now, error = systemd.show_units(conn, list(passed))
    if error is not None:
        return GateResult(False, error)
    for unit in now:
        if unit.active_state != "active" or unit.started_since(passed[unit.id]):
            return GateResult(False, f"after the gates: {unit.verdict()}", unit=unit)
    return GateResult(True)
