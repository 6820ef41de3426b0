"""`connfix restart`"""

from __future__ import annotations

import click

from connfix.cli import envelope
from connfix.cli.envelope import json_option
from connfix.cli.options import (
    DURATION,
    environment_argument,
    incidents_dir_option,
    inventory_option,
    inventory_search,
    yes_option,
)
from connfix.config.units import duration_text
from connfix.engine.run import RunMode


@click.command()
@environment_argument
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
    "--pause",
    default="0s",
    show_default=True,
    metavar="DURATION",
    type=DURATION,
    help="Pause between batches.",
)
@click.option(
    "--settle",
    default="2s",
    show_default=True,
    metavar="DURATION",
    type=DURATION,
    help="How long a Type=simple/exec unit must stay up after its restart (systemd calls"
    " those active as soon as they are started).",
)
@click.option(
    "--include-failed",
    is_flag=True,
    help="Also restart units that have failed or crash-loop (restarting may be the fix);"
    " by default the preflight refuses them.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Run the read-only preflight and show the order and commands; restart nothing.",
)
@yes_option
@click.option(
    "--resume",
    metavar="INCIDENT",
    help="Continue an interrupted roll: hosts its journal shows done are skipped.",
)
@incidents_dir_option
@json_option
@inventory_option
def restart(
    environment: str,
    hosts: tuple[str, ...],
    only_suspects: bool,
    batch: int,
    pause: float,
    settle: float,
    include_failed: bool,
    dry_run: bool,
    yes: bool,
    resume: str | None,
    incidents_dir: str | None,
    as_json: bool,
    inventory_path: str | None,
) -> None:
    """Restart the app hosts over SSH, one at a time, each gated before the next.

    First a read-only preflight of every target host, in parallel: SSH reachable, host
    key known and matching, every unit of the service loaded and active (patterns such
    as app@*.service resolved on the host), restart command permitted (`sudo -n -l`, as
    the command's target user). A unit that has failed or crash-loops is refused unless
    --include-failed; one that is inactive, activating or reloading is refused. If any
    host fails it, nothing is restarted (exit 3). Then, leak suspects first (most over
    their pool size first): record the units' invocations and the host's database
    sessions, restart each unit and wait until it is active as a new invocation
    (Type=simple/exec units must also stay up for --settle), the health check passes,
    the host's old sessions are gone from pg_stat_activity with no more new ones than
    its pool size, and every unit is still the invocation that passed. A host failing a
    gate halts the roll: the rest are not touched (exit 1).

    \b
    Example:
      connfix restart prod --dry-run
      connfix restart prod --only-suspects
      connfix restart prod --hosts web3,web4 --pause 30s
      connfix restart prod --resume incidents/20261125T021500Z-prod
    """
    if as_json:
        envelope.mark("restart", environment)
    from connfix.cli.options import check_hosts, host_names, run_and_exit
    from connfix.config.inventory_file import resolve_environment
    from connfix.engine.runbook import command_runbook

    loaded, env = resolve_environment(inventory_path, environment, inventory_search())
    names = host_names(hosts, "--hosts")
    check_hosts(names, environment, {h.name for h in env.hosts}, "--hosts")
    params = {
        "hosts": names,
        "only_suspects": only_suspects,
        "batch": batch,
        "pause": duration_text(pause),
        "settle": duration_text(settle),
        "include_failed": include_failed,
    }
    run_and_exit(
        environment,
        loaded,
        env,
        command_runbook("restart", "rolling_restart", params),
        incidents_dir=incidents_dir,
        dry_run=dry_run,
        yes=yes,
        as_json=as_json,
        command="restart",
        mode=RunMode.COMMAND,
        resume=resume,
    )
