"""The command line: click only; each command calls one core function and renders it."""

from __future__ import annotations

import sys
from typing import Any

import click

from connfix import __version__
from connfix.cli.inventory_cmd import inventory
from connfix.cli.lab_cmd import lab
from connfix.errors import ConnfixError, ExitStatus


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="connfix")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Diagnose and fix PostgreSQL connection exhaustion ("too many clients").

    \b
    Example:
      connfix inventory check prod
      connfix lab up && connfix lab leak app1 --count 6
    """
    ctx.obj = {"debug": debug}


cli.add_command(inventory)
cli.add_command(lab)


def main(argv: list[str] | None = None) -> Any:
    """Run the CLI and turn connfix's errors into messages and exit statuses."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        return cli.main(args=argv, prog_name="connfix", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(ExitStatus.INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitStatus.BAD_INPUT if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except ConnfixError as exc:
        if debug:
            raise
        click.echo(f"connfix: error: {exc}", err=True)
        sys.exit(exc.exit_status)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(ExitStatus.INTERRUPTED)
