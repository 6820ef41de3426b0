"""The command line itself: help, version, help text with examples everywhere."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from connfix import __version__
from connfix.cli import cli


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"connfix, version {__version__}\n"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # loads each lazily loaded command
        command = group.get_command(ctx, name)
        found.append((*prefix, name))
        if isinstance(command, click.Group):
            found.extend(_commands(command, (*prefix, name)))
    return found


@pytest.mark.parametrize("path", _commands(cli), ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output or "Commands:" in result.output
    assert "connfix " + " ".join(path) in result.output or "Commands:" in result.output


def test_help_lists_exit_statuses() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert "2    bad input" in result.output and "130  interrupted" in result.output


def test_unknown_flag_is_bad_input() -> None:
    result = CliRunner().invoke(cli, ["inventory", "check", "--frobnicate"])
    assert result.exit_code == 2
    assert "No such option '--frobnicate'" in result.output


def test_installed_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "connfix", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from connfix.cli import cli; "
        "print(' '.join(m for m in ('fabric', 'paramiko', 'psycopg', 'pydantic') "
        "if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""
