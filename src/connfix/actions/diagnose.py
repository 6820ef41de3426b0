"""`diagnose`: one read-only snapshot of pg_stat_activity."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connfix.actions.base import Action, Operation, Outcome, Params, Plan

if TYPE_CHECKING:
    from connfix.engine.context import RunContext


class DiagnoseAction(Action[Params, None]):
    """Read pg_stat_activity and the limits; attribute connections to hosts."""

    name = "diagnose"
    description = "read pg_stat_activity once and attribute every client backend"

    def plan(self, ctx: RunContext, params: Params) -> Plan[None]:
        return Plan(
            summary="read pg_stat_activity and the connection limits (read-only)",
            operations=[Operation("read", "snapshot of pg_stat_activity", target="database")],
        )

    def apply(self, ctx: RunContext, params: Params, plan: Plan[None]) -> Outcome:
        d = ctx.diagnose()
        return Outcome(True, ctx.describe(d))
