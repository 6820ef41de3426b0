"""Pool sizing arithmetic on edge cases; each expected figure worked out in a comment."""

from __future__ import annotations

from typing import Any

from connfix.diagnosis import analyse
from connfix.inventory import Environment
from connfix.pg import ServerInfo
from connfix.pool import pgbouncer_plan, size_pools
from tests.test_diagnose_unit import backend


def env(
    hosts: int, pool: int, *, buffer: int = 5, workers: int = 1, max_unavailable: int = 1
) -> Environment:
    return Environment.model_validate(
        {
            "database": {"dsn": "host=db dbname=app user=connfix"},
            "service": {
                "unit": "app.service",
                "pool_size": pool,
                "workers": workers,
                "max_unavailable": max_unavailable,
            },
            "hosts": [
                {"name": f"web{i}", "ssh_address": f"10.0.0.{i}"} for i in range(1, hosts + 1)
            ],
            "thresholds": {"buffer": buffer},
        }
    )


def diag(
    environment: Environment,
    max_connections: int,
    reserved: int = 0,
    version: int = 150004,
    rows: list[Any] | None = None,
) -> Any:
    info = ServerInfo(
        "connfix", False, True, True, "x", version, max_connections, 3, reserved, 1, "app"
    )
    return analyse("prod", environment, info, rows or [], [])


def test_the_product_example() -> None:
    # 4 servers × 100 = 400 against max_connections 203: usable 203 − 3 = 200;
    # available = 200 − buffer 0 − other 0 − overlap (1 × 100) = 100; 100 // 4 = 25
    e = env(4, 100, buffer=0)
    sizing = size_pools(e, diag(e, 203))
    assert (sizing.usable_connections, sizing.fleet_total) == (200, 400)
    assert (sizing.restart_overlap, sizing.available) == (100, 100)
    assert not sizing.safe and sizing.max_safe_pool_size == 25
    assert sizing.after_total == 100
    assert sizing.table()[1]["safe"] is True


def test_more_servers_than_slots() -> None:
    # 30 servers × 2, max_connections 20: usable 17; available = 17 − 5 − 0 − 2 = 10;
    # 10 // 30 = 0: nothing fits, a pooler is the only way
    e = env(30, 2)
    sizing = size_pools(e, diag(e, 20))
    assert sizing.available == 10 and sizing.max_safe_pool_size == 0
    assert sizing.after_total == 0 and not sizing.table()[1]["safe"]
    assert any("put PgBouncer in front" in note for note in sizing.notes)


def test_zero_buffer() -> None:
    # 3 servers × 5, max_connections 23: usable 20; available = 20 − 0 − 0 − 5 = 15;
    # 15 // 3 = 5: exactly fits, safe
    e = env(3, 5, buffer=0)
    sizing = size_pools(e, diag(e, 23))
    assert (sizing.available, sizing.fleet_total, sizing.safe) == (15, 15, True)
    assert sizing.max_safe_pool_size == 5


def test_reserved_connections_on_16_plus() -> None:
    # PostgreSQL 16: max 100 − superuser_reserved 3 − reserved_connections 7 = 90 usable;
    # available = 90 − buffer 5 − 0 − overlap 10 = 75; 4 servers: 75 // 4 = 18
    e = env(4, 10)
    sizing = size_pools(e, diag(e, 100, reserved=7, version=160002))
    assert sizing.usable_connections == 90 and sizing.available == 75
    assert sizing.safe and sizing.max_safe_pool_size == 18


def test_workers_and_other_clients() -> None:
    # 2 servers × 4 workers × pool 3 = 24; max 43: usable 40; 4 sessions from a cron host
    # (not in the fleet); overlap = 1 × (3 × 4) = 12; available = 40 − 5 − 4 − 12 = 19;
    # 19 // (2 × 4) = 2 per worker, 16 in all
    e = env(2, 3, workers=4)
    rows = [backend(i, "192.168.1.9") for i in range(4)]
    sizing = size_pools(e, diag(e, 43, rows=rows))
    assert (sizing.fleet_total, sizing.other_clients, sizing.restart_overlap) == (24, 4, 12)
    assert sizing.available == 19 and not sizing.safe
    assert (sizing.max_safe_pool_size, sizing.after_total) == (2, 16)


def test_pgbouncer_caps_server_connections_at_what_the_database_can_spare() -> None:
    # usable 17, buffer 2, no other clients: max_db_connections = 15; reserve 15 // 10 = 1;
    # one role: default_pool_size = 15 − 1 = 14; clients 3 × 3 + 3 = 12 → max(500, 48)
    e = env(3, 3, buffer=2)
    d = diag(e, 20)
    plan = pgbouncer_plan(
        e,
        d,
        size_pools(e, d),
        db_host="10.0.0.100",
        db_port=5432,
        dbname="app",
        roles=["app"],
        admin_users=["connfix"],
        directory="/etc/pgbouncer",
    )
    assert (plan.max_db_connections, plan.reserve_pool_size) == (15, 1)
    assert (plan.default_pool_size, plan.max_client_conn) == (14, 500)
    assert "max_db_connections = 15" in plan.ini and "pool_mode = transaction" in plan.ini
    assert "LISTEN / NOTIFY" in plan.ini
    assert plan.database_url == "postgresql://app@<pgbouncer host>:6432/app"
    assert '"app" "SCRAM-SHA-256$<fill in from pg_authid>"' in plan.userlist
