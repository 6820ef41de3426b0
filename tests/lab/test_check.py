"""`connfix inventory check` on the lab: all pass, and each kind of failure is named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from connfix.cli import cli
from tests.helpers import Lab


def _check(path: Path) -> Any:
    return CliRunner().invoke(cli, ["inventory", "check", "lab", "-i", str(path)])


def test_all_checks_pass_on_the_lab(lab: Lab) -> None:
    result = _check(lab.inventory)
    assert result.exit_code == 0, result.output
    assert "connfix (not a superuser) via the primary connection" in result.output
    assert f"PostgreSQL {lab.version}" in result.output
    assert f"max_connections {lab.max_connections}" in result.output
    assert "works as connfix_admin (superuser)" in result.output
    assert "sees every session; may terminate other roles' sessions" in result.output
    for name in ("app1", "app2", "app3"):
        assert name in result.output
    assert "all checks passed (3 hosts)" in result.output


def test_lab_inventory_found_without_flags(lab: Lab, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "connfix", "inventory", "check", "lab"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "all checks passed" in proc.stdout


def test_missing_service_unit_fails_the_host(lab: Lab, tmp_path: Path) -> None:
    def change(env: dict[str, Any]) -> None:
        env["service"]["unit"] = "nosuch.service"

    result = _check(lab.inventory_with(tmp_path, change))
    assert result.exit_code == 3, result.output
    assert "service nosuch.service not found (LoadState=not-found)" in result.output
    assert "checks failed: 3 of 3 hosts" in result.output


def test_changed_host_key_fails_the_check(lab: Lab, tmp_path: Path) -> None:
    known = (lab.paths.lab_dir() / "ssh" / "known_hosts").read_text().splitlines()
    # give app2's address app1's key: a changed key for app2
    app1_key = known[0].split(" ", 1)[1]
    known[1] = known[1].split(" ", 1)[0] + " " + app1_key
    bad_known = tmp_path / "known_hosts"
    bad_known.write_text("\n".join(known) + "\n")

    def change(env: dict[str, Any]) -> None:
        env["ssh"]["known_hosts_file"] = str(bad_known)

    result = _check(lab.inventory_with(tmp_path, change))
    assert result.exit_code == 3
    assert "host key for 10.231.7.12 has CHANGED" in result.output
    assert "checks failed: 1 of 3 hosts" in result.output


def test_unreachable_host_fails_the_check(lab: Lab, tmp_path: Path) -> None:
    def change(env: dict[str, Any]) -> None:
        env["hosts"].append({"name": "ghost", "ssh_address": "10.231.7.99"})
        env["ssh"]["connect_timeout"] = "1s"

    result = _check(lab.inventory_with(tmp_path, change))
    assert result.exit_code == 3
    assert "ghost" in result.output and "SSH to 10.231.7.99" in result.output
    assert "checks failed: 1 of 4 hosts" in result.output


def test_unreachable_database_fails_the_check(lab: Lab, tmp_path: Path) -> None:
    def change(env: dict[str, Any]) -> None:
        env["database"]["dsn"] = "host=127.0.0.1 port=1 dbname=appdb user=connfix"
        env["database"]["connect_timeout"] = "1s"

    result = _check(lab.inventory_with(tmp_path, change))
    assert result.exit_code == 3
    assert "cannot connect to connfix@127.0.0.1:1/appdb" in result.output
    assert "checks failed: database" in result.output
