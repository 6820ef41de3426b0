"""`connfix serve` as a real process, fed by Debian's Alertmanager and scraped by
Debian's Prometheus, all on loopback; notifications to a local receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import TOKEN, Lab, free_port, process, request, retry
from tests.receiver import receiver

HMAC_SECRET = "pd-secret-0123456789"


def alert(environment: str = "lab", name: str = "PostgresTooManyConnections") -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": name, "environment": environment, "severity": "page"},
        "annotations": {"summary": "connections"},
        "startsAt": "2026-11-25T02:00:00Z",
        "fingerprint": hashlib.sha1(f"{name}{environment}".encode()).hexdigest()[:16],
    }


def webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "status": "firing", "receiver": "connfix", "alerts": list(alerts)}


AUTO = {
    "mode": "auto",
    "caps": {
        "actions": ["diagnose", "advise", "wait", "verify", "terminate", "rolling_restart"],
        "max_hosts": 1,
        "min_interval": "0s",
    },
    "pagerduty_services": ["PSERVICE1"],
}


@pytest.fixture
def served(
    clean_lab: Lab, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    """connfix serve on the lab's inventory with an auto policy (restarting one host at
    most; or the test's, by indirect parametrization) and notifications to a local
    receiver."""
    policy = getattr(request, "param", AUTO)
    with receiver() as rx:

        def change(env: dict[str, Any]) -> None:
            env["alerts"] = policy
            env["notify"] = [{"name": "ops", "kind": "webhook", "url": rx.url + "/hook"}]

        inventory = clean_lab.inventory_with(tmp_path, change)
        port = free_port()
        incidents = tmp_path / "incidents"
        env = {
            **os.environ,
            "CONNFIX_SERVE_TOKEN": TOKEN,
            "CONNFIX_SERVE_HMAC_SECRET": HMAC_SECRET,
        }
        argv = [
            sys.executable, "-m", "connfix", "serve", "--listen", f"127.0.0.1:{port}",
            "-i", str(inventory), "--incidents-dir", str(incidents), "--metrics-interval", "1s",
        ]  # fmt: skip
        with process(argv, env, tmp_path / "serve.log"):
            base = f"http://127.0.0.1:{port}"
            retry(lambda: _up(base), timeout=30)
            yield {
                "base": base,
                "incidents": incidents,
                "rx": rx,
                "log": tmp_path / "serve.log",
                "port": port,
            }


def _up(base: str) -> bool:
    try:
        return request(base + "/health", token=None)[0] == 200
    except OSError:
        return False


def _runs(incidents: Path) -> list[Path]:
    return sorted(incidents.glob("*/journal.jsonl")) if incidents.exists() else []


def _ended(journal: Path) -> list[dict[str, Any]] | None:
    evs = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    return evs if evs and evs[-1]["event"] == "run_end" else None


def test_unauthenticated_and_bad_requests_are_refused_and_nothing_runs(
    served: dict[str, Any],
) -> None:
    base = served["base"]
    body = webhook(alert())
    assert request(base + "/alertmanager", body, token=None)[0] == 401
    assert request(base + "/alertmanager", body, token="wrong")[0] == 401
    assert request(base + "/metrics", token="wrong")[0] == 401
    raw = json.dumps({"event": {"event_type": "incident.triggered"}}).encode()
    bad_sig = {"X-PagerDuty-Signature": "v1=" + "0" * 64}
    assert request(base + "/pagerduty", raw, token=None, headers=bad_sig)[0] == 401
    assert request(base + "/alertmanager", b"not json")[0] == 400
    assert request(base + "/alertmanager", {"alerts": "many"})[0] == 400
    status, answer = request(base + "/alertmanager", webhook(alert("nosuch")))
    assert status == 202 and answer["decisions"][0]["action"] == "refused"
    assert "names no environment" in answer["decisions"][0]["reason"]
    time.sleep(1)
    assert _runs(served["incidents"]) == []  # nothing ran
    assert request(base + "/health", token=None)[1]["status"] == "ok"


def test_a_pagerduty_trigger_signed_with_the_secret_starts_a_run(served: dict[str, Any]) -> None:
    raw = json.dumps(
        {
            "event": {
                "event_type": "incident.triggered",
                "data": {"id": "Q1", "title": "db full", "service": {"id": "PSERVICE1"}},
            }
        }
    ).encode()
    sig = "v1=" + hmac.new(HMAC_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    status, answer = request(
        served["base"] + "/pagerduty", raw, token=None, headers={"X-PagerDuty-Signature": sig}
    )
    assert status == 202 and answer["decisions"][0]["action"] == "started"
    (journal,) = retry(lambda: _runs(served["incidents"]), timeout=30)
    evs = retry(lambda: _ended(journal), timeout=60)
    assert evs[0]["trigger"] == "alert db full"


def test_duplicates_start_one_run_and_a_held_lock_refuses_the_next(
    served: dict[str, Any], clean_lab: Lab
) -> None:
    base, incidents = served["base"], served["incidents"]
    first = request(base + "/alertmanager", webhook(alert()))[1]["decisions"][0]
    again = request(base + "/alertmanager", webhook(alert()))[1]["decisions"][0]
    assert first["action"] == "started"
    assert again["action"] in ("duplicate", "refused")  # refused: the first still runs
    retry(lambda: all(_ended(j) for j in _runs(incidents)) and _runs(incidents), timeout=60)
    assert len(_runs(incidents)) == 1

    def deduplicated() -> bool:
        # its journal ended, the run's thread still writes the report and then lets go of
        # the environment: meanwhile the same alert is refused as "in progress"
        decision = request(base + "/alertmanager", webhook(alert()))[1]["decisions"][0]
        assert decision["action"] == "duplicate" or "in progress" in decision["reason"]
        return decision["action"] == "duplicate"

    retry(deduplicated, timeout=10, interval=0.2)
    assert len(_runs(incidents)) == 1
    # another connfix (here: this test) holds the environment's lock: a new alert's run
    # is refused by the database's advisory lock, and its journal says so
    from connfix.db import pg

    key = pg.database_lock_key("appdb")
    appdb = clean_lab.core.bootstrap_dsn().replace("dbname=postgres", "dbname=appdb")
    with psycopg.connect(appdb, autocommit=True) as holder:  # advisory locks are per database
        holder.execute("SELECT pg_advisory_lock(%(key1)s, %(key2)s)", key)
        other = dict(alert(name="PostgresConnectionsHigh"), fingerprint="other")

        def started() -> bool:
            # the first run's thread lets go of the environment just after its journal
            # ends: until then a new alert is refused as "in progress", and said so
            decision = request(base + "/alertmanager", webhook(other))[1]["decisions"][0]
            assert decision["action"] == "started" or "in progress" in decision["reason"]
            return decision["action"] == "started"

        retry(started, timeout=10, interval=0.2)
        retry(lambda: len(_runs(incidents)) == 2 and all(_ended(j) for j in _runs(incidents)),
              timeout=60)  # fmt: skip
    (evs,) = [
        e for e in (_ended(j) or [] for j in _runs(incidents))
        if e and e[0].get("trigger") == "alert PostgresConnectionsHigh"
    ]  # fmt: skip
    assert [e for e in evs if e["event"] == "lock_refused"], [e["event"] for e in evs]
    assert evs[-1]["status"] == "locked"


def _alertmanager(tmp_path: Path, serve_port: int) -> tuple[list[str], int]:
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        f"""
route:
  receiver: connfix
  group_by: [alertname, environment]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: connfix
    webhook_configs:
      - url: http://127.0.0.1:{serve_port}/alertmanager
        send_resolved: false
        http_config:
          authorization:
            type: Bearer
            credentials: {TOKEN}
"""
    )
    argv = [
        "/usr/bin/prometheus-alertmanager",
        f"--config.file={config}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    return argv, port


def test_an_alertmanager_alert_triages_the_lab_to_resolved_and_notifies(
    served: dict[str, Any], clean_lab: Lab, tmp_path: Path
) -> None:
    """Alertmanager → connfix serve (auto, one host at most) → the leaking host is
    restarted → resolved → the team's webhook hears the end."""
    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    argv, port = _alertmanager(tmp_path, served["port"])
    with process(argv, dict(os.environ), tmp_path / "alertmanager.log"):
        am = f"http://127.0.0.1:{port}"
        retry(lambda: _ready(am + "/-/ready"), timeout=30)
        labels = alert()["labels"]
        status, _ = request(am + "/api/v2/alerts", [{"labels": labels}], token=None)
        assert status == 200
        (journal,) = retry(lambda: _runs(served["incidents"]), timeout=60)
        evs = retry(lambda: _ended(journal), timeout=90)
    assert evs[0]["trigger"] == "alert PostgresTooManyConnections"
    assert evs[-1]["status"] == "resolved", evs[-1]
    assert [e["host"] for e in evs if e["event"] == "host_done"] == ["app2"]
    ends = retry(lambda: [b for b in served["rx"].bodies("/hook") if b["event"] == "end"])
    assert ends[0]["status"] == "resolved"
    retry(lambda: (journal.parent / "report.md").is_file())  # written after run_end


def test_a_restart_beyond_the_policy_cap_is_refused(served: dict[str, Any], clean_lab: Lab) -> None:
    """Two leaking hosts, a policy of one host at most: the roll is refused, an operator
    must decide; nothing is restarted."""
    for host in ("app1", "app2"):
        clean_lab.core.leak(host, 3, idle_in_transaction=False)  # 6 each: over pool + overflow
    before = clean_lab.main_pids()
    request(served["base"] + "/alertmanager", webhook(alert()))
    (journal,) = retry(lambda: _runs(served["incidents"]), timeout=30)
    evs = retry(lambda: _ended(journal), timeout=60)
    refused = [e for e in evs if e["event"] == "plan" and e.get("blocked")]
    assert refused and "more than the alert policy allows in one run (1" in refused[0]["blocked"]
    assert clean_lab.main_pids() == before


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_prometheus_scrapes_the_metrics_and_a_utilization_rule_fires(
    served: dict[str, Any], clean_lab: Lab, tmp_path: Path
) -> None:
    clean_lab.core.leak("app1", 6, idle_in_transaction=False)  # 15 of 17: 88%
    port = free_port()
    rules = tmp_path / "rules.yml"
    rules.write_text(
        """
groups:
  - name: connfix
    rules:
      - alert: PostgresConnectionsNearlyExhausted
        expr: connfix_utilization_ratio > 0.8
        for: 0s
        labels: {severity: page}
        annotations:
          summary: "{{ $labels.environment }}: {{ $value | humanizePercentage }} used"
"""
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{rules}]
scrape_configs:
  - job_name: connfix
    authorization: {{type: Bearer, credentials: {TOKEN}}}
    static_configs: [{{targets: ["127.0.0.1:{served["port"]}"]}}]
"""
    )
    argv = [
        "/usr/bin/prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with process(argv, dict(os.environ), tmp_path / "prometheus.log"):
        api = f"http://127.0.0.1:{port}/api/v1"

        def firing() -> list[dict[str, Any]]:
            try:
                _, data = request(api + "/alerts", token=None)
            except OSError:
                return []
            alerts = data.get("data", {}).get("alerts", []) if isinstance(data, dict) else []
            return [a for a in alerts if a["state"] == "firing"]

        fired = retry(firing, timeout=60, interval=0.5)
        _, series = request(api + "/query?query=connfix_host_leak_suspect", token=None)
    assert fired[0]["labels"]["alertname"] == "PostgresConnectionsNearlyExhausted"
    assert fired[0]["labels"]["environment"] == "lab"
    suspects = {r["metric"]["host"]: r["value"][1] for r in series["data"]["result"]}
    assert suspects["app1"] == "1" and suspects["app2"] == "0"
    text = (
        urllib.request.urlopen(
            urllib.request.Request(
                served["base"] + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
            ),
            timeout=10,
        )
        .read()
        .decode()
    )
    assert "pid" not in text and "SELECT" not in text  # low cardinality, no query text


@pytest.mark.parametrize(
    "served",
    [{"mode": "observe"}],
    indirect=True,
    ids=["observe"],
)
def test_an_observe_policy_diagnoses_and_changes_nothing(
    served: dict[str, Any], clean_lab: Lab
) -> None:
    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    before = clean_lab.main_pids()
    request(served["base"] + "/alertmanager", webhook(alert()))
    (journal,) = retry(lambda: _runs(served["incidents"]), timeout=30)
    evs = retry(lambda: _ended(journal), timeout=60)
    assert evs[0]["runbook"]["name"] == "observe"
    assert [e["action"] for e in evs if e["event"] == "step_start"] == ["diagnose", "advise"]
    assert evs[-1]["status"] == "unhealthy"  # truthfully: it was, and nothing was changed
    assert clean_lab.main_pids() == before


@pytest.mark.parametrize(
    "served",
    [{**AUTO, "caps": {**AUTO["caps"], "min_interval": "1h"}}],
    indirect=True,
    ids=["min-interval"],
)
def test_a_second_change_making_run_within_min_interval_is_a_dry_run(
    served: dict[str, Any], clean_lab: Lab
) -> None:
    base, incidents = served["base"], served["incidents"]
    request(base + "/alertmanager", webhook(alert()))
    retry(lambda: _runs(incidents) and all(_ended(j) for j in _runs(incidents)), timeout=60)
    retry(lambda: request(base + "/health", token=None)[1]["running"] == [])  # report written
    second = dict(alert(name="PostgresConnectionsHigh"), fingerprint="second")
    decision = request(base + "/alertmanager", webhook(second))[1]["decisions"][0]
    assert decision.get("mode") == "dry-run", decision
    assert "min_interval" in decision["reason"]
    retry(lambda: len(_runs(incidents)) == 2 and all(_ended(j) for j in _runs(incidents)),
          timeout=60)  # fmt: skip
    flags = sorted((_ended(j) or [{}])[0]["flags"]["dry_run"] for j in _runs(incidents))
    assert flags == [False, True]
