"""Zero-setup: a connection string and nothing else — diagnose, terminate (dry run), a
starter inventory — on the lab's real server; the share-and-age rule on its own."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import LAB_HOSTS, Lab, invoke


def test_diagnose_from_a_dsn_alone(clean_lab: Lab, tmp_path: Path) -> None:
    clean_lab.core.leak("app2", 4, idle_in_transaction=False)
    dsn = clean_lab.core.dsn("connfix")
    result = invoke("diagnose", "--dsn", dsn, "--json")
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
    text = invoke("diagnose", "--dsn", dsn)
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
    result = invoke("diagnose", "--json", env=env)
    assert result.exit_code in (0, 1), result.output
    assert json.loads(result.stdout)["result"]["client_backends"] >= LAB_HOSTS * 3


def test_a_starter_inventory_from_what_was_seen(clean_lab: Lab, tmp_path: Path) -> None:
    from connfix.config.inventory_file import load_inventory

    path = tmp_path / "inventory.yaml"
    dsn = clean_lab.core.dsn("connfix")
    result = invoke("diagnose", "--dsn", dsn, "--write-inventory", str(path))
    assert result.exit_code in (0, 1), result.output
    text = path.read_text()
    assert "CHANGE-ME.service" in text and "password" not in text
    env = load_inventory(path).environment("appdb")
    addresses = {h.ssh_address for h in env.hosts}
    assert {clean_lab.paths.host_address(i) for i in range(1, LAB_HOSTS + 1)} <= addresses
    assert env.service.application_name == "labapp" and env.service.user == "app"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = invoke("diagnose", "--dsn", dsn, "--write-inventory", str(path))
    assert again.exit_code == 2 and "never overwrites" in again.output


def test_terminate_from_a_dsn_alone(clean_lab: Lab, tmp_path: Path) -> None:
    clean_lab.core.leak("app1", 2, idle_in_transaction=False)
    dsn = clean_lab.core.dsn("connfix")
    incidents = tmp_path / "incidents"
    result = invoke(
        "terminate", "--dsn", dsn, "--state", "idle", "--older-than", "0s", "--dry-run",
        "--max-fraction", "1", "--incidents-dir", str(incidents),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # every idle session is planned (no cap binds), app1's among them, named by address
    assert f"from {clean_lab.paths.host_address(1)}" in result.output
    (journal,) = incidents.glob("*/journal.jsonl")
    start = json.loads(journal.read_text().splitlines()[0])
    assert start["inventory"] == "(none: --dsn)"
    refused = invoke("terminate", "--dsn", dsn, "--only-suspects", "--dry-run")
    assert refused.exit_code == 2 and "need(s) an inventory" in refused.output
