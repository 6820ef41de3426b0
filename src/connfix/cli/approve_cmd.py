"""`connfix approve` and `connfix reject`: decide on the plan a run waits for."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from connfix.cli import envelope
from connfix.cli.envelope import json_option
from connfix.cli.options import interactive, terminal


def _options(command: Any) -> Any:
    for option in reversed(
        [
            click.argument("incident", metavar="INCIDENT"),
            click.option(
                "--as",
                "as_name",
                metavar="NAME",
                help="Your name as the record should show it, next to your OS user.",
            ),
            click.option("--reason", metavar="TEXT", default="", help="Why, for the record."),
            click.option("--yes", "-y", is_flag=True, help="Do not ask; decide at once."),
            json_option,
        ]
    ):
        command = option(command)
    return command


def identity(as_name: str | None) -> str:
    """The approver: the OS user (the sudo caller under sudo), and the name given."""
    from connfix.engine.loop import operator

    user = operator()
    name = (as_name or "").strip()
    if any(not c.isprintable() for c in name) or len(name) > 100:
        raise click.BadParameter("a printable name of at most 100 characters", param_hint="--as")
    return f"{user} (as {name})" if name and name != user else user


def _decide(
    verb: str, incident: str, as_name: str | None, reason: str, yes: bool, as_json: bool
) -> None:
    from connfix.record import approvals

    if as_json:
        envelope.mark(verb)
    who = identity(as_name)
    req = approvals.pending(Path(incident))
    term = terminal()
    left = req.expires_in()
    term.err.print(
        f"incident {req.incident.name} ({req.environment}): step {req.step} ({req.action})"
        f" waits for an approval, asked by {req.requester}, {left:.0f}s left"
        + (" (two_person: its requester cannot approve it)" if req.two_person else ""),
        markup=False,
        highlight=False,
    )
    term.err.print(f"plan {req.short}: {req.summary}", markup=False, highlight=False)
    for line in req.operations:
        term.err.print(f"  - {line}", markup=False, highlight=False)
    if not yes:
        if not interactive():
            raise click.UsageError(f"no terminal to ask on: give --yes to {verb} this plan")
        from rich.prompt import Confirm

        if not Confirm.ask(f"{verb.capitalize()} plan {req.short} as {who}?", console=term.err):
            term.err.print("nothing decided")
            sys.exit(1)
    decision = approvals.decide(
        req, "approve" if verb == "approve" else "reject", who, "terminal", req.plan, reason
    )
    term.out.print(
        f"{decision.decision}d: step {req.step} of {req.incident.name}, plan {req.short},"
        f" by {decision.by}",
        markup=False,
        highlight=False,
    )
    if as_json:
        envelope.emit(
            verb,
            "ok",
            0,
            environment=req.environment,
            incident=req.incident,
            result={"decision": decision.fields(), "step": req.step, "plan": req.plan},
        )


@click.command()
@_options
def approve(incident: str, as_name: str | None, reason: str, yes: bool, as_json: bool) -> None:
    """Approve the plan a run waits for (a step that needs approval).

    INCIDENT is the run's incident directory, as `connfix report` takes it. The plan is
    shown first and confirmed (or --yes). You are recorded as your OS user (the sudo
    caller under sudo), with --as NAME beside it. Refused, with the reason, when the
    request has expired, was already decided, or you started the run and the policy
    says two_person.

    \b
    Example:
      connfix approve incidents/20261205T021500Z-prod
      connfix approve incidents/20261205T021500Z-prod --as "Dana (DBA on call)" --yes
    """
    _decide("approve", incident, as_name, reason, yes, as_json)


@click.command()
@_options
def reject(incident: str, as_name: str | None, reason: str, yes: bool, as_json: bool) -> None:
    """Reject the plan a run waits for: the run ends `rejected`, nothing is applied.

    \b
    Example:
      connfix reject incidents/20261205T021500Z-prod --reason "restart after the deploy"
    """
    _decide("reject", incident, as_name, reason, yes, as_json)
