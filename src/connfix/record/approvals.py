"""Approvals: a human in the loop between a planned change and its application.

A run that reaches a step needing approval journals `approval_requested` (the plan, its
hash, who asked, until when) and waits. Whoever approves or rejects — `connfix approve`
in a terminal, `serve`'s authenticated endpoint, a signed Slack button — goes through
`decide` here, which checks the rules and writes the decision as one file in the
incident directory, created exclusively (the first decision wins; a second is refused).
The waiting run, in whichever process or `serve` replica it runs, reads that file: the
incident directory is the state every party shares.

The rules, checked when a decision is made and again by the run when it reads it:
- an approval is for one plan: the hash of its operations (targets, sessions, hosts,
  commands, in order); the run plans again before applying and a changed plan is asked
  for again;
- after the request's TTL nothing is decided: the run ends `expired`;
- with `two_person`, the requester (the operator who started the run) cannot approve it.

Attempts that were refused are appended to `approvals/attempts.jsonl`; the waiting run
journals them. Nothing here reads or writes the journal's lines but to find the request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connfix import ConnfixError, ExitStatus
from connfix.record.events import Event

DIRECTORY = "approvals"
ATTEMPTS = "attempts.jsonl"
POLL_S = 0.25  # how often a waiting run looks for a decision
INCIDENT_NAME = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9._-]{1,80}\Z")
CLOSING = (Event.APPROVAL_GRANTED, Event.APPROVAL_REJECTED, Event.APPROVAL_EXPIRED)


class ApprovalRefused(ConnfixError):
    """A decision the rules refuse (self-approval, after the TTL, another plan, already
    decided): nothing is written but the attempt."""

    exit_status = ExitStatus.UNHEALTHY

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.http_status = status


class NoRequest(ConnfixError):
    """No incident by that name, or nothing in it waits for a decision."""

    exit_status = ExitStatus.BAD_INPUT


def plan_hash(operations: list[Any]) -> str:
    """The hash of a plan: its operations' kinds, targets and exact commands, in order
    (what would be done, where, to which session; not the descriptions, which carry
    ages that grow while the plan waits)."""
    items = [
        [getattr(o, "kind", None), getattr(o, "target", None), getattr(o, "command", None)]
        for o in operations
    ]
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def person(identity: str) -> str:
    """Who an identity is, for the two-person rule: `alice (as Alice)` is alice;
    `slack:U123 (bob)` is slack:U123."""
    return identity.split(" (", 1)[0].strip().lower()


@dataclass(frozen=True)
class Request:
    """A pending (or past) request, as journaled."""

    id: str
    incident: Path
    environment: str
    step: str
    action: str
    plan: str  # the plan's hash
    summary: str
    operations: list[str]
    requester: str
    requested_at: float
    expires_at: float
    two_person: bool

    @property
    def short(self) -> str:
        return self.plan[:12]

    def expires_in(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)


@dataclass(frozen=True)
class Decision:
    """One decision on one request."""

    request: str
    decision: str  # approve or reject
    by: str  # the approver's identity
    via: str  # terminal, http, slack
    at: float
    plan: str
    reason: str = ""

    def fields(self) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = iso(self.at)
        return out


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def request_fields(req: Request) -> dict[str, Any]:
    """The journal's `approval_requested` fields for a request."""
    return {
        "request": req.id,
        "step": req.step,
        "action": req.action,
        "plan": req.plan,
        "summary": req.summary,
        "operations": req.operations,
        "requester": req.requester,
        "expires_at": iso(req.expires_at),
        "ttl": round(req.expires_at - req.requested_at, 3),
        "two_person": req.two_person,
    }


def _events(incident: Path) -> list[dict[str, Any]]:
    from connfix.record.journal import JOURNAL, read_journal

    path = incident / JOURNAL
    if not path.is_file():
        raise NoRequest(f"{incident}: no journal there (not an incident directory)")
    return list(read_journal(path))


def pending(incident: Path) -> Request:
    """The request the incident's run waits on; NoRequest when nothing waits (with why)."""
    events = _events(incident)
    start = next((e for e in events if e.get("event") == Event.RUN_START), {})
    requests = [e for e in events if e.get("event") == Event.APPROVAL_REQUESTED]
    if not requests:
        raise NoRequest(f"{incident.name}: its run asked for no approval")
    last = requests[-1]
    closed = [
        e for e in events if e.get("event") in CLOSING and e.get("request") == last["request"]
    ]
    ended = any(e.get("event") == Event.RUN_END for e in events)
    req = Request(
        id=str(last["request"]),
        incident=incident,
        environment=str(start.get("environment", "?")),
        step=str(last.get("step")),
        action=str(last.get("action")),
        plan=str(last.get("plan")),
        summary=str(last.get("summary", "")),
        operations=[str(o) for o in last.get("operations", [])],
        requester=str(last.get("requester", "?")),
        requested_at=_epoch(str(last["ts"])),
        expires_at=_epoch(str(last["expires_at"])),
        two_person=bool(last.get("two_person")),
    )
    if closed:
        how = closed[-1]
        if how.get("event") == Event.APPROVAL_EXPIRED:
            raise ApprovalRefused(
                f"{incident.name}: the request for step {req.step} expired at"
                f" {iso(req.expires_at)}: nothing is decided after its TTL (the run ended"
                " `expired`)",
                403,
            )
        raise NoRequest(
            f"{incident.name}: its request for step {req.step} is closed:"
            f" {str(how['event']).removeprefix('approval_')}"
            + (f" by {how['by']}" if how.get("by") else "")
        )
    if ended:
        end = next(e for e in reversed(events) if e.get("event") == Event.RUN_END)
        raise NoRequest(f"{incident.name}: its run has ended ({end.get('status')})")
    gone = _run_gone(start)
    if gone:
        raise NoRequest(
            f"{incident.name}: its run is no longer running ({gone}): it was killed while"
            " waiting, and nothing would read a decision. Run it again (`--resume"
            f" {incident}` skips what it finished)."
        )
    return req


def _run_gone(start: dict[str, Any]) -> str | None:
    """Why the run that journaled `start` is known not to be running any more, when it
    ran on this machine: its pid is gone, or is another process started after the run
    began (a pid reused). None when it runs, or when it ran elsewhere (not knowable)."""
    import socket

    pid, host = start.get("pid"), start.get("hostname")
    if not isinstance(pid, int) or pid <= 0 or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} on {host} has exited"
    except PermissionError:
        pass  # a process of another user: alive
    began = _process_started(pid)
    if began is not None and "ts" in start and began > _epoch(str(start["ts"])) + 1:
        return f"pid {pid} on {host} is now another process"
    return None


def _process_started(pid: int) -> float | None:
    """When a process started (epoch seconds), from /proc; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _decision_path(incident: Path, request_id: str) -> Path:
    return incident / DIRECTORY / f"{request_id}.json"


def decide(
    req: Request,
    decision: str,
    identity: str,
    via: str,
    plan: str | None = None,
    reason: str = "",
    now: float | None = None,
) -> Decision:
    """Decide on a request, under the rules; write it exclusively. Raise ApprovalRefused
    (and append the attempt for the run to journal) when the rules refuse it."""
    now = time.time() if now is None else now
    made = Decision(req.id, decision, identity, via, now, plan or req.plan, reason)
    try:
        check(req, made)
    except ApprovalRefused as exc:
        attempt(req.incident, made, str(exc))
        raise
    path = _decision_path(req.incident, req.id)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        first = read_decision(req.incident, req.id)
        why = f"already decided: {first.decision} by {first.by}" if first else "already decided"
        attempt(req.incident, made, why)
        raise ApprovalRefused(why) from None
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(made), out)
        out.flush()
        os.fsync(out.fileno())
    return made


def check(req: Request, made: Decision) -> None:
    """The rules; ApprovalRefused with the reason when one is broken."""
    if made.decision not in ("approve", "reject"):
        raise ApprovalRefused(f"{made.decision!r}: approve or reject", 400)
    if made.at > req.expires_at:
        raise ApprovalRefused(
            f"the request for step {req.step} expired at {iso(req.expires_at)}"
            f" ({made.at - req.expires_at:.0f}s ago): nothing is decided after its TTL",
            403,
        )
    if made.plan != req.plan:
        raise ApprovalRefused(
            f"the plan offered ({made.plan[:12]}) is not the plan waiting ({req.short}):"
            " look at the current request and decide on it",
            409,
        )
    if made.decision == "approve" and req.two_person and person(made.by) == person(req.requester):
        raise ApprovalRefused(
            f"{made.by} requested this run and cannot approve it (two_person: true):"
            " a second person must",
            403,
        )


def read_decision(incident: Path, request_id: str) -> Decision | None:
    """The decision written for a request, or None (a half-written file reads as none)."""
    try:
        data = json.loads(_decision_path(incident, request_id).read_text())
        return Decision(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def attempt(incident: Path, made: Decision, why: str) -> None:
    """Append a refused attempt (one short line, appended whole) for the run to journal."""
    path = incident / DIRECTORY / ATTEMPTS
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, exist_ok=True)
        line = json.dumps({**made.fields(), "refused": why}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def attempts(incident: Path, seen: int) -> tuple[list[dict[str, Any]], int]:
    """The refused attempts after the first `seen` bytes; and how many bytes are read."""
    try:
        data = (incident / DIRECTORY / ATTEMPTS).read_bytes()
    except FileNotFoundError:
        return [], seen
    end = data.rfind(b"\n") + 1
    lines = data[seen:end].decode("utf-8", "replace").splitlines()
    found = []
    for line in lines:
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found, max(seen, end)


def find_incident(name: str, bases: list[Path]) -> Path:
    """An incident directory by its name, in any of the incident bases (serve's way: an
    approver names the incident, never a path)."""
    if not INCIDENT_NAME.match(name):
        raise NoRequest(f"{name!r} is not an incident's name (e.g. 20261205T021500Z-prod)")
    for base in bases:
        candidate = base / name
        if (candidate / "journal.jsonl").is_file():
            return candidate
    raise NoRequest(f"no incident {name}")
