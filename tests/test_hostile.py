"""Hostile input, round two (no lab needed): conditions and report templates are bounded,
secrets never leak through malformed connection strings or break a journal line, and
text from the database reaches the terminal and the report defanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connfix import expressions, report
from connfix.cli import cli
from connfix.diagnosis import Backend, analyse
from connfix.errors import InputError
from connfix.journal import Journal, Redactor, mask_passwords, read_journal
from tests.test_diagnose_unit import backend, env, info

# ---------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    "expression",
    [
        "range(10) | length > 0",
        "lipsum(5)",
        "cycler(1, 2)",
        "joiner(',')",
        "namespace(a=1)",
        "dict(a=1)",
        "severity | center(99999)",
        "severity | format(1)",
        "severity | indent(10**6)",
        "severity | wordwrap(5)",
        "severity.center(10**9)",
        "severity.format(1)",
        "severity.ljust(10**9)",
        "severity.zfill(10**9)",
        "','.join(suspects)",
        "suspects.__class__",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    ],
)
def test_conditions_that_could_run_away_are_refused_at_validation(expression: str) -> None:
    with pytest.raises(expressions.ExpressionError) as refused:
        expressions.check(expression)
    assert str(refused.value)  # a reason, never a traceback


def names() -> dict[str, Any]:
    d = analyse("prod", env(), info(), [backend(1, "10.0.0.1")], [])
    return expressions.context(d, ["web1"], {})


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("'x' * 10**9 == ''", "is over 100,000"),
        ("[0] * 10**8 == []", "is over 100,000"),
        ("(2 ** 100000) > 1", "too large"),
        ("(severity * 100000) * 100000 == ''", "is over 100,000"),
        ("'%999999999d' % 1 == ''", "format width"),
        ("'%*d' % (5, 1) == ''", "format width"),
        ("by_state['no such state'] > 0", "has no attribute 'no such state'"),
        ("suspects[10] == 'x'", "cannot evaluate"),
        ("client_backends / 0 > 1", "division by zero"),
        ("severity > 3", "cannot evaluate"),
    ],
)
def test_a_condition_that_fails_on_live_data_is_an_expression_error(
    expression: str, reason: str
) -> None:
    expressions.check(expression)  # passes validation: only live data can tell
    with pytest.raises(expressions.ExpressionError) as failed:
        expressions.evaluate(expression, names())
    assert reason in str(failed.value) and expression in str(failed.value)


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), min_codepoint=0), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    app=TEXT,
    user=TEXT,
    query=TEXT,
    state=st.sampled_from(["idle", "active", "idle in transaction", None]),
    expression=st.sampled_from(
        [
            "severity == 'ok' and not suspects",
            "by_state['idle'] > 2",
            "by_application[suspects[0]] > 1",
            "(by_user | list | first) == 'x'",
            "idle_in_transaction[0].query.startswith('SELECT')",
            "free_slots * 100000 > 0",
        ]
    ),
)
def test_conditions_on_hostile_diagnoses_only_answer_or_fail_cleanly(
    app: str, user: str, query: str, state: str | None, expression: str
) -> None:
    rows = [
        Backend(
            pid=pid,
            usename=user,
            application_name=app,
            client_addr="10.0.0.1",
            datname=app,
            state=state,
            visible=True,
            backend_start=None,
            state_change=None,
            idle_seconds=100.0,
            xact_seconds=100.0,
            wait_event_type=None,
            blocked_by=None,
            query=query,
        )
        for pid in range(1, 8)
    ]
    d = analyse("prod", env(), info(), rows, [])
    try:
        result = expressions.evaluate(expression, expressions.context(d, ["web1"], {}))
    except expressions.ExpressionError as exc:
        assert "cannot evaluate" in str(exc)
    else:
        assert isinstance(result, bool)


# ---------------------------------------------------------------- report templates


def journal_with(tmp_path: Path, strings: dict[str, str] | None = None) -> Path:
    """A small real journal: run_start, a diagnosis of hostile rows, run_end."""
    strings = strings or {}
    rows = [
        backend(1, "10.0.0.1"),
        Backend(
            pid=2,
            usename=strings.get("user", "app"),
            application_name=strings.get("app", "x"),
            client_addr="10.0.0.9",
            datname="app",
            state="idle in transaction",
            visible=True,
            backend_start=datetime.now(UTC),
            state_change=datetime.now(UTC),
            idle_seconds=100.0,
            xact_seconds=100.0,
            wait_event_type=None,
            blocked_by=None,
            query=strings.get("query", "SELECT 1"),
        ),
    ]
    d = analyse("prod", env(), info(), rows, [])
    incident = tmp_path / "incident"
    incident.mkdir(exist_ok=True)
    journal = Journal(incident)
    journal.record(
        "run_start",
        environment="prod",
        operator=strings.get("user", "op"),
        runbook={"name": strings.get("app", "rb"), "source": "x", "sha256": "0"},
        flags={},
        connfix_version="0",
        hostname=strings.get("app", "h"),
        inventory="inventory.yaml",
        resumed_from=None,
    )
    journal.record("diagnosis", diagnosis=d.to_json())
    journal.record("run_end", status="resolved", message=strings.get("query", "m"))
    journal.close()
    return journal.path


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{{ 'x' * 10**8 }}", "is over 100,000"),
        ("{{ lipsum(10**6) }}", "'lipsum' is undefined"),
        ("{{ 'x' | center(10**9) }}", "a width over 1000"),
        ("{{ 'x' | indent(10**9) }}", "a width over 1000"),
        ("{{ '%99999999d' | format(1) }}", "format width"),
        ("{{ 'a'.center(99999999) }}", "calling .center() is not allowed"),
        ("{{ 'a'.format(1) }}", "calling .format() is not allowed"),
        ("{% include 'other.j2' %}", "one file: {% include %}"),
        ("{% extends 'base.j2' %}", "one file: {% include %}"),
        ("{% import 'm.j2' as m %}", "one file: {% include %}"),
        ("{% for i in range(60) %}{{ 'x' * 99999 }}{% endfor %}", "grew past 5,000,000"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "nested too deeply"),
        ("{{ (2 ** 99999) }}", "too large"),
        ("{{ runbook.__class__.__mro__ }}", "unsafe"),
    ],
)
def test_hostile_report_templates_are_stopped_with_a_clear_message(
    tmp_path: Path, template: str, words: str
) -> None:
    path = tmp_path / "t.j2"
    path.write_text(template)
    with pytest.raises(InputError) as refused:
        report.render(journal_with(tmp_path), path)
    assert words in str(refused.value), str(refused.value)
    assert f"--template {path}" in str(refused.value)


def test_a_template_that_loops_forever_is_stopped_by_the_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "RENDER_SECONDS", 0.5)
    path = tmp_path / "t.j2"
    path.write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    )
    with pytest.raises(InputError, match=r"rendering took longer than 0.5s; stopped"):
        report.render(journal_with(tmp_path), path)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(user=TEXT, app=TEXT, query=TEXT)
def test_the_report_renders_any_hostile_strings_as_one_markdown_line_each(
    tmp_path: Path, user: str, app: str, query: str
) -> None:
    text = report.render(journal_with(tmp_path, {"user": user, "app": app, "query": query}))
    assert "\x1b" not in text and "\x07" not in text
    for line in text.splitlines():
        if line.startswith("|"):
            assert line.rstrip().endswith("|"), line  # no cell broke its table row


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://connfix:hunter2pass@[::1/app",
        "postgresql://connfix:hunter2pass@db1/app?sslmode=%zz",
        "postgresql://:hunter2pass@[fe80::1/app",
        "host=db1 password=hunter2pass user",
        "host=db1 password='hunter2pass",
        "postgres://connfix:hunter2pass@db1:notaport/app",
    ],
)
def test_a_malformed_dsn_never_echoes_its_password(tmp_path: Path, dsn: str) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        "version: 1\nenvironments:\n  prod:\n"
        f"    database: {{dsn: {json.dumps(dsn)}}}\n"
        "    service: {unit: a.service, pool_size: 1}\n"
        "    hosts: [{name: a, ssh_address: 10.0.0.1}]\n"
    )
    for argv in (["inventory", "check", "prod"], ["diagnose", "prod"], ["triage", "prod"]):
        result = CliRunner().invoke(cli, [*argv, "-i", str(inventory)])
        assert result.exit_code == 2, result.output
        assert "hunter2pass" not in result.output
        assert "inventory.yaml:4" in result.output


@pytest.mark.parametrize("secret", ["true", "null", "false", "123", "prod", "journal", "ts"])
def test_a_secret_that_is_a_json_word_or_a_common_word_keeps_every_line_valid(
    tmp_path: Path, secret: str
) -> None:
    journal = Journal(tmp_path, Redactor([secret]))
    journal.record("run_start", environment="prod", flags={"yes": True}, count=123, x=None)
    journal.record("note", message=f"the {secret} is here", value=secret, n=[secret, "ok"])
    journal.close()
    events = list(read_journal(journal.path))  # every line parses
    assert events[0]["environment"] == ("***" if secret == "prod" else "prod")
    assert events[0]["flags"] == {"yes": True} and events[0]["count"] == 123
    assert events[1]["value"] == "***" and events[1]["n"] == ["***", "ok"]
    assert events[1]["message"] == f"the {secret} is here"  # a short secret: values only


def test_long_secrets_are_redacted_inside_text_and_sql_passwords_are_masked(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path, Redactor(["correct-horse-battery"]))
    journal.record(
        "note",
        a="dsn host=db password=correct-horse-battery",
        b="ALTER ROLE app PASSWORD 'n3w-s3cret' VALID UNTIL 'infinity'",
        c="alter user x with encrypted password 'it''s' login",
        d="postgresql://u:correct-horse-battery@db/app",
        e="sudo: a password is required",
    )
    journal.close()
    text = journal.path.read_text()
    for secret in ("correct-horse-battery", "n3w-s3cret", "it''s"):
        assert secret not in text
    (event,) = read_journal(journal.path)
    assert event["b"] == "ALTER ROLE app PASSWORD '***' VALID UNTIL 'infinity'"
    assert event["e"] == "sudo: a password is required"


def test_mask_passwords_covers_each_shape() -> None:
    assert mask_passwords("password=abc def") == "password=*** def"
    assert mask_passwords("PASSWORD = 'a b'") == "PASSWORD = ***"
    assert mask_passwords("x://:pw@h") == "x://:***@h"
    assert (
        mask_passwords("CREATE ROLE r LOGIN PASSWORD 'x'") == "CREATE ROLE r LOGIN PASSWORD '***'"
    )


def test_every_secret_environment_variable_is_in_the_redaction_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from connfix.engine import secrets_of
    from connfix.inventory import Environment

    values = {
        "PW": "pw-ordinary-1",
        "RPW": "pw-reserved-2",
        "APW": "pw-admin-3",
        "BPW": "pw-bouncer-4",
        "RDSN": "host=db user=r password=pw-in-reserved-dsn",
        "ADSN": "postgresql://a:pw-in-admin-uri@db/app",
        "PGPASSWORD": "pw-libpq-5",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    environment = Environment.model_validate(
        {
            "database": {
                "dsn": "host=db dbname=app user=connfix",
                "password_env": "PW",
                "reserved_password_env": "RPW",
                "admin_password_env": "APW",
                "reserved_dsn_env": "RDSN",
                "admin_dsn_env": "ADSN",
            },
            "service": {"unit": "a.service", "pool_size": 1},
            "hosts": [{"name": "a", "ssh_address": "10.0.0.1"}],
            "pgbouncer": {"admin_dsn": "host=pgb dbname=pgbouncer", "admin_password_env": "BPW"},
        }
    )
    found = set(secrets_of(environment))
    assert set(values.values()) <= found
    assert {"pw-in-reserved-dsn", "pw-in-admin-uri"} <= found
