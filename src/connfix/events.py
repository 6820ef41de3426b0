"""The journal's vocabulary: every event a run records, by name.

A journal is JSON lines; each line's `event` is one of these. The report, `--resume` and
the tests read them by these names."""

from __future__ import annotations

import enum


class Event(enum.StrEnum):
    """One kind of journal line."""

    # the run
    RUN_START = "run_start"  # environment, operator, runbook (name, path, sha256), flags
    CONNECTED = "connected"  # which way in (primary, reserved, admin), role, server
    LOCK_ACQUIRED = "lock_acquired"  # the environment's advisory lock
    LOCK_REFUSED = "lock_refused"  # another run holds it
    CONNECTION_LOST = "connection_lost"
    RECONNECTED = "reconnected"
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
