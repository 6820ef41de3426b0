"""The post-incident report: Markdown rendered from the journal alone.

Everything that came from the database or the hosts is escaped on its way into the
Markdown (the template environment escapes every interpolated value unless it was
built as Markdown here), so an application name cannot break a table or inject HTML.
The same journal always renders the same report.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from connfix.engine.run import RunStatus
from connfix.errors import InputError
from connfix.events import Event
from connfix.journal import journal_of, read_journal
from connfix.units import format_duration

REPORT = "report.md"
_ESCAPE = re.compile(r"([\\`*_\[\]|~#])")

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
}
assert set(STATUS_TEXT) == set(RunStatus), "every way a run ends has its title"


class Markdown(str):
    """Text that is already Markdown: interpolated as is."""


def escape(value: object) -> str:
    """Make any text safe inside Markdown, table cells included: one line, no HTML."""
    text = str(value)
    text = "".join(ch if ch.isprintable() else " " for ch in text.replace("\r\n", " "))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _ESCAPE.sub(r"\\\1", text)
    return "\\" + text if text[:1] in ("-", "+") else text  # not a list item


def code(text: str) -> Markdown:
    """Return a fenced code block that no backtick run in `text` can close early, with
    control characters and bidi overrides shown visibly (a role name may carry them)."""
    from connfix.text import defang

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


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class PoolRow:
    """One line of the pool-sizing table."""

    label: str
    servers: int
    pool_size: int
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
            f" {event.get('new_main_pid')}, {format_duration(event.get('seconds', 0))}"
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
    if kind == "run_end":
        return f"run ended: {event.get('status')} — {event.get('message')}"
    return None  # per-pid operations are in the actions table


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
    operations = [e for e in events if e["event"] == Event.OPERATION]
    hosts = [e for e in events if e["event"] in (Event.HOST_DONE, Event.HOST_FAILED)]
    # a run killed mid-roll: a host whose restart began has no end; it may well have
    # restarted, so it is listed, with what is known
    ended = {(e.get("step"), e.get("host")) for e in hosts}
    hosts += [
        {**e, "event": "host_unknown"}
        for e in events
        if e["event"] == Event.HOST_START and (e.get("step"), e.get("host")) not in ended
    ]
    freed = sum(
        (e.get("details") or {}).get("slots_freed") or 0
        for e in events
        if e["event"] == Event.STEP_END
    )
    peak = max((d["client_backends"] for d in diagnoses), default=None)
    dry_run = bool(start.get("flags", {}).get("dry_run"))
    known = status_key in RunStatus.__members__.values()
    status = STATUS_TEXT[RunStatus(status_key)] if known else escape(status_key)
    env = start.get("environment", "?")
    terminated = [o for o in operations if o.get("result") == "terminated"]
    restarted = [h for h in hosts if h["event"] == Event.HOST_DONE]

    summary = []
    if before:
        summary.append(
            f"At {_ts(first_ts).strftime('%Y-%m-%d %H:%M')} UTC, {env} had"
            f" {before['client_backends']} of {before['usable_connections']} usable"
            f" connections in use ({_pct(before['utilization'])}, {before['severity']})"
            + (
                f"; leak suspects: {', '.join(before['suspects'])}."
                if before.get("suspects")
                else "; no leak suspect."
            )
        )
    if dry_run:
        summary.append("This was a dry run: connfix diagnosed and planned, and changed nothing.")
    else:
        done = []
        if terminated:
            done.append(f"terminated {len(terminated)} session(s)")
        if restarted:
            done.append(f"restarted {', '.join(h['host'] for h in restarted)}")
        summary.append("connfix " + (" and ".join(done) if done else "changed nothing") + ".")
    if after:
        summary.append(
            f"Afterwards {after['client_backends']} of {after['usable_connections']} were in"
            f" use ({_pct(after['utilization'])}); the run ended {status} after"
            f" {format_duration(duration)}."
        )
    else:
        summary.append(f"The run ended {status} after {format_duration(duration)}.")

    suspects = [u for u in (before or {}).get("by_host", []) if u.get("suspect")]
    states = sorted(
        set((before or {}).get("by_state", {})) | set((after or {}).get("by_state", {}))
    )
    host_names = [u["host"] for u in (before or {}).get("by_host", [])]
    for u in (after or {}).get("by_host", []):
        if u["host"] not in host_names:
            host_names.append(u["host"])

    def by_host(d: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
        return {u["host"]: u for u in (d or {}).get("by_host", [])}

    pool_rows: list[PoolRow] = []
    pool_line = None
    pool_notes: list[str] = []
    advice = next((e for e in reversed(events) if e["event"] == Event.ADVICE), None)
    check = (after or before or {}).get("pool_check")
    if advice:  # the advise step's sizing also keeps room for other clients and a restart
        sizing = advice["sizing"]
        for row in sizing["table"]:
            pool_rows.append(
                PoolRow(
                    row["label"],
                    row["servers"],
                    row["pool_size"],
                    row["total"],
                    row["available"],
                    row["safe"],
                )
            )
        pool_notes = sizing["notes"]
        now, safe = sizing["table"]
        relation = "≤" if now["safe"] else ">"
        pool_line = (
            f"{now['servers']} servers × {now['pool_size']} = {now['total']}"
            f" {relation} {now['available']}"
        )
        pool_line += (
            ": safe as it is"
            if now["safe"]
            else f" → pool {safe['pool_size']}: {safe['total']},"
            f" {'safe' if safe['safe'] else 'still NOT safe: use PgBouncer'}"
        )
    elif check:
        per = check["total"] // max(1, check["servers"])
        pool_rows.append(
            PoolRow("now", check["servers"], per, check["total"], check["limit"], check["safe"])
        )
        if not check["safe"]:
            size = check["recommended_pool_size"]
            total = size * check["servers"] * check.get("workers", 1)
            pool_rows.append(
                PoolRow(
                    "safe", check["servers"], size, total, check["limit"], total <= check["limit"]
                )
            )
            pool_line = (
                f"{check['servers']} servers × {per} = {check['total']} >"
                f" {check['limit']} → pool {size}: {total}, safe"
            )
        else:
            pool_line = (
                f"{check['servers']} servers × {per} = {check['total']} ≤"
                f" {check['limit']}: safe as it is"
            )

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
    bursty = bool(before and before["severity"] != "ok" and not before.get("suspects"))
    pooler = bool(check and not check["safe"]) or bursty or bool(advice and advice["pgbouncer"])

    timeline: list[tuple[str, str]] = []
    repeats = 0
    for event in events:
        text = _describe(event)
        if text is None:
            continue
        if timeline and event["event"] == Event.DIAGNOSIS and timeline[-1][1].startswith(text):
            repeats += 1  # a verify polling an unchanged state: one line, with a count
            timeline[-1] = (
                timeline[-1][0],
                f"{text} (×{repeats + 1}, until {_clock(event['ts'])})",
            )
            continue
        repeats = 0
        timeline.append((_clock(event["ts"]), text))
    return {
        "environment": env,
        "status": status,
        "status_key": status_key,
        "dry_run": dry_run,
        "summary": " ".join(summary),
        "started": first_ts,
        "ended": last_ts,
        "duration": format_duration(duration),
        "before": before,
        "after": after,
        "peak": peak,
        "slots_freed": freed,
        "pct": _pct,
        "age": lambda s: "–" if s is None else format_duration(s),
        "timeline": timeline,
        "operations": operations,
        "hosts": hosts,
        "suspects": suspects,
        "states": states,
        "host_names": host_names,
        "health": _health,
        "counts": lambda c: ", ".join(f"{k} {v}" for k, v in c.items()) or "–",
        "unowned": lambda u: (
            ", ".join(f"{k} {v}" for k, v in u.get("unowned_clients", {}).items()) or "–"
        ),
        "before_hosts": by_host(before),
        "after_hosts": by_host(after),
        "pool_rows": pool_rows,
        "pool_line": pool_line,
        "pool_notes": pool_notes,
        "settings": [(Markdown(f"`{name}`"), value, why) for name, value, why in settings],
        "statements": code(statements) if statements else None,
        "pooler": pooler,
        "bursty": bursty,
        "start": start,
        "runbook": start.get("runbook", {}),
        "journal": str(journal),
        "connected": connected,
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


def render(journal: Path, template: Path | None = None) -> str:
    """Render the report of one journal, with the shipped or a user template."""
    from jinja2 import StrictUndefined, TemplateError
    from jinja2.exceptions import SecurityError

    from connfix.sandbox import TemplateSandbox

    try:
        events = list(read_journal(journal))
    except FileNotFoundError:
        raise InputError(f"{journal}: no such journal") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{journal}: the journal cannot be read: {exc}") from None
    try:
        context = build(events, journal)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise InputError(
            f"{journal}: the journal does not have the shape connfix writes"
            f" ({type(exc).__name__}: {exc}); was it edited?"
        ) from None
    if template is not None:
        from connfix import files

        try:
            source = files.read_text(files.expand(template), 1_000_000)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise InputError(f"--template {template}: {reason}") from None
    else:
        source = resources.files("connfix").joinpath("templates", "report.md.j2").read_text("utf-8")
    env = TemplateSandbox(
        undefined=StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = lambda value: Markdown(str(value))
    where = f"--template {template}" if template else "the report template"
    try:
        with _time_limit(RENDER_SECONDS):
            parts, size = [], 0
            for part in env.from_string(source).generate(**context):
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
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        if "no loader" in str(exc):
            raise InputError(
                f"{where}: a report template is one file: {{% include %}}, {{% import %}}"
                " and {% extends %} are not supported"
            ) from None
        raise InputError(f"{where}: {type(exc).__name__}: {exc}") from None


def write(incident: Path, output: Path | None = None, template: Path | None = None) -> Path:
    """Render and write the report (default: report.md beside the journal, mode 0600)."""

    from connfix import files

    journal = journal_of(incident)
    text = render(journal, template)
    target = files.expand(output) if output else journal.parent / REPORT
    try:
        files.write_private(target, text)
    except OSError as exc:
        raise InputError(f"cannot write the report {target}: {exc.strerror or exc}") from None
    return target
