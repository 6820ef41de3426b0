"""Approvals on the lab: Debian's Alertmanager 0.25 firing into `connfix serve` under an
`approve` policy, real app hosts, the run waiting before the restart; decisions from
the terminal (`connfix approve`), serve's HTTP endpoint, and Slack-signed buttons (the
notification's own button values, signed as Slack signs them)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import TOKEN, Lab, free_port, process, request, retry
from tests.lab.test_serve import _alertmanager, _ready, alert, webhook
from tests.receiver import Receiver, receiver

pytestmark = pytest.mark.parametrize("lab", [15], indirect=True)

SLACK_SECRET = "slack-signing-secret-0123456789"
CAPS = {"actions": ["diagnose", "advise", "wait", "verify", "terminate"], "min_interval": "0s"}
SHIPPED = Path(__file__).resolve().parents[2] / (
    "src/connfix/engine/runbooks/too-many-connections.yaml"
)


def approve_policy(ttl: str = "2m", two_person: bool = True) -> dict[str, Any]:
    return {"mode": "approve", "caps": CAPS, "approval": {"ttl": ttl, "two_person": two_person}}


def marked_runbook(folder: Path) -> Path:
    """The shipped runbook with `approval: required` on its restart step."""
    book = yaml.safe_load(SHIPPED.read_text())
    for step in book["steps"]:
        if step["action"] == "rolling_restart":
            step["approval"] = "required"
    path = folder / "approve-restarts.yaml"
    path.write_text(yaml.safe_dump(book, sort_keys=False))
    return path


def triage(setup: Any, book: Path, *flags: str) -> list[str]:
    """`connfix triage lab` with a runbook, on the setup's inventory and incidents."""
    return [
        sys.executable, "-m", "connfix", "triage", "lab", *flags, "--runbook", str(book),
        "-i", str(setup.inventory), "--incidents-dir", str(setup.incidents),
    ]  # fmt: skip


@contextmanager
def a_waiting_run(
    setup: Any, clean_lab: Lab
) -> Iterator[tuple[subprocess.Popen[bytes], Path, dict[str, int]]]:
    """app2 leaking, and `triage --yes` with its restart marked for approval, started and
    waiting for it: the run, its journal, the hosts' main pids before."""
    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    before = clean_lab.main_pids()
    book = marked_runbook(setup.tmp)
    with process(triage(setup, book, "--yes"), dict(os.environ), setup.tmp / "triage.log") as run:
        journal = journal_of(setup.incidents)
        waiting(journal)
        yield run, journal, before


def slack_signed(
    payload: dict[str, Any], secret: str = SLACK_SECRET, at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """A Slack interactivity request: the form body and its headers, signed as Slack
    documents (v0, HMAC-SHA256 over `v0:timestamp:body`)."""
    body = ("payload=" + urllib.parse.quote(json.dumps(payload))).encode()
    ts = str(int(time.time()) if at is None else at)
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    return body, {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": "v0=" + digest.hexdigest(),
        "Content-Type": "application/x-www-form-urlencoded",
    }


def click(button: dict[str, Any], user: str, name: str) -> dict[str, Any]:
    """What Slack posts when `user` clicks a button of a message."""
    return {
        "type": "block_actions",
        "user": {"id": user, "username": name, "team_id": "T0LAB"},
        "actions": [
            {
                "action_id": button["action_id"],
                "block_id": "connfix_approval",
                "value": button["value"],
                "type": "button",
            },
        ],
    }


def journal_of(incidents: Path) -> Path:
    (journal,) = retry(lambda: sorted(incidents.glob("*/journal.jsonl")), timeout=60)
    return journal


def evs(journal: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]


def waiting(journal: Path, count: int = 1) -> dict[str, Any]:
    """The run's `count`-th approval request, once journaled."""

    def found() -> dict[str, Any] | None:
        asked = [e for e in evs(journal) if e["event"] == "approval_requested"]
        return asked[count - 1] if len(asked) >= count else None

    return retry(found, timeout=90)


def ended(journal: Path, timeout: float = 90) -> list[dict[str, Any]]:
    return retry(lambda: (e := evs(journal)) and e[-1]["event"] == "run_end" and e, timeout)


class Serve:
    def __init__(self, base: str, port: int, log: Path) -> None:
        self.base, self.port, self.log = base, port, log


def start_serve(
    stack: ExitStack, inventory: Path, incidents: Path, folder: Path, rx: Receiver
) -> Serve:
    port = free_port()
    env = {
        **os.environ,
        "CONNFIX_SERVE_TOKEN": TOKEN,
        "CONNFIX_SLACK_SIGNING_SECRET": SLACK_SECRET,
        "LAB_SLACK_URL": rx.url + "/slack",
    }
    log = folder / f"serve-{port}.log"
    argv = [
        sys.executable, "-m", "connfix", "serve", "--listen", f"127.0.0.1:{port}",
        "-i", str(inventory), "--incidents-dir", str(incidents),
    ]  # fmt: skip
    stack.enter_context(process(argv, env, log))
    base = f"http://127.0.0.1:{port}"
    retry(lambda: _up(base), timeout=30)
    return Serve(base, port, log)


def _up(base: str) -> bool:
    try:
        return request(base + "/health", token=None)[0] == 200
    except OSError:
        return False


@pytest.fixture
def setup(clean_lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The lab's inventory under an approve policy (the test's, by indirect
    parametrization), a Slack target and a webhook target on a local receiver, and
    one `connfix serve` on it."""
    policy = getattr(request, "param", approve_policy())
    with receiver() as rx, ExitStack() as stack:

        def change(env: dict[str, Any]) -> None:
            env["alerts"] = policy
            env["notify"] = [
                {"name": "chat", "kind": "slack", "url_env": "LAB_SLACK_URL"},
                {"name": "ops", "kind": "webhook", "url": rx.url + "/hook"},
            ]

        inventory = clean_lab.inventory_with(tmp_path, change)
        incidents = tmp_path / "incidents"

        class Setup:
            pass

        s = Setup()
        s.inventory, s.incidents, s.rx, s.tmp, s.stack = inventory, incidents, rx, tmp_path, stack  # type: ignore[attr-defined]
        s.serve = start_serve(stack, inventory, incidents, tmp_path, rx)  # type: ignore[attr-defined]
        yield s


def buttons(rx: Receiver, request_id: str) -> dict[str, dict[str, Any]]:
    """The Approve / Reject buttons of the Slack notification for one request."""

    def found() -> dict[str, dict[str, Any]] | None:
        for body in rx.bodies("/slack"):
            for block in body.get("blocks") or []:
                if block.get("type") != "actions":
                    continue
                found = {e["action_id"]: e for e in block["elements"]}
                if json.loads(found["connfix_approve"]["value"])["request"] == request_id:
                    return found
        return None

    return retry(found, timeout=30)


def test_an_alert_under_approve_waits_before_the_restart_and_a_signed_slack_click_applies_it(
    setup: Any, clean_lab: Lab
) -> None:
    """Alertmanager → serve (approve: terminations alone, a restart needs a person) →
    the run waits before the restart with the plan in the Slack notification; forged,
    stale and unsigned clicks get 401 and change nothing; a second person's signed
    click applies exactly that plan and the triage ends resolved."""
    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    before = clean_lab.main_pids()
    argv, port = _alertmanager(setup.tmp, setup.serve.port)
    with process(argv, dict(os.environ), setup.tmp / "alertmanager.log"):
        am = f"http://127.0.0.1:{port}"
        retry(lambda: _ready(am + "/-/ready"), timeout=30)
        assert request(am + "/api/v2/alerts", [{"labels": alert()["labels"]}], token=None)[0] == 200
        journal = journal_of(setup.incidents)
        asked = waiting(journal)
    assert asked["step"] == "restart-leaking-hosts" and asked["requester"].startswith("alert ")
    assert any("restart app2" in o for o in asked["operations"]), asked["operations"]
    found = buttons(setup.rx, asked["request"])
    texts = [
        b["text"]["text"]
        for body in setup.rx.bodies("/slack")
        for b in body.get("blocks") or []
        if b.get("type") == "section"
    ]
    assert any("restart app2" in t for t in texts), texts  # the plan is in the notification
    approve = found["connfix_approve"]
    slack = setup.serve.base + "/slack/interactive"
    payload = click(approve, "U0BOB", "bob")
    forged = slack_signed(payload, secret="not-the-secret")
    stale = slack_signed(payload, at=int(time.time()) - 400)
    body, headers = slack_signed(payload)
    unsigned = {"Content-Type": "application/x-www-form-urlencoded"}
    for data, head in (forged, stale, (body, unsigned)):
        assert request(slack, data, token=None, headers=head)[0] == 401
    time.sleep(1)  # the run polls 4× a second: it would have seen a decision
    assert not (journal.parent / "approvals" / f"{asked['request']}.json").exists()
    assert not [e for e in evs(journal) if e["event"] in ("approval_granted", "host_start")]
    assert clean_lab.main_pids() == before
    status, answer = request(slack, body, token=None, headers=headers)
    assert status == 200, answer
    events = ended(journal)
    assert events[-1]["status"] == "resolved", events[-1]
    kinds = [e["event"] for e in events]
    granted = events[kinds.index("approval_granted")]
    assert granted["by"] == "slack:U0BOB (bob)" and granted["via"] == "slack"
    assert granted["plan"] == asked["plan"]
    assert kinds.index("approval_requested") < kinds.index("approval_granted")
    assert kinds.index("approval_granted") < kinds.index("host_start")
    assert [e["host"] for e in events if e["event"] == "host_done"] == ["app2"]
    after = clean_lab.main_pids()
    assert after["app2"] != before["app2"]
    assert {h: p for h, p in after.items() if h != "app2"} == {
        h: p for h, p in before.items() if h != "app2"
    }
    written = journal.parent / "report.md"
    report = retry(lambda: written.is_file() and written.read_text(), timeout=10)
    assert "approved by slack:U0BOB (bob) via slack" in report
    hooks = [b.get("approval") for b in setup.rx.bodies("/hook") if b["event"] == "approval"]
    assert hooks[:2] == ["requested", "granted"], hooks


def test_the_requester_cannot_approve_their_own_run_under_two_person(
    setup: Any, clean_lab: Lab
) -> None:
    """An operator's `triage --yes` with a runbook that marks the restart: the same OS
    user's `connfix approve` is refused, and so is serve's endpoint given that name; a
    second person's approval over HTTP applies it."""
    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    book = marked_runbook(setup.tmp)
    with process(triage(setup, book, "--yes"), dict(os.environ), setup.tmp / "triage.log") as run:
        journal = journal_of(setup.incidents)
        asked = waiting(journal)
        me = asked["requester"]
        mine = subprocess.run(
            [sys.executable, "-m", "connfix", "approve", str(journal.parent), "--yes"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert mine.returncode == 1, mine.stderr
        assert "cannot approve it (two_person: true)" in mine.stderr
        url = f"{setup.serve.base}/approvals/{journal.parent.name}"
        status, answer = request(url, {"decision": "approve", "approver": me})
        assert status == 403 and "cannot approve" in answer["error"]
        assert request(url, {"decision": "approve", "approver": "bob"}, token=None)[0] == 401
        status, answer = request(url, {"decision": "approve", "approver": "bob"})
        assert status == 200, answer
        assert run.wait(timeout=90) == 0
    events = evs(journal)
    assert events[-1]["status"] == "resolved"
    refused = [e for e in events if e["event"] == "approval_refused"]
    assert [(e["by"], e["via"]) for e in refused] == [(me, "terminal"), (me, "http")]
    (granted,) = [e for e in events if e["event"] == "approval_granted"]
    assert (granted["by"], granted["via"]) == ("bob", "http")
    assert [e["host"] for e in events if e["event"] == "host_done"] == ["app2"]


@pytest.mark.parametrize("setup", [approve_policy(ttl="3s")], indirect=True)
def test_an_approval_after_the_ttl_is_refused_and_the_run_ends_expired(
    setup: Any, clean_lab: Lab
) -> None:
    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    before = clean_lab.main_pids()
    assert request(setup.serve.base + "/alertmanager", webhook(alert()))[0] == 202
    journal = journal_of(setup.incidents)
    asked = waiting(journal)
    events = ended(journal, timeout=30)
    assert events[-1]["status"] == "expired" and events[-1]["exit_status"] == 1
    assert [e["event"] for e in events if e["event"].startswith("approval_")] == [
        "approval_requested",
        "approval_expired",
    ]
    written = journal.parent / "report.md"
    report = retry(lambda: written.is_file() and written.read_text(), timeout=10)
    assert "# Incident report: lab — expired" in report
    late = subprocess.run(
        [sys.executable, "-m", "connfix", "approve", str(journal.parent), "--yes", "--as", "bob"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert late.returncode == 1 and "expired" in late.stderr, late.stderr
    url = f"{setup.serve.base}/approvals/{journal.parent.name}"
    status, answer = request(url, {"decision": "approve", "approver": "bob", "plan": asked["plan"]})
    assert status == 403 and "expired" in answer["error"]
    assert not (journal.parent / "approvals" / f"{asked['request']}.json").exists()
    assert clean_lab.main_pids() == before


@pytest.mark.parametrize("setup", [approve_policy(two_person=False)], indirect=True)
def test_a_plan_that_changed_since_the_request_is_asked_for_again(
    setup: Any, clean_lab: Lab
) -> None:
    """The request is to restart app2; the leak then moves to app3. The approval of the
    old plan is not applied: the fresh plan (app3) is asked for again, and applied once
    approved."""
    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    book = marked_runbook(setup.tmp)
    with process(triage(setup, book, "--yes"), dict(os.environ), setup.tmp / "triage.log") as run:
        journal = journal_of(setup.incidents)
        first = waiting(journal)
        assert any("restart app2" in o for o in first["operations"]), first["operations"]
        clean_lab.restart_app(2)  # app2's leak is gone ...
        clean_lab.core.leak("app3", 6, idle_in_transaction=False)  # ... and app3 leaks
        approve = [sys.executable, "-m", "connfix", "approve", str(journal.parent), "--yes"]
        done = subprocess.run(approve, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        second = waiting(journal, 2)
        assert second["plan"] != first["plan"]
        assert any("restart app3" in o for o in second["operations"]), second["operations"]
        done = subprocess.run(approve, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert run.wait(timeout=90) == 0
    events = evs(journal)
    kinds = [e["event"] for e in events]
    assert kinds.count("approval_stale") == 1 and kinds.count("approval_granted") == 1
    (granted,) = [e for e in events if e["event"] == "approval_granted"]
    assert granted["plan"] == second["plan"]
    assert [e["host"] for e in events if e["event"] == "host_done"] == ["app3"]
    assert events[-1]["status"] == "resolved"


def test_two_replicas_given_the_same_alert_start_one_run_and_either_takes_the_approval(
    setup: Any, clean_lab: Lab
) -> None:
    """Two serve replicas on one incidents directory; Alertmanager delivers the alert to
    both: one run starts, the other replica answers duplicate — and the approval sent to
    the replica that did not start the run reaches it."""
    other = start_serve(setup.stack, setup.inventory, setup.incidents, setup.tmp, setup.rx)
    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    port = free_port()
    config = setup.tmp / "alertmanager-two.yml"
    urls = [setup.serve.port, other.port]
    config.write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "connfix", "group_by": ["alertname", "environment"],
                    "group_wait": "0s", "group_interval": "1s", "repeat_interval": "1h",
                },
                "receivers": [{
                    "name": "connfix",
                    "webhook_configs": [
                        {"url": f"http://127.0.0.1:{p}/alertmanager", "send_resolved": False,
                         "http_config": {"authorization": {"type": "Bearer", "credentials": TOKEN}}}
                        for p in urls
                    ],
                }],
            }
        )
    )  # fmt: skip
    argv = [
        "/usr/bin/prometheus-alertmanager", f"--config.file={config}",
        f"--storage.path={setup.tmp / 'am-two'}", f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]  # fmt: skip
    replicas = [setup.serve, other]
    with process(argv, dict(os.environ), setup.tmp / "alertmanager-two.log"):
        am = f"http://127.0.0.1:{port}"
        retry(lambda: _ready(am + "/-/ready"), timeout=30)
        assert request(am + "/api/v2/alerts", [{"labels": alert()["labels"]}], token=None)[0] == 200
        journal = journal_of(setup.incidents)
        asked = waiting(journal)
        idle = retry(
            lambda: next((r for r in replicas if '"duplicate"' in r.log.read_text()), None),
            timeout=30,
        )
    assert len(list(setup.incidents.glob("*/journal.jsonl"))) == 1
    runner = next(r for r in replicas if r is not idle)
    assert "journal" in runner.log.read_text() and "journal" not in idle.log.read_text()
    url = f"{idle.base}/approvals/{journal.parent.name}"
    status, answer = request(
        url, {"decision": "approve", "approver": "dana", "plan": asked["plan"]}
    )
    assert status == 200, answer
    events = ended(journal)
    assert events[-1]["status"] == "resolved"
    assert [e["host"] for e in events if e["event"] == "host_done"] == ["app2"]
    assert len(list(setup.incidents.glob("*/journal.jsonl"))) == 1


@pytest.mark.parametrize("setup", [approve_policy(two_person=False)], indirect=True)
def test_a_rejected_plan_ends_the_run_rejected_and_nothing_is_restarted(
    setup: Any, clean_lab: Lab
) -> None:
    with a_waiting_run(setup, clean_lab) as (run, journal, before):
        reject = [sys.executable, "-m", "connfix", "reject", str(journal.parent), "--yes"]
        done = subprocess.run(
            [*reject, "--reason", "after the deploy"], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        assert run.wait(timeout=60) == 1
    events = evs(journal)
    assert events[-1]["status"] == "rejected"
    (rejected,) = [e for e in events if e["event"] == "approval_rejected"]
    assert rejected["reason"] == "after the deploy" and rejected["via"] == "terminal"
    assert not [e for e in events if e["event"] == "host_start"]
    assert clean_lab.main_pids() == before
    report = (journal.parent / "report.md").read_text()
    assert "halted (an approver rejected a step's plan)" in report
    assert "rejected by" in report and "after the deploy" in report


def test_a_dry_run_says_the_step_would_wait_and_asks_nobody(setup: Any, clean_lab: Lab) -> None:
    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    book = marked_runbook(setup.tmp)
    subprocess.run(triage(setup, book, "--dry-run"), capture_output=True, check=False, timeout=120)
    events = evs(journal_of(setup.incidents))
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "dry_run", events[-1]
    (planned,) = [
        e for e in events if e["event"] == "step_end" and e["step"] == "restart-leaking-hosts"
    ]
    assert "after an approval (a real run waits for one here)" in planned["summary"]
    assert not [e for e in events if e["event"].startswith("approval_")]


def test_a_run_killed_while_it_waits_takes_no_decision(setup: Any, clean_lab: Lab) -> None:
    """SIGKILL leaves no `run_end`: the request still reads as open in the journal, but
    nothing would read a decision. `connfix approve` and serve's endpoint both say the run
    is gone (its pid, on this machine, has exited) and write no decision."""
    with a_waiting_run(setup, clean_lab) as (run, journal, before):
        run.kill()
        run.wait(timeout=30)
    approve = [sys.executable, "-m", "connfix", "approve", str(journal.parent), "--yes"]
    done = subprocess.run([*approve, "--as", "bob"], capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr  # as for a run that ended: nothing to decide
    assert f"is no longer running (pid {run.pid} on " in done.stderr and "has exited" in done.stderr
    url = f"{setup.serve.base}/approvals/{journal.parent.name}"
    status, answer = request(url, {"decision": "approve", "approver": "bob"})
    assert status == 404 and "no longer running" in answer["error"], (status, answer)
    assert not (journal.parent / "approvals").exists() or not [
        p for p in (journal.parent / "approvals").iterdir() if p.suffix == ".json"
    ]
    after = [e["event"] for e in evs(journal)]
    assert "approval_requested" in after and not {"approval_granted", "run_end"} & set(after)
    assert clean_lab.main_pids() == before
