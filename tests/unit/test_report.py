"""The report command's input checks, without a lab: a file that is not a journal."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from connfix.cli import cli


def test_not_a_journal_is_bad_input(tmp_path: Path) -> None:
    junk = tmp_path / "journal.jsonl"
    junk.write_text('{"event": "something"}\n')
    result = CliRunner().invoke(cli, ["report", str(junk)])
    assert result.exit_code == 2
    assert "not a connfix journal" in result.output
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2
