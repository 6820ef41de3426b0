"""`connfix triage` on the lab: dry-run, escalation, prompts, the lock, signals, secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connfix.cli import cli, options
from connfix.record.journal import read_journal
from tests.helpers import Lab, assert_complete, connfix_run, events, retry

HEADER = """\
version: 1
name: test
summary: a test runbook
healthy: "severity == 'ok' and not suspects"
steps:
  - id: diagnose
    action: diagnose
"""


def runbook(tmp_path: Path, steps: str, name: str = "runbook.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + steps)
    return path


PAUSE = """\
  - id: pause
    action: wait
    confirm: true
    params: {duration: 300ms}
"""
LONG_WAIT = """\
  - id: long-wait
    action: wait
    params: {duration: 60s}
"""
VERIFY = """\
  - id: verify
    action: verify
    params: {timeout: 1s, interval: 300ms}
"""


def names(evs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in evs]


def triage(lab: Lab, tmp_path: Path, *args: str, input: str | None = None) -> Any:
    return connfix_run("triage", lab.inventory, tmp_path / "incidents", *args, input=input)


def backend_pids(lab: Lab) -> set[int]:
    return {b["pid"] for b in lab.client_backends() if b["application_name"] != "connfix"}


def test_healthy_environment_stops_after_the_diagnosis(clean_lab: Lab, tmp_path: Path) -> None:
    result = triage(
        clean_lab, tmp_path, "--yes", "--runbook", str(runbook(tmp_path, PAUSE + VERIFY))
    )
    assert result.exit_code == 0, result.output
    evs = events(tmp_path / "incidents")
    assert names(evs)[:4] == ["run_start", "connected", "lock_acquired", "step_start"]
    assert [e["step"] for e in evs if e["event"] == "step_start"] == ["diagnose"]
    assert "healthy" in names(evs)
    assert evs[-1]["event"] == "run_end" and evs[-1]["status"] == "resolved"
    assert "resolved" in result.output


def test_unhealthy_environment_walks_the_steps(clean_lab: Lab, tmp_path: Path) -> None:
    clean_lab.core.leak("app2", 4, idle_in_transaction=False)  # a suspect
    result = triage(
        clean_lab, tmp_path, "--yes", "--runbook", str(runbook(tmp_path, PAUSE + VERIFY))
    )
    assert result.exit_code == 1
    evs = events(tmp_path / "incidents")
    started = [e["step"] for e in evs if e["event"] == "step_start"]
    assert started == ["diagnose", "pause", "verify"]
    ends = {e["step"]: e for e in evs if e["event"] == "step_end"}
    assert ends["pause"]["ok"] and ends["pause"]["summary"] == "waited 300ms"
    assert not ends["verify"]["ok"] and ends["verify"]["details"]["polls"] >= 2
    assert sum(1 for e in evs if e["event"] == "diagnosis") >= 3
    assert evs[-1]["status"] == "halted"
    run_start = evs[0]
    assert run_start["runbook"]["name"] == "test" and len(run_start["runbook"]["sha256"]) == 64
    assert run_start["flags"] == {
        "dry_run": False,
        "yes": True,
        "interactive": False,
        "mode": "triage",
    }
    assert run_start["operator"] and run_start["connfix_version"]


def test_dry_run_records_a_plan_and_changes_nothing(clean_lab: Lab, tmp_path: Path) -> None:
    clean_lab.core.leak("app2", 3, idle_in_transaction=True)
    before = backend_pids(clean_lab)
    result = triage(
        clean_lab, tmp_path, "--dry-run", "--runbook", str(runbook(tmp_path, PAUSE + VERIFY))
    )
    assert result.exit_code == 1  # still unhealthy: the truth, not a pretend success
    assert "DRY RUN — nothing was changed" in result.output
    assert "step pause would wait 300ms" in result.output
    evs = events(tmp_path / "incidents")
    plans = [e for e in evs if e["event"] == "plan"]
    assert [p["step"] for p in plans] == ["diagnose", "pause", "verify"]
    assert all(p["dry_run"] for p in plans)
    applied = [e for e in evs if e["event"] == "step_end" and e.get("applied") is False]
    assert [e["step"] for e in applied] == ["pause", "verify"]
    assert "prompt" not in names(evs) and "lock_acquired" not in names(evs)
    assert evs[-1]["status"] == "dry_run" and evs[-1]["dry_run"] is True
    retry(lambda: backend_pids(clean_lab) == before)


def test_prompt_answered_yes_applies_the_step(
    clean_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_lab.core.leak("app1", 4, idle_in_transaction=False)
    monkeypatch.setattr(options, "interactive", lambda: True)
    result = triage(clean_lab, tmp_path, "--runbook", str(runbook(tmp_path, PAUSE)), input="y\n")
    evs = events(tmp_path / "incidents")
    (prompt,) = [e for e in evs if e["event"] == "prompt"]
    assert prompt["answer"] == "yes" and prompt["step"] == "pause"
    assert "Apply step pause (wait): wait 300ms?" in result.output
    assert any(e["event"] == "step_end" and e["step"] == "pause" and e["ok"] for e in evs)
    assert result.exit_code == 1  # ran out of steps, still a suspect


def test_prompt_answered_no_stops(
    clean_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_lab.core.leak("app1", 4, idle_in_transaction=False)
    monkeypatch.setattr(options, "interactive", lambda: True)
    result = triage(
        clean_lab, tmp_path, "--runbook", str(runbook(tmp_path, PAUSE + VERIFY)), input="n\n"
    )
    assert result.exit_code == 1
    evs = events(tmp_path / "incidents")
    (prompt,) = [e for e in evs if e["event"] == "prompt"]
    assert prompt["answer"] == "no"
    assert not any(e["event"] == "step_end" and e["step"] == "pause" for e in evs)
    assert [e["step"] for e in evs if e["event"] == "step_start"] == ["diagnose", "pause"]
    assert evs[-1]["status"] == "declined"
    assert "the operator declined step pause" in result.output


def test_no_terminal_and_no_yes_stops_before_the_step(clean_lab: Lab, tmp_path: Path) -> None:
    clean_lab.core.leak("app1", 4, idle_in_transaction=False)
    result = triage(clean_lab, tmp_path, "--runbook", str(runbook(tmp_path, PAUSE)))
    assert result.exit_code == 1
    assert "needs confirmation and there is no terminal" in result.output
    assert "step pause plan: wait 300ms" in result.output  # the plan is shown first
    evs = events(tmp_path / "incidents")
    assert "confirmation_needed" in names(evs) and evs[-1]["status"] == "stopped"


def start_triage(lab: Lab, tmp_path: Path, book: Path, incidents: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connfix",
            "triage",
            "lab",
            "--yes",
            "--runbook",
            str(book),
            "-i",
            str(lab.inventory),
            "--incidents-dir",
            str(incidents),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_event(incidents: Path, event: str, step: str | None = None) -> None:
    def seen() -> bool:
        journals = list(incidents.glob("*/journal.jsonl"))
        return bool(journals) and any(
            e["event"] == event and (step is None or e.get("step") == step)
            for e in read_journal(journals[0])
        )

    retry(seen, timeout=20)


@pytest.fixture
def long_run(clean_lab: Lab, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    clean_lab.core.leak("app3", 4, idle_in_transaction=False)
    incidents = tmp_path / "first"
    proc = start_triage(clean_lab, tmp_path, runbook(tmp_path, LONG_WAIT, "long.yaml"), incidents)
    try:
        wait_for_event(incidents, "step_start", "long-wait")
        yield proc, incidents
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)  # reap, and close the pipes


def test_second_concurrent_triage_is_refused_with_the_holder(
    long_run: tuple[subprocess.Popen[str], Path], clean_lab: Lab, tmp_path: Path
) -> None:
    proc, first = long_run
    result = triage(clean_lab, tmp_path, "--yes", "--runbook", str(runbook(tmp_path, PAUSE)))
    assert result.exit_code == 1
    # the other run named as a run: who, where, its process, the incident it writes, how long
    import getpass
    import socket

    (incident,) = first.glob("*")
    output = " ".join(result.output.split())
    assert "another connfix run holds environment 'lab' (the lock of its database 'appdb'" in output
    assert f"operator {os.environ.get('SUDO_USER') or getpass.getuser()}" in output
    assert f"on {socket.gethostname()} (its pid {proc.pid}), writing {incident}" in output
    assert "holding it for" in output
    holder_pid = next(
        b["pid"] for b in clean_lab.client_backends() if b["application_name"] == "connfix"
    )
    evs = events(tmp_path / "incidents")
    assert names(evs) == ["run_start", "connected", "lock_refused", "impact", "run_end"]
    assert evs[2]["holder"]["pid"] == holder_pid
    report = assert_complete(tmp_path / "incidents", "refused (another run held the environment)")
    assert f"refused: another run holds the environment (pid {holder_pid})" in report
    # a dry run takes no lock: it may look while someone acts
    dry = triage(
        clean_lab, tmp_path / "dry", "--dry-run", "--runbook", str(runbook(tmp_path, PAUSE))
    )
    assert dry.exit_code == 1 and "another connfix run" not in dry.output


def test_another_environment_naming_the_same_database_is_refused_too(
    long_run: tuple[subprocess.Popen[str], Path], clean_lab: Lab, tmp_path: Path
) -> None:
    """The lock is the database's, not the environment name's: `lab2`, a second name for
    the same database (another inventory, another team), is refused while `lab` runs."""
    import yaml

    data = yaml.safe_load(clean_lab.inventory.read_text())
    data["environments"] = {"lab2": data["environments"]["lab"]}
    inventory = tmp_path / "other.yaml"
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    book = str(runbook(tmp_path, PAUSE))
    result = connfix_run(
        "triage", inventory, tmp_path / "other", "--yes", "--runbook", book, environment="lab2"
    )
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert "another connfix run holds environment 'lab2' (the lock of its database 'appdb'" in (
        output
    )


def test_ctrl_c_finishes_the_journal_and_exits_130(
    long_run: tuple[subprocess.Popen[str], Path],
) -> None:
    proc, incidents = long_run
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 130
    assert time.monotonic() - started < 5
    evs = events(incidents)
    end = next(e for e in evs if e["event"] == "step_end" and e["step"] == "long-wait")
    assert end["interrupted"] is True
    assert evs[-1]["event"] == "run_end" and evs[-1]["status"] == "interrupted"
    assert evs[-1]["exit_status"] == 130


def test_sigkill_leaves_a_journal_whose_every_line_parses(
    long_run: tuple[subprocess.Popen[str], Path], clean_lab: Lab, tmp_path: Path
) -> None:
    proc, incidents = long_run
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    (journal,) = incidents.glob("*/journal.jsonl")
    lines = journal.read_text().splitlines()
    assert len(lines) >= 5
    parsed = [json.loads(line) for line in lines]
    assert parsed[-1]["step"] == "long-wait"  # killed during the wait: no run_end
    assert parsed[-1]["event"] in ("step_start", "plan")
    assert [p["seq"] for p in parsed] == list(range(1, len(parsed) + 1))
    # the dead run's lock went with its session: the next run proceeds
    book = str(runbook(tmp_path, PAUSE))

    def next_run_gets_the_lock() -> bool:
        where = tmp_path / f"next-{time.monotonic_ns()}"
        triage(clean_lab, where, "--yes", "--runbook", book)
        return "lock_acquired" in names(events(where / "incidents"))

    retry(next_run_gets_the_lock, timeout=10, interval=0.2)


def test_journal_file_modes(clean_lab: Lab, tmp_path: Path) -> None:
    triage(clean_lab, tmp_path, "--yes", "--runbook", str(runbook(tmp_path, PAUSE)))
    (journal,) = (tmp_path / "incidents").glob("*/journal.jsonl")
    assert journal.stat().st_mode & 0o777 == 0o600
    assert journal.parent.stat().st_mode & 0o777 == 0o700


def test_unwritable_journal_stops_the_run_before_anything(clean_lab: Lab, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = connfix_run("triage", clean_lab.inventory, blocker / "incidents", "--yes")
    assert result.exit_code == 1
    assert "cannot create an incident directory" in result.output
    assert "nothing was changed" in result.output
    assert all(b["application_name"] != "connfix" for b in clean_lab.client_backends())


def test_no_password_reaches_journal_or_output(
    clean_lab: Lab, tmp_path: Path, full_server: list[Any]
) -> None:
    passwords = dict(
        line.split(":")[3:5]
        for line in (clean_lab.paths.lab_dir() / "pgpass").read_text().splitlines()
    )
    connfix_pw, admin_pw = passwords["connfix"], passwords["connfix_admin"]

    def change(env: dict[str, Any]) -> None:
        db = env["database"]
        db["dsn"] = db["dsn"].split(" passfile=")[0]
        db["password_env"] = "CONNFIX_TEST_PASSWORD"
        del db["admin_dsn"]
        db.pop("reserved_dsn", None)
        db["admin_dsn_env"] = "CONNFIX_TEST_ADMIN_DSN"

    inventory = clean_lab.inventory_with(tmp_path, change)
    env = {
        **os.environ,
        "PGPASSWORD": connfix_pw,  # libpq's own mechanism too: the password everywhere
        "CONNFIX_TEST_PASSWORD": connfix_pw,
        "CONNFIX_TEST_ADMIN_DSN": f"host=127.0.0.1 port={clean_lab.paths.pg_port()}"
        f" dbname=appdb user=connfix_admin password={admin_pw}",
    }
    incidents = tmp_path / "incidents"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "connfix",
            "triage",
            "lab",
            "--yes",
            "-i",
            str(inventory),
            "--incidents-dir",
            str(incidents),
            "--runbook",
            str(runbook(tmp_path, PAUSE)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "working through the admin connection" in proc.stderr  # the server was full
    evs = events(incidents)
    assert evs[1]["event"] == "connected" and evs[1]["via"] == "admin"
    (journal,) = incidents.glob("*/journal.jsonl")
    report = (journal.parent / "report.md").read_text()
    assert "as connfix\\_admin via the admin connection" in report
    for text in (journal.read_text(), report, proc.stdout, proc.stderr):
        assert connfix_pw not in text and admin_pw not in text
    # and a diagnose through the same inventory prints none either
    diag = subprocess.run(
        [sys.executable, "-m", "connfix", "diagnose", "lab", "--json", "-i", str(inventory)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert diag.returncode == 1
    assert connfix_pw not in diag.stdout + diag.stderr and admin_pw not in diag.stdout


ADVISE = """\
version: 1
name: advise
summary: diagnose and advise, whatever the state
healthy: "false"
steps:
  - {id: diagnose, action: diagnose}
  - {id: advise, action: advise}
"""


def test_advise_puts_the_pool_sizing_in_the_journal_and_the_report(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """An inventory that lets each host open 6, and 2 more in a burst (the lab's
    max_overflow): advise says it is not safe and which size is, in the journal and in
    the report, even in a dry run.

    base = 17 usable − 2 buffer − 0 other = 15; now 3 × (6 + 2) = 24, and a restarting
    host's 8 twice: available 15 − 8 = 7 < 24; safe size 15 // (3 hosts + 1 restarting)
    − 2 overflow = 1: 3 × (1 + 2) = 9, plus 3 while a host restarts = 12 ≤ 15."""

    def change(env: dict[str, Any]) -> None:
        env["service"]["pool_size"] = 6

    inventory = clean_lab.inventory_with(tmp_path, change)
    book = tmp_path / "advise.yaml"
    book.write_text(ADVISE)
    result = connfix_run(
        "triage", inventory, tmp_path / "incidents", "--dry-run", "--runbook", str(book)
    )
    assert (
        "3 servers × (6 + 2 overflow) = 24 against 7 available: NOT safe: pool size 1"
        in " ".join(result.output.split())
    ), result.output
    (advice,) = [e for e in events(tmp_path / "incidents") if e["event"] == "advice"]
    sizing = advice["sizing"]
    assert (sizing["fleet_total"], sizing["available"], sizing["safe"]) == (24, 7, False)
    assert (sizing["max_safe_pool_size"], sizing["after_total"]) == (1, 9)
    assert advice["pgbouncer"] is True
    report = assert_complete(tmp_path / "incidents", "DRY RUN")
    assert "| now | 3 | (6 + 2 overflow) | 24 | 7 | NO |" in report
    assert "| safe | 3 | (1 + 2 overflow) | 9 | 12 | yes |" in report
    assert "3 servers × (6 + 2 overflow) = 24 &gt; 7 → pool 1: 9, safe" in report


def test_a_healthy_condition_that_fails_on_live_data_ends_the_run_with_a_report(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """It passes validation (by_state is a diagnosis field) and fails on the data: the run
    halts with the expression and the reason journaled, run_end written, a report."""
    book = tmp_path / "book.yaml"
    book.write_text(
        "version: 1\nname: broken\nsummary: s\n"
        "healthy: \"by_state['no such state'] > 0\"\nsteps:\n"
        "  - {id: diagnose, action: diagnose}\n"
        "  - {id: verify, action: verify, params: {timeout: 2s, until: \"suspects[9] == 'x'\"}}\n"
    )
    assert CliRunner().invoke(cli, ["runbook", "validate", str(book)]).exit_code == 0
    result = triage(clean_lab, tmp_path, "--yes", "--runbook", str(book))
    assert result.exit_code == 1, result.output
    evs = events(tmp_path / "incidents")
    failed = [e for e in evs if e["event"] == "step_end" and not e["ok"]]
    assert failed and "cannot evaluate" in failed[0]["summary"]
    assert "by_state['no such state'] > 0" in failed[0]["summary"]
    assert evs[-1]["event"] == "run_end" and evs[-1]["status"] == "halted"
    assert (next((tmp_path / "incidents").glob("*/report.md"))).exists()


def test_a_mutating_step_with_confirm_false_does_not_run_unattended(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """No terminal, no --yes: a step that changes things runs only when asked for, even
    when the runbook says confirm: false."""
    clean_lab.core.leak("app2", 4, idle_in_transaction=False)
    book = tmp_path / "book.yaml"
    book.write_text(
        'version: 1\nname: quiet\nsummary: s\nhealthy: "not suspects"\nsteps:\n'
        "  - {id: diagnose, action: diagnose}\n"
        "  - {id: roll, action: rolling_restart, confirm: false, params: {only_suspects: true}}\n"
    )
    pids = clean_lab.main_pids()
    result = triage(clean_lab, tmp_path, "--runbook", str(book))
    assert result.exit_code == 1, result.output
    assert "it changes things and the runbook says confirm: false" in result.output
    assert clean_lab.main_pids() == pids
    assert events(tmp_path / "incidents")[-1]["status"] == "stopped"


def test_a_bug_in_an_action_still_finishes_the_journal_and_the_report(
    clean_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault the real actions cannot be made to produce (an exception that is none of
    connfix's errors), injected into the advise step: the run ends as error, with
    run_end and a report, saying it is connfix's bug, not a traceback."""
    from connfix.actions import ACTIONS

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("injected")

    monkeypatch.setattr(ACTIONS["advise"], "apply", broken)
    book = tmp_path / "advise.yaml"
    book.write_text(ADVISE)
    result = connfix_run("triage", clean_lab.inventory, tmp_path / "incidents", "--yes",
                         "--runbook", str(book))  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "internal error in connfix (TypeError: injected)" in result.output
    report = assert_complete(tmp_path / "incidents", "halted (error)")
    assert "internal error in connfix" in report


def test_a_real_triage_says_its_outcome_before_the_report_is_rendered(
    clean_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The standard incident, the shipped runbook, a real restart: the outcome is on the
    terminal as soon as run_end is journaled, the report rendered after it (the same
    report, complete: a change, its chart), its path printed last, before the command
    returns. The same order on a refused run:
    tests/unit/test_fixed_cost.py::test_the_verdict_is_printed_before_the_report_is_rendered."""
    import sys

    from connfix.record import report

    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    seen: list[tuple[str, list[str]]] = []
    real = report.write

    def write(*args: Any, **kwargs: Any) -> Any:
        sys.stdout.flush()
        journal = next((tmp_path / "incidents").glob("*/journal.jsonl"))
        ended = [e["event"] for e in read_journal(journal)][-1:]
        seen.append((sys.stdout.buffer.getvalue().decode(), ended))  # type: ignore[attr-defined]
        return real(*args, **kwargs)

    monkeypatch.setattr(report, "write", write)
    result = triage(clean_lab, tmp_path, "--yes")
    assert result.exit_code == 0, result.output
    ((before, last_event),) = seen
    assert last_event == ["run_end"]  # the journal was complete when the report began
    assert "resolved: " in before and "incident: " in before and "report:" not in before
    assert result.output.index("report: ") > result.output.index("resolved: ")
    (written,) = (tmp_path / "incidents").glob("*/report.md")
    assert "connfix restarted app2" in written.read_text()  # the change is in it
    assert (written.parent / "incident.svg").read_text().startswith("<?xml")  # the chart


def test_each_host_is_logged_into_once_and_before_the_first_diagnosis(
    clean_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """engine.start begins the SSH logins of the first diagnosis's health checks before
    the run connects to the database: one connection per health-checked host, begun
    early, used by every health check and the restart's preflight of the run. The
    health checks themselves run on those logins as soon as they are made, and the
    first diagnosis takes them rather than running them again."""
    from connfix.hosts import remote

    made: list[str] = []
    early: list[str] = []
    checks: list[tuple[str, str]] = []  # (thread, host) of each health check run
    real_init, real_early, real_exec = (
        remote.Remote.__init__,
        remote.log_in_early,
        remote.Remote._exec,
    )

    def init(self: remote.Remote, host: Any, ssh: Any) -> None:
        made.append(host.name)
        real_init(self, host, ssh)

    def log_in_early(conns: Any, workers: int = 16, **kwargs: Any) -> None:
        conns = list(conns)
        early.extend(c.host.name for c in conns)
        real_early(conns, workers, **kwargs)

    def exec_(self: remote.Remote, command: str, limit: float, sent: Any = None) -> Any:
        if "/health" in command:
            checks.append((threading.current_thread().name, self.host.name))
        return real_exec(self, command, limit, sent)

    monkeypatch.setattr(remote.Remote, "__init__", init)
    monkeypatch.setattr(remote, "log_in_early", log_in_early)
    monkeypatch.setattr(remote.Remote, "_exec", exec_)
    clean_lab.core.leak("app2", 4, idle_in_transaction=False)  # a suspect: a restart planned
    result = triage(clean_lab, tmp_path, "--dry-run")
    evs = events(tmp_path / "incidents")
    assert evs[-1]["event"] == "run_end", result.output
    assert any(e["event"] == "plan" and e["step"] == "restart-leaking-hosts" for e in evs)
    assert sorted(early) == ["app1", "app2", "app3"]
    assert sorted(made) == sorted(early)  # no second connection to any host
    first = next(e for e in evs if e["event"] == "diagnosis")["diagnosis"]
    assert {h: v["ok"] for h, v in first["host_health"].items()} == {
        "app1": True,
        "app2": True,
        "app3": True,
    }
    ahead = sorted(h for t, h in checks if t.startswith("connfix-login-"))
    assert ahead == ["app1", "app2", "app3"]  # the first diagnosis's, run ahead
    diagnoses = sum(e["event"] == "diagnosis" for e in evs)
    assert len(checks) == 3 * diagnoses  # and not run again by it


def test_a_command_that_does_not_judge_the_hosts_logs_into_none(
    clean_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """terminate (no host health checks) begins no login."""
    from connfix.hosts import remote

    made: list[str] = []
    monkeypatch.setattr(remote, "log_in_early", lambda conns, **kwargs: made.append("any"))
    result = connfix_run("terminate", clean_lab.inventory, tmp_path / "incidents", "--dry-run")
    assert result.exit_code in (0, 1), result.output
    assert made == []


FREEZE_CHECK = """
import atexit, gc, sys
atexit.register(lambda: print("frozen", gc.get_freeze_count(), file=sys.stderr))
sys.argv = ["connfix", *sys.argv[1:]]
from connfix.__main__ import run
run()
"""


def test_the_installed_command_freezes_its_start_up_for_the_run(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """A run through the installed command (connfix.__main__) moves its start-up out of
    the collector's way once connected (connfix.started_up): the first collection of a
    triage scanned all of it, 30-47 ms."""
    argv = ["triage", "lab", "-i", str(clean_lab.inventory), "--dry-run"]
    argv += ["--incidents-dir", str(tmp_path / "incidents")]
    proc = subprocess.run(
        [sys.executable, "-c", FREEZE_CHECK, *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    frozen = int(proc.stderr.rsplit("frozen", 1)[1].split()[0])
    assert frozen > 20_000  # the modules, classes, inventory and runbook of the run
