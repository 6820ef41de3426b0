"""The report command's input checks, without a lab: a file that is not a journal; and
the escaping every value of a report goes through."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from connfix.cli import cli
from connfix.record import report


def test_not_a_journal_is_bad_input(tmp_path: Path) -> None:
    junk = tmp_path / "journal.jsonl"
    junk.write_text('{"event": "something"}\n')
    result = CliRunner().invoke(cli, ["report", str(junk)])
    assert result.exit_code == 2
    assert "not a connfix journal" in result.output
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2


def _escaped_step_by_step(value: object) -> str:
    """The reference: the escaping as it was written before it became one translation
    (HTML's three replaced, then a backslash before each Markdown character)."""
    text = str(value).replace("\r\n", " ")
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"([\\`*_\[\]|~#])", r"\\\1", text)
    return "\\" + text if text[:1] in ("-", "+") else text


@given(st.text(alphabet=st.sampled_from("ab &<>\\`*_[]|~#-+\r\n\t\u202e;"), max_size=40))
def test_escaping_in_one_pass_is_the_step_by_step_escaping(text: str) -> None:
    assert report.escape(text) == _escaped_step_by_step(text)


@given(st.text(max_size=40))
def test_escaping_any_text_is_the_step_by_step_escaping(text: str) -> None:
    assert report.escape(text) == _escaped_step_by_step(text)


def test_what_escaping_makes_of_each_special_character() -> None:
    assert report.escape("a|b") == "a\\|b"  # a table cell stays one cell
    assert report.escape("<script>&") == "&lt;script&gt;&amp;"
    assert report.escape("\\`*_[]~#") == "\\\\\\`\\*\\_\\[\\]\\~\\#"
    assert report.escape("- item") == "\\- item"  # not a list item
    assert report.escape("two\r\nlines\nhere") == "two lines here"
    assert report.escape(42) == "42"
