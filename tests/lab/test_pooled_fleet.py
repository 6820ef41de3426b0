"""A fleet behind a real PgBouncer, mid-migration: `lab up --pgbouncer-hosts 2` puts app1
and app2 behind the lab's PgBouncer, app3 stays direct. Every test runs on PostgreSQL 15
and 18, and on each PgBouncer users run: Debian's 1.18, and 1.24.1 / 1.25.2 built from
their release sources (swapped in place in front of the same lab).

Attribution through the pooler, a triage of a leak behind it, 1.18's remedy for a
client stuck in a transaction, pool sizing with the pooler live and during the
migration (the database never exhausted under a load that exhausts it with the old
sizing), PAUSE / RESUME / RECONNECT as runbook steps, and the auth_query setup."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connfix.lab import pgbouncer as lab_bouncer
from tests.helpers import PG_VERSIONS, assert_complete, connfix_run, events, of, retry

LAB_ID = "6"  # beside the suite's lab (7): its own bridge, ports and directory
BOUNCERS = ("1.18", "1.24", "1.25")
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"


@contextmanager
def pooled_lab_id() -> Iterator[None]:
    saved = os.environ.get("CONNFIX_LAB_ID")
    os.environ["CONNFIX_LAB_ID"] = LAB_ID
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CONNFIX_LAB_ID", None)
        else:
            os.environ["CONNFIX_LAB_ID"] = saved


@pytest.fixture(scope="module", params=PG_VERSIONS, ids=[f"pg{v}" for v in PG_VERSIONS])
def pooled_lab(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Lab 6: PostgreSQL 15 or 18, 3 hosts × pool 3 (+2 overflow), app1 and app2 behind
    PgBouncer, app3 direct; 17 usable slots on both versions."""
    from connfix.lab import lab as core
    from connfix.lab import paths

    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (namespaces, cgroups, systemd hosts)")
    version = int(request.param)
    with pooled_lab_id():
        core.down()
        core.up(
            hosts=3,
            max_connections=20 + (2 if version >= 16 else 0),
            pool_size=3,
            boot_seconds=0.2,
            postgres=str(version),
            reserved_connections=2,
            pgbouncer_hosts=2,
        )
        inventory = paths.lab_dir() / "inventory.yaml"
    try:
        yield inventory
    finally:
        with pooled_lab_id():
            core.down()


@pytest.fixture(params=BOUNCERS, ids=[f"pgbouncer{v}" for v in BOUNCERS])
def pgbouncer_version(request: pytest.FixtureRequest) -> str:
    """Each PgBouncer users run: Debian's 1.18, and 1.24 / 1.25 built from their release
    sources (../shared/vendor; a clone without it skips these, saying why)."""
    from connfix.lab import pgbouncer as lab_bouncer

    why = lab_bouncer.unavailable(request.param)
    if why:
        pytest.skip(f"PgBouncer {request.param}: {why}")
    return str(request.param)


@pytest.fixture
def pooled(
    pooled_lab: Path, pgbouncer_version: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """The pooled lab with `pgbouncer_version` in front, no leak before and after."""
    from connfix.lab import lab as core
    from connfix.lab.state import LabState

    monkeypatch.setenv("CONNFIX_LAB_ID", LAB_ID)
    state = LabState.load()
    assert state is not None
    if state.pgbouncer_version != pgbouncer_version:
        core.use_pgbouncer(pgbouncer_version)
        for index in (1, 2):  # their pools' connections went with the old PgBouncer
            core.systemctl(f"app{index}", "restart", "labapp.service")
    _reset()
    yield pooled_lab
    _reset()


def _reset() -> None:
    from connfix.lab import lab as core

    with psycopg.connect(core.bootstrap_dsn(), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND application_name NOT IN ('labapp', '')"
        )
    for index in (1, 2, 3):
        status = core.app_request(index, "/status")
        if status["leaked"] or status.get("checked_out") or status["traffic_seconds"] != 1:
            core.systemctl(f"app{index}", "restart", "labapp.service")
        retry(lambda i=index: _healthy(i), timeout=30)  # type: ignore[misc]
    _admin("RESUME")  # in case a test left the pool paused (an error when it is not)


def _healthy(index: int) -> bool:
    from connfix.lab import lab as core

    try:
        core.app_request(index, "/health", timeout=2)
    except Exception:
        return False
    return True


def _admin_dsn() -> str:
    from connfix.lab import paths
    from connfix.lab.postgres import passfile

    return (
        f"host={paths.db_address()} port={paths.pgbouncer_port()} dbname=pgbouncer"
        f" user=connfix passfile={passfile()}"
    )


def _admin(command: str) -> list[dict[str, Any]]:
    """Run one admin command on the lab's PgBouncer (psycopg, simple protocol)."""
    from psycopg.rows import dict_row

    try:
        with (
            psycopg.connect(
                _admin_dsn(), autocommit=True, cursor_factory=psycopg.ClientCursor
            ) as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            cur.execute(command)
            return list(cur.fetchall()) if cur.description else []
    except psycopg.Error:
        return []


def _psql_clients() -> list[dict[str, str]]:
    """SHOW CLIENTS as psql prints it (the cross-check of what connfix reads)."""
    out = subprocess.run(
        ["psql", _admin_dsn(), "-X", "-A", "-F", "|", "-c", "SHOW CLIENTS"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    header = out[0].split("|")
    return [dict(zip(header, line.split("|"), strict=False)) for line in out[1:]]


def _psql_clients_by_addr() -> dict[str, int]:
    """Clients of appdb per address, as psql shows them: connfix's attribution must match."""
    counts: dict[str, int] = {}
    for row in _psql_clients():
        if row.get("database") == "appdb":
            counts[row["addr"]] = counts.get(row["addr"], 0) + 1
    return counts


def _suspected(inventory: Path, host: str) -> dict[str, Any] | None:
    """The diagnosis once `host` is a suspect in it."""
    data = _diagnose(inventory)
    return data if host in data["suspects"] else None


def _diagnose(inventory: Path) -> dict[str, Any]:
    from click.testing import CliRunner

    from connfix.cli import cli

    result = CliRunner().invoke(cli, ["diagnose", "lab", "--json", "-i", str(inventory)])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)["result"]


def test_attribution_through_the_pooler_and_only_suspects(
    pooled: Path, pgbouncer_version: str, tmp_path: Path
) -> None:
    from connfix.lab import lab as core
    from connfix.lab import paths

    core.leak("app1", 6, idle_in_transaction=False)
    data = retry(lambda: _suspected(pooled, "app1"))
    rows = {r["host"]: r for r in data["by_host"]}
    assert data["suspects"] == ["app1"]
    app1, app2, app3 = rows["app1"], rows["app2"], rows["app3"]
    # app1's pool (3) and its 6 leaked connections: 9 client connections in PgBouncer
    assert app1["pooled"] == 9 and app1["pooled_by"] == {"lab": 9}
    assert "9 of them through PgBouncer lab" in app1["reasons"][0]
    assert app2["pooled"] == 3 and not app2["suspect"]
    assert app3["pooled"] == 0 and app3["count"] == 3  # direct
    bouncer_row = rows["(pgbouncer lab)"]
    assert bouncer_row["pgbouncer"] == "lab" and bouncer_row["client_addr"] == "127.0.0.1"
    assert "(not in inventory)" not in rows
    (state,) = data["pgbouncers"]
    assert state["version"].startswith(f"PgBouncer {pgbouncer_version}.")
    assert state["kill_client"] is (pgbouncer_version != "1.18")
    # `lab status` says which PgBouncer runs, as it answers SHOW VERSION
    from click.testing import CliRunner

    from connfix.cli import cli

    status = json.loads(CliRunner().invoke(cli, ["lab", "status", "--json"]).stdout)["result"]
    assert status["pgbouncer"] == state["version"] and status["pgbouncer_hosts"] == 2
    # cross-check: psql's SHOW CLIENTS counts the same clients per address
    by_addr = _psql_clients_by_addr()
    assert state["clients_by_host"]["app1"] == by_addr[paths.host_address(1)] == 9
    assert state["clients_by_host"]["app2"] == by_addr[paths.host_address(2)]

    # --only-suspects works behind the pooler: app1 alone is restarted, and afterwards
    # it holds its pool in PgBouncer, no more
    result = connfix_run("restart", pooled, tmp_path, "--only-suspects", "--yes")
    assert result.exit_code == 0, result.output
    done = [e["host"] for e in of(events(tmp_path), "host_done")]
    assert done == ["app1"]
    after = _diagnose(pooled)
    assert {r["host"]: r for r in after["by_host"]}["app1"]["pooled"] <= 5
    assert after["suspects"] == []


def _runbook_killing_after(tmp_path: Path, older_than: str) -> Path:
    """The shipped runbook, its kill step taking clients idle for `older_than` (1m by
    default: a test does not wait a minute)."""
    from importlib import resources

    import yaml

    shipped = resources.files("connfix.engine").joinpath("runbooks", "too-many-connections.yaml")
    book = yaml.safe_load(shipped.read_text("utf-8"))
    (kill,) = [s for s in book["steps"] if s["action"] == "pgbouncer_kill_clients"]
    kill["params"]["older_than"] = older_than
    path = tmp_path / "too-many-connections.yaml"
    path.write_text(yaml.safe_dump(book, sort_keys=False))
    return path


class HealthWatch:
    """Poll a host's /health every 100 ms while a run goes on; keep every failure."""

    def __init__(self, index: int) -> None:
        self.index, self.failures, self.polls = index, [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        from connfix.lab import lab as core

        while not self.stop.is_set():
            self.polls += 1
            try:
                core.app_request(self.index, "/health", timeout=3)
            except Exception as exc:
                self.failures.append(str(exc))
            time.sleep(0.1)

    def __enter__(self) -> HealthWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _clients_of(port_set: set[int]) -> set[int]:
    """Of these local ports of app1, those PgBouncer still lists as clients."""
    from connfix.lab import paths

    return {
        int(r["port"])
        for r in _psql_clients()
        if r.get("addr") == paths.host_address(1) and r.get("port", "").isdigit()
    } & port_set


@pytest.mark.parametrize("traffic", [0, 0.5], ids=["quiet-app", "busy-app"])
def test_a_leak_behind_each_pgbouncer_is_resolved_and_reported(
    pooled: Path, pgbouncer_version: str, traffic: float, tmp_path: Path
) -> None:
    """app1 leaks 6 idle connections through PgBouncer; its app is quiet (its pool idle
    since it started: the OLDEST idle clients) or busy. On 1.24 and 1.25 the kill step
    ends exactly the 6 leaked clients (by their ports, as the app knows them), never a
    pool connection; the app's health never fails; a fresh diagnosis follows the kill
    and no restart comes after it. On 1.18 the step is refused, saying what 1.18 offers,
    and the restart resolves it. The dry run and the real run each write a complete
    report."""
    from connfix.lab import lab as core

    core.traffic("app1", traffic)
    time.sleep(1.1)  # PgBouncer's connect times are to the second: the leak comes later
    core.leak("app1", 6, idle_in_transaction=False)
    status = core.app_request(1, "/status")
    pool_ports, leaked_ports = set(status["pool_ports"]), set(status["leaked_ports"])
    assert len(pool_ports) == 3 and len(leaked_ports) == 6
    retry(lambda: _suspected(pooled, "app1"))
    time.sleep(2.2)  # the leaked clients are idle longer than the kill step's older_than
    book = str(_runbook_killing_after(tmp_path, "2s"))
    dry = tmp_path / "dry"
    result = connfix_run("triage", pooled, dry, "--dry-run", "--runbook", book)
    assert result.exit_code == 1, result.output
    report = assert_complete(dry, "DRY RUN")
    assert "> **DRY RUN**" in report and "would restart (dry run)" in report
    kill_plan = next(e for e in of(events(dry), "plan") if e["step"].startswith("pgbouncer-kill"))
    dry_restart = next(e for e in of(events(dry), "step_end") if e["step"].startswith("restart"))
    # the dry run says the restart is only what a real run would do if the kill did not
    # settle it: a real run diagnoses again after the kill
    assert ("if still needed after pgbouncer-kill-leaked-clients" in dry_restart["summary"]) is (
        pgbouncer_version != "1.18"
    ), dry_restart["summary"]
    runs = tmp_path / "runs"
    with HealthWatch(1) as health:
        result = connfix_run("triage", pooled, runs, "--yes", "--runbook", book)
        time.sleep(1.5)  # and the app's next requests, on what its pool kept
    assert result.exit_code == 0, result.output
    evs = events(runs)
    assert of(evs, "run_end")[0]["status"] == "resolved"
    report = assert_complete(runs, "resolved")
    assert "### Behind PgBouncer" in report
    kill_end = next(e for e in of(evs, "step_end") if e["step"].startswith("pgbouncer-kill"))
    if pgbouncer_version == "1.18":
        assert kill_plan["blocked"] and "PgBouncer 1.18.0" in kill_plan["blocked"]
        assert "KILL_CLIENT came with PgBouncer 1.24" in kill_end["summary"]
        assert "connfix never sends KILL <db>" in kill_end["summary"]
        assert [e["host"] for e in of(evs, "host_done")] == ["app1"]
        assert not any(str(e.get("command", "")).startswith("KILL") for e in of(evs, "operation"))
        return
    planned = {op["details"]["port"] for op in kill_plan["operations"]}
    assert planned == leaked_ports, (planned, leaked_ports, pool_ports)  # the dry run's truth
    killed = {
        e["port"] for e in of(evs, "operation") if str(e.get("command")).startswith("KILL_CLIENT")
    }
    assert killed == leaked_ports and not killed & pool_ports
    assert all(e.get("ok") for e in of(evs, "operation"))
    assert not of(evs, "host_start"), "a restart followed the kill that fixed app1"
    # the decision after the kill was taken on a diagnosis taken after it
    kill_at = evs.index(kill_end)
    fresh = [e for e in evs[kill_at:] if e["event"] == "diagnosis"]
    assert fresh and "app1" not in fresh[0]["diagnosis"]["suspects"]
    assert health.polls > 5 and not health.failures, health.failures
    assert _clients_of(pool_ports) == pool_ports  # the pool's connections are all there
    assert _clients_of(leaked_ports) == set()
    assert "### Sent to PgBouncer" in report
    assert report.count("| lab | KILL\\_CLIENT ") == 6
    assert "ended 6 PgBouncer client connection(s) (KILL\\_CLIENT)" in report
    assert core.app_request(1, "/health")["ok"]


def test_a_client_stuck_in_a_transaction_ends_with_its_server_connection(
    pooled: Path, tmp_path: Path
) -> None:
    """What 1.18 offers: the backend lent to app1's client is attributed to app1; ending
    it (terminate) makes PgBouncer close exactly that client."""
    from connfix.lab import lab as core
    from connfix.lab import paths

    core.leak("app1", 2, idle_in_transaction=True)
    app1 = paths.host_address(1)

    def stuck() -> dict[str, Any] | None:
        d = _diagnose(pooled)
        return d if {r["host"]: r for r in d["by_host"]}["app1"]["lent"] == 2 else None

    data = retry(stuck)
    assert {s["host"] for s in data["idle_in_transaction"]} == {"app1"}
    before = _psql_clients_by_addr()[app1]
    result = connfix_run(
        "terminate",
        pooled,
        tmp_path,
        "--state",
        "idle-in-transaction",
        "--older-than",
        "0s",
        "--yes",
    )
    assert result.exit_code == 0, result.output
    ended = [e for e in of(events(tmp_path), "operation") if e.get("pid")]
    assert [e.get("host") for e in ended] == ["app1 through PgBouncer lab"] * 2, ended
    retry(lambda: _psql_clients_by_addr().get(app1, 0) == before - 2)
    # the app's own traffic (each pooled connection used every second) lends a server
    # for the length of a request: polled until none is lent, as the stuck ones never end
    retry(lambda: {r["host"]: r for r in _diagnose(pooled)["by_host"]}["app1"]["lent"] == 0)


def test_pool_with_pgbouncer_live_counts_its_server_connections_as_its_own(
    pooled: Path, pgbouncer_version: str, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from connfix.cli import cli

    result = CliRunner().invoke(
        cli,
        ["pool", "lab", "-i", str(pooled), "--json", "--pgbouncer-config", str(tmp_path / "b")],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["result"]
    sizing, bouncer = data["sizing"], data["pgbouncer"]
    assert sizing["other_clients"] == 0 and sizing["pooler_connections"] > 0
    assert sizing["pooled_hosts"] == ["app1", "app2"] and sizing["direct_hosts"] == ["app3"]
    # 17 usable − buffer 2 − app3's pool with overflow (5) and its restart overlap (5)
    assert bouncer["max_db_connections"] == 5 and bouncer["safe"]
    assert bouncer["direct_hosts"] == ["app3"]
    assert bouncer["version"].startswith(f"{pgbouncer_version}.")
    settings = {s["key"]: s for s in bouncer["settings"]}
    assert settings["server_idle_timeout"]["value"] == "10"
    assert "still connecting directly" in settings["server_idle_timeout"]["reason"]
    # 1.24+ only: commented out for 1.18, written for the versions that have it
    newer = pgbouncer_version != "1.18"
    assert settings["max_user_client_connections"]["written"] is newer
    ini = (tmp_path / "b" / "pgbouncer.ini").read_text()
    assert ("\n; max_user_client_connections = " in ini) is not newer
    assert "\nmax_db_connections = 5\n" in ini


def _apply(settings: dict[str, str]) -> None:
    """Write settings into the lab PgBouncer's ini and RELOAD it, as an operator would."""
    path = lab_bouncer.directory() / "pgbouncer.ini"
    text = path.read_text()
    for key, value in settings.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        if not n:
            text += f"{key} = {value}\n"
    path.write_text(text)
    _admin("RELOAD")
    _admin("RECONNECT appdb")  # drop server connections opened under the old cap


def _direct_refusals(load_seconds: float, scratch: Path) -> tuple[int, int]:
    """pgbench through PgBouncer (12 clients, transaction pooling) while app3, still
    direct, opens the connections its pool may hold (3 + 2 overflow), as a restart or a
    burst does. Return (direct connections refused, peak client backends)."""
    from connfix.lab import lab as core
    from connfix.lab import paths
    from connfix.lab.postgres import passfile

    script = scratch / "sleep.sql"  # the test's own directory: the lab's is the lab's
    script.write_text("SELECT pg_sleep(0.1);\n")
    env = {**os.environ, "PGPASSFILE": str(passfile())}
    bench = subprocess.Popen(
        [
            PGBENCH,
            "-n",
            "-c",
            "12",  # with the apps' 6, within the 1.24+ per-role client cap connfix sets (20)
            "-j",
            "2",
            "-T",
            str(int(load_seconds)),
            "-f",
            str(script),
            f"host={paths.db_address()} port={paths.pgbouncer_port()} dbname=appdb user=app",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(core.bootstrap_dsn(), autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND usename <> 'postgres'"
                ).fetchone()
                peak[0] = max(peak[0], int(row[0]) if row else 0)
                time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    time.sleep(1.5)  # PgBouncer has opened what its cap lets it
    refused, held = 0, []
    try:
        for _ in range(5):  # app3's pool with its overflow
            try:
                held.append(psycopg.connect(core.dsn("app"), autocommit=True, connect_timeout=3))
            except psycopg.OperationalError as exc:
                assert "remaining connection slots" in str(exc) or "too many" in str(exc)
                refused += 1
        _, err = bench.communicate(timeout=60)
        assert bench.returncode == 0 or "remaining connection slots" in err, err[-500:]
    finally:
        for conn in held:
            conn.close()
        stop.set()
        sampler.join()
    return refused, peak[0]


def test_a_migration_is_sized_so_the_database_is_never_exhausted(
    pooled: Path, tmp_path: Path
) -> None:
    """The same load twice: PgBouncer capped as connfix used to size it (everything the
    database can spare, as if every host were behind it) exhausts the database and app3,
    still direct, is refused; capped as `connfix pool` sizes a migration now (room kept
    for the direct hosts' pools and their restart), nothing is refused."""
    from click.testing import CliRunner

    from connfix.cli import cli

    result = CliRunner().invoke(
        cli,
        ["pool", "lab", "-i", str(pooled), "--json", "--pgbouncer-config", str(tmp_path / "b")],
    )
    data = json.loads(result.stdout)["result"]
    new = {s["key"]: s["value"] for s in data["pgbouncer"]["settings"] if s["written"]}
    usable, buffer = 17, 2
    old_cap = usable - buffer  # the old sizing: no room for hosts still direct
    ini = lab_bouncer.directory() / "pgbouncer.ini"
    original = ini.read_text()
    try:
        _apply({"max_db_connections": str(old_cap), "default_pool_size": str(old_cap)})
        refused_old, peak_old = _direct_refusals(4, tmp_path)
        _apply(new)
        refused_new, peak_new = _direct_refusals(4, tmp_path)
        capped = _client_cap_refusal(int(new.get("max_user_client_connections", 0)))
    finally:
        ini.write_text(original)  # the lab's own configuration, for the next test
        _admin("RELOAD")
    assert refused_old > 0, (refused_old, peak_old)  # the database was exhausted
    assert refused_new == 0 and peak_new <= usable, (refused_new, peak_new)
    if "max_user_client_connections" in new:  # 1.24+: the generated per-role client cap
        assert capped and "max_user_client_connections" in capped, capped


def _client_cap_refusal(cap: int) -> str | None:
    """Open client connections as `app` through PgBouncer until it refuses one (at most
    cap + 1 beyond what the apps hold); return its refusal."""
    from connfix.lab import paths
    from connfix.lab.postgres import passfile

    if not cap:
        return None
    dsn = (
        f"host={paths.db_address()} port={paths.pgbouncer_port()} dbname=appdb user=app"
        f" passfile={passfile()}"
    )
    held: list[psycopg.Connection[Any]] = []
    try:
        for _ in range(cap + 1):
            held.append(psycopg.connect(dsn, autocommit=True, connect_timeout=5))
    except psycopg.OperationalError as exc:
        return str(exc)
    finally:
        for conn in held:
            conn.close()
    return None


def test_pause_resume_and_reconnect_as_runbook_steps(pooled: Path, tmp_path: Path) -> None:
    runbook = tmp_path / "maintenance.yaml"
    runbook.write_text(
        "version: 1\nname: pgbouncer-maintenance\nsummary: pause, resume, reconnect\n"
        "healthy: 'false'\n"
        "steps:\n"
        "  - {id: diagnose, action: diagnose}\n"
        "  - {id: pause, action: pgbouncer_pause, params: {timeout: 5s}}\n"
        "  - {id: resume, action: pgbouncer_resume}\n"
        "  - {id: reconnect, action: pgbouncer_reconnect}\n"
    )
    dry = tmp_path / "dry"
    result = connfix_run("triage", pooled, dry, "--runbook", str(runbook), "--dry-run")
    assert 'PAUSE "appdb"' in result.output and not of(events(dry), "operation")
    runs = tmp_path / "runs"
    result = connfix_run("triage", pooled, runs, "--runbook", str(runbook), "--yes")
    sent = [(e.get("command"), e.get("ok")) for e in of(events(runs), "operation")]
    assert sent == [('PAUSE "appdb"', True), ('RESUME "appdb"', True), ('RECONNECT "appdb"', True)]
    paused = {r["name"]: r["paused"] for r in _admin("SHOW DATABASES")}
    assert str(paused["appdb"]) == "0"


def test_a_pause_that_cannot_complete_is_undone(pooled: Path, tmp_path: Path) -> None:
    """A client holding a transaction keeps PAUSE from completing: connfix gives up after
    its timeout, resumes at once, and the pool is not left paused."""
    from connfix.lab import lab as core

    core.leak("app1", 1, idle_in_transaction=True)
    runbook = tmp_path / "pause.yaml"
    runbook.write_text(
        "version: 1\nname: pause\nsummary: pause\nhealthy: 'false'\nsteps:\n"
        "  - {id: diagnose, action: diagnose}\n"
        "  - {id: pause, action: pgbouncer_pause, params: {timeout: 2s}}\n"
    )
    result = connfix_run("triage", pooled, tmp_path, "--runbook", str(runbook), "--yes")
    assert result.exit_code != 0
    end = [e for e in of(events(tmp_path), "step_end") if "PAUSE did not complete" in str(e)]
    assert end and "resumed" in end[0]["summary"]
    retry(lambda: str({r["name"]: r["paused"] for r in _admin("SHOW DATABASES")}["appdb"]) == "0")
    assert _healthy(2)  # app2's clients get through again


def test_the_auth_query_setup_lets_roles_in_without_their_secrets(
    pooled: Path, pgbouncer_version: str, tmp_path: Path
) -> None:
    """Generate the auth_query setup, run its SQL, start a PgBouncer from the generated
    config (for the version in front of the lab, started by that version's binary)
    whose userlist holds only the lookup role's verifier: `app` logs in through it
    with its own password; a superuser is never looked up."""
    import secrets

    from click.testing import CliRunner

    from connfix.cli import cli
    from connfix.lab import lab as core
    from connfix.lab import paths
    from connfix.lab.postgres import passfile

    directory = core.lab_dir() / "pgbouncer-auth-test"  # PgBouncer runs as postgres
    shutil.rmtree(directory, ignore_errors=True)
    port = paths.pgbouncer_port() + 100
    result = CliRunner().invoke(
        cli,
        [
            "pool",
            "lab",
            "-i",
            str(pooled),
            "--pgbouncer-config",
            str(directory),
            "--listen-addr",
            paths.db_address(),
            "--listen-port",
            str(port),
        ],
    )
    assert result.exit_code == 0, result.output
    password = secrets.token_urlsafe(12)
    appdb = core.bootstrap_dsn().replace("dbname=postgres", "dbname=appdb")
    with psycopg.connect(appdb, autocommit=True) as conn:  # in the database it serves
        conn.execute((directory / "auth_query.sql").read_text())
        conn.execute(f"ALTER ROLE pgbouncer_auth PASSWORD '{password}'")
        verifiers = dict(
            conn.execute(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = 'connfix'"
            ).fetchall()
        )
    userlist = (directory / "userlist.txt").read_text()
    assert '"app"' not in userlist  # the app's secret is never copied
    userlist = userlist.replace(
        '"pgbouncer_auth" "<its password: PgBouncer logs in with it to run the lookup>"',
        f'"pgbouncer_auth" "{password}"',
    )
    for role, secret in verifiers.items():
        userlist = userlist.replace(
            f'"{role}" "SCRAM-SHA-256$<fill in from pg_authid>"', f'"{role}" "{secret}"'
        )
    (directory / "userlist.txt").write_text(userlist)
    pid = lab_bouncer.launch(directory, lab_bouncer.binary(pgbouncer_version))
    try:
        app_password = next(
            line.split(":")[4]
            for line in passfile().read_text().splitlines()
            if line.split(":")[3] == "app"
        )
        via = f"host={paths.db_address()} port={port} dbname=appdb user=app"
        with psycopg.connect(via, password=app_password, autocommit=True) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(
                f"host={paths.db_address()} port={port} dbname=appdb user=postgres",
                password="anything",
                connect_timeout=5,
            )
    finally:
        lab_bouncer.stop(pid)  # the PgBouncer this test started, by its pid
        with psycopg.connect(appdb, autocommit=True) as conn:
            conn.execute("DROP SCHEMA pgbouncer CASCADE")
            conn.execute("DROP ROLE pgbouncer_auth")
        shutil.rmtree(directory, ignore_errors=True)
