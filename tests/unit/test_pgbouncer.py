"""PgBouncer logic without a lab: the join of SHOW CLIENTS / SHOW SERVERS to
pg_stat_activity, the clients KILL_CLIENT would end, the migration sizing, and the
inventory forms. The same on a real PgBouncer: test_pooled_fleet.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from connfix.actions.pgbouncer_commands import KillClientsAction, KillClientsParams
from connfix.config.inventory import Environment
from connfix.config.records import Invalid
from connfix.db.pgbouncer_console import (
    BouncerClient,
    BouncerServer,
    _epoch,
    parse_version,
)
from connfix.diagnosis.pool_sizing import pgbouncer_plan, size_pools
from tests.builders import backend, client, diagnosis, environment, state


def test_clients_are_attributed_to_their_hosts_through_the_pooler() -> None:
    """web1 holds 7 clients in PgBouncer (pool 3 + overflow 2 = 5): a suspect; one of its
    clients is lent server 101, idle in transaction: that session is web1's; server 102
    is lent to no one: PgBouncer's own row. web3 connects directly."""
    env = environment()
    bouncer = state(
        [client(i, "10.0.0.1", link="s1" if i == 0 else "") for i in range(7)]
        + [client(10, "10.0.0.2")],
        [
            BouncerServer("app", "app", "active", 101, "s1", "c0"),
            BouncerServer("app", "app", "idle", 102, "s2", ""),
        ],
    )
    backends = [
        backend(101, "10.9.9.9", "idle in transaction", xact=5),
        backend(102, "10.9.9.9"),
        *(backend(200 + i, "10.0.0.3") for i in range(3)),
    ]
    d = diagnosis(env, backends, bouncer)
    rows = {r.host: r for r in d.by_host}
    assert d.suspects == ["web1"]
    assert (rows["web1"].pooled, rows["web1"].lent, rows["web1"].count) == (7, 1, 1)
    assert rows["web1"].idle_in_transaction == 1
    assert "7 of them through PgBouncer pgb" in rows["web1"].reasons[0]
    assert rows["(pgbouncer pgb)"].pgbouncer == "pgb" and rows["(pgbouncer pgb)"].count == 1
    assert (rows["web3"].count, rows["web3"].pooled) == (3, 0)
    assert "(not in inventory)" not in rows
    assert d.idle_in_transaction[0].host == "web1"
    (summary,) = d.pgbouncers
    assert summary["clients_by_host"] == {"web1": 7, "web2": 1}
    assert summary["kill_client"] is True


def _ctx(env: Environment, d: Any) -> Any:
    return SimpleNamespace(env=env, latest=d)


def _kill_choice(clients: list[Any], env: Environment) -> tuple[list[int], dict[str, int]]:
    bouncer = state(clients, [BouncerServer("app", "app", "active", 101, "s1", "c5")])
    d = diagnosis(env, [backend(101, "10.9.9.9", "active")], bouncer)
    assert d.suspects == ["web1"]
    chosen, excluded = KillClientsAction._choose(
        _ctx(env, d),
        KillClientsParams.validate({"older_than": "1m"}),
        [bouncer],
        {"10.0.0.1": env.hosts[0]},
    )
    return [c.client.id for c in chosen if c.client.id is not None], excluded


@pytest.mark.parametrize("client_state", ["active", "idle"])  # PgBouncer ≤ 1.24, ≥ 1.25
def test_kill_clients_ends_the_leaked_clients_not_the_quiet_pools(client_state: str) -> None:
    """web1, a quiet app: its pool (3, connected an hour ago at start, idle ever since:
    the OLDEST idle) and 2 leaked clients (connected 10 and 8 minutes ago, idle since),
    one lent a server (never chosen), one young, one of a protected application (not
    the service's: not counted as its). 7 of the service's: 4 beyond the pool of 3;
    newest connected first: the 2 leaked; the pool's, connected in the same second as
    the one still idle in the pool, are never ended."""
    env = environment(protected={"applications": ["batch"]})
    pool = [client(i, "10.0.0.1", idle=3500, connected=3600, state=client_state) for i in range(3)]
    leaked = [
        client(3, "10.0.0.1", idle=590, connected=600, state=client_state),
        client(4, "10.0.0.1", idle=470, connected=480, state=client_state),
    ]
    others = [client(5, "10.0.0.1", link="s1"), client(6, "10.0.0.1", idle=5, state=client_state)]
    protected = client(7, "10.0.0.1", state=client_state)
    batch = BouncerClient(**{**protected.__dict__, "application_name": "batch"})
    chosen, excluded = _kill_choice([*pool, *leaked, *others, batch], env)
    assert chosen == [4, 3]  # newest connected first; oldest idle would have been 0, 1, 2
    assert excluded["protected application"] == 1
    assert excluded["holds a server connection, or waits for one"] == 1
    assert excluded["idle less than 1m00s"] == 1
    assert excluded["connected in the same second as the pool's: cannot be told apart"] == 2
    assert excluded["within the host's pool"] == 1


def test_a_busy_apps_pool_is_in_use_and_every_leaked_client_ends() -> None:
    """A busy app uses its pool every second: its 3 clients are young, never candidates;
    the 6 leaked ones, whatever their order, are all beyond the pool."""
    env = environment()
    pool = [client(i, "10.0.0.1", idle=1, connected=3600) for i in range(3)]
    leaked = [client(10 + i, "10.0.0.1", idle=300, connected=400 - i) for i in range(6)]
    chosen, excluded = _kill_choice([*pool, *leaked], env)
    assert sorted(chosen) == [10, 11, 12, 13, 14, 15]
    assert excluded == {"idle less than 1m00s": 3}


def test_kill_clients_is_refused_on_a_pgbouncer_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from connfix.actions import pgbouncer_commands as actions

    env = environment()
    old = state([client(1, "10.0.0.1")], [], version="PgBouncer 1.18.0")
    monkeypatch.setattr(actions, "_read", lambda access: old)
    d = diagnosis(env, [], old)
    plan = KillClientsAction().plan(_ctx(env, d), KillClientsParams(hosts=["web1"]))
    assert plan.blocked is not None and "PgBouncer pgb is PgBouncer 1.18.0" in plan.blocked
    assert "KILL_CLIENT came with PgBouncer 1.24" in plan.blocked and not plan.operations


def test_versions_and_timestamps() -> None:
    assert parse_version("PgBouncer 1.18.0") == (1, 18, 0)
    assert parse_version("PgBouncer 1.24.1") >= (1, 24)
    assert parse_version("") == ()
    assert _epoch("2026-11-25 21:57:42 UTC") == 1795643862.0
    assert _epoch("") is None and _epoch("garbage") is None


def test_a_migration_keeps_room_for_the_direct_hosts() -> None:
    """17 usable, buffer 2; web3 stays direct: its pool with overflow (5) and a restart's
    overlap (5) are kept: PgBouncer may open 17 − 2 − 10 = 5. Two PgBouncers share it."""
    env = environment()
    d = diagnosis(env, [], state([], []))
    sizing = size_pools(env, d)
    kwargs: dict[str, Any] = {
        "db_host": "db",
        "db_port": 5432,
        "dbname": "app",
        "roles": ["app"],
        "admin_users": ["connfix"],
        "directory": "/etc/pgbouncer",
    }
    everyone = pgbouncer_plan(env, d, sizing, **kwargs)
    assert everyone.max_db_connections == 15 and not everyone.direct_hosts
    plan = pgbouncer_plan(env, d, sizing, direct=["web3"], version=(1, 18), **kwargs)
    assert (plan.max_db_connections, plan.direct_capacity, plan.safe) == (5, 10, True)
    assert "\nserver_idle_timeout = 10\n" in plan.ini
    assert "\n; max_user_client_connections = " in plan.ini  # 1.24+ only
    assert "auth_query = SELECT usename, passwd FROM pgbouncer.get_auth($1)" in plan.ini
    assert "SECURITY DEFINER" in plan.auth_sql and "rolvaliduntil" in plan.auth_sql
    assert "NOT rolsuper" in plan.auth_sql
    two = environment(
        pgbouncers=[
            {"name": "a", "admin_dsn": "host=a dbname=pgbouncer"},
            {"name": "b", "admin_dsn": "host=b dbname=pgbouncer"},
        ]
    )
    shared = pgbouncer_plan(two, d, size_pools(two, d), direct=["web3"], **kwargs)
    assert shared.max_db_connections == 2 and shared.pgbouncers == 2  # 5 // 2 each
    crowded = pgbouncer_plan(env, d, sizing, direct=["web1", "web2", "web3"], **kwargs)
    assert not crowded.safe and "NOT SAFE" in crowded.ini


def test_inventory_takes_one_pgbouncer_or_a_list_not_both() -> None:
    base: dict[str, Any] = {
        "database": {"dsn": "host=db dbname=app user=connfix"},
        "service": {"unit": "app.service", "pool_size": 3},
        "hosts": [{"name": "web1", "ssh_address": "10.0.0.1"}],
    }
    one = Environment.validate({**base, "pgbouncer": {"admin_dsn": "host=p dbname=x"}})
    assert [b.name for b in one.pgbouncers] == ["pgbouncer"]
    with pytest.raises(Invalid, match="not both"):
        Environment.validate({**base, "pgbouncer": {"admin_dsn": "host=p"}, "pgbouncers": []})
    with pytest.raises(Invalid, match="given twice"):
        Environment.validate(
            {
                **base,
                "pgbouncers": [
                    {"name": "a", "admin_dsn": "host=p"},
                    {"name": "a", "admin_dsn": "host=q"},
                ],
            }
        )
