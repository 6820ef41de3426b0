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
