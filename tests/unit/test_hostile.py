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

from connfix import InputError
from connfix.cli import cli
from connfix.config.redact import mask_secrets as mask_passwords
from connfix.diagnosis.analysis import analyse
from connfix.diagnosis.model import Backend
from connfix.engine import expressions
from connfix.record import report
from connfix.record.journal import Journal, Redactor, read_journal
from tests.builders import backend, env, info

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


def row(pid: int, user: str, app: str, query: str, **fields: Any) -> Backend:
    """A client backend from 10.0.0.1 (or `client_addr`) with these strings."""
    values: dict[str, Any] = {
        "client_addr": "10.0.0.1",
        "datname": app,
        "state": "idle in transaction",
        "backend_start": None,
        "state_change": None,
        **fields,
    }
    return Backend(
        pid=pid,
        usename=user,
        application_name=app,
        visible=True,
        idle_seconds=100.0,
        xact_seconds=100.0,
        wait_event_type=None,
        blocked_by=None,
        query=query,
        **values,
    )


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
    rows = [row(pid, user, app, query, state=state) for pid in range(1, 8)]
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
        row(
            2,
            strings.get("user", "app"),
            strings.get("app", "x"),
            strings.get("query", "SELECT 1"),
            client_addr="10.0.0.9",
            datname="app",
            backend_start=datetime.now(UTC),
            state_change=datetime.now(UTC),
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
    from connfix.config.inventory import Environment
    from connfix.engine.secrets import secrets_of

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
    environment = Environment.validate(
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


# ---------------------------------------------------------------- terminal escapes


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J\x1b[Hgone", "\\x1b[2J\\x1b[Hgone"),
        ("ring\x07", "ring\\x07"),
        ("\x1b]52;c;ZWNobyBoaQ==\x07", "\\x1b]52;c;ZWNobyBoaQ==\\x07"),
        ("csi\x9b31m", "csi\\x9b31m"),
        ("abc\u202edcba", "abc<U+202E>dcba"),
        ("iso\u2066late\u2069", "iso<U+2066>late<U+2069>"),
        ("tab\tand\nnewline", "tab\tand\nnewline"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
    ],
)
def test_defang_shows_control_characters_and_bidi_overrides(raw: str, shown: str) -> None:
    from connfix.config.text import defang

    assert defang(raw) == shown


def test_database_text_reaches_the_terminal_defanged() -> None:
    import io

    from connfix.cli import render

    hostile = "evil\x1b[31m\u202e\x07"
    rows = [row(2, hostile, hostile, f"SELECT '{hostile}'", datname="app")]
    stdout, stderr = io.StringIO(), io.StringIO()
    term = render.Terminal.from_process({"COLUMNS": "200"}, stdout, stderr)
    render.diagnosis(term, analyse("prod", env(), info(), rows, []))
    out = stdout.getvalue()
    assert stderr.getvalue() == ""
    assert "\x1b[31m" not in out and "\u202e" not in out and "\x07" not in out
    assert "evil\\x1b[31m<U+202E>\\x07" in out


def test_the_reports_sql_block_is_defanged() -> None:
    assert "\x1b" not in report.code('ALTER ROLE "x\x1b[2J" SET a = 1')
    assert "\\x1b[2J" in report.code('ALTER ROLE "x\x1b[2J" SET a = 1')


def test_an_error_message_is_defanged(tmp_path: Path) -> None:
    bad = tmp_path / "inventory.yaml"
    bad.write_text("version: 1\nenvironments:\n  'pr\x1b[2Jod': {}\n")
    result = CliRunner().invoke(cli, ["diagnose", "x", "-i", str(bad)])
    assert result.exit_code == 2 and "\x1b[2J" not in result.output


# ---------------------------------------------------------------- names and selectors

GOOD = (
    "version: 1\nenvironments:\n  prod:\n"
    '    database: {dsn: "host=db dbname=app user=connfix"}\n'
    "    service: {unit: a.service, pool_size: 1}\n"
    "    hosts: [{name: a, ssh_address: 10.0.0.1}, {name: b, ssh_address: 10.0.0.2}]\n"
)


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("unit: a.service", 'unit: "a.service\\n"', "not a systemd unit name"),
        ("name: a,", 'name: "a\\n",', "not a host name"),
        ("ssh_address: 10.0.0.1}", 'ssh_address: "10.0.0.1\\n"}', "not an IP address or host name"),
        ("ssh_address: 10.0.0.1}", 'ssh_address: "fe80::1%eth0 x"}', "not an IP address"),
        ("ssh_address: 10.0.0.1}", 'ssh_address: "fe80::1%\\u001b[2J"}', "not an IP address"),
        (
            "ssh_address: 10.0.0.1}",
            'ssh_address: 10.0.0.1, db_address: "fe80::1%a/b"}',
            "not an IP address",
        ),
        ("pool_size: 1}", 'pool_size: 1, restart_command: "restart {{unit}}"}', "brace"),
        ("pool_size: 1}", 'pool_size: 1, restart_command: "restart {unit} }"}', "brace"),
        ("pool_size: 1}", 'pool_size: 1, restart_command: "restart {unit!r}"}', "placeholder"),
        ('dsn: "host', 'password_env: "PW\\n", dsn: "host', "not an environment variable"),
        ("pool_size: 1}", 'pool_size: 1, user: "app\\n"}', "control character"),
        ("pool_size: 1}", 'pool_size: 1, application_name: "a\\u001b[2J"}', "control character"),
    ],
)
def test_names_are_matched_whole_and_brace_forms_refused(
    tmp_path: Path, old: str, new: str, words: str
) -> None:
    inventory = tmp_path / "inventory.yaml"
    assert old in GOOD
    inventory.write_text(GOOD.replace(old, new, 1))
    result = CliRunner().invoke(cli, ["inventory", "check", "prod", "-i", str(inventory)])
    assert result.exit_code == 2, result.output
    assert words in result.output and "inventory.yaml:" in result.output


@pytest.mark.parametrize("value", ["", ",", " ", "a,", ",b", "a,,b"])
@pytest.mark.parametrize(("command", "flag"), [("restart", "--hosts"), ("terminate", "--host")])
def test_an_empty_host_selector_is_an_error_not_every_host(
    tmp_path: Path, command: str, flag: str, value: str
) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(GOOD)
    result = CliRunner().invoke(
        cli, [command, "prod", "-i", str(inventory), flag, value, "--dry-run"]
    )
    assert result.exit_code == 2, result.output
    assert "names no host" in result.output
    assert not (tmp_path / "incidents").exists()


@pytest.mark.parametrize("hosts", ["[]", "['']", "[a, ' ']"])
def test_a_runbook_step_naming_no_host_is_refused_at_load(tmp_path: Path, hosts: str) -> None:
    book = tmp_path / "book.yaml"
    book.write_text(
        'version: 1\nname: b\nsummary: b\nhealthy: "true"\nsteps:\n'
        "  - {id: diagnose, action: diagnose}\n"
        f"  - {{id: roll, action: rolling_restart, params: {{hosts: {hosts}}}}}\n"
    )
    result = CliRunner().invoke(cli, ["runbook", "validate", str(book)])
    assert result.exit_code == 2 and "names no host" in result.output
    assert "book.yaml:7" in result.output


def test_a_runbook_step_naming_a_host_the_inventory_lacks_is_refused(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(GOOD)
    book = tmp_path / "book.yaml"
    book.write_text(
        'version: 1\nname: b\nsummary: b\nhealthy: "true"\nsteps:\n'
        "  - {id: diagnose, action: diagnose}\n"
        "  - {id: roll, action: rolling_restart, params: {hosts: [a, web9]}}\n"
    )
    result = CliRunner().invoke(
        cli, ["triage", "prod", "-i", str(inventory), "--runbook", str(book), "--dry-run"]
    )
    assert result.exit_code == 2, result.output
    assert "steps.roll.params.hosts: no host 'web9' in environment 'prod'" in result.output
    assert not (tmp_path / "incidents").exists()


# ---------------------------------------------------------------- files


def test_the_report_never_follows_a_symlink_at_its_path(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "report.md"
    link.symlink_to(victim)
    report.write(journal_with(tmp_path), link)
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and "Incident report" in link.read_text()
    assert (link.stat().st_mode & 0o777) == 0o600


def test_an_existing_report_gets_mode_0600(tmp_path: Path) -> None:
    out = tmp_path / "out.md"
    out.write_text("old")
    out.chmod(0o644)
    report.write(journal_with(tmp_path), out)
    assert (out.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_fifo_or_a_directory_where_a_file_is_expected_is_refused_at_once(
    tmp_path: Path, kind: str
) -> None:
    import os

    odd = tmp_path / "odd"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.mkdir()
    for argv in (
        ["inventory", "check", "prod", "-i", str(odd)],
        ["runbook", "validate", str(odd)],
        ["report", str(tmp_path / "incident"), "--template", str(odd)],
        ["report", str(tmp_path / "incident"), "--output", str(odd)],
    ):
        journal_with(tmp_path)
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 2, (argv, result.output)
        assert (
            "a FIFO" in result.output
            or "a directory" in result.output
            or "Is a directory" in result.output
        ), result.output


def test_created_directories_are_0700_whatever_the_umask(tmp_path: Path) -> None:
    import os

    from connfix.config.files import make_dir

    old = os.umask(0)
    try:
        make_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700


def test_a_tilde_in_configured_paths_is_expanded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from connfix.record.journal import incidents_base

    monkeypatch.setenv("HOME", str(tmp_path))
    assert incidents_base("~/inc", None) == tmp_path / "inc"
    assert incidents_base(None, "~/conf") == tmp_path / "conf"
    monkeypatch.setenv("CONNFIX_INCIDENTS_DIR", "~/env")
    assert incidents_base(None, None) == tmp_path / "env"


def test_lab_down_as_non_root_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(cli, ["lab", "down"])
    assert result.exit_code == 1 and "lab down needs root" in result.output


@pytest.mark.parametrize("value", ["x", "10", "-1", "7\n"])
def test_a_bad_lab_id_is_bad_input(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CONNFIX_LAB_ID", value)
    result = CliRunner().invoke(cli, ["lab", "status"])
    assert result.exit_code == 2 and "CONNFIX_LAB_ID must be a digit 0-9" in result.output


@pytest.mark.parametrize(
    "line",
    ["[1, 2]", '"x"', "null", '{"event": "run_start", "ts": 5}', '{"ts": "x"}'],
)
def test_a_crafted_journal_gets_a_clear_error(tmp_path: Path, line: str) -> None:
    incident = tmp_path / "incident"
    incident.mkdir()
    (incident / "journal.jsonl").write_text(line + "\n")
    result = CliRunner().invoke(cli, ["report", str(incident), "--output", str(tmp_path / "r.md")])
    assert result.exit_code == 2, result.output
    assert "line 1 is not a connfix journal event" in result.output


# ---------------------------------------------------------------- which runbook runs


def test_a_local_runbook_that_shadows_the_shipped_one_is_said_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connfix.engine.runbook import resolve_runbook

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "too-many-connections.yaml").write_text(
        'version: 1\nname: too-many-connections\nsummary: s\nhealthy: "true"\n'
        "steps:\n  - {id: diagnose, action: diagnose}\n"
    )
    book = resolve_runbook(None)
    assert book.source == "runbooks/too-many-connections.yaml"
    assert book.shadows == "connfix:runbooks/too-many-connections.yaml"
