"""The step loop: conditions, escalation, confirmation, plan → apply → record.

The engine knows nothing of what an action does: each action plans operations from the
current state and applies them; the engine decides whether to apply (dry-run,
confirmation), records everything in the journal, and stops escalating as soon as the
runbook's healthy condition holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from connfix import __version__, expressions
from connfix.actions import ACTIONS
from connfix.actions.base import Outcome, Plan
from connfix.errors import ConnfixError, ExitStatus
from connfix.journal import Journal, JournalError, Redactor, new_incident_dir

if TYPE_CHECKING:
    from connfix.diagnosis import Diagnosis
    from connfix.inventory import Environment, Host, Service
    from connfix.pg import BackendId, Session
    from connfix.runbook import Runbook, Step


class UI(Protocol):
    """What the engine tells the operator, and asks; implemented by the CLI."""

    def started(self, journal: Path, dry_run: bool) -> None: ...
    def diagnosis(self, d: Diagnosis) -> None: ...
    def step(self, index: int, total: int, step: Step, status: str, detail: str) -> None: ...
    def plan(self, step: Step, plan: Plan, applied: bool) -> None: ...
    def confirm(self, question: str) -> bool: ...
    def note(self, message: str) -> None: ...
    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None: ...


class LockLost(ConnfixError):
    """The environment's lock went with a lost connection, and someone else took it."""


class Interrupt:
    """Ctrl-C once: finish the current operation, then stop. Twice: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[Interrupt]:
        """Handle SIGINT while the run lasts (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class RunContext:
    """What actions see of a run: the environment, the session, the journal, the state."""

    environment: str
    env: Environment
    runbook: Runbook
    journal: Journal
    session: Session
    dry_run: bool
    interrupt: Interrupt
    ui: UI
    latest: Diagnosis | None = None
    step: Step | None = None
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)  # what the run changed so far
    db_lock: threading.Lock = field(default_factory=threading.Lock)  # one session, many threads
    resume_done: dict[str, list[str]] = field(default_factory=dict)  # action → done items
    remotes: dict[str, Any] = field(default_factory=dict)  # host → its health-check SSH
    _handoff: threading.Condition = field(default_factory=threading.Condition)
    _handoff_inside: int = 0
    _handoff_released: bool = False

    @contextlib.contextmanager
    def slot_given_back(self, why: str) -> Iterator[None]:
        """While a restarted app refills its pool, hold no privileged slot.

        Entered through the admin (superuser-reserved) or reserved-role way because the
        server was full, connfix's own session takes one of the slots the restarted pool
        needs: on a server exactly full the new pool comes up one short and the host
        stays down. So the session is closed for the time (its environment lock with it)
        and opened again afterwards: the ordinary way when it fits, else the privileged
        one, the lock taken again. Batches share it: closed by the first host to enter,
        opened again when the last leaves. Over the ordinary connection: nothing to do."""
        with self._handoff:
            if self._handoff_inside == 0 and self.session.via != "primary":
                self.record("slot_given_back", via=self.session.via, why=why)
                self.ui.note(
                    f"giving back the {self.session.via} connection's slot while {why}"
                    " (connfix's own session would take one the new pool needs)"
                )
                with contextlib.suppress(Exception):
                    self.session.close()
                self._handoff_released = True
            self._handoff_inside += 1
        try:
            yield
        finally:
            with self._handoff:
                self._handoff_inside -= 1
                if self._handoff_inside == 0 and self._handoff_released:
                    try:
                        self._reopen()
                    finally:
                        self._handoff_released = False
                        self._handoff.notify_all()
                else:
                    self._handoff.wait_for(lambda: not self._handoff_released, timeout=3600)

    def _reopen(self) -> None:
        from connfix import pg

        self.session = pg.open_session(self.env.database)
        self.cleanups.append(self.session.close)
        self.record("session_reopened", via=self.session.via, refusal=self.session.refusal)
        self.ui.note(f"connected again, via the {self.session.via} connection")
        if not self.dry_run:
            refused = take_lock(self.session, self.environment, self.journal)
            if refused is not None:
                raise LockLost(f"after giving the slot back, {refused}")

    def host_health(self) -> dict[str, dict[str, Any]]:
        """Run every host's health check, in parallel (read-only), on connections kept for
        the run; {} when the inventory has none."""
        from connfix import remote

        if not any(s.health_check for s in self.env.all_services()):
            return {}

        def one(host: Host) -> tuple[str, dict[str, Any]]:
            conn = self.remotes.get(host.name)
            if conn is None:
                conn = self.remotes[host.name] = remote.Remote(host, self.env.ssh)
                self.cleanups.append(conn.close)
            failing, details = [], []
            for service in self.env.services_on(host):
                if not service.health_check:
                    continue
                result = conn.run(service.health_check, timeout=10)
                if not result.ok:
                    failing.append(service.label)
                    details.append(result.describe())
            return host.name, {
                "ok": not failing,
                "detail": "; ".join(details) or "ok",
                "failing": failing,
            }

        return dict(remote.parallel(self.env.hosts, one))

    @property
    def interrupted(self) -> bool:
        """Tell whether the operator pressed Ctrl-C."""
        return self.interrupt.requested

    def backends(self, addr: str, service: Service) -> set[BackendId]:
        """Return the sessions of one service from one client address, now."""
        from connfix import pg

        with self.db_lock:  # one session, shared by a batch's threads
            return pg.host_backends(self.session, addr, service.application_name, service.user)

    def progress(self, message: str) -> None:
        """Tell the operator how a long step is going (not journaled)."""
        self.ui.note(message)

    def record(self, event: str, **fields: Any) -> None:
        """Append an event to the journal, tagged with the current step."""
        if self.step is not None:
            fields.setdefault("step", self.step.id)
        self.journal.record(event, **fields)

    def diagnose(self) -> Diagnosis:
        """Take a fresh diagnosis, journal it, and make it the latest."""
        from connfix.diagnosis import take_snapshot
        from connfix.errors import ConnectionLost

        try:
            snapshot = take_snapshot(self.session, self.environment, self.env)
        except ConnectionLost as exc:
            self.reconnect(str(exc))
            snapshot = take_snapshot(self.session, self.environment, self.env)
        health = self.host_health()
        unhealthy = [name for name, h in health.items() if not h["ok"]]
        reasons = list(snapshot.severity_reasons)
        if unhealthy:
            reasons.append(f"health check failing on {', '.join(unhealthy)}")
        self.latest = dataclasses.replace(
            snapshot, host_health=health, unhealthy_hosts=unhealthy, severity_reasons=reasons
        )
        self.record("diagnosis", diagnosis=self.latest.to_json())
        return self.latest

    def reconnect(self, why: str) -> None:
        """Connect again once after losing the database (it restarted?), and take the
        environment's lock again: a restart released it."""
        from connfix import pg

        self.record("connection_lost", message=why)
        self.ui.note(f"{why}; connecting again")
        with contextlib.suppress(Exception):
            self.session.close()
        self.session = pg.open_session(self.env.database)
        self.cleanups.append(self.session.close)
        self.record("reconnected", via=self.session.via, refusal=self.session.refusal)
        if not self.dry_run:
            refused = take_lock(self.session, self.environment, self.journal)
            if refused is not None:
                raise LockLost(f"after reconnecting, {refused}")

    def names(self, d: Diagnosis) -> dict[str, Any]:
        """Return the names an expression sees for a diagnosis."""
        return expressions.context(
            d, [h.name for h in self.env.hosts], self.env.thresholds.model_dump(), self.totals
        )

    def holds(self, condition: str, d: Diagnosis) -> bool:
        """Evaluate a runbook expression over a diagnosis."""
        return expressions.evaluate(condition, self.names(d))

    def healthy(self) -> bool:
        """Tell whether the runbook's healthy condition holds for the latest diagnosis."""
        return self.latest is not None and self.holds(self.runbook.healthy, self.latest)

    def healthy_or_none(self) -> bool | None:
        """healthy(), or None when the condition cannot be evaluated (for run_end)."""
        try:
            return self.healthy()
        except expressions.ExpressionError:
            return None

    def sleep(self, seconds: float) -> bool:
        """Sleep, waking early on Ctrl-C; return False if interrupted."""
        deadline = time.monotonic() + seconds
        while not self.interrupt.requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            time.sleep(min(0.1, remaining))
        return False

    @staticmethod
    def describe(d: Diagnosis) -> str:
        """Summarise a diagnosis in one line."""
        text = (
            f"{d.client_backends} of {d.usable_connections} usable"
            f" ({d.utilization:.0%}), severity {d.severity}"
        )
        if d.suspects:
            text += f", suspects: {', '.join(d.suspects)}"
        return text


@dataclass(frozen=True)
class TriageRequest:
    """Everything a triage run needs, validated before it starts."""

    environment: str
    env: Environment
    runbook: Runbook
    incidents_dir: Path
    inventory_path: Path
    dry_run: bool = False
    yes: bool = False
    interactive: bool = False
    # a single command (terminate, restart) rather than an escalation: every step runs,
    # and "done" (exit 0) means every step succeeded, healthy or not
    command: bool = False
    # resuming an interrupted run: what its journal says is already done, per action
    resumed_from: Path | None = None
    resume_done: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class TriageResult:
    """How a run ended."""

    status: str  # resolved, unhealthy, halted, declined, stopped, interrupted, unreachable,
    # locked, error
    exit_status: ExitStatus
    incident_dir: Path
    journal_path: Path
    dry_run: bool
    message: str
    final: Diagnosis | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None
    report_error: str | None = None


def write_report(result: TriageResult) -> None:
    """Render the report from the journal just closed; a failure is said, not raised."""
    from connfix import report

    try:
        result.report = report.write(result.incident_dir)
    except ConnfixError as exc:
        result.report_error = str(exc)


def operator() -> str:
    """Return who runs connfix (the sudo caller when run through sudo)."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def secrets_of(env: Environment) -> list[str]:
    """Return the secret values this environment's configuration points at: every
    `*_password_env` and `*_dsn_env` (ordinary, reserved, admin, PgBouncer), the
    passwords inside those DSNs, and PGPASSWORD."""
    from connfix import pg

    found = []
    db = env.database
    password_vars = [db.password_env, db.reserved_password_env, db.admin_password_env]
    if env.pgbouncer is not None:
        password_vars.append(env.pgbouncer.admin_password_env)
    for var in password_vars:
        if var and os.environ.get(var):
            found.append(os.environ[var])
    for var in (db.reserved_dsn_env, db.admin_dsn_env):
        if var and os.environ.get(var):
            dsn = os.environ[var]
            found.append(dsn)
            with contextlib.suppress(ValueError):
                found.append(pg.parse_dsn(dsn).get("password", ""))
    if os.environ.get("PGPASSWORD"):
        found.append(os.environ["PGPASSWORD"])
    return [s for s in found if s]


def take_lock(session: Session, environment: str, journal: Journal) -> str | None:
    """Take the environment's advisory lock and journal it; else say who holds it."""
    from connfix import pg

    holder = pg.try_environment_lock(session, environment)
    if holder is None:
        journal.record("lock_acquired", key=pg.environment_lock_key(environment))
        return None
    journal.record("lock_refused", holder=holder)
    who = (
        f"pid {holder.pid}, user {holder.usename}, from"
        f" {holder.client_addr or 'the local socket'}, application"
        f" {holder.application_name!r}"
    )
    if holder.held_seconds is not None:
        who += f", connected {holder.held_seconds:.0f}s ago"
    return (
        f"another connfix run holds environment {environment!r} ({who}); refusing to"
        " run at the same time"
    )


def run_triage(request: TriageRequest, ui: UI) -> TriageResult:
    """Run a runbook against one environment; always leaves a complete journal."""
    from connfix import pg

    incident = new_incident_dir(request.incidents_dir, request.environment)
    journal = Journal(incident, Redactor(secrets_of(request.env)))
    runbook = request.runbook
    journal.record(
        "run_start",
        environment=request.environment,
        operator=operator(),
        hostname=socket.gethostname(),
        connfix_version=__version__,
        runbook={
            "name": runbook.name,
            "source": runbook.source,
            "sha256": runbook.sha256,
            "shadows": runbook.shadows,
            "healthy": runbook.healthy,
            "steps": [s.id for s in runbook.steps],
        },
        inventory=str(request.inventory_path),
        flags={
            "dry_run": request.dry_run,
            "yes": request.yes,
            "interactive": request.interactive,
            "command": request.command,
        },
        pid=os.getpid(),
        resumed_from=str(request.resumed_from) if request.resumed_from else None,
        resume_done=request.resume_done,
    )
    ui.started(journal.path, request.dry_run)

    def finish(
        status: str,
        code: ExitStatus,
        message: str,
        ctx: RunContext | None = None,
        steps: list[dict[str, Any]] | None = None,
    ) -> TriageResult:
        final = ctx.latest if ctx else None
        with contextlib.suppress(JournalError):
            journal.record(
                "run_end",
                status=status,
                exit_status=int(code),
                message=message,
                dry_run=request.dry_run,
                healthy=None if final is None else bool(ctx and ctx.healthy_or_none()),
            )
        journal.close()
        result = TriageResult(
            status, code, incident, journal.path, request.dry_run, message, final, steps or []
        )
        write_report(result)
        return result

    interrupt = Interrupt()
    try:
        session = pg.open_session(request.env.database)
    except ConnfixError as exc:
        journal.record("error", phase="connect", message=str(exc))
        return finish("unreachable", exc.exit_status, str(exc))
    except KeyboardInterrupt:
        return finish("interrupted", ExitStatus.INTERRUPTED, "interrupted while connecting")
    with session, interrupt.installed():
        info = session.info
        journal.record(
            "connected",
            via=session.via,
            refusal=session.refusal,
            role=info.role,
            is_superuser=info.is_superuser,
            server_version=info.server_version,
            server_version_num=info.server_version_num,
        )
        if session.refusal:
            ui.note(
                f"the database refused the ordinary connection ({session.refusal});"
                f" working through the {session.via} connection"
            )
        if not request.dry_run:
            refused = take_lock(session, request.environment, journal)
            if refused is not None:
                return finish("locked", ExitStatus.UNHEALTHY, refused)
        ctx = RunContext(
            request.environment,
            request.env,
            runbook,
            journal,
            session,
            request.dry_run,
            interrupt,
            ui,
            resume_done=dict(request.resume_done),
        )
        try:
            return _walk(request, ctx, ui, finish)
        except JournalError as exc:
            journal.close()
            result = TriageResult(
                "error",
                ExitStatus.UNHEALTHY,
                incident,
                journal.path,
                request.dry_run,
                f"{exc}; the run stopped",
            )
            write_report(result)
            return result
        except KeyboardInterrupt:
            journal.record(
                "interrupted",
                step=ctx.step.id if ctx.step else None,
                message="interrupted at once (Ctrl-C twice)",
            )
            return finish("interrupted", ExitStatus.INTERRUPTED, "interrupted", ctx)
        except ConnfixError as exc:
            journal.record("error", step=ctx.step.id if ctx.step else None, message=str(exc))
            return finish("error", exc.exit_status, str(exc), ctx)
        finally:
            for cleanup in ctx.cleanups:
                with contextlib.suppress(Exception):
                    cleanup()


def _walk(
    request: TriageRequest, ctx: RunContext, ui: UI, finish: Callable[..., TriageResult]
) -> TriageResult:
    runbook = ctx.runbook
    total = len(runbook.steps)
    steps: list[dict[str, Any]] = []
    for index, step in enumerate(runbook.steps, start=1):
        ctx.step = step
        action = ACTIONS[step.action]
        if ctx.interrupt.requested:
            ctx.record("interrupted", message="stopped before this step (Ctrl-C)")
            return finish(
                "interrupted",
                ExitStatus.INTERRUPTED,
                f"interrupted before step {step.id}",
                ctx,
                steps,
            )
        try:
            healthy = index > 1 and not request.command and ctx.healthy()
        except expressions.ExpressionError as exc:
            message = f"the runbook's healthy condition fails on this diagnosis: {exc}"
            ctx.record(
                "step_end",
                ok=False,
                applied=False,
                summary=message,
                expression=ctx.runbook.healthy,
            )
            ui.step(index, total, step, "failed", message)
            steps.append({"id": step.id, "status": "failed"})
            return finish("halted", ExitStatus.UNHEALTHY, message, ctx, steps)
        if healthy:
            ctx.record(
                "healthy",
                condition=runbook.healthy,
                message=f"{runbook.healthy} holds: escalation ends",
            )
            ui.note(f"healthy ({runbook.healthy}): no further steps")
            break
        if step.when is not None:
            assert ctx.latest is not None  # the first step is a diagnose
            try:
                take = ctx.holds(step.when, ctx.latest)
            except expressions.ExpressionError as exc:
                ctx.record("step_end", ok=False, summary=str(exc), expression=step.when)
                ui.step(index, total, step, "failed", str(exc))
                steps.append({"id": step.id, "status": "failed"})
                if step.on_failure == "halt":
                    return finish(
                        "halted", ExitStatus.UNHEALTHY, f"step {step.id}: {exc}", ctx, steps
                    )
                continue
            if not take:
                ctx.record("step_skipped", condition=step.when, reason="condition is false")
                ui.step(index, total, step, "skipped", f"when {step.when}: false")
                steps.append({"id": step.id, "status": "skipped"})
                continue
        ctx.record(
            "step_start", index=index, total=total, action=step.action, mutating=action.mutating
        )
        started = time.monotonic()
        plan = action.plan(ctx, step.params)
        ctx.record(
            "plan",
            summary=plan.summary,
            operations=plan.operations,
            dry_run=ctx.dry_run,
            details=plan.details,
            blocked=plan.blocked,
        )
        if plan.blocked is not None:
            ui.plan(step, plan, applied=False)
            ctx.record("step_end", ok=False, applied=False, summary=plan.blocked)
            ui.step(index, total, step, "refused", plan.blocked)
            steps.append({"id": step.id, "status": "refused"})
            return finish(
                "halted",
                ExitStatus(plan.blocked_exit_status),
                f"step {step.id} refused: {plan.blocked}",
                ctx,
                steps,
            )
        # a dry run applies only what changes nothing and is quick (a diagnosis)
        apply = not ctx.dry_run or (action.runs_in_dry_run and not action.mutating)
        if ctx.dry_run and not apply:
            ui.plan(step, plan, applied=False)
            ctx.record(
                "step_end",
                ok=True,
                dry_run=True,
                applied=False,
                summary=f"dry run: would {plan.summary}",
            )
            ui.step(index, total, step, "planned", plan.summary)
            steps.append({"id": step.id, "status": "planned"})
            continue
        if action.mutating and not plan.operations:
            # nothing to change: no question to ask, nothing to apply
            ctx.record("step_end", ok=True, applied=False, summary=f"nothing to do: {plan.summary}")
            ui.step(index, total, step, "ok", f"nothing to do: {plan.summary}")
            steps.append({"id": step.id, "status": "nothing to do"})
            continue
        if (
            action.mutating
            and not step.confirm
            and not ctx.dry_run
            and not request.yes
            and not request.interactive
        ):
            message = (
                f"stopped before step {step.id}: it changes things and the runbook says"
                " confirm: false, but with no terminal and no --yes nobody asked for it;"
                " run again with --yes to apply it"
            )
            ctx.record("confirmation_needed", message=message)
            ui.note(message)
            return finish("stopped", ExitStatus.UNHEALTHY, message, ctx, steps)
        if step.confirm and not ctx.dry_run:
            ui.plan(step, plan, applied=True)
            if not request.yes:
                if not request.interactive:
                    message = (
                        f"stopped before step {step.id}: it needs confirmation and"
                        " there is no terminal; run again with --yes to apply it"
                    )
                    ctx.record("confirmation_needed", message=message)
                    ui.note(message)
                    return finish("stopped", ExitStatus.UNHEALTHY, message, ctx, steps)
                question = f"Apply step {step.id} ({step.action}): {plan.summary}?"
                answer = ui.confirm(question)
                ctx.record("prompt", question=question, answer="yes" if answer else "no")
                if not answer:
                    message = f"the operator declined step {step.id}; stopping"
                    ui.note(message)
                    return finish("declined", ExitStatus.UNHEALTHY, message, ctx, steps)
        ui.step(index, total, step, "running", plan.summary)
        before = ctx.latest
        try:
            outcome: Outcome = action.apply(ctx, step.params, plan)
        except expressions.ExpressionError as exc:  # an `until` that fails on live data
            outcome = Outcome(False, str(exc), {"expression_error": str(exc)})
        seconds = time.monotonic() - started
        for key, count in outcome.changed.items():
            ctx.totals[key] = ctx.totals.get(key, 0) + count
        ctx.record(
            "step_end",
            ok=outcome.ok,
            summary=outcome.summary,
            details=outcome.details,
            interrupted=outcome.interrupted,
            seconds=round(seconds, 3),
        )
        status = "ok" if outcome.ok else ("interrupted" if outcome.interrupted else "failed")
        ui.step(index, total, step, status, outcome.summary)
        steps.append({"id": step.id, "status": status})
        if ctx.latest is not None and ctx.latest is not before:
            ui.diagnosis(ctx.latest)
        if outcome.interrupted:
            return finish(
                "interrupted",
                ExitStatus.INTERRUPTED,
                f"interrupted during step {step.id}",
                ctx,
                steps,
            )
        if not outcome.ok and step.on_failure == "halt":
            return finish(
                "halted",
                ExitStatus.UNHEALTHY,
                f"step {step.id} failed: {outcome.summary}",
                ctx,
                steps,
            )
    ctx.step = None
    healthy = ctx.healthy()
    if request.command:
        if ctx.dry_run:
            return finish("dry_run", ExitStatus.OK, "nothing was changed", ctx, steps)
        return finish("done", ExitStatus.OK, "done", ctx, steps)
    if ctx.dry_run:
        state = "healthy" if healthy else "unhealthy"
        return finish(
            "dry_run",
            ExitStatus.OK if healthy else ExitStatus.UNHEALTHY,
            f"nothing was changed; the environment is {state}",
            ctx,
            steps,
        )
    if healthy:
        return finish("resolved", ExitStatus.OK, f"healthy: {runbook.healthy}", ctx, steps)
    return finish(
        "unhealthy",
        ExitStatus.UNHEALTHY,
        f"the runbook ran out of steps and {runbook.healthy} does not hold",
        ctx,
        steps,
    )


def resume_state(incident: Path, environment: str) -> tuple[Path, dict[str, list[str]]]:
    """Read an earlier run's journal: what it finished, per action (hosts restarted)."""
    from connfix.errors import InputError
    from connfix.journal import JOURNAL, read_journal

    journal = incident / JOURNAL if incident.is_dir() else incident
    if not journal.is_file():
        raise InputError(f"--resume {incident}: no journal there ({JOURNAL} not found)")
    try:
        events = list(read_journal(journal))
    except (OSError, ValueError) as exc:
        raise InputError(f"--resume {incident}: the journal cannot be read: {exc}") from None
    start = next((e for e in events if e.get("event") == "run_start"), None)
    if start is None or start.get("environment") != environment:
        found = start.get("environment") if start else None
        raise InputError(
            f"--resume {incident}: that run was for environment {found!r}, not {environment!r}"
        )
    done: dict[str, list[str]] = {
        "rolling_restart": list(start.get("resume_done", {}).get("rolling_restart", []))
    }
    for event in events:
        if event.get("event") == "host_done" and event["host"] not in done["rolling_restart"]:
            done["rolling_restart"].append(event["host"])
    return journal.parent, done
