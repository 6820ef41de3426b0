"""The journal's vocabulary: every event a run records, by name.

A journal is JSON lines; each line's `event` is one of these. The report, `--resume` and
the tests read them by these names."""

from __future__ import annotations

import enum
from typing import NotRequired, TypedDict


class RunStatus(enum.StrEnum):
    """How a run ended: the journal's `run_end` status, the report's title."""

    RESOLVED = "resolved"
    DONE = "done"
    UNHEALTHY = "unhealthy"
    HALTED = "halted"
    DECLINED = "declined"
    STOPPED = "stopped"
    LOCKED = "locked"
    UNREACHABLE = "unreachable"
    ERROR = "error"
    INTERRUPTED = "interrupted"
    DRY_RUN = "dry_run"
    REJECTED = "rejected"  # an approver rejected a step's plan
    EXPIRED = "expired"  # nobody decided on a step's plan within its TTL


class Event(enum.StrEnum):
    """One kind of journal line."""

    # the run
    RUN_START = "run_start"  # environment, operator, runbook (name, path, sha256), flags
    CONNECTED = "connected"  # which way in (primary, reserved, admin), role, server
    LOCK_ACQUIRED = "lock_acquired"  # the environment's advisory lock
    LOCK_REFUSED = "lock_refused"  # another run holds it
    CONNECTION_LOST = "connection_lost"
    RECONNECTED = "reconnected"
    ROLE_CHANGED = "role_changed"  # the node's role changed mid-run (a switchover, failover)
    NODES = "nodes"  # of several database nodes: each one's severity at the end of a run
    SLOT_GIVEN_BACK = "slot_given_back"  # a privileged session closed during a restart
    SESSION_REOPENED = "session_reopened"
    DIAGNOSIS = "diagnosis"  # a whole diagnosis
    HEALTHY = "healthy"  # the runbook's healthy condition holds: escalation ends
    INTERRUPTED = "interrupted"  # Ctrl-C
    ERROR = "error"
    RUN_END = "run_end"  # status, exit status, message
    # a step
    STEP_START = "step_start"
    PLAN = "plan"  # what the step would do, and why it is refused if it is
    PROMPT = "prompt"  # the question asked and the answer
    CONFIRMATION_NEEDED = "confirmation_needed"  # no terminal and no --yes
    STEP_SKIPPED = "step_skipped"  # its `when` is false
    STEP_END = "step_end"
    # what steps do
    OPERATION = "operation"  # one session terminated, skipped or failed
    ADVICE = "advice"  # the permanent fix advised
    HOST_START = "host_start"  # a host's restart begins
    HOST_DONE = "host_done"  # it passed every gate
    HOST_FAILED = "host_failed"  # it failed a gate
    ROLL_HALTED = "roll_halted"  # the roll stopped: done, failed, untouched hosts
    NOTIFICATION = "notification"  # a notification sent (ok) or not (error); never fatal
    # approvals (connfix.record.approvals): request, decision, and what the rules refused
    APPROVAL_REQUESTED = "approval_requested"  # the plan, its hash, who asked, until when
    APPROVAL_GRANTED = "approval_granted"  # who approved, how, when; the plan is applied
    APPROVAL_REJECTED = "approval_rejected"  # who rejected, how, when, why
    APPROVAL_EXPIRED = "approval_expired"  # nobody decided within the TTL
    APPROVAL_REFUSED = "approval_refused"  # an attempt the rules refused (self, late, …)
    APPROVAL_STALE = "approval_stale"  # approved, but the fresh plan differs: asked again
    # the postmortem (before run_end): the incident before the run, and what it cost
    HISTORY = "history"  # connections and the limit from Prometheus before the run
    IMPACT = "impact"  # connection attempts the server refused, from its log


# The fields of the events other modules read back (the report, --resume), typed where
# they are written, so a renamed or missing field is a type error, not a blank report.


class RunbookRef(TypedDict):
    """Which runbook a run used."""

    name: str
    source: str
    sha256: str
    shadows: str | None  # the shipped runbook a local one of the same name shadows
    healthy: str
    steps: list[str]


class RunFlags(TypedDict):
    dry_run: bool
    yes: bool
    interactive: bool
    mode: str  # RunMode: triage or command


class RunStart(TypedDict):
    """`run_start`: who ran what, where, how."""

    environment: str
    operator: str
    hostname: str
    connfix_version: str
    runbook: RunbookRef
    inventory: str
    flags: RunFlags
    pid: int
    resumed_from: str | None
    resume_done: dict[str, list[str]]  # per action, what an earlier run had finished
    trigger: NotRequired[str]  # what started it, when not an operator: "alert NAME"
    alert_starts_at: NotRequired[str]  # the alert's startsAt, when an alert started it
    node: NotRequired[str]  # of several database nodes, the one the run acts on
    node_role: NotRequired[str]  # its role when the run started: primary or standby
    nodes: NotRequired[dict[str, str]]  # every node's severity when the run started


class RunEnd(TypedDict):
    """`run_end`: how the run ended."""

    status: str  # RunStatus
    exit_status: int
    message: str
    dry_run: bool
    healthy: bool | None  # None: no diagnosis, or the condition could not be evaluated


class UnitChange(TypedDict):
    unit: str
    type: str
    old_main_pid: int
    old_invocation_id: str
    new_main_pid: int | None
    new_invocation_id: str | None


class HostOutcomeFields(TypedDict):
    """`host_done` / `host_failed`: one host of a roll."""

    host: str
    ok: bool
    old_main_pid: int
    new_main_pid: NotRequired[int | None]  # host_done
    gate: NotRequired[str | None]  # host_failed: the gate that failed
    detail: NotRequired[str]
    units: list[UnitChange]
    gates: dict[str, float]  # seconds in each gate
    seconds: float
    ssh_reconnects: NotRequired[list[str]]
    command: NotRequired[str]  # the command that failed the gate, if one did
    exit_code: NotRequired[int | None]
    output_tail: NotRequired[str | None]
    log_tail: NotRequired[str]  # host_failed: the unit's last log lines (journalctl)
    healed: NotRequired[str]  # host_done: a failed start the unit's Restart= policy healed


class SessionOperation(TypedDict):
    """`operation` of a terminate or cancel step: one session ended, skipped, failed, or
    not attempted, with what it was when planned."""

    result: str  # terminated, cancelled, skipped, failed, not attempted
    reason: str
    confirmed_by: NotRequired[str]
    pid: int
    usename: str | None
    application_name: str
    client_addr: str | None
    host: str | None
    state: str | None
    idle_seconds: float
    xact_seconds: float | None
    query: str | None


class PoolerOperation(TypedDict):
    """`operation` of a PgBouncer step: a command sent (KILL_CLIENT, RECONNECT, PAUSE,
    RESUME) and its answer, or a planned client left alone because it changed."""

    pgbouncer: str
    command: NotRequired[str]
    ok: NotRequired[bool]
    error: NotRequired[str]
    skipped: NotRequired[str]
    # KILL_CLIENT: the client it is for
    host: NotRequired[str]
    client_id: NotRequired[int | None]
    addr: NotRequired[str | None]
    port: NotRequired[int]
    user: NotRequired[str]
    application_name: NotRequired[str]
    idle_seconds: NotRequired[float]
