"""An HA cluster, for real: etcd and two PostgreSQL nodes under Debian's Patroni (`lab up
--ha`), app hosts on real systemd writing to the primary and one reading from the
standby. connfix finds the nodes through Patroni's REST API, diagnoses each on its own,
and names the node that is full and the hosts crowding it; Patroni's own word
(patronictl) and each server's (psql) are the cross-checks."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import PG_VERSIONS, invoke, retry, terminal_signals

HA_LAB_ID = "8"  # beside the suite's lab (7), never on top of it


class HaLab:
    """Handles onto the running HA lab."""

    def __init__(self, version: int) -> None:
        from connfix.lab import lab, paths, patroni

        self.version = version
        self.core, self.patroni, self.paths = lab, patroni, paths
        self.inventory = paths.lab_dir() / "inventory.yaml"

    def settle(self) -> None:
        """Every app restarted and healthy, its pool connected again: a switchover in an
        earlier test may have left a pool broken (its sessions cut), to refill later."""
        for index in range(1, 4):
            self.core.systemctl(self.paths.host_name(index), "restart", self.paths.UNIT)
        for index in range(1, 4):
            retry(lambda i=index: self.core.app_request(i, "/health", timeout=2))  # type: ignore[misc]
        retry(lambda: not self.diagnose()[1]["result"]["unreachable"], timeout=60, interval=0.5)

    def reset_leaks(self) -> None:
        """Restart every app that leaked (its leaked connections close with it)."""
        for index in range(1, 4):
            if self.core.app_request(index, "/status")["leaked"]:
                self.core.systemctl(self.paths.host_name(index), "restart", self.paths.UNIT)
                retry(lambda i=index: self.core.app_request(i, "/health", timeout=2))  # type: ignore[misc]

    def diagnose(self) -> tuple[int, dict[str, Any]]:
        result = invoke("diagnose", "lab", "-i", str(self.inventory), "--json")
        return result.exit_code, json.loads(result.stdout)

    def psql(self, node: str, sql: str) -> str:
        """A node's own answer, through psql over its socket (the cross-check)."""
        out = subprocess.run(
            ["psql", "-XAtq", "-d", self.patroni.superuser_dsn(node), "-c", sql],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        )
        return out.stdout.strip()

    def patronictl_list(self) -> list[dict[str, Any]]:
        """`patronictl list -f json`, Patroni's own view of its members."""
        out = subprocess.run(
            [
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "/usr/bin/patronictl",
                "-c",
                str(self.patroni.node_dir("pg1") / "patroni.yml"),
                "list",
                "-f",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            env={"HOME": "/var/lib/postgresql", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        return list(json.loads(out.stdout))


@pytest.fixture(scope="module", params=PG_VERSIONS, ids=[f"pg{v}" for v in PG_VERSIONS])
def ha_lab(request: pytest.FixtureRequest) -> Iterator[HaLab]:
    """The HA lab, once per PostgreSQL version: built, then removed."""
    from connfix.lab import lab, patroni

    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (namespaces, cgroups, systemd hosts)")
    why = patroni.unavailable()
    if why:
        pytest.fail(why)  # scripts/setup.sh installs them: their absence is a broken setup
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONNFIX_LAB_ID", HA_LAB_ID)
        lab.down()
        try:
            lab.up(
                hosts=3,
                max_connections=None,
                pool_size=3,
                boot_seconds=0.2,
                postgres=str(request.param),
                ha=True,
                standby_hosts=1,
            )
            yield HaLab(request.param)
        finally:
            lab.down()


def _node(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in data["result"]["nodes"] if n["node"] == name)


def test_each_node_is_found_through_patroni_with_its_role(ha_lab: HaLab) -> None:
    code, data = ha_lab.diagnose()
    assert code == 0 and data["status"] == "ok", data
    members = {m["Member"]: m for m in ha_lab.patronictl_list()}
    assert set(members) == {"pg1", "pg2"}
    for name in ("pg1", "pg2"):
        node = _node(data, name)
        leader = members[name]["Role"] == "Leader"
        assert node["ha_role"] == ("leader" if leader else "replica")
        assert node["role"] == ("primary" if leader else "standby")
        in_recovery = ha_lab.psql(name, "SELECT pg_is_in_recovery()")
        assert in_recovery == ("f" if leader else "t")
        # each node's own limits, as its server says them
        assert node["max_connections"] == int(ha_lab.psql(name, "SHOW max_connections"))
        # Patroni's own session: counted, shown apart, never a suspect
        agent = int(
            ha_lab.psql(
                name,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'Patroni%'"
                " AND backend_type = 'client backend'",
            )
        )
        assert node["ha_sessions"] == agent >= 1
        rows = {u["host"]: u for u in node["by_host"]}
        assert rows["(HA agent)"]["count"] == agent and not rows["(HA agent)"]["suspect"]
    assert data["result"]["topology"]["source"].startswith("http://")
    # `lab status` sees both nodes, and counts the standby readers' sessions too
    from connfix.lab.status import status

    now = status()
    assert now.up and not now.problems, now.problems
    assert now.nodes == {m: members[m]["Role"].lower() for m in members}
    app3 = next(h for h in now.hosts if h.name == "app3")
    assert app3.backends >= 3, app3


def test_a_full_standby_is_named_with_the_hosts_crowding_it(ha_lab: HaLab) -> None:
    """app3 reads from the standby and leaks until the standby is full; the primary is
    fine. The standby is named critical, app3 its suspect; the primary stays ok."""
    ha_lab.settle()
    _, before = ha_lab.diagnose()
    standby = next(n for n in before["result"]["nodes"] if n["role"] == "standby")
    room = standby["usable_connections"] - standby["client_backends"]
    ha_lab.core.leak("app3", room + 1, idle_in_transaction=False)
    try:
        code, data = ha_lab.diagnose()
        assert code == 1 and data["status"] == "critical", data
        full = _node(data, standby["node"])
        primary = next(n for n in data["result"]["nodes"] if n["role"] == "primary")
        assert full["severity"] == "critical" and full["suspects"] == ["app3"], full
        assert primary["severity"] == "ok" and primary["suspects"] == [], primary
        # the standby's own count of app3's sessions agrees
        app3 = ha_lab.paths.host_address(3)
        held = int(
            ha_lab.psql(
                standby["node"],
                f"SELECT count(*) FROM pg_stat_activity WHERE client_addr = '{app3}'",
            )
        )
        assert {u["host"]: u["count"] for u in full["by_host"]}["app3"] == held
        # diagnosed through a way in when the ordinary slots are full
        assert full["via"] != "primary" or full["client_backends"] < full["usable_connections"]
        text = invoke("diagnose", "lab", "-i", str(ha_lab.inventory))
        assert text.exit_code == 1
        assert f"node {standby['node']}: standby" in text.stdout
        assert "SUSPECT" in text.stdout and "severity CRITICAL" in text.stdout
    finally:
        ha_lab.reset_leaks()


def _labapp_pids(ha_lab: HaLab, node: str, address: str) -> set[str]:
    rows = ha_lab.psql(
        node,
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
        f" AND client_addr = '{address}'",
    )
    return set(rows.split())


def test_triage_acts_on_the_full_standby_alone(ha_lab: HaLab, tmp_path: Path) -> None:
    """The standby is full (app3 reads from it and leaks); the primary is fine. A triage
    picks the standby, acts on its sessions and on app3 alone, and ends healthy; the
    primary's sessions are the same ones before and after."""
    ha_lab.settle()
    _, before = ha_lab.diagnose()
    standby = next(n for n in before["result"]["nodes"] if n["role"] == "standby")
    primary = next(n for n in before["result"]["nodes"] if n["role"] == "primary")
    ha_lab.core.leak("app3", standby["usable_connections"] - standby["client_backends"] + 1,
                     idle_in_transaction=False)  # fmt: skip
    on_primary = {
        i: _labapp_pids(ha_lab, primary["node"], ha_lab.paths.host_address(i)) for i in (1, 2)
    }
    try:
        result = invoke(
            "triage", "lab", "-i", str(ha_lab.inventory), "--yes",
            "--incidents-dir", str(tmp_path), "--json",
        )  # fmt: skip
        envelope = json.loads(result.stdout)
        assert result.exit_code == 0, (result.output, envelope)
        (journal,) = tmp_path.glob("*/journal.jsonl")
        events = [json.loads(line) for line in journal.read_text().splitlines()]
        start = events[0]
        assert start["node"] == standby["node"] and start["node_role"] == "standby"
        assert start["nodes"] == {standby["node"]: "critical", primary["node"]: "ok"}
        restarted = {e["host"] for e in events if e["event"] == "host_done"}
        assert restarted <= {"app3"}, restarted  # only the host crowding the standby
        # the primary's sessions were not touched: the same pids, from app1 and app2
        for index, pids in on_primary.items():
            assert pids <= _labapp_pids(
                ha_lab, primary["node"], ha_lab.paths.host_address(index)
            ), index
        _, after = ha_lab.diagnose()
        assert after["result"]["severity"] == "ok", after
        report = (journal.parent / "report.md").read_text()
        assert f"| Database node | {standby['node']} (standby)" in report
    finally:
        ha_lab.reset_leaks()


def test_pool_sizes_each_node_for_its_own_hosts_standbys_first(ha_lab: HaLab) -> None:
    result = invoke("pool", "lab", "-i", str(ha_lab.inventory), "--json")
    assert result.exit_code == 0, result.output
    nodes = json.loads(result.stdout)["result"]["nodes"]
    assert [n["role"] for n in nodes] == ["standby", "primary"]  # standbys first
    by_role = {n["role"]: n for n in nodes}
    assert by_role["standby"]["hosts"] == ["app3"]  # it reads from the standby
    assert by_role["primary"]["hosts"] == ["app1", "app2"]
    for n in nodes:  # the HA agent's session is kept room for, as another client
        assert n["sizing"]["other_clients"] >= 1
        assert n["max_connections"] == int(ha_lab.psql(n["node"], "SHOW max_connections"))
    notes = json.loads(result.stdout)["result"]["cluster_notes"]
    assert any("standbys" in note and "first" in note for note in notes), notes
    refused = invoke("pool", "lab", "-i", str(ha_lab.inventory), "--pgbouncer-config", "x")
    assert refused.exit_code == 2 and "several database nodes" in refused.output


def test_pool_flags_a_standby_left_below_the_primary(ha_lab: HaLab) -> None:
    """A cluster restarted halfway, for real: Patroni paused, max_connections raised with
    `patronictl edit-config`, only the leader restarted. The standby still runs with the
    old value (each server's SHOW and Patroni's "pending restart" say so) and its replay
    is paused at the primary's change: `pool` flags it and says to raise standbys
    first."""
    ha_lab.settle()
    primary = ha_lab.patroni.leader()
    standby = next(n for n in ha_lab.patroni.NODES if n != primary)
    was = int(ha_lab.psql(primary, "SHOW max_connections"))
    try:
        assert ha_lab.patroni.leave_standby_behind(30) == (primary, was)
        assert int(ha_lab.psql(primary, "SHOW max_connections")) == 30
        assert int(ha_lab.psql(standby, "SHOW max_connections")) == was < 30
        members = {m["Member"]: m for m in ha_lab.patronictl_list()}
        assert members[standby].get("Pending restart") == "*", members
        result = invoke("pool", "lab", "-i", str(ha_lab.inventory), "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)["result"]
        assert [n["role"] for n in data["nodes"]] == ["standby", "primary"]
        flagged = [n for n in data["cluster_notes"] if n.startswith(f"standby {standby} ")]
        assert flagged, data["cluster_notes"]
        assert f"max_connections {was}, below the primary's 30" in flagged[0]
        text = " ".join(invoke("pool", "lab", "-i", str(ha_lab.inventory)).output.split())
        assert f"standby {standby} has max_connections {was}" in text
    finally:
        ha_lab.patroni.catch_up(was)
    assert int(ha_lab.psql(standby, "SHOW max_connections")) == was
    settled = invoke("pool", "lab", "-i", str(ha_lab.inventory), "--json")
    notes = json.loads(settled.stdout)["result"]["cluster_notes"]
    assert not [n for n in notes if n.startswith("standby ")], notes  # equal again


def test_roles_follow_a_real_switchover(ha_lab: HaLab) -> None:
    old, new = ha_lab.patroni.switchover()
    # at once: Patroni's /cluster is read again; the old primary restarts as a standby
    # for a few seconds, and is said to be unreachable meanwhile, never taken as primary
    _, data = ha_lab.diagnose()
    roles = {n["node"]: (n["role"], n["ha_role"]) for n in data["result"]["nodes"]}
    assert roles[new] == ("primary", "leader"), roles
    assert old in data["result"]["unreachable"] or roles[old][0] == "standby", data
    assert ha_lab.psql(new, "SELECT pg_is_in_recovery()") == "f"

    def settled() -> dict[str, Any] | None:
        _, again = ha_lab.diagnose()
        nodes = {n["node"]: n for n in again["result"]["nodes"]}
        return nodes if old in nodes and nodes[old]["role"] == "standby" else None

    nodes = retry(settled, timeout=60, interval=0.5)
    assert nodes[old]["ha_role"] == "replica" and nodes[new]["role"] == "primary"
    assert ha_lab.psql(old, "SELECT pg_is_in_recovery()") == "t"


class SwitchoverUI:
    """The run's UI, answering yes to every question; at the first question (a change
    planned on the primary, not yet applied) it runs a real `patronictl switchover`."""

    def __init__(self, ha_lab: HaLab) -> None:
        self.ha_lab, self.switched = ha_lab, None
        self.notes: list[str] = []

    def started(self, *args: Any) -> None: ...
    def diagnosis(self, *args: Any) -> None: ...
    def step(self, *args: Any) -> None: ...
    def plan(self, *args: Any, **kwargs: Any) -> None: ...
    def table(self, *args: Any) -> None: ...
    def ended(self, *args: Any) -> None: ...

    def note(self, message: str) -> None:
        self.notes.append(message)

    def confirm(self, question: str) -> bool:
        if self.switched is None:
            self.switched = self.ha_lab.patroni.switchover()
        return True


def test_a_switchover_in_the_middle_of_a_triage_is_followed(ha_lab: HaLab, tmp_path: Path) -> None:
    """The primary is full; the triage plans on it; before the change is applied a real
    switchover makes the other node the primary. The step is cut, nothing more is done
    on the old primary, the role change is journaled and shown, the run follows the
    primary, and ends healthy; the report's timeline has the switchover."""
    ha_lab.settle()
    from connfix.config.inventory_file import load_inventory
    from connfix.engine.runbook import resolve_runbook
    from connfix.engine.start import start_run

    _, before = ha_lab.diagnose()
    primary = next(n for n in before["result"]["nodes"] if n["role"] == "primary")
    room = primary["usable_connections"] - primary["client_backends"]
    writers = [i for i in (1, 2, 3) if ha_lab.paths.host_address(i) in {
        u["client_addr"] for u in primary["by_host"] if u["count"]
    }]  # fmt: skip
    ha_lab.core.leak(ha_lab.paths.host_name(writers[0]), room + 1, idle_in_transaction=False)
    ui = SwitchoverUI(ha_lab)
    try:
        env = load_inventory(ha_lab.inventory).environment("lab")
        result = start_run(
            "lab", env, resolve_runbook(None), ui,  # type: ignore[arg-type]
            incidents_dir=str(tmp_path), inventory_path=ha_lab.inventory, interactive=True,
        )  # fmt: skip
        assert ui.switched is not None, ui.notes
        old, new = ui.switched
        assert old == primary["node"]
        (journal,) = tmp_path.glob("*/journal.jsonl")
        events = [json.loads(line) for line in journal.read_text().splitlines()]
        assert events[0]["node"] == old and events[0]["node_role"] == "primary"
        changed = [e for e in events if e["event"] == "role_changed"]
        assert changed and changed[0]["node"] == old and changed[0]["was"] == "primary"
        assert f"following the primary to {new}" in changed[0]["message"]
        assert any("following the primary" in n for n in ui.notes), ui.notes
        # after the switch, nothing was ended through the old primary's session: every
        # termination came after the run connected to the new primary
        at = events.index(changed[0])
        cut = [e for e in events if e["event"] == "step_end" and "cut:" in (e.get("summary") or "")]
        assert cut and events.index(cut[0]) < at, cut
        done = [
            e for e in events[:at] if e["event"] == "operation" and e.get("result") == "terminated"
        ]
        assert not done, done
        assert result.status.value == "resolved", (result.message, ui.notes)
        report = (journal.parent / "report.md").read_text()
        assert f"node {old} is a standby now (was the primary)" in report
    finally:
        ha_lab.reset_leaks()
        # the old primary is back as a standby before the next test
        retry(lambda: not ha_lab.diagnose()[1]["result"]["unreachable"], timeout=60, interval=0.5)


class MidRollUI(SwitchoverUI):
    """Yes to every question; once the roll's first host has passed its database gate, a
    real `patronictl switchover`, before the roll goes on to the next host."""

    def __init__(self, ha_lab: HaLab) -> None:
        super().__init__(ha_lab)
        self.switched_at: float | None = None

    def confirm(self, question: str) -> bool:
        return True

    def note(self, message: str) -> None:
        self.notes.append(message)
        if self.switched is None and "database ok" in message:
            import time

            self.switched = self.ha_lab.patroni.switchover()
            self.switched_at = time.time()


ROLL = """\
version: 1
name: roll
summary: restart the writers, one at a time
healthy: "severity == 'ok' and not suspects"
steps:
  - id: diagnose
    action: diagnose
  - id: restart
    action: rolling_restart
    params: {hosts: [WRITERS], settle: 0s}
  - id: verify
    action: verify
    params: {timeout: 30s, interval: 500ms}
"""


def test_a_switchover_in_the_middle_of_a_roll_is_followed(ha_lab: HaLab, tmp_path: Path) -> None:
    """The primary is full of a writer's leak; a triage rolls the writers one at a time.
    Between the first host and the second, a real switchover: nothing more (no restart,
    no gate) runs against the old primary's session, the switch is journaled and in the
    report, and the run ends healthy on the new roles."""
    ha_lab.settle()
    from datetime import datetime

    from connfix.config.inventory_file import load_inventory
    from connfix.engine.runbook import resolve_runbook
    from connfix.engine.start import start_run

    _, before = ha_lab.diagnose()
    primary = next(n for n in before["result"]["nodes"] if n["role"] == "primary")
    writers = sorted(u["host"] for u in primary["by_host"]
                     if u["count"] and u["host"].startswith("app"))  # fmt: skip
    assert len(writers) >= 2, primary["by_host"]
    room = primary["usable_connections"] - primary["client_backends"]
    ha_lab.core.leak(writers[0], room + 1, idle_in_transaction=False)
    book = tmp_path / "roll.yaml"
    book.write_text(ROLL.replace("WRITERS", ", ".join(writers)))
    ui = MidRollUI(ha_lab)
    try:
        env = load_inventory(ha_lab.inventory).environment("lab")
        result = start_run(
            "lab", env, resolve_runbook(str(book)), ui,  # type: ignore[arg-type]
            incidents_dir=str(tmp_path), inventory_path=ha_lab.inventory, interactive=True,
        )  # fmt: skip
        assert ui.switched is not None and ui.switched_at is not None, ui.notes
        old, new = ui.switched
        assert old == primary["node"] and new != old
        (journal,) = tmp_path.glob("*/journal.jsonl")
        events = [json.loads(line) for line in journal.read_text().splitlines()]
        done = [e["host"] for e in events if e["event"] == "host_done"]
        assert done[:1] == [writers[0]], done  # the first host, before the switch
        changed = [e for e in events if e["event"] == "role_changed"]
        assert changed and changed[0]["node"] == old and changed[0]["was"] == "primary"
        at = events.index(changed[0])
        # nothing of the roll after the switch, until the run follows the new primary
        switched = ui.switched_at

        def after_switch(e: dict[str, Any]) -> bool:
            return datetime.fromisoformat(e["ts"]).timestamp() > switched

        # (the first host's own end is recorded after its last, SSH-only, gate)
        kinds = ("host_start", "host_done", "host_failed", "operation")
        ran = [e for e in events[:at] if after_switch(e) and e.get("host") != writers[0]
               and e["event"] in kinds]  # fmt: skip
        assert not ran, ran
        waited = [e for e in events if e["event"] == "nodes"]
        assert waited and waited[0]["severities"][old] == "ok", waited  # rejoined, waited for
        assert result.status.value == "resolved", (result.message, ui.notes)
        report = (journal.parent / "report.md").read_text()
        assert f"node {old} is a standby now (was the primary)" in report
        row = next(ln for ln in report.splitlines() if ln.startswith("| Database node |"))
        assert f"following the primary to {new}" in row, row
        assert "at the end: " in row and f"{old} ok" in row.split("at the end: ")[1], row
    finally:
        ha_lab.reset_leaks()
        retry(lambda: not ha_lab.diagnose()[1]["result"]["unreachable"], timeout=60, interval=0.5)
        if ui.switched is not None:  # the roles back as the other tests expect them
            ha_lab.patroni.switchover(ui.switched[0])
            retry(lambda: not ha_lab.diagnose()[1]["result"]["unreachable"], timeout=60,
                  interval=0.5)  # fmt: skip


def test_healthy_means_every_node_a_second_run_takes_the_other(
    ha_lab: HaLab, tmp_path: Path
) -> None:
    """Both nodes are full. A triage acts on the worst alone and, its node healthy again,
    says the other is not (exit 1, never "resolved"); the next triage takes the other and
    ends with every node healthy."""
    ha_lab.settle()
    _, before = ha_lab.diagnose()
    for node in before["result"]["nodes"]:
        room = node["usable_connections"] - node["client_backends"]
        host = 3 if node["role"] == "standby" else 1  # app3 reads from the standby
        ha_lab.core.leak(ha_lab.paths.host_name(host), room + 1, idle_in_transaction=False)
    try:
        inventory = str(ha_lab.inventory)
        first = invoke("triage", "lab", "-i", inventory, "--yes", "--incidents-dir",
                       str(tmp_path / "1"), "--json")  # fmt: skip
        data = json.loads(first.stdout)
        assert first.exit_code == 1 and data["status"] == "unhealthy", data
        (journal,) = (tmp_path / "1").glob("*/journal.jsonl")
        events = [json.loads(line) for line in journal.read_text().splitlines()]
        acted = events[0]["node"]
        assert set(events[0]["nodes"].values()) == {"critical"}, events[0]["nodes"]
        (end_nodes,) = [e for e in events if e["event"] == "nodes"]
        other = next(n for n in end_nodes["severities"] if n != acted)
        assert end_nodes["severities"][acted] == "ok", end_nodes
        assert end_nodes["severities"][other] != "ok", end_nodes
        assert f"not every node is healthy: {other}" in data["result"]["message"], data
        second = invoke("triage", "lab", "-i", inventory, "--yes", "--incidents-dir",
                        str(tmp_path / "2"), "--json")  # fmt: skip
        assert second.exit_code == 0, second.stdout
        (journal2,) = (tmp_path / "2").glob("*/journal.jsonl")
        assert json.loads(journal2.read_text().splitlines()[0])["node"] == other
        assert ha_lab.diagnose()[1]["result"]["severity"] == "ok"
    finally:
        ha_lab.reset_leaks()


def test_watch_shows_every_node_and_follows_a_switchover(ha_lab: HaLab) -> None:
    """`diagnose --watch` under a real pseudo-terminal: every node with its role, each
    refreshed through its own session; a real switchover shows as the roles changing
    (the old primary unreachable while it restarts, then a standby)."""
    import sys

    import pexpect

    ha_lab.settle()
    child = pexpect.spawn(
        sys.executable,
        ["-m", "connfix", "diagnose", "lab", "-i", str(ha_lab.inventory), "--watch", "0.5s"],
        encoding="utf-8",
        timeout=60,
        dimensions=(80, 160),
        env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
        preexec_fn=terminal_signals,
    )
    old = ha_lab.patroni.leader()
    new = next(n for n in ha_lab.patroni.NODES if n != old)
    try:
        child.expect_exact("2 node(s)")
        child.expect_exact(f"node {old}: primary, Patroni: leader")
        child.expect("refresh 2")
        ha_lab.patroni.switchover(new)
        child.expect_exact(f"node {new}: primary, Patroni: leader")
        child.expect_exact(f"node {old}: standby")  # rejoined: its session opened again
        child.send("q")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)
        retry(lambda: not ha_lab.diagnose()[1]["result"]["unreachable"], timeout=60, interval=0.5)
        if ha_lab.patroni.leader() != old:  # the roles back as the other tests expect them
            ha_lab.patroni.switchover(old)
            retry(lambda: not ha_lab.diagnose()[1]["result"]["unreachable"], timeout=60,
                  interval=0.5)  # fmt: skip


def test_the_textfile_holds_every_node_labelled(ha_lab: HaLab, tmp_path: Path) -> None:
    """node_exporter's textfile, read back by prometheus_client's own parser: each metric
    once per node, labelled with it; the primary marked."""
    ha_lab.settle()
    from prometheus_client.parser import text_string_to_metric_families

    path = tmp_path / "connfix.prom"
    result = invoke("diagnose", "lab", "-i", str(ha_lab.inventory), "--prometheus-textfile",
                    str(path), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    nodes = {n["node"]: n for n in json.loads(result.stdout)["result"]["nodes"]}
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    usable = {s.labels["node"]: s.value for s in families["connfix_usable_connections"].samples}
    assert usable == {name: n["usable_connections"] for name, n in nodes.items()}
    primary = {s.labels["node"]: s.value for s in families["connfix_node_primary"].samples}
    assert primary == {name: float(n["role"] == "primary") for name, n in nodes.items()}
    assert {s.labels["environment"] for s in families["connfix_up"].samples} == {"lab"}


def test_inventory_check_probes_every_node_and_its_ways_in(ha_lab: HaLab) -> None:
    ha_lab.settle()
    result = invoke("inventory", "check", "lab", "-i", str(ha_lab.inventory), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["result"]
    nodes = data["nodes"]
    assert sorted(n["target"].split(",")[0] for n in nodes) == ["node pg1", "node pg2"]
    for node in nodes:
        assert node["ok"] and node["via"] == "primary", node
        assert node["ways_in"] and all(works for _, works, _ in node["ways_in"]), node
    assert data["ok"] and len(data["hosts"]) == 3


def test_a_dry_run_on_several_nodes_plans_on_the_full_one_and_changes_nothing(
    ha_lab: HaLab, tmp_path: Path
) -> None:
    ha_lab.settle()
    _, before = ha_lab.diagnose()
    standby = next(n for n in before["result"]["nodes"] if n["role"] == "standby")
    ha_lab.core.leak("app3", standby["usable_connections"] - standby["client_backends"] - 1,
                     idle_in_transaction=False)  # fmt: skip
    try:
        _, full = ha_lab.diagnose()
        result = invoke("triage", "lab", "-i", str(ha_lab.inventory), "--dry-run",
                        "--incidents-dir", str(tmp_path), "--json")  # fmt: skip
        assert json.loads(result.stdout)["status"] == "dry_run", result.stdout
        (journal,) = tmp_path.glob("*/journal.jsonl")
        events = [json.loads(line) for line in journal.read_text().splitlines()]
        assert events[0]["node"] == standby["node"] and events[0]["flags"]["dry_run"]
        assert not [e for e in events if e["event"] in ("operation", "host_start", "nodes")]
        _, after = ha_lab.diagnose()
        counts = [{n["node"]: n["client_backends"] for n in d["result"]["nodes"]}
                  for d in (full, after)]  # fmt: skip
        assert counts[0] == counts[1]  # nothing ended, nothing restarted, on either node
    finally:
        ha_lab.reset_leaks()
