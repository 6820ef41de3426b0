"""Faults the lab can inject, for tests and rehearsals: a host's sshd stopped or killed,
its app failing to start, failing its health check or leaking at once, and the
database restarted under every session."""

from __future__ import annotations

from connfix import LabInputError
from connfix.lab import hosts as lab_hosts
from connfix.lab import postgres as lab_pg


def _pid(name: str) -> int:
    from connfix.lab.lab import init_pid

    return init_pid(name)


def sshd(name: str, action: str) -> None:
    """Stop, kill or start one lab host's sshd (a fault for tests and rehearsals).

    stop: the listener (ssh.service) stops, open sessions live on (KillMode=process);
    kill: the listener and every login session: the host drops off; start: back."""
    pid = _pid(name)
    if action == "stop":
        lab_hosts.systemctl(pid, "stop", "ssh.service")
    elif action == "kill":
        lab_hosts.systemctl(pid, "kill", "--signal=SIGKILL", "ssh.service", check=False)
        lab_hosts.systemctl(pid, "stop", "ssh.service")
        lab_hosts.systemctl(pid, "kill", "--signal=SIGKILL", "user.slice", check=False)
    elif action == "start":
        lab_hosts.systemctl(pid, "start", "ssh.service")
    else:
        raise LabInputError(f"unknown sshd action {action!r} (stop, kill, start)")


FAULTS = ("fail-start", "unhealthy", "leak-on-start")


def fault(name: str, which: str, content: str = "") -> None:
    """Inject a lab fault on a host: fail-start (the app exits before it is ready; with
    content `times=N`, only its next N starts: a transient failure), unhealthy
    (its /health fails), leak-on-start (a new app process leaks N at once)."""
    if which not in FAULTS:
        raise LabInputError(f"unknown fault {which!r} ({', '.join(FAULTS)})")
    lab_hosts.file_in(_pid(name), f"{lab_hosts.FAULTS_DIR}/{which}").write_text(content)


def clear_faults(name: str) -> None:
    """Remove every injected fault from a host."""
    for which in FAULTS:
        lab_hosts.file_in(_pid(name), f"{lab_hosts.FAULTS_DIR}/{which}").unlink(missing_ok=True)


def restart_postgres() -> None:
    """Restart the lab's PostgreSQL (a fault for tests): every session is cut."""
    lab_pg.restart()
