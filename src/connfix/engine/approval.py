"""A step that needs approval: the request journaled (and so notified), the wait for a
decision bounded by the policy's TTL, and — once approved — a fresh plan compared with
the approved one before anything is applied (connfix.record.approvals has the rules
and the store the deciders share)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connfix.record.events import Event, RunStatus

if TYPE_CHECKING:
    from connfix.actions.base import Action, Plan
    from connfix.config.inventory import ApprovalPolicy, Environment
    from connfix.engine.context import RunContext
    from connfix.engine.run import RunRequest
    from connfix.engine.runbook import Step
    from connfix.record import approvals

MAX_LISTED = 50  # operations listed in the request (the plan's hash covers them all)
# set when the process stops (serve's shutdown): a waiting run ends, nothing applied
STOP = threading.Event()


def needed(request: RunRequest, step: Step, action: Action[Any, Any]) -> bool:
    """Tell whether a real run must wait for an approval before this step: the runbook
    marks it, or an `approve` policy does not let the run do its effect alone."""
    if step.approval:
        return True
    if request.approve_alone is None:
        return False
    effect = action.effect(step.params)
    return effect is not None and effect not in request.approve_alone


def policy(env: Environment) -> ApprovalPolicy:
    """The environment's approval policy (its `alerts.approval`), or the defaults."""
    from connfix.config.inventory import ApprovalPolicy

    return env.alerts.approval if env.alerts is not None else ApprovalPolicy()


@dataclass
class Waited:
    """How a wait ended: a plan approved as it stands now (`plan`), or the run's end."""

    plan: Plan[Any] | None = None
    status: RunStatus | None = None
    message: str = ""


def wait(
    request: RunRequest, step: Step, action: Action[Any, Any], plan: Plan[Any], ctx: RunContext
) -> Waited:
    """Ask for an approval of `plan` and wait. Approved: plan again from a fresh
    diagnosis; the same plan is returned to be applied, a different one is asked for
    again (a plan with nothing to do or refused is returned as it is: never applied)."""
    from connfix.record import approvals  # only a run that waits for one

    rules = policy(ctx.env)
    while True:
        req = _ask(request, step, plan, ctx, rules)
        decision = _decision(req, ctx)
        if decision is None:
            if ctx.interrupt.requested or STOP.is_set():
                why = "interrupted" if ctx.interrupt.requested else "the process is stopping"
                return Waited(
                    status=RunStatus.INTERRUPTED,
                    message=f"{why} while step {step.id} waited for an approval; nothing applied",
                )
            ctx.record(
                Event.APPROVAL_EXPIRED,
                request=req.id,
                step=step.id,
                expires_at=approvals.iso(req.expires_at),
            )
            return Waited(
                status=RunStatus.EXPIRED,
                message=(
                    f"nobody approved step {step.id} within {rules.ttl:g}s (until"
                    f" {approvals.iso(req.expires_at)}); nothing was applied"
                ),
            )
        if decision.decision == "reject":
            ctx.record(Event.APPROVAL_REJECTED, **decision.fields())
            why = f": {decision.reason}" if decision.reason else ""
            return Waited(
                status=RunStatus.REJECTED,
                message=f"step {step.id} rejected by {decision.by} via {decision.via}{why}",
            )
        fresh = _replan(step, action, ctx)
        same = approvals.plan_hash(fresh.operations) == req.plan
        if same and fresh.blocked is None:
            ctx.record(Event.APPROVAL_GRANTED, **decision.fields())
            ctx.ui.note(f"step {step.id} approved by {decision.by} via {decision.via}")
            return Waited(plan=fresh)
        ctx.record(
            Event.APPROVAL_STALE,
            request=req.id,
            step=step.id,
            by=decision.by,
            approved=req.plan,
            now=approvals.plan_hash(fresh.operations),
            summary=fresh.summary,
        )
        if fresh.blocked is not None or not fresh.operations:
            return Waited(plan=fresh)  # refused or nothing to do: never applied
        ctx.ui.note(
            f"the plan of step {step.id} changed since {decision.by} approved it"
            f" ({fresh.summary}): asking again"
        )
        plan = fresh


def _ask(
    request: RunRequest, step: Step, plan: Plan[Any], ctx: RunContext, rules: ApprovalPolicy
) -> approvals.Request:
    """Show the plan, journal the request (notified from there), say how to answer it."""
    import secrets  # with hmac and hashlib, OpenSSL's library: for a run that asks

    from connfix.record import approvals  # only a run that waits for one

    incident = ctx.journal.path.parent
    now = time.time()
    req = approvals.Request(
        id=f"{step.id}-{secrets.token_hex(4)}",
        incident=incident,
        environment=ctx.environment,
        step=step.id,
        action=step.action,
        plan=approvals.plan_hash(plan.operations),
        summary=plan.summary,
        operations=[o.description for o in plan.operations[:MAX_LISTED]],
        requester=request.requester,
        requested_at=now,
        expires_at=now + rules.ttl,
        two_person=rules.two_person,
    )
    ctx.ui.plan(step, plan, applied=True)
    ctx.record(Event.APPROVAL_REQUESTED, **approvals.request_fields(req))
    ctx.ui.note(
        f"step {step.id} waits for an approval of plan {req.short} until"
        f" {approvals.iso(req.expires_at)}: connfix approve {incident} (or reject)"
        + (f"; {req.requester} cannot approve it (two_person)" if rules.two_person else "")
    )
    return req


def _replan(step: Step, action: Action[Any, Any], ctx: RunContext) -> Plan[Any]:
    """The step's plan from a fresh diagnosis, journaled as any plan is."""
    ctx.diagnose()
    fresh: Plan[Any] = ctx.planned(action, step.params)
    return fresh


def _decision(req: approvals.Request, ctx: RunContext) -> approvals.Decision | None:
    """Wait for a valid decision; None at the TTL or on Ctrl-C. Refused attempts (and a
    decision file the rules refuse) are journaled as they are seen."""
    from connfix.record import approvals  # only a run that waits for one

    seen = 0
    while True:
        found, seen = approvals.attempts(req.incident, seen)
        for attempt in found:
            if attempt.get("request") == req.id:
                ctx.record(Event.APPROVAL_REFUSED, **attempt)
        decision = approvals.read_decision(req.incident, req.id)
        if decision is not None:
            try:
                approvals.check(req, decision)
                return decision
            except approvals.ApprovalRefused as exc:
                # written past the rules (by hand): journaled, and nobody can decide now
                ctx.record(Event.APPROVAL_REFUSED, **decision.fields(), refused=str(exc))
                return None
        remaining = req.expires_at - time.time()
        if remaining <= 0 or STOP.is_set() or not ctx.sleep(min(approvals.POLL_S, remaining)):
            return None
