"""Rich rendering of core results; the core never prints."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from connfix.check import EnvironmentCheck
    from connfix.lab.lab import Status, UpResult


def _width(stream: TextIO) -> int | None:
    # Piped output (logs, grep, tests) gets wide tables instead of rich's 80 columns.
    columns = os.environ.get("COLUMNS", "")
    return None if stream.isatty() else int(columns) if columns.isdigit() else 160


out = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def _mark(ok: bool | None) -> str:
    if ok is None:
        return "[dim]-[/dim]"
    return "[green]ok[/green]" if ok else "[red]FAIL[/red]"


def environment_check(result: EnvironmentCheck) -> None:
    """Print the preflight of one environment."""
    db = result.database
    table = Table(title=f"database of {escape(result.environment)}", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    table.add_row("reachable", _mark(db.ok), escape(f"{db.target}: {db.detail}"))
    if db.ok:
        role = f"{db.role} ({'superuser' if db.is_superuser else 'not a superuser'})"
        table.add_row("connected as", "", escape(f"{role} via the {db.via} connection"))
        table.add_row(
            "server",
            "",
            escape(f"PostgreSQL {db.server_version}, max_connections {db.max_connections}"),
        )
    table.add_row("admin connection", _mark(db.admin_ok), escape(db.admin_detail))
    out.print(table)
    hosts = Table(title=f"hosts of {escape(result.environment)}", title_justify="left")
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
    out.print(hosts)
    failed = sum(1 for h in result.hosts if not h.ok)
    if result.ok:
        out.print(f"[green]all checks passed[/green] ({len(result.hosts)} hosts)")
    else:
        parts = []
        if not db.ok or db.admin_ok is False:
            parts.append("database")
        if failed:
            parts.append(f"{failed} of {len(result.hosts)} hosts")
        out.print(f"[red]checks failed:[/red] {', '.join(parts)}")


def lab_up(result: UpResult) -> None:
    """Print what `lab up` did."""
    verb = "is already up" if result.already_up else f"is up ({result.seconds:.1f}s)"
    out.print(
        f"lab {verb}: {result.hosts} hosts, max_connections {result.max_connections},"
        f" pool size {result.pool_size} per host"
    )
    out.print(f"inventory: {result.inventory}  (environment: lab)")


def lab_status(status: Status) -> None:
    """Print the lab's state."""
    if not status.hosts and not status.up:
        for problem in status.problems:
            out.print(escape(problem))
        return
    out.print(
        f"PostgreSQL {escape(status.server_version)}: {status.client_backends} client"
        f" backends of max_connections {status.max_connections}"
    )
    table = Table()
    for column in (
        "host",
        "address",
        "sshd pid",
        "app pid",
        "pool",
        "leaked",
        "backends",
        "idle",
        "idle in tx",
    ):
        table.add_column(column, justify="right" if column not in ("host", "address") else "left")
    for h in status.hosts:
        table.add_row(
            h.name,
            h.address,
            str(h.sshd_pid or "[red]down[/red]"),
            str(h.app_pid or "[red]down[/red]"),
            str(h.pool),
            str(h.leaked),
            str(h.backends),
            str(h.idle),
            str(h.idle_in_transaction),
        )
    out.print(table)
    for problem in status.problems:
        out.print(f"[red]problem:[/red] {escape(problem)}")
