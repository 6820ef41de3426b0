"""The one way a run starts, for the CLI and for `connfix serve` alike: the runbook's
hosts checked against the environment, a resumed run's journal read, where its incident
goes decided, the request built — then the step loop."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from connfix.engine.run import RunMode, RunRequest

if TYPE_CHECKING:
    from connfix.config.inventory import Environment
    from connfix.engine.run import RunResult
    from connfix.engine.runbook import Runbook
    from connfix.engine.ui import UI
    from connfix.hosts.remote import Remote


def start_run(
    environment: str,
    env: Environment,
    runbook: Runbook,
    ui: UI,
    *,
    incidents_dir: str | None,
    inventory_path: Path,
    mode: RunMode = RunMode.TRIAGE,
    dry_run: bool = False,
    yes: bool = False,
    interactive: bool = False,
    host_health: bool = True,
    resume: str | None = None,
    trigger: str | None = None,
    max_restart_hosts: int | None = None,
    approve_alone: frozenset[str] | None = None,
    alert_starts_at: str | None = None,
) -> RunResult:
    """Run a runbook against one environment (see engine.loop.run_runbook)."""
    from connfix.record.journal import incidents_base, resume_state

    runbook.check_hosts(environment, {h.name for h in env.hosts})
    resumed_from, done = resume_state(Path(resume), environment) if resume else (None, {})
    logins = _log_in_early(env) if host_health else {}
    try:
        from connfix.engine.loop import operator, run_runbook

        node = node_role = None
        nodes: dict[str, str] = {}
        cluster = None
        if env.database.several:
            cluster = env
            env, node, node_role, nodes = _on_the_exhausted_node(environment, env, ui)
        request = RunRequest(
            environment=environment,
            env=env,
            runbook=runbook,
            incidents_dir=incidents_base(incidents_dir, env.incidents_dir),
            inventory_path=inventory_path,
            mode=mode,
            dry_run=dry_run,
            yes=yes,
            interactive=interactive,
            host_health=host_health,
            resumed_from=resumed_from,
            resume_done=done,
            trigger=trigger,
            max_restart_hosts=max_restart_hosts,
            approve_alone=approve_alone,
            requester=trigger or operator(),
            alert_starts_at=alert_starts_at,
            node=node,
            node_role=node_role,
            nodes=nodes,
            cluster=cluster,
            logins=logins,
        )
        return run_runbook(request, ui)
    finally:
        for conn in logins.values():
            conn.close()


def _log_in_early(env: Environment) -> dict[str, Remote]:
    """Begin the SSH logins of the run's first diagnosis now, and its health checks.

    The first step diagnoses, and a diagnosis checks the health of every host with a
    health check, over SSH. Those logins begin here, in the background, while the rest of
    connfix loads and connects to the database: the SSH stack's import is paid first, and
    each host's side of its login (sshd's session, PAM, logind: 30–90 ms on the lab's
    hosts) no longer waits in the first diagnosis. Each host's health checks then run on
    its login as soon as it is made, and the first diagnosis takes their results when
    they began at most HEALTH_AHEAD_FRESH_S before it (engine.context): it no longer
    waits for them after its queries either (on the lab its step took 30–48 ms, now
    11 ms). Read-only, as the checks are in every diagnosis; the run uses these
    connections and closes them when it ends."""
    checks = {
        h.name: [s.health_check for s in env.services_on(h) if s.health_check] for h in env.hosts
    }
    hosts = [h for h in env.hosts if checks[h.name]]
    if not hosts:
        return {}
    from connfix.config.defaults import HEALTH_CHECK_S
    from connfix.hosts import remote

    logins: dict[str, Remote] = {}
    for host in hosts:
        try:
            logins[host.name] = remote.Remote(host, env.ssh)
        except Exception:  # a connection that cannot even be set up (its ~/.ssh/config,
            continue  # say) is left to the diagnosis, which meets it again and says so
    remote.log_in_early(logins.values(), ahead=checks, limit=HEALTH_CHECK_S)
    return logins


def _on_the_exhausted_node(
    environment: str, env: Environment, ui: UI
) -> tuple[Environment, str, str, dict[str, str]]:
    """Of several database nodes, the one the run acts on: the worst (by severity, then
    utilization; the primary when every node is fine). The run then sees that node
    alone: its sessions, its way in when full, the hosts crowding it."""
    from connfix import DatabaseUnavailable
    from connfix.diagnosis.cluster import SEVERITY_ORDER, diagnose_all

    found = diagnose_all(environment, env)
    if not found.nodes:
        why = "; ".join(f"{n}: {w}" for n, w in found.unreachable.items())
        raise DatabaseUnavailable(f"no database node of {environment} can be reached ({why})")
    target = max(
        found.nodes,
        key=lambda d: (SEVERITY_ORDER.index(d.severity), d.utilization, d.role == "primary"),
    )
    if target.severity == "ok":
        target = next((d for d in found.nodes if d.role == "primary"), target)
    member = next(m for m in found.topology.members if m.node.name == target.node)
    severities = found.severities
    others = ", ".join(f"{n} {s}" for n, s in severities.items() if n != target.node)
    ui.note(
        f"{environment} has {len(severities)} database nodes; this run acts on"
        f" {target.node} ({target.role}, {target.severity}) alone"
        + (f"; {others}" if others else "")
    )
    node_env = env.replace(database=env.database.of_node(member.node))
    return node_env, member.node.name, target.role, severities
