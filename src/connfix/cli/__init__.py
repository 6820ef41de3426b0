"""The command line: click only; each command calls one core function and renders it."""

from __future__ import annotations

from typing import Any

import click

from connfix import __version__
from connfix.cli.diagnose_cmd import diagnose
from connfix.cli.inventory_cmd import inventory
from connfix.cli.lab_cmd import lab
from connfix.cli.pool_cmd import pool
from connfix.cli.report_cmd import report
from connfix.cli.restart_cmd import restart
from connfix.cli.runbook_cmd import runbook
from connfix.cli.serve_cmd import serve
from connfix.cli.terminate_cmd import terminate
from connfix.cli.triage_cmd import triage
from connfix.errors import ConnfixError, ExitStatus


class ConnfixGroup(click.Group):
    """A group that turns connfix's errors into a message and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConnfixError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            from connfix.cli import envelope
            from connfix.text import defang

            click.echo(f"connfix: error: {defang(str(exc))}", err=True)
            envelope.error(defang(str(exc)), exc.exit_status)
            ctx.exit(exc.exit_status)
        except (KeyboardInterrupt, click.exceptions.Abort):
            click.echo("connfix: interrupted", err=True)
            ctx.exit(ExitStatus.INTERRUPTED)


@click.group(cls=ConnfixGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="connfix")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Diagnose and fix PostgreSQL connection exhaustion ("too many clients").

    \b
    Exit status:
      0    healthy / done
      1    still unhealthy, or a step failed and the run halted
      2    bad input (inventory, runbook, flags)
      3    the database or a host cannot be reached
      130  interrupted

    \b
    Example:
      connfix triage prod --dry-run
      connfix inventory check prod
      connfix diagnose prod --json
      connfix lab up && connfix lab leak app1 --count 6
    """
    ctx.obj = {"debug": debug}


cli.add_command(triage)
cli.add_command(diagnose)
cli.add_command(terminate)
cli.add_command(restart)
cli.add_command(report)
cli.add_command(pool)
cli.add_command(inventory)
cli.add_command(runbook)
cli.add_command(serve)
cli.add_command(lab)


def main() -> None:
    """Run the command line."""
    cli(prog_name="connfix")
