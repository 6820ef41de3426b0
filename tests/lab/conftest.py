"""The lab tests' fixtures: the suite's lab, once per PostgreSQL version, built and
removed by the fixtures below (root)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.helpers import LAB_HOSTS, LAB_POOL_SIZE, PG_VERSIONS, Lab


@pytest.fixture(scope="session", params=PG_VERSIONS, ids=[f"pg{v}" for v in PG_VERSIONS])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The suite's lab, once per PostgreSQL version: built, then removed at the end."""
    from connfix.lab import lab as core

    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (namespaces, cgroups, systemd hosts)")
    handle = Lab(request.param)
    core.down()  # leftovers of an aborted earlier run, or the other version's lab
    core.up(
        hosts=LAB_HOSTS,
        max_connections=handle.max_connections,
        pool_size=LAB_POOL_SIZE,
        boot_seconds=0.2,
        postgres=str(request.param),
        reserved_connections=2,
    )
    yield handle
    core.down()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how each PostgreSQL version fared, so a CI log shows both."""
    outcomes = ("passed", "failed", "error", "skipped")
    if not any(
        f"[pg{v}" in getattr(r, "nodeid", "")
        for v in PG_VERSIONS
        for outcome in outcomes
        for r in terminalreporter.stats.get(outcome, [])
    ):
        return  # no lab test in this run
    for version in PG_VERSIONS:
        counts: dict[str, int] = {}
        for outcome in ("passed", "failed", "error", "skipped"):
            counts[outcome] = sum(
                1
                for report in terminalreporter.stats.get(outcome, [])
                if f"pg{version}" in getattr(report, "nodeid", "")
            )
        text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        terminalreporter.write_line(f"PostgreSQL {version} lab: {text or 'no test ran'}")


@pytest.fixture
def clean_lab(lab: Lab) -> Iterator[Lab]:
    """The lab without leaks before and after the test."""
    lab.reset()
    yield lab
    lab.reset()


@pytest.fixture
def lab_env(lab: Lab) -> Any:
    """The lab environment from its inventory."""
    from connfix.config.inventory_file import load_inventory

    return load_inventory(lab.inventory).environment("lab")


@pytest.fixture
def full_server(clean_lab: Lab) -> Iterator[list[psycopg.Connection[Any]]]:
    """Fill every ordinary slot of the lab's server for real, with `app` sessions."""
    fillers: list[psycopg.Connection[Any]] = []
    try:
        for _ in range(30):
            try:
                fillers.append(psycopg.connect(clean_lab.app_dsn(), autocommit=True))
            except psycopg.OperationalError as exc:
                assert "remaining connection slots are reserved" in str(exc)
                break
        else:
            pytest.fail("the server never filled up")
        yield fillers
    finally:
        for conn in fillers:
            conn.close()
