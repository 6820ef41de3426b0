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

    def send(self, kind: str, text: str, fields: dict[str, Any]) -> None:
        for target in self.targets:
            if kind not in target.events:
                continue
            url = _url(target)
            if url is None:
                self._record(target, kind, f"{target.url_env} is not set")
                continue
            if target.kind == "slack":
                body: dict[str, Any] = {"text": text}
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
