"""What an action is: it plans operations from the current state, then applies them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from connfix.config.records import Record

if TYPE_CHECKING:
    from connfix.engine.context import RunContext


@dataclass(frozen=True, kw_only=True)
class Params(Record):
    """Parameters of an action, validated when the runbook is loaded (a record:
    connfix.config.records)."""


@dataclass(frozen=True)
class Operation:
    """One thing a step would do: what, where, and the exact SQL or command."""

    kind: str  # e.g. "sql", "ssh", "wait", "read"
    description: str
    target: str | None = None  # a host, a pid, the database
    command: str | None = None  # the exact SQL or shell command
    details: dict[str, Any] = field(default_factory=dict)


P = TypeVar("P", bound="Params")
D = TypeVar("D")


@dataclass(frozen=True)
class Plan(Generic[D]):
    """The operations a step would carry out from the current state; `data` is what the
    action's apply needs of its own plan (typed per action; never journaled)."""

    summary: str
    operations: list[Operation] = field(default_factory=list)
    data: D | None = None
    # set when the plan cannot be carried out (e.g. a host failed its preflight): the
    # step fails without asking or applying, and the run ends with this exit status
    blocked: str | None = None
    blocked_exit_status: int = 1
    details: dict[str, Any] = field(default_factory=dict)  # journaled with the plan


@dataclass(frozen=True)
class Outcome:
    """What applying a plan did."""

    ok: bool
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    # what it changed, for later conditions: {"terminated": 3} or {"restarted": 1}
    changed: dict[str, int] = field(default_factory=dict)


class Action(Generic[P, D]):
    """Base of every runbook action, typed by its parameters P and its plan's data D;
    subclasses are registered in actions.ACTIONS."""

    name: ClassVar[str]
    description: ClassVar[str]
    params_model: ClassVar[type[Params]] = Params
    mutating: ClassVar[bool] = False  # changes something: confirmed, skipped in dry-run
    runs_in_dry_run: ClassVar[bool] = True  # read-only and quick: applied in dry-run too
    # a change that waits on the outside from its start (signals sent to the server, a
    # pooler's command): the run's work off the critical path may begin with the step.
    # One that first prepares (a roll) says itself when it waits: ctx.waiting()
    waits_from_start: ClassVar[bool] = True
    # what it may change (connfix.config.effects), by its class; `effect` may look at its params
    effect_name: ClassVar[str | None] = None

    def effect(self, params: P) -> str | None:
        """What this step may change, said as an alert policy's caps say it (one of
        connfix.config.effects.EFFECTS; None: nothing, it only reads or waits)."""
        return self.effect_name

    def expressions(self, params: P) -> list[tuple[str, str]]:
        """Return (field, expression) pairs in the params, for load-time checking."""
        return []

    def plan(self, ctx: RunContext, params: P) -> Plan[D]:
        """Plan the operations from the current state; change nothing."""
        raise NotImplementedError

    def apply(self, ctx: RunContext, params: P, plan: Plan[D]) -> Outcome:
        """Carry out a plan; record per-operation results through ctx."""
        raise NotImplementedError
