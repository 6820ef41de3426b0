"""Clients on the lab hosts that are no service's: a load generator (pgbench), an
interactive psql left open, a cron-like job. Each runs as a transient unit of the host's
own systemd (`systemd-run`), as the deploy user, so it is started, seen and stopped the
way an operator would on a real host; its sessions carry its own application_name."""

from __future__ import annotations

import shlex

from connfix import LabInputError
from connfix.lab import hosts, paths
from connfix.lab.paths import DATABASE

KINDS = ("pgbench", "psql", "job")
UNIT_PREFIX = "lab-client-"


def _libpq() -> str:
    return f"-h {paths.db_address()} -p {paths.pg_port()} -U app {DATABASE}"


def command(kind: str, clients: int, seconds: float) -> tuple[str, str]:
    """Return (application_name, shell command) of one kind of client."""
    if kind == "pgbench":
        return "pgbench", (
            f"pgbench -n -c {clients} -j 1 -T {max(1, round(seconds))}"
            f" -f /etc/labclients/sleep.sql {_libpq()}"
        )
    if kind == "psql":  # an interactive session someone left open: idle, waiting for input
        return "psql", f"sleep infinity | psql -q {_libpq()}"
    if kind == "job":  # a nightly report, as cron would start it
        return "nightly-report", f"psql -q -c 'SELECT pg_sleep({float(seconds)})' {_libpq()}"
    raise LabInputError(f"unknown client {kind!r} ({', '.join(KINDS)})")


def start(host: str, kind: str, clients: int = 1, seconds: float = 60) -> str:
    """Start a client on a host; return its unit's name."""
    from connfix.lab.lab import init_pid

    if not 1 <= clients <= 1000:
        raise LabInputError("--clients must be between 1 and 1000")
    if not 1 <= seconds <= 86_400:
        raise LabInputError("--duration must be between 1s and 1d")
    application, shell = command(kind, clients, seconds)
    unit = f"{UNIT_PREFIX}{kind}"
    pid = init_pid(host)
    hosts.systemctl(pid, "reset-failed", f"{unit}.service", check=False)
    hosts.enter(
        pid,
        [
            "systemd-run",
            f"--unit={unit}",
            f"--uid={hosts.DEPLOY_USER}",
            f"--setenv=PGPASSFILE={hosts.CLIENTS_PGPASS}",
            f"--setenv=PGAPPNAME={application}",
            "--quiet",
            "sh",
            "-c",
            shell,
        ],
    )
    return unit


def stop(host: str, kind: str | None = None) -> list[str]:
    """Stop one kind of client on a host, or all of them; return the units stopped."""
    from connfix.lab.lab import init_pid

    pid = init_pid(host)
    kinds = [kind] if kind else list(KINDS)
    stopped = []
    for each in kinds:
        unit = f"{UNIT_PREFIX}{each}.service"
        active = hosts.systemctl(pid, "is-active", unit, check=False).stdout.strip()
        if active in ("active", "activating"):
            hosts.systemctl(pid, "stop", unit)
            stopped.append(unit)
        hosts.systemctl(pid, "reset-failed", unit, check=False)
    return stopped


def describe(kind: str, clients: int, seconds: float) -> str:
    """Say what a client does, for the CLI."""
    application, shell = command(kind, clients, seconds)
    return f"{kind} (application_name {application}): {shlex.quote(shell)}"
