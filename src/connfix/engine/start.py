"""The one way a run starts, for the CLI and for `connfix serve` alike: the runbook's
hosts checked against the environment, a resumed run's journal read, where its incident
goes decided, the request built — then the step loop."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from connfix import InputError
from connfix.engine.run import RunMode, RunRequest

if TYPE_CHECKING:
    from connfix.config.inventory import Environment
    from connfix.engine.run import RunResult
    from connfix.engine.runbook import Runbook
    from connfix.engine.ui import UI


def start_run(
    environment: str,
    env: Environment,
    runbook: Runbook,
    ui: UI,
    *,
    incidents_dir: str | None,
    inventory_path: Path,
    mode: RunMode = RunMode.TRIAGE,
    dry_run: bool = False,
    yes: bool = False,
    interactive: bool = False,
    host_health: bool = True,
    resume: str | None = None,
    trigger: str | None = None,
    max_restart_hosts: int | None = None,
) -> RunResult:
    """Run a runbook against one environment (see engine.loop.run_runbook)."""
    from connfix.engine.loop import run_runbook
    from connfix.record.journal import incidents_base, resume_state

    if env.database.several:
        raise InputError(
            f"environment {environment} has several database nodes"
            " (database.nodes / database.patroni): connfix diagnoses each of them"
            f" (`connfix diagnose {environment}`), but its remedies do not yet act per node;"
            " nothing was done. Point a one-node environment at the node to act on."
        )
    runbook.check_hosts(environment, {h.name for h in env.hosts})
    resumed_from, done = resume_state(Path(resume), environment) if resume else (None, {})
    request = RunRequest(
        environment=environment,
        env=env,
        runbook=runbook,
        incidents_dir=incidents_base(incidents_dir, env.incidents_dir),
        inventory_path=inventory_path,
        mode=mode,
        dry_run=dry_run,
        yes=yes,
        interactive=interactive,
        host_health=host_health,
        resumed_from=resumed_from,
        resume_done=done,
        trigger=trigger,
        max_restart_hosts=max_restart_hosts,
    )
    return run_runbook(request, ui)
