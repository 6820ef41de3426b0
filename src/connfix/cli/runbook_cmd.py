"""`connfix runbook ...`"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from connfix.cli.options import terminal
from connfix.errors import ExitStatus, RunbookError


@click.group()
def runbook() -> None:
    """Validate and show escalation runbooks."""


@runbook.command("validate")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
def validate(paths: tuple[str, ...]) -> None:
    """Validate runbook files; report each error with file, line and field.

    Exit status 0 when every file is valid, 2 otherwise.

    \b
    Example:
      connfix runbook validate runbooks/*.yaml
    """
    from connfix.cli.render import escape
    from connfix.runbook import load_runbook_file

    failed = 0
    for path in paths:
        try:
            book = load_runbook_file(Path(path))
        except RunbookError as exc:
            failed += 1
            terminal().err.print(f"[red]invalid[/red] {escape(str(exc))}")
        else:
            terminal().out.print(f"ok {escape(path)}: {escape(book.name)}, {len(book.steps)} steps")
    if failed:
        sys.exit(ExitStatus.BAD_INPUT)


@runbook.command("show")
@click.argument("ref", metavar="NAME|PATH", default="too-many-connections")
def show(ref: str) -> None:
    """Show a runbook's steps as a readable plan.

    \b
    Example:
      connfix runbook show too-many-connections
    """
    from connfix.cli import render
    from connfix.runbook import resolve_runbook

    render.runbook(terminal(), resolve_runbook(ref))
