"""The engine: runs a runbook against one environment and leaves a complete journal.

- `run`       — a run's request, result, mode (`RunMode`) and end (`RunStatus`);
- `loop`      — the step loop (`run_runbook`, `StepLoop`);
- `context`   — what actions see of a run (`RunContext`), the environment's lock;
- `interrupt` — Ctrl-C handling;  `secrets` — what must never be journaled;
- `ui`        — the protocol the CLI implements to show a run and ask the operator;
- `start`     — `start_run`, the one entry point the CLI and `serve` call;
- `runbook`   — a runbook read and checked against the actions (`runbooks/` ships the
                built-in ones), its conditions compiled by `expressions`.

Import the modules, not this package: it re-exports nothing, so that loading one part
(the CLI needs `run` at start-up) does not load the rest.
"""
