"""`connfix runbook ...`"""

from __future__ import annotations

import sys

import click

from connfix import ExitStatus, RunbookError
from connfix.cli import envelope
from connfix.cli.envelope import json_option
from connfix.cli.options import terminal


@click.group()
def runbook() -> None:
    """Validate and show escalation runbooks."""


@runbook.command("validate")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@json_option
def validate(paths: tuple[str, ...], as_json: bool) -> None:
    """Validate runbook files; report each error with file, line and field.

    Exit status 0 when every file is valid, 2 otherwise.

    \b
    Example:
      connfix runbook validate runbooks/*.yaml
    """
    from connfix.cli.render import escape
    from connfix.engine.runbook import load_runbook_file

    if as_json:
        envelope.mark("runbook validate")
    failed = 0
    files: list[dict[str, object]] = []
    for path in paths:
        try:
            book = load_runbook_file(path)
        except RunbookError as exc:
            failed += 1
            terminal().err.print(f"[red]invalid[/red] {escape(str(exc))}")
            files.append({"path": path, "ok": False, "error": str(exc)})
        else:
            terminal().out.print(f"ok {escape(path)}: {escape(book.name)}, {len(book.steps)} steps")
            files.append(
                {"path": path, "ok": True, "name": book.name, "sha256": book.sha256,
                 "steps": [s.id for s in book.steps]}
            )  # fmt: skip
    code = ExitStatus.BAD_INPUT if failed else ExitStatus.OK
    if as_json:
        envelope.emit(
            "runbook validate", "failed" if failed else "ok", code, result={"files": files}
        )
    sys.exit(code)


@runbook.command("show")
@click.argument("ref", metavar="NAME|PATH", default="too-many-connections")
def show(ref: str) -> None:
    """Show a runbook's steps as a readable plan.

    \b
    Example:
      connfix runbook show too-many-connections
    """
    from connfix.cli import render
    from connfix.engine.runbook import resolve_runbook

    render.runbook(terminal(), resolve_runbook(ref))
