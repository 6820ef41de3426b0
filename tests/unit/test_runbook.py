"""Runbooks: the shipped one is valid; every kind of bad runbook is refused with file,
line and field, exit status 2, and nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from connfix import RunbookError
from connfix.cli import cli
from connfix.engine import expressions
from connfix.engine.runbook import load_runbook_file, resolve_runbook
from tests.helpers import connfix_run

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
version: 1
name: test
summary: a test runbook
healthy: "severity == 'ok'"
steps:
  - id: diagnose
    action: diagnose
  - id: pause
    action: wait
    when: "utilization >= 0.5"
    params:
      duration: 1s
  - id: verify
    action: verify
    params:
      timeout: 10s
      interval: 1s
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "runbook.yaml"
    path.write_text(text)
    return path


def test_shipped_runbook_is_valid_and_the_same_in_both_places() -> None:
    top = ROOT / "runbooks" / "too-many-connections.yaml"
    packaged = ROOT / "src" / "connfix" / "engine" / "runbooks" / "too-many-connections.yaml"
    assert top.read_bytes() == packaged.read_bytes()
    book = resolve_runbook(None)
    assert book.name == "too-many-connections"
    assert book.steps[0].action == "diagnose"
    assert len(book.sha256) == 64


def test_good_runbook(tmp_path: Path) -> None:
    book = load_runbook_file(write(tmp_path, GOOD))
    assert [s.id for s in book.steps] == ["diagnose", "pause", "verify"]
    assert book.steps[1].params.duration == 1.0  # type: ignore[attr-defined]
    assert book.steps[1].line == 8
    assert not book.steps[1].confirm  # wait changes nothing: no confirmation by default


# (name, runbook text, expected line, fragments of the message)
BAD = [
    (
        "unknown action",
        GOOD.replace("action: wait", "action: reboot"),
        9,
        [
            "steps[1].action",
            "unknown action 'reboot'",
            "actions: advise, cancel, diagnose, pgbouncer_kill_clients, pgbouncer_pause,"
            " pgbouncer_reconnect, pgbouncer_resume, rolling_restart, terminate, verify, wait",
        ],
    ),
    (
        "duplicate id",
        GOOD.replace("id: verify", "id: pause"),
        13,
        ["steps[2].id", "duplicate step id 'pause' (also steps[1])"],
    ),
    (
        "bad expression syntax",
        GOOD.replace('"utilization >= 0.5"', '"utilization >="'),
        10,
        ["steps[1].when", "not a valid expression"],
    ),
    (
        "unknown name in expression",
        GOOD.replace('"utilization >= 0.5"', '"utilisation > 1"'),
        10,
        ["steps[1].when", "unknown name(s) utilisation"],
    ),
    (
        "unknown name in healthy",
        GOOD.replace("\"severity == 'ok'\"", '"sevrity"'),
        4,
        ["healthy", "unknown name(s) sevrity"],
    ),
    (
        "bad duration",
        GOOD.replace("duration: 1s", "duration: soon"),
        12,
        ["steps[1].params.duration", "not a duration"],
    ),
    (
        "duration without unit",
        GOOD.replace("duration: 1s", "duration: 5"),
        12,
        ["steps[1].params.duration", "needs a unit"],
    ),
    (
        "duration out of range",
        GOOD.replace("timeout: 10s", "timeout: 2d"),
        16,
        ["steps[2].params.timeout", "must be between 1s and 1h00m"],
    ),
    (
        "interval too short",
        GOOD.replace("interval: 1s", "interval: 10ms"),
        17,
        ["steps[2].params.interval", "must be between"],
    ),
    (
        "unknown param",
        GOOD.replace("duration: 1s", "duration: 1s\n      jitter: 2s"),
        13,
        ["steps[1].params.jitter", "unknown field", "action wait takes"],
    ),
    (
        "missing required param",
        GOOD.replace("    params:\n      duration: 1s\n", ""),
        8,
        ["steps[1].params.duration", "required"],
    ),
    (
        "unknown step field",
        GOOD.replace("    when:", "    whenever: x\n    when:"),
        10,
        ["steps[1].whenever", "unknown field"],
    ),
    (
        "missing healthy",
        GOOD.replace("healthy: \"severity == 'ok'\"\n", ""),
        1,
        ["healthy", "required"],
    ),
    (
        "first step not diagnose",
        GOOD.replace("  - id: diagnose\n    action: diagnose\n", ""),
        7,
        ["steps[0].action", "first step must be a diagnose"],
    ),
    (
        "YAML syntax error",
        GOOD.replace("  - id: verify", "  - id: [verify"),
        14,
        ["YAML syntax error"],
    ),
    (
        "bad on_failure",
        GOOD.replace("    when:", "    on_failure: retry\n    when:"),
        10,
        ["steps[1].on_failure", "'halt' or 'continue'"],
    ),
    ("bad step id", GOOD.replace("id: pause", "id: 'Pause Now!'"), 8, ["steps[1].id", "pattern"]),
    (
        "confirm not a boolean",
        GOOD.replace("    when:", "    confirm: maybe\n    when:"),
        10,
        ["steps[1].confirm", "boolean"],
    ),
    ("no steps", GOOD.split("steps:")[0] + "steps: []\n", 5, ["steps", "at least 1"]),
    (
        "approval of a read-only step",
        GOOD.replace("    when:", "    approval: required\n    when:"),
        10,
        ["steps[1].approval", "action wait changes nothing: there is nothing to approve"],
    ),
    (
        "approval not required or none",
        GOOD.replace("    when:", "    approval: maybe\n    when:"),
        10,
        ["steps[1].approval", "'required' or 'none'"],
    ),
    (
        "object-constructing tag",
        GOOD.replace("name: test", "name: !!python/name:os.system"),
        2,
        ["tag", "not allowed"],
    ),
    (
        "duplicate key",
        GOOD.replace("name: test", "name: test\nname: other"),
        3,
        ["duplicate key 'name'"],
    ),
    (
        "expression in params",
        GOOD.replace("duration: 1s", "duration: 1s\n      until: 'x.y'"),
        13,
        ["steps[1].params.until", "unknown name(s) x"],
    ),
    ("not a mapping", "- diagnose\n", 1, ["must be a mapping"]),
]


@pytest.mark.parametrize(
    ("text", "line", "fragments"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_runbook_names_file_line_and_field(
    tmp_path: Path, text: str, line: int, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RunbookError) as caught:
        load_runbook_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("text", "line"), [(b[1], b[2]) for b in BAD[:8]], ids=[b[0] for b in BAD[:8]]
)
def test_bad_runbook_exits_2_and_nothing_runs(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    result = CliRunner().invoke(cli, ["runbook", "validate", str(path)])
    assert result.exit_code == 2 and f"{path}:{line}:" in result.output
    incidents = tmp_path / "incidents"
    # triage refuses an invalid runbook before it connects or journals anything
    inventory = ROOT / "inventory.example.yaml"
    result = connfix_run("triage", inventory, incidents, "--runbook", str(path), environment="prod")
    assert result.exit_code == 2, result.output
    assert f"{path}:{line}:" in result.output
    assert not incidents.exists()  # no journal: nothing ran


def test_validate_reports_every_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("action: wait", "action: reboot"))
    result = CliRunner().invoke(cli, ["runbook", "validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"ok {good}: test, 3 steps" in result.output
    assert f"invalid {bad}:9:" in result.output


def test_show_prints_the_steps_as_a_plan() -> None:
    result = CliRunner().invoke(cli, ["runbook", "show", "too-many-connections"])
    assert result.exit_code == 0
    assert "healthy when: severity == 'ok' and not suspects" in result.output
    assert "1. diagnose — diagnose" in result.output


def test_unknown_runbook_name() -> None:
    result = CliRunner().invoke(cli, ["runbook", "show", "nosuch"])
    assert result.exit_code == 2
    assert "no runbook named 'nosuch'" in result.output


def test_sandbox_refuses_unsafe_attribute_access() -> None:
    with pytest.raises(expressions.ExpressionError):
        expressions.evaluate("severity.__class__.__mro__[1].__subclasses__()", {"severity": "ok"})


def test_expression_errors_at_evaluation_are_reported() -> None:
    with pytest.raises(expressions.ExpressionError, match="cannot evaluate"):
        expressions.evaluate("by_state['idle'] > 1", {"by_state": {}})


def test_a_cancel_step_validates_and_refuses_idle_states(tmp_path: Path) -> None:
    good = tmp_path / "cancel.yaml"
    good.write_text(
        "version: 1\nname: c\nsummary: c\nhealthy: \"severity == 'ok'\"\nsteps:\n"
        "  - {id: diagnose, action: diagnose}\n"
        "  - {id: stuck, action: cancel, params: {older_than: 5m}}\n"
    )
    step = load_runbook_file(good).steps[1]
    assert step.params.signal == "cancel" and step.params.states == ["active"]
    assert step.mutating
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("older_than: 5m", "states: [idle]"))
    with pytest.raises(RunbookError, match="cancel ends a running statement"):
        load_runbook_file(bad)


def test_a_condition_names_exactly_the_diagnosis_fields_and_the_extra_names() -> None:
    import dataclasses

    from connfix.diagnosis.model import Diagnosis

    fields = [f.name for f in dataclasses.fields(Diagnosis)]
    assert list(expressions.DIAGNOSIS_FIELDS) == fields  # written out: kept equal here
    assert {*fields, *expressions.EXTRA_NAMES} == expressions.NAMES


def test_a_compiled_condition_is_reused_and_still_sees_each_call_s_names() -> None:
    expressions._compiled.cache_clear()
    assert expressions.evaluate("client_backends > 3", {"client_backends": 4})
    assert not expressions.evaluate("client_backends > 3", {"client_backends": 2})
    assert expressions._compiled.cache_info().hits == 1
    with pytest.raises(expressions.ExpressionError):  # a bad one is refused every time
        expressions.check("client_backends >")
    with pytest.raises(expressions.ExpressionError):
        expressions.check("client_backends >")
