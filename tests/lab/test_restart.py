"""The rolling restart on the lab: real sshd, real app processes, real database."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connfix.lab.status import status as lab_status
from tests.helpers import (
    LAB_POOL_SIZE,
    Lab,
    assert_complete,
    connfix_run,
    events,
    of,
    retry,
)


def restart(lab: Lab, tmp_path: Path, *args: str, inventory: Path | None = None) -> Any:
    return connfix_run("restart", inventory or lab.inventory, tmp_path / "incidents", *args)


def roll_book(tmp_path: Path, params: str) -> Path:
    """A runbook that diagnoses, then rolls with these params, whatever the state."""
    book = tmp_path / "roll.yaml"
    book.write_text(
        'version: 1\nname: roll\nsummary: roll\nhealthy: "false"\nsteps:\n'
        "  - {id: diagnose, action: diagnose}\n"
        f"  - {{id: roll, action: rolling_restart, params: {params}}}\n"
    )
    return book


def preflight_row(output: str, host: str) -> list[str]:
    """The cells of a host's row in the preflight table."""
    line = next(line for line in output.splitlines() if line.startswith(f"│ {host} "))
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_full_roll_leakiest_first_new_main_pids_leak_gone(clean_lab: Lab, tmp_path: Path) -> None:
    clean_lab.core.leak("app3", 4, idle_in_transaction=False)
    clean_lab.core.leak("app1", 2, idle_in_transaction=True)
    before = clean_lab.main_pids()
    result = restart(clean_lab, tmp_path, "--yes")
    assert result.exit_code == 0, result.output
    evs = events(tmp_path / "incidents")
    done = of(evs, "host_done")
    assert [d["host"] for d in done] == ["app3", "app1", "app2"]  # most over the pool first
    after = clean_lab.main_pids()
    for d in done:
        assert d["old_main_pid"] == before[d["host"]]
        assert d["new_main_pid"] == after[d["host"]] != before[d["host"]]
        assert set(d["gates"]) == {"restart", "active", "health", "database", "still_active"}
        (unit,) = d["units"]
        assert unit["unit"] == "labapp.service" and unit["type"] == "notify"
        assert unit["new_invocation_id"] != unit["old_invocation_id"]
    status = lab_status()
    assert all(h.leaked == 0 and h.backends == LAB_POOL_SIZE for h in status.hosts)
    plan = of(evs, "plan")[-1]
    assert [p["host"] for p in plan["details"]["preflight"]] == ["app3", "app1", "app2"]
    assert all(p["ok"] for p in plan["details"]["preflight"])


def test_dry_run_leaves_every_main_pid_and_backend(clean_lab: Lab, tmp_path: Path) -> None:
    clean_lab.core.leak("app2", 2, idle_in_transaction=False)
    pids = clean_lab.main_pids()
    backends = {b["pid"] for b in clean_lab.client_backends()}
    result = restart(clean_lab, tmp_path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would restart 3 host(s) in this order: app2, app1, app3" in result.output
    assert "sudo -n systemctl restart labapp.service" in result.output
    row = preflight_row(result.output, "app2")  # the preflight ran for real
    assert row[:5] == ["app2", "ok", "ok", "known", "loaded/active"]
    assert row[5] == str(pids["app2"]) and row[6] == "yes" and row[8] == ""
    assert clean_lab.main_pids() == pids
    retry(lambda: {b["pid"] for b in clean_lab.client_backends()} == backends)
    assert not of(events(tmp_path / "incidents"), "host_start")


def test_sshd_down_at_preflight_restarts_nothing(clean_lab: Lab, tmp_path: Path) -> None:
    pids = clean_lab.main_pids()
    clean_lab.faults.sshd("app2", "stop")
    result = restart(clean_lab, tmp_path, "--yes")
    assert result.exit_code == 3, result.output
    assert "preflight failed, nothing was restarted: app2: SSH to 10.231.7.12" in result.output
    # it reads like the command typed: no runbook step numbers, no plan about to run
    assert "restart refused, nothing done: preflight failed, nothing was restarted" in (
        result.output
    )
    assert "[2/2]" not in result.output and "rolling_restart" not in result.output
    assert "sudo -n systemctl restart" not in result.output
    row = preflight_row(result.output, "app2")
    assert row[:7] == ["app2", "FAILED", "no", "n/a", "n/a", "-", "n/a"]
    assert row[8].startswith("SSH to 10.231.7.12 failed")
    assert preflight_row(result.output, "app1")[1] == "ok"
    assert clean_lab.main_pids() == pids
    assert not of(events(tmp_path / "incidents"), "host_start")
    report = assert_complete(tmp_path / "incidents", "halted")
    assert "preflight failed, nothing was restarted" in report


def _preflight_refused(
    clean_lab: Lab,
    tmp_path: Path,
    inventory: Path | None = None,
    running: tuple[int, ...] = (1, 2, 3),
) -> str:
    """Run a roll that the preflight must stop; check nothing moved; return the output."""

    def pids() -> dict[int, int]:
        return {i: clean_lab.core.app_request(i, "/status")["pid"] for i in running}

    before = pids()
    result = restart(clean_lab, tmp_path, "--yes", inventory=inventory)
    assert result.exit_code == 3, result.output
    assert "preflight failed, nothing was restarted" in result.output
    assert not of(events(tmp_path / "incidents"), "host_start")
    assert pids() == before
    return str(result.output)


def test_unit_not_found_at_preflight_restarts_nothing(clean_lab: Lab, tmp_path: Path) -> None:
    def change(env: dict[str, Any]) -> None:
        env["service"]["unit"] = "nosuch.service"

    output = _preflight_refused(clean_lab, tmp_path, clean_lab.inventory_with(tmp_path, change))
    assert "service nosuch.service not found (LoadState=not-found)" in output


def test_unit_inactive_at_preflight_restarts_nothing(clean_lab: Lab, tmp_path: Path) -> None:
    clean_lab.systemctl(2, "stop")
    output = _preflight_refused(clean_lab, tmp_path, running=(1, 3))
    assert "app2: service labapp.service is inactive (inactive/dead), not active" in output
    assert "(stopped, not failed: connfix does not start it)" in output


def test_restart_not_permitted_at_preflight_restarts_nothing(
    clean_lab: Lab, tmp_path: Path
) -> None:
    def change(env: dict[str, Any]) -> None:
        env["service"]["restart_command"] = "nosuchctl restart {unit}"

    output = _preflight_refused(clean_lab, tmp_path, clean_lab.inventory_with(tmp_path, change))
    assert "the restart command is not permitted: command -v nosuchctl exited 1" in output
    assert preflight_row(output, "app1")[6] == "no"  # checked, and refused


def test_a_restart_that_leaves_the_old_process_fails_the_active_gate(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """The restart command exits 0 but the service keeps its main pid: halt at `active`."""

    def change(env: dict[str, Any]) -> None:
        env["service"]["restart_command"] = "true"

    book = roll_book(tmp_path, "{active_timeout: 1s}")
    pids = clean_lab.main_pids()
    inventory = clean_lab.inventory_with(tmp_path, change)
    result = connfix_run(
        "triage", inventory, tmp_path / "incidents", "--yes", "--runbook", str(book)
    )
    assert result.exit_code == 1, result.output
    (failed,) = of(events(tmp_path / "incidents"), "host_failed")
    assert failed["host"] == "app1" and failed["gate"] == "active"
    assert "not active as a new invocation after" in failed["detail"]
    assert "still the old invocation (InvocationID " in failed["detail"]
    assert f"MainPID {pids['app1']}, active/running)" in failed["detail"]
    assert clean_lab.main_pids() == pids  # app2 and app3 not touched (and app1 never moved)


def test_changed_host_key_is_refused(clean_lab: Lab, tmp_path: Path) -> None:
    known = (clean_lab.paths.lab_dir() / "ssh" / "known_hosts").read_text().splitlines()
    known[2] = known[2].split(" ", 1)[0] + " " + known[0].split(" ", 1)[1]  # app3 gets app1's key
    bad = tmp_path / "known_hosts"
    bad.write_text("\n".join(known) + "\n")

    def change(env: dict[str, Any]) -> None:
        env["ssh"]["known_hosts_file"] = str(bad)

    pids = clean_lab.main_pids()
    result = restart(
        clean_lab, tmp_path, "--yes", inventory=clean_lab.inventory_with(tmp_path, change)
    )
    assert result.exit_code == 3
    assert "app3: host key for 10.231.7.13 has CHANGED" in result.output
    assert clean_lab.main_pids() == pids
    assert_complete(tmp_path / "incidents", "halted")


def test_failed_restart_halts_and_later_hosts_keep_their_pid(
    clean_lab: Lab, tmp_path: Path
) -> None:
    pids = clean_lab.main_pids()
    clean_lab.fault("app2", "fail-start")
    result = restart(clean_lab, tmp_path, "--yes")
    assert result.exit_code == 1
    evs = events(tmp_path / "incidents")
    (failed,) = of(evs, "host_failed")
    # its Restart=on-failure was given 3 automatic restarts to heal it: it did not
    assert failed["host"] == "app2" and failed["gate"] == "active"
    assert "it did not heal: still failing after 3 automatic restarts" in failed["detail"]
    assert "service labapp.service is in a crash loop" in failed["detail"]
    assert failed["command"] == "sudo -n systemctl restart labapp.service"
    assert failed["exit_code"] == 1
    assert "Job for labapp.service failed" in failed["output_tail"]  # systemctl's own words
    # and the unit's own last log lines, read with the sudo rule for journalctl
    assert "labapp: cannot start (lab fault fail-start)" in failed["log_tail"]
    assert "its last log lines:" in result.output
    (halted,) = of(evs, "roll_halted")
    assert (halted["done"], halted["failed"], halted["untouched"]) == (["app1"], ["app2"], ["app3"])
    assert "done app1; failed app2 at active" in result.output
    assert "not touched app3" in result.output
    assert clean_lab.core.app_request(3, "/status")["pid"] == pids["app3"]
    report = assert_complete(tmp_path / "incidents", "halted")
    assert "| app2 | FAILED at active |" in report and "exit 1" in report
    assert "its last log lines: " in report and "lab fault fail-start" in report


def test_a_start_failure_its_restart_policy_heals_is_waited_for(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """app1's app fails its next start (a transient fault): `systemctl restart` fails,
    systemd's Restart=on-failure (RestartSec=1s) starts it again and it comes up: the
    roll waits for it, reports it healed, and goes on."""
    clean_lab.fault("app1", "fail-start", "times=1")
    result = restart(clean_lab, tmp_path, "--yes", "--hosts", "app1,app2")
    assert result.exit_code == 0, result.output
    evs = events(tmp_path / "incidents")
    assert [e["host"] for e in of(evs, "host_done")] == ["app1", "app2"]
    healed = of(evs, "host_done")[0]["healed"]
    assert healed.startswith("labapp.service: the restart command failed (")
    assert "its Restart=on-failure started it again; healed: active as a new invocation" in healed
    assert "healed by its Restart= policy" in result.output
    assert not of(evs, "host_failed")
    report = assert_complete(tmp_path / "incidents", "done")
    assert (
        "| app1 | done |" in report and "ok; labapp.service: the restart command failed" in report
    )


def test_failed_health_check_halts(clean_lab: Lab, tmp_path: Path) -> None:
    def change(env: dict[str, Any]) -> None:
        env["service"]["health_timeout"] = "1500ms"

    pids = clean_lab.main_pids()
    clean_lab.fault("app1", "unhealthy")
    result = restart(
        clean_lab, tmp_path, "--yes", inventory=clean_lab.inventory_with(tmp_path, change)
    )
    assert result.exit_code == 1
    (failed,) = of(events(tmp_path / "incidents"), "host_failed")
    assert failed["host"] == "app1" and failed["gate"] == "health"
    assert failed["exit_code"] == 22  # curl -f on HTTP 503
    assert "host 1/3 app1: health check: waiting (" in result.output  # said while it waits
    assert "of 1.5s): app1: `curl" in result.output and "exited with status 22" in result.output
    now = clean_lab.main_pids()
    assert now["app2"] == pids["app2"] and now["app3"] == pids["app3"]
    assert "| app1 | FAILED at health |" in assert_complete(tmp_path / "incidents", "halted")


def test_app_that_keeps_leaking_fails_the_database_gate(clean_lab: Lab, tmp_path: Path) -> None:
    book = roll_book(tmp_path, "{db_timeout: 1500ms}")
    pids = clean_lab.main_pids()
    clean_lab.fault("app1", "leak-on-start", "3")  # beyond pool size + max_overflow 2
    result = connfix_run(
        "triage", clean_lab.inventory, tmp_path / "incidents", "--yes", "--runbook", str(book)
    )
    assert result.exit_code == 1, result.output
    (failed,) = of(events(tmp_path / "incidents"), "host_failed")
    assert failed["host"] == "app1" and failed["gate"] == "database"
    assert (
        f"{LAB_POOL_SIZE + 3} sessions, more than its pool size + max_overflow"
        f" {LAB_POOL_SIZE + 2}" in (failed["detail"])
    )
    assert clean_lab.main_pids()["app2"] == pids["app2"]
    assert "| app1 | FAILED at database |" in assert_complete(tmp_path / "incidents", "halted")


def test_a_reused_pid_is_not_an_old_session(
    clean_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart, a new backend that got an old backend's pid does not hold the gate.

    PostgreSQL cannot be made to reuse a pid on demand: the fault is injected by giving
    one new backend an old pid (its backend_start stays its own)."""
    from connfix.db import pg

    real = pg.host_backends
    first: dict[str, set[pg.BackendId]] = {}

    def reusing(session: Any, addr: str, *args: Any) -> set[pg.BackendId]:
        now = real(session, addr, *args)
        if addr not in first:
            first[addr] = now
            return now
        old_pids = {b.pid for b in first[addr]} - {b.pid for b in now}
        if not old_pids or not now:
            return now
        newest = max(now, key=lambda b: b.backend_start)
        return (now - {newest}) | {pg.BackendId(min(old_pids), newest.backend_start)}

    monkeypatch.setattr(pg, "host_backends", reusing)
    result = restart(clean_lab, tmp_path, "--yes", "--hosts", "app1")
    assert result.exit_code == 0, result.output
    (done,) = of(events(tmp_path / "incidents"), "host_done")
    assert done["host"] == "app1" and done["gates"]["database"] < 1


def test_a_connection_gone_stale_after_the_preflight_is_reopened_and_journaled(
    clean_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preflight's connection to app2 stops carrying channels before app2's turn (a
    NAT dropping an idle flow, injected): connfix reopens it once, restarts app2 once, and
    says so in the output and the journal."""
    import paramiko

    from connfix.actions.restart import preflight as where

    real = where.preflight  # the action imports it from there when it plans a roll

    def preflight_then_stale(host: Any, ctx: Any, *args: Any) -> Any:
        check = real(host, ctx, *args)
        if host.name == "app2" and check.remote is not None:
            transport = check.remote.conn.client.get_transport()

            def refuse(*args: Any, **kwargs: Any) -> Any:
                raise paramiko.SSHException("Timeout opening channel.")

            monkeypatch.setattr(transport, "open_session", refuse)
        return check

    monkeypatch.setattr(where, "preflight", preflight_then_stale)
    before = clean_lab.main_pids()
    result = restart(clean_lab, tmp_path, "--yes")
    assert result.exit_code == 0, result.output
    assert "app2: the SSH connection had gone stale (Timeout opening channel.)" in result.output
    done = {d["host"]: d for d in of(events(tmp_path / "incidents"), "host_done")}
    assert done["app2"]["ssh_reconnects"] == ["Timeout opening channel."]
    assert "ssh_reconnects" not in done["app1"] and "ssh_reconnects" not in done["app3"]
    assert all(clean_lab.main_pids()[h] != before[h] for h in before)
    report = assert_complete(tmp_path / "incidents", "done")
    assert "ok; SSH connection reopened before the command was sent (Timeout opening" in report


def test_resume_skips_the_hosts_already_done(clean_lab: Lab, tmp_path: Path) -> None:
    incidents = tmp_path / "first"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connfix",
            "restart",
            "lab",
            "--yes",
            "--pause",
            "30s",
            "-i",
            str(clean_lab.inventory),
            "--incidents-dir",
            str(incidents),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        retry(
            lambda: list(incidents.glob("*/journal.jsonl")) and of(events(incidents), "host_done"),
            timeout=30,
        )
        proc.send_signal(signal.SIGINT)  # during the pause after the first host
        assert proc.wait(10) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = events(incidents)
    (done,) = of(first, "host_done")
    assert done["host"] == "app1"
    assert of(first, "roll_halted")[0]["untouched"] == ["app2", "app3"]
    after_first = clean_lab.main_pids()
    (incident,) = incidents.glob("*")
    result = restart(clean_lab, tmp_path, "--yes", "--resume", str(incident))
    assert result.exit_code == 0, result.output
    second = events(tmp_path / "incidents")
    assert second[0]["resumed_from"] == str(incident)
    assert second[0]["resume_done"] == {"rolling_restart": ["app1"]}
    assert [d["host"] for d in of(second, "host_done")] == ["app2", "app3"]
    # the plan says what it leaves out and why, in words an operator reads right
    out = " ".join(result.output.split())
    assert "left out: app1, restarted and verified by the interrupted run this one" in out
    assert "already done before" not in out
    final = clean_lab.main_pids()
    assert final["app1"] == after_first["app1"]  # not restarted again
    assert final["app2"] != after_first["app2"] and final["app3"] != after_first["app3"]


def test_resume_of_another_environment_is_refused(clean_lab: Lab, tmp_path: Path) -> None:
    incident = tmp_path / "old"
    incident.mkdir()
    (incident / "journal.jsonl").write_text(
        '{"ts": "x", "seq": 1, "event": "run_start", "environment": "prod"}\n'
    )
    result = restart(clean_lab, tmp_path, "--yes", "--resume", str(incident))
    assert result.exit_code == 2
    assert "that run was for environment 'prod', not 'lab'" in result.output


def test_batch_above_max_unavailable_is_refused(clean_lab: Lab, tmp_path: Path) -> None:
    result = restart(clean_lab, tmp_path, "--yes", "--batch", "2")
    assert result.exit_code == 2
    assert "batch 2 is more than service.max_unavailable 1" in result.output


def test_batches_restart_together_and_the_next_waits_for_the_whole_batch(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """max_unavailable 2, --batch 2: app1 and app2 at once, app3 only when both are back."""

    def change(env: dict[str, Any]) -> None:
        env["service"]["max_unavailable"] = 2

    before = clean_lab.main_pids()
    inventory = clean_lab.inventory_with(tmp_path, change)
    result = restart(clean_lab, tmp_path, "--yes", "--batch", "2", inventory=inventory)
    assert result.exit_code == 0, result.output
    evs = events(tmp_path / "incidents")
    seq = {
        (e["event"], e["host"]): e["seq"] for e in evs if e["event"] in ("host_start", "host_done")
    }
    first_done = min(seq["host_done", "app1"], seq["host_done", "app2"])
    assert max(seq["host_start", "app1"], seq["host_start", "app2"]) < first_done  # together
    assert seq["host_start", "app3"] > max(seq["host_done", "app1"], seq["host_done", "app2"])
    after = clean_lab.main_pids()
    assert all(after[h] != before[h] for h in ("app1", "app2", "app3"))
    plan = of(evs, "plan")[-1]
    assert "(batch 2)" in plan["summary"]


def test_triage_on_a_leaking_lab_ends_healthy(clean_lab: Lab, tmp_path: Path) -> None:
    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    before = clean_lab.main_pids()
    result = connfix_run("triage", clean_lab.inventory, tmp_path / "incidents", "--yes")
    assert result.exit_code == 0, result.output
    evs = events(tmp_path / "incidents")
    assert evs[-1]["status"] == "resolved"
    assert [d["host"] for d in of(evs, "host_done")] == ["app2"]  # only the suspect
    skipped = {e["step"]: e["condition"] for e in of(evs, "step_skipped")}
    # nothing was terminated nor killed
    assert skipped["verify-after-terminate"] == "terminated > 0 or pgbouncer_clients_killed > 0"
    after = clean_lab.main_pids()
    assert after["app2"] != before["app2"] and after["app1"] == before["app1"]
    assert lab_status().hosts[1].backends == LAB_POOL_SIZE


def test_the_host_cap_counts_every_roll_of_the_run(clean_lab: Lab, tmp_path: Path) -> None:
    """max_hosts is per run, not per step: a runbook with two rolling_restart steps of
    one host each, under a cap of 1, restarts app1 and refuses the second step."""
    from connfix.config.inventory_file import load_inventory
    from connfix.engine.loop import run_runbook
    from connfix.engine.run import RunMode, RunRequest
    from connfix.engine.runbook import parse_runbook
    from tests.helpers import HookUI

    book = parse_runbook(
        "version: 1\nname: two-rolls\nsummary: two rolls\nhealthy: 'false'\nsteps:\n"
        "  - {id: diagnose, action: diagnose}\n"
        "  - {id: roll-1, action: rolling_restart, params: {hosts: [app1]},"
        " on_failure: continue}\n"
        "  - {id: roll-2, action: rolling_restart, params: {hosts: [app2]},"
        " on_failure: continue}\n",
        tmp_path / "two-rolls.yaml",
    )
    env = load_inventory(clean_lab.inventory).environment("lab")
    pids = clean_lab.main_pids()
    request = RunRequest(
        "lab",
        env,
        book,
        tmp_path / "incidents",
        clean_lab.inventory,
        RunMode.TRIAGE,
        yes=True,
        max_restart_hosts=1,
    )
    run_runbook(request, HookUI(lambda: None))
    evs = events(tmp_path / "incidents")
    assert [e["host"] for e in of(evs, "host_done")] == ["app1"]
    refused = next(e for e in of(evs, "plan") if e["step"] == "roll-2")
    assert "after 1 this run already restarted" in refused["blocked"]
    assert clean_lab.main_pids()["app2"] == pids["app2"]


def test_the_report_s_warm_up_begins_once_the_host_has_the_restart_command(
    clean_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On real systemd hosts: the warm-up (RunContext.waiting) starts inside the
    restart command's run, after the host has it, not while the preflight and the
    host's preparation still need the interpreter; a dry run, which restarts nothing,
    never starts it during its steps. The report is written either way. Scripted:
    tests/unit/test_gates.py::test_the_run_waits_from_when_the_host_has_the_restart_command."""
    from connfix.hosts import remote
    from connfix.record import report

    seen: list[str] = []
    real_run, real_warm_up = remote.Remote.run, report.warm_up

    def run(self: remote.Remote, command: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(f"> {command}")
        result = real_run(self, command, *args, **kwargs)
        seen.append(f"< {command}")
        return result

    def warm_up() -> None:
        seen.append("warm-up")
        real_warm_up()

    monkeypatch.setattr(remote.Remote, "run", run)
    monkeypatch.setattr(report, "warm_up", warm_up)
    dry = restart(clean_lab, tmp_path / "dry", "--hosts", "app1", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "warm-up" not in seen
    assert list((tmp_path / "dry" / "incidents").glob("*/report.md"))
    seen.clear()
    result = restart(clean_lab, tmp_path, "--hosts", "app1", "--yes")
    assert result.exit_code == 0, result.output
    (command,) = [s[2:] for s in seen if s.startswith("> sudo -n systemctl restart")]
    at = seen.index("warm-up")
    assert seen.index(f"> {command}") < at < seen.index(f"< {command}")
    assert seen.count("warm-up") == 1
    assert list((tmp_path / "incidents").glob("*/report.md"))
