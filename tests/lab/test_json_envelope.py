"""`--json` on the lab: every run command and diagnose answer in the one envelope,
checked against the schema connfix ships."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from connfix.cli import cli
from tests.helpers import LAB_HOSTS, Lab, connfix_run, envelope_of


def test_every_run_command_and_diagnose_answer_in_the_envelope(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """triage, terminate, restart (dry runs), diagnose, pool, inventory check, report and
    lab status on the lab, each checked against the schema."""
    inventory = clean_lab.inventory
    runs = {
        "triage": ["--dry-run"],
        "terminate": ["--state", "idle", "--older-than", "1h", "--dry-run"],
        "restart": ["--hosts", "app1", "--dry-run"],
    }
    for command, extra in runs.items():
        incidents = tmp_path / command
        result = connfix_run(command, inventory, incidents, *extra, "--json")
        data = envelope_of(result.stdout)
        assert data["command"] == command and data["environment"] == "lab"
        assert data["exit_status"] == result.exit_code
        assert Path(data["incident"]).parent == incidents
        assert data["result"]["report"] and Path(data["result"]["report"]).is_file()
        assert data["status"] in ("dry_run", "resolved", "healthy"), data["status"]
        assert "│" not in result.stdout and result.stderr  # tables and progress on stderr
    triage = envelope_of(
        connfix_run("triage", inventory, tmp_path / "t2", "--dry-run", "--json").stdout
    )
    assert triage["result"]["steps"][0] == {"id": "diagnose", "status": "ok"}
    assert triage["result"]["final"]["environment"] == "lab"

    diag = CliRunner().invoke(cli, ["diagnose", "lab", "-i", str(inventory), "--json"])
    data = envelope_of(diag.stdout)
    assert data["status"] == data["result"]["severity"] == "ok" and diag.exit_code == 0
    assert {h["host"] for h in data["result"]["by_host"]} >= {
        f"app{i}" for i in range(1, LAB_HOSTS + 1)
    }

    pool = CliRunner().invoke(cli, ["pool", "lab", "-i", str(inventory), "--json"])
    assert envelope_of(pool.stdout)["result"]["sizing"]["servers"] == LAB_HOSTS

    check = CliRunner().invoke(cli, ["inventory", "check", "lab", "-i", str(inventory), "--json"])
    data = envelope_of(check.stdout)
    assert data["status"] == "ok" and data["result"]["ok"] is True

    incident = Path(triage["incident"])
    report = CliRunner().invoke(cli, ["report", str(incident), "--json"])
    data = envelope_of(report.stdout)
    assert data["result"]["report"] == str(incident / "report.md")

    status = CliRunner().invoke(cli, ["lab", "status", "--json"])
    data = envelope_of(status.stdout)
    assert data["status"] == "ok" and len(data["result"]["hosts"]) == LAB_HOSTS
