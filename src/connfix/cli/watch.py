"""`connfix diagnose ENV --watch [INTERVAL]`: the picture refreshed in place.

One database session is kept for the whole view (on a full server, the way in connfix
got once — said at the top — is not given up and asked for again). Each refresh is one
read-only snapshot. Per host: connections now, the change since the view started and
its rate per minute (is a leak refilling after the fix?). Keys: q quits (Ctrl-C too),
a / h / s sort the sessions by age, host or state.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from connfix.cli.render import Terminal
    from connfix.config.inventory import Environment
    from connfix.diagnosis.model import Diagnosis

SORTS = {"a": "age", "h": "host", "s": "state"}
SESSION_ROWS = 15


@dataclass
class Trend:
    """Connections per host since the view started."""

    started: float = field(default_factory=time.monotonic)
    first: dict[str, int] = field(default_factory=dict)

    def note(self, d: Diagnosis) -> None:
        for h in d.by_host:
            self.first.setdefault(h.host, h.count)

    def delta(self, host: str, now: int) -> tuple[int, float]:
        """(change since the start, per minute)."""
        minutes = max((time.monotonic() - self.started) / 60, 1e-9)
        change = now - self.first.get(host, now)
        return change, change / minutes if minutes >= 1 / 60 else 0.0


def screen(
    d: Diagnosis, trend: Trend, sort: str, refreshes: int, interval: float, via: str
) -> Group:
    """One frame of the view."""
    from connfix.cli.render import _age, escape
    from connfix.diagnosis.model import app_label

    head = Text.from_markup(
        f"[bold]{escape(d.environment)}[/bold]  {d.client_backends} of"
        f" {d.usable_connections} usable ({d.utilization:.0%})  severity"
        f" [{'green' if d.severity == 'ok' else 'red'}]{d.severity.upper()}[/]"
        f"  refresh {refreshes}, every {interval:g}s  — q quits; sort: a age, h host, s state"
        f" (now by {sort})"
    )
    lines: list[Any] = [head]
    if via != "primary":
        lines.append(
            Text.from_markup(
                f"[yellow]the server refused the ordinary connection: watching through the"
                f" {via} connection ({escape(d.refusal or '')})[/yellow]"
            )
        )
    hosts = Table(title="by host (since the view started)", title_justify="left")
    for column in ("host", "conns", "idle", "idle in tx", "active", "change", "per min", "suspect"):
        hosts.add_column(column, justify="left" if column in ("host", "suspect") else "right")
    for h in d.by_host:
        change, rate = trend.delta(h.host, h.count)
        hosts.add_row(
            escape(h.host),
            str(h.count),
            str(h.idle),
            str(h.idle_in_transaction),
            str(h.active),
            f"{change:+d}",
            f"{rate:+.1f}",
            "[red]SUSPECT[/red]" if h.suspect else "",
        )
    lines.append(hosts)
    sessions = list(d.idle_in_transaction)
    if sessions:
        key = {
            "age": lambda s: -(s.xact_seconds or 0),
            "host": lambda s: (s.host, -(s.xact_seconds or 0)),
            "state": lambda s: (s.state, -(s.xact_seconds or 0)),
        }[sort]
        table = Table(title=f"sessions in a transaction, by {sort}", title_justify="left")
        for column in ("pid", "host", "state", "in transaction", "application"):
            table.add_column(column)
        for s in sorted(sessions, key=key)[:SESSION_ROWS]:
            table.add_row(
                str(s.pid),
                escape(s.host),
                escape(s.state),
                _age(s.xact_seconds),
                escape(app_label(s.application_name)),
            )
        lines.append(table)
    return Group(*lines)


@contextlib.contextmanager
def keys() -> Iterator[int]:
    """stdin in cbreak mode (one key at a time, no echo), restored on the way out."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def watch(term: Terminal, environment: str, env: Environment, interval: float) -> int:
    """Refresh until q or Ctrl-C; return the exit status."""
    from connfix.db import pg
    from connfix.diagnosis.analysis import take_snapshot

    trend = Trend()
    sort = "age"
    refreshes = 0
    with pg.open_session(env.database) as session, keys() as fd:
        live = Live(console=term.out, auto_refresh=False, transient=False)
        with live:
            try:
                while True:
                    d = take_snapshot(session, environment, env)
                    trend.note(d)
                    refreshes += 1
                    live.update(
                        screen(d, trend, sort, refreshes, interval, session.via), refresh=True
                    )
                    deadline = time.monotonic() + interval
                    while (left := deadline - time.monotonic()) > 0:
                        ready, _, _ = select.select([fd], [], [], left)
                        if not ready:
                            continue
                        key = os.read(fd, 1).decode(errors="replace").lower()
                        if key == "q":
                            return 0
                        if key in SORTS:
                            sort = SORTS[key]
                            live.update(
                                screen(d, trend, sort, refreshes, interval, session.via),
                                refresh=True,
                            )
            except KeyboardInterrupt:
                return 0
