"""The step loop: conditions, escalation, confirmation, plan → apply → record.

The engine knows nothing of what an action does: each action plans operations from the
current state and applies them; the loop decides whether to apply (dry-run,
confirmation), records everything in the journal, and — in a triage — stops escalating
as soon as the runbook's healthy condition holds. Every way a run can end goes through
`StepLoop.finish`: `run_end` journaled, the journal closed, the report written.
"""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from connfix import ConnectionLost, ConnfixError, ExitStatus, __version__, started_up
from connfix.actions import ACTIONS
from connfix.actions.base import Action, Outcome, Plan
from connfix.engine import approval, expressions, postmortem
from connfix.engine.context import Follow, RunContext, take_lock
from connfix.engine.interrupt import Interrupt
from connfix.engine.run import RunMode, RunRequest, RunResult, RunStatus, StepResult, StepStatus
from connfix.engine.secrets import secrets_of
from connfix.record.events import Event, RunbookRef, RunEnd, RunFlags, RunStart
from connfix.record.journal import Journal, JournalError, Redactor, new_incident_dir
from connfix.record.notify import Notifier

if TYPE_CHECKING:
    from pathlib import Path

    from connfix.db.pg import Session
    from connfix.engine.runbook import Step
    from connfix.engine.ui import UI


def operator() -> str:
    """Return who runs connfix (the sudo caller when run through sudo)."""
    try:
        import getpass

        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def run_runbook(request: RunRequest, ui: UI) -> RunResult:
    """Run a runbook against one environment; always leaves a complete journal. The
    stages: the journal first (run_start), the connection and the lock (_connected),
    the walk through the steps (_walk), each ending through StepLoop.finish."""
    from connfix.db import pg

    incident = new_incident_dir(request.incidents_dir, request.environment)
    journal = Journal(incident, Redactor(secrets_of(request.env)))
    notifier = Notifier(request.env, request.environment, journal)
    journal.listeners.append(notifier)
    start = _run_start(request)
    journal.record(Event.RUN_START, **start)
    ui.started(journal.path, request.dry_run)
    loop = StepLoop(request, ui, incident, journal, notifier)
    if request.env.prometheus is not None:  # the incident before the run, meanwhile
        from connfix.record.history import Fetcher

        loop.history = Fetcher(request.env.prometheus, request.environment, loop.started)
    interrupt = Interrupt()
    try:
        session = pg.open_session(request.env.database)
    except ConnfixError as exc:
        journal.record(Event.ERROR, phase="connect", message=str(exc))
        return loop.finish(RunStatus.UNREACHABLE, exc.exit_status, str(exc))
    except KeyboardInterrupt:
        return loop.finish(
            RunStatus.INTERRUPTED, ExitStatus.INTERRUPTED, "interrupted while connecting"
        )
    with session, interrupt.installed():
        refused = _connected(session, request, start, incident, journal, ui)
        if refused is not None:
            return loop.finish(RunStatus.LOCKED, ExitStatus.UNHEALTHY, refused)
        started_up()
        loop.ctx = RunContext(
            request.environment,
            request.env,
            request.runbook,
            journal,
            session,
            request.dry_run,
            interrupt,
            ui,
            resume_done=dict(request.resume_done),
            health_checks=request.host_health,
            remotes=dict(request.logins),
            max_restart_hosts=request.max_restart_hosts,
            follow=(
                Follow(request.node, request.node_role or "primary", request.cluster)
                if request.node and request.cluster is not None
                else None
            ),
        )
        return _walk(loop, loop.ctx)


def _run_start(request: RunRequest) -> RunStart:
    """The run_start record: who, where, which runbook and inventory, with what flags."""
    runbook = request.runbook
    start = RunStart(
        environment=request.environment,
        operator=operator(),
        hostname=socket.gethostname(),
        connfix_version=__version__,
        runbook=RunbookRef(
            name=runbook.name,
            source=runbook.source,
            sha256=runbook.sha256,
            shadows=runbook.shadows,
            healthy=runbook.healthy,
            steps=[s.id for s in runbook.steps],
        ),
        inventory=str(request.inventory_path),
        flags=RunFlags(
            dry_run=request.dry_run,
            yes=request.yes,
            interactive=request.interactive,
            mode=request.mode.value,
        ),
        pid=os.getpid(),
        resumed_from=str(request.resumed_from) if request.resumed_from else None,
        resume_done=request.resume_done,
    )
    if request.trigger:
        start["trigger"] = request.trigger
    if request.alert_starts_at:
        start["alert_starts_at"] = request.alert_starts_at
    if request.node:
        start["node"] = request.node
        start["node_role"] = request.node_role or ""
        start["nodes"] = dict(request.nodes)
    return start


def _connected(
    session: Session,
    request: RunRequest,
    start: RunStart,
    incident: Path,
    journal: Journal,
    ui: UI,
) -> str | None:
    """Journal how connfix got in; a real run tags its session and takes the
    environment's lock. Return why the run may not go on (another run holds the lock),
    or None."""
    from connfix.db import pg

    info = session.info
    journal.record(
        Event.CONNECTED,
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
    if request.dry_run:
        return None
    session.tag = pg.run_tag(
        start["operator"],
        start["hostname"],
        start["pid"],
        datetime.now(UTC).isoformat(timespec="seconds"),
        str(incident),
    )
    return take_lock(session, request.environment, journal)


def _walk(loop: StepLoop, ctx: RunContext) -> RunResult:
    """Walk the steps; every way out, a bug in connfix included, finishes the record."""
    journal, request = loop.journal, loop.request
    try:
        return loop.walk()
    except JournalError as exc:
        journal.close()
        result = RunResult(
            RunStatus.ERROR,
            ExitStatus.UNHEALTHY,
            loop.incident,
            request.dry_run,
            f"{exc}; the run stopped",
        )
        loop.ui.ended(result)
        result.write_report()
        return result
    except KeyboardInterrupt:
        journal.record(
            Event.INTERRUPTED,
            step=ctx.step.id if ctx.step else None,
            message="interrupted at once (Ctrl-C twice)",
        )
        return loop.finish(RunStatus.INTERRUPTED, ExitStatus.INTERRUPTED, "interrupted")
    except ConnfixError as exc:
        journal.record(Event.ERROR, step=ctx.step.id if ctx.step else None, message=str(exc))
        return loop.finish(RunStatus.ERROR, exc.exit_status, str(exc))
    except Exception as exc:  # connfix's own bug: the record is still finished
        message = f"internal error in connfix ({type(exc).__name__}: {exc}); please report it"
        with contextlib.suppress(Exception):
            journal.record(Event.ERROR, step=ctx.step.id if ctx.step else None, message=message)
        return loop.finish(RunStatus.ERROR, ExitStatus.UNHEALTHY, message)
    finally:
        for cleanup in ctx.cleanups:
            with contextlib.suppress(Exception):
                cleanup()


class Flow(enum.Enum):
    """How the walk goes on after a step that did not end the run."""

    NEXT = "next"  # to the next step
    HEALTHY = "healthy"  # the runbook's healthy condition holds: the escalation ends
    REPLAN = "replan"  # the node changed under the step (a switchover): plan it again


class StepLoop:
    """One run's walk through its runbook's steps."""

    def __init__(
        self,
        request: RunRequest,
        ui: UI,
        incident: Path,
        journal: Journal,
        notifier: Notifier | None = None,
    ) -> None:
        self.request, self.ui, self.incident, self.journal = request, ui, incident, journal
        self.notifier = notifier
        self.ctx: RunContext | None = None  # once connected
        self.steps: list[StepResult] = []
        self.total = len(request.runbook.steps)
        self.planned_changes: list[str] = []  # a dry run's change-making steps so far
        self.started = time.time()
        self.history: Any = None  # the Prometheus history fetch, when the inventory names one

    def finish(self, status: RunStatus, code: ExitStatus, message: str) -> RunResult:
        """End the run: journal `run_end`, close the journal, write the report."""
        ctx = self.ctx
        final = ctx.latest if ctx else None
        with contextlib.suppress(JournalError):
            postmortem.record(self.request, self.journal, ctx, self.history, self.started)
        if self.notifier is not None:  # before run_end: its outcome is journaled too
            with contextlib.suppress(Exception):
                self.notifier.end(status.value, int(code), message)
        with contextlib.suppress(JournalError):
            end = RunEnd(
                status=status.value,
                exit_status=int(code),
                message=message,
                dry_run=self.request.dry_run,
                healthy=None if final is None else bool(ctx and ctx.healthy_or_none()),
            )
            self.journal.record(Event.RUN_END, **end)
        self.journal.close()
        result = RunResult(
            status,
            code,
            self.incident,
            self.request.dry_run,
            message,
            final,
            self.steps,
        )
        self.ui.ended(result)  # the verdict first: the report is for afterwards
        result.write_report()
        return result

    def _step_ended(
        self, index: int, step: Step, status: StepStatus, detail: str, shown: str = ""
    ) -> None:
        self.ui.step(index, self.total, step, shown or status.value, detail)
        self.steps.append(StepResult(step.id, status))

    def walk(self) -> RunResult:
        """Take the steps in order; return how the run ended."""
        ctx = self.ctx
        assert ctx is not None
        for index, step in enumerate(ctx.runbook.steps, start=1):
            ctx.step = step
            ended = self._one(index, step, ctx)
            if isinstance(ended, RunResult):
                return ended
            if ended is Flow.HEALTHY:
                break
        return self._escalation_ends()

    def _one(self, index: int, step: Step, ctx: RunContext) -> RunResult | Flow:
        """Run one step; return a finished run, or how the walk goes on: to the next
        step, or to its end because the runbook is healthy. The stages: whether the step
        is reached (_reached), its plan, whether it is applied (_not_applied), the
        operator's yes (_confirmed), the change and its record (_apply)."""
        for _ in range(2):  # a step cut by a switchover is planned again, once
            ended = self._planned_and_applied(index, step, ctx)
            if ended is not Flow.REPLAN:
                return ended
        return Flow.NEXT

    def _planned_and_applied(self, index: int, step: Step, ctx: RunContext) -> RunResult | Flow:
        """One attempt at a step: reached, planned, applied."""
        reached = self._reached(index, step, ctx)
        if reached is not None:
            return reached
        action = ACTIONS[step.action]
        ctx.record(
            Event.STEP_START,
            index=index,
            total=self.total,
            action=step.action,
            mutating=action.mutating,
        )
        started = time.monotonic()
        plan: Plan[Any] = ctx.planned(action, step.params)
        ended = self._not_applied(index, step, action, plan, ctx)
        if ended is not None:
            return ended
        if approval.needed(self.request, step, action):
            waited = approval.wait(self.request, step, action, plan, ctx)
            if waited.plan is None:
                return self._unapproved(index, step, waited)
            plan = waited.plan
            ended = self._not_applied(index, step, action, plan, ctx)  # now nothing to do?
            if ended is not None:
                return ended
        else:
            stopped = self._confirmed(step, plan, action.mutating, ctx)
            if stopped is not None:
                return stopped
        return self._apply(index, step, action, plan, ctx, started)

    def _unapproved(self, index: int, step: Step, waited: approval.Waited) -> RunResult:
        """A step not approved: rejected, expired, or Ctrl-C while waiting."""
        assert waited.status is not None
        status = (
            StepStatus.INTERRUPTED if waited.status is RunStatus.INTERRUPTED else StepStatus.REFUSED
        )
        assert self.ctx is not None
        self.ctx.record(Event.STEP_END, ok=False, applied=False, summary=waited.message)
        self._step_ended(index, step, status, waited.message)
        code = (
            ExitStatus.INTERRUPTED
            if waited.status is RunStatus.INTERRUPTED
            else ExitStatus.UNHEALTHY
        )
        return self.finish(waited.status, code, waited.message)

    def _reached(self, index: int, step: Step, ctx: RunContext) -> RunResult | Flow | None:
        """Before a step: a Ctrl-C ends the run, a healthy runbook ends the walk, a false
        `when` skips the step; None when the step is to be planned."""
        request, ui, runbook = self.request, self.ui, ctx.runbook
        if ctx.interrupt.requested:
            ctx.record(Event.INTERRUPTED, message="stopped before this step (Ctrl-C)")
            return self.finish(
                RunStatus.INTERRUPTED, ExitStatus.INTERRUPTED, f"interrupted before step {step.id}"
            )
        try:
            healthy = index > 1 and request.mode is RunMode.TRIAGE and ctx.healthy()
        except expressions.ExpressionError as exc:
            message = f"the runbook's healthy condition fails on this diagnosis: {exc}"
            ctx.record(
                Event.STEP_END, ok=False, applied=False, summary=message, expression=runbook.healthy
            )
            self._step_ended(index, step, StepStatus.FAILED, message)
            return self.finish(RunStatus.HALTED, ExitStatus.UNHEALTHY, message)
        if healthy:
            ctx.record(
                Event.HEALTHY,
                condition=runbook.healthy,
                message=f"{runbook.healthy} holds: escalation ends",
            )
            ui.note(f"healthy ({runbook.healthy}): no further steps")
            return Flow.HEALTHY
        if step.when is None:
            return None
        assert ctx.latest is not None  # the first step is a diagnose
        try:
            take = ctx.holds(step.when, ctx.latest)
        except expressions.ExpressionError as exc:
            ctx.record(Event.STEP_END, ok=False, summary=str(exc), expression=step.when)
            self._step_ended(index, step, StepStatus.FAILED, str(exc))
            if step.on_failure == "halt":
                return self.finish(RunStatus.HALTED, ExitStatus.UNHEALTHY, f"step {step.id}: {exc}")
            return Flow.NEXT
        if not take:
            ctx.record(Event.STEP_SKIPPED, condition=step.when, reason="condition is false")
            self._step_ended(index, step, StepStatus.SKIPPED, f"when {step.when}: false")
            return Flow.NEXT
        return None

    def _not_applied(
        self, index: int, step: Step, action: Action[Any, Any], plan: Plan[Any], ctx: RunContext
    ) -> RunResult | Flow | None:
        """A plan that is not applied: refused (blocked), planned only (a dry run), or
        with nothing to change; None when it is to be applied."""
        ui, request = self.ui, self.request
        if plan.blocked is not None:
            ui.plan(step, plan, applied=False)
            ctx.record(Event.STEP_END, ok=False, applied=False, summary=plan.blocked)
            self._step_ended(index, step, StepStatus.REFUSED, plan.blocked)
            if step.on_failure == "continue":  # the runbook's next step is the way on
                return Flow.NEXT
            return self.finish(
                RunStatus.HALTED,
                ExitStatus(plan.blocked_exit_status),
                f"step {step.id} refused: {plan.blocked}",
            )
        # a dry run applies only what changes nothing and is quick (a diagnosis)
        apply = not ctx.dry_run or (action.runs_in_dry_run and not action.mutating)
        if ctx.dry_run and not apply:
            ui.plan(step, plan, applied=False)
            # a real run diagnoses again after each change: a step planned after one is
            # what it would do only if the earlier changes did not settle it
            after_change = self.planned_changes and action.mutating and plan.operations
            summary = plan.summary + (
                f" — if still needed after {', '.join(self.planned_changes)} (a real run"
                " diagnoses again after each change and decides this step on that)"
                if after_change
                else ""
            )
            if action.mutating and plan.operations and approval.needed(request, step, action):
                summary += " — after an approval (a real run waits for one here)"
            ctx.record(
                Event.STEP_END,
                ok=True,
                dry_run=True,
                applied=False,
                summary=f"dry run: would {summary}",
            )
            self._step_ended(index, step, StepStatus.PLANNED, summary)
            if action.mutating and plan.operations:
                self.planned_changes.append(step.id)
            return Flow.NEXT
        if action.mutating and not plan.operations:
            # nothing to change: no question to ask, nothing to apply
            ctx.record(
                Event.STEP_END, ok=True, applied=False, summary=f"nothing to do: {plan.summary}"
            )
            self._step_ended(
                index, step, StepStatus.NOTHING_TO_DO, f"nothing to do: {plan.summary}", "ok"
            )
            return Flow.NEXT
        return None

    def _apply(
        self,
        index: int,
        step: Step,
        action: Action[Any, Any],
        plan: Plan[Any],
        ctx: RunContext,
        started: float,
    ) -> RunResult | Flow:
        """Apply the plan, record the outcome, diagnose again after a change, and end the
        run on an interruption or a failure the runbook halts on."""
        self.ui.step(index, self.total, step, "running", plan.summary)
        before = ctx.latest
        if action.mutating and plan.operations and action.waits_from_start:
            ctx.waiting()
        try:
            outcome: Outcome = action.apply(ctx, step.params, plan)
        except expressions.ExpressionError as exc:  # an `until` that fails on live data
            outcome = Outcome(False, str(exc), {"expression_error": str(exc)})
        except ConnectionLost as exc:
            if ctx.follow is None:
                raise
            return self._cut(index, step, ctx, str(exc))
        seconds = time.monotonic() - started
        for key, count in outcome.changed.items():
            ctx.totals[key] = ctx.totals.get(key, 0) + count
        ctx.record(
            Event.STEP_END,
            ok=outcome.ok,
            summary=outcome.summary,
            details=outcome.details,
            interrupted=outcome.interrupted,
            seconds=round(seconds, 3),
        )
        status = (
            StepStatus.OK
            if outcome.ok
            else (StepStatus.INTERRUPTED if outcome.interrupted else StepStatus.FAILED)
        )
        self._step_ended(index, step, status, outcome.summary)
        if action.mutating and not outcome.interrupted and ctx.latest is before:
            # a change was made (or tried) and the step took no picture after it: the
            # next step decides on a fresh one, never on the one this step acted on (a
            # kill that fixed a host must not be followed by its restart)
            ctx.diagnose()
        if ctx.latest is not None and ctx.latest is not before:
            self.ui.diagnosis(ctx.latest)
        if outcome.interrupted:
            return self.finish(
                RunStatus.INTERRUPTED, ExitStatus.INTERRUPTED, f"interrupted during step {step.id}"
            )
        if not outcome.ok and step.on_failure == "halt":
            return self.finish(
                RunStatus.HALTED, ExitStatus.UNHEALTHY, f"step {step.id} failed: {outcome.summary}"
            )
        return Flow.NEXT

    def _cut(self, index: int, step: Step, ctx: RunContext, why: str) -> Flow:
        """The connection was lost during a step of a run on several nodes: where are
        the roles now (the run follows the primary if it moved)? The step's plan was for
        a server that is gone or changed: it is recorded as cut, and planned again."""
        assert ctx.follow is not None
        node = ctx.follow.node
        ctx.record(
            Event.STEP_END,
            ok=False,
            applied=False,
            summary=f"cut: the connection to {node} was lost ({why}); planned again",
        )
        self._step_ended(index, step, StepStatus.INTERRUPTED, f"cut on {node}; planned again")
        ctx.diagnose()  # follows the primary when it moved; journals the role change
        return Flow.REPLAN

    def _confirmed(
        self, step: Step, plan: Plan[Any], mutating: bool, ctx: RunContext
    ) -> RunResult | None:
        """Ask before a change-making step when the runbook says so; return the finished
        run when the step may not run (no terminal and no --yes, or the operator said
        no), else None."""
        request, ui = self.request, self.ui
        unasked = mutating and not step.confirm and not ctx.dry_run and not request.yes
        if unasked and not request.interactive:
            message = (
                f"stopped before step {step.id}: it changes things and the runbook says"
                " confirm: false, but with no terminal and no --yes nobody asked for it;"
                " run again with --yes to apply it"
            )
            ctx.record(Event.CONFIRMATION_NEEDED, message=message)
            ui.note(message)
            return self.finish(RunStatus.STOPPED, ExitStatus.UNHEALTHY, message)
        if not step.confirm or ctx.dry_run:
            return None
        ui.plan(step, plan, applied=True)
        if request.yes:
            return None
        if not request.interactive:
            message = (
                f"stopped before step {step.id}: it needs confirmation and"
                " there is no terminal; run again with --yes to apply it"
            )
            ctx.record(Event.CONFIRMATION_NEEDED, message=message)
            ui.note(message)
            return self.finish(RunStatus.STOPPED, ExitStatus.UNHEALTHY, message)
        question = f"Apply step {step.id} ({step.action}): {plan.summary}?"
        answer = ui.confirm(question)
        ctx.record(Event.PROMPT, question=question, answer="yes" if answer else "no")
        if answer:
            return None
        message = f"the operator declined step {step.id}; stopping"
        ui.note(message)
        return self.finish(RunStatus.DECLINED, ExitStatus.UNHEALTHY, message)

    def _escalation_ends(self) -> RunResult:
        """Every step ran, or the runbook became healthy: say how the run ended."""
        ctx = self.ctx
        assert ctx is not None
        ctx.step = None
        healthy = ctx.healthy()
        runbook = ctx.runbook
        if self.request.mode is RunMode.COMMAND:
            if ctx.dry_run:
                return self.finish(RunStatus.DRY_RUN, ExitStatus.OK, "nothing was changed")
            return self.finish(RunStatus.DONE, ExitStatus.OK, "done")
        if ctx.dry_run:
            state = "healthy" if healthy else "unhealthy"
            return self.finish(
                RunStatus.DRY_RUN,
                ExitStatus.OK if healthy else ExitStatus.UNHEALTHY,
                f"nothing was changed; the environment is {state}",
            )
        others = self._other_nodes() if healthy else []
        if healthy and not others:
            return self.finish(RunStatus.RESOLVED, ExitStatus.OK, f"healthy: {runbook.healthy}")
        if healthy:  # healthy means every node is: another one is not
            return self.finish(
                RunStatus.UNHEALTHY,
                ExitStatus.UNHEALTHY,
                f"{runbook.healthy} holds on {ctx.follow.node if ctx.follow else '?'}, but"
                f" not every node is healthy: {', '.join(others)} (run again to act on it)",
            )
        return self.finish(
            RunStatus.UNHEALTHY,
            ExitStatus.UNHEALTHY,
            f"the runbook ran out of steps and {runbook.healthy} does not hold",
        )

    def _other_nodes(self) -> list[str]:
        """Of several database nodes: the others, diagnosed again at the end (each node's
        severity journaled); return those that are not healthy, each with its severity."""
        ctx = self.ctx
        if ctx is None or ctx.follow is None:
            return []
        from connfix.diagnosis.cluster import diagnose_all
        from connfix.engine.context import REJOIN_WAIT_S

        found = diagnose_all(ctx.environment, ctx.follow.cluster)
        # a node whose role changed in this run (an old primary restarting as a standby)
        # is waited for, a bounded while, before it is judged unreachable
        deadline = time.monotonic() + REJOIN_WAIT_S
        while set(found.unreachable) & ctx.follow.changed and time.monotonic() < deadline:
            waiting = ", ".join(sorted(set(found.unreachable) & ctx.follow.changed))
            ctx.ui.note(f"waiting for {waiting} to rejoin after its role changed")
            if not ctx.sleep(1.0):
                break
            found = diagnose_all(ctx.environment, ctx.follow.cluster)
        severities = found.severities
        ctx.record(Event.NODES, severities=severities, acted_on=ctx.follow.node)
        return [
            f"{name} {severity}"
            for name, severity in severities.items()
            if name != ctx.follow.node and severity != "ok"
        ]
