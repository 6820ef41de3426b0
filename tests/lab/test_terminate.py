"""Termination on the lab: every exclusion with a real session of that kind, the re-check,
the caps, dry-run, and a permission failure that does not stop the rest."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connfix.config.inventory_file import load_inventory
from connfix.engine.loop import run_runbook
from connfix.engine.run import RunMode, RunRequest
from connfix.engine.runbook import command_runbook
from connfix.record.journal import read_journal
from tests.helpers import HookUI, Lab, connfix_run, events, of, retry


class Sessions:
    """Real sessions opened by a test, closed at the end."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.conns: list[psycopg.Connection[Any]] = []
        self.threads: list[threading.Thread] = []

    def open(self, app: str = "victim", dsn: str | None = None) -> psycopg.Connection[Any]:
        conn = psycopg.connect(dsn or self.lab.app_dsn(), autocommit=True, application_name=app)
        conn.execute("SELECT 1")
        self.conns.append(conn)
        return conn

    def sleeping(self, seconds: float = 30) -> psycopg.Connection[Any]:
        conn = self.open("sleeper")
        thread = threading.Thread(target=_sleep, args=(conn, seconds), daemon=True)
        thread.start()
        self.threads.append(thread)
        pid = conn.info.backend_pid
        retry(
            lambda: any(
                b["pid"] == pid and b["state"] == "active" for b in self.lab.client_backends()
            )
        )
        return conn

    def alive(self) -> set[int]:
        return {b["pid"] for b in self.lab.client_backends()}

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(psycopg.Error):
                conn.cancel()
            conn.close()
        for thread in self.threads:
            thread.join(10)


def _sleep(conn: psycopg.Connection[Any], seconds: float) -> None:
    # terminated or cancelled: that is what some tests do to it
    with contextlib.suppress(psycopg.Error):
        conn.execute("SELECT pg_sleep(%s)", (seconds,))


@pytest.fixture
def sessions(clean_lab: Lab) -> Iterator[Sessions]:
    made = Sessions(clean_lab)
    yield made
    made.close()


@pytest.fixture
def inventory(clean_lab: Lab, tmp_path: Path) -> Path:
    """The lab inventory, with the apps' pools and pg_dump protected."""

    def change(env: dict[str, Any]) -> None:
        env["protected"] = {"users": ["backup"], "applications": ["labapp", "pg_dump"]}

    return clean_lab.inventory_with(tmp_path, change)


def terminate(inventory: Path, tmp_path: Path, *args: str) -> Any:
    return connfix_run("terminate", inventory, tmp_path / "incidents", "--yes", *args)


def operations(tmp_path: Path) -> dict[int, dict[str, Any]]:
    (journal,) = (tmp_path / "incidents").glob("*/journal.jsonl")
    return {e["pid"]: e for e in read_journal(journal) if e["event"] == "operation"}


@pytest.fixture
def roles(lab: Lab) -> Iterator[None]:
    with lab.superuser() as conn:
        for role in ("backup", "repl", "batch", "signaller"):
            conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute("CREATE ROLE backup LOGIN")
        conn.execute("CREATE ROLE repl LOGIN REPLICATION")
        conn.execute("CREATE ROLE batch LOGIN")
        conn.execute("CREATE ROLE signaller LOGIN")
        conn.execute("GRANT pg_signal_backend, pg_read_all_stats TO signaller")
    yield
    with lab.superuser() as conn:
        for role in ("backup", "repl", "batch", "signaller"):
            conn.execute(f"DROP ROLE IF EXISTS {role}")


def socket_dsn(lab: Lab, user: str) -> str:
    run = lab.paths.lab_dir() / "pg" / "run"
    return f"host={run} port={lab.paths.pg_port()} dbname=appdb user={user}"


def test_every_exclusion_with_a_real_session(
    clean_lab: Lab, sessions: Sessions, inventory: Path, tmp_path: Path, roles: None
) -> None:
    # the lab has 17 ordinary slots: 9 pools + 2 victims + 5 kept + connfix's own
    victims = [sessions.open().info.backend_pid for _ in range(2)]
    kept = {
        "superuser": sessions.open("psql", clean_lab.core.bootstrap_dsn()),
        "protected application": sessions.open("pg_dump"),
        "protected user": sessions.open("backup-job", socket_dsn(clean_lab, "backup")),
        "replication role": sessions.open("standby-tool", socket_dsn(clean_lab, "repl")),
        "another connfix": sessions.open("connfix"),
        "active": sessions.sleeping(),
    }
    pools = {b["pid"] for b in clean_lab.client_backends() if b["application_name"] == "labapp"}
    result = terminate(
        inventory, tmp_path, "--state", "idle", "--older-than", "0s", "--max-fraction", "1"
    )
    assert result.exit_code == 0, result.output
    for reason in (
        "1 superuser",
        "10 protected application",
        "1 protected user",
        "1 replication role",
        "1 connfix",
        "1 active",
    ):
        assert reason in result.output, reason
    ops = operations(tmp_path)
    assert set(ops) == set(victims)
    assert all(op["result"] == "terminated" for op in ops.values())
    victim = ops[victims[0]]
    assert (victim["usename"], victim["application_name"], victim["state"]) == (
        "app",
        "victim",
        "idle",
    )
    assert victim["client_addr"] == clean_lab.paths.db_address()
    assert victim["idle_seconds"] >= 0
    alive = sessions.alive()
    assert not set(victims) & alive
    for name, conn in kept.items():
        assert conn.info.backend_pid in alive, name
    assert pools <= alive
    assert "2 slot(s) freed" in result.output


def test_active_sessions_only_with_include_active(
    clean_lab: Lab, sessions: Sessions, inventory: Path, tmp_path: Path
) -> None:
    refused = terminate(inventory, tmp_path, "--state", "active", "--older-than", "0s")
    assert refused.exit_code == 2
    assert "needs include_active: true (--include-active)" in refused.output
    sleeper = sessions.sleeping().info.backend_pid
    result = terminate(
        inventory, tmp_path, "--state", "active", "--include-active", "--older-than", "0s"
    )
    assert result.exit_code == 0, result.output
    assert operations(tmp_path)[sleeper]["result"] == "terminated"
    retry(lambda: sleeper not in sessions.alive())


def run_with_hook(inventory: Path, tmp_path: Path, hook: Callable[[], None], **params: Any) -> Any:
    env = load_inventory(inventory).environment("lab")
    book = command_runbook("terminate", "terminate", {"older_than": "0s", **params})
    request = RunRequest(
        "lab", env, book, tmp_path / "incidents", inventory, RunMode.COMMAND, interactive=True
    )
    return run_runbook(request, HookUI(hook))


@pytest.mark.parametrize("count", [4, 7], ids=["one at a time", "set-based batch"])
def test_a_session_that_changed_after_planning_is_skipped(
    sessions: Sessions, inventory: Path, tmp_path: Path, count: int
) -> None:
    """Up to WAIT_EACH_MAX sessions are taken one statement each (waiting on each exit);
    more go in set-based batches: the same re-checks, the same reasons."""
    conns = [sessions.open() for _ in range(count)]
    woke, busy, closed = conns[0], conns[1], conns[2]
    closed_pid = closed.info.backend_pid

    def between_plan_and_apply() -> None:
        closed.close()  # gone before it is signalled
        retry(lambda: closed_pid not in sessions.alive())
        woke.execute("SELECT 1")  # still idle, but state_change moved
        thread = threading.Thread(target=_sleep, args=(busy, 3), daemon=True)
        thread.start()
        sessions.threads.append(thread)
        pid = busy.info.backend_pid
        retry(
            lambda: any(
                b["pid"] == pid and b["state"] == "active" for b in sessions.lab.client_backends()
            )
        )

    result = run_with_hook(
        inventory, tmp_path, between_plan_and_apply, states=["idle"], max_fraction=1
    )
    ops = operations(tmp_path)
    assert ops[woke.info.backend_pid]["result"] == "skipped"
    assert "state_change moved" in ops[woke.info.backend_pid]["reason"]
    assert ops[busy.info.backend_pid]["result"] == "skipped"
    assert "state changed to 'active'" in ops[busy.info.backend_pid]["reason"]
    assert ops[closed_pid]["result"] == "skipped"
    assert ops[closed_pid]["reason"] == "gone before it was signalled"
    rest = [c.info.backend_pid for c in conns[3:]]
    assert [ops[pid]["result"] for pid in rest] == ["terminated"] * (count - 3)
    method = "pg_terminate_backend(pid, timeout)" if count <= 5 else "signal, then"
    assert all(ops[pid]["confirmed_by"].startswith(method) for pid in rest)
    alive = sessions.alive()
    assert woke.info.backend_pid in alive and busy.info.backend_pid in alive
    assert result.exit_status == 0


def test_a_batch_the_database_refuses_is_taken_one_pid_at_a_time(
    sessions: Sessions, inventory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault the lab cannot produce for real (a permission error inside a batch; the
    plan leaves superusers out): the set-based statement fails as a whole, nothing of
    it was signalled, and its pids are taken one at a time so only a bad one fails. The
    real batch path: test_a_session_that_changed_after_planning_is_skipped[set-based]."""
    import psycopg

    from connfix.db import pg

    pids = [sessions.open().info.backend_pid for _ in range(8)]
    real = pg.Session.all
    refused: list[str] = []

    def refuse_batches(self: Any, name: str, *args: Any) -> Any:
        if name == "terminate_batch":
            refused.append(name)
            raise psycopg.errors.InsufficientPrivilege("permission denied to terminate process")
        return real(self, name, *args)

    monkeypatch.setattr(pg.Session, "all", refuse_batches)
    result = terminate(
        inventory, tmp_path, "--state", "idle", "--older-than", "0s", "--max-fraction", "1"
    )
    assert result.exit_code == 0, result.output
    assert refused == ["terminate_batch"]
    ops = operations(tmp_path)
    assert all(ops[pid]["result"] == "terminated" for pid in pids)
    assert not set(pids) & sessions.alive()


def test_caps_take_the_oldest_first(sessions: Sessions, inventory: Path, tmp_path: Path) -> None:
    pids = []
    for _ in range(6):
        pids.append(sessions.open().info.backend_pid)
        time.sleep(0.05)  # distinct idle ages: the first opened is the oldest
    result = terminate(inventory, tmp_path, "--state", "idle", "--older-than", "0s", "--max", "2")
    assert result.exit_code == 0
    assert "4 over the cap (2: --max)" in result.output
    assert sorted(operations(tmp_path)) == sorted(pids[:2])
    alive = sessions.alive()
    assert not set(pids[:2]) & alive and set(pids[2:]) <= alive


def test_fraction_cap(clean_lab: Lab, sessions: Sessions, inventory: Path, tmp_path: Path) -> None:
    for _ in range(5):
        sessions.open()
    total = len(clean_lab.client_backends())  # 9 pool + 5 victims = 14
    result = terminate(
        inventory, tmp_path, "--state", "idle", "--older-than", "0s", "--max-fraction", "0.2"
    )
    assert result.exit_code == 0
    expected = int(0.2 * total)  # 2
    assert len(operations(tmp_path)) == expected
    assert f"over the cap ({expected}: --max-fraction of client backends)" in result.output


def test_until_free_terminates_only_what_is_needed(
    clean_lab: Lab, sessions: Sessions, inventory: Path, tmp_path: Path
) -> None:
    for _ in range(5):
        sessions.open()
    # 17 usable − 14 − connfix's own session (it takes a slot too) = 2
    free = 17 - len(clean_lab.client_backends()) - 1
    result = terminate(
        inventory,
        tmp_path,
        "--state",
        "idle",
        "--older-than",
        "0s",
        "--max-fraction",
        "1",
        "--until-free",
        str(free + 2),
    )
    assert result.exit_code == 0
    assert len(operations(tmp_path)) == 2


def test_dry_run_changes_nothing(
    clean_lab: Lab, sessions: Sessions, inventory: Path, tmp_path: Path
) -> None:
    pids = {sessions.open().info.backend_pid for _ in range(3)}
    before = sessions.alive()
    result = terminate(inventory, tmp_path, "--state", "idle", "--older-than", "0s", "--dry-run")
    assert result.exit_code == 0
    for pid in pids:
        assert f"terminate pid {pid}: app / victim" in result.output
        assert f"SELECT pg_terminate_backend({pid}) FROM pg_stat_activity WHERE pid = {pid}" in (
            result.output
        )
    assert operations(tmp_path) == {}
    time.sleep(0.2)
    assert sessions.alive() == before


def test_a_refused_pid_is_an_explained_skip_and_the_rest_go_on(
    clean_lab: Lab, sessions: Sessions, inventory: Path, tmp_path: Path, roles: None
) -> None:
    victims = [sessions.open().info.backend_pid for _ in range(3)]
    batch = sessions.open("nightly", socket_dsn(clean_lab, "batch")).info.backend_pid
    signaller = tmp_path / "signaller.yaml"
    signaller.write_text(
        inventory.read_text().replace(
            clean_lab.core.dsn("connfix"), socket_dsn(clean_lab, "signaller")
        )
    )

    def promote() -> None:  # the role becomes a superuser after it was planned
        with clean_lab.superuser() as conn:
            conn.execute("ALTER ROLE batch SUPERUSER")

    try:
        result = run_with_hook(signaller, tmp_path, promote, states=["idle"], max_fraction=1)
    finally:
        with clean_lab.superuser() as conn:
            conn.execute("ALTER ROLE batch NOSUPERUSER")
    ops = operations(tmp_path)
    assert ops[batch]["result"] == "skipped"
    # the server's words: "permission denied to terminate process" (16+), "must be a
    # superuser to terminate superuser process" (15)
    assert ops[batch]["reason"].startswith("refused by the server: ")
    assert "superuser" in ops[batch]["reason"].lower()
    assert [ops[pid]["result"] for pid in victims] == ["terminated"] * 3
    assert batch in sessions.alive()
    assert result.exit_status == 0 and result.status != "halted", result.status


def test_small_plans_wait_on_each_pid_large_ones_poll_together(
    sessions: Sessions, inventory: Path, tmp_path: Path
) -> None:
    """pg_terminate_backend(pid, timeout) (14+) for a few pids; for more, its 100 ms wait
    steps would add up, so the exits are confirmed together in pg_stat_activity."""
    few = {sessions.open().info.backend_pid for _ in range(2)}
    small = terminate(inventory, tmp_path / "small", "--state", "idle", "--older-than", "0s")
    assert small.exit_code == 0
    ops = operations(tmp_path / "small")
    assert set(ops) == few
    assert {op["confirmed_by"] for op in ops.values()} == {"pg_terminate_backend(pid, timeout)"}
    many = {sessions.open().info.backend_pid for _ in range(7)}  # 9 pools + 7 + connfix = 17
    large = terminate(
        inventory,
        tmp_path / "large",
        "--state",
        "idle",
        "--older-than",
        "0s",
        "--max-fraction",
        "1",
    )
    assert large.exit_code == 0, large.output
    ops = operations(tmp_path / "large")
    assert set(ops) == many and all(op["result"] == "terminated" for op in ops.values())
    assert {op["confirmed_by"] for op in ops.values()} == {"signal, then pg_stat_activity poll"}
    assert not (few | many) & sessions.alive()


def _pools(lab: Lab) -> dict[int, set[int]]:
    """Each host's pool, as its app knows it (backend pids)."""
    return {i: set(lab.core.app_request(i, "/status")["pool"]) for i in (1, 2, 3)}


@pytest.mark.parametrize("quiet", [False, True], ids=["busy-app", "quiet-app"])
def test_only_suspects_excess_only_ends_the_leak_not_the_pool(
    clean_lab: Lab, tmp_path: Path, quiet: bool
) -> None:
    """A leaking app, busy (its pool used every second while the leaked sessions grow
    old) or quiet (its pool idle since it started: the pool's sessions are the OLDEST
    idle ones, which "oldest first" would end, sparing the leak). --only-suspects
    --excess-only, newest connected first, ends exactly the leak: the pool, and the
    hosts that do not leak, are left alone, and the app's next request works."""
    try:
        if quiet:
            clean_lab.core.traffic("app2", 0)
            time.sleep(1.1)
        leaked = set(clean_lab.core.leak("app2", 3, idle_in_transaction=False))
        pools = _pools(clean_lab)
        if not quiet:
            time.sleep(3.5)  # the leak is older than 3s; the pools were used within 1s
        result = terminate(
            clean_lab.inventory,
            tmp_path,
            "--state",
            "idle",
            "--older-than",
            "0s" if quiet else "3s",
            "--only-suspects",
            "--excess-only",
        )
        assert result.exit_code == 0, result.output
        ops = operations(tmp_path)
        assert set(ops) == leaked and all(op["result"] == "terminated" for op in ops.values())
        assert "newest connected first" in result.output
        assert _pools(clean_lab) == pools
        assert clean_lab.core.app_request(2, "/health")["ok"] is True
    finally:
        clean_lab.core.traffic("app2", 1)


def test_host_restricts_termination_to_that_host(clean_lab: Lab, tmp_path: Path) -> None:
    """--host app3: app3's leaked sessions end; app2's, just as old, stay."""
    on_app2 = set(clean_lab.core.leak("app2", 2, idle_in_transaction=False))
    on_app3 = set(clean_lab.core.leak("app3", 2, idle_in_transaction=False))
    time.sleep(2.5)  # the leaks are older than 2s; the pools were used within the last second
    result = terminate(
        clean_lab.inventory,
        tmp_path,
        "--state",
        "idle",
        "--older-than",
        "2s",
        "--host",
        "app3",
    )
    assert result.exit_code == 0, result.output
    assert set(operations(tmp_path)) == on_app3
    alive = {b["pid"] for b in clean_lab.client_backends()}
    assert on_app2 <= alive and not on_app3 & alive


def test_a_backend_that_does_not_exit_is_reported_failed(
    sessions: Sessions, inventory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signalled backend still in pg_stat_activity after exit_timeout is `failed`, the
    others `terminated`, and the step fails. PostgreSQL backends exit on SIGTERM, so the
    one that does not is injected: pg.alive keeps reporting it."""
    from connfix.db import pg

    conns = [sessions.open() for _ in range(7)]  # more than 5: signal, then poll
    stuck = conns[0].info.backend_pid
    real = pg.alive

    def still_there(session: Any, pids: list[int]) -> set[int]:
        return real(session, pids) | ({stuck} & set(pids))

    monkeypatch.setattr(pg, "alive", still_there)
    result = run_with_hook(
        inventory, tmp_path, lambda: None, states=["idle"], max_fraction=1, exit_timeout="500ms"
    )
    ops = operations(tmp_path)
    assert ops[stuck]["result"] == "failed"
    assert ops[stuck]["reason"] == "signalled, still present after 500ms"
    assert [ops[c.info.backend_pid]["result"] for c in conns[1:]] == ["terminated"] * 6
    assert result.exit_status == 1


def test_cancel_ends_a_long_statement_and_keeps_the_session(clean_lab: Lab, tmp_path: Path) -> None:
    """A session stuck on a long query: --cancel (pg_cancel_backend) ends the statement,
    re-checked like terminate; the session itself stays, as its pool would want."""
    import threading

    import psycopg

    outcome: list[str] = []
    conn = psycopg.connect(clean_lab.app_dsn(), autocommit=True, application_name="longjob")
    pid = conn.info.backend_pid

    def long_query() -> None:
        try:
            conn.execute("SELECT pg_sleep(60)")
            outcome.append("finished")
        except psycopg.errors.QueryCanceled:
            outcome.append("cancelled")

    worker = threading.Thread(target=long_query)
    worker.start()
    try:
        retry(lambda: any(b["pid"] == pid and b["state"] == "active"
                          for b in clean_lab.client_backends()))  # fmt: skip
        time.sleep(1.2)
        dry = connfix_run(
            "terminate", clean_lab.inventory, tmp_path / "dry", "--cancel", "--older-than", "1s",
            "--dry-run",
        )  # fmt: skip
        assert dry.exit_code == 0, dry.output
        assert f"SELECT pg_cancel_backend({pid})" in dry.output
        result = connfix_run(
            "terminate", clean_lab.inventory, tmp_path / "real", "--cancel", "--older-than",
            "1s", "--yes",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        worker.join(timeout=10)
        assert outcome == ["cancelled"]
        ops = [e for e in of(events(tmp_path / "real"), "operation") if e.get("pid") == pid]
        assert ops and ops[0]["result"] == "cancelled"
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)  # still there
    finally:
        conn.close()
        worker.join(timeout=70)
