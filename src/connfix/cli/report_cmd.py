"""`connfix report`"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from connfix.cli import envelope
from connfix.cli.envelope import json_option


@click.command()
@click.argument("incident", metavar="INCIDENT")
@click.option(
    "--output",
    "-o",
    metavar="PATH",
    help="Where to write it (default: report.md in the incident; - for stdout).",
)
@click.option("--template", metavar="PATH", help="A Jinja2 template of your own.")
@json_option
def report(incident: str, output: str | None, template: str | None, as_json: bool) -> None:
    """(Re)generate an incident's Markdown report from its journal alone.

    INCIDENT is an incident directory (or its journal.jsonl). The same journal always
    gives the same report; a journal cut short by a killed run renders as interrupted.

    \b
    Example:
      connfix report incidents/20261125T021500Z-prod
      connfix report incidents/20261125T021500Z-prod -o - | less
      connfix report incidents/20261125T021500Z-prod --template my-report.md.j2
    """
    if as_json:
        envelope.mark("report")
        if output == "-":
            raise click.UsageError("--json prints the envelope on stdout: give -o PATH, not -")
    from connfix.record import report as core
    from connfix.record.journal import journal_of

    tmpl = Path(template) if template else None
    if output == "-":
        sys.stdout.write(core.render(journal_of(Path(incident)), tmpl))
        return
    from connfix.config.text import defang

    written = core.write(Path(incident), Path(output) if output else None, tmpl)
    # plain lines (no rich needed to say where the report is); with --json on stderr
    click.echo(defang(f"report: {written.path}"), err=as_json)
    code = 0
    if written.degraded:  # connfix's own template failed: a minimal report was written
        code = 1
        click.echo(
            defang(
                f"the full report could not be rendered ({written.degraded}); a minimal"
                " report (outcome and timeline, from the journal) was written instead"
            ),
            err=True,
        )
    if as_json:
        journal = journal_of(Path(incident))
        envelope.emit(
            "report",
            "degraded" if written.degraded else "ok",
            code,
            incident=journal.parent,
            result={"report": written.path, "journal": journal, "degraded": written.degraded},
        )
    sys.exit(code)
