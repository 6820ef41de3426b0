"""Real applications and real clients on the lab: the app on SQLAlchemy's QueuePool,
pgbench, psql and a cron-like job run by the deploy user. "Resolved" means the app
works; the remedy fits who owns the connections; connfix accounts for its own session;
blocking chains are followed to their root."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connfix.lab import clients as lab_clients
from tests.helpers import (
    LAB_POOL_SIZE,
    Lab,
    assert_complete,
    connfix_run,
    events,
    of,
    retry,
)

OVERFLOW = 2  # the lab's max_overflow


def diagnose_json(lab: Lab, inventory: Path | None = None) -> dict[str, Any]:
    from click.testing import CliRunner

    from connfix.cli import cli

    result = CliRunner().invoke(
        cli, ["diagnose", "lab", "--json", "-i", str(inventory or lab.inventory)]
    )
    assert result.exit_code in (0, 1), result.output
    data: dict[str, Any] = json.loads(result.stdout)["result"]
    return data


def host_row(data: dict[str, Any], name: str) -> dict[str, Any]:
    row: dict[str, Any] = next(h for h in data["by_host"] if h["host"] == name)
    return row


def healthy(lab: Lab, index: int) -> bool:
    try:
        lab.core.app_request(index, "/health", timeout=3)
    except Exception:
        return False
    return True


def fast_suspects(lab: Lab, tmp_path: Path) -> Path:
    """The lab's inventory with suspect ages a test can wait for."""

    def change(env: dict[str, Any]) -> None:
        env["thresholds"].update(idle_in_transaction_suspect_age="1s", idle_suspect_age="2s")

    return lab.inventory_with(tmp_path, change)


# ---------------------------------------------------------------- healthy means the app works

TRIAGE_BOOK = """\
version: 1
name: short
summary: the default escalation, with ages a test can wait for
healthy: "severity == 'ok' and not suspects and not unhealthy_hosts"
steps:
  - {id: diagnose, action: diagnose}
  - id: terminate-idle-in-transaction
    action: terminate
    when: "idle_in_transaction_sessions > 0"
    params: {states: [idle_in_transaction], older_than: 1s, max: 50}
    on_failure: continue
  - id: verify-after-terminate
    action: verify
    when: "terminated > 0"
    params: {timeout: 4s, interval: 1s}
    on_failure: continue
  - id: restart
    action: rolling_restart
    when: "suspects or unhealthy_hosts"
    params: {only_suspects: true}
  - id: verify
    action: verify
    params: {timeout: 10s, interval: 1s}
"""


def test_a_pool_broken_by_termination_is_healthy_only_after_its_host_restarts(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """app2 checks out every connection its pool may open and leaves them idle in
    transaction: its requests fail. Terminating them frees the database, but SQLAlchemy
    still counts them as checked out: the app stays down. Not "resolved": the runbook
    goes on and restarts app2, and only then is it healthy."""
    clean_lab.core.leak("app2", LAB_POOL_SIZE + OVERFLOW, True, from_pool=True)
    retry(lambda: not healthy(clean_lab, 2))  # the pool is dry: 503
    time.sleep(1.2)
    book = tmp_path / "short.yaml"
    book.write_text(TRIAGE_BOOK)
    inventory = fast_suspects(clean_lab, tmp_path)
    others = {h: p for h, p in clean_lab.main_pids().items() if h != "app2"}
    result = connfix_run(
        "triage", inventory, tmp_path / "incidents", "--yes", "--runbook", str(book)
    )
    assert result.exit_code == 0, result.output
    evs = events(tmp_path / "incidents")
    ends = {e["step"]: e for e in of(evs, "step_end")}
    assert ends["terminate-idle-in-transaction"]["ok"]
    # after the terminations the database was fine, and app2 was not
    after_terminate = [
        e["diagnosis"] for e in of(evs, "diagnosis") if e.get("step") == "verify-after-terminate"
    ]
    assert after_terminate and after_terminate[-1]["severity"] == "ok"
    assert after_terminate[-1]["unhealthy_hosts"] == ["app2"]
    assert not ends["verify-after-terminate"]["ok"]
    (done,) = of(evs, "host_done")
    assert done["host"] == "app2"
    assert healthy(clean_lab, 2)
    assert {h: p for h, p in clean_lab.main_pids().items() if h != "app2"} == others
    final = of(evs, "diagnosis")[-1]["diagnosis"]
    assert final["unhealthy_hosts"] == [] and all(h["ok"] for h in final["host_health"].values())
    report = assert_complete(tmp_path / "incidents", "resolved")
    assert "| app2 | 10.231.7.12 | 3 |" in report and "| FAILING | ok |" in report


def test_verify_fails_while_a_host_fails_its_health_check(clean_lab: Lab, tmp_path: Path) -> None:
    """The database is fine; app1's health check is not: never "resolved"."""
    clean_lab.fault("app1", "unhealthy")
    book = tmp_path / "verify.yaml"
    book.write_text(
        "version: 1\nname: v\nsummary: v\nhealthy: \"severity == 'ok' and not unhealthy_hosts\"\n"
        "steps:\n  - {id: diagnose, action: diagnose}\n"
        "  - {id: verify, action: verify, params: {timeout: 2s, interval: 1s}}\n"
    )
    result = connfix_run(
        "triage", clean_lab.inventory, tmp_path / "incidents", "--yes", "--runbook", str(book)
    )
    assert result.exit_code == 1, result.output
    diagnoses = of(events(tmp_path / "incidents"), "diagnosis")
    first, last = diagnoses[0]["diagnosis"], diagnoses[-1]["diagnosis"]
    # the first diagnosis's checks ran ahead, on the early logins: a failure as it was
    assert first["unhealthy_hosts"] == ["app1"] and not first["host_health"]["app1"]["ok"]
    assert last["severity"] == "ok" and last["unhealthy_hosts"] == ["app1"]
    assert "health check failing on app1" in last["severity_reasons"]
    assert not last["host_health"]["app1"]["ok"] and last["host_health"]["app2"]["ok"]


# ---------------------------------------------------------------- the remedy fits the owner


@contextlib.contextmanager
def pgbench(lab: Lab, clients: int) -> Iterator[int]:
    """pgbench -c N from app1, as the deploy user: N active sessions no service owns."""
    lab_clients.start("app1", "pgbench", clients=clients, seconds=120)
    try:
        retry(
            lambda: (
                sum(1 for b in lab.client_backends() if b["application_name"] == "pgbench")
                == clients
            ),
            timeout=20,
        )
        yield clients
    finally:
        lab_clients.stop("app1")


def test_pgbench_connections_are_never_answered_with_a_service_restart(
    clean_lab: Lab, tmp_path: Path
) -> None:
    with pgbench(clean_lab, 6) as clients:
        _pgbench_is_not_restarted(clean_lab, tmp_path, clients)


def _pgbench_is_not_restarted(clean_lab: Lab, tmp_path: Path, pgbench: int) -> None:
    data = diagnose_json(clean_lab)
    app1 = host_row(data, "app1")
    assert app1["count"] == LAB_POOL_SIZE + pgbench
    assert (app1["owned"], app1["unowned"]) == (LAB_POOL_SIZE, pgbench)
    assert app1["unowned_clients"] == {"pgbench": pgbench}
    assert not app1["suspect"] and data["suspects"] == []
    assert data["unowned_connections"] == pgbench
    before = clean_lab.show(1)["InvocationID"]
    result = connfix_run(
        "restart", clean_lab.inventory, tmp_path / "incidents", "--only-suspects", "--yes"
    )
    assert result.exit_code == 0, result.output
    assert "no leak suspect and no failing health check to restart" in result.output
    assert f"{pgbench} connection(s) belong to no service (app1: pgbench {pgbench})" in (
        result.output
    )
    assert "restarting a service cannot free them" in result.output
    assert not of(events(tmp_path / "incidents"), "host_start")
    assert clean_lab.show(1)["InvocationID"] == before  # app1's service never restarted


def test_a_leak_and_pgbench_on_one_host_restart_only_for_the_leak(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """The database gate counts the service's sessions only: pgbench's on the same host
    neither hold it nor count as the new pool."""
    with pgbench(clean_lab, 3) as clients:
        _restart_for_the_leak_only(clean_lab, tmp_path, clients)


def _restart_for_the_leak_only(clean_lab: Lab, tmp_path: Path, pgbench: int) -> None:
    clean_lab.core.leak("app1", 3, idle_in_transaction=False)
    data = diagnose_json(clean_lab)
    app1 = host_row(data, "app1")
    assert app1["suspect"] and app1["owned"] == LAB_POOL_SIZE + 3
    result = connfix_run(
        "restart", clean_lab.inventory, tmp_path / "incidents", "--only-suspects", "--yes"
    )
    assert result.exit_code == 0, result.output
    (done,) = of(events(tmp_path / "incidents"), "host_done")
    assert done["host"] == "app1" and done["gates"]["database"] < 5
    still = [b for b in clean_lab.client_backends() if b["application_name"] == "pgbench"]
    assert len(still) == pgbench  # pgbench's sessions were left alone


def test_unowned_idle_sessions_are_terminated_and_the_services_are_not(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """An interactive psql left open on app3 and a cron-like job on app2: --owner unowned
    ends the idle psql, leaves the job's running statement and every labapp session."""
    lab_clients.start("app3", "psql")
    lab_clients.start("app2", "job", seconds=30)
    try:
        retry(
            lambda: (
                {b["application_name"] for b in clean_lab.client_backends()}
                >= {"psql", "nightly-report"}
            ),
            timeout=20,
        )
        labapp = {
            b["pid"] for b in clean_lab.client_backends() if b["application_name"] == "labapp"
        }
        time.sleep(1.2)
        result = connfix_run(
            "terminate",
            clean_lab.inventory,
            tmp_path / "incidents",
            "--state",
            "idle",
            "--older-than",
            "1s",
            "--owner",
            "unowned",
            "--yes",
        )
        assert result.exit_code == 0, result.output
        left = {b["application_name"]: b for b in clean_lab.client_backends()}
        assert "psql" not in left  # ended
        assert "nightly-report" in left  # active: left to its owner
        assert labapp <= {b["pid"] for b in clean_lab.client_backends()}
        data = diagnose_json(clean_lab)
        assert host_row(data, "app2")["unowned_clients"] == {"nightly-report": 1}
    finally:
        lab_clients.stop("app3")
        lab_clients.stop("app2")


def test_a_legitimate_overflow_burst_is_not_a_suspect(clean_lab: Lab, tmp_path: Path) -> None:
    inventory = fast_suspects(clean_lab, tmp_path)
    # one connection short of everything the pool may open: requests still get one
    burst = LAB_POOL_SIZE + OVERFLOW - 1
    pids = clean_lab.core.burst("app1", burst, 8)
    assert len(pids) == burst
    time.sleep(2.5)  # older than idle_suspect_age: age alone does not make a leak
    data = diagnose_json(clean_lab, inventory)
    app1 = host_row(data, "app1")
    # the burst, and maybe one more the pool opened meanwhile for an ordinary request:
    # beyond the pool size, within what it may open
    assert LAB_POOL_SIZE < app1["owned"] <= app1["max_capacity"] == 5
    assert not app1["suspect"] and data["suspects"] == []
    result = connfix_run("triage", inventory, tmp_path / "incidents", "--dry-run")
    assert result.exit_code in (0, 1), result.output
    started = {e["step"] for e in of(events(tmp_path / "incidents"), "step_start")}
    assert "restart-leaking-hosts" not in started  # healthy, or the step skipped
    # the same number left checked out and idle beyond the pool: that is a leak
    clean_lab.core.leak("app3", LAB_POOL_SIZE + OVERFLOW, False, from_pool=True)
    time.sleep(2.5)
    data = diagnose_json(clean_lab, inventory)
    app3 = host_row(data, "app3")
    assert app3["suspect"], app3
    assert "overflow that was never returned" in "; ".join(app3["reasons"])


# ---------------------------------------------------------------- connfix accounts for itself


def test_connfixs_own_session_is_counted_and_shown_apart(clean_lab: Lab) -> None:
    data = diagnose_json(clean_lab)
    own = host_row(data, "(connfix)")
    assert data["own_sessions"] == own["count"] == 1
    others = len(clean_lab.client_backends())  # connfix has exited by now
    assert data["client_backends"] == others + 1
    assert sum(h["count"] for h in data["by_host"]) == data["client_backends"]


FULL_BOOK = """\
version: 1
name: full
summary: restart the suspects of a full server
healthy: "not suspects and not unhealthy_hosts"
steps:
  - {id: diagnose, action: diagnose}
  - {id: restart, action: rolling_restart, when: "suspects", params: {only_suspects: true}}
  - {id: verify, action: verify, params: {timeout: 10s, interval: 1s}}
"""


@contextlib.contextmanager
def filled(lab: Lab) -> Iterator[list[psycopg.Connection[Any]]]:
    """Take every ordinary slot left, for real, with `app` sessions from the machine."""
    fillers: list[psycopg.Connection[Any]] = []
    try:
        # Until refused three times in a row, a moment apart: a backend a previous test
        # ended may still hold a slot (PostgreSQL frees it when the process has exited),
        # and a slot it frees later would let connfix in the ordinary way (seen once in
        # CI with two refusals 0.3 s apart).
        refused, deadline = 0, time.monotonic() + 10
        while refused < 3 and time.monotonic() < deadline:
            try:
                fillers.append(psycopg.connect(lab.app_dsn(), autocommit=True))
                refused = 0
            except psycopg.OperationalError as exc:
                assert "remaining connection slots are reserved" in str(exc)
                refused += 1
                time.sleep(0.3)
        assert refused == 3, "the server never stayed full"
        yield fillers
    finally:
        for conn in fillers:
            conn.close()


def test_a_server_exactly_full_is_triaged_back_to_every_pool_full(
    clean_lab: Lab, tmp_path: Path
) -> None:
    """app2 holds exactly its pool, one session stuck in a transaction (a suspect); every
    other slot is taken. Restarting app2 frees 3 and its new pool needs 3: connfix, in
    through the privileged way, gives its slot back meanwhile, and app2 comes back whole."""
    inventory = fast_suspects(clean_lab, tmp_path)
    clean_lab.core.leak("app2", 1, True, from_pool=True)  # a pooled session stuck in a tx
    time.sleep(1.2)
    book = tmp_path / "full.yaml"
    book.write_text(FULL_BOOK)
    with filled(clean_lab):
        result = connfix_run(
            "triage", inventory, tmp_path / "incidents", "--yes", "--runbook", str(book)
        )
        assert result.exit_code == 0, result.output
        evs = events(tmp_path / "incidents")
        first = of(evs, "diagnosis")[0]["diagnosis"]
        assert first["via"] == clean_lab.way_in and first["suspects"] == ["app2"]
        (given,) = of(evs, "slot_given_back")
        assert given["via"] == clean_lab.way_in
        (back,) = of(evs, "session_reopened")
        assert back["via"] == clean_lab.way_in  # still full: the privileged way again
        assert of(evs, "lock_acquired")[-1]["seq"] > back["seq"]  # the lock taken again
        (done,) = of(evs, "host_done")
        assert done["host"] == "app2"
        pools = Counter(
            b["client_addr"]
            for b in clean_lab.client_backends()
            if b["application_name"] == "labapp"
        )
        assert pools == {f"10.231.7.{10 + i}": LAB_POOL_SIZE for i in (1, 2, 3)}
        assert healthy(clean_lab, 2)
    assert_complete(tmp_path / "incidents", "resolved")


def test_without_giving_the_slot_back_the_restarted_pool_is_one_short(
    clean_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the same restart with connfix keeping its privileged session fails:
    the new pool cannot get its last connection."""
    from connfix.engine.context import RunContext

    monkeypatch.setattr(RunContext, "slot_given_back", lambda self, why: contextlib.nullcontext())
    with filled(clean_lab):
        result = connfix_run(
            "restart", clean_lab.inventory, tmp_path / "incidents", "--hosts", "app2", "--yes"
        )
        assert result.exit_code == 1, result.output
        (failed,) = of(events(tmp_path / "incidents"), "host_failed")
        assert failed["host"] == "app2" and failed["gate"] in ("restart", "active", "health")


# ---------------------------------------------------------------- blocking chains


@pytest.fixture
def table(clean_lab: Lab) -> Iterator[str]:
    with psycopg.connect(clean_lab.app_dsn(), autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS chains (id int PRIMARY KEY, v int)")
        setup.execute("INSERT INTO chains VALUES (1, 0) ON CONFLICT DO NOTHING")
    yield "chains"


def _waiters(lab: Lab, statements: list[str]) -> tuple[list[psycopg.Connection[Any]], list[int]]:
    conns: list[psycopg.Connection[Any]] = []
    try:
        for _ in statements:
            conns.append(psycopg.connect(lab.app_dsn(), autocommit=True))
    except psycopg.Error:
        for conn in conns:
            conn.close()
        raise
    pids = [c.info.backend_pid for c in conns]
    for conn, sql in zip(conns, statements, strict=True):
        thread = threading.Thread(target=_run_quietly, args=(conn, sql), daemon=True)
        thread.start()
        THREADS.append(thread)
        time.sleep(0.05)  # queued in this order
    return conns, pids


THREADS: list[threading.Thread] = []


def _release(holder: psycopg.Connection[Any], conns: list[psycopg.Connection[Any]]) -> None:
    """End the blocker, let every waiter finish its statement, then close them."""
    holder.close()
    for thread in THREADS:
        thread.join(timeout=10)
    THREADS.clear()
    for conn in conns:
        conn.close()


def _run_quietly(conn: psycopg.Connection[Any], sql: str) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute(sql)


def test_five_sessions_queued_on_one_row_lock_are_all_under_their_root(
    clean_lab: Lab, table: str, tmp_path: Path
) -> None:
    holder = psycopg.connect(clean_lab.app_dsn())
    holder.execute(f"UPDATE {table} SET v = v + 1 WHERE id = 1")  # idle in transaction
    conns, pids = _waiters(clean_lab, [f"UPDATE {table} SET v = 2 WHERE id = 1"] * 5)
    try:
        retry(lambda: _waiting(clean_lab) >= 5)
        data = diagnose_json(clean_lab)
        (chain,) = data["blocking_chains"]
        assert chain["root"] == holder.info.backend_pid
        assert chain["waiting"] == sorted(pids)
        assert len(chain["direct"]) >= 1  # pg_blocking_pids alone shows fewer
        (iit,) = [s for s in data["idle_in_transaction"] if s["pid"] == chain["root"]]
        assert iit["blocking"] == sorted(pids)
        # terminate ends the root first
        time.sleep(1.1)
        result = connfix_run(
            "terminate",
            clean_lab.inventory,
            tmp_path / "incidents",
            "--state",
            "idle-in-transaction",
            "--older-than",
            "1s",
            "--dry-run",
        )
        assert result.exit_code == 0, result.output
        plan = of(events(tmp_path / "incidents"), "plan")[-1]
        assert plan["operations"][0]["details"]["pid"] == holder.info.backend_pid
        assert "root blocker of 5 waiting session(s)" in plan["operations"][0]["description"]
        assert "root blockers first" in plan["summary"]
    finally:
        _release(holder, conns)


def test_a_lock_queue_behind_an_alter_table_is_under_the_holder(clean_lab: Lab, table: str) -> None:
    holder = psycopg.connect(clean_lab.app_dsn())
    holder.execute(f"SELECT * FROM {table}")  # AccessShareLock, idle in transaction
    conns, pids = _waiters(
        clean_lab,
        [f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS w int"] + [f"SELECT * FROM {table}"] * 3,
    )
    try:
        retry(lambda: _waiting(clean_lab) >= 4)
        data = diagnose_json(clean_lab)
        (chain,) = data["blocking_chains"]
        assert chain["root"] == holder.info.backend_pid
        assert chain["waiting"] == sorted(pids)
    finally:
        _release(holder, conns)
        with psycopg.connect(clean_lab.app_dsn(), autocommit=True) as c:
            c.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS w")


def _waiting(lab: Lab) -> int:
    with lab.superuser() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


# ---------------------------------------------------------------- several services per host

WORKER_UNIT = """\
[Unit]
Description=a second pooled service on the same host
[Service]
Type=notify
User=labapp
ExecStart={python} -m connfix.lab.app /etc/labworker/app.json
"""


@pytest.fixture
def worker(clean_lab: Lab) -> Iterator[int]:
    """A second real service on app1, `labworker.service`: the lab app again with its own
    application_name (labworker), pool (2, no overflow) and port (8081)."""
    import sys

    from connfix.lab import hosts

    init = clean_lab.core.init_pid("app1")
    config = json.loads(hosts.file_in(init, "/etc/labapp/app.json").read_text())
    config.update(application_name="labworker", pool_size=2, max_overflow=0, http_port=8081)
    hosts.file_in(init, "/etc/labworker").mkdir(exist_ok=True)
    clean_lab.write_file(1, "/etc/labworker/app.json", json.dumps(config))
    clean_lab.write_file(
        1, "/etc/systemd/system/labworker.service", WORKER_UNIT.format(python=sys.executable)
    )
    clean_lab.write_file(
        1,
        "/etc/sudoers.d/connfix-worker",
        "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl restart labworker.service\n",
        0o440,
    )
    clean_lab.systemctl(1, "daemon-reload")
    clean_lab.systemctl(1, "start", "labworker.service")
    try:
        yield 8081
    finally:
        clean_lab.systemctl(1, "stop", "labworker.service", check=False)
        for path in (
            "/etc/systemd/system/labworker.service",
            "/etc/sudoers.d/connfix-worker",
            "/etc/labworker/app.json",
        ):
            clean_lab.remove_file(1, path)
        clean_lab.systemctl(1, "daemon-reload")


def two_services(lab: Lab, tmp_path: Path) -> Path:
    def change(env: dict[str, Any]) -> None:
        web = {**env.pop("service"), "name": "web"}
        env["services"] = [
            web,
            {
                "name": "worker",
                "unit": "labworker.service",
                "pool_size": 2,
                "application_name": "labworker",
                "user": "app",
                "health_check": "curl -fsS --max-time 2 http://127.0.0.1:8081/health",
            },
        ]
        env["hosts"][0]["services"] = ["web", "worker"]
        for host in env["hosts"][1:]:
            host["services"] = ["web"]

    return lab.inventory_with(tmp_path, change)


def test_two_services_on_a_host_only_the_leaking_one_is_restarted(
    clean_lab: Lab, worker: int, tmp_path: Path
) -> None:
    import urllib.request

    inventory = two_services(clean_lab, tmp_path)
    request = urllib.request.Request(
        f"http://10.231.7.11:{worker}/leak?count=3&mode=idle", method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        leaked = json.loads(response.read())["leaked"]
    data = diagnose_json(clean_lab, inventory)
    app1 = host_row(data, "app1")
    services = {s["service"]: s for s in app1["services"]}
    assert services["worker"]["count"] == 2 + 3 and services["worker"]["suspect"]
    assert services["web"]["count"] == LAB_POOL_SIZE and not services["web"]["suspect"]
    assert app1["reasons"] == ["worker: holds 5 connections, pool size 2 (+3)"]
    assert app1["pool_size"] == LAB_POOL_SIZE + 2 and app1["unowned"] == 0
    web_before = clean_lab.show(1)["InvocationID"]
    worker_before = clean_lab.show(1, "labworker.service")["InvocationID"]
    result = connfix_run("restart", inventory, tmp_path / "incidents", "--only-suspects", "--yes")
    assert result.exit_code == 0, result.output
    (done,) = of(events(tmp_path / "incidents"), "host_done")
    assert done["host"] == "app1"
    assert [u["unit"] for u in done["units"]] == ["labworker.service"]
    assert clean_lab.show(1, "labworker.service")["InvocationID"] != worker_before
    assert clean_lab.show(1)["InvocationID"] == web_before  # the web service untouched
    alive = {b["pid"] for b in clean_lab.client_backends()}
    assert not set(leaked) & alive
    owned = [b for b in clean_lab.client_backends() if b["application_name"] == "labworker"]
    assert len(owned) == 2


def test_a_host_naming_a_service_the_environment_lacks_is_refused(
    clean_lab: Lab, tmp_path: Path
) -> None:
    def change(env: dict[str, Any]) -> None:
        env["hosts"][0]["services"] = ["nosuch"]

    inventory = clean_lab.inventory_with(tmp_path, change)
    result = connfix_run("restart", inventory, tmp_path / "incidents", "--dry-run")
    assert result.exit_code == 2
    assert "hosts[0].services[0]: no service 'nosuch' in this environment" in result.output
