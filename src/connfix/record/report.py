"""The post-incident report: Markdown rendered from the journal alone.

Everything that came from the database or the hosts is escaped on its way into the
Markdown (the template environment escapes every interpolated value unless it was
built as Markdown here), so an application name cannot break a table or inject HTML.
The same journal always renders the same report.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connfix import InputError, __version__
from connfix.config.units import format_duration
from connfix.diagnosis.labels import app_label
from connfix.record.events import Event, RunStatus
from connfix.record.journal import journal_of, read_journal

if TYPE_CHECKING:
    from jinja2 import Template

REPORT = "report.md"
# one pass over the text: HTML's three, and a backslash before each character Markdown
# would read as formatting (a table's `|` included)
_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;"} | {c: "\\" + c for c in "\\`*_[]|~#"}
)

STATUS_TEXT: dict[RunStatus, str] = {
    RunStatus.RESOLVED: "resolved",
    RunStatus.DONE: "done",
    RunStatus.UNHEALTHY: "still unhealthy",
    RunStatus.HALTED: "halted",
    RunStatus.DECLINED: "halted (the operator declined a step)",
    RunStatus.STOPPED: "halted (a step needed confirmation)",
    RunStatus.LOCKED: "refused (another run held the environment)",
    RunStatus.UNREACHABLE: "halted (the database could not be reached)",
    RunStatus.ERROR: "halted (error)",
    RunStatus.INTERRUPTED: "interrupted",
    RunStatus.DRY_RUN: "DRY RUN",
    RunStatus.REJECTED: "halted (an approver rejected a step's plan)",
    RunStatus.EXPIRED: "expired (nobody approved a step's plan in time)",
}
assert set(STATUS_TEXT) == set(RunStatus), "every way a run ends has its title"


class Markdown(str):
    """Text that is already Markdown: interpolated as is."""


def escape(value: object) -> str:
    """Make any text safe inside Markdown, table cells included: one line, no HTML."""
    text = str(value).replace("\r\n", " ")
    if not text.isprintable():  # the character walk only for the rare text that needs it
        text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = text.translate(_ESCAPES)
    return "\\" + text if text[:1] in ("-", "+") else text  # not a list item


def code(text: str) -> Markdown:
    """Return a fenced code block that no backtick run in `text` can close early, with
    control characters and bidi overrides shown visibly (a role name may carry them)."""
    from connfix.config.text import defang

    text = defang(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return Markdown(f"{fence}sql\n{text}\n{fence}")


def _finalize(value: object) -> object:
    if value is None:
        return "–"
    if isinstance(value, Markdown):
        return str(value)
    if isinstance(value, bool | int | float):
        return value
    return escape(value)


def _ts(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _clock(ts: str) -> str:
    return _ts(ts).strftime("%H:%M:%S.%f")[:-3]


def _health(diagnosis: dict[str, Any] | None, host: str) -> str:
    """A host's health check in one diagnosis: ok, FAILING, or – (not checked)."""
    checked = (diagnosis or {}).get("host_health", {}).get(host)
    if checked is None:
        return "–"
    return "ok" if checked.get("ok") else "FAILING"


def _age(seconds: object) -> str:
    """A duration from the journal, or – for one that is not a finite, positive number."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "–"
    if not math.isfinite(seconds) or seconds < 0:
        return "–"
    return format_duration(seconds)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class PoolRow:
    """One line of the pool-sizing table."""

    label: str
    servers: int
    pool_size: int | str  # per server: `3`, or `(3 + 2 overflow)`
    total: int
    limit: int
    safe: bool


def _describe(event: dict[str, Any]) -> str | None:
    """Say one journal event in a sentence for the timeline (None: not shown)."""
    kind = event["event"]
    step = event.get("step")
    if kind == "run_start":
        book = event.get("runbook", {})
        return (
            f"run started by {event.get('operator')} on {event.get('hostname')}:"
            f" runbook {book.get('name')}"
        )
    if kind == "connected":
        text = f"connected as {event.get('role')} via the {event.get('via')} connection"
        if event.get("refusal"):
            text += f" (the ordinary connection was refused: {event['refusal']})"
        return text
    if kind == "lock_acquired":
        return "took the environment lock"
    if kind == "lock_refused":
        holder = event.get("holder") or {}
        return f"refused: another run holds the environment (pid {holder.get('pid')})"
    if kind == "diagnosis":
        d = event["diagnosis"]
        text = (
            f"diagnosis: {d['client_backends']} of {d['usable_connections']} usable"
            f" ({_pct(d['utilization'])}), {d['severity']}"
        )
        if d.get("suspects"):
            text += f", suspects {', '.join(d['suspects'])}"
        return text
    if kind == "step_start":
        return f"step {step} ({event.get('action')}) started"
    if kind == "plan":
        return f"step {step} planned: {event.get('summary')}"
    if kind == "prompt":
        return f"asked \u201c{event.get('question')}\u201d: {event.get('answer')}"
    if kind == "step_skipped":
        return f"step {step} skipped: {event.get('condition')} is false"
    if kind == "step_end":
        state = "ok" if event.get("ok") else "FAILED"
        return f"step {step} {state}: {event.get('summary')}"
    if kind == "host_start":
        return f"restarting {event.get('host')} (main pid {event.get('old_main_pid')})"
    if kind == "host_done":
        return (
            f"{event.get('host')} back: main pid {event.get('old_main_pid')} →"
            f" {event.get('new_main_pid')}, {_age(event.get('seconds', 0))}"
        )
    if kind == "host_failed":
        return f"{event.get('host')} FAILED at {event.get('gate')}: {event.get('detail')}"
    if kind == "roll_halted":
        return (
            f"roll halted: done {', '.join(event.get('done', [])) or 'none'}, failed"
            f" {', '.join(event.get('failed', [])) or 'none'}, not touched"
            f" {', '.join(event.get('untouched', [])) or 'none'}"
        )
    if kind == "healthy":
        return f"healthy ({event.get('condition')}): escalation ended"
    if kind in ("confirmation_needed", "interrupted", "error"):
        return f"{kind.replace('_', ' ')}: {event.get('message')}"
    if kind == "nodes":
        said = ", ".join(f"{n} {s}" for n, s in (event.get("severities") or {}).items())
        return f"every node diagnosed at the end: {said}"
    if kind == "role_changed":
        return (
            f"node {event.get('node')} is a {event.get('now')} now (was the"
            f" {event.get('was')}): {event.get('message')}"
        )
    if kind.startswith("approval_"):
        return _approval(event)
    if kind == "run_end":
        return f"run ended: {event.get('status')} — {event.get('message')}"
    return None  # per-pid operations are in the actions table


def _approval(event: dict[str, Any]) -> str:
    """An approval event in a sentence: who asked, who decided, how, when."""
    kind, step = event["event"], event.get("step")
    plan = str(event.get("plan") or "")[:12]
    if kind == "approval_requested":
        return (
            f"step {step} waits for an approval of plan {plan} (asked by"
            f" {event.get('requester')}, until {event.get('expires_at')}"
            + (", two_person" if event.get("two_person") else "")
            + f"): {event.get('summary')}"
        )
    if kind in ("approval_granted", "approval_rejected"):
        verb = "approved" if kind == "approval_granted" else "rejected"
        why = f": {event.get('reason')}" if event.get("reason") else ""
        return (
            f"step {step} {verb} by {event.get('by')} via {event.get('via')} at"
            f" {event.get('at')} (plan {plan}){why}"
        )
    if kind == "approval_refused":
        return (
            f"a {event.get('decision')} by {event.get('by')} via {event.get('via')} was"
            f" refused: {event.get('refused')}"
        )
    if kind == "approval_stale":
        return (
            f"step {step}: approved by {event.get('by')}, but the plan changed"
            f" ({event.get('summary')}): asked again"
        )
    return f"nobody approved step {step} before {event.get('expires_at')}: expired"


def _session_row(o: dict[str, Any]) -> dict[str, Any]:
    """A session terminated, cancelled, skipped or failed, with every column present."""
    keys = ("pid", "usename", "application_name", "host", "client_addr", "state", "reason")
    row = {k: o.get(k) for k in keys}
    row["idle_seconds"] = o.get("idle_seconds")
    row["result"] = o.get("result") or ("skipped" if o.get("skipped") else "?")
    return row


def _session_rows(rows: list[dict[str, Any]]) -> Markdown:
    """The rows of the sessions' table (no newline after the last), cell by cell as
    the template's loop over `operations` wrote them: a run that ended 1,000 sessions
    spent 15 ms in the sandbox on them, here 3 ms."""

    def cell(value: object) -> str:
        return str(_finalize(value))

    return Markdown(
        "\n".join(
            f"| {cell(o['pid'])} | {cell(o['usename'])}"
            f" | {cell(o['application_name'] or '(none)')}"
            f" | {cell(o['host'] or o['client_addr'])} | {cell(o['state'])}"
            f" | {cell(_age(o['idle_seconds']))} | {cell(o['result'])}"
            f" | {cell(o['reason'] or None)} |"
            for o in rows
        )
    )


def _pooler_row(o: dict[str, Any]) -> dict[str, Any]:
    """A command sent to a PgBouncer (KILL_CLIENT, RECONNECT, PAUSE, RESUME), or a
    client left alone because it changed, with every column present."""
    client = ""
    if o.get("addr") or o.get("host"):
        client = (
            f"{o.get('host') or '?'}: {o.get('addr') or '?'}:{o.get('port') or '?'}"
            f" ({o.get('user') or '?'}, {app_label(o.get('application_name'))})"
        )
    if o.get("skipped"):
        result = f"skipped: {o['skipped']}"
    elif o.get("error"):
        result = f"FAILED: {o['error']}"
    else:
        result = "ok" if o.get("ok") else "?"
    command = o.get("command") or (f"KILL_CLIENT {o['client_id']}" if o.get("client_id") else "")
    return {
        "pgbouncer": o.get("pgbouncer"),
        "command": str(command),
        "client": client,
        "idle_seconds": o.get("idle_seconds"),
        "result": result,
        "ok": bool(o.get("ok")),
    }


HOST_RESULTS = {
    "host_done": "done",
    "host_unknown": "restart sent, outcome unknown",
    "host_untouched": "not touched",
    "host_planned": "would restart (dry run)",
}


def _host_result(h: dict[str, Any]) -> str:
    if h["event"] == Event.HOST_FAILED:
        return f"FAILED at {h.get('gate')}"
    return HOST_RESULTS.get(h["event"], str(h["event"]))


def _host_rows(events: list[dict[str, Any]], dry_run: bool) -> list[dict[str, Any]]:
    """Every host a roll planned or touched: done, failed, unknown (its restart began,
    the run ended before its gates did: it may well have restarted), not touched
    (planned, never reached), or — in a dry run — would be restarted."""
    actions = {e.get("step"): e.get("action") for e in events if e["event"] == Event.STEP_START}
    planned: list[tuple[Any, str]] = []
    for e in events:
        if e["event"] != Event.PLAN or actions.get(e.get("step")) != "rolling_restart":
            continue
        if e.get("blocked"):
            continue
        for op in e.get("operations") or []:
            target = op.get("target") if isinstance(op, dict) else None
            if op.get("kind") == "ssh" and target and (e.get("step"), target) not in planned:
                planned.append((e.get("step"), target))
    ends = {
        (e.get("step"), e.get("host")): e
        for e in events
        if e["event"] in (Event.HOST_DONE, Event.HOST_FAILED)
    }
    starts = {(e.get("step"), e.get("host")): e for e in events if e["event"] == Event.HOST_START}
    rows: dict[tuple[Any, Any], dict[str, Any]] = {}  # in plan order, then the rest
    for key in [*planned, *ends, *starts]:
        if key in rows:
            continue
        if key in ends:
            row = dict(ends[key])
        elif key in starts:
            row = {**starts[key], "event": "host_unknown"}
        else:
            row = {"event": "host_planned" if dry_run else "host_untouched", "host": key[1]}
        row.setdefault("old_main_pid", None)
        row.setdefault("new_main_pid", None)
        row.setdefault("gate", None)
        row.setdefault("detail", "")
        if not isinstance(row.get("gates"), dict):
            row["gates"] = {}
        rows[key] = row
    return list(rows.values())


def _summary(
    start: dict[str, Any],
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    status: str,
    duration: float,
    sessions: list[dict[str, Any]],
    pooler_ops: list[dict[str, Any]],
    hosts: list[dict[str, Any]],
) -> str:
    """The summary paragraph: the state found, what connfix changed (or that a dry run
    changed nothing, or which hosts a killed roll never reached), the state left."""
    env = start.get("environment", "?")
    summary = []
    if before:
        summary.append(
            f"At {_ts(start['ts']).strftime('%Y-%m-%d %H:%M')} UTC, {env} had"
            f" {before['client_backends']} of {before['usable_connections']} usable"
            f" connections in use ({_pct(before['utilization'])}, {before['severity']})"
            + (
                f"; leak suspects: {', '.join(before['suspects'])}."
                if before.get("suspects")
                else "; no leak suspect."
            )
        )
    if bool(start.get("flags", {}).get("dry_run")):
        summary.append("This was a dry run: connfix diagnosed and planned, and changed nothing.")
    else:
        summary += _changes(sessions, pooler_ops, hosts)
    if after:
        summary.append(
            f"Afterwards {after['client_backends']} of {after['usable_connections']} were in"
            f" use ({_pct(after['utilization'])}); the run ended {status} after"
            f" {format_duration(duration)}."
        )
    else:
        summary.append(f"The run ended {status} after {format_duration(duration)}.")
    return " ".join(summary)


def _changes(
    sessions: list[dict[str, Any]], pooler_ops: list[dict[str, Any]], hosts: list[dict[str, Any]]
) -> list[str]:
    """What a run changed, in sentences: sessions, PgBouncer commands, hosts — and the
    hosts whose outcome is unknown or that were never reached."""
    terminated = [o for o in sessions if o["result"] == "terminated"]
    cancelled = [o for o in sessions if o["result"] == "cancelled"]
    killed = [o for o in pooler_ops if o["command"].startswith("KILL_CLIENT") and o["ok"]]
    pool_commands = [
        o["command"] for o in pooler_ops if not o["command"].startswith("KILL_CLIENT") and o["ok"]
    ]
    restarted = [h for h in hosts if h["event"] == Event.HOST_DONE]
    unknown = [h for h in hosts if h["event"] == "host_unknown"]
    untouched = [h for h in hosts if h["event"] == "host_untouched"]
    done = []
    if terminated:
        done.append(f"terminated {len(terminated)} session(s)")
    if cancelled:
        done.append(f"cancelled the statements of {len(cancelled)} session(s)")
    if killed:
        done.append(f"ended {len(killed)} PgBouncer client connection(s) (KILL_CLIENT)")
    if pool_commands:
        done.append(f"sent {', '.join(pool_commands)} to PgBouncer")
    if restarted:
        done.append(f"restarted {', '.join(h['host'] for h in restarted)}")
    sentences = ["connfix " + (" and ".join(done) if done else "changed nothing") + "."]
    if unknown:
        sentences.append(
            f"The run ended while restarting {', '.join(h['host'] for h in unknown)}:"
            " the restart command was sent, the outcome is unknown."
        )
    if untouched:
        sentences.append(
            f"Not touched: {', '.join(h['host'] for h in untouched)} (planned for a"
            " restart, never reached)."
        )
    return sentences


def _pool_section(
    advice: dict[str, Any] | None, check: dict[str, Any] | None
) -> tuple[list[PoolRow], str | None, list[str]]:
    """The pool-sizing table, its one line and its notes: from the advise step's sizing
    (room kept for other clients and a restart), else from the diagnosis's pool check."""
    rows: list[PoolRow] = []
    if advice:
        sizing = advice["sizing"]
        for row in sizing["table"]:
            rows.append(
                PoolRow(
                    row["label"],
                    row["servers"],
                    row.get("per_server", row["pool_size"]),
                    row["total"],
                    row["available"],
                    row["safe"],
                )
            )
        now, safe = sizing["table"]
        relation = "≤" if now["safe"] else ">"
        line = (
            f"{now['servers']} servers × {now.get('per_server', now['pool_size'])}"
            f" = {now['total']} {relation} {now['available']}"
        )
        line += (
            ": safe as it is"
            if now["safe"]
            else f" → pool {safe['pool_size']}: {safe['total']},"
            f" {'safe' if safe['safe'] else 'still NOT safe: use PgBouncer'}"
        )
        return rows, line, sizing["notes"]
    if not check:
        return rows, None, []
    from connfix.diagnosis.pool_sizing import per_server

    overflow, workers = check.get("max_overflow", 0), check.get("workers", 1)
    per = per_server(check["pool_size"], overflow, workers)
    rows.append(
        PoolRow("now", check["servers"], per, check["total"], check["limit"], check["safe"])
    )
    if check["safe"]:
        line = (
            f"{check['servers']} servers × {per} = {check['total']} ≤"
            f" {check['limit']}: safe as it is"
        )
        return rows, line, []
    size = check["recommended_pool_size"]
    total = (size + overflow) * check["servers"] * workers if size else 0
    rows.append(
        PoolRow(
            "safe",
            check["servers"],
            per_server(size, overflow, workers),
            total,
            check["limit"],
            bool(size) and total <= check["limit"],
        )
    )
    line = (
        f"{check['servers']} servers × {per} = {check['total']} >"
        f" {check['limit']} → pool {size}: {total}, "
        + ("safe" if size else "nothing fits: use PgBouncer")
    )
    return rows, line, []


def _timeouts(
    before: dict[str, Any] | None, connected: dict[str, Any] | None
) -> tuple[list[tuple[str, str, str]], str]:
    """The timeouts to set, for the server version seen, and the ALTER ROLE statements
    for the roles the apps used (connfix's own left out)."""
    version = (before or {}).get("server_version_num", 0)
    role = connected.get("role") if connected else None
    app_roles = sorted(r for r in (before or {}).get("by_user", {}) if r and r != role)
    settings: list[tuple[str, str, str]] = [
        (
            "idle_in_transaction_session_timeout",
            "'60s'",
            "ends sessions that sit in an open transaction (PostgreSQL 9.6+)",
        )
    ]
    if version >= 140000:
        settings.append(
            (
                "idle_session_timeout",
                "'30min'",
                "ends sessions idle for long (14+); not for roles behind a pooler,"
                " whose idle server connections it would kill",
            )
        )
    if version >= 170000:
        settings.append(("transaction_timeout", "'10min'", "caps any transaction (17+)"))
    statements = "\n".join(
        f"ALTER ROLE {_quote_ident(r)} SET {name} = {value};"
        for r in app_roles
        for name, value, _ in settings
    )
    return settings, statements


def _timeline(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Each event said in a sentence, at its time; a verify polling an unchanged state
    is one line, with a count."""
    timeline: list[tuple[str, str]] = []
    repeats = 0
    for event in events:
        text = _describe(event)
        if text is None:
            continue
        if timeline and event["event"] == Event.DIAGNOSIS and timeline[-1][1].startswith(text):
            repeats += 1
            timeline[-1] = (
                timeline[-1][0],
                f"{text} (×{repeats + 1}, until {_clock(event['ts'])})",
            )
            continue
        repeats = 0
        timeline.append((_clock(event["ts"]), text))
    return timeline


def _nodes(start: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Of several database nodes: the one the run acted on and its role, every node's
    severity when the run started and at its end, and where it followed the primary."""
    return {
        "node": start.get("node"),
        "node_role": start.get("node_role"),
        "node_severities": start.get("nodes") or {},
        "node_end": next(
            (e.get("severities") or {} for e in reversed(events) if e["event"] == Event.NODES),
            {},
        ),
        "followed": [
            str(e.get("message"))
            for e in events
            if e["event"] == Event.ROLE_CHANGED and "following the primary" in str(e.get("message"))
        ],
    }


def _approvals(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Every approval event in a sentence, and who asked for the run's approvals."""
    return {
        "approvals": [_approval(e) for e in events if str(e["event"]).startswith("approval_")],
        "requester": next(
            (e.get("requester") for e in events if e["event"] == Event.APPROVAL_REQUESTED), None
        ),
    }


def _postmortem(events: list[dict[str, Any]], context: dict[str, Any]) -> dict[str, Any]:
    """The postmortem's parts: the chart (drawn beside the report by `write`), the
    timeline from onset, the measured impact, the action items."""
    from connfix.record import chart, postmortem

    c = chart.curve(events)
    history = next((e for e in events if e["event"] == Event.HISTORY), None)
    return {
        "chart": None if c.empty else chart.CHART,
        "chart_sources": _chart_sources(history, c),
        "from_onset": postmortem.from_onset(events),
        "impact": postmortem.impact(events),
        "action_items": postmortem.action_items(
            context["environment"],
            bool(context["statements"]),
            context["pooler"],
            [u["host"] for u in context["suspects"]],
        ),
    }


def _chart_sources(history: dict[str, Any] | None, c: Any) -> str:
    """Where the chart's points come from, in a sentence."""
    run = "connfix's own diagnoses during the run"
    if history is None:
        return f"{run} (the inventory names no Prometheus: nothing before the run)"
    if history.get("error") or not c.history_from:
        why = history.get("error") or "; ".join(
            f"{k}: {v}" for k, v in (history.get("errors") or {}).items()
        )
        return f"{run}; the history from {history.get('url')} could not be read ({why})"
    since = datetime.fromtimestamp(c.history_from, UTC).strftime("%H:%M:%S")
    return f"Prometheus ({history.get('url')}) from {since} UTC until connfix started, then {run}"


def build(events: list[dict[str, Any]], journal: Path) -> dict[str, Any]:
    """Turn a journal's events into everything the report template shows."""
    if not events or events[0].get("event") != "run_start":
        raise InputError(f"{journal}: not a connfix journal (no run_start first)")
    start = events[0]
    end = next((e for e in reversed(events) if e["event"] == Event.RUN_END), None)
    status_key = end["status"] if end else "interrupted"
    diagnoses = [e["diagnosis"] for e in events if e["event"] == Event.DIAGNOSIS]
    before = diagnoses[0] if diagnoses else None
    after = diagnoses[-1] if len(diagnoses) > 1 else None
    connected = next((e for e in events if e["event"] == Event.CONNECTED), None)
    first_ts, last_ts = events[0]["ts"], events[-1]["ts"]
    duration = (_ts(last_ts) - _ts(first_ts)).total_seconds()
    sessions, pooler_ops, other_ops = _operations(events)
    dry_run = bool(start.get("flags", {}).get("dry_run"))
    hosts = _host_rows(events, dry_run=dry_run)
    known = status_key in RunStatus.__members__.values()
    status = STATUS_TEXT[RunStatus(status_key)] if known else escape(status_key)
    host_names = [u["host"] for u in (before or {}).get("by_host", [])]
    for u in (after or {}).get("by_host", []):
        if u["host"] not in host_names:
            host_names.append(u["host"])

    def by_host(d: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
        return {u["host"]: u for u in (d or {}).get("by_host", [])}

    advice = next((e for e in reversed(events) if e["event"] == Event.ADVICE), None)
    check = (after or before or {}).get("pool_check")
    pool_rows, pool_line, pool_notes = _pool_section(advice, check)
    settings, statements = _timeouts(before, connected)
    bursty = bool(before and before["severity"] != "ok" and not before.get("suspects"))
    return {
        **_template_functions(),
        "environment": start.get("environment", "?"),
        "status": status,
        "status_key": status_key,
        "dry_run": dry_run,
        "summary": _summary(start, before, after, status, duration, sessions, pooler_ops, hosts),
        "started": first_ts,
        "ended": last_ts,
        "duration": format_duration(duration),
        "before": before,
        "after": after,
        "peak": max((d["client_backends"] for d in diagnoses), default=None),
        "slots_freed": sum(
            (e.get("details") or {}).get("slots_freed") or 0
            for e in events
            if e["event"] == Event.STEP_END
        ),
        "timeline": _timeline(events),
        "approvals": [_approval(e) for e in events if str(e["event"]).startswith("approval_")],
        "requester": next(
            (e.get("requester") for e in events if e["event"] == Event.APPROVAL_REQUESTED), None
        ),
        "operations": sessions,
        "operations_table": _session_rows(sessions),
        "pooler_operations": pooler_ops,
        "other_operations": other_ops,
        "after_pgbouncers": {b.get("name"): b for b in (after or {}).get("pgbouncers") or []},
        "hosts": hosts,
        "suspects": [u for u in (before or {}).get("by_host", []) if u.get("suspect")],
        "states": sorted({*(before or {}).get("by_state", {}), *(after or {}).get("by_state", {})}),
        "host_names": host_names,
        "before_hosts": by_host(before),
        "after_hosts": by_host(after),
        "pool_rows": pool_rows,
        "pool_line": pool_line,
        "pool_notes": pool_notes,
        "settings": [(Markdown(f"`{name}`"), value, why) for name, value, why in settings],
        "statements": code(statements) if statements else None,
        "pooler": bool(check and not check["safe"])
        or bursty
        or bool(advice and advice["pgbouncer"]),
        "bursty": bursty,
        "start": start,
        **_nodes(start, events),
        "runbook": start.get("runbook", {}),
        "journal": str(journal),
        "connected": connected,
    }


def _operations(
    events: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The operations as the report shows them: on sessions (a pid), sent to PgBouncer,
    and any other."""
    operations = [e for e in events if e["event"] == Event.OPERATION]
    sessions = [_session_row(o) for o in operations if "pid" in o]
    pooler_ops = [_pooler_row(o) for o in operations if "pid" not in o and "pgbouncer" in o]
    other_ops = [o for o in operations if "pid" not in o and "pgbouncer" not in o]
    return sessions, pooler_ops, other_ops


def _template_functions() -> dict[str, Any]:
    """The functions the report template calls."""
    return {
        "pct": _pct,
        "age": _age,
        "host_result": _host_result,
        "health": _health,
        "counts": lambda c: ", ".join(f"{k} {v}" for k, v in c.items()) or "–",
        "unowned": lambda u: (
            ", ".join(f"{k} {v}" for k, v in u.get("unowned_clients", {}).items()) or "–"
        ),
    }


MAX_REPORT_CHARS = 5_000_000
RENDER_SECONDS = 10


class _TooLong(Exception):
    """Rendering ran past its time limit."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Stop a render that runs too long (a template looping over and over): a timer
    signal raises inside it. Only in the main thread, where signals are delivered."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise _TooLong

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@functools.lru_cache(maxsize=1)
def _shipped_source() -> str:
    # beside this module in the installed package (importlib.resources would cost the
    # report command's start-up its import, 3-5 ms, for the same file)
    return (Path(__file__).parent / "templates" / "report.md.j2").read_text("utf-8")


@functools.cache
def warm_up() -> None:
    """Import Jinja and load (or compile) the shipped template in a background thread
    while a run waits on its hosts or its database, with the modules the report's
    chart and pool section import: the report at the run's end then only renders,
    instead of paying for them before the process may exit. Once per process. A
    failure here is left to the real render to meet and say."""

    def work() -> None:
        with contextlib.suppress(Exception):
            _compiled(_shipped_source())
        with contextlib.suppress(Exception):
            from connfix.record import chart

            chart.load()  # the chart's library, drawn at the end
        with contextlib.suppress(Exception):
            from connfix.diagnosis import pool_sizing  # noqa: F401  the pool section

    threading.Thread(target=work, name="connfix-report-warm-up", daemon=True).start()


class _NotOneFile(Exception):
    """A template asked for another template ({% include %}, {% import %}, {% extends %})."""


@functools.lru_cache(maxsize=4)
def _compiled(source: str) -> Template:
    """A template's source compiled in the sandbox, once per source text in a process,
    and once per machine through Jinja's bytecode cache (connfix.config.cache: compiling
    the shipped template costs 25-30 ms, loading it back about 1 ms)."""
    from jinja2 import BaseLoader, FileSystemBytecodeCache, StrictUndefined

    from connfix.config import cache
    from connfix.config.sandbox import TemplateSandbox

    # the name carries connfix's version: the environment's options below shape the
    # compiled code, and Jinja keys its cache on the name and the source alone
    name = f"report-{__version__}"

    class OneFile(BaseLoader):
        """This template, and no other: a report template is one file."""

        def get_source(self, environment: Any, template: str) -> tuple[str, None, Any]:
            if template != name:
                raise _NotOneFile(template)
            return source, None, lambda: True

    where = cache.directory("templates")
    env = TemplateSandbox(
        undefined=StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        loader=OneFile(),
        bytecode_cache=FileSystemBytecodeCache(str(where)) if where else None,
    )
    env.filters["md"] = lambda value: Markdown(str(value))
    return env.get_template(name)


def render(
    journal: Path, template: Path | None = None, events: list[dict[str, Any]] | None = None
) -> str:
    """Render the report of one journal, with the shipped or a user template (`events`:
    the journal already read, by write)."""
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    if events is None:
        events = _read(journal)
    try:
        context = build(events, journal)
        context.update(_postmortem(events, context))
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise InputError(
            f"{journal}: the journal does not have the shape connfix writes"
            f" ({type(exc).__name__}: {exc}); was it edited?"
        ) from None
    if template is not None:
        from connfix.config import files

        try:
            source = files.read_text(files.expand(template), 1_000_000)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise InputError(f"--template {template}: {reason}") from None
    else:
        source = _shipped_source()
    where = f"--template {template}" if template else "the report template"
    try:
        with _time_limit(RENDER_SECONDS):
            parts, size = [], 0
            for part in _compiled(source).generate(**context):
                size += len(part)
                if size > MAX_REPORT_CHARS:
                    raise InputError(
                        f"{where}: the report grew past {MAX_REPORT_CHARS:,} characters; stopped"
                    )
                parts.append(part)
            return "".join(parts)
    except TemplateError as exc:
        raise InputError(f"{where}: {exc}") from None
    except SecurityError as exc:
        raise InputError(f"{where}: refused: {exc}") from None
    except RecursionError:
        raise InputError(f"{where}: nested too deeply") from None
    except _TooLong:
        raise InputError(
            f"{where}: rendering took longer than {RENDER_SECONDS}s; stopped"
        ) from None
    except _NotOneFile:
        raise InputError(
            f"{where}: a report template is one file: {{% include %}}, {{% import %}}"
            " and {% extends %} are not supported"
        ) from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise InputError(f"{where}: {type(exc).__name__}: {exc}") from None


def minimal(events: list[dict[str, Any]], journal: Path, why: str) -> str:
    """The report when the full one cannot be rendered: the outcome and the timeline,
    from the journal alone, each event said as well as it can be (an event that cannot
    be said is shown by its name). Never raises for a journal that could be read."""
    end = next((e for e in reversed(events) if e.get("event") == Event.RUN_END), None)
    start = events[0] if events else {}
    status = str(end.get("status")) if end else "interrupted (the journal has no run_end)"
    lines = [
        f"# Incident report: {escape(start.get('environment', '?'))} — {escape(status)}",
        "",
        f"> The full report could not be rendered ({escape(why)}). This minimal report"
        " was written from the journal alone; the journal is intact: fix the cause and"
        f" run `connfix report {escape(str(journal.parent))}` again.",
        "",
        "## Outcome",
        "",
        f"- Status: **{escape(status)}**",
    ]
    if end:
        lines.append(f"- {escape(end.get('message', ''))}")
        lines.append(f"- Exit status: {escape(end.get('exit_status', '?'))}")
    flags = start.get("flags")
    if isinstance(flags, dict) and flags.get("dry_run"):
        lines.append("- This was a dry run: nothing was changed.")
    lines += ["", "## Timeline (UTC)", "", "| Time | Event |", "| --- | --- |"]
    for event in events:
        try:
            text = _describe(event)
            when = _clock(event["ts"])
        except Exception:  # an event of a shape connfix no longer writes
            text, when = str(event.get("event", "?")), str(event.get("ts", "?"))
        if text is None and event.get("event") == Event.OPERATION:
            text = "operation: " + ", ".join(
                f"{k}={v}" for k, v in event.items() if k not in ("event", "ts", "seq")
            )
        if text is not None:
            lines.append(f"| {escape(when)} | {escape(text)} |")
    lines += ["", f"Journal: {escape(str(journal))}", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Written:
    """A report written: where, and why only a minimal one was (None: the full one)."""

    path: Path
    degraded: str | None = None


def write(incident: Path, output: Path | None = None, template: Path | None = None) -> Written:
    """Render and write the report (default: report.md beside the journal, mode 0600).
    With connfix's own template, a report is always written: if the full one cannot be
    rendered, a minimal one from the journal (outcome and timeline) is, and `degraded`
    says why. A user's --template that fails is that template's error (InputError)."""

    from connfix.config import files

    journal = journal_of(incident)
    degraded = None
    events = _read(journal)  # once, for the report and its chart
    try:
        text = render(journal, template, events)
    except InputError as exc:
        if template is not None or not events:
            raise
        degraded = str(exc)
        text = minimal(events, journal, degraded)
    target = files.expand(output) if output else journal.parent / REPORT
    draw(journal, target.parent, events)  # first: a report that exists has its picture
    try:
        files.write_private(target, text)
    except OSError as exc:
        raise InputError(f"cannot write the report {target}: {exc.strerror or exc}") from None
    return Written(target, degraded)


def _read(journal: Path) -> list[dict[str, Any]]:
    """The journal's events, or InputError saying why they cannot be read."""
    try:
        return list(read_journal(journal))
    except FileNotFoundError:
        raise InputError(f"{journal}: no such journal") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{journal}: the journal cannot be read: {exc}") from None


def draw(journal: Path, folder: Path, events: list[dict[str, Any]] | None = None) -> Path | None:
    """Write the incident's chart (incident.svg) into `folder`, beside the report; None
    when there is nothing to draw or it could not be written (the report says the
    chart's file name either way: a missing picture never costs the report)."""
    from connfix.config import files
    from connfix.record import chart

    try:
        c = chart.curve(events if events is not None else list(read_journal(journal)))
        if c.empty:
            return None
        target = folder / chart.CHART
        files.write_private(target, chart.svg(c))
        return target
    except Exception:  # the chart is a picture of the journal: the journal stays the record
        return None
