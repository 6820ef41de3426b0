"""The fault matrix (docs/reliability.md): each fault on the lab, asserting what was done,
what was not, and that the journal and the report are complete."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from connfix.cli import cli
from connfix.record.report import render
from tests.helpers import Lab, assert_complete, connfix_run, events, of, retry

complete = assert_complete


def start(lab: Lab, incidents: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connfix",
            *args,
            "-i",
            str(lab.inventory),
            "--incidents-dir",
            str(incidents),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_event(incidents: Path, name: str, timeout: float = 30) -> None:
    retry(
        lambda: list(incidents.glob("*/journal.jsonl")) and of(events(incidents), name),
        timeout=timeout,
    )


def test_sshd_killed_mid_roll(clean_lab: Lab, tmp_path: Path) -> None:
    pids = clean_lab.main_pids()
    incidents = tmp_path / "incidents"
    proc = start(clean_lab, incidents, "restart", "lab", "--yes", "--pause", "2s")
    try:
        wait_event(incidents, "host_done")  # app1 is done; the roll pauses before app2
        clean_lab.faults.sshd("app2", "kill")  # listener and sessions: the host drops off
        assert proc.wait(30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    evs = events(incidents)
    (failed,) = of(evs, "host_failed")
    assert failed["host"] == "app2" and failed["gate"] == "restart"
    (halted,) = of(evs, "roll_halted")
    assert (halted["done"], halted["failed"], halted["untouched"]) == (["app1"], ["app2"], ["app3"])
    now = clean_lab.main_pids()
    assert now["app1"] != pids["app1"]
    assert now["app2"] == pids["app2"] and now["app3"] == pids["app3"]
    report = complete(incidents, "halted")
    assert "| app2 | FAILED at restart |" in report


def test_database_restarted_during_a_triage(clean_lab: Lab, tmp_path: Path) -> None:
    book = tmp_path / "book.yaml"
    book.write_text(
        'version: 1\nname: t\nsummary: t\nhealthy: "false"\nsteps:\n'
        "  - {id: diagnose, action: diagnose}\n"
        "  - {id: pause, action: wait, params: {duration: 3s}}\n"
        "  - {id: look-again, action: diagnose}\n"
    )
    incidents = tmp_path / "incidents"
    proc = start(clean_lab, incidents, "triage", "lab", "--yes", "--runbook", str(book))
    try:
        wait_event(incidents, "plan")
        retry(lambda: any(e["event"] == "plan" and e["step"] == "pause" for e in events(incidents)))
        clean_lab.faults.restart_postgres()  # cuts connfix's session and its lock
        assert proc.wait(60) == 1  # the runbook never counts as healthy
    finally:
        if proc.poll() is None:
            proc.kill()
    evs = events(incidents)
    names = [e["event"] for e in evs]
    assert "connection_lost" in names and "reconnected" in names
    assert names.count("lock_acquired") == 2  # the lock was taken again
    assert of(evs, "step_end")[-1]["step"] == "look-again" and of(evs, "step_end")[-1]["ok"]
    complete(incidents, "still unhealthy")


@pytest.fixture
def everything_full(clean_lab: Lab) -> Iterator[None]:
    """Fill every slot, the superuser-reserved ones included."""
    conns: list[psycopg.Connection[Any]] = []
    dsns = [clean_lab.app_dsn()]
    if clean_lab.version >= 16:
        dsns.append(clean_lab.core.dsn("connfix_reserved"))
    dsns.append(clean_lab.core.bootstrap_dsn())
    try:
        for dsn in dsns:
            while len(conns) < 40:
                try:
                    conns.append(psycopg.connect(dsn, autocommit=True))
                except psycopg.OperationalError:
                    break
        with pytest.raises(psycopg.OperationalError, match="too many clients already"):
            psycopg.connect(clean_lab.core.bootstrap_dsn())
        yield
    finally:
        for conn in conns:
            conn.close()


def test_database_full_including_superuser_slots(
    everything_full: None, lab: Lab, tmp_path: Path
) -> None:
    result = connfix_run("triage", lab.inventory, tmp_path / "incidents", "--yes")
    assert result.exit_code == 3
    assert "every way in failed too" in result.output
    assert "sorry, too many clients already" in result.output
    evs = events(tmp_path / "incidents")
    # the postmortem's count of refused attempts says it could not read them (no session)
    assert [e["event"] for e in evs] == ["run_start", "error", "impact", "run_end"]
    assert evs[2]["unknown"] == "connfix had no session to the server at the end of the run"
    assert evs[-1]["status"] == "unreachable"
    report = complete(tmp_path / "incidents", "halted (the database could not be reached)")
    assert "too many clients already" in report


def test_sigkill_mid_roll_then_resume(clean_lab: Lab, tmp_path: Path) -> None:
    first = tmp_path / "first"
    proc = start(clean_lab, first, "restart", "lab", "--yes", "--pause", "30s")
    try:
        wait_event(first, "host_done")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    evs = events(first)
    assert evs[-1]["event"] != "run_end"  # killed outright: no ending was written
    (incident,) = first.glob("*")
    assert not (incident / "report.md").exists()
    text = render(incident / "journal.jsonl")  # the report regenerates from what is there
    assert "# Incident report: lab — interrupted" in text
    after_kill = clean_lab.main_pids()
    again = CliRunner().invoke(
        cli,
        [
            "restart",
            "lab",
            "--yes",
            "--resume",
            str(incident),
            "-i",
            str(clean_lab.inventory),
            "--incidents-dir",
            str(tmp_path / "second"),
        ],
    )
    assert again.exit_code == 0, again.output
    second = events(tmp_path / "second")
    assert [d["host"] for d in of(second, "host_done")] == ["app2", "app3"]
    assert clean_lab.main_pids()["app1"] == after_kill["app1"]
    complete(tmp_path / "second", "done")


def test_a_roll_killed_during_its_second_host_reports_done_unknown_and_not_touched(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """SIGKILL while app2 restarts (its health gate waits: app2 is unhealthy) in a roll of
    app1, app2, app3: the report, regenerated from the journal, names app1 done, app2
    restart sent with its outcome unknown, app3 not touched — in the hosts table and in
    the summary."""
    incidents = tmp_path / "incidents"
    clean_lab.core.leak("app1", 4, idle_in_transaction=False)  # app1 first: it leaks
    clean_lab.fault("app2", "unhealthy")  # then app2 (its health check fails), then app3
    pids = clean_lab.main_pids()
    proc = start(clean_lab, incidents, "restart", "lab", "--yes")
    try:
        retry(
            lambda: (
                list(incidents.glob("*/journal.jsonl"))
                and [e for e in of(events(incidents), "host_start") if e["host"] == "app2"]
            ),
            timeout=30,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [e["host"] for e in of(events(incidents), "host_done")] == ["app1"]
    (incident,) = incidents.glob("*")
    text = render(incident / "journal.jsonl")
    hosts = text.split("### Hosts restarted", 1)[1].split("## Before and after", 1)[0]
    assert "| app1 | done |" in hosts
    assert "| app2 | restart sent, outcome unknown |" in hosts
    assert "| app3 | not touched |" in hosts and "nothing was sent to it" in hosts
    summary = text.split("## Summary", 1)[1].split("## Impact", 1)[0]
    assert "restarted app1" in summary
    assert "while restarting app2" in summary and "Not touched: app3" in summary
    assert clean_lab.core.app_request(3, "/status")["pid"] == pids["app3"]  # not touched


def test_sigint_mid_roll(clean_lab: Lab, tmp_path: Path) -> None:
    incidents = tmp_path / "incidents"
    proc = start(clean_lab, incidents, "restart", "lab", "--yes", "--pause", "30s")
    try:
        wait_event(incidents, "host_done")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    evs = events(incidents)
    (halted,) = of(evs, "roll_halted")
    assert halted["reason"] == "interrupted" and halted["untouched"] == ["app2", "app3"]
    report = complete(incidents, "interrupted")
    assert "roll halted: done app1" in report
