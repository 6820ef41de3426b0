"""What a step may change, in the words of an alert policy's caps (`alerts.caps.actions`),
and which of them each action may have. The vocabulary lives here, below the actions,
so the inventory can check caps without importing the actions (a unit test keeps the
table and the registry of actions the same)."""

from __future__ import annotations

EFFECTS: dict[str, str] = {
    "cancel_queries": "cancel running statements (pg_cancel_backend); sessions stay",
    "end_sessions": "end sessions (pg_terminate_backend)",
    "restart_hosts": "restart the app's units on hosts (rolling restart)",
    "kill_pooler_clients": "end client connections in PgBouncer (KILL_CLIENT)",
    "pooler_pools": "PAUSE, RESUME or RECONNECT a PgBouncer pool",
}

# an action named in caps stands for these effects (terminate also allows the gentler
# cancel); a step itself is judged by the effect its parameters give (Action.effect)
ACTION_EFFECTS: dict[str, frozenset[str]] = {
    "diagnose": frozenset(),
    "advise": frozenset(),
    "wait": frozenset(),
    "verify": frozenset(),
    "terminate": frozenset({"end_sessions", "cancel_queries"}),
    "cancel": frozenset({"cancel_queries"}),
    "rolling_restart": frozenset({"restart_hosts"}),
    "pgbouncer_kill_clients": frozenset({"kill_pooler_clients"}),
    "pgbouncer_pause": frozenset({"pooler_pools"}),
    "pgbouncer_resume": frozenset({"pooler_pools"}),
    "pgbouncer_reconnect": frozenset({"pooler_pools"}),
}
