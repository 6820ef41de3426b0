"""The post-incident report, rendered from the journal alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from markdown_it import MarkdownIt

from connfix.cli import cli
from connfix.record.journal import read_journal
from connfix.record.report import escape, render
from tests.helpers import Lab, connfix_run

HOSTILE = "evil | `tick` <script>alert(1)</script> *x* [y](z)"


def tables(markdown: str) -> list[list[int]]:
    """Parse Markdown; return, per table, the cell count of every row."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    found: list[list[int]] = []
    cells = 0
    for token in tokens:
        if token.type == "table_open":
            found.append([])
        elif token.type == "tr_open":
            cells = 0
        elif token.type in ("th_open", "td_open"):
            cells += 1
        elif token.type == "tr_close":
            found[-1].append(cells)
    return found


def assert_well_formed(markdown: str) -> None:
    html = MarkdownIt("commonmark").enable("table").render(markdown)
    assert "<script" not in html
    for rows in tables(markdown):
        assert len(set(rows)) == 1, rows  # every row has as many cells as the header


@pytest.fixture(scope="module")
def triaged(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real triage of a leaking lab (once for this module); its incident directory."""
    lab.reset()
    lab.core.leak("app2", 5, idle_in_transaction=False)
    incidents = tmp_path_factory.mktemp("triaged") / "incidents"
    result = connfix_run("triage", lab.inventory, incidents, "--yes")
    lab.reset()
    assert result.exit_code == 0, result.output
    (incident,) = incidents.glob("*")
    assert f"report: {incident / 'report.md'}" in result.output
    return incident


def test_report_of_a_real_triage_has_the_journal_numbers(triaged: Path) -> None:
    text = (triaged / "report.md").read_text()
    events = list(read_journal(triaged / "journal.jsonl"))
    diagnoses = [e["diagnosis"] for e in events if e["event"] == "diagnosis"]
    first, last = diagnoses[0], diagnoses[-1]
    peak = max(d["client_backends"] for d in diagnoses)
    assert "# Incident report: lab — resolved" in text
    assert f"| Peak client backends | {peak} of {first['usable_connections']} usable |" in text
    assert f"| Utilization before | {first['utilization']:.0%} ({first['severity']}) |" in text
    assert f"| Utilization after | {last['utilization']:.0%} ({last['severity']}) |" in text
    (done,) = [e for e in events if e["event"] == "host_done"]
    assert f"| app2 | done | {done['old_main_pid']} → {done['new_main_pid']} |" in text
    for event in events:
        if event["event"] in ("run_start", "run_end"):
            assert event["ts"][11:23] in text  # every step and result on the timeline
    app2_before = next(u for u in first["by_host"] if u["host"] == "app2")
    assert f"- **app2** ({app2_before['client_addr']}): {escape(app2_before['reasons'][0])}" in (
        text
    )
    assert "ALTER ROLE \"app\" SET idle_in_transaction_session_timeout = '60s';" in text
    assert (triaged / "report.md").stat().st_mode & 0o777 == 0o600
    assert_well_formed(text)


def test_report_regenerates_identically(triaged: Path) -> None:
    first = (triaged / "report.md").read_text()
    result = CliRunner().invoke(cli, ["report", str(triaged), "-o", "-"])
    assert result.exit_code == 0
    assert result.stdout == first
    again = CliRunner().invoke(
        cli, ["report", str(triaged / "journal.jsonl"), "-o", str(triaged / "again.md")]
    )
    assert again.exit_code == 0
    assert (triaged / "again.md").read_text() == first


def test_truncated_journal_renders_as_interrupted(triaged: Path, tmp_path: Path) -> None:
    lines = (triaged / "journal.jsonl").read_text().splitlines(keepends=True)
    cut = tmp_path / "journal.jsonl"
    cut.write_text("".join(lines[:-3]) + lines[-3][: len(lines[-3]) // 2])  # torn mid-write
    text = render(cut)
    assert "# Incident report: lab — interrupted" in text
    assert "run ended: " not in text
    assert_well_formed(text)


def test_hostile_application_name_is_rendered_harmless(clean_lab: Lab, tmp_path: Path) -> None:
    def change(env: dict[str, Any]) -> None:
        env["protected"] = {"users": [], "applications": ["labapp"]}

    inventory = clean_lab.inventory_with(tmp_path, change)
    conn = psycopg.connect(clean_lab.app_dsn(), autocommit=True, application_name=HOSTILE)
    try:
        result = CliRunner().invoke(
            cli,
            [
                "terminate",
                "lab",
                "--state",
                "idle",
                "--older-than",
                "0s",
                "--yes",
                "-i",
                str(inventory),
                "--incidents-dir",
                str(tmp_path / "incidents"),
            ],
        )
        assert result.exit_code == 0, result.output
    finally:
        conn.close()
    (incident,) = (tmp_path / "incidents").glob("*")
    text = (incident / "report.md").read_text()
    assert escape(HOSTILE) in text
    assert "<script>" not in text and "| `tick` |" not in text
    assert_well_formed(text)
    html = MarkdownIt("commonmark").enable("table").render(text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown as text, not run

    # a newline smuggled into the journal stays inside its table cell
    events = list(read_journal(incident / "journal.jsonl"))
    op = next(e for e in events if e["event"] == "operation")
    op["application_name"] = "line one\nline two | with a pipe"
    forged = tmp_path / "forged.jsonl"
    forged.write_text("".join(json.dumps(e) + "\n" for e in events))
    forged_text = render(forged)
    assert "line one line two \\| with a pipe" in forged_text
    assert_well_formed(forged_text)


def test_user_template(triaged: Path, tmp_path: Path) -> None:
    template = tmp_path / "mine.md.j2"
    template.write_text("# {{ environment }}: {{ status }}\n{{ summary }}\n")
    result = CliRunner().invoke(
        cli, ["report", str(triaged), "--template", str(template), "-o", "-"]
    )
    assert result.exit_code == 0
    assert result.stdout.startswith("# lab: resolved\nAt ")
    bad = tmp_path / "bad.md.j2"
    bad.write_text("{{ no_such_name }}")
    result = CliRunner().invoke(cli, ["report", str(triaged), "--template", str(bad)])
    assert result.exit_code == 2
    assert f"--template {bad}: 'no_such_name' is undefined" in result.output


def test_dry_run_report_says_so_at_the_top(clean_lab: Lab, tmp_path: Path) -> None:
    clean_lab.core.leak("app1", 4, idle_in_transaction=False)
    result = connfix_run("triage", clean_lab.inventory, tmp_path / "incidents", "--dry-run")
    assert result.exit_code == 1
    (report,) = (tmp_path / "incidents").glob("*/report.md")
    text = report.read_text()
    assert text.startswith("> **DRY RUN** — connfix diagnosed and planned, and changed nothing.")
    assert "# Incident report: lab — DRY RUN" in text
    assert_well_formed(text)


def test_a_host_whose_restart_began_is_listed_when_the_run_was_killed(
    triaged: Path, tmp_path: Path
) -> None:
    """The journal of a run killed right after a host's restart began (kill -9: nothing
    after host_start): the hosts table lists it as sent with its outcome unknown."""
    lines = (triaged / "journal.jsonl").read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if '"event": "host_start"' in line)
    host = json.loads(lines[start])["host"]
    killed = tmp_path / "journal.jsonl"
    killed.write_text("".join(lines[: start + 1]))
    result = CliRunner().invoke(cli, ["report", str(killed), "-o", "-"])
    assert result.exit_code == 0, result.output
    row = next(r for r in result.output.splitlines() if r.startswith(f"| {host} | restart"))
    assert "restart sent, outcome unknown" in row and "check the host" in row
