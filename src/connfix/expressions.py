"""Runbook conditions: Jinja2 expressions evaluated in a sandbox over the latest diagnosis.

Only the names listed in NAMES exist; anything else is an error when the runbook is
loaded, not at 2 AM when the step is reached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from connfix.diagnosis import Diagnosis

MAX_LENGTH = 500
EXTRA_NAMES = {
    "free_slots": "usable_connections − client_backends",
    "idle": "sessions in state idle",
    "idle_in_transaction_sessions": "sessions idle in transaction (aborted included)",
    "active": "sessions in state active",
    "hosts": "names of the environment's hosts",
    "thresholds": "the environment's thresholds (warning, critical, buffer, …)",
    "terminated": "sessions terminated so far in this run",
    "restarted": "hosts restarted (and verified) so far in this run",
}
NAMES = frozenset(f.name for f in dataclasses.fields(Diagnosis)) | set(EXTRA_NAMES)


class ExpressionError(ValueError):
    """An expression that cannot be compiled, names something unknown, or fails."""


@cache
def _environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def check(expression: str) -> None:
    """Raise ExpressionError unless `expression` compiles and uses only known names."""
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError("an expression must be a non-empty string")
    if len(expression) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    env = _environment()
    try:
        ast = env.parse("{{ (" + expression + ") }}")
        env.compile_expression(expression)
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"not a valid expression: {exc.message}") from None
    unknown = sorted(meta.find_undeclared_variables(ast) - NAMES)
    if unknown:
        raise ExpressionError(
            f"unknown name(s) {', '.join(unknown)} in {expression!r}; known: "
            + ", ".join(sorted(NAMES))
        )


def context(
    diagnosis: Diagnosis,
    hosts: list[str],
    thresholds: dict[str, Any],
    totals: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Build the names an expression sees from a diagnosis and the run so far."""
    data = diagnosis.to_json()
    states = diagnosis.by_state
    data.update(
        free_slots=diagnosis.usable_connections - diagnosis.client_backends,
        idle=states.get("idle", 0),
        idle_in_transaction_sessions=sum(
            v for k, v in states.items() if k.startswith("idle in transaction")
        ),
        active=states.get("active", 0),
        hosts=hosts,
        thresholds=thresholds,
        terminated=(totals or {}).get("terminated", 0),
        restarted=(totals or {}).get("restarted", 0),
    )
    return data


def evaluate(expression: str, names: dict[str, Any]) -> bool:
    """Evaluate an expression to a boolean; raise ExpressionError if it fails."""
    compiled: Callable[..., Any] = _environment().compile_expression(
        expression, undefined_to_none=False
    )
    try:
        return bool(compiled(**names))
    except (UndefinedError, SecurityError, TypeError, ValueError, ArithmeticError) as exc:
        raise ExpressionError(f"cannot evaluate {expression!r}: {exc}") from None
