"""What a run journals for its postmortem before `run_end`: the incident before the run
(the Prometheus history fetched meanwhile, with its onset) and the connection attempts
the server refused during the incident (from its log). Neither may fail or hold a run:
each says `unknown` with the reason instead."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from connfix.record.events import Event

if TYPE_CHECKING:
    from connfix.db import server_log
    from connfix.engine.context import RunContext
    from connfix.engine.run import RunRequest
    from connfix.record.journal import Journal

DEFAULT_LOOKBACK_S = 3600.0  # without Prometheus: refusals counted from this before the run


def onset(history: dict[str, Any] | None, warning: float) -> float | None:
    """When the incident began: the first point of the last stretch of the history at
    or above the warning utilization that lasts until the run (None: none seen)."""
    if not history:
        return None
    series = history.get("series") or {}
    used, limits = series.get("connections") or [], series.get("limit") or []
    limit_at = dict((ts, value) for ts, value in limits)
    began = None
    for ts, value in used:
        limit = limit_at.get(ts) or (limits[-1][1] if limits else None)
        if not limit:
            continue
        above = value / limit >= warning
        began = (ts if began is None else began) if above else None
    return began


def record(
    request: RunRequest,
    journal: Journal,
    ctx: RunContext | None,
    fetcher: Any,
    started: float,
) -> None:
    """Journal `history` (when the inventory names a Prometheus) and `impact`."""
    env = request.env
    found = None
    if fetcher is not None:
        found = fetcher.result(wait=ctx is not None)
        found["warning"] = env.thresholds.warning
        found["onset"] = onset(found, env.thresholds.warning)
        journal.record(Event.HISTORY, **found)
    lookback = env.prometheus.lookback if env.prometheus is not None else DEFAULT_LOOKBACK_S
    began = (found or {}).get("onset")
    since = datetime.fromtimestamp(began if began is not None else started - lookback, UTC)
    until = datetime.now(UTC)
    journal.record(Event.IMPACT, **_refusals(request, ctx, since, until), window_from=(
        "onset" if began is not None else f"{lookback:g}s before the run"
    ))  # fmt: skip


def _refusals(
    request: RunRequest, ctx: RunContext | None, since: datetime, until: datetime
) -> dict[str, Any]:
    from connfix.db import server_log

    pattern = request.env.database.log_files
    try:
        if pattern:
            return server_log.from_files(pattern, since, until).fields()
        if request.env.database.log_ssh is not None:
            return _over_ssh(request, since, until).fields()
        if ctx is None or ctx.session.conn.closed:
            found = server_log.Refusals("the server's log directory", since, until)
            found.unknown = "connfix had no session to the server at the end of the run"
            return found.fields()
        with ctx.db_lock:
            return server_log.through_sql(ctx.session, since, until).fields()
    except Exception as exc:  # the postmortem never fails the run
        found = server_log.Refusals("the server's log", since, until)
        found.unknown = f"could not be read: {exc}"
        return found.fields()


def _over_ssh(request: RunRequest, since: datetime, until: datetime) -> server_log.Refusals:
    """Count on the database host: `grep -E` runs there over the environment's SSH
    settings (host key checked as for every host), so only the matching lines travel."""
    from connfix.config.inventory import Host
    from connfix.db import server_log
    from connfix.hosts import remote

    where = request.env.database.log_ssh
    assert where is not None
    found = server_log.Refusals(f"{where.path} on {where.address} (over SSH)", since, until)
    host = Host(name="database", ssh_address=where.address)
    conn = remote.Remote(host, request.env.ssh)
    try:
        # the path is validated to glob characters only: the remote shell expands it
        done = conn.run(f"grep -h -E -e '{server_log.PATTERN}' -- {where.path}", timeout=30)
    finally:
        conn.close()
    if done.exit_code not in (0, 1):  # 1: no line matched
        found.unknown = f"could not be read over SSH: {done.describe()}"
        return found
    for line in done.stdout.splitlines():
        found.add(line, UTC)
    found.files.append(where.path)
    return found
