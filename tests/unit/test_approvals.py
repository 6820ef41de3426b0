"""The approval rules (connfix.record.approvals) on real incident directories written by
connfix's own journal, and Slack's signature check; the lab tests
(tests/lab/test_approvals.py) drive the same through serve, Alertmanager and a run."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
import urllib.parse
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from connfix.actions.base import Operation
from connfix.record import approvals
from connfix.record.events import Event
from connfix.record.journal import Journal
from connfix.serve import _slack_action, shared_state

RESTART_APP2 = [Operation("ssh", "restart app2", "app2", "sudo -n systemctl restart app")]


def incident(tmp_path: Path, requester: str = "alice", ttl: float = 60, two_person: bool = True,
             end: str | None = None) -> approvals.Request:  # fmt: skip
    """An incident whose run asked for an approval (and, with `end`, ended so)."""
    folder = tmp_path / "20261205T021500Z-prod"
    folder.mkdir(parents=True)
    journal = Journal(folder)
    journal.record(Event.RUN_START, environment="prod", operator=requester)
    now = time.time()
    req = approvals.Request(
        id="restart-0a1b2c3d", incident=folder, environment="prod", step="restart",
        action="rolling_restart", plan=approvals.plan_hash(RESTART_APP2),
        summary="restart app2", operations=["restart app2"], requester=requester,
        requested_at=now, expires_at=now + ttl, two_person=two_person,
    )  # fmt: skip
    journal.record(Event.APPROVAL_REQUESTED, **approvals.request_fields(req))
    if end == "expired":
        journal.record(Event.APPROVAL_EXPIRED, request=req.id, step="restart")
        journal.record(Event.RUN_END, status="expired", exit_status=1, message="expired")
    elif end is not None:
        journal.record(Event.RUN_END, status=end, exit_status=130, message=end)
    journal.close()
    return approvals.pending(folder) if end is None else req


def test_the_pending_request_reads_back_as_journaled(tmp_path: Path) -> None:
    req = incident(tmp_path)
    assert (req.step, req.requester, req.two_person) == ("restart", "alice", True)
    assert req.plan == approvals.plan_hash(RESTART_APP2) and 55 < req.expires_in() <= 60


def test_the_first_decision_wins_and_the_second_is_refused_and_recorded(tmp_path: Path) -> None:
    req = incident(tmp_path)
    made = approvals.decide(req, "approve", "bob", "terminal")
    assert approvals.read_decision(req.incident, req.id) == made
    with pytest.raises(approvals.ApprovalRefused, match="already decided: approve by bob"):
        approvals.decide(req, "reject", "carol", "http")
    found, _ = approvals.attempts(req.incident, 0)
    assert [(a["by"], a["decision"]) for a in found] == [("carol", "reject")]
    assert found[0]["refused"].startswith("already decided")


def test_many_deciders_at_once_make_exactly_one_decision(tmp_path: Path) -> None:
    req = incident(tmp_path)
    results: list[str] = []

    def one(name: str) -> None:
        try:
            approvals.decide(req, "approve", name, "http")
            results.append("ok")
        except approvals.ApprovalRefused:
            results.append("refused")

    threads = [threading.Thread(target=one, args=(f"p{i}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["refused"] * 15


@pytest.mark.parametrize(
    ("who", "two_person", "refused"),
    [
        ("alice", True, True),
        ("Alice (as Alice Smith)", True, True),  # --as names; the OS user decides
        ("bob (as alice)", True, False),
        ("alice", False, False),
    ],
)
def test_the_requester_cannot_approve_under_two_person(
    tmp_path: Path, who: str, two_person: bool, refused: bool
) -> None:
    req = incident(tmp_path, two_person=two_person)
    if refused:
        with pytest.raises(approvals.ApprovalRefused, match="cannot approve it") as caught:
            approvals.decide(req, "approve", who, "terminal")
        assert caught.value.http_status == 403
        assert approvals.read_decision(req.incident, req.id) is None
    else:
        assert approvals.decide(req, "approve", who, "terminal").by == who


def test_the_requester_may_reject_their_own_run(tmp_path: Path) -> None:
    req = incident(tmp_path)
    assert approvals.decide(req, "reject", "alice", "terminal").decision == "reject"


def test_a_decision_after_the_ttl_is_refused(tmp_path: Path) -> None:
    req = incident(tmp_path, ttl=5)
    with pytest.raises(approvals.ApprovalRefused, match="expired at") as caught:
        approvals.decide(req, "approve", "bob", "http", now=req.expires_at + 1)
    assert caught.value.http_status == 403
    assert approvals.read_decision(req.incident, req.id) is None


def test_a_decision_for_another_plan_is_refused(tmp_path: Path) -> None:
    req = incident(tmp_path)
    other = approvals.plan_hash([Operation("ssh", "restart app3", "app3", "restart")])
    with pytest.raises(approvals.ApprovalRefused, match="is not the plan waiting"):
        approvals.decide(req, "approve", "bob", "slack", plan=other)


def test_the_plan_hash_is_its_targets_and_commands_in_order_not_its_descriptions() -> None:
    a = Operation("sql", "terminate pid 7, idle 10m", "pid 7", "SELECT pg_terminate_backend(7)")
    b = Operation("sql", "terminate pid 8, idle 10m", "pid 8", "SELECT pg_terminate_backend(8)")
    older = Operation("sql", "terminate pid 7, idle 11m", "pid 7", "SELECT pg_terminate_backend(7)")
    assert approvals.plan_hash([a, b]) == approvals.plan_hash([older, b])
    assert approvals.plan_hash([a, b]) != approvals.plan_hash([b, a])
    assert approvals.plan_hash([a]) != approvals.plan_hash([a, b])


@pytest.mark.parametrize(
    ("end", "error", "match"),
    [
        ("expired", approvals.ApprovalRefused, "expired at"),
        ("interrupted", approvals.NoRequest, "its run has ended"),
    ],
)
def test_a_closed_request_takes_no_decision(
    tmp_path: Path, end: str, error: type[Exception], match: str
) -> None:
    req = incident(tmp_path, end=end)
    with pytest.raises(error, match=match):
        approvals.pending(req.incident)


def test_an_incident_is_found_by_its_name_only(tmp_path: Path) -> None:
    req = incident(tmp_path)
    assert approvals.find_incident(req.incident.name, [tmp_path / "x", tmp_path]) == req.incident
    for name in ("../20261205T021500Z-prod", "20261205T021500Z-prod/..", "/etc", ""):
        with pytest.raises(approvals.NoRequest, match="not an incident's name"):
            approvals.find_incident(name, [tmp_path])
    with pytest.raises(approvals.NoRequest, match="no incident"):
        approvals.find_incident("20261205T021500Z-other", [tmp_path])


SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def slack_request(body: bytes, secret: str, ts: int) -> Any:
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    headers = {"x-slack-request-timestamp": str(ts), "x-slack-signature": f"v0={digest}"}
    return SimpleNamespace(headers=headers)


@pytest.mark.parametrize(
    ("secret", "age", "ok"),
    [(SECRET, 0, True), (SECRET, 299, True), (SECRET, 301, False), (SECRET, -301, False),
     ("another-secret", 0, False)],
)  # fmt: skip
def test_slacks_signature_and_its_five_minute_window(secret: str, age: int, ok: bool) -> None:
    from connfix.serve import Server

    server = Server(None, None, "token", None)  # type: ignore[arg-type]
    server.slack_secret = SECRET
    body = b"payload=%7B%7D"
    now = 1_700_000_000
    assert server.slack_ok(slack_request(body, secret, now - age), body, now=now) is ok
    tampered = body + b"x"
    assert not server.slack_ok(slack_request(body, secret, now - age), tampered, now=now)


def test_slacks_documented_example_signature_verifies() -> None:
    """The example of Slack's "Verifying requests from Slack" page: its secret, its
    timestamp and body, its signature."""
    from connfix.serve import Server

    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
        b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
        b"command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2F"
        b"commands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&"
        b"trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
    )
    request = SimpleNamespace(
        headers={
            "x-slack-request-timestamp": "1531420618",
            "x-slack-signature": (
                "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
            ),
        }
    )
    server = Server(None, None, "token", None)  # type: ignore[arg-type]
    server.slack_secret = SECRET
    assert server.slack_ok(request, body, now=1531420618 + 10)


def test_a_slack_click_names_the_clicker_from_the_signed_payload() -> None:
    payload = {
        "type": "block_actions",
        "user": {"id": "U0BOB", "username": "bob"},
        "actions": [{"action_id": "connfix_approve", "value": "{}"}],
    }
    body = ("payload=" + urllib.parse.quote(json.dumps(payload))).encode()
    action, who = _slack_action(body)
    assert who == "slack:U0BOB (bob)" and action["action_id"] == "connfix_approve"
    for bad in ({**payload, "type": "view_submission"}, {**payload, "user": {"id": ""}}):
        with pytest.raises(ValueError):
            _slack_action(("payload=" + urllib.parse.quote(json.dumps(bad))).encode())


def test_replicas_share_the_alerts_seen_under_one_lock(tmp_path: Path) -> None:
    """Sixteen threads (each standing for a replica) claim one alert key: one wins."""
    wins: list[int] = []

    def claim(i: int) -> None:
        with shared_state(tmp_path) as state:
            if "am:key" not in state["seen"]:
                state["seen"]["am:key"] = time.time()
                wins.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    with shared_state(tmp_path) as state:
        assert list(state["seen"]) == ["am:key"]


def test_approve_without_a_terminal_needs_yes_and_decides_nothing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from connfix.cli import cli

    req = incident(tmp_path, requester="someone-else")
    result = CliRunner().invoke(cli, ["approve", str(req.incident)])
    assert result.exit_code == 2 and "give --yes" in result.output
    assert approvals.read_decision(req.incident, req.id) is None


def test_approve_shows_the_plan_and_answers_in_the_envelope(tmp_path: Path) -> None:
    import jsonschema
    from click.testing import CliRunner

    from connfix.cli import cli
    from tests.helpers import envelope_of, schema

    req = incident(tmp_path, requester="someone-else")
    result = CliRunner().invoke(
        cli, ["approve", str(req.incident), "--yes", "--as", "Dana", "--reason", "r", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "restart app2" in result.stderr  # the plan's operations, shown first
    answer = envelope_of(result.stdout)
    jsonschema.validate(answer, schema())
    decision = answer["result"]["decision"]
    assert decision["by"].endswith("(as Dana)") and decision["via"] == "terminal"
    assert approvals.read_decision(req.incident, req.id) is not None
    again = CliRunner().invoke(cli, ["reject", str(req.incident), "--yes"])
    assert again.exit_code == 1 and "already decided: approve by" in again.output


def test_a_missing_or_finished_incident_is_bad_input(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from connfix.cli import cli

    result = CliRunner().invoke(cli, ["approve", str(tmp_path / "nowhere"), "--yes"])
    assert result.exit_code == 2 and "no journal there" in result.output
    req = incident(tmp_path, end="interrupted")
    result = CliRunner().invoke(cli, ["reject", str(req.incident), "--yes"])
    assert result.exit_code == 2 and "its run has ended (interrupted)" in result.output


def test_a_run_whose_pid_is_now_another_process_is_gone(tmp_path: Path) -> None:
    """A pid reused: alive, but started after the run did (the journal's run_start is
    moved an hour back). The same journal with this test's own pid (started before the
    run) reads as pending; SIGKILL's case runs on the lab (tests/lab/test_approvals.py)."""
    import socket
    import subprocess
    import sys

    incident(tmp_path)
    folder = tmp_path / "20261205T021500Z-prod"
    path = folder / "journal.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for pid, ago, gone in ((os.getpid(), 0, False), (later.pid, 3600, True)):
            start = lines[0] | {"pid": pid, "hostname": socket.gethostname()}
            stamp = datetime.fromisoformat(start["ts"]) - timedelta(seconds=ago)
            start["ts"] = stamp.isoformat().replace("+00:00", "Z")
            path.write_text("".join(json.dumps(e) + "\n" for e in [start, *lines[1:]]))
            if gone:
                with pytest.raises(
                    approvals.NoRequest, match=f"pid {later.pid} on .* is now another"
                ):
                    approvals.pending(folder)
            else:
                assert approvals.pending(folder).step == "restart"
    finally:
        later.kill()
        later.wait()
