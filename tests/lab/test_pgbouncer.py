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
    # exit 1: the lab's pools with their overflow do not fit with a restart's overlap;
    # the config is written all the same
    assert result.exit_code in (0, 1), result.output
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

    assert run().exit_code in (0, 1)  # 1: the pools with their overflow do not fit
    (directory / "userlist.txt").write_text('"app" "SCRAM-SHA-256$filled in by the operator"\n')
    again = run()
    assert again.exit_code == 2 and "already exists (--force to overwrite it)" in again.output
    assert "filled in by the operator" in (directory / "userlist.txt").read_text()
    assert run("--force").exit_code in (0, 1)
    for name in ("pgbouncer.ini", "userlist.txt"):
        assert (directory / name).stat().st_mode & 0o777 == 0o600
    assert directory.stat().st_mode & 0o777 == 0o700


# Role names anyone with CREATEROLE can make: each generated file must hold them as what
# they are, by its own quoting rules, or refuse them.
HOSTILE = ['we"ird role', "o'brien", "semi;colon -- x", "back\\slash $$", "ünï 🐘"]
INJECTION = "reporting\nALTER ROLE cfx_victim SUPERUSER;\n--"


@pytest.fixture
def hostile_roles(clean_lab: Lab) -> Iterator[dict[str, psycopg.Connection[Any]]]:
    """The hostile roles, each with a session open (so the diagnosis sees them), and a
    victim an injected statement would make superuser."""
    from psycopg import sql

    names = [*HOSTILE, INJECTION]
    with clean_lab.superuser() as conn:
        conn.execute("CREATE ROLE cfx_victim LOGIN")
        for name in names:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw-Hostile-1'").format(sql.Identifier(name))
            )
    sessions: dict[str, psycopg.Connection[Any]] = {}
    try:
        for name in names:
            sessions[name] = psycopg.connect(
                host="127.0.0.1",
                port=clean_lab.paths.pg_port(),
                dbname="appdb",
                user=name,
                password="pw-Hostile-1",
                autocommit=True,
            )
        yield sessions
    finally:
        for conn in sessions.values():
            conn.close()
        with clean_lab.superuser() as su:
            for name in [*names, "cfx_victim"]:
                su.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _pool(lab: Lab, directory: Path, *args: str) -> Any:
    return CliRunner().invoke(
        cli,
        [
            "pool",
            "lab",
            "-i",
            str(lab.inventory),
            "--pgbouncer-config",
            str(directory),
            "--listen-addr",
            lab.paths.db_address(),
            "--listen-port",
            str(PORT),
            "--force",
            *args,
        ],
    )


def test_hostile_role_names_are_written_by_each_files_rules_or_refused(
    hostile_roles: dict[str, psycopg.Connection[Any]], clean_lab: Lab
) -> None:
    """auth_query.sql runs in psql (in a transaction rolled back) with every hostile name
    in it and makes no one superuser; the userlist cannot hold a line break, so with the
    injection role present `--auth userlist` writes nothing and names it; without it,
    the userlist and ini written start each PgBouncer version, and every hostile role
    logs in through it as itself."""
    from psycopg import sql

    from connfix.config.quoting import userlist_name

    directory = clean_lab.paths.lab_dir() / "pgbouncer-hostile"  # PgBouncer runs as postgres
    shutil.rmtree(directory, ignore_errors=True)
    try:
        refused = _pool(clean_lab, directory, "--auth", "userlist")
        assert refused.exit_code == 2, refused.output
        assert "cannot be written into userlist.txt" in refused.output
        assert "reporting\\nALTER ROLE cfx_victim SUPERUSER;\\n--" in refused.output
        assert not directory.exists() or not any(directory.iterdir())

        made = _pool(clean_lab, directory)  # auth_query: the names go into SQL only
        assert made.exit_code in (0, 1), made.output
        script = directory / "run.sql"
        script.write_text(
            "BEGIN;\n\\i auth_query.sql\n"
            "SELECT 'victim superuser: ' || rolsuper FROM pg_roles WHERE rolname = 'cfx_victim';\n"
            "ROLLBACK;\n"
        )
        ran = subprocess.run(
            ["psql", clean_lab.core.bootstrap_dsn().replace("dbname=postgres", "dbname=appdb"),
             "-X", "-v", "ON_ERROR_STOP=1", "-At", "-f", str(script)],
            capture_output=True, text=True, cwd=directory, check=False,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert "victim superuser: false" in ran.stdout, ran.stdout

        hostile_roles.pop(INJECTION).close()
        with clean_lab.superuser() as su:
            su.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(INJECTION)))
            secrets = dict(
                su.execute(
                    "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)",
                    ([*HOSTILE, "connfix"],),
                ).fetchall()
            )
        written = _pool(clean_lab, directory, "--auth", "userlist")
        assert written.exit_code in (0, 1), written.output
        userlist = (directory / "userlist.txt").read_text()
        for name, secret in secrets.items():
            line = f'{userlist_name(name)} "SCRAM-SHA-256$<fill in from pg_authid>"'
            assert line in userlist, (name, userlist)
            userlist = userlist.replace(line, f'{userlist_name(name)} "{secret}"')
        (directory / "userlist.txt").write_text(userlist)
        for conn in hostile_roles.values():  # their slots, for the logins through PgBouncer
            conn.close()
        for version in ("1.18", "1.24", "1.25"):
            if lab_bouncer.unavailable(version):
                continue  # said by the version-specific tests; 1.18 always runs
            pid = lab_bouncer.launch(directory, lab_bouncer.binary(version))
            try:
                for name in HOSTILE:
                    with psycopg.connect(
                        host=clean_lab.paths.db_address(),
                        port=PORT,
                        dbname="appdb",
                        user=name,
                        password="pw-Hostile-1",
                        connect_timeout=10,
                    ) as conn:
                        row = conn.execute("SELECT current_user").fetchone()
                        assert row == (name,), (version, name, row)
            finally:
                lab_bouncer.stop(pid)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
