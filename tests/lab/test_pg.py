"""The database layer, against the lab's real PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from connfix import DatabaseUnavailable
from connfix.cli import cli
from connfix.db import pg
from tests.helpers import Lab


def test_session_is_named_autocommit_with_statement_timeout(lab: Lab, lab_env: Any) -> None:
    with pg.open_session(lab_env.database) as session:
        assert session.via == "primary"
        assert session.info.role == "connfix"
        assert session.info.max_connections == lab.max_connections
        assert session.info.reserved_connections == lab.reserved
        assert session.info.superuser_reserved_connections == 3
        assert session.conn.autocommit
        row = session.conn.execute(
            "SELECT application_name, current_setting('statement_timeout')"
            " FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row == ("connfix", "5s")


def test_full_server_falls_back_to_the_least_privileged_way_in(
    full_server: list[Any], lab: Lab, lab_env: Any
) -> None:
    with pytest.raises(psycopg.OperationalError) as refused:
        pg.connect(lab_env.database.dsn)
    assert pg.classify_refusal(str(refused.value)) == "reserved_slots"
    with pg.open_session(lab_env.database) as session:
        assert session.via == lab.way_in  # the reserved role on 16+, else the superuser
        assert session.info.is_superuser == (lab.way_in == "admin")
        assert session.refusal is not None
        assert "remaining connection slots are reserved" in session.refusal


def test_full_server_without_admin_says_what_to_configure(
    full_server: list[Any], lab_env: Any
) -> None:
    db = lab_env.database.replace(admin_dsn=None, admin_dsn_env=None, reserved_dsn=None)
    with pytest.raises(DatabaseUnavailable) as caught:
        pg.open_session(db)
    message = str(caught.value)
    assert caught.value.exit_status == 3
    assert "only reserved connection slots are left" in message
    assert "server said: remaining connection slots are reserved" in message
    assert "admin_dsn_env" in message and "reserved_dsn" in message


def test_inventory_check_on_a_full_server_says_it_used_the_admin_connection(
    full_server: list[Any], lab: Lab
) -> None:
    result = CliRunner().invoke(
        cli, ["inventory", "check", "lab", "-i", str(lab.inventory)], terminal_width=200
    )
    assert f"used the {lab.way_in} connection" in result.output, result.output
    assert f"via the {lab.way_in} connection" in result.output
    assert result.exit_code == 0, result.output


def test_admin_dsn_from_the_environment_wins(
    full_server: list[Any], lab_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "CONNFIX_LAB_ADMIN_DSN",
        lab_env.database.admin_dsn.replace("user=connfix_admin", "user=nosuchrole"),
    )
    db = lab_env.database.replace(reserved_dsn=None)
    with pytest.raises(DatabaseUnavailable, match="admin connection to nosuchrole@"):
        pg.open_session(db)


def test_unreachable_database_is_exit_3(lab_env: Any, tmp_path: Path) -> None:
    db = lab_env.database.replace(dsn="host=127.0.0.1 port=1 dbname=x user=y", connect_timeout=1.0)
    with pytest.raises(DatabaseUnavailable, match=r"cannot connect to y@127\.0\.0\.1:1/x"):
        pg.open_session(db)


def test_reserved_slots_on_16_plus(full_server: list[Any], lab: Lab, lab_env: Any) -> None:
    """reserved_connections = 2: ordinary role refused, the reserved role gets in, and when
    its slots are full too, the superuser does; usable is max − 3 − 2."""
    if lab.version < 16:
        pytest.skip("reserved_connections exists from PostgreSQL 16")
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(lab.app_dsn())
    assert (
        "remaining connection slots are reserved for roles with privileges of the"
        ' "pg_use_reserved_connections" role'
    ) in str(refused.value)
    reserved_dsn = lab.core.dsn("connfix_reserved")
    held = [psycopg.connect(reserved_dsn, autocommit=True)]
    try:
        with pg.open_session(lab_env.database) as session:  # the second reserved slot
            assert session.via == "reserved" and session.info.role == "connfix_reserved"
            from connfix.diagnosis.analysis import take_snapshot

            d = take_snapshot(session, "lab", lab_env)
            assert (
                d.max_connections,
                d.superuser_reserved_connections,
                d.reserved_connections,
            ) == (22, 3, 2)
            assert d.usable_connections == 22 - 3 - 2 == 17
            # the ordinary slots, the held reserved one, and connfix's own (the second)
            assert d.client_backends == 17 + 1 + 1 and d.own_sessions == 1
            # both reserved slots taken now: the reserved role is refused in its turn
            with pytest.raises(psycopg.OperationalError) as second:
                psycopg.connect(reserved_dsn)
            assert "reserved for roles with the SUPERUSER attribute" in str(second.value)
            assert pg.classify_refusal(str(second.value)) == "reserved_slots"
            with pg.open_session(lab_env.database) as admin:
                assert admin.via == "admin" and admin.info.is_superuser
    finally:
        for conn in held:
            conn.close()
