"""Rich rendering of core results; the core never prints."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.markup import escape as _markup_escape

from connfix.config.text import defang
from connfix.diagnosis.labels import app_label


def escape(text: str) -> str:
    """Make text from outside safe to print: rich markup escaped, and control characters
    and bidi overrides shown visibly (see connfix.config.text)."""
    return _markup_escape(defang(str(text)))


if TYPE_CHECKING:
    from pathlib import Path

    from rich.table import Table

    from connfix.actions.base import Plan
    from connfix.diagnosis.cluster import ClusterDiagnosis
    from connfix.diagnosis.inventory_check import DatabaseCheck, EnvironmentCheck
    from connfix.diagnosis.model import Diagnosis
    from connfix.diagnosis.pool_sizing import PoolAdvice, PoolSizing
    from connfix.engine.run import RunResult
    from connfix.engine.runbook import Runbook, Step
    from connfix.lab.lab import UpResult
    from connfix.lab.status import Status


def _table(*args: Any, **kwargs: Any) -> Table:
    """A rich Table, its module imported on the first table (a command that prints only
    lines never loads it)."""
    from rich.table import Table

    return Table(*args, **kwargs)


def _width(stream: TextIO, environ: Mapping[str, str]) -> int | None:
    # Piped output (logs, grep, tests) gets wide tables instead of rich's 80 columns.
    columns = environ.get("COLUMNS", "")
    return None if stream.isatty() else int(columns) if columns.isdigit() else 160


@dataclass(frozen=True)
class Terminal:
    """Where connfix writes: results on `out` (stdout), progress and errors on `err`
    (stderr). Built once per command from the process (or by a test), passed in."""

    out: Console
    err: Console

    @classmethod
    def from_process(
        cls,
        environ: Mapping[str, str] | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> Terminal:
        env = os.environ if environ is None else environ
        out_stream, err_stream = stdout or sys.stdout, stderr or sys.stderr
        return cls(
            # emoji=False: an application_name or host name such as ":fire:" is shown as
            # written, never turned into a picture
            Console(
                file=stdout,
                highlight=False,
                emoji=False,
                soft_wrap=True,
                width=_width(out_stream, env),
            ),
            Console(
                file=stderr,
                stderr=stderr is None,
                highlight=False,
                emoji=False,
                soft_wrap=True,
                width=_width(err_stream, env),
            ),
        )


def _mark(ok: bool | None) -> str:
    if ok is None:
        return "[dim]-[/dim]"
    return "[green]ok[/green]" if ok else "[red]FAIL[/red]"


def environment_check(term: Terminal, result: EnvironmentCheck) -> None:
    """Print the preflight of one environment: its database (each node of several), then
    its hosts."""
    for db in result.nodes or [result.database]:
        _database_check(term, result.environment, db)
    _hosts_check(term, result)


def _database_check(term: Terminal, environment: str, db: DatabaseCheck) -> None:
    table = _table(title=f"database of {escape(environment)}", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    table.add_row("reachable", _mark(db.ok), escape(f"{db.target}: {db.detail}"))
    if db.ok:
        role = f"{db.role} ({'superuser' if db.is_superuser else 'not a superuser'})"
        table.add_row("connected as", "", escape(f"{role} via the {db.via} connection"))
        table.add_row(
            "privileges",
            "",
            (
                "sees every session"
                if db.read_all_stats
                else "[yellow]cannot see other roles' sessions (grant pg_read_all_stats)[/yellow]"
            )
            + "; "
            + (
                "may terminate other roles' sessions"
                if db.signal_backend
                else "[yellow]cannot terminate other roles' sessions (grant"
                " pg_signal_backend)[/yellow]"
            ),
        )
        table.add_row(
            "server",
            "",
            escape(f"PostgreSQL {db.server_version}, max_connections {db.max_connections}"),
        )
    for kind, works, detail in db.ways_in:
        table.add_row(f"{kind} connection", _mark(works), escape(detail))
    if not db.ways_in:
        table.add_row("way in when full", _mark(None), "not configured")
    term.out.print(table)


def _hosts_check(term: Terminal, result: EnvironmentCheck) -> None:
    hosts = _table(title=f"hosts of {escape(result.environment)}", title_justify="left")
    for column in ("host", "address", "ssh", "host key", "service", "time", "detail"):
        hosts.add_column(column, overflow="fold")
    for h in result.hosts:
        hosts.add_row(
            escape(h.name),
            escape(h.address),
            _mark(h.reachable),
            "[green]known[/green]" if h.host_key == "known" else f"[red]{h.host_key}[/red]",
            _mark(h.unit_present) if h.reachable and h.host_key == "known" else _mark(None),
            f"{h.seconds:.2f}s",
            escape(h.detail),
        )
    term.out.print(hosts)
    failed = sum(1 for h in result.hosts if not h.ok)
    if result.ok:
        term.out.print(f"[green]all checks passed[/green] ({len(result.hosts)} hosts)")
    else:
        parts = []
        checks = result.nodes or [result.database]
        if not all(db.ok and all(works for _, works, _ in db.ways_in) for db in checks):
            parts.append("database")
        if failed:
            parts.append(f"{failed} of {len(result.hosts)} hosts")
        term.out.print(f"[red]checks failed:[/red] {', '.join(parts)}")


def lab_up(term: Terminal, result: UpResult) -> None:
    """Print what `lab up` did."""
    verb = "is already up" if result.already_up else f"is up ({result.seconds:.1f}s)"
    reserved = (
        f", reserved_connections {result.reserved_connections}" if result.pg_major >= 16 else ""
    )
    term.out.print(
        f"lab {verb}: PostgreSQL {result.pg_major}, {result.hosts} hosts,"
        f" max_connections {result.max_connections}{reserved}, pool size"
        f" {result.pool_size} per host"
    )
    if result.pgbouncer_hosts:
        who = (
            "every host"
            if result.pgbouncer_hosts == result.hosts
            else f"app1–app{result.pgbouncer_hosts} (the rest direct)"
        )
        term.out.print(f"PgBouncer {result.pgbouncer_version} in front of the database for {who}")
    term.out.print(f"inventory: {result.inventory}  (environment: lab)")


def lab_status(term: Terminal, status: Status) -> None:
    """Print the lab's state."""
    if not status.hosts and not status.up:
        for problem in status.problems:
            term.out.print(escape(problem))
        return
    term.out.print(
        f"PostgreSQL {escape(status.server_version)}: {status.client_backends} client"
        f" backends of max_connections {status.max_connections}"
    )
    if status.pgbouncer_hosts:
        term.out.print(
            f"{escape(status.pgbouncer or 'PgBouncer (version unknown)')} in front of the"
            f" database for {status.pgbouncer_hosts} host(s)"
        )
    if status.nodes:
        term.out.print(
            "under Patroni: "
            + ", ".join(f"{escape(n)} {escape(r)}" for n, r in sorted(status.nodes.items()))
            + " (the counts below are every node's)"
        )
    table = _table()
    for column in (
        "host",
        "address",
        "systemd",
        "ssh",
        "app",
        "app pid",
        "memory",
        "pool",
        "leaked",
        "backends",
        "idle",
        "idle in tx",
    ):
        left = ("host", "address", "systemd", "ssh", "app")
        table.add_column(column, justify="left" if column in left else "right")
    for h in status.hosts:
        table.add_row(
            h.name,
            h.address,
            h.system if h.system == "running" else f"[red]{escape(h.system)}[/red]",
            h.ssh if h.ssh == "active" else f"[red]{escape(h.ssh)}[/red]",
            h.app if h.app == "active" else f"[red]{escape(h.app)}[/red]",
            str(h.app_pid or "[red]down[/red]"),
            "-" if h.memory_mb is None else f"{h.memory_mb:.0f} MB",
            str(h.pool),
            str(h.leaked),
            str(h.backends),
            str(h.idle),
            str(h.idle_in_transaction),
        )
    term.out.print(table)
    for problem in status.problems:
        term.out.print(f"[red]problem:[/red] {escape(problem)}")


PLAN_LINES = 25
_SEVERITY_STYLE = {"ok": "green", "warning": "yellow", "critical": "bold red"}


def _age(seconds: float | None) -> str:
    from connfix.config.units import format_duration

    return "-" if seconds is None else format_duration(seconds)


def _counts_table(title: str, counts: dict[str, int], lower_bound: bool) -> Table:
    table = _table(title=title + (" (lower bounds)" if lower_bound else ""), title_justify="left")
    table.add_column(title.split()[-1])
    table.add_column("connections", justify="right")
    for key, value in counts.items():
        table.add_row(escape(app_label(key)), str(value))
    return table


def diagnosis(term: Terminal, d: Diagnosis) -> None:
    """Print a diagnosis: header, by state, by host with suspects, idle transactions,
    blocking chains, CONNECTION LIMITs, the breakdowns, pools."""
    _header(term, d)
    lower = not d.visibility_complete
    term.out.print(_counts_table("by state", d.by_state, lower))
    if d.zero_setup:
        _zero_hosts(term, d, lower)
    else:
        term.out.print(_hosts_table(d, lower))
    if d.idle_in_transaction:
        term.out.print(_idle_in_transaction_table(d))
    if d.blocking_chains:
        term.out.print(_chains_table(d))
    if d.connection_limits:
        limits = _table(title="CONNECTION LIMITs", title_justify="left")
        for column in ("kind", "name", "used", "limit"):
            limits.add_column(column)
        for item in d.connection_limits:
            limits.add_row(item.kind, escape(item.name), str(item.used), str(item.limit))
        term.out.print(limits)
    apps = ", ".join(f"{escape(app_label(k))} {v}" for k, v in d.by_application.items())
    users = ", ".join(f"{escape(k or '(hidden)')} {v}" for k, v in d.by_user.items())
    term.out.print(f"by application: {apps or '-'}")
    term.out.print(f"by user: {users or '-'}")
    check = d.pool_check
    if d.zero_setup:
        term.out.print("pool check: unknown without an inventory (pool sizes)")
    else:
        mark = "[green]" if check.safe else "[red]"
        term.out.print(f"pool check: {mark}{escape(check.sentence())}[/]")
    for state in d.pgbouncers:
        bouncer(term, state)
    if d.suspects:
        term.out.print(f"[red]leak suspects:[/red] {escape(', '.join(d.suspects))}")


def nodes(term: Terminal, environment: str, found: ClusterDiagnosis) -> None:
    """Every node's diagnosis under a heading saying its role; then the environment's
    severity (the worst node's) and any node that could not be diagnosed."""
    for note in found.topology.notes:
        term.out.print(f"[yellow]note:[/yellow] {escape(note)}")
    for d in found.nodes:
        style = _SEVERITY_STYLE[d.severity]
        ha = f", Patroni: {escape(d.ha_role)}" if d.ha_role else ""
        term.out.rule(
            f"node [bold]{escape(d.node or '?')}[/bold]: {d.role}{ha} —"
            f" [{style}]{d.severity.upper()}[/{style}]",
            align="left",
        )
        diagnosis(term, d)
        if d.ha_sessions:
            term.out.print(
                f"the HA agent (Patroni) holds {d.ha_sessions} session(s) here: counted, never"
                " a leak suspect, never terminated"
            )
    for name, why in found.unreachable.items():
        term.out.print(f"[red]node {escape(name)}: cannot be diagnosed:[/red] {escape(why)}")
    style = _SEVERITY_STYLE[found.severity]
    worst = [d.node or "?" for d in found.nodes if d.severity == found.severity]
    worst += [n for n in found.unreachable if found.severity == "critical"]
    term.out.print(
        f"[bold]{escape(environment)}[/bold]: {len(found.nodes) + len(found.unreachable)}"
        f" node(s), severity [{style}]{found.severity.upper()}[/{style}]"
        + (f" ({escape(', '.join(worst))})" if found.severity != "ok" else "")
    )


def _header(term: Terminal, d: Diagnosis) -> None:
    """Where connfix got in, the limits and their use, the severity and why, the notes."""
    style = _SEVERITY_STYLE[d.severity]
    term.out.print(
        f"[bold]{escape(d.environment)}[/bold]: PostgreSQL {escape(d.server_version)},"
        f" connected as {escape(d.connected_as)} via the {d.via} connection"
    )
    if d.refusal:
        term.out.print(
            f"[yellow]the database refused the ordinary connection[/yellow]"
            f" ({escape(d.refusal)}); diagnosed through the {d.via} connection"
        )
    term.out.print(
        f"usable {d.usable_connections} (max_connections {d.max_connections}"
        f" − superuser_reserved {d.superuser_reserved_connections}"
        f" − reserved {d.reserved_connections}"
        + (
            f" − {d.platform}'s reserve {d.platform_reserved_connections}"
            if d.platform_reserved_connections
            else ""
        )
        + f")   used {d.client_backends}"
        + (f" (connfix's own: {d.own_sessions})" if d.own_sessions else "")
        + f"   utilization {d.utilization:.0%}   severity [{style}]{d.severity.upper()}[/{style}]"
    )
    for reason in d.severity_reasons:
        term.out.print(f"  - {escape(reason)}")
    if d.platform != "self-managed":
        term.out.print(
            f"platform {d.platform}: its own {d.platform_sessions} session(s) are in the"
            " (platform) row: counted, never a leak suspect, never terminated"
        )
    for note in d.notes:
        term.out.print(f"[yellow]note:[/yellow] {escape(note)}")
    if not d.visibility_complete:
        term.out.print(
            f"[yellow]visibility incomplete:[/yellow] {d.hidden_sessions} session(s) of other"
            f" roles are hidden from {escape(d.connected_as)} (grant pg_read_all_stats);"
            " they are counted, but their state and host are unknown: the per-state and"
            " per-host counts are lower bounds"
        )


def _hosts_table(d: Diagnosis, lower: bool) -> Table:
    """The inventory's hosts: connections, pool, what no service owns, states, suspects."""
    hosts = _table(title="by host" + (" (lower bounds)" if lower else ""), title_justify="left")
    pooled = bool(d.pgbouncers)
    for column in (
        "host",
        "address",
        "conns",
        *(("via PgBouncer",) if pooled else ()),
        "pool (+overflow)",
        "no service",
        "idle",
        "idle in tx",
        "active",
        "oldest idle",
        "suspect",
    ):
        hosts.add_column(
            column,
            justify="left" if column in ("host", "address", "suspect") else "right",
            overflow="fold",
        )
    for h in d.by_host:
        hosts.add_row(
            escape(h.host),
            escape(h.client_addr or "-"),
            str(h.count),
            *((_via(h),) if pooled else ()),
            _pool(h.pool_size, h.max_capacity),
            escape(", ".join(f"{k} {v}" for k, v in h.unowned_clients.items()) or "-")
            if h.pool_size is not None
            else "-",
            str(h.idle),
            str(h.idle_in_transaction),
            str(h.active),
            _age(h.oldest_idle_seconds),
            "[red]SUSPECT[/red]: " + escape("; ".join(h.reasons)) if h.suspect else "",
        )
    return hosts


def _idle_in_transaction_table(d: Diagnosis) -> Table:
    """The oldest sessions idle in a transaction, with what they block."""
    iit = _table(title="oldest idle in transaction", title_justify="left")
    for column in (
        "pid",
        "user",
        "application",
        "host",
        "in transaction",
        "idle",
        "blocking",
        "query",
    ):
        iit.add_column(column, overflow="fold")
    for s in d.idle_in_transaction:
        iit.add_row(
            str(s.pid),
            escape(s.usename or ""),
            escape(app_label(s.application_name)),
            escape(s.host),
            _age(s.xact_seconds),
            _age(s.idle_seconds),
            ", ".join(map(str, s.blocking)) or "-",
            escape(s.query or ""),
        )
    return iit


def _chains_table(d: Diagnosis) -> Table:
    """Each root blocker and every session waiting behind it."""
    chains = _table(
        title="blocking chains (root blocker → every session behind it)", title_justify="left"
    )
    for column in ("root pid", "host", "user", "state", "in transaction", "waiting", "query"):
        chains.add_column(column, overflow="fold")
    for c in d.blocking_chains:
        chains.add_row(
            str(c.root),
            escape(c.host),
            escape(c.usename or ""),
            escape(c.state),
            _age(c.xact_seconds),
            f"{len(c.waiting)}: " + ", ".join(map(str, c.waiting)),
            escape(c.query or ""),
        )
    return chains


def _zero_hosts(term: Terminal, d: Diagnosis, lower: bool) -> None:
    """The by-host table with no inventory: client addresses (and their reverse DNS
    names); no pool or service columns, nothing is known of them."""
    table = _table(
        title="by client address" + (" (lower bounds)" if lower else ""), title_justify="left"
    )
    for column in ("address", "name", "conns", "idle", "idle in tx", "active", "oldest idle"):
        table.add_column(column, justify="left" if column in ("address", "name") else "right")
    table.add_column("suspect (by share and age)", overflow="fold")
    for h in d.by_host:
        table.add_row(
            escape(h.client_addr or h.host),
            escape(h.host if h.host != h.client_addr else "-"),
            str(h.count),
            str(h.idle),
            str(h.idle_in_transaction),
            str(h.active),
            _age(h.oldest_idle_seconds),
            "[red]SUSPECT[/red]: " + escape("; ".join(h.reasons)) if h.suspect else "",
        )
    term.out.print(table)


def _via(h: Any) -> str:
    """A host's client connections in PgBouncers, and how many of its sessions are
    server connections lent to them; a PgBouncer's own row says so."""
    if h.pgbouncer is not None:
        return "its server connections"
    if not h.pooled:
        return "-"
    text = f"{h.pooled} client(s)"
    if h.pooled_waiting:
        text += f", {h.pooled_waiting} waiting"
    return text + (f"; {h.lent} lent a server" if h.lent else "")


def _pool(pool: int | None, capacity: int | None) -> str:
    if pool is None:
        return "-"
    return str(pool) if capacity in (None, pool) else f"{pool} (+{(capacity or pool) - pool})"


def bouncer(term: Terminal, state: dict[str, Any]) -> None:
    """Print what PgBouncer's admin console says."""
    name = escape(state.get("name", "pgbouncer"))
    if "error" in state:
        term.out.print(f"[yellow]PgBouncer {name}:[/yellow] {escape(state['error'])}")
        return
    table = _table(
        title=f"PgBouncer {name} pools ({escape(state.get('version') or 'version unknown')})",
        title_justify="left",
    )
    for column in (
        "database",
        "user",
        "mode",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "maxwait",
    ):
        table.add_column(
            column, justify="left" if column in ("database", "user", "mode") else "right"
        )
    for p in state["pools"]:
        table.add_row(
            escape(p["database"]),
            escape(p["user"]),
            escape(p["pool_mode"]),
            str(p["cl_active"]),
            str(p["cl_waiting"]),
            str(p["sv_active"]),
            str(p["sv_idle"]),
            str(p["sv_used"]),
            f"{p['maxwait']:.1f}s",
        )
    term.out.print(table)
    colour = "red" if state["saturated"] or state["database_full"] else "green"
    by_host = ", ".join(f"{escape(k)} {v}" for k, v in state.get("clients_by_host", {}).items())
    term.out.print(
        f"PgBouncer {name}: [{colour}]{escape(state['verdict'])}[/{colour}]"
        f" ({state['server_connections']} server connections,"
        f" {state['server_connections_in_pg_stat_activity']} of them seen in"
        f" pg_stat_activity; clients by host: {by_host or '-'})"
    )


def runbook(term: Terminal, book: Runbook) -> None:
    """Print a runbook as a readable plan."""
    term.out.print(
        f"[bold]{escape(book.name)}[/bold]  ({escape(book.source)}, sha256 {book.sha256[:12]})"
    )
    term.out.print(escape(book.summary))
    term.out.print(f"healthy when: {escape(book.healthy)}  (escalation stops as soon as it holds)")
    for index, step in enumerate(book.steps, start=1):
        flags = []
        if step.mutating:
            flags.append("changes things")
        if step.confirm:
            flags.append("asks first")
        flags.append(f"on failure: {step.on_failure}")
        term.out.print(
            f"\n{index}. [bold]{escape(step.id)}[/bold] — {step.action} ({', '.join(flags)})"
        )
        if step.description:
            term.out.print(f"   {escape(step.description)}")
        if step.when:
            term.out.print(f"   only when: {escape(step.when)}")
        params = {k: v for k, v in step.params.dump().items() if v is not None}
        if params:
            term.out.print("   " + escape(", ".join(f"{k}={v}" for k, v in params.items())))


class RichUI:
    """The engine's operator interface: progress and prompts on stderr, plans on stdout."""

    def __init__(self, term: Terminal, command: str | None = None) -> None:
        self.term = term
        self.command = command  # a single command (restart, terminate), not a runbook

    def ended(self, result: RunResult) -> None:
        verdict(self.term, result, self.command)

    def started(self, journal: Path, dry_run: bool) -> None:
        if dry_run:
            self.term.err.print(
                "[bold yellow]DRY RUN[/bold yellow]: diagnosing for real, changing nothing"
            )
        self.term.err.print(f"journal: {escape(str(journal))}")

    def diagnosis(self, d: Diagnosis) -> None:
        for usage in d.by_host:
            if usage.suspect:
                self.term.err.print(
                    f"  suspect {escape(usage.host)}: {escape('; '.join(usage.reasons))}"
                )

    def step(self, index: int, total: int, step: Step, status: str, detail: str) -> None:
        colour = {
            "ok": "green",
            "failed": "red",
            "skipped": "dim",
            "planned": "yellow",
            "running": "cyan",
            "interrupted": "red",
        }.get(status, "white")
        where = (
            f"{escape(step.id)}:"
            if self.command
            else f"[{index}/{total}] {escape(step.id)} ({step.action}):"
        )
        self.term.err.print(f"{where} [{colour}]{status}[/{colour}] — {escape(detail)}")

    def plan(self, step: Step, plan: Plan[Any], applied: bool) -> None:
        head = "would" if not applied else "plan:"
        name = escape(step.id) if self.command else f"step {escape(step.id)}"
        if plan.blocked is not None:  # the refusal alone: no plan that looks about to run
            self.term.out.print(f"{name} refused, nothing done: {escape(plan.blocked)}")
            return
        self.term.out.print(f"{name} {head} {escape(plan.summary)}")
        # a dry run shows every operation; a real run shows the first ones (the journal
        # has them all), so a thousand pids do not bury the prompt
        shown = plan.operations if not applied else plan.operations[:PLAN_LINES]
        for op in shown:
            target = f" [{escape(op.target)}]" if op.target else ""
            self.term.out.print(f"  - {escape(op.description)}{target}")
            if op.command:
                self.term.out.print(f"      {escape(op.command)}")
        hidden = len(plan.operations) - len(shown)
        if hidden:
            self.term.out.print(
                f"  … and {hidden} more (every one is in the journal; --dry-run lists all)"
            )

    def confirm(self, question: str) -> bool:
        from rich.prompt import Confirm

        return Confirm.ask(escape(question), console=self.term.err, default=False)

    def note(self, message: str) -> None:
        self.term.err.print(escape(message))

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        table = _table(title=escape(title), title_justify="left")
        for column in columns:
            table.add_column(escape(column))
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        self.term.err.print(table)


def verdict(term: Terminal, result: RunResult, command: str | None = None) -> None:
    """Print how a run ended and its incident, as soon as it ended (the report is
    rendered after); a single command's reads like the command (`restart refused: …`,
    not `halted: step restart refused: …`)."""
    from connfix.engine.run import RunStatus

    colour = "green" if result.exit_status == 0 else "red"
    if command and result.message.startswith(f"step {command} "):
        message = result.message.removeprefix("step ")
        term.out.print(f"[{colour}]{escape(message)}[/{colour}]")
    elif result.status is RunStatus.DRY_RUN:
        term.out.print(f"[bold yellow]DRY RUN[/bold yellow] — {escape(result.message)}")
    else:
        if result.dry_run:
            term.out.print("[bold yellow]DRY RUN[/bold yellow] — nothing was changed")
        term.out.print(f"[{colour}]{result.status.value}[/{colour}]: {escape(result.message)}")
    term.out.print(f"incident: {escape(str(result.incident_dir))}")


def report_written(term: Terminal, result: RunResult) -> None:
    """Print where the run's report is, or why it could not be written in full."""
    if result.report is not None:
        term.out.print(f"report: {escape(str(result.report))}")
    if result.report_error:
        what = "" if result.report is not None else "the report could not be written: "
        term.err.print(
            f"[red]{what}{escape(result.report_error)}[/red]"
            f" (regenerate it with `connfix report {escape(str(result.incident_dir))}`)"
        )


def pool_nodes(term: Terminal, advice: PoolAdvice) -> None:
    """Each database node's sizing (standbys first), then what to know of the cluster."""
    for n in advice.nodes:
        term.out.rule(
            f"node [bold]{escape(n.node)}[/bold]: {n.role}, max_connections"
            f" {n.max_connections}, hosts {escape(', '.join(n.hosts) or 'none')}",
            align="left",
        )
        pool(term, n.sizing, None)
    for note in advice.cluster_notes:
        term.out.print(f"[yellow]cluster:[/yellow] {escape(note)}")


def pool(term: Terminal, sizing: PoolSizing, bouncer_config: dict[str, Any] | None) -> None:
    """Print the pool sizing, before → after, and the PgBouncer config written."""
    table = _table(title="pool sizing", title_justify="left")
    for column in ("", "servers", "pool size per server", "total", "available", "safe?"):
        table.add_column(column, justify="left" if not column else "right")
    for row in sizing.table():
        table.add_row(
            row["label"],
            str(row["servers"]),
            escape(row["per_server"]),
            str(row["total"]),
            str(row["available"]),
            "[green]yes[/green]" if row["safe"] else "[red]NO[/red]",
        )
    term.out.print(table)
    for note in sizing.notes:
        term.out.print(f"  - {escape(note)}")
    term.out.print(f"verdict: {escape(sizing.verdict())}")
    if bouncer_config:
        term.out.print(
            f"\nPgBouncer config written to {escape(bouncer_config['directory'])}:"
            f" {', '.join(bouncer_config['files'])}"
            + (
                " (run auth_query.sql as a superuser; fill in pgbouncer_auth's secret)"
                if bouncer_config["auth"] == "auth_query"
                else " (fill in the SCRAM secrets)"
            )
        )
        if bouncer_config["direct_hosts"]:
            term.out.print(
                f"  still direct: {escape(', '.join(bouncer_config['direct_hosts']))} — room"
                f" kept for their pools: {bouncer_config['direct_capacity']}"
            )
        if not bouncer_config["safe"]:
            term.out.print(
                "  [red]NOT safe:[/red] the direct hosts alone can take every slot; move more"
                " of them behind PgBouncer or lower their pool size first"
            )
        term.out.print(
            f"  pool_mode {bouncer_config['pool_mode']}, max_db_connections"
            f" {bouncer_config['max_db_connections']}, default_pool_size"
            f" {bouncer_config['default_pool_size']}, reserve_pool_size"
            f" {bouncer_config['reserve_pool_size']}, max_client_conn"
            f" {bouncer_config['max_client_conn']}"
        )
        for item in bouncer_config["settings"]:
            off = (
                "" if item["written"] else f" (commented out: PgBouncer {item['since']} and later)"
            )
            term.out.print(f"  {item['key']} = {item['value']}{off}: {escape(item['reason'])}")
        term.out.print(f"  apps connect with DATABASE_URL={escape(bouncer_config['database_url'])}")
