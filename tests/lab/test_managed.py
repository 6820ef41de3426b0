"""A managed service's role model on the lab's real PostgreSQL 18 (`connfix lab platform`):
connfix has no superuser anywhere (its role holds pg_read_all_stats and
pg_signal_backend only), the platform's own superuser holds sessions, and the way in for
a full server is the platform's master user, or none. What is emulated and what is not:
connfix.lab.managed and docs/reliability.md."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import Lab, invoke, retry

pytestmark = pytest.mark.parametrize("lab", [18], indirect=True, ids=["pg18"])


def agent_pids(lab: Lab, role: str) -> set[int]:
    """The platform agent's backends, read by psql's own server (the superuser)."""
    with lab.superuser() as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s", (role,)
        ).fetchall()
    return {pid for (pid,) in rows}


def emulated(lab: Lab, platform: str) -> Iterator[Path]:
    """The lab as `platform` shows it, its agent's sessions open; stopped afterwards."""
    from connfix.config.platforms import PLATFORMS
    from connfix.lab import managed

    path = managed.emulate(platform)
    agent = PLATFORMS[platform].roles[0]
    retry(lambda: len(agent_pids(lab, agent)) == managed.AGENT_SESSIONS)
    yield path
    managed.emulate("self-managed")


@pytest.fixture
def rds(clean_lab: Lab) -> Iterator[Path]:
    yield from emulated(clean_lab, "rds")


@pytest.fixture
def cloudsql(clean_lab: Lab) -> Iterator[Path]:
    yield from emulated(clean_lab, "cloudsql")


def fill(lab: Lab) -> list[psycopg.Connection[Any]]:
    """Every ordinary slot taken by `app` sessions, for real."""
    fillers: list[psycopg.Connection[Any]] = []
    for _ in range(40):
        try:
            fillers.append(psycopg.connect(lab.app_dsn(), autocommit=True))
        except psycopg.OperationalError as exc:
            assert "remaining connection slots are reserved" in str(exc)
            return fillers
    raise AssertionError("the server never filled up")


def diagnose(inventory: Path) -> tuple[Any, dict[str, Any]]:
    result = invoke("diagnose", "lab", "-i", str(inventory), "--json")
    return result, json.loads(result.stdout)


def test_no_superuser_the_platform_apart_and_the_limit_per_the_profile(
    clean_lab: Lab, rds: Path
) -> None:
    text = rds.read_text()
    assert "admin_dsn" not in text and "platform: rds" in text
    result, envelope = diagnose(rds)
    assert result.exit_code in (0, 1), result.output
    d = envelope["result"]
    with clean_lab.superuser() as conn:  # who connfix is, as the server says
        (superuser,) = conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (d["connected_as"],)
        ).fetchone() or (None,)
        settings = dict(
            conn.execute(
                "SELECT name, setting::int FROM pg_settings WHERE name IN ('max_connections',"
                " 'superuser_reserved_connections', 'reserved_connections')"
            ).fetchall()
        )
    assert superuser is False and d["via"] == "primary"
    assert d["platform"] == "rds" and d["platform_sessions"] == 2
    # RDS: max − superuser_reserved − the rds_superuser reserve (here reserved_connections)
    assert d["usable_connections"] == (
        settings["max_connections"]
        - settings["superuser_reserved_connections"]
        - settings["reserved_connections"]
    )
    row = next(r for r in d["by_host"] if r["host"] == "(platform)")
    assert row["count"] == 2 and not row["suspect"]
    assert d["by_user"]["rdsadmin"] == 2
    shown = invoke("diagnose", "lab", "-i", str(rds)).output
    assert "platform rds: its own 2 session(s)" in shown


def test_a_full_run_without_a_superuser_ends_healthy_and_leaves_the_platform_alone(
    clean_lab: Lab, rds: Path, tmp_path: Path
) -> None:
    _, envelope = diagnose(rds)
    d = envelope["result"]
    clean_lab.core.leak("app2", d["usable_connections"] - d["client_backends"] + 1,
                        idle_in_transaction=True)  # fmt: skip
    agents = agent_pids(clean_lab, "rdsadmin")
    result = invoke("triage", "lab", "-i", str(rds), "--yes", "--incidents-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    (journal,) = tmp_path.glob("*/journal.jsonl")
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    assert events[-1]["status"] == "resolved", events[-1]
    ended = {e["pid"] for e in events if e["event"] == "operation" and e.get("pid")}
    assert not ended & agents
    assert agent_pids(clean_lab, "rdsadmin") == agents  # the very same sessions
    plans = [e for e in events if e["event"] == "plan" and "terminate" in e["summary"]]
    assert plans and "the platform's own (rds)" in plans[0]["summary"], plans


def test_a_full_server_is_entered_through_the_platforms_master_user(
    clean_lab: Lab, rds: Path
) -> None:
    fillers = fill(clean_lab)
    try:
        result, envelope = diagnose(rds)
        assert result.exit_code == 1, result.output
        d = envelope["result"]
        assert d["via"] == "reserved" and d["connected_as"] == "master"
        assert "remaining connection slots are reserved" in d["refusal"]
        assert d["severity"] == "critical" and d["platform_sessions"] == 2
    finally:
        for conn in fillers:
            conn.close()


@pytest.mark.parametrize("platform", ["cloudsql", "rds"])
def test_a_full_server_with_no_way_in_is_answered_at_once(
    clean_lab: Lab, platform: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    inventory: Path = request.getfixturevalue(platform)
    if platform == "rds":  # the master user not configured: nothing to get in with
        bare = tmp_path / "inventory.yaml"
        bare.write_text(
            "\n".join(ln for ln in inventory.read_text().splitlines() if "reserved_dsn" not in ln)
        )
        inventory = bare
    fillers = fill(clean_lab)
    try:
        started = time.monotonic()
        result = invoke("diagnose", "lab", "-i", str(inventory))
        seconds = time.monotonic() - started
    finally:
        for conn in fillers:
            conn.close()
    assert seconds < 5, seconds
    assert result.exit_code not in (0, 1), result.output
    out = " ".join(result.output.split())
    assert "remaining connection slots are reserved" in out
    assert "hands out no superuser" in out and "database.reserved_dsn" in out
    expected = {"cloudsql": "reserved_connections flag", "rds": "member of rds_superuser"}
    assert expected[platform] in out


def test_terminate_never_ends_the_platforms_sessions_even_when_asked_for_all(
    clean_lab: Lab, rds: Path, tmp_path: Path
) -> None:
    agents = agent_pids(clean_lab, "rdsadmin")
    result = invoke(
        "terminate", "lab", "-i", str(rds), "--state", "idle", "--older-than", "0s",
        "--max-fraction", "1", "--yes", "--incidents-dir", str(tmp_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 the platform's own (rds)" in " ".join(result.output.split())
    assert agent_pids(clean_lab, "rdsadmin") == agents


def test_zero_setup_knows_the_platform_from_a_flag(
    clean_lab: Lab, rds: Path, tmp_path: Path
) -> None:
    """A DSN and --platform, no inventory: the platform's sessions are its own, not a
    suspect by share; terminate leaves them; the starter inventory keeps the platform."""
    agents = agent_pids(clean_lab, "rdsadmin")
    dsn = clean_lab.core.dsn("connfix")
    result = invoke("diagnose", "--dsn", dsn, "--platform", "rds", "--json")
    assert result.exit_code in (0, 1), result.output
    d = json.loads(result.stdout)["result"]
    assert d["platform"] == "rds" and d["platform_sessions"] == 2
    assert "(platform)" not in d["suspects"]
    ended = invoke(
        "terminate", "--dsn", dsn, "--platform", "rds", "--state", "idle", "--older-than",
        "0s", "--max-fraction", "1", "--yes", "--incidents-dir", str(tmp_path / "i"),
    )  # fmt: skip
    assert ended.exit_code == 0, ended.output
    assert agent_pids(clean_lab, "rdsadmin") == agents
    starter = tmp_path / "inventory.yaml"
    wrote = invoke("diagnose", "--dsn", dsn, "--platform", "rds", "--write-inventory",
                   str(starter))  # fmt: skip
    assert wrote.exit_code in (0, 1), wrote.output
    assert "platform: rds" in starter.read_text()
    refused = invoke("diagnose", "lab", "-i", str(rds), "--platform", "rds")
    assert refused.exit_code == 2 and "--platform goes with --dsn" in refused.output
