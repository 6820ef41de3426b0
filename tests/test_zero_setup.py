"""Zero-setup: a connection string and nothing else — diagnose, terminate (dry run), a
starter inventory — on the lab's real server; the share-and-age rule on its own."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from connfix.cli import cli
from tests.helpers import LAB_HOSTS, Lab


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env)


def test_diagnose_from_a_dsn_alone(clean_lab: Lab, tmp_path: Path) -> None:
    clean_lab.core.leak("app2", 4, idle_in_transaction=False)
    dsn = clean_lab.core.dsn("connfix")
    result = run("diagnose", "--dsn", dsn, "--json")
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.stdout)
    assert (
        data["environment"]
        == f"connfix@{clean_lab.paths.db_address()}:{clean_lab.paths.pg_port()}/appdb"
    )
    d = data["result"]
    assert d["zero_setup"] is True
    rows = {r["client_addr"]: r for r in d["by_host"]}
    app2 = clean_lab.paths.host_address(2)
    assert rows[app2]["count"] == 3 + 4 and rows[app2]["pool_size"] is None
    assert len([a for a in rows if a.startswith(clean_lab.paths.subnet() + ".1")]) >= LAB_HOSTS
    assert any("An inventory adds" in n for n in d["notes"])
    text = run("diagnose", "--dsn", dsn)
    assert "note: no inventory: hosts are client addresses" in text.output
    assert "pool check: unknown without an inventory" in text.output
    assert "unknown.service" not in text.output and "127.0.0.1 " not in text.output


def test_libpq_variables_alone_are_enough(clean_lab: Lab) -> None:
    env = {
        "PGHOST": clean_lab.paths.db_address(),
        "PGPORT": str(clean_lab.paths.pg_port()),
        "PGDATABASE": "appdb",
        "PGUSER": "connfix",
        "PGPASSFILE": str(clean_lab.paths.lab_dir() / "pgpass"),
        "CONNFIX_INVENTORY": "",
    }
    result = run("diagnose", "--json", env=env)
    assert result.exit_code in (0, 1), result.output
    assert json.loads(result.stdout)["result"]["client_backends"] >= LAB_HOSTS * 3


def test_a_starter_inventory_from_what_was_seen(clean_lab: Lab, tmp_path: Path) -> None:
    from connfix.config.inventory_file import load_inventory

    path = tmp_path / "inventory.yaml"
    dsn = clean_lab.core.dsn("connfix")
    result = run("diagnose", "--dsn", dsn, "--write-inventory", str(path))
    assert result.exit_code in (0, 1), result.output
    text = path.read_text()
    assert "CHANGE-ME.service" in text and "password" not in text
    env = load_inventory(path).environment("appdb")
    addresses = {h.ssh_address for h in env.hosts}
    assert {clean_lab.paths.host_address(i) for i in range(1, LAB_HOSTS + 1)} <= addresses
    assert env.service.application_name == "labapp" and env.service.user == "app"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = run("diagnose", "--dsn", dsn, "--write-inventory", str(path))
    assert again.exit_code == 2 and "never overwrites" in again.output


def test_terminate_from_a_dsn_alone(clean_lab: Lab, tmp_path: Path) -> None:
    clean_lab.core.leak("app1", 2, idle_in_transaction=False)
    dsn = clean_lab.core.dsn("connfix")
    incidents = tmp_path / "incidents"
    result = run(
        "terminate", "--dsn", dsn, "--state", "idle", "--older-than", "0s", "--dry-run",
        "--max-fraction", "1", "--incidents-dir", str(incidents),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # every idle session is planned (no cap binds), app1's among them, named by address
    assert f"from {clean_lab.paths.host_address(1)}" in result.output
    (journal,) = incidents.glob("*/journal.jsonl")
    start = json.loads(journal.read_text().splitlines()[0])
    assert start["inventory"] == "(none: --dsn)"
    refused = run("terminate", "--dsn", dsn, "--only-suspects", "--dry-run")
    assert refused.exit_code == 2 and "need(s) an inventory" in refused.output


def test_bad_zero_setup_input() -> None:
    env = {k: "" for k in ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")}
    nothing = run("diagnose", env=env)
    assert nothing.exit_code == 2 and "give ENVIRONMENT" in nothing.output
    both = run("diagnose", "prod", "--dsn", "host=db")
    assert both.exit_code == 2 and "not both" in both.output
    secret = run("diagnose", "--dsn", "host=db user=x password=hunter2")
    assert secret.exit_code == 2 and "hunter2" not in secret.output
    assert "password" in secret.output
    stray = run("diagnose", "prod", "--write-inventory", "x.yaml")
    assert stray.exit_code == 2 and "--write-inventory goes with --dsn" in stray.output


def test_suspects_by_share_and_age() -> None:
    """10.0.0.7 holds 8 of 12 (67%), idle up to 20 minutes: a suspect; 10.0.0.8 holds 4,
    young: not; 10.0.0.9 keeps a transaction idle for 2 minutes: a suspect."""
    from connfix.db.pg import ServerInfo
    from connfix.diagnosis import zero_setup
    from connfix.diagnosis.analysis import analyse
    from tests.test_diagnose_unit import backend

    env = zero_setup.environment_for("host=db dbname=app user=connfix")
    rows = [backend(i, "10.0.0.7", idle=1200) for i in range(8)]
    rows += [backend(20 + i, "10.0.0.8", idle=5) for i in range(3)]
    rows += [backend(30, "10.0.0.9", "idle in transaction", xact=120)]
    info = ServerInfo("connfix", False, True, True, "x", 150004, 40, 3, 0, 1, "app")
    d = zero_setup.suspects_by_share(
        analyse("db", env, info, rows, []), env, {"10.0.0.7": "web7.internal"}
    )
    assert d.suspects == ["web7.internal", "10.0.0.9"]
    by = {u.host: u for u in d.by_host}
    assert "holds 8 of 12 connections (67%)" in by["web7.internal"].reasons[0]
    assert not by["10.0.0.8"].suspect
    assert d.severity == "warning" and d.zero_setup
    young = [replace(b, idle_seconds=5) for b in rows[:8]]
    calm = zero_setup.suspects_by_share(analyse("db", env, info, young, []), env, {})
    assert calm.suspects == []
