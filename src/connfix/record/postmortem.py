"""The report as the postmortem: the timeline from the incident's onset (with time to
detect, to mitigate and to resolve), the measured impact (refused connection attempts
from the server's log; the app hosts' failed health checks) and action items — all
from the journal alone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connfix.config.units import format_duration


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def from_onset(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The incident's milestones in order (onset, alert, connfix's start, each
    mitigation, healthy again) and the durations between them."""
    start = events[0]
    began = _epoch(start["ts"])
    history = next((e for e in events if e.get("event") == "history"), None)
    diagnoses = [e for e in events if e.get("event") == "diagnosis"]
    rows: list[tuple[float, str]] = []  # at the same instant: in the order added
    onset = (history or {}).get("onset")
    if onset is not None:
        warning = (history or {}).get("warning") or 0.8
        rows.append((onset, f"onset: connections crossed the warning line ({warning:.0%} of"
                            " usable) and stayed above it (Prometheus)"))  # fmt: skip
    else:
        first_bad = next((d for d in diagnoses if d["diagnosis"]["severity"] != "ok"), None)
        if first_bad is not None:
            onset = _epoch(first_bad["ts"])
            why = (
                "the Prometheus history did not show it before"
                if history
                else "no Prometheus in the inventory: the onset is at the latest"
            )
            rows.append((onset, f"onset (at the latest): connfix's first diagnosis found"
                                f" it {first_bad['diagnosis']['severity']} ({why})"))  # fmt: skip
    alerted = start.get("alert_starts_at")
    if alerted:
        name = str(start.get("trigger") or "alert").removeprefix("alert ")
        rows.append((_epoch(alerted), f"alert fired: {name} (its startsAt)"))
    rows.append((began, f"connfix started ({start.get('operator')} on {start.get('hostname')})"))
    mitigations = _mitigations(events)
    rows += mitigations
    healthy = _healthy_again(events, mitigations)
    if healthy is not None:
        rows.append((healthy, "healthy again"))
    order = {"onset:": 0, "alert": 1, "connfix": 2, "onset (": 3, "mitigation": 4, "healthy": 5}
    rows.sort(key=lambda r: (r[0], next(v for k, v in order.items() if r[1].startswith(k))))
    detected = _epoch(alerted) if alerted else began

    def since(ts: float | None) -> str | None:
        if ts is None or onset is None:
            return None
        return format_duration(ts - onset) if ts - onset >= 0.001 else "0s"

    return {
        "rows": [(_clock(ts), what, since(ts) or "–") for ts, what in rows],
        "detect": since(detected),
        "mitigate": since(mitigations[0][0] if mitigations else None),
        "resolve": since(healthy),
        "onset_known": onset is not None,
    }


def _mitigations(events: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """Every change-making step that was applied, from when it began (its outcome in
    words: its step_end's summary)."""
    began: dict[str, float] = {}
    found = []
    for e in events:
        step = str(e.get("step"))
        if e.get("event") == "step_start" and e.get("mutating"):
            began[step] = _epoch(e["ts"])
        elif e.get("event") == "step_end" and step in began:
            if not (e.get("dry_run") or e.get("applied") is False):
                found.append((began[step], f"mitigation: step {step} — {e.get('summary')}"))
            del began[step]
    return found


def _healthy_again(
    events: list[dict[str, Any]], mitigations: list[tuple[float, str]]
) -> float | None:
    """When the environment was healthy again: the first diagnosis after connfix's
    first change that found it ok (or the first one, when nothing was changed)."""
    after = mitigations[0][0] if mitigations else None
    for e in events:
        if e.get("event") != "diagnosis" or e["diagnosis"]["severity"] != "ok":
            continue
        at = _epoch(e["ts"])
        if after is None or at >= after - 1e-3:
            return at
    return None


def impact(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The refused connection attempts (the `impact` event) and the app hosts' failed
    health checks seen by the run's diagnoses."""
    found = next((e for e in events if e.get("event") == "impact"), None)
    failing: dict[str, int] = {}
    checks = 0
    for e in events:
        if e.get("event") != "diagnosis":
            continue
        for host, checked in (e["diagnosis"].get("host_health") or {}).items():
            checks += 1
            if not checked.get("ok"):
                failing[host] = failing.get(host, 0) + 1
    if found is not None:
        found = dict(found)
        for key in ("first", "last", "since", "until"):
            if found.get(key):
                when = datetime.fromisoformat(str(found[key])).astimezone(UTC)
                found[key] = when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"
    return {"refusals": found, "health_failing": failing, "health_checks": checks}


def action_items(
    environment: str, statements: bool, pooler: bool, suspects: list[str]
) -> list[str]:
    """The follow-ups, as items an owner can take."""
    items = []
    if statements:
        items.append("Set the session timeouts above (ALTER ROLE … SET …) for the roles seen")
    if pooler:
        items.append(
            f"Put a pooler in front of the database (connfix pool {environment}"
            " --pgbouncer-config DIR)"
        )
    items += [f"Find and fix the connection leak in the application on {h}" for h in suspects]
    items.append(f"Confirm the fix holds: connfix diagnose {environment} after the next deploy")
    return items
