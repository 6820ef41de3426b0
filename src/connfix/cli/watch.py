"""`connfix diagnose ENV --watch [INTERVAL]`: the picture refreshed in place.

One database session is kept for the whole view (on a full server, the way in connfix
got once — said at the top — is not given up and asked for again). Each refresh is one
read-only snapshot. Per host: connections now, the change since the view started and
its rate per minute (is a leak refilling after the fix?). Keys: q quits (Ctrl-C too),
a / h / s sort the sessions by age, host or state.

Of several database nodes (a primary and hot standbys): every node, each through its own
session and way in, kept; the nodes are found again at every refresh (Patroni's
/cluster), so a switchover shows at once: the roles change, a node restarting is shown
unreachable and its session opened again when it is back.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
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
            self.first.setdefault(f"{d.node or ''}/{h.host}", h.count)

    def delta(self, d: Diagnosis, host: str, now: int) -> tuple[int, float]:
        """(change since the start, per minute) of a host's connections on d's node."""
        minutes = max((time.monotonic() - self.started) / 60, 1e-9)
        key = f"{d.node or ''}/{host}"
        change = now - self.first.get(key, now)
        return change, change / minutes if minutes >= 1 / 60 else 0.0


def _keys_help(refreshes: int, interval: float, sort: str) -> str:
    return (
        f"refresh {refreshes}, every {interval:g}s  — q quits; sort: a age, h host, s state"
        f" (now by {sort})"
    )


def screen(
    d: Diagnosis, trend: Trend, sort: str, refreshes: int, interval: float, via: str
) -> Group:
    """One frame of the view (one server)."""
    from connfix.cli.render import escape

    head = Text.from_markup(
        f"[bold]{escape(d.environment)}[/bold]  {d.client_backends} of"
        f" {d.usable_connections} usable ({d.utilization:.0%})  severity"
        f" [{'green' if d.severity == 'ok' else 'red'}]{d.severity.upper()}[/]"
        f"  {_keys_help(refreshes, interval, sort)}"
    )
    return Group(head, *_body(d, trend, sort, via))


def cluster_screen(
    environment: str,
    found: list[tuple[Diagnosis, str]],
    unreachable: dict[str, str],
    trend: Trend,
    sort: str,
    refreshes: int,
    interval: float,
) -> Group:
    """One frame of the view of several nodes: the environment's severity (the worst
    node's; a node that cannot be reached is critical), then each node."""
    from connfix.cli.render import escape
    from connfix.diagnosis.cluster import worst

    severity = worst([d.severity for d, _ in found] + ["critical"] * len(unreachable))
    lines: list[Any] = [
        Text.from_markup(
            f"[bold]{escape(environment)}[/bold]  {len(found) + len(unreachable)} node(s)"
            f"  severity [{'green' if severity == 'ok' else 'red'}]{severity.upper()}[/]"
            f"  {_keys_help(refreshes, interval, sort)}"
        )
    ]
    for d, via in found:
        ha = f", Patroni: {escape(d.ha_role)}" if d.ha_role else ""
        lines.append(
            Text.from_markup(
                f"[bold]node {escape(d.node or '?')}: {d.role}{ha}[/bold]  {d.client_backends}"
                f" of {d.usable_connections} usable ({d.utilization:.0%})  severity"
                f" [{'green' if d.severity == 'ok' else 'red'}]{d.severity.upper()}[/]"
            )
        )
        lines += _body(d, trend, sort, via)
    for name, why in unreachable.items():
        lines.append(
            Text.from_markup(f"[red]node {escape(name)}: unreachable:[/red] {escape(why)}")
        )
    return Group(*lines)


def _body(d: Diagnosis, trend: Trend, sort: str, via: str) -> list[Any]:
    """A server's way in (when not the ordinary one), its hosts with their trend, its
    sessions in a transaction."""
    from connfix.cli.render import _age, escape
    from connfix.diagnosis.labels import app_label

    lines: list[Any] = []
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
        change, rate = trend.delta(d, h.host, h.count)
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
    return lines


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


class Nodes:
    """Of several database nodes: one session per node, kept across refreshes; the nodes
    found again at each refresh (a switchover, a node gone or back)."""

    def __init__(self, environment: str, env: Environment) -> None:
        self.environment, self.env = environment, env
        self.sessions: dict[str, Any] = {}

    def snapshot(self) -> tuple[list[tuple[Diagnosis, str]], dict[str, str]]:
        """Each node's diagnosis (and the way in it was read through), and the nodes that
        could not be read, with why (their session is dropped, opened again next time)."""
        from dataclasses import replace

        from connfix import ConnfixError
        from connfix.db import pg
        from connfix.diagnosis.analysis import take_snapshot
        from connfix.diagnosis.cluster import topology

        members = topology(self.env).members
        for name in set(self.sessions) - {m.node.name for m in members}:
            self.sessions.pop(name).close()
        found: list[tuple[Diagnosis, str]] = []
        unreachable: dict[str, str] = {}
        for member in members:
            name = member.node.name
            node_env = self.env.replace(database=self.env.database.of_node(member.node))
            try:
                if name not in self.sessions:
                    self.sessions[name] = pg.open_session(node_env.database)
                session = self.sessions[name]
                d = take_snapshot(session, self.environment, node_env)
            except ConnfixError as exc:
                if name in self.sessions:
                    self.sessions.pop(name).close()
                unreachable[name] = str(exc).splitlines()[0]
                continue
            found.append((replace(d, node=name, ha_role=member.ha_role), session.via))
        return found, unreachable

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()


@dataclass
class View:
    """What the view keeps between frames: the trend, the sort, how many refreshes."""

    interval: float
    trend: Trend = field(default_factory=Trend)
    sort: str = "age"
    refreshes: int = 0


def watch(term: Terminal, environment: str, env: Environment, interval: float) -> int:
    """Refresh until q or Ctrl-C; return the exit status."""
    from connfix.db import pg
    from connfix.diagnosis.analysis import take_snapshot

    view = View(interval)
    if env.database.several:
        nodes = Nodes(environment, env)
        frame: tuple[list[tuple[Diagnosis, str]], dict[str, str]] = ([], {})

        def draw() -> Group:
            return cluster_screen(
                environment, *frame, view.trend, view.sort, view.refreshes, interval
            )

        def refresh() -> Group:
            nonlocal frame
            frame = nodes.snapshot()
            for d, _ in frame[0]:
                view.trend.note(d)
            view.refreshes += 1
            return draw()

        try:
            return _loop(term, view, refresh, draw)
        finally:
            nodes.close()
    with pg.open_session(env.database) as session:
        latest: list[Diagnosis] = []

        def again() -> Group:
            return screen(latest[-1], view.trend, view.sort, view.refreshes, interval, session.via)

        def one() -> Group:
            latest[:] = [take_snapshot(session, environment, env)]
            view.trend.note(latest[-1])
            view.refreshes += 1
            return again()

        return _loop(term, view, one, again)


def _loop(
    term: Terminal, view: View, refresh: Callable[[], Group], redraw: Callable[[], Group]
) -> int:
    """Show `refresh()` every interval; a sort key changes the sort and redraws, q or
    Ctrl-C quits."""
    with keys() as fd:
        live = Live(console=term.out, auto_refresh=False, transient=False)
        with live:
            try:
                while True:
                    live.update(refresh(), refresh=True)
                    deadline = time.monotonic() + view.interval
                    while (left := deadline - time.monotonic()) > 0:
                        ready, _, _ = select.select([fd], [], [], left)
                        if not ready:
                            continue
                        key = os.read(fd, 1).decode(errors="replace").lower()
                        if key == "q":
                            return 0
                        if key in SORTS:
                            view.sort = SORTS[key]
                            live.update(redraw(), refresh=True)
            except KeyboardInterrupt:
                return 0
