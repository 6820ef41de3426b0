"""The diagnosis arithmetic on synthetic rows: limits, severity, attribution, pool math."""

from __future__ import annotations

from connfix.db import pg
from connfix.diagnosis.analysis import analyse, usable_connections
from connfix.diagnosis.model import (
    HIDDEN,
    HIDDEN_STATE,
    LOCAL,
    NOT_IN_INVENTORY,
    ConnectionLimit,
)
from tests.builders import backend, env, info


def test_usable_connections_subtracts_both_reserves() -> None:
    # PostgreSQL 16+: 100 − 3 superuser-reserved − 5 reserved = 92
    assert usable_connections(info(100, 3, 5, 160000)) == 92
    assert usable_connections(info(5, 3, 5)) == 0  # never negative


def test_only_the_host_over_its_pool_is_a_suspect() -> None:
    rows = [backend(i, "10.0.0.1") for i in range(4)]  # web1: 4 of 4
    rows += [backend(10 + i, "10.0.0.2") for i in range(7)]  # web2: 7 of 4 → suspect
    rows += [backend(20 + i, "10.0.0.3") for i in range(6)]  # web3: 6 of its own 6
    d = analyse("prod", env(), info(), rows, [])
    assert d.suspects == ["web2"]
    web2 = d.by_host[0]
    assert (web2.host, web2.count, web2.pool_size) == ("web2", 7, 4)
    assert web2.reasons == ["holds 7 connections, pool size 4 (+3)"]
    assert {h.host: h.count for h in d.by_host} == {"web1": 4, "web2": 7, "web3": 6}


def test_old_idle_in_transaction_makes_a_suspect_even_within_the_pool() -> None:
    rows = [
        backend(1, "10.0.0.1", "idle in transaction", idle=90, xact=120),
        backend(2, "10.0.0.1"),
        backend(3, "10.0.0.2", "idle in transaction", idle=5, xact=5),
    ]
    d = analyse("prod", env(idle_in_transaction_suspect_age="1m"), info(), rows, [])
    assert d.suspects == ["web1"]
    assert d.by_host[0].reasons == ["1 idle in transaction for over 60s"]
    assert [s.pid for s in d.idle_in_transaction] == [1, 3]  # oldest transaction first
    assert d.idle_in_transaction[0].xact_seconds == 120


def test_unknown_addresses_local_sockets_and_hidden_rows_are_shown_not_dropped() -> None:
    rows = [
        backend(1, "192.168.9.9"),
        backend(2, None),
        backend(3, None, visible=False),
        backend(4, "10.0.0.1"),
    ]
    d = analyse("prod", env(), info(), rows, [])
    names = {h.host: h.count for h in d.by_host}
    assert names == {NOT_IN_INVENTORY: 1, LOCAL: 1, HIDDEN: 1, "web1": 1, "web2": 0, "web3": 0}
    assert d.client_backends == 4
    assert not d.visibility_complete and d.hidden_sessions == 1
    assert d.by_state == {"idle": 3, HIDDEN_STATE: 1}


def test_severity_follows_thresholds() -> None:
    # usable 17: 13 → 76% ok; 14 → 82% warning; 17 → 100% critical
    # (from outside the inventory: no host over its pool, no suspect)
    for count, severity in ((13, "ok"), (14, "warning"), (17, "critical")):
        rows = [backend(i, "192.168.9.9") for i in range(count)]
        assert analyse("prod", env(), info(), rows, []).severity == severity


def test_a_leak_suspect_is_never_ok() -> None:
    """Utilization 41% would be ok, but web1 holds 7 over a pool of 4: warning, and the
    reason names it (diagnose exits 1)."""
    rows = [backend(i, "10.0.0.1") for i in range(7)]
    d = analyse("prod", env(), info(), rows, [])
    assert d.suspects == ["web1"] and d.severity == "warning"
    assert "leak suspect(s): web1" in d.severity_reasons


def test_connection_limits_raise_severity() -> None:
    near = [ConnectionLimit("role", "app", 10, 8)]
    at_cap = [ConnectionLimit("database", "app", 5, 5)]
    assert analyse("prod", env(), info(), [], near).severity == "warning"
    d = analyse("prod", env(), info(), [], at_cap)
    assert d.severity == "critical"
    assert d.severity_reasons == ["database 'app' is at its CONNECTION LIMIT (5/5)"]


def test_blocking_is_inverted_from_blocked_by() -> None:
    rows = [
        backend(1, "10.0.0.1", "idle in transaction", xact=30),
        backend(2, "10.0.0.2", "active", blocked_by=[1]),
        backend(3, "10.0.0.2", "active", blocked_by=[1]),
    ]
    d = analyse("prod", env(), info(), rows, [])
    assert d.idle_in_transaction[0].blocking == [2, 3]


def test_pool_check() -> None:
    # web1 4 + web2 4 + web3 6 = 14 ≤ 17 usable − 2 buffer = 15: safe
    check = analyse("prod", env(), info(), [], []).pool_check
    assert (check.servers, check.total, check.limit, check.safe) == (3, 14, 15, True)
    # max_connections 15: usable 12, limit 10 < 14: not safe; with one host restarting
    # (its old and new pools at once): 10 // (3 servers + 1) = 2 each (3 would need 12)
    check = analyse("prod", env(), info(15), [], []).pool_check
    assert (check.total, check.limit, check.safe, check.recommended_pool_size) == (14, 10, False, 2)
    assert check.sentence() == (
        "3 servers × 4 = 14 > 10 (12 usable − 2 buffer): NOT safe;"
        " pool size 2 per server would fit, rolling restarts included"
    )


def test_query_variants_follow_the_server_version() -> None:
    files = ["x.sql", "x.pg14.sql", "x.pg16.sql", "y.sql"]
    assert pg.pick_variant(files, "x", 120000) == "x.sql"
    assert pg.pick_variant(files, "x", 140011) == "x.pg14.sql"
    assert pg.pick_variant(files, "x", 150004) == "x.pg14.sql"
    assert pg.pick_variant(files, "x", 180001) == "x.pg16.sql"
    assert pg.pick_variant(files, "y", 180001) == "y.sql"
    assert pg.pick_variant(files, "x", None) == "x.sql"


def test_libpq_lines_become_sentences() -> None:
    from connfix.db.pg import server_message

    exc = Exception(
        'connection to server at "10.0.0.9", port 5432 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?\n"
    )
    assert server_message(exc) == (
        'connection to server at "10.0.0.9", port 5432 failed: Connection refused. Is the'
        " server running on that host and accepting TCP/IP connections?"
    )
    assert server_message(Exception("FATAL:  sorry, too many clients already\n")) == (
        "sorry, too many clients already"
    )


def test_an_empty_application_name_reads_the_same_everywhere() -> None:
    """(none) in the by-application line, the idle-in-transaction table and the metrics
    — never blank in one and (none) in another."""
    import io
    from dataclasses import replace

    from connfix.cli import render
    from connfix.record import metrics

    rows = [
        replace(backend(1, "10.0.0.1", "idle in transaction", xact=90), application_name=""),
        replace(backend(2, "10.0.0.1"), application_name=""),
    ]
    d = analyse("prod", env(), info(), rows, [])
    out = io.StringIO()
    render.diagnosis(render.Terminal.from_process({"COLUMNS": "200"}, out, io.StringIO()), d)
    text = out.getvalue()
    assert "by application: (none) 2" in text
    iit_row = next(line for line in text.splitlines() if line.startswith("│ 1 "))
    assert "(none)" in iit_row
    assert 'application="(none)"' in metrics.text([d]).decode()
