"""Options shared by several commands."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from connfix.config.units import parse_duration

if TYPE_CHECKING:
    from connfix.cli.render import Terminal
    from connfix.config.inventory import Environment
    from connfix.config.inventory_file import InventorySearch, LoadedInventory
    from connfix.engine.run import RunMode
    from connfix.engine.runbook import Runbook

F = TypeVar("F", bound=Callable[..., Any])


def complete_environments(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of ENVIRONMENT: the names in the inventory the command would
    use (--inventory if already typed, else the usual search); nothing on any error."""
    from click.shell_completion import CompletionItem

    from connfix.config.inventory_file import find_inventory, load_inventory

    try:
        explicit = ctx.params.get("inventory_path")
        names = list(
            load_inventory(
                find_inventory(explicit, None, inventory_search())
            ).inventory.environments
        )
    except Exception:  # completion must never print a traceback into the shell
        names = []
    if "lab" not in names:
        names.append("lab")  # the lab's own inventory, when it is up
    return [CompletionItem(n) for n in sorted(names) if n.startswith(incomplete)]


def environment_argument(fn: F) -> F:
    """Add the ENVIRONMENT argument, completed from the inventory."""
    return click.argument("environment", shell_complete=complete_environments)(fn)


def optional_environment_argument(fn: F) -> F:
    """ENVIRONMENT, optional: without it, --dsn or libpq's PG* variables (zero-setup)."""
    return click.argument("environment", required=False, shell_complete=complete_environments)(fn)


def dsn_option(fn: F) -> F:
    """Add --dsn and --platform (zero-setup: no inventory)."""
    fn = click.option(
        "--platform",
        type=click.Choice(["self-managed", "rds", "aurora", "cloudsql", "azure"]),
        help="Zero-setup: who runs the server (as database.platform in an inventory): a"
        " managed service's own sessions are kept apart and its reserve counted."
        "  [default: self-managed]",
    )(fn)
    return click.option(
        "--dsn",
        metavar="DSN",
        help="Work from this connection string alone, no inventory (zero-setup). Without"
        " ENVIRONMENT and --dsn, libpq's PG* variables (PGHOST, PGSERVICE…) say where.",
    )(fn)


def zero_setup(
    environment: str | None,
    dsn: str | None,
    inventory_path: str | None,
    platform: str | None = None,
) -> tuple[str, Environment] | None:
    """The zero-setup environment when the command was given a DSN and no inventory
    environment; None for an inventory environment; a usage error when neither or both.
    The password goes in ~/.pgpass or PGPASSWORD: a DSN on a command line is visible to
    every user of the machine, so one with a password is refused."""
    from connfix.config.records import Invalid
    from connfix.diagnosis import zero_setup

    if dsn is None and (environment is not None or not zero_setup.from_environment()):
        if environment is None:
            raise click.UsageError(
                "give ENVIRONMENT (from the inventory), or --dsn DSN to work from a"
                " connection string alone (libpq's PG* variables work too)"
            )
        if platform is not None:
            raise click.UsageError(
                "--platform goes with --dsn: an inventory says it as database.platform"
            )
        return None
    if environment is not None and dsn is not None:
        raise click.UsageError("give ENVIRONMENT or --dsn, not both")
    if inventory_path is not None:
        raise click.UsageError("--inventory names an inventory: give ENVIRONMENT, not --dsn")
    try:
        env = zero_setup.environment_for(dsn, platform or "self-managed")
    except Invalid as exc:
        why = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors)
        raise click.BadParameter(why, param_hint="--dsn") from None
    return zero_setup.label(dsn), env


def inventory_option(fn: F) -> F:
    """Add --inventory PATH (else $CONNFIX_INVENTORY, ./inventory.yaml, the lab's)."""
    return click.option(
        "--inventory",
        "-i",
        "inventory_path",
        metavar="PATH",
        help="Inventory file (default: $CONNFIX_INVENTORY, then ./inventory.yaml; the lab's"
        " inventory for environment 'lab').",
    )(fn)


def interactive() -> bool:
    """Tell whether an operator can answer prompts (a terminal on stdin and stderr)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def inventory_search() -> InventorySearch:
    """Where this process looks for an inventory: $CONNFIX_INVENTORY, the working
    directory, then the lab's (the CLI knows the lab; the inventory module does not)."""
    from pathlib import Path

    from connfix.config.inventory_file import InventorySearch
    from connfix.lab.paths import lab_dir

    return InventorySearch(
        os.environ.get("CONNFIX_INVENTORY") or None, Path.cwd(), lab_dir() / "inventory.yaml"
    )


def incidents_dir_option(fn: F) -> F:
    """Add --incidents-dir DIR."""
    return click.option(
        "--incidents-dir",
        metavar="DIR",
        help="Where the incident directory goes (default: the inventory's"
        " incidents_dir, $CONNFIX_INCIDENTS_DIR, ./incidents).",
    )(fn)


def yes_option(fn: F) -> F:
    """Add --yes / -y."""
    return click.option(
        "--yes", "-y", is_flag=True, help="Apply change-making steps without asking."
    )(fn)


def host_names(values: tuple[str, ...], flag: str) -> list[str]:
    """Split `--hosts a,b --hosts c`; an empty or blank selector is an error, never
    "every host" (a selector that widens is the one an operator did not mean)."""
    names = []
    for value in values:
        parts = [part.strip() for part in value.split(",")]
        if not value.strip() or any(not part for part in parts):
            raise click.BadParameter(
                f"{value!r} names no host (an empty name); leave the flag out for every host",
                param_hint=flag,
            )
        names += parts
    return names


def check_hosts(names: list[str], environment: str, known: set[str], flag: str) -> None:
    """Refuse host names the environment does not have (a usage error, exit 2)."""
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.BadParameter(
            f"no host {', '.join(unknown)} in environment {environment!r}"
            f" (hosts: {', '.join(sorted(known))})",
            param_hint=flag,
        )


def run_and_exit(
    environment: str,
    loaded: LoadedInventory | None,
    env: Environment,
    runbook: Runbook,
    *,
    incidents_dir: str | None,
    dry_run: bool,
    yes: bool,
    mode: RunMode,
    host_health: bool = True,
    resume: str | None = None,
    as_json: bool = False,
    command: str = "triage",
) -> None:
    """Run a runbook on the engine, print how it ended, exit with its status; with
    as_json, also the envelope on stdout (everything else on stderr)."""
    import sys
    from pathlib import Path

    from connfix.cli import render
    from connfix.engine.run import RunMode
    from connfix.engine.start import start_run

    runbook.check_hosts(environment, {h.name for h in env.hosts})
    term = terminal()
    if mode is RunMode.TRIAGE:  # which runbook runs, said before anything else happens
        term.err.print(
            f"runbook: {render.escape(runbook.name)} ({render.escape(runbook.source)},"
            f" sha256 {runbook.sha256[:12]}…)"
        )
        if runbook.shadows:
            term.err.print(
                f"[bold yellow]WARNING[/bold yellow]: {render.escape(runbook.source)} shadows"
                f" connfix's shipped runbook of the same name ({render.escape(runbook.shadows)});"
                " pass a path to choose explicitly"
            )
    single = command if mode is RunMode.COMMAND else None
    result = start_run(
        environment,
        env,
        runbook,
        render.RichUI(term, single),
        incidents_dir=incidents_dir,
        inventory_path=loaded.path if loaded is not None else Path("(none: --dsn)"),
        mode=mode,
        dry_run=dry_run,
        yes=yes,
        interactive=interactive(),
        host_health=host_health,
        resume=resume,
    )
    render.report_written(term, result)  # the verdict was printed as the run ended
    if as_json:
        from connfix.cli import envelope

        envelope.emit(
            command,
            result.status.value,
            result.exit_status,
            environment=environment,
            incident=result.incident_dir,
            result={
                "message": result.message,
                "dry_run": result.dry_run,
                "steps": [{"id": s.id, "status": s.status.value} for s in result.steps],
                "final": result.final.to_json() if result.final else None,
                "report": str(result.report) if result.report else None,
                "report_error": result.report_error,
            },
        )
    sys.exit(result.exit_status)


class DurationParam(click.ParamType[float, Any]):
    """A duration flag as operators write it (500ms, 30s, 10m, 2h, 1d), given to the
    command as seconds; a bad one is a usage error (exit 2) naming the flag."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationParam()


def terminal() -> Terminal:
    """Return the command's terminal: made once per invocation, on first use (a command
    that prints nothing through rich never loads it), kept on the root context."""
    import sys

    from connfix.cli.render import Terminal

    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    if isinstance(obj, dict):
        if not isinstance(obj.get("terminal"), Terminal):
            # --json: stdout carries the envelope alone; everything else goes to stderr
            out = sys.stderr if obj.get("json") else None
            obj["terminal"] = Terminal.from_process(stdout=out)
        term: Terminal = obj["terminal"]
        return term
    return Terminal.from_process()
