"""The command line: click only; each command calls one core function and renders it."""

from __future__ import annotations

from typing import Any

import click

from connfix import ConnfixError, ExitStatus, __version__
from connfix.cli.approve_cmd import approve, reject
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


class ConnfixGroup(click.Group):
    """A group that turns connfix's errors into a message and an exit status, and, with
    --json, into exactly one envelope on stdout whatever happened (a usage error while
    parsing the command's arguments, Ctrl-C)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["connfix.argv"] = list(args)  # for a usage error's envelope
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        from connfix.cli import envelope

        try:
            return super().invoke(ctx)
        except ConnfixError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            from connfix.config.text import defang

            click.echo(f"connfix: error: {defang(str(exc))}", err=True)
            envelope.error(defang(str(exc)), exc.exit_status)
            ctx.exit(exc.exit_status)
        except click.UsageError as exc:  # click prints the usage on stderr as always
            envelope.error(exc.format_message(), ExitStatus.BAD_INPUT)
            raise
        except (KeyboardInterrupt, click.exceptions.Abort):
            click.echo("connfix: interrupted", err=True)
            envelope.error("interrupted (Ctrl-C)", ExitStatus.INTERRUPTED)
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
cli.add_command(approve)
cli.add_command(reject)
cli.add_command(pool)
cli.add_command(inventory)
cli.add_command(runbook)
cli.add_command(serve)
cli.add_command(lab)


def main() -> None:
    """Run the command line."""
    cli(prog_name="connfix")
