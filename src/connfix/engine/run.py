"""A runbook run's request and result, its mode and how it ended (`RunStatus`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connfix import ConnfixError, ExitStatus
from connfix.record.events import RunStatus as RunStatus  # the journal's vocabulary, re-exported

if TYPE_CHECKING:
    from connfix.config.inventory import Environment
    from connfix.diagnosis.model import Diagnosis
    from connfix.engine.runbook import Runbook


class RunMode(enum.StrEnum):
    """How a runbook is run.

    TRIAGE escalates: before each step after the first, the runbook's healthy condition
    is checked and the run ends `resolved` as soon as it holds. COMMAND is a single
    command (`terminate`, `restart`) run as a one-step runbook: every step runs, and
    `done` (exit 0) means every step succeeded, healthy or not."""

    TRIAGE = "triage"
    COMMAND = "command"


class StepStatus(enum.StrEnum):
    """How one step ended, as the run's result lists it."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    REFUSED = "refused"
    PLANNED = "planned"
    NOTHING_TO_DO = "nothing to do"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class RunRequest:
    """Everything a runbook run needs, validated before it starts."""

    environment: str
    env: Environment
    runbook: Runbook
    incidents_dir: Path
    inventory_path: Path
    mode: RunMode = RunMode.TRIAGE
    dry_run: bool = False
    yes: bool = False
    interactive: bool = False
    # run every host's health check with each diagnosis ("healthy" means the app works);
    # off for a command that neither touches nor judges the hosts (terminate)
    host_health: bool = True
    # resuming an interrupted run: what its journal says is already done, per action
    resumed_from: Path | None = None
    resume_done: dict[str, list[str]] = field(default_factory=dict)
    # an alert-triggered run (connfix serve): which alert, and the policy's host cap
    trigger: str | None = None
    max_restart_hosts: int | None = None
    # an `approve` policy: the effects the run may have alone (the other steps wait for
    # an approval); None: only the steps the runbook marks wait
    approve_alone: frozenset[str] | None = None
    requester: str = ""  # who asked for the run: the operator, or the alert
    alert_starts_at: str | None = None  # the alert's startsAt (an alert's run)
    # of several database nodes: the one this run acts on, its role, every node's severity
    node: str | None = None
    node_role: str | None = None
    nodes: dict[str, str] = field(default_factory=dict)
    cluster: Environment | None = None  # the whole environment, every node
    # the SSH connections of the first diagnosis's health checks, begun before the run
    # (engine.start): host → connfix.hosts.remote.Remote; the run closes them
    logins: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class StepResult:
    """One step of the run and how it ended."""

    id: str
    status: StepStatus


@dataclass
class RunResult:
    """How a run ended."""

    status: RunStatus
    exit_status: ExitStatus
    incident_dir: Path
    dry_run: bool
    message: str
    final: Diagnosis | None = None
    steps: list[StepResult] = field(default_factory=list)
    report: Path | None = None
    report_error: str | None = None

    def write_report(self) -> None:
        """Render the report from the journal just closed; a failure is said, not raised."""
        from connfix.record import report

        try:
            written = report.write(self.incident_dir)
        except ConnfixError as exc:
            self.report_error = str(exc)
            return
        self.report = written.path
        if written.degraded:
            self.report_error = (
                f"the full report could not be rendered ({written.degraded}); a minimal"
                " report (outcome and timeline, from the journal) was written instead"
            )
