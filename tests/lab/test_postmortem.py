"""The report as the postmortem, on the lab: a leak grows for a while under Debian's
Prometheus 2.42 (scraping `connfix serve`'s /metrics) before its rule fires into
Debian's Alertmanager 0.25 and on into serve; the database refuses connection attempts
meanwhile. The report's chart starts before the run and is rendered by headless
Chromium; its refusal count equals the server log's, counted here independently; its
timeline runs onset → alert → start → mitigation → healthy."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connfix.record import chart
from tests.helpers import TOKEN, Lab, connfix_run, free_port, process, request, retry
from tests.lab.test_serve import _alertmanager, _ready
from tests.render import near, pixels, screenshot

ON_15 = pytest.mark.parametrize("lab", [15], indirect=True)

BLUE, RED = (0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)  # connections in use, the usable limit
REFUSED = re.compile(r"sorry, too many clients already|remaining connection slots are reserved")
AUTO = {
    "mode": "auto",
    "caps": {"actions": ["rolling_restart", "terminate"], "max_hosts": 1, "min_interval": "0s"},
}


def server_log(lab: Lab) -> Path:
    from connfix.lab.state import LabState

    state = LabState.load()
    assert state is not None and state.pg_data
    return Path(state.pg_data) / "log" / "postgresql.log"


def refusals_in_log(lab: Lab, since: str, until: str) -> int:
    """The refused attempts the server logged between two instants, counted here: the
    lab's log_line_prefix starts with %m ("2026-12-05 02:13:22.123 UTC")."""
    low, high = datetime.fromisoformat(since), datetime.fromisoformat(until)
    count = 0
    for line in server_log(lab).read_text(errors="replace").splitlines():
        if not REFUSED.search(line):
            continue
        stamp = datetime.fromisoformat(line[:23] + "+00:00")
        assert line[24:27] == "UTC", line[:40]
        count += low <= stamp <= high
    return count


def evs(journal: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]


def check_chart(folder: Path, tmp: Path) -> ET.Element:
    """The SVG beside the report: parsed, rendered in Chromium, its lines drawn."""
    svg = folder / chart.CHART
    assert svg.stat().st_size > 1000
    root = ET.fromstring(svg.read_text())
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for label in ("connections in use against the usable limit", "connections in use",
                  "usable limit"):  # fmt: skip
        assert label in texts, texts
    assert not list(root.iter("{http://www.w3.org/2000/svg}script"))  # js=[]: nothing runs
    png = tmp / "chart.png"
    screenshot(svg, png)
    width, height, drawn = pixels(png)
    assert (width, height) == (900, 420) and png.stat().st_size > 5000
    assert near(BLUE, drawn, 30) > 300, "the connections line was not drawn"
    assert near(RED, drawn, 30) > 300, "the limit line was not drawn"
    return root


def prometheus_argv(config: Path, tmp_path: Path, port: int) -> list[str]:
    """Debian's Prometheus with this config, its data in the test's folder."""
    return [
        "/usr/bin/prometheus", f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'prom-data'}", f"--web.listen-address=127.0.0.1:{port}",
    ]  # fmt: skip


@pytest.fixture
def observed(clean_lab: Lab, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """serve (auto: one host at most) on the lab with its metrics every second, a
    Prometheus scraping it with a rule at 85% held 6 s, an Alertmanager into serve; the
    inventory names that Prometheus."""
    serve_port, prom_port = free_port(), free_port()

    def change(env: dict[str, Any]) -> None:
        env["alerts"] = AUTO
        env["prometheus"] = {"url": f"http://127.0.0.1:{prom_port}", "lookback": "3m"}

    inventory = clean_lab.inventory_with(tmp_path, change)
    incidents = tmp_path / "incidents"
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n  - name: connfix\n    rules:\n"
        "      - alert: PostgresTooManyConnections\n"
        '        expr: connfix_utilization_ratio{environment="lab"} > 0.85\n'
        "        for: 6s\n        labels: {severity: page}\n"
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
        f"rule_files: [{rules}]\n"
        f"alerting: {{alertmanagers: [{{static_configs: [{{targets: ['AM']}}]}}]}}\n"
        "scrape_configs:\n  - job_name: connfix\n"
        f"    authorization: {{type: Bearer, credentials: {TOKEN}}}\n"
        f'    static_configs: [{{targets: ["127.0.0.1:{serve_port}"]}}]\n'
    )
    env = {**os.environ, "CONNFIX_SERVE_TOKEN": TOKEN}
    serve = [
        sys.executable, "-m", "connfix", "serve", "--listen", f"127.0.0.1:{serve_port}",
        "-i", str(inventory), "--incidents-dir", str(incidents), "--metrics-interval", "1s",
    ]  # fmt: skip
    am_argv, am_port = _alertmanager(tmp_path, serve_port)
    config.write_text(config.read_text().replace("AM", f"127.0.0.1:{am_port}"))
    prometheus = prometheus_argv(config, tmp_path, prom_port)
    with (
        process(serve, env, tmp_path / "serve.log"),
        process(am_argv, dict(os.environ), tmp_path / "alertmanager.log"),
        process(prometheus, dict(os.environ), tmp_path / "prometheus.log"),
    ):
        api = f"http://127.0.0.1:{prom_port}/api/v1"
        retry(lambda: _ready(f"http://127.0.0.1:{am_port}/-/ready"), timeout=30)
        retry(lambda: _ratio(api) is not None, timeout=60, interval=0.5)
        yield {"api": api, "incidents": incidents, "inventory": inventory}


def _ratio(api: str) -> float | None:
    return _value(api, 'connfix_utilization_ratio{environment="lab"}')


def _pending(api: str) -> bool:
    _, data = request(api + "/alerts", token=None)
    return any(a["state"] in ("pending", "firing") for a in data["data"]["alerts"])


def fill_until_refused(lab: Lab, times: int = 3) -> int:
    """Open sessions as the app's role until the server refuses `times` in a row, then
    close them all; return how many attempts were refused."""
    held, refused, in_a_row = [], 0, 0
    try:
        while in_a_row < times:
            try:
                held.append(psycopg.connect(lab.app_dsn(), connect_timeout=5))
                in_a_row = 0
            except psycopg.OperationalError as exc:
                assert REFUSED.search(str(exc)), exc
                refused += 1
                in_a_row += 1
                time.sleep(0.1)
            assert len(held) < 40
    finally:
        for conn in held:
            conn.close()
    return refused


@ON_15
def test_a_leak_that_grows_before_its_alert_is_the_whole_story_of_the_report(
    observed: dict[str, Any], clean_lab: Lab, tmp_path: Path
) -> None:
    api, incidents = observed["api"], observed["incidents"]
    time.sleep(5)  # some history of the healthy state first
    grown = 0
    while (_ratio(api) or 0) <= 0.85:  # one leaked connection every 3 s
        clean_lab.core.leak("app2", 1, idle_in_transaction=False)
        grown += 1
        assert grown <= 10
        time.sleep(3)
    retry(lambda: _pending(api), timeout=15, interval=0.3)  # the rule holds; 6 s to fire
    ours = fill_until_refused(clean_lab)
    (journal,) = retry(lambda: sorted(incidents.glob("*/journal.jsonl")), timeout=60)
    events = retry(lambda: (e := evs(journal)) and e[-1]["event"] == "run_end" and e, 120)
    assert events[-1]["status"] == "resolved", events[-1]
    start = events[0]
    assert start["trigger"] == "alert PostgresTooManyConnections" and start["alert_starts_at"]
    folder = journal.parent
    report = retry(
        lambda: (folder / "report.md").is_file() and (folder / "report.md").read_text(), timeout=10
    )

    # the chart starts before the run (Prometheus), and a real renderer draws it
    (history,) = [e for e in events if e["event"] == "history"]
    assert not history["errors"] and history["onset"] is not None, history.get("errors")
    c = chart.curve(events)
    assert c.history_from is not None and c.run_from is not None
    assert c.history_from < history["onset"] < c.run_from
    check_chart(folder, tmp_path)
    picture = "![lab: connections in use against the usable limit, over the whole incident]"
    assert f"{picture}({chart.CHART})" in report
    assert "Points: Prometheus (http://127.0.0.1:" in report

    # the refusals: connfix's count is the log's, counted here; ours are among them
    (impact,) = [e for e in events if e["event"] == "impact"]
    assert impact["unknown"] is None, impact["unknown"]
    assert impact["window_from"] == "onset" and impact["files"] == ["postgresql.log"]
    assert impact["refused"] == refusals_in_log(clean_lab, impact["since"], impact["until"])
    assert impact["refused"] >= ours >= 3
    assert f"Connection attempts the database refused: **{impact['refused']}**" in report

    # the timeline from onset, in order, with its durations
    section = report.split("### Timeline from onset (UTC)")[1].split("### Measured impact")[0]
    whats = [row.split(" | ")[1] for row in section.splitlines() if re.match(r"^\| \d{4}-", row)]
    order = [what.split(":")[0].split(" (")[0].strip() for what in whats]
    firsts = [kind for i, kind in enumerate(order) if kind not in order[:i]]
    assert firsts == ["onset", "alert fired", "connfix started", "mitigation", "healthy again"], (
        order
    )
    for measure in ("Time to detect: **", "to mitigate: **", "to resolve: **"):
        assert measure in section and f"{measure}–" not in section, section
    if os.environ.get("CONNFIX_SAMPLE_REPORT"):  # regenerate docs/sample-report.md
        write_sample(journal, tmp_path, Path(os.environ["CONNFIX_SAMPLE_REPORT"]))


SAMPLE_HEAD = """<!-- A sample report, from a real lab run (tests/lab/test_postmortem.py, run with
     CONNFIX_SAMPLE_REPORT=docs): app2 leaking one connection every 3 s under Prometheus
     until its alert fired into `connfix serve` (auto, one host at most), the database
     refusing connections meanwhile. See docs/commands.md, `connfix report`. -->

"""


def write_sample(journal: Path, tmp: Path, docs: Path) -> None:
    """The run's report and chart as the docs show them: the journal with the test's
    temporary paths made relative, rendered again (the report is the journal's)."""
    from connfix.record import report

    text = journal.read_text()
    text = text.replace(str(tmp / "inventory.yaml"), "inventory.yaml")
    text = text.replace(str(tmp / "incidents"), "incidents")
    folder = tmp / "sample" / journal.parent.name
    folder.mkdir(parents=True)
    (folder / "journal.jsonl").write_text(text)
    rendered = report.render(folder / "journal.jsonl")
    rendered = rendered.replace(report.escape(str(folder.parent)), "incidents")
    (docs / "sample-report.md").write_text(SAMPLE_HEAD + rendered)
    report.draw(folder / "journal.jsonl", docs)


@ON_15
def test_without_prometheus_the_chart_is_the_runs_own_diagnoses(
    clean_lab: Lab, tmp_path: Path
) -> None:
    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    incidents = tmp_path / "incidents"
    result = connfix_run("triage", clean_lab.inventory, incidents, "--yes")
    assert result.exit_code == 0, result.output
    (journal,) = sorted(incidents.glob("*/journal.jsonl"))
    events = evs(journal)
    assert not [e for e in events if e["event"] == "history"]
    c = chart.curve(events)
    diagnoses = [e for e in events if e["event"] == "diagnosis"]
    assert len(c.connections) == len(diagnoses) >= 2 and c.history_from is None
    check_chart(journal.parent, tmp_path)
    report = (journal.parent / "report.md").read_text()
    assert "the inventory names no Prometheus: nothing before the run" in report
    assert "onset (at the latest): connfix's first diagnosis found it" in report
    (impact,) = [e for e in events if e["event"] == "impact"]
    assert impact["unknown"] is None and impact["window_from"] == "3600s before the run"
    assert impact["refused"] == refusals_in_log(clean_lab, impact["since"], impact["until"])


@ON_15
def test_refusals_are_read_over_ssh_on_the_database_host(clean_lab: Lab, tmp_path: Path) -> None:
    """The server's real log, refusals included, on a host reached over SSH (a lab host
    stands for the database host: its sshd, its host key, the deploy user): connfix's
    count over SSH is the one counted here in the same lines and window."""
    from connfix.lab import hosts

    ours = fill_until_refused(clean_lab)
    pid = clean_lab.core.init_pid(clean_lab.paths.host_name(1))
    copy = hosts.file_in(pid, "/var/log/connfix-db/postgresql.log")
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.parent.chmod(0o755)
    copy.write_text(server_log(clean_lab).read_text(errors="replace"))
    copy.chmod(0o644)
    address = yaml.safe_load(clean_lab.inventory.read_text())["environments"]["lab"]["hosts"][0]

    def change(env: dict[str, Any]) -> None:
        where = {"address": address["ssh_address"], "path": "/var/log/connfix-db/*.log"}
        env["database"]["log_ssh"] = where

    clean_lab.core.leak("app2", 6, idle_in_transaction=False)
    incidents = tmp_path / "incidents"
    result = connfix_run("triage", clean_lab.inventory_with(tmp_path, change), incidents, "--yes")
    assert result.exit_code == 0, result.output
    (journal,) = sorted(incidents.glob("*/journal.jsonl"))
    (impact,) = [e for e in evs(journal) if e["event"] == "impact"]
    assert impact["unknown"] is None, impact["unknown"]
    assert impact["source"].endswith("(over SSH)")
    low, high = datetime.fromisoformat(impact["since"]), datetime.fromisoformat(impact["until"])
    counted = sum(
        low <= datetime.fromisoformat(line[:23] + "+00:00") <= high
        for line in copy.read_text().splitlines()
        if REFUSED.search(line)
    )
    assert impact["refused"] == counted >= ours >= 3


EXPORTER = "/usr/bin/prometheus-postgres-exporter"  # Debian's prometheus-postgres-exporter
# the inventory's PromQL for postgres_exporter's series: every session in a state, and
# the slots an ordinary role can use (max_connections less the superusers' reserve)
EXPORTER_CONNECTIONS = "sum(pg_stat_activity_count)"
EXPORTER_LIMIT = (
    "max(pg_settings_max_connections) - max(pg_settings_superuser_reserved_connections)"
    " - (max(pg_settings_reserved_connections) or vector(0))"  # PostgreSQL 16+
)


@pytest.fixture
def exporter(clean_lab: Lab, tmp_path: Path) -> Iterator[str]:
    """Debian's postgres_exporter on the lab's database as connfix's monitoring role
    (pg_monitor; its password in a file of its own), scraped every second by Debian's
    Prometheus; yields Prometheus' API URL."""
    from connfix.lab import paths

    exporter_port, prom_port = free_port(), free_port()
    password = next(
        line.rsplit(":", 1)[1]
        for line in (paths.lab_dir() / "pgpass").read_text().splitlines()
        if line.split(":")[3] == "connfix"
    )
    secret = tmp_path / "exporter-password"
    secret.write_text(password)
    secret.chmod(0o600)
    env = {
        **os.environ,
        "DATA_SOURCE_URI": f"{paths.db_address()}:{paths.pg_port()}/appdb?sslmode=disable",
        "DATA_SOURCE_USER": "connfix",
        "DATA_SOURCE_PASS_FILE": str(secret),
    }
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n  - job_name: postgres\n"
        f'    static_configs: [{{targets: ["127.0.0.1:{exporter_port}"]}}]\n'
    )
    exporter_argv = [EXPORTER, f"--web.listen-address=127.0.0.1:{exporter_port}"]
    prometheus = prometheus_argv(config, tmp_path, prom_port)
    with (
        process(exporter_argv, env, tmp_path / "exporter.log"),
        process(prometheus, dict(os.environ), tmp_path / "prometheus.log"),
    ):
        api = f"http://127.0.0.1:{prom_port}/api/v1"
        retry(lambda: _value(api, EXPORTER_LIMIT) is not None, timeout=60, interval=0.5)
        yield api


def _value(api: str, query: str) -> float | None:
    from urllib.parse import quote

    try:
        _, data = request(api + "/query?query=" + quote(query), token=None)
        result = data["data"]["result"]
        return float(result[0]["value"][1]) if result else None
    except (OSError, KeyError, TypeError, ValueError):
        return None


@pytest.mark.parametrize("lab", [15, 18], indirect=True)
def test_the_history_can_come_from_postgres_exporter(
    exporter: str, clean_lab: Lab, tmp_path: Path
) -> None:
    """The inventory's `prometheus.connections`/`limit` PromQL over the real
    postgres_exporter's series: the history before the run is the exporter's, it ends
    where connfix's first diagnosis begins (the same sessions, counted by both), and its
    limit is the usable limit connfix computes."""
    time.sleep(4)  # a healthy stretch first
    limit = _value(exporter, EXPORTER_LIMIT)
    assert limit == clean_lab.max_connections - 3 - clean_lab.reserved
    grown = 0
    while (_value(exporter, EXPORTER_CONNECTIONS) or 0) / limit < 0.85:
        clean_lab.core.leak("app2", 1, idle_in_transaction=False)
        grown += 1
        assert grown <= 20
        time.sleep(1.5)
    time.sleep(3)  # held above the warning line for a few scrapes

    def change(env: dict[str, Any]) -> None:
        env["prometheus"] = {
            "url": exporter.removesuffix("/api/v1"), "lookback": "2m",
            "connections": EXPORTER_CONNECTIONS, "limit": EXPORTER_LIMIT,
        }  # fmt: skip

    incidents = tmp_path / "incidents"
    result = connfix_run("triage", clean_lab.inventory_with(tmp_path, change), incidents, "--yes")
    assert result.exit_code == 0, result.output
    (journal,) = sorted(incidents.glob("*/journal.jsonl"))
    events = evs(journal)
    (history,) = [e for e in events if e["event"] == "history"]
    assert not history["errors"], history["errors"]
    used, limits = history["series"]["connections"], history["series"]["limit"]
    assert len(used) >= 10 and len(limits) >= 10
    first = next(e["diagnosis"] for e in events if e["event"] == "diagnosis")
    assert {v for _, v in limits} == {first["usable_connections"]}
    # the last scrape before the run saw the sessions connfix's first diagnosis saw (connfix
    # counts client backends; the exporter every session in a database, autovacuum's too)
    assert abs(used[-1][1] - first["client_backends"]) <= 1, (used[-5:], first["client_backends"])
    assert used[0][1] < used[-1][1]  # the leak grew over the history
    c = chart.curve(events)
    assert history["onset"] is not None and c.history_from < history["onset"] < c.run_from
    check_chart(journal.parent, tmp_path)
    report = (journal.parent / "report.md").read_text()
    assert "Points: Prometheus (http://127.0.0.1:" in report


# what a log line can hold: no newline, no NUL, no lone surrogate (not UTF-8)
_CHARS = st.characters(blacklist_characters="\n\x00", blacklist_categories=("Cs",))
_LINES = st.lists(
    st.one_of(
        st.text(alphabet=_CHARS, max_size=40),
        st.sampled_from([
            "2026-12-05 08:00:00.123 UTC [12] FATAL:  sorry, too many clients already",
            "x remaining connection slots are reserved for roles with SUPERUSER",
            "sorry, too many clients already", "remaining connection slots are reserved",
            "sorry, too many clients", "", "\r", "sorry, too many clients already\r",
        ]),
    ),
    max_size=12,
).map("\n".join)  # fmt: skip


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=_LINES)
def test_the_log_is_scanned_for_whole_lines_as_line_by_line(lab: Lab, text: str) -> None:
    """connfix reads the server's log through SQL with one newline-sensitive scan
    (server_log.LINE_PATTERN); on the real server it finds exactly the lines the file
    split into rows and each row matched found (the query it replaced)."""
    from connfix.db.server_log import LINE_PATTERN, PATTERN

    with lab.superuser() as conn:
        scanned = conn.execute(
            "SELECT m[1] FROM regexp_matches(%s, %s, 'gn') AS m", (text, LINE_PATTERN)
        ).fetchall()
        split = conn.execute(
            "SELECT line FROM regexp_split_to_table(%s, E'\\n') AS line WHERE line ~ %s",
            (text, PATTERN),
        ).fetchall()
    assert scanned == split
