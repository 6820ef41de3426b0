"""Session states as pg_stat_activity.state reports them, and the names flags and
runbooks use for them."""

from __future__ import annotations

import enum


class SessionState(enum.StrEnum):
    """pg_stat_activity.state of a client backend."""

    IDLE = "idle"
    IDLE_IN_TRANSACTION = "idle in transaction"
    IDLE_IN_TRANSACTION_ABORTED = "idle in transaction (aborted)"
    ACTIVE = "active"
    FASTPATH = "fastpath function call"
    DISABLED = "disabled"  # track_activities is off for it


# the names `--state` and a runbook's `states:` use (no spaces), and the state each means
BY_FLAG: dict[str, SessionState] = {
    "idle": SessionState.IDLE,
    "idle_in_transaction": SessionState.IDLE_IN_TRANSACTION,
    "idle_in_transaction_aborted": SessionState.IDLE_IN_TRANSACTION_ABORTED,
    "active": SessionState.ACTIVE,
    "fastpath": SessionState.FASTPATH,
}
# running a statement right now: never terminated without --include-active
RUNNING = frozenset({SessionState.ACTIVE, SessionState.FASTPATH})


def in_transaction(state: str | None) -> bool:
    """Tell whether a session sits idle inside a transaction (aborted or not)."""
    return bool(state) and str(state).startswith(SessionState.IDLE_IN_TRANSACTION)
