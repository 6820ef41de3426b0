"""`connfix restart`"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from connfix.cli.options import inventory_option


@click.command()
@click.argument("environment")
@click.option(
    "--hosts",
    "hosts",
    metavar="NAME[,NAME...]",
    help="Only these hosts (comma-separated, or repeat the flag).",
    multiple=True,
)
@click.option("--only-suspects", is_flag=True, help="Only the leak suspects of the diagnosis.")
@click.option(
    "--batch",
    default=1,
    show_default=True,
    help="Hosts restarted at once (at most the inventory's max_unavailable).",
)
@click.option(
    "--pause", default="0s", show_default=True, metavar="DURATION", help="Pause between batches."
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Run the read-only preflight and show the order and commands; restart nothing.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--resume",
    metavar="INCIDENT",
    help="Continue an interrupted roll: hosts its journal shows done are skipped.",
)
@click.option("--incidents-dir", metavar="DIR", help="Where the incident directory goes.")
@inventory_option
def restart(
    environment: str,
    hosts: tuple[str, ...],
    only_suspects: bool,
    batch: int,
    pause: str,
    dry_run: bool,
    yes: bool,
    resume: str | None,
    incidents_dir: str | None,
    inventory_path: str | None,
) -> None:
    """Restart the app hosts over SSH, one at a time, each gated before the next.

    First a read-only preflight of every target host, in parallel: SSH reachable, host
    key known and matching, service present and active, restart command permitted
    (`sudo -n -l`). If any host fails it, nothing is restarted (exit 3). Then, leak
    suspects first (most over their pool size first): record the main pid and the
    host's database sessions, run the restart command, and wait until the service is
    active with a new main pid, the health check passes, and the host's old sessions
    are gone from pg_stat_activity with no more new ones than its pool size. A host
    failing a gate halts the roll: the rest are not touched (exit 1).

    \b
    Example:
      connfix restart prod --dry-run
      connfix restart prod --only-suspects
      connfix restart prod --hosts web3,web4 --pause 30s
      connfix restart prod --resume incidents/20261125T021500Z-prod
    """
    from connfix import render
    from connfix.cli.triage_cmd import incidents_base, interactive
    from connfix.engine import TriageRequest, resume_state, run_triage
    from connfix.inventory import resolve_environment
    from connfix.runbook import command_runbook

    loaded, env = resolve_environment(inventory_path, environment)
    names = [n.strip() for value in hosts for n in value.split(",") if n.strip()]
    known = {h.name for h in env.hosts}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.BadParameter(
            f"no host {', '.join(unknown)} in environment"
            f" {environment!r} (hosts: {', '.join(sorted(known))})",
            param_hint="--hosts",
        )
    resumed_from, done = resume_state(Path(resume), environment) if resume else (None, {})
    params = {"hosts": names, "only_suspects": only_suspects, "batch": batch, "pause": pause}
    request = TriageRequest(
        environment=environment,
        env=env,
        runbook=command_runbook("restart", "rolling_restart", params),
        incidents_dir=incidents_base(incidents_dir, env.incidents_dir),
        inventory_path=loaded.path,
        dry_run=dry_run,
        yes=yes,
        interactive=interactive(),
        command=True,
        resumed_from=resumed_from,
        resume_done=done,
    )
    result = run_triage(request, render.RichUI())
    render.triage_result(result)
    sys.exit(result.exit_status)
