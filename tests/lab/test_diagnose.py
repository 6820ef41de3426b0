"""`connfix diagnose` on the lab's real PostgreSQL, checked against pg_stat_activity."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from connfix.cli import cli
from connfix.diagnosis.analysis import diagnose
from connfix.diagnosis.model import HIDDEN_STATE
from tests.helpers import LAB_HOSTS, LAB_POOL_SIZE, Lab, retry


def run_json(lab: Lab, inventory: Path | None = None) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(
        cli, ["diagnose", "lab", "--json", "-i", str(inventory or lab.inventory)]
    )
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)["result"]


def no_connfix_sessions(lab: Lab) -> None:
    retry(lambda: all(b["application_name"] != "connfix" for b in lab.client_backends()))


def test_leak_on_one_host_makes_only_it_the_suspect(clean_lab: Lab) -> None:
    clean_lab.core.leak("app2", 5, idle_in_transaction=False)
    status, data = run_json(clean_lab)
    no_connfix_sessions(clean_lab)
    truth = clean_lab.client_backends()
    by_addr = Counter(b["client_addr"] for b in truth)
    assert [h["host"] for h in data["by_host"] if h["suspect"]] == ["app2"]
    assert data["suspects"] == ["app2"]
    for host in data["by_host"]:
        if host["host"] != "(connfix)":  # connfix's own session: gone now it has exited
            assert host["count"] == by_addr[host["client_addr"]], host
    app2 = next(h for h in data["by_host"] if h["host"] == "app2")
    assert app2["count"] == LAB_POOL_SIZE + 5 and app2["pool_size"] == LAB_POOL_SIZE
    assert app2["max_capacity"] == LAB_POOL_SIZE + 2  # the lab's max_overflow 2
    assert app2["reasons"] == [
        f"holds {LAB_POOL_SIZE + 5} connections, more than pool size {LAB_POOL_SIZE}"
        " + max_overflow 2 (+3)"
    ]
    assert data["own_sessions"] == 1
    assert data["client_backends"] == len(truth) + 1 == LAB_HOSTS * LAB_POOL_SIZE + 5 + 1
    assert data["severity"] == "warning" and status == 1  # 15 of 17 usable: 88%


def test_idle_in_transaction_leaks_show_with_correct_ages(clean_lab: Lab) -> None:
    clean_lab.core.leak("app3", 3, idle_in_transaction=True)
    time.sleep(1.5)  # let the transactions age
    _, data = run_json(clean_lab)
    with clean_lab.superuser() as conn:
        truth = dict(
            conn.execute(
                "SELECT pid, extract(epoch FROM now() - xact_start)::float8 FROM pg_stat_activity"
                " WHERE state = 'idle in transaction'"
            ).fetchall()
        )
    assert data["by_state"]["idle in transaction"] == 3
    sessions = data["idle_in_transaction"]
    assert sorted(s["pid"] for s in sessions) == sorted(truth)
    for s in sessions:
        assert s["host"] == "app3" and s["application_name"] == "labapp"
        assert s["xact_seconds"] >= 1.5
        assert abs(s["xact_seconds"] - truth[s["pid"]]) < 1.0  # read a moment apart
        assert s["blocking"] == []
    app3 = next(h for h in data["by_host"] if h["host"] == "app3")
    assert app3["idle_in_transaction"] == 3 and app3["suspect"]  # 6 > pool 3 + overflow 2


def test_idle_in_transaction_that_blocks_others(clean_lab: Lab) -> None:
    dsn = clean_lab.app_dsn()
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v int)")
        setup.execute("INSERT INTO t VALUES (1, 0) ON CONFLICT DO NOTHING")
    holder = psycopg.connect(dsn)
    holder.execute("UPDATE t SET v = v + 1 WHERE id = 1")  # open transaction, row lock
    waiter = psycopg.connect(dsn, autocommit=True)
    waiter_pid = waiter.info.backend_pid
    thread = threading.Thread(target=lambda: waiter.execute("UPDATE t SET v = 5 WHERE id = 1"))
    thread.start()
    try:
        retry(
            lambda: any(
                b["pid"] == waiter_pid and b["state"] == "active"
                for b in clean_lab.client_backends()
            )
        )
        _, data = run_json(clean_lab)
        top = data["idle_in_transaction"][0]
        assert top["pid"] == holder.info.backend_pid
        assert top["blocking"] == [waiter_pid]
        assert top["query"] == "UPDATE t SET v = v + 1 WHERE id = 1"
    finally:
        holder.rollback()
        thread.join(10)
        holder.close()
        waiter.close()


def test_json_fields_one_by_one(clean_lab: Lab) -> None:
    # two snapshots a moment apart: the app serves a request now and then (a session is
    # `active` for a millisecond), so read again until they saw the same states
    for _ in range(5):
        status, data = run_json(clean_lab)
        no_connfix_sessions(clean_lab)
        truth = clean_lab.client_backends()
        if data["by_state"] == dict(Counter(b["state"] for b in truth)):
            break
    with clean_lab.superuser() as conn:
        version_num = int(conn.execute("SHOW server_version_num").fetchone()[0])
    assert status == 0
    assert data["environment"] == "lab"
    assert data["server_version_num"] == version_num
    assert data["max_connections"] == clean_lab.max_connections
    assert data["superuser_reserved_connections"] == 3
    assert data["reserved_connections"] == clean_lab.reserved
    assert data["usable_connections"] == 17
    assert data["client_backends"] == len(truth) + 1 == 10  # connfix's own session too
    assert data["own_sessions"] == 1
    assert data["utilization"] == round(10 / 17, 4)
    assert data["severity"] == "ok"
    assert data["by_state"] == dict(Counter(b["state"] for b in truth))
    assert data["visibility_complete"] is True and data["hidden_sessions"] == 0
    assert data["via"] == "primary" and data["refusal"] is None
    assert data["connected_as"] == "connfix"
    assert len(data["by_host"]) == LAB_HOSTS + 1  # and "(connfix)"
    assert data["by_host"][-1]["host"] == "(connfix)" and data["by_host"][-1]["count"] == 1
    for entry in data["by_host"][:-1]:
        assert set(entry) >= {
            "host",
            "client_addr",
            "count",
            "idle",
            "idle_in_transaction",
            "pool_size",
            "suspect",
        }
        assert entry["count"] == entry["idle"] == LAB_POOL_SIZE
        assert entry["idle_in_transaction"] == 0
        assert entry["pool_size"] == LAB_POOL_SIZE
        assert entry["suspect"] is False
    assert {e["host"]: e["client_addr"] for e in data["by_host"]} == {
        **{f"app{i}": f"10.231.7.{10 + i}" for i in range(1, LAB_HOSTS + 1)},
        "(connfix)": "10.231.7.1",  # connfix's own session, from the database's bridge
    }
    check = data["pool_check"]
    assert (check["servers"], check["pool_size"], check["total"]) == (3, 3, 15)  # (3 + 2) × 3
    assert (check["usable_connections"], check["buffer"], check["limit"]) == (17, 2, 15)
    assert check["safe"] is True
    assert data["by_application"] == {"labapp": 9}
    assert data["by_user"] == {"app": 9}


def test_full_server_is_diagnosed_through_the_admin_connection(
    full_server: list[Any], lab: Lab
) -> None:
    status, data = run_json(lab)
    assert data["via"] == lab.way_in
    assert data["connected_as"] == f"connfix_{lab.way_in}"
    assert "remaining connection slots are reserved" in data["refusal"]
    # 17 ordinary slots taken, and connfix's own in a privileged one
    assert data["client_backends"] == 18 and data["own_sessions"] == 1
    assert data["utilization"] == round(18 / 17, 4)
    assert data["severity"] == "critical" and status == 1
    result = CliRunner().invoke(cli, ["diagnose", "lab", "-i", str(lab.inventory)])
    assert f"diagnosed through the {lab.way_in} connection" in result.output
    assert result.exit_code == 1


def test_full_server_without_admin_exits_3_quoting_the_refusal(
    full_server: list[Any], lab: Lab, tmp_path: Path
) -> None:
    def change(env: dict[str, Any]) -> None:
        del env["database"]["admin_dsn"]
        del env["database"]["admin_dsn_env"]
        env["database"].pop("reserved_dsn", None)

    result = CliRunner().invoke(
        cli, ["diagnose", "lab", "--json", "-i", str(lab.inventory_with(tmp_path, change))]
    )
    assert result.exit_code == 3
    assert "server said: remaining connection slots are reserved for " in result.output
    assert "admin_dsn_env" in result.output
    # no half JSON on stdout: one envelope saying why
    (line,) = result.stdout.splitlines()
    data = json.loads(line)
    assert (data["status"], data["exit_status"]) == ("error", 3)
    assert "remaining connection slots are reserved" in data["result"]["error"]


@pytest.fixture
def unprivileged(lab: Lab) -> Iterator[str]:
    with lab.superuser() as conn:
        conn.execute("DROP ROLE IF EXISTS watcher")
        conn.execute("CREATE ROLE watcher LOGIN")
    socket_dir = lab.paths.lab_dir() / "pg" / "run"
    yield f"host={socket_dir} port={lab.paths.pg_port()} dbname=appdb user=watcher"
    with lab.superuser() as conn:
        conn.execute("DROP ROLE watcher")


def test_unprivileged_role_yields_incomplete_visibility(
    clean_lab: Lab, unprivileged: str, tmp_path: Path
) -> None:
    def change(env: dict[str, Any]) -> None:
        env["database"]["dsn"] = unprivileged

    inventory = clean_lab.inventory_with(tmp_path, change)
    _, data = run_json(clean_lab, inventory)
    assert data["connected_as"] == "watcher"
    assert data["visibility_complete"] is False
    assert data["hidden_sessions"] == LAB_HOSTS * LAB_POOL_SIZE, data["by_user"]
    assert data["client_backends"] == LAB_HOSTS * LAB_POOL_SIZE + 1  # counted, not dropped
    assert data["by_state"] == {HIDDEN_STATE: LAB_HOSTS * LAB_POOL_SIZE}
    assert data["by_user"] == {"app": LAB_HOSTS * LAB_POOL_SIZE}
    result = CliRunner().invoke(cli, ["diagnose", "lab", "-i", str(inventory)])
    assert "visibility incomplete" in result.output and "lower bounds" in result.output


def test_role_connection_limit_near_its_cap(clean_lab: Lab) -> None:
    with clean_lab.superuser() as conn:
        conn.execute("ALTER ROLE app CONNECTION LIMIT 10")
    try:
        from connfix.config.inventory_file import load_inventory

        env = load_inventory(clean_lab.inventory).environment("lab")
        d = diagnose("lab", env)
        limit = next(x for x in d.connection_limits if x.kind == "role")
        assert (limit.name, limit.used, limit.limit) == ("app", 9, 10)
        assert d.severity == "warning"
        assert "role 'app' is near its CONNECTION LIMIT (9/10)" in d.severity_reasons
    finally:
        with clean_lab.superuser() as conn:
            conn.execute("ALTER ROLE app CONNECTION LIMIT -1")


def test_human_output_has_every_section(clean_lab: Lab) -> None:
    clean_lab.core.leak("app1", 3, idle_in_transaction=True)
    result = CliRunner().invoke(cli, ["diagnose", "lab", "-i", str(clean_lab.inventory)])
    out = result.output
    assert (
        f"usable 17 (max_connections {clean_lab.max_connections} − superuser_reserved 3"
        f" − reserved {clean_lab.reserved})"
    ) in out
    assert "used 13 (connfix's own: 1)" in out and "utilization 76%" in out
    # 76% alone would be OK, but a leak suspect is never OK (and exits 1)
    assert "severity WARNING" in out and "leak suspect(s): app1" in out
    for section in (
        "by state",
        "by host",
        "oldest idle in transaction",
        "pool check:",
        "leak suspects: app1",
    ):
        assert section in out, section
    assert result.exit_code == 1


def test_inventory_check_names_missing_privileges(
    clean_lab: Lab, unprivileged: str, tmp_path: Path
) -> None:
    def change(env: dict[str, Any]) -> None:
        env["database"]["dsn"] = unprivileged

    result = CliRunner().invoke(
        cli, ["inventory", "check", "lab", "-i", str(clean_lab.inventory_with(tmp_path, change))]
    )
    assert "cannot see other roles' sessions (grant pg_read_all_stats)" in result.output
    assert "cannot terminate other roles' sessions (grant pg_signal_backend)" in result.output


def test_prometheus_textfile_is_written_atomically_and_parses(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """What node_exporter's textfile collector reads: the same figures as --json."""
    from prometheus_client.parser import text_string_to_metric_families

    path = tmp_path / "connfix.prom"
    result = CliRunner().invoke(
        cli,
        ["diagnose", "lab", "-i", str(clean_lab.inventory), "--json",
         "--prometheus-textfile", str(path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["result"]
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    (usable,) = families["connfix_usable_connections"].samples
    assert usable.value == data["usable_connections"] and usable.labels == {"environment": "lab"}
    (backends,) = families["connfix_client_backends"].samples
    assert backends.value == data["client_backends"]
    hosts = {s.labels["host"] for s in families["connfix_host_leak_suspect"].samples}
    assert hosts == {f"app{i}" for i in range(1, LAB_HOSTS + 1)}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    bad = CliRunner().invoke(
        cli, ["diagnose", "lab", "-i", str(clean_lab.inventory), "--prometheus-textfile", "x.txt"]
    )
    assert bad.exit_code == 2 and "*.prom" in bad.output


def test_an_unset_way_in_lists_every_way_in(
    full_server: list[Any], lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only way in is named by a variable nobody exported: the message says which,
    and lists every way in that could be configured, as with none configured."""

    def change(env: dict[str, Any]) -> None:
        del env["database"]["admin_dsn"]
        env["database"]["admin_dsn_env"] = "CONNFIX_TEST_UNSET_ADMIN_DSN"
        env["database"].pop("reserved_dsn", None)

    monkeypatch.delenv("CONNFIX_TEST_UNSET_ADMIN_DSN", raising=False)
    result = CliRunner().invoke(
        cli, ["diagnose", "lab", "-i", str(lab.inventory_with(tmp_path, change))]
    )
    assert result.exit_code == 3
    assert "admin: environment variable CONNFIX_TEST_UNSET_ADMIN_DSN is not set" in result.output
    assert "database.reserved_dsn (a role granted pg_use_reserved_connections" in result.output
    assert "database.admin_dsn (a superuser)" in result.output
