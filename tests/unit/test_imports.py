"""The import guard: each command's path, run in a fresh interpreter, imports only what
that command uses (start-up is most of a short command's time: docs/benchmarks.md). A
heavy import added to a path fails here; the successful diagnose on a real server is
tests/lab/test_imports.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import SERVER, SSH, TEMPLATES, modules_loaded

REFUSED = "host=127.0.0.1 port=1 connect_timeout=1 dbname=app user=connfix"
RUNBOOK = "src/connfix/engine/runbooks/too-many-connections.yaml"
JOURNAL = (  # a run refused at connect: a report connfix renders in full
    '{"ts": "2026-12-04T00:00:00.000Z", "seq": 0, "event": "run_start", "environment": "x",'
    ' "operator": "o", "hostname": "h", "connfix_version": "0", "runbook": {"name": "r",'
    ' "source": "s", "sha256": "0", "shadows": null, "healthy": "true", "steps": ["d"]},'
    ' "inventory": "i", "flags": {"dry_run": true, "yes": false, "interactive": false,'
    ' "mode": "triage"}, "pid": 1, "resumed_from": null, "resume_done": {}}\n'
    '{"ts": "2026-12-04T00:00:01.000Z", "seq": 1, "event": "run_end", "status":'
    ' "unreachable", "exit_status": 3, "message": "refused"}\n'
)

# command → the modules its path must never load (once its inputs are in connfix's cache:
# each case runs once before it is checked, as a user's second command would). hashlib
# loads OpenSSL's library: connfix.config.digest names cache entries and runbooks without
# it (a report still loads it, through Jinja's bytecode cache); pathlib is 4.5 ms of
# validate's start-up, whose files connfix.config.cache and the runbook's reader name by
# strings
CASES = {
    "diagnose --json": (
        ["diagnose", "--dsn", REFUSED, "--json"],
        SSH | SERVER | TEMPLATES | {"rich", "yaml", "pygments", "pydantic", "hashlib"},
    ),
    "diagnose": (
        ["diagnose", "--dsn", REFUSED],
        SSH | SERVER | TEMPLATES | {"yaml", "pydantic", "hashlib"},
    ),
    "terminate --dry-run": (
        ["terminate", "--dsn", REFUSED, "--dry-run", "--incidents-dir", "INCIDENTS"],
        SSH | SERVER | {"yaml", "pydantic"},  # its runbook is built from its flags: no YAML
    ),
    "runbook validate": (
        ["runbook", "validate", RUNBOOK],
        SSH | SERVER | {"psycopg", "pydantic", "yaml", "hashlib", "pathlib"},
    ),
    "report": (  # one line to say where the report went: no rich for that
        ["report", "INCIDENTS/20261204T000000Z-x"],
        SSH | SERVER | {"psycopg", "pydantic", "rich", "yaml", "connfix.diagnosis.model"},
    ),
    "--help": (["--help"], SSH | SERVER | TEMPLATES | {"psycopg", "pydantic", "yaml"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_command_imports_only_what_it_uses(case: str, tmp_path: Path) -> None:
    argv, forbidden = CASES[case]
    argv = [a.replace("INCIDENTS", str(tmp_path)) for a in argv]
    (tmp_path / "20261204T000000Z-x").mkdir()
    (tmp_path / "20261204T000000Z-x" / "journal.jsonl").write_text(JOURNAL)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    modules_loaded(argv, env=env)  # the first: what it validates is kept
    loaded = modules_loaded(argv, env=env)
    assert "connfix" in loaded
    assert not loaded & forbidden, f"{case} imports {sorted(loaded & forbidden)}"
    # the command's own module, and no other command's (click loads them lazily)
    own = {m for m in loaded if m.startswith("connfix.cli.") and m.endswith("_cmd")}
    if case != "--help":  # the help lists every command: it loads them all
        assert own == {f"connfix.cli.{argv[0]}_cmd"}, f"{case} imports {sorted(own)}"
    if case == "report":
        assert (tmp_path / "20261204T000000Z-x" / "report.md").is_file()


def test_the_guard_fails_on_a_heavy_import() -> None:
    """The guard sees what a path imports: paramiko pulled in before diagnose is caught
    (as a lazy import made eager would be), and so is pydantic when the environment is
    validated rather than built from the cache."""
    argv, forbidden = CASES["diagnose --json"]
    loaded = modules_loaded(argv, prelude="import paramiko")
    assert "paramiko" in loaded & forbidden
    cold = modules_loaded(argv, env={"CONNFIX_NO_CACHE": "1"})  # validated every time
    assert "pydantic" in cold & forbidden


def test_the_lazy_action_registry_names_each_action_by_its_own_name() -> None:
    from connfix.actions import ACTIONS, WHERE

    assert sorted(ACTIONS) == sorted(WHERE)
    for name in WHERE:
        assert ACTIONS[name].name == name
    with pytest.raises(KeyError):
        ACTIONS["no-such-action"]
    assert ACTIONS.get("no-such-action") is None and "terminate" in ACTIONS


def test_a_command_imports_only_the_actions_its_runbook_uses(tmp_path: Path) -> None:
    argv, _ = CASES["terminate --dry-run"]
    loaded = modules_loaded([a.replace("INCIDENTS", str(tmp_path)) for a in argv])
    actions = {m for m in loaded if m.startswith("connfix.actions.")}
    assert "connfix.actions.terminate" in actions
    assert not actions & {
        "connfix.actions.rolling_restart",
        "connfix.actions.pgbouncer_commands",
        "connfix.actions.advise",
    }, sorted(actions)


def test_a_runbook_read_before_is_not_parsed_again(tmp_path: Path) -> None:
    """The second command that reads the same runbook loads its parse from connfix's
    cache (connfix.config.yamlfile): PyYAML is not imported at all."""
    argv = ["runbook", "validate", RUNBOOK]
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert "yaml" in modules_loaded(argv, env=env)  # parsed, and kept
    assert "yaml" not in modules_loaded(argv, env=env)
    assert "yaml" in modules_loaded(argv, env={**env, "CONNFIX_NO_CACHE": "1"})


def test_a_runbooks_expressions_checked_before_leave_jinja_unloaded(tmp_path: Path) -> None:
    """The second command that validates the same runbook finds its expressions in
    connfix's cache (connfix.engine.expressions): Jinja (about 25 ms) is not imported to
    check them again, nor to know which files the cache depends on."""
    argv = ["runbook", "validate", RUNBOOK]
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert "jinja2" in modules_loaded(argv, env=env)  # checked, and kept
    assert "jinja2" not in modules_loaded(argv, env=env)
    assert "jinja2" in modules_loaded(argv, env={**env, "CONNFIX_NO_CACHE": "1"})


def test_a_commands_own_runbook_leaves_jinja_to_the_report_warm_up() -> None:
    """A terminate or a restart builds its runbook from its flags and evaluates its one
    condition at its end: Jinja (about 25 ms) is not imported before the run's first
    step, but by the report's warm-up while the run waits (docs/benchmarks.md, round
    eight), or by the first condition checked or evaluated."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from connfix.engine.runbook import command_runbook\n"
        "command_runbook('terminate', 'terminate', {})\n"
        "command_runbook('restart', 'rolling_restart', {})\n"
        "print('jinja2' in sys.modules)\n"
        "from connfix.engine import expressions\n"
        "print(expressions.evaluate(\"severity == 'ok'\", {'severity': 'ok'}))\n"
        "print('jinja2' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["False", "True", "True"], out


def test_the_report_s_warm_up_loads_what_the_report_imports(tmp_path: Path) -> None:
    """The warm-up a run begins while it waits on its hosts or the server imports what
    rendering the report would import at the run's end: Jinja with the compiled
    template, the chart's pygal and the pool section's sizing."""
    import subprocess
    import sys

    code = (
        "import sys, threading\n"
        "from connfix.record import report\n"
        "before = {m for m in ('jinja2', 'pygal', 'connfix.diagnosis.pool_sizing')"
        " if m in sys.modules}\n"
        "report.warm_up()\n"
        "for t in threading.enumerate():\n"
        "    if t.name == 'connfix-report-warm-up':\n"
        "        t.join(60)\n"
        "print(sorted(before), all(m in sys.modules for m in"
        " ('jinja2', 'pygal', 'connfix.diagnosis.pool_sizing')))\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    ).stdout.strip()
    assert out == "[] True", out
