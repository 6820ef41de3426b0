"""Notifications: a run tells the team what it does — at its start (the plan: the
runbook's steps), after each change-making step, and at its end (status, the summary
line, where the report is) — to the environment's `notify:` targets.

A Slack-compatible incoming webhook gets `{"text": "…"}`; a generic webhook gets one
JSON object (`connfix`, `event`, `environment`, `incident`, and the event's fields).
Everything sent is built from journal entries, which are already redacted: no secret
goes out. Each send has one total deadline (its timeout), redirects are not followed;
every send is journaled (`notification`, ok or the error) and a failure never stops or
holds the run.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connfix.record.events import Event

if TYPE_CHECKING:
    from connfix.config.inventory import Environment, NotifyTarget
    from connfix.record.journal import Journal

USER_AGENT = "connfix-notify/1"


def _url(target: NotifyTarget) -> str | None:
    if target.url is not None:
        return target.url
    return os.environ.get(target.url_env or "") or None


class Notifier:
    """Listens to a run's journal and sends what its targets asked for."""

    def __init__(self, env: Environment, environment: str, journal: Journal) -> None:
        self.targets = list(env.notify)
        self.environment = environment
        self.journal = journal
        self.incident = str(journal.path.parent)
        self.mutating: dict[str, bool] = {}  # step id → does it change things
        self.step: str | None = None
        self.action: str | None = None
        self.dry_run = False

    def __call__(self, entry: dict[str, Any]) -> None:
        """A journal entry was recorded (redacted): notify when it is one of ours."""
        if not self.targets:
            return
        event = entry.get("event")
        if event == Event.RUN_START:
            flags = entry.get("flags") or {}
            self.dry_run = bool(flags.get("dry_run"))
            steps = (entry.get("runbook") or {}).get("steps") or []
            runbook = (entry.get("runbook") or {}).get("name")
            mode = "dry run" if self.dry_run else ("--yes" if flags.get("yes") else "asks first")
            self.send(
                "start",
                f"connfix {flags.get('mode', 'triage')} of {self.environment} started by"
                f" {entry.get('operator')}@{entry.get('hostname')} ({mode}): runbook {runbook}"
                f" — {', '.join(steps)}. Incident {self.incident}",
                {
                    "operator": entry.get("operator"),
                    "hostname": entry.get("hostname"),
                    "runbook": runbook,
                    "steps": steps,
                    "dry_run": self.dry_run,
                    "mode": flags.get("mode"),
                },
            )
        elif event in APPROVAL_EVENTS:
            self._approval(entry)
        elif event == Event.STEP_START:
            self.step = str(entry.get("step") or "")
            self.action = str(entry.get("action") or "")
            self.mutating[self.step] = bool(entry.get("mutating"))
        elif event == Event.STEP_END and self.step and self.mutating.get(self.step):
            ok = bool(entry.get("ok"))
            summary = str(entry.get("summary") or "")
            self.send(
                "step",
                f"connfix {self.environment}: step {self.step} ({self.action})"
                f" {'ok' if ok else 'FAILED'} — {summary}",
                {"step": self.step, "action": self.action, "ok": ok, "summary": summary},
            )

    def _approval(self, entry: dict[str, Any]) -> None:
        """A step waits for an approval (with Approve / Reject buttons on Slack), or the
        request was decided, went stale, expired."""
        event, step = entry["event"], entry.get("step")
        name = Path(self.incident).name
        fields = {k: v for k, v in entry.items() if k not in ("ts", "seq", "event")}
        fields["approval"] = str(event).removeprefix("approval_")
        blocks = None
        if event == Event.APPROVAL_REQUESTED:
            plan = str(entry.get("plan", ""))
            text = (
                f"connfix {self.environment}: step {step} ({entry.get('action')}) waits for an"
                f" approval until {entry.get('expires_at')}, asked by {entry.get('requester')}"
                + (" (two_person: not by them)" if entry.get("two_person") else "")
                + f" — plan {plan[:12]}: {entry.get('summary')}."
                f" Approve: connfix approve {self.incident}"
            )
            listed = "\n".join(f"• {o}" for o in entry.get("operations") or [])
            value = json.dumps({"incident": name, "request": entry.get("request"), "plan": plan})
            blocks = [
                {"type": "section", "text": {"type": "mrkdwn", "text": _slack(text)}},
                *(
                    [{"type": "section", "text": {"type": "mrkdwn", "text": _slack(listed)[:2900]}}]
                    if listed
                    else []
                ),
                {
                    "type": "actions",
                    "block_id": "connfix_approval",
                    "elements": [
                        _button("connfix_approve", "Approve", "primary", value),
                        _button("connfix_reject", "Reject", "danger", value),
                    ],
                },
            ]
        elif event == Event.APPROVAL_STALE:
            text = (
                f"connfix {self.environment}: the plan of step {step} changed since"
                f" {entry.get('by')} approved it ({entry.get('summary')}): asked again"
            )
        elif event == Event.APPROVAL_EXPIRED:
            text = f"connfix {self.environment}: nobody approved step {step} in time: expired"
        elif event == Event.APPROVAL_REFUSED:
            text = (
                f"connfix {self.environment}: a {entry.get('decision')} by {entry.get('by')}"
                f" was refused: {entry.get('refused')}"
            )
        else:
            verb = "approved" if event == Event.APPROVAL_GRANTED else "rejected"
            text = (
                f"connfix {self.environment}: step {step} {verb} by {entry.get('by')}"
                f" via {entry.get('via')}"
                + (f": {entry.get('reason')}" if entry.get("reason") else "")
            )
        self.send("approval", text, fields, blocks)

    def end(self, status: str, exit_status: int, message: str) -> None:
        """The run is ending (called before run_end is journaled, so a failure to
        notify is still in the journal)."""
        if not self.targets:
            return
        report = str(Path(self.incident) / "report.md")
        text = self.journal.redact.value(message)
        self.send(
            "end",
            f"connfix {self.environment}: {status} (exit {exit_status}) — {text}. Report: {report}",
            {"status": status, "exit_status": exit_status, "message": text, "report": report},
        )

    def send(
        self, kind: str, text: str, fields: dict[str, Any], blocks: list[Any] | None = None
    ) -> None:
        for target in self.targets:
            if kind not in target.events:
                continue
            url = _url(target)
            if url is None:
                self._record(target, kind, f"{target.url_env} is not set")
                continue
            if target.kind == "slack":
                body: dict[str, Any] = {"text": text}
                if blocks:
                    body["blocks"] = blocks
            else:
                body = {
                    "connfix": 1,
                    "event": kind,
                    "environment": self.environment,
                    "incident": self.incident,
                    "text": text,
                    **fields,
                }
            self._record(target, kind, post(url, body, target.timeout))

    def _record(self, target: NotifyTarget, kind: str, error: str | None) -> None:
        fields: dict[str, Any] = {"target": target.name, "kind": target.kind, "notification": kind}
        if error is None:
            fields["ok"] = True
        else:
            fields["ok"], fields["error"] = False, error
        with contextlib.suppress(Exception):  # a notification never stops the run
            self.journal.record(Event.NOTIFICATION, **fields)


APPROVAL_EVENTS = (
    Event.APPROVAL_REQUESTED,
    Event.APPROVAL_GRANTED,
    Event.APPROVAL_REJECTED,
    Event.APPROVAL_EXPIRED,
    Event.APPROVAL_REFUSED,
    Event.APPROVAL_STALE,
)


def _slack(text: str) -> str:
    """Text for Slack's mrkdwn: its three control characters escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _button(action_id: str, label: str, style: str, value: str) -> dict[str, Any]:
    return {
        "type": "button",
        "action_id": action_id,
        "style": style,
        "text": {"type": "plain_text", "text": label},
        "value": value,
    }


def post(url: str, body: dict[str, Any], timeout: float) -> str | None:
    """POST JSON; return None when the target answered 2xx, else why not (no URL in
    the message: a webhook URL is a secret). `timeout` bounds the whole send, not each
    socket read (a target trickling its answer byte by byte cannot hold the run): the
    request runs in a daemon thread the run stops waiting for. A redirect is not
    followed (urllib would re-send a POST as a GET without its body, to wherever it
    points): it is journaled as not delivered. urllib is imported here: every run loads
    this module, few send anything."""
    import threading

    answer: list[str | None] = []
    sender = threading.Thread(
        target=lambda: answer.append(_post(url, body, timeout)), daemon=True, name="notify"
    )
    sender.start()
    sender.join(timeout)
    if not answer:
        return f"not delivered: no complete answer within {timeout:g}s"
    return answer[0]


def _post(url: str, body: dict[str, Any], timeout: float) -> str | None:
    import urllib.error
    import urllib.request

    from connfix.config import http

    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
    )
    try:
        with http.opener().open(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            return (
                f"not delivered: the target answered HTTP {exc.code}, a redirect; connfix does"
                " not follow it (point the webhook at its final address)"
            )
        return f"the target answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"not delivered: {reason}"
    return None if 200 <= status < 300 else f"the target answered HTTP {status}"
