"""Zero-setup without a server: bad input refused, the share-and-age rule on its own."""

from __future__ import annotations

from dataclasses import replace

from tests.helpers import invoke


def test_bad_zero_setup_input() -> None:
    env = {k: "" for k in ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")}
    nothing = invoke("diagnose", env=env)
    assert nothing.exit_code == 2 and "give ENVIRONMENT" in nothing.output
    both = invoke("diagnose", "prod", "--dsn", "host=db")
    assert both.exit_code == 2 and "not both" in both.output
    secret = invoke("diagnose", "--dsn", "host=db user=x password=hunter2")
    assert secret.exit_code == 2 and "hunter2" not in secret.output
    assert "password" in secret.output
    stray = invoke("diagnose", "prod", "--write-inventory", "x.yaml")
    assert stray.exit_code == 2 and "--write-inventory goes with --dsn" in stray.output


def test_suspects_by_share_and_age() -> None:
    """10.0.0.7 holds 8 of 12 (67%), idle up to 20 minutes: a suspect; 10.0.0.8 holds 4,
    young: not; 10.0.0.9 keeps a transaction idle for 2 minutes: a suspect."""
    from connfix.db.pg import ServerInfo
    from connfix.diagnosis import zero_setup
    from connfix.diagnosis.analysis import analyse
    from tests.builders import backend

    env = zero_setup.environment_for("host=db dbname=app user=connfix")
    rows = [backend(i, "10.0.0.7", idle=1200) for i in range(8)]
    rows += [backend(20 + i, "10.0.0.8", idle=5) for i in range(3)]
    rows += [backend(30, "10.0.0.9", "idle in transaction", xact=120)]
    info = ServerInfo("connfix", False, True, True, "x", 150004, 40, 3, 0, 1, "app")
    d = zero_setup.suspects_by_share(
        analyse("db", env, info, rows, []), env, {"10.0.0.7": "web7.internal"}
    )
    assert d.suspects == ["web7.internal", "10.0.0.9"]
    by = {u.host: u for u in d.by_host}
    assert "holds 8 of 12 connections (67%)" in by["web7.internal"].reasons[0]
    assert not by["10.0.0.8"].suspect
    assert d.severity == "warning" and d.zero_setup
    young = [replace(b, idle_seconds=5) for b in rows[:8]]
    calm = zero_setup.suspects_by_share(analyse("db", env, info, young, []), env, {})
    assert calm.suspects == []
