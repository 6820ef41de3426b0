"""Managed-service profiles: the usable limit per platform, the platform's sessions kept
apart, and an inventory that asks for a superuser a platform never hands out. On a real
server (the managed role model emulated on PostgreSQL 16+): tests/lab/test_managed.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from connfix.config.inventory import Environment
from connfix.config.platforms import NAMES, PLATFORMS
from connfix.config.records import Invalid
from connfix.diagnosis.analysis import analyse, usable_connections
from connfix.diagnosis.model import PLATFORM_ROW
from tests.builders import backend, info


def managed(platform: str, **database: Any) -> Environment:
    return Environment.validate(
        {
            "database": {"dsn": "host=db dbname=app user=ops", "platform": platform, **database},
            "service": {"unit": "app.service", "pool_size": 4},
            "hosts": [{"name": "web1", "ssh_address": "10.0.0.1"}],
        }
    )


def test_the_usable_limit_follows_each_providers_documented_reserve() -> None:
    server = replace(info(100, 3, 0), rds_superuser_reserved_connections=2)
    # RDS/Aurora: max − superuser_reserved − rds.rds_superuser_reserved_connections
    # (AWS: 100 − 3 − 2 = 95)
    assert usable_connections(server, "rds") == 95
    assert usable_connections(server, "aurora") == 95
    # the setting is RDS's: anywhere else a server that has it is not asked
    assert usable_connections(server, "self-managed") == 97
    assert usable_connections(server, "cloudsql") == 97
    # Azure: "maximum user connections" = max_connections − 15 (its table: 50 → 35)
    assert usable_connections(info(50, 3, 0), "azure") == 35
    assert usable_connections(info(50, 15, 0), "azure") == 35  # the 15 counted once
    # reserved_connections (16+) is subtracted on every platform
    assert usable_connections(info(100, 3, 5, 160000), "azure") == 80


def test_the_platforms_sessions_are_theirs_never_a_suspect() -> None:
    rows = [backend(i, "10.0.0.1") for i in range(3)]
    # the platform's agent, from an address that is no inventory host, idle for hours
    rows += [backend(10 + i, "10.9.9.9", idle=9000, user="rdsadmin") for i in range(6)]
    d = analyse("prod", managed("rds"), info(), rows, [])
    row = next(u for u in d.by_host if u.host == PLATFORM_ROW)
    assert (row.count, row.suspect, row.client_addr) == (6, False, None)
    assert d.platform_sessions == 6 and d.platform == "rds"
    assert d.suspects == []
    # the same rows on a self-managed server: rdsadmin is nobody's, its address is apart
    plain = analyse("prod", managed("self-managed"), info(), rows, [])
    assert PLATFORM_ROW not in [u.host for u in plain.by_host]
    assert plain.platform_sessions == 0


@pytest.mark.parametrize("platform", [p for p in NAMES if p != "self-managed"])
def test_a_superuser_way_in_is_refused_on_a_managed_platform(platform: str) -> None:
    with pytest.raises(Invalid) as caught:
        managed(platform, admin_dsn="host=db dbname=app user=postgres")
    message = str(caught.value)
    assert "admin_dsn" in message and "hands out no superuser" in message
    assert PLATFORMS[platform].way_in.split(" ")[0] in message
    managed(platform, reserved_dsn="host=db dbname=app user=master")  # the way in there


def test_an_unknown_platform_is_refused_naming_the_choices() -> None:
    with pytest.raises(Invalid) as caught:
        managed("heroku")
    assert "platform" in str(caught.value) and "cloudsql" in str(caught.value)


def test_every_managed_profile_cites_its_provider_and_names_a_way_in() -> None:
    for profile in PLATFORMS.values():
        assert profile.way_in
        if profile.managed:
            assert profile.sources and all(s.startswith("https://") for s in profile.sources)
            assert profile.roles and profile.admin_role


def test_pool_sizing_counts_the_platforms_reserve_and_its_sessions() -> None:
    from connfix.diagnosis.pool_sizing import size_pools

    server = replace(info(100, 3, 0), rds_superuser_reserved_connections=2)
    rows = [backend(i, "10.0.0.1") for i in range(3)]
    rows += [backend(10 + i, None, user="rdsadmin") for i in range(4)]
    env = managed("rds")
    sizing = size_pools(env, analyse("prod", env, server, rows, []))
    assert sizing.usable_connections == 95 and sizing.platform_reserved_connections == 2
    assert "− the platform's reserve 2" in sizing.notes[0]
    assert sizing.other_clients >= 4  # the platform's sessions are kept room for
