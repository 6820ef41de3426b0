"""What every command pays at its start and its end (docs/benchmarks.md), and that it
stays correct while paying less: connfix's cache (connfix.config.cache) and the report
template compiled once per machine through it, in fresh interpreters as real commands
are; the exit that skips CPython's teardown (connfix.cli.leave); the verdict said
before the report is rendered."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connfix.config import cache
from tests.unit.test_imports import JOURNAL


def test_the_cache_is_a_private_directory_of_this_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    where = cache.directory("templates")
    assert where == str(tmp_path / "c" / "connfix" / "templates")
    for folder in (Path(where), Path(where).parent):
        assert folder.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("how", ["group-writable", "a link", "off", "relative"])
def test_no_cache_where_others_could_write_code_into_it(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "c"
    base.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(base))
    if how == "group-writable":
        (base / "connfix").mkdir(mode=0o700)
        (base / "connfix").chmod(0o770)
    elif how == "a link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        (base / "connfix").symlink_to(tmp_path / "elsewhere")
    elif how == "off":
        monkeypatch.setenv("CONNFIX_NO_CACHE", "1")
    else:  # the XDG spec: a relative path is ignored (then ~/.cache, here made unusable)
        monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
        monkeypatch.setenv("HOME", str(base / "home-that-is-a-file"))
        (base / "home-that-is-a-file").write_text("")
    assert cache.directory("templates") is None


def _report(incident: Path, cache_home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "connfix", "report", str(incident), *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(cache_home)},
        timeout=60,
        check=False,
    )


def test_the_report_template_is_compiled_once_and_loaded_after(tmp_path: Path) -> None:
    """The first report compiles the template and stores it; the next process loads it
    (the file is not written again) and writes the same report; a cache file damaged
    on disk is compiled again, never trusted, never an error."""
    incident = tmp_path / "incidents" / "20261204T000000Z-x"
    incident.mkdir(parents=True)
    (incident / "journal.jsonl").write_text(JOURNAL)
    first = _report(incident, tmp_path / "c")
    assert first.returncode == 0, first.stderr
    report = (incident / "report.md").read_text()
    (stored,) = (tmp_path / "c" / "connfix" / "templates").iterdir()
    written = stored.stat().st_mtime_ns
    second = _report(incident, tmp_path / "c")
    assert second.returncode == 0, second.stderr
    assert stored.stat().st_mtime_ns == written  # loaded, not compiled and stored again
    assert (incident / "report.md").read_text() == report
    stored.write_bytes(stored.read_bytes()[:100] + b"\x00garbage")
    third = _report(incident, tmp_path / "c")
    assert third.returncode == 0, third.stderr
    assert (incident / "report.md").read_text() == report
    assert stored.stat().st_mtime_ns != written  # compiled again and stored


def _leave(code: str) -> subprocess.CompletedProcess[str]:
    program = (
        "import atexit, sys, threading, time\n"
        "from connfix.cli import leave\n"
        "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n" + code
    )
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(
    ("code", "status", "out", "err"),
    [
        ("print('out', end=''); leave(3)", 3, "out", "atexit ran\n"),
        ("sys.stdout.write('x' * 100000); leave(None)", 0, "x" * 100000, "atexit ran\n"),
        ("leave('a message')", 1, "", "a message\natexit ran\n"),
        # a non-daemon thread still running: the ordinary exit, which waits for it
        (
            "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
            "leave(4)",
            4,
            "thread done\n",
            "atexit ran\n",
        ),
    ],
)
def test_leaving_keeps_the_status_the_output_and_the_atexit_functions(
    code: str, status: int, out: str, err: str
) -> None:
    done = _leave(code)
    assert (done.returncode, done.stdout, done.stderr) == (status, out, err)


def test_the_verdict_is_printed_before_the_report_is_rendered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's outcome reaches the operator as soon as it is journaled; the report
    is written after it, and still before the command exits (its path printed last)."""
    from click.testing import CliRunner

    from connfix.cli import cli
    from connfix.record import report

    seen: list[str] = []
    real = report.write

    def write(*args: object, **kwargs: object) -> report.Written:
        sys.stdout.flush()
        seen.append(sys.stdout.buffer.getvalue().decode())  # type: ignore[attr-defined]
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(report, "write", write)
    refused = "host=127.0.0.1 port=1 connect_timeout=1 dbname=app user=connfix"
    argv = ["terminate", "--dsn", refused, "--dry-run", "--incidents-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 3, result.output
    (before,) = seen
    assert "unreachable:" in before and "incident: " in before and "report:" not in before
    assert result.stdout.index("report: ") > result.stdout.index("unreachable:")
    (incident,) = tmp_path.iterdir()
    assert (incident / "report.md").is_file()


# Before anything of the command line is imported (click, here), the collector's first
# threshold is already raised; and it still collects: a cycle made afterwards is freed.
_THRESHOLD_AT_IMPORT = """
import gc, sys, weakref
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "click" and not seen:
            seen.append(gc.get_threshold()[0])
        return None
sys.meta_path.insert(0, Watch())
sys.argv = ["connfix", "--version"]
import atexit
def after():
    class Node: pass
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    kept = [[] for _ in range(200_001)]  # twice the threshold: the collector has run
    print(seen[0], gc.get_threshold()[0], gone() is None, len(kept))
atexit.register(after)
from connfix.__main__ import run
run()
"""


def test_the_collector_threshold_is_raised_before_the_command_line_is_imported() -> None:
    from importlib.metadata import entry_points

    from connfix.__main__ import GC_THRESHOLD

    (script,) = entry_points(group="console_scripts", name="connfix")
    assert script.value == "connfix.__main__:run"  # the installed command goes through it
    proc = subprocess.run(
        [sys.executable, "-c", _THRESHOLD_AT_IMPORT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    at_import, at_exit, cycle_freed, _ = proc.stdout.split()[-4:]
    assert int(at_import) == int(at_exit) == GC_THRESHOLD
    assert cycle_freed == "True"


CHECKS = """
import sys
from connfix.engine import expressions
compiled = []
real = expressions._check
expressions._check = lambda e: (compiled.append(e), real(e))[1]
for text in sys.argv[1:]:
    try:
        expressions.check(text)
    except expressions.ExpressionError as exc:
        compiled.append("refused: " + str(exc)[:20])
expressions.remember_checked()
print(repr(compiled))
"""


def test_a_condition_checked_before_is_not_compiled_again_to_be_checked(tmp_path: Path) -> None:
    """The second process finds the expressions a runbook's check found valid in
    connfix's cache; one never checked, or refused, is checked (and refused) each time;
    a damaged entry means checking again."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("CONNFIX_NO_CACHE", None)

    def run(*texts: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", CHECKS, *texts],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return ast.literal_eval(out)  # a list of str printed with repr

    good, bad = "free_slots > 2 and idle > 0", "nope > 1"
    assert run(good, bad) == [good, bad, "refused: unknown name(s) nope"]
    assert run(good, bad) == [bad, "refused: unknown name(s) nope"]  # good: not compiled
    assert run("severity == 'ok'", good) == ["severity == 'ok'"]
    (entry,) = (tmp_path / "cache" / "connfix" / "expressions").glob("*.marshal")
    entry.write_bytes(b"damaged")
    assert run(good) == [good]
    env["CONNFIX_NO_CACHE"] = "1"
    assert run(good) == [good]


def test_a_diagnosis_s_names_are_built_once_for_all_its_conditions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step's conditions and the healthy check evaluate over the same picture: its
    names are built once per diagnosis and totals, again when either changes."""
    from typing import cast

    from connfix.diagnosis.analysis import analyse
    from connfix.engine import context, expressions
    from tests.builders import backend, env, info

    environment = env()
    first = analyse("prod", environment, info(), [backend(1, "10.0.0.11")], [])
    ctx = context.RunContext("prod", environment, *cast(Any, [None, None, None, True, None, None]))
    built: list[int] = []
    real = expressions.context
    monkeypatch.setattr(expressions, "context", lambda *a: (built.append(1), real(*a))[1])
    assert ctx.holds("client_backends == 1", first)
    assert ctx.holds("severity == 'ok' and terminated == 0", first)
    assert len(built) == 1
    ctx.totals["terminated"] = 3
    assert ctx.holds("terminated == 3", first)  # the totals changed: built again
    assert len(built) == 2
    second = analyse("prod", environment, info(), [], [])
    assert ctx.holds("client_backends == 0", second)  # a new diagnosis: built again
    assert ctx.holds("client_backends == 1", first)
    assert len(built) == 4


STARTED_UP = """
import gc, sys
from connfix import started_up
if sys.argv[1] == "command":
    gc.set_threshold(100_000)
started_up()
first = gc.get_freeze_count()
kept = [object() for _ in range(10)]
started_up()
print(first, gc.get_freeze_count())
"""


def test_a_run_s_start_up_is_frozen_once_and_only_in_the_installed_command() -> None:
    """connfix.started_up: gc.freeze once per process where connfix.__main__ raised the
    collector's threshold (the installed command); a library or the tests: untouched."""

    def counts(mode: str) -> list[int]:
        out = subprocess.run(
            [sys.executable, "-c", STARTED_UP, mode], capture_output=True, text=True, check=True
        )
        return [int(n) for n in out.stdout.split()]

    first, again = counts("command")
    assert first > 1_000 and again == first  # frozen, and only once
    assert counts("library") == [0, 0]


def test_a_host_whose_connection_cannot_be_set_up_is_left_to_the_diagnosis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """engine.start begins the health checks' logins early; a host whose connection
    cannot even be made (its ~/.ssh/config gives a port that is no number) is skipped
    there, not an error before the run's journal exists: the first diagnosis meets it
    again and reports it, as it did before the logins began early."""
    from connfix.engine import start
    from tests.fakes import environment

    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("Host *\n  Port not-a-number\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    env = environment()
    assert env.ssh.port is None  # the port comes from ~/.ssh/config
    assert start._log_in_early(env) == {}
