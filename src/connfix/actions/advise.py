"""`advise`: the permanent fixes, into the journal and so into the report's follow-ups:
the largest safe pool size, and whether a PgBouncer should go in front."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connfix.actions.base import Action, Operation, Outcome, Params, Plan

if TYPE_CHECKING:
    from connfix.engine.context import RunContext


class AdviseAction(Action[Params, None]):
    """Work out pool sizing from the latest diagnosis; change nothing."""

    name = "advise"
    description = "work out the safe pool size and whether to put PgBouncer in front"

    def plan(self, ctx: RunContext, params: Params) -> Plan[None]:
        return Plan(
            summary="work out pool sizing from the latest diagnosis (read-only)",
            operations=[Operation("advice", "pool sizing and PgBouncer advice")],
        )

    def apply(self, ctx: RunContext, params: Params, plan: Plan[None]) -> Outcome:
        from connfix.diagnosis.pool_sizing import size_pools
        from connfix.record.events import Event

        assert ctx.latest is not None  # the first step is a diagnose
        sizing = size_pools(ctx.env, ctx.latest)
        pooler = not sizing.safe or sizing.max_safe_pool_size == 0
        ctx.record(
            Event.ADVICE,
            sizing=sizing.to_json(),
            pgbouncer=pooler,
            command=f"connfix pool {ctx.environment} --pgbouncer-config DIR",
        )
        return Outcome(
            True,
            f"{sizing.servers} servers × {sizing.table()[0]['per_server']}"
            f" = {sizing.fleet_total} against {sizing.available} available: {sizing.verdict()}",
        )
