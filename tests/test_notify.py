"""Notifications on a real run: a local receiver stands for Slack and for a generic
webhook; one more target answers 500 and another is not listening at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Lab, assert_complete, connfix_run, events, of, retry
from tests.receiver import receiver


def test_a_run_notifies_start_each_change_and_end(
    clean_lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    with receiver() as rx:
        rx.status["/broken"] = 500
        secret_path = "/services/T000/B000/XXXXsecretXXXX"
        monkeypatch.setenv("CONNFIX_TEST_SLACK_URL", rx.url + secret_path)

        def change(env: dict[str, Any]) -> None:
            env["notify"] = [
                {"name": "chat", "kind": "slack", "url_env": "CONNFIX_TEST_SLACK_URL"},
                {"name": "ops", "kind": "webhook", "url": rx.url + "/hook"},
                {"name": "broken", "kind": "webhook", "url": rx.url + "/broken"},
                {"name": "away", "kind": "webhook", "url": "http://127.0.0.1:9/x",
                 "timeout": "1s"},
                {"name": "ends-only", "kind": "webhook", "url": rx.url + "/end",
                 "events": ["end"]},
            ]  # fmt: skip

        inventory = clean_lab.inventory_with(tmp_path, change)
        result = connfix_run("triage", inventory, tmp_path / "incidents", "--yes")
        assert result.exit_code == 0, result.output  # failing targets changed nothing
        hook = retry(lambda: rx.bodies("/hook") if len(rx.bodies("/hook")) >= 3 else None)
        slack = rx.bodies(secret_path)
    kinds = [b["event"] for b in hook]
    assert kinds[0] == "start" and kinds[-1] == "end" and "step" in kinds
    start, end = hook[0], hook[-1]
    assert start["environment"] == "lab" and start["steps"][0] == "diagnose"
    assert start["dry_run"] is False
    steps = [b for b in hook if b["event"] == "step"]
    assert any(b["action"] == "rolling_restart" and b["ok"] for b in steps), steps
    assert all(b["action"] in ("terminate", "rolling_restart") for b in steps)  # changes only
    assert end["status"] == "resolved" and end["exit_status"] == 0
    assert end["report"].endswith("report.md") and Path(end["incident"]).is_dir()
    assert [set(b) for b in slack] == [{"text"}] * len(hook)
    assert slack[-1]["text"].startswith("connfix lab: resolved (exit 0)")
    assert [b["event"] for b in rx.bodies("/end")] == ["end"]
    # every notification is journaled; the failures say why, and never the URL
    evs = events(tmp_path / "incidents")
    sent = of(evs, "notification")
    failed = [e for e in sent if not e["ok"]]
    assert {e["target"] for e in failed} == {"broken", "away"}
    assert all("HTTP 500" in e["error"] for e in failed if e["target"] == "broken")
    assert all("not delivered" in e["error"] for e in failed if e["target"] == "away")
    assert evs[-1]["event"] == "run_end"  # the end notification was journaled before it
    journal = (next((tmp_path / "incidents").glob("*/journal.jsonl"))).read_text()
    report = assert_complete(tmp_path / "incidents", "resolved")
    for text in (journal, report, result.output, json.dumps(hook)):
        assert "XXXXsecretXXXX" not in text


def test_a_slack_url_is_never_written_in_the_inventory() -> None:
    from pydantic import ValidationError

    from connfix.config.inventory import NotifyTarget

    with pytest.raises(ValidationError, match="secret: give it by environment variable"):
        NotifyTarget.model_validate({"kind": "slack", "url": "https://hooks.slack.com/x"})
    with pytest.raises(ValidationError, match="give url or url_env"):
        NotifyTarget.model_validate({"kind": "webhook"})
    with pytest.raises(ValidationError, match="http:// or https://"):
        NotifyTarget.model_validate({"kind": "webhook", "url": "file:///etc/passwd"})


def test_metrics_keep_cardinality_low() -> None:
    """50 application names become the 20 largest and (other); no pid, address or query."""
    from connfix.record import metrics
    from tests.test_diagnose_unit import backend
    from tests.test_pgbouncer_unit import diagnosis, environment, state

    env = environment()
    rows = []
    for i in range(50):
        b = backend(100 + i, "10.0.0.1")
        rows.append(type(b)(**{**b.__dict__, "application_name": f"app-{i}"}))
    d = diagnosis(env, rows, state([], []))
    text = metrics.text([d], ["other-env"]).decode()
    apps = [
        line for line in text.splitlines() if line.startswith("connfix_connections_by_application{")
    ]
    assert len(apps) == 21 and any('application="(other)"' in line for line in apps)
    assert 'connfix_up{environment="other-env"} 0.0' in text
    assert 'connfix_up{environment="prod"} 1.0' in text
    assert "10.0.0.1" not in text and "SELECT" not in text and "pid" not in text


def test_a_trickling_target_cannot_hold_a_send_past_its_timeout() -> None:
    """The target answers one byte every 0.2 s for 20 s; the send's 1 s timeout is the
    whole send's, not each read's."""
    import time

    from connfix.record.notify import post

    with receiver() as rx:
        rx.trickle["/slow"] = 20
        started = time.monotonic()
        error = post(rx.url + "/slow", {"text": "x"}, 1.0)
        took = time.monotonic() - started
    assert error is not None and "no complete answer within 1s" in error
    assert took < 2.5, took


def test_a_redirect_is_not_followed_and_not_called_delivered() -> None:
    from connfix.record.notify import post

    with receiver() as rx:
        rx.redirect["/moved"] = rx.url + "/elsewhere"
        error = post(rx.url + "/moved", {"text": "x"}, 3.0)
        followed = [p for p in rx.posts if p["path"] == "/elsewhere"]
    assert error is not None and "HTTP 302, a redirect; connfix does not follow it" in error
    assert not followed
