"""The command line: click only; each command calls one core function and renders it."""

from __future__ import annotations

from typing import Any

import click

from connfix import ConnfixError, ExitStatus, __version__

# Each command's module, imported only when that command runs (or when the help lists
# them all): a command pays for its own imports, not every other command's.
COMMANDS = {
    "triage": "triage_cmd:triage",
    "diagnose": "diagnose_cmd:diagnose",
    "terminate": "terminate_cmd:terminate",
    "restart": "restart_cmd:restart",
    "report": "report_cmd:report",
    "approve": "approve_cmd:approve",
    "reject": "approve_cmd:reject",
    "pool": "pool_cmd:pool",
    "inventory": "inventory_cmd:inventory",
    "runbook": "runbook_cmd:runbook",
    "serve": "serve_cmd:serve",
    "lab": "lab_cmd:lab",
}


class ConnfixGroup(click.Group):
    """A group that turns connfix's errors into a message and an exit status, and, with
    --json, into exactly one envelope on stdout whatever happened (a usage error while
    parsing the command's arguments, Ctrl-C). Its commands are loaded lazily (click's
    documented pattern: list_commands / get_command)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            from importlib import import_module

            module, attr = COMMANDS[cmd_name].split(":")
            command = getattr(import_module(f"connfix.cli.{module}"), attr)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

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


def main() -> None:
    """Run the command line, then leave without the interpreter's teardown when nothing
    is left to run at exit."""
    try:
        cli(prog_name="connfix")
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    leave(code)


def leave(code: object) -> None:
    """Exit with `code` as sys.exit would, skipping CPython's teardown — freeing every
    module and object one by one, about 20 ms after connfix's imports, paid by every
    command for nothing: the journal is fsynced as it is written and the report is
    written and closed before the command returns. The atexit functions still run and
    the standard streams are flushed; when another non-daemon thread is still alive (an
    executor's worker, a server's), a profiler or tracer is on, or a stream cannot be
    flushed, the ordinary exit runs instead, so that nothing waited for is cut short."""
    import atexit
    import os
    import sys
    import threading

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        status = 1
    main_thread = threading.main_thread()
    waited = [t for t in threading.enumerate() if t is not main_thread and not t.daemon]
    # a profiler, a tracer (a debugger, coverage) or dev mode: they finish at the exit
    if waited or sys.flags.dev_mode or sys.getprofile() or sys.gettrace():
        sys.exit(status)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: let Python say so as it always does
        sys.exit(status)
    os._exit(status)
