"""`wait`: let time pass (e.g. for pools to give connections back), optionally until a
condition holds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from connfix.actions.base import Action, Operation, Outcome, Params, Plan
from connfix.actions.verify import Interval, Pause
from connfix.config.units import format_duration

if TYPE_CHECKING:
    from connfix.engine.context import RunContext


@dataclass(frozen=True, kw_only=True)
class WaitParams(Params):
    """How long to wait; with `until`, stop early once it holds (polling every interval)."""

    duration: Pause
    until: str | None = None
    interval: Interval = 2.0


class WaitAction(Action[WaitParams, None]):
    """Wait for a duration, or until a condition holds."""

    name = "wait"
    description = "wait for a duration, or until a condition holds"
    params_model = WaitParams
    runs_in_dry_run = False

    def expressions(self, params: WaitParams) -> list[tuple[str, str]]:
        return [("until", params.until)] if params.until else []

    def plan(self, ctx: RunContext, params: WaitParams) -> Plan[None]:
        text = f"wait {format_duration(params.duration)}"
        if params.until:
            text += f" or until {params.until}"
        return Plan(summary=text, operations=[Operation("wait", text)])

    def apply(self, ctx: RunContext, params: WaitParams, plan: Plan[None]) -> Outcome:
        deadline = time.monotonic() + params.duration
        while True:
            remaining = deadline - time.monotonic()
            if params.until and ctx.holds(params.until, ctx.diagnose()):
                return Outcome(True, f"{params.until} holds")
            if remaining <= 0:
                return Outcome(True, f"waited {format_duration(params.duration)}")
            step = min(remaining, params.interval) if params.until else remaining
            if not ctx.sleep(step):
                return Outcome(False, "interrupted while waiting", interrupted=True)
