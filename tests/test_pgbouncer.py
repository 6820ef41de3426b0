"""A real PgBouncer started from the config connfix generates for its version, on a lab
address: Debian's 1.18, and 1.24.1 / 1.25.2 built from their release sources."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from connfix.cli import cli
from connfix.lab import pgbouncer as lab_bouncer
from tests.helpers import LAB_HOSTS, Lab, retry

PORT = 6432
CLIENTS = 300


def passwords(lab: Lab) -> dict[str, str]:
    lines = (lab.paths.lab_dir() / "pgpass").read_text().splitlines()
    return {fields[3]: fields[4] for fields in (line.split(":") for line in lines)}


@pytest.fixture(params=("1.18", "1.24", "1.25"), ids=lambda v: f"pgbouncer{v}")
def bouncer(
    clean_lab: Lab, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    """Generate the config with `connfix pool` for a PgBouncer version, start that
    version from it as is."""
    version = str(request.param)
    why = lab_bouncer.unavailable(version)
    if why:
        pytest.skip(f"PgBouncer {version}: {why}")
    # PgBouncer refuses to run as root: it runs as postgres, which cannot enter pytest's
    # private temporary directories, so its files live in the lab's directory
    directory = clean_lab.paths.lab_dir() / "pgbouncer-test"
    shutil.rmtree(directory, ignore_errors=True)
    address = clean_lab.paths.db_address()
    result = CliRunner().invoke(
        cli,
        [
            "pool",
            "lab",
            "-i",
            str(clean_lab.inventory),
            "--pgbouncer-config",
            str(directory),
            "--listen-addr",
            address,
            "--listen-port",
            str(PORT),
            "--auth",
            "userlist",  # the fallback; auth_query: test_pooled_fleet.py
            "--pgbouncer-version",
            version,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["result"]["pgbouncer"]
    # the operator's part: fill the userlist template with the SCRAM secrets
    with clean_lab.superuser() as conn:
        secrets = dict(
            conn.execute(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('app', 'connfix')"
            ).fetchall()
        )
    template = (directory / "userlist.txt").read_text()
    for role, secret in secrets.items():
        template = template.replace(
            f'"{role}" "SCRAM-SHA-256$<fill in from pg_authid>"', f'"{role}" "{secret}"'
        )
    (directory / "userlist.txt").write_text(template)
    for index in range(1, LAB_HOSTS + 1):  # the fleet moves behind PgBouncer
        clean_lab.systemctl(index, "stop")
    pid = lab_bouncer.launch(directory, lab_bouncer.binary(version))
    try:
        yield {
            "version": version,
            "config": config,
            "address": address,
            "passwords": passwords(clean_lab),
            "directory": directory,
        }
    finally:
        lab_bouncer.stop(pid)  # the PgBouncer this test started, by its pid
        for index in range(1, LAB_HOSTS + 1):
            clean_lab.systemctl(index, "start")
        shutil.rmtree(directory, ignore_errors=True)


def bouncer_dsn(b: dict[str, Any], user: str, dbname: str = "appdb") -> str:
    return f"host={b['address']} port={PORT} dbname={dbname} user={user}"


def test_generated_config_caps_server_connections(
    bouncer: dict[str, Any], clean_lab: Lab, tmp_path: Path
) -> None:
    cap = bouncer["config"]["max_db_connections"]
    assert cap == 15  # 17 usable − buffer 2 − no other clients
    settings = {s["key"]: s for s in bouncer["config"]["settings"]}
    per_role = settings["max_user_client_connections"]
    # 1.24+ caps one role's client connections (twice what the pools may open): the
    # load stays within it there; 1.18 has no such cap
    clients = int(per_role["value"]) - 1 if per_role["written"] else CLIENTS
    rounds = 3 if clients >= 100 else 40  # fewer clients each wait longer: still saturated
    password = bouncer["passwords"]["app"]
    stop = threading.Event()
    peak = [0]

    def sample() -> None:
        with clean_lab.superuser() as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND usename = 'app'"
                ).fetchone()
                peak[0] = max(peak[0], int(row[0]) if row else 0)
                time.sleep(0.01)

    def client(_: int) -> int:
        with psycopg.connect(
            bouncer_dsn(bouncer, "app"), password=password, autocommit=True, connect_timeout=20
        ) as conn:
            for _ in range(rounds):
                conn.execute("SELECT pg_sleep(0.05)")
            return 1

    # PgBouncer logs in to the server with the SCRAM keys of a client login that
    # completed: a server connection it opens before any did is refused, and every login
    # waiting on the pool with it ("server login failed: wrong password type", seen on
    # 1.25.2 when the whole load logs in at once). One login first, as a live pooler has.
    with psycopg.connect(bouncer_dsn(bouncer, "app"), password=password) as warm:
        warm.execute("SELECT 1")
    sampler = threading.Thread(target=sample)
    sampler.start()

    def with_pgbouncer(env: dict[str, Any]) -> None:
        env["pgbouncer"] = {
            "admin_dsn": bouncer_dsn(bouncer, "connfix", "pgbouncer"),
            "admin_password_env": "CONNFIX_TEST_PGBOUNCER_PASSWORD",
        }

    inventory = clean_lab.inventory_with(tmp_path, with_pgbouncer)
    saturated: dict[str, Any] = {}
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, i) for i in range(clients)]

            def diagnose_saturated() -> bool:
                env = {
                    **os.environ,
                    "CONNFIX_TEST_PGBOUNCER_PASSWORD": bouncer["passwords"]["connfix"],
                }
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "connfix",
                        "diagnose",
                        "lab",
                        "--json",
                        "-i",
                        str(inventory),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=False,
                )
                data = json.loads(proc.stdout)["result"]
                (state,) = data["pgbouncers"]
                saturated.update(state)
                return bool(state.get("saturated"))

            retry(diagnose_saturated, timeout=30, interval=0.2)
            done = sum(f.result(timeout=120) for f in futures)
    finally:
        stop.set()
        sampler.join()
    assert done == clients
    assert 0 < peak[0] <= cap, peak[0]
    assert saturated["clients_waiting"] > 0
    assert saturated["verdict"].startswith("the pool is saturated:")
    assert "the database has" in saturated["verdict"]
    pools = {p["database"]: p for p in saturated["pools"]}
    assert pools["appdb"]["pool_mode"] == "transaction"
    assert saturated["server_connections_in_pg_stat_activity"] >= 1


def test_diagnose_shows_the_pool_state_when_it_keeps_up(
    bouncer: dict[str, Any], clean_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def change(env: dict[str, Any]) -> None:
        env["pgbouncer"] = {
            "admin_dsn": bouncer_dsn(bouncer, "connfix", "pgbouncer"),
            "admin_password_env": "CONNFIX_TEST_PGBOUNCER_PASSWORD",
        }

    monkeypatch.setenv("CONNFIX_TEST_PGBOUNCER_PASSWORD", bouncer["passwords"]["connfix"])
    inventory = clean_lab.inventory_with(tmp_path, change)
    with psycopg.connect(
        bouncer_dsn(bouncer, "app"), password=bouncer["passwords"]["app"], autocommit=True
    ) as conn:
        conn.execute("SELECT 1")
        result = CliRunner().invoke(cli, ["diagnose", "lab", "-i", str(inventory)])
    assert f"PgBouncer pgbouncer pools (PgBouncer {bouncer['version']}." in result.output
    assert "PgBouncer pgbouncer: PgBouncer keeps up: no client is waiting" in result.output
    monkeypatch.setenv("CONNFIX_TEST_PGBOUNCER_PASSWORD", "wrong")
    result = CliRunner().invoke(cli, ["diagnose", "lab", "--json", "-i", str(inventory)])
    data = json.loads(result.stdout)["result"]
    assert "cannot read PgBouncer pgbouncer at connfix@" in data["pgbouncers"][0]["error"]
    assert "wrong" not in result.output


def test_the_generated_files_are_never_overwritten_without_force(
    clean_lab: Lab, tmp_path: Path
) -> None:
    directory = tmp_path / "bouncer"

    def run(*extra: str) -> Any:
        return CliRunner().invoke(
            cli,
            [
                "pool",
                "lab",
                "-i",
                str(clean_lab.inventory),
                "--pgbouncer-config",
                str(directory),
                *list(extra),
            ],
        )

    assert run().exit_code == 0
    (directory / "userlist.txt").write_text('"app" "SCRAM-SHA-256$filled in by the operator"\n')
    again = run()
    assert again.exit_code == 2 and "already exists (--force to overwrite it)" in again.output
    assert "filled in by the operator" in (directory / "userlist.txt").read_text()
    assert run("--force").exit_code == 0
    for name in ("pgbouncer.ini", "userlist.txt"):
        assert (directory / name).stat().st_mode & 0o777 == 0o600
    assert directory.stat().st_mode & 0o777 == 0o700
