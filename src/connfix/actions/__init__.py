"""Runbook actions, one module each, registered by name; `restart/` is the rolling
restart's machinery (preflight, gates, one host, the roll)."""

from __future__ import annotations

from typing import Any

from connfix.actions.advise import AdviseAction
from connfix.actions.base import Action
from connfix.actions.diagnose import DiagnoseAction
from connfix.actions.pgbouncer_commands import (
    KillClientsAction,
    PauseAction,
    ReconnectAction,
    ResumeAction,
)
from connfix.actions.rolling_restart import RollingRestartAction
from connfix.actions.terminate import CancelAction, TerminateAction
from connfix.actions.verify import VerifyAction
from connfix.actions.wait import WaitAction

ACTIONS: dict[str, Action[Any, Any]] = {
    action.name: action
    for action in (
        DiagnoseAction(),
        VerifyAction(),
        WaitAction(),
        TerminateAction(),
        CancelAction(),
        RollingRestartAction(),
        AdviseAction(),
        KillClientsAction(),
        ReconnectAction(),
        PauseAction(),
        ResumeAction(),
    )
}
