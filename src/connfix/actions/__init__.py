"""Runbook actions, one module each, registered by name; `restart/` is the rolling
restart's machinery (preflight, gates, one host, the roll).

The registry is lazy: an action's module (its parameter models, its machinery) is
imported the first time that action is asked for, so a command pays only for the
actions its runbook uses (`terminate` never imports the rolling restart's SSH gates).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connfix.actions.base import Action

# action name → (module, class); tests/unit/test_imports.py checks each class's own name
WHERE: dict[str, tuple[str, str]] = {
    "diagnose": ("connfix.actions.diagnose", "DiagnoseAction"),
    "verify": ("connfix.actions.verify", "VerifyAction"),
    "wait": ("connfix.actions.wait", "WaitAction"),
    "terminate": ("connfix.actions.terminate", "TerminateAction"),
    "cancel": ("connfix.actions.terminate", "CancelAction"),
    "rolling_restart": ("connfix.actions.rolling_restart", "RollingRestartAction"),
    "advise": ("connfix.actions.advise", "AdviseAction"),
    "pgbouncer_kill_clients": ("connfix.actions.pgbouncer_commands", "KillClientsAction"),
    "pgbouncer_reconnect": ("connfix.actions.pgbouncer_commands", "ReconnectAction"),
    "pgbouncer_pause": ("connfix.actions.pgbouncer_commands", "PauseAction"),
    "pgbouncer_resume": ("connfix.actions.pgbouncer_commands", "ResumeAction"),
}


class _Registry(Mapping[str, "Action[Any, Any]"]):
    """Every action by name; each one imported and made the first time it is asked for."""

    def __init__(self) -> None:
        self._made: dict[str, Action[Any, Any]] = {}

    def __getitem__(self, name: str) -> Action[Any, Any]:
        if name not in self._made:
            module, cls = WHERE[name]  # KeyError for an unknown action, as a dict
            self._made[name] = getattr(importlib.import_module(module), cls)()
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(WHERE)

    def __len__(self) -> int:
        return len(WHERE)

    def __contains__(self, name: object) -> bool:
        return name in WHERE


ACTIONS = _Registry()
