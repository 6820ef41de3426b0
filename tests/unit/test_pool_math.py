"""Pool sizing arithmetic on edge cases; each expected figure worked out in a comment."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from connfix.config.inventory import Environment
from connfix.db.pg import ServerInfo
from connfix.diagnosis.analysis import analyse
from connfix.diagnosis.pool_sizing import pgbouncer_plan, size_pools
from tests.builders import backend


def env(
    hosts: int,
    pool: int,
    *,
    buffer: int = 5,
    workers: int = 1,
    max_unavailable: int = 1,
    max_overflow: int = 0,
) -> Environment:
    return Environment.validate(
        {
            "database": {"dsn": "host=db dbname=app user=connfix"},
            "service": {
                "unit": "app.service",
                "pool_size": pool,
                "workers": workers,
                "max_unavailable": max_unavailable,
                "max_overflow": max_overflow,
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
    # PRODUCT.md: "4 servers × 100 = 400 > 200 → pool 40: 160, safe".
    # max_connections 203: usable 203 − 3 = 200; base = 200 − buffer 0 − other 0 = 200.
    # Now: 400 + overlap (1 host × 100) = 500 > 200. Safe size s: 4s + 1s ≤ 200 → s = 40;
    # 160 in all, 40 more while a host restarts = 200 ≤ 200.
    e = env(4, 100, buffer=0)
    sizing = size_pools(e, diag(e, 203))
    assert (sizing.usable_connections, sizing.fleet_total) == (200, 400)
    assert (sizing.restart_overlap, sizing.available) == (100, 100)
    assert not sizing.safe and sizing.max_safe_pool_size == 40
    assert (sizing.after_total, sizing.after_restart_overlap, sizing.after_available) == (
        160,
        40,
        160,
    )
    assert sizing.table()[1]["safe"] is True


def test_more_servers_than_slots() -> None:
    # 30 servers × 2, max_connections 20: usable 17; base = 17 − 5 − 0 = 12; now
    # available = 12 − overlap 2 = 10; safe size 12 // (30 + 1) = 0: nothing fits,
    # a pooler is the only way
    e = env(30, 2)
    sizing = size_pools(e, diag(e, 20))
    assert sizing.available == 10 and sizing.max_safe_pool_size == 0
    assert sizing.after_total == 0 and not sizing.table()[1]["safe"]
    assert any("put PgBouncer in front" in note for note in sizing.notes)


def test_zero_buffer() -> None:
    # 3 servers × 5, max_connections 23: usable 20; base = 20 − 0 − 0 = 20; now 15 + a
    # restarting host's 5 = 20 ≤ 20: exactly fits, safe; safe size 20 // (3 + 1) = 5
    e = env(3, 5, buffer=0)
    sizing = size_pools(e, diag(e, 23))
    assert (sizing.available, sizing.fleet_total, sizing.safe) == (15, 15, True)
    assert sizing.max_safe_pool_size == 5


def test_reserved_connections_on_16_plus() -> None:
    # PostgreSQL 16: max 100 − superuser_reserved 3 − reserved_connections 7 = 90 usable;
    # base = 90 − buffer 5 − 0 = 85; now available = 85 − overlap 10 = 75 ≥ 40: safe;
    # safe size 85 // (4 + 1) = 17 (4 × 17 + 17 = 85)
    e = env(4, 10)
    sizing = size_pools(e, diag(e, 100, reserved=7, version=160002))
    assert sizing.usable_connections == 90 and sizing.available == 75
    assert sizing.safe and sizing.max_safe_pool_size == 17
    assert sizing.after_total + sizing.after_restart_overlap == 85


def test_workers_and_other_clients() -> None:
    # 2 servers × 4 workers × pool 3 = 24; max 43: usable 40; 4 sessions from a cron host
    # (not in the fleet); base = 40 − 5 − 4 = 31; now overlap = 1 × (3 × 4) = 12,
    # available = 19 < 24: not safe. Safe s per worker: (2 + 1) × 4 × s ≤ 31 → s = 2,
    # 16 in all, 8 more while a host restarts = 24 ≤ 31
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
        auth="userlist",
    )
    assert (plan.max_db_connections, plan.reserve_pool_size) == (15, 1)
    assert (plan.default_pool_size, plan.max_client_conn) == (14, 500)
    assert "max_db_connections = 15" in plan.ini and "pool_mode = transaction" in plan.ini
    assert "LISTEN / NOTIFY" in plan.ini
    assert plan.database_url == "postgresql://app@<pgbouncer host>:6432/app"
    assert '"app" "SCRAM-SHA-256$<fill in from pg_authid>"' in plan.userlist


@given(
    servers=st.integers(1, 60),
    pool=st.integers(1, 200),
    workers=st.integers(1, 8),
    max_unavailable=st.integers(1, 10),
    buffer=st.integers(0, 50),
    max_connections=st.integers(5, 5000),
    overflow=st.integers(0, 20),
)
def test_the_safe_size_is_the_largest_that_survives_a_rolling_restart(
    servers: int,
    pool: int,
    workers: int,
    max_unavailable: int,
    buffer: int,
    max_connections: int,
    overflow: int,
) -> None:
    """At the safe size, the fleet in a burst (every pool with its overflow) plus the
    hosts restarting at once fit; one more does not."""
    e = env(
        servers,
        pool,
        buffer=buffer,
        workers=workers,
        max_unavailable=max_unavailable,
        max_overflow=overflow,
    )
    sizing = size_pools(e, diag(e, max_connections))
    base = sizing.usable_connections - buffer
    at_once = min(max_unavailable, servers)
    s = sizing.max_safe_pool_size

    def held(size: int) -> int:  # every server's pools and overflow, the restarting twice
        return (servers + at_once) * workers * (size + overflow)

    if s:
        assert held(s) <= max(0, base) < held(s + 1)
        assert sizing.after_total + sizing.after_restart_overlap == held(s)
    else:
        assert held(1) > max(0, base) and sizing.after_total == 0
    assert sizing.table()[1]["safe"] is (s > 0)
    assert sizing.safe is (held(pool) <= base)


def test_max_overflow_is_part_of_the_worst_case() -> None:
    """4 servers × pool 100 with SQLAlchemy's default max_overflow 10; max_connections 205:
    usable 202, base 197 (buffer 5). Without the overflow the safe size would be
    197 // 5 = 39, and a burst would open 5 × (39 + 10) = 245 > 197. With it:
    39 − 10 = 29, whose worst case 5 × (29 + 10) = 195 fits."""
    e = env(4, 100, max_overflow=10)
    sizing = size_pools(e, diag(e, 205))
    assert sizing.fleet_total == 4 * 110 and not sizing.safe
    assert sizing.max_safe_pool_size == 29
    assert (sizing.after_total, sizing.after_restart_overlap) == (4 * 39, 39)
    assert sizing.after_total + sizing.after_restart_overlap <= 197
    now, safe = sizing.table()
    assert now["per_server"] == "(100 + 10 overflow)" and safe["per_server"] == "(29 + 10 overflow)"
    assert any("max_overflow 10 in a burst" in n for n in sizing.notes)
    assert sizing.notes[-1].endswith("− 10 overflow = 29") or any(
        n.endswith("− 10 overflow = 29") for n in sizing.notes
    )
    # the diagnosis's pool check counts the overflow too
    check = diag(e, 205).pool_check
    assert (check.total, check.limit, check.safe) == (440, 197, False)
    assert check.recommended_pool_size == 29
    assert check.sentence().startswith("4 servers × (100 + 10 overflow) = 440 > 197")


def test_a_standby_below_the_primary_is_flagged_and_standbys_come_first() -> None:
    """Under Patroni the lab cannot run a standby below the primary (Patroni raises it,
    PostgreSQL refuses to replay below it): the rule is checked here on the numbers."""
    from connfix.diagnosis.pool_sizing import cluster_notes

    notes = cluster_notes(
        [("db1", "primary", 200), ("db2", "standby", 100), ("db3", "standby", 200)]
    )
    assert any("standby db2 has max_connections 100, below the primary's 200" in n for n in notes)
    assert not any("standby db3" in n and "below" in n for n in notes)
    assert any("standbys (db2, db3) first" in n for n in notes)
    assert not any("below" in n for n in cluster_notes([("db1", "primary", 100)]))
