"""`verify`: re-diagnose until the environment is healthy, or give up after a timeout."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from connfix.actions.base import Action, Operation, Outcome, Params, Plan
from connfix.config.units import between, format_duration

if TYPE_CHECKING:
    from connfix.engine.context import RunContext


Timeout = Annotated[float, between(1, 3600)]
Pause = Annotated[float, between(0.1, 3600)]
Interval = Annotated[float, between(0.2, 300)]


@dataclass(frozen=True, kw_only=True)
class VerifyParams(Params):
    """How long to poll, how often, and for what (default: the runbook's healthy)."""

    timeout: Timeout = 60.0
    interval: Interval = 2.0
    until: str | None = None


class VerifyAction(Action[VerifyParams, None]):
    """Poll the diagnosis until a condition holds or the timeout passes."""

    name = "verify"
    description = "re-diagnose every interval until healthy, at most timeout"
    params_model = VerifyParams
    runs_in_dry_run = False  # a dry run does not wait for a change it did not make

    def expressions(self, params: VerifyParams) -> list[tuple[str, str]]:
        return [("until", params.until)] if params.until else []

    def plan(self, ctx: RunContext, params: VerifyParams) -> Plan[None]:
        condition = params.until or ctx.runbook.healthy
        return Plan(
            summary=f"poll every {format_duration(params.interval)} until {condition},"
            f" at most {format_duration(params.timeout)}",
            operations=[
                Operation("read", f"poll pg_stat_activity until {condition}", target="database")
            ],
        )

    def apply(self, ctx: RunContext, params: VerifyParams, plan: Plan[None]) -> Outcome:
        condition = params.until or ctx.runbook.healthy
        deadline = time.monotonic() + params.timeout
        polls = 0
        while True:
            polls += 1
            d = ctx.diagnose()
            if ctx.holds(condition, d):
                return Outcome(
                    True, f"{condition} after {polls} poll(s): {ctx.describe(d)}", {"polls": polls}
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Outcome(
                    False,
                    f"still not {condition} after"
                    f" {format_duration(params.timeout)} ({polls} polls):"
                    f" {ctx.describe(d)}",
                    {"polls": polls},
                )
            if not ctx.sleep(min(params.interval, remaining)):
                return Outcome(
                    False, "interrupted while verifying", {"polls": polls}, interrupted=True
                )
