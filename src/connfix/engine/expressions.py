"""Runbook conditions: Jinja2 expressions evaluated in a sandbox over the latest diagnosis.

Only the names listed in NAMES exist; anything else is an error when the runbook is
loaded, not at 2 AM when the step is reached.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

from connfix import ConnfixError, ExitStatus
from connfix.db.sessions import in_transaction

if TYPE_CHECKING:
    from jinja2 import nodes

    from connfix.config.sandbox import ConditionSandbox
    from connfix.diagnosis.model import Diagnosis

MAX_LENGTH = 500
MAX_DEPTH = 40  # nesting of the expression's syntax tree
EXTRA_NAMES = {
    "free_slots": "usable_connections − client_backends",
    "idle": "sessions in state idle",
    "idle_in_transaction_sessions": "sessions idle in transaction (aborted included)",
    "active": "sessions in state active",
    "hosts": "names of the environment's hosts",
    "thresholds": "the environment's thresholds (warning, critical, buffer, …)",
    "terminated": "sessions terminated so far in this run",
    "restarted": "hosts restarted (and verified) so far in this run",
    "pooled_suspects": "leak suspects holding client connections in a PgBouncer",
    "pgbouncer_clients_killed": "PgBouncer clients ended so far in this run (KILL_CLIENT)",
}
# The fields of connfix.diagnosis.model.Diagnosis (a unit test keeps the two equal):
# written out, so that checking a runbook's conditions does not import the model.
DIAGNOSIS_FIELDS = (
    "environment", "taken_at", "seconds", "connected_as", "via", "refusal",
    "server_version", "server_version_num", "max_connections",
    "superuser_reserved_connections", "reserved_connections", "usable_connections",
    "client_backends", "utilization", "severity", "severity_reasons",
    "visibility_complete", "hidden_sessions", "by_state", "by_host", "by_application",
    "by_user", "by_database", "idle_in_transaction", "connection_limits", "pool_check",
    "suspects", "pgbouncers", "pooler_sessions", "zero_setup", "notes", "own_sessions",
    "host_health", "unhealthy_hosts", "unowned_connections", "blocking_chains", "role",
    "node", "ha_role", "ha_sessions", "platform", "platform_reserved_connections",
    "platform_sessions",
)  # fmt: skip
NAMES = frozenset(DIAGNOSIS_FIELDS) | set(EXTRA_NAMES)


class ExpressionError(ValueError, ConnfixError):
    """An expression that cannot be compiled, names something unknown, or fails."""

    exit_status = ExitStatus.BAD_INPUT


@cache
def _environment() -> ConditionSandbox:
    """The sandbox conditions are compiled in. Jinja is imported here, when a condition
    is first checked or evaluated, not with the runbook: a command's own runbook (a
    terminate, a restart) evaluates its one condition at its end, and Jinja's import
    (about 25 ms) is then paid by the report's warm-up while the run waits on the
    database or a host, not before the run's first step."""
    from jinja2 import StrictUndefined

    from connfix.config.sandbox import ConditionSandbox

    return ConditionSandbox(undefined=StrictUndefined, autoescape=False)


def _depth(node: nodes.Node, limit: int) -> int:
    """Return the depth of a syntax tree, stopping once it passes `limit`."""
    deepest, todo = 0, [(node, 1)]
    while todo:
        current, depth = todo.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        todo.extend((child, depth + 1) for child in current.iter_child_nodes())
    return deepest


def _refusals(ast: nodes.Node) -> list[str]:
    """Filters and method calls a condition may not use."""
    from jinja2 import nodes

    from connfix.config.sandbox import CONDITION_FILTERS, SAFE_METHODS

    found = []
    for attr in ast.find_all(nodes.Getattr):
        if attr.attr.startswith("_"):
            found.append(f"the attribute {attr.attr!r} is not allowed in a condition")
    for node in ast.find_all((nodes.Filter, nodes.Call)):
        if isinstance(node, nodes.Filter) and node.name not in CONDITION_FILTERS:
            found.append(f"the filter {node.name!r} is not allowed in a condition")
        if isinstance(node, nodes.Call):
            target = node.node
            if isinstance(target, nodes.Getattr) and target.attr not in SAFE_METHODS:
                found.append(f"calling .{target.attr}() is not allowed in a condition")
            elif isinstance(target, nodes.Name):
                found.append(f"calling {target.name}() is not allowed in a condition")
    return found


def check(expression: str) -> None:
    """Raise ExpressionError unless `expression` compiles and uses only known names (an
    expression this code checked before, kept in connfix's cache, is not compiled
    again to be checked: `remember_checked`)."""
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError("an expression must be a non-empty string")
    if len(expression) > MAX_LENGTH:
        raise ExpressionError(f"expression is longer than {MAX_LENGTH} characters")
    known = _checked()
    if expression in known.texts:
        return
    _check(expression)
    known.texts.add(expression)
    known.changed = True


class _Checked:
    """The expressions this code found valid, as kept in connfix's cache."""

    def __init__(self, where: str | None, texts: set[str]) -> None:
        self.where = where
        self.texts = texts
        self.changed = False


CHECKED_KEPT = 1_000  # expressions; past it the list starts again


@cache
def _checked() -> _Checked:
    """The expressions found valid before by this code — this module, the sandbox's and
    Jinja's installed files, by path, size and time — read once per process."""
    import importlib.util
    import marshal

    from connfix.config import cache as kept

    # the files by path alone: importing the sandbox would import Jinja, which a
    # runbook whose expressions were all checked before does not need to load
    files = [importlib.util.find_spec(m) for m in ("connfix.config.sandbox", "jinja2")]
    said = kept.signature([__file__, *(f.origin if f and f.origin else "" for f in files)])
    where = kept.entry("expressions", said, b"")
    if where is None:
        return _Checked(None, set())
    try:
        texts = marshal.loads(kept.read(where))
    except (OSError, EOFError, ValueError, TypeError):  # none yet, or damaged
        texts = set()
    if not isinstance(texts, set) or not all(type(t) is str for t in texts):
        texts = set()
    return _Checked(where, texts)


def remember_checked() -> None:
    """Keep the expressions found valid in this process for the next (once a runbook
    has been checked whole)."""
    import marshal

    from connfix.config import cache as kept

    known = _checked()
    if known.where is None or not known.changed:
        return
    texts = known.texts if len(known.texts) <= CHECKED_KEPT else set()
    kept.store(known.where, marshal.dumps(texts), 8)
    known.changed = False


def _check(expression: str) -> None:
    from jinja2 import TemplateSyntaxError, meta

    env = _environment()
    try:
        ast = env.parse("{{ (" + expression + ") }}")
        _compiled(expression)
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"not a valid expression: {exc.message}") from None
    except RecursionError:
        raise ExpressionError("the expression is nested too deeply") from None
    if _depth(ast, MAX_DEPTH) > MAX_DEPTH:
        raise ExpressionError(f"the expression is nested more than {MAX_DEPTH} levels deep")
    refusals = _refusals(ast)
    if refusals:
        raise ExpressionError(f"{refusals[0]}: {expression!r}")
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
        idle_in_transaction_sessions=sum(v for k, v in states.items() if in_transaction(k)),
        active=states.get("active", 0),
        hosts=hosts,
        thresholds=thresholds,
        terminated=(totals or {}).get("terminated", 0),
        restarted=(totals or {}).get("restarted", 0),
        pooled_suspects=[h.host for h in diagnosis.by_host if h.suspect and h.pooled],
        pgbouncer_clients_killed=(totals or {}).get("pgbouncer_clients_killed", 0),
    )
    return data


@lru_cache(maxsize=256)
def _compiled(expression: str) -> Callable[..., Any]:
    """The expression compiled once per process: a run evaluates the same few conditions
    at every step and poll (Jinja compiles an expression anew at each call)."""
    compiled: Callable[..., Any] = _environment().compile_expression(
        expression, undefined_to_none=False
    )
    return compiled


def evaluate(expression: str, names: dict[str, Any]) -> bool:
    """Evaluate an expression to a boolean; raise ExpressionError if it fails."""
    compiled = _compiled(expression)
    try:
        return bool(compiled(**names))
    except RecursionError:
        raise ExpressionError(f"cannot evaluate {expression!r}: nested too deeply") from None
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, KeyError | IndexError):
            reason = f"no {exc} in it ({type(exc).__name__})"
        raise ExpressionError(f"cannot evaluate {expression!r}: {reason}") from None
