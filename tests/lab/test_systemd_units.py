"""systemd as it really behaves, on the lab's real-systemd hosts: unit types, unit states
at preflight, template instances, late failures, and sudo's permission probe.

Each test installs its own units (and sudoers rules) on app1, rolls app1 only, and
checks what was restarted and what was not, by the units' InvocationID as the host's own
systemctl reports it. The inventory points app1's database address at an unused address:
these units hold no database sessions, so the database gate has nothing to wait for.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connfix.hosts.systemd import UnitState, parse_show, show_command
from tests.helpers import Lab, assert_complete, connfix_run, events, of, retry

UNITS = "/etc/systemd/system"
SUDOERS = "/etc/sudoers.d/connfix-test"
# deploy may restart the test units too (a sudoers wildcard, as fleets often have)
RULE = "deploy ALL=(root) NOPASSWD: /usr/bin/systemctl restart cfxtest*\n"


class Host:
    """Test units on lab host app1, removed again afterwards."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.files: list[str] = []
        self.units: list[str] = []

    def install(self, name: str, body: str) -> None:
        self.lab.write_file(1, f"{UNITS}/{name}", body)
        self.files.append(f"{UNITS}/{name}")
        self.lab.systemctl(1, "daemon-reload")

    def flag(self, path: str) -> None:
        """Create an empty file on the host (removed again afterwards)."""
        self.lab.write_file(1, path, "")
        self.files.append(path)

    def sudoers(self, text: str) -> None:
        self.lab.write_file(1, SUDOERS, text, 0o440)
        if SUDOERS not in self.files:
            self.files.append(SUDOERS)

    def start(self, *units: str, block: bool = True) -> None:
        self.units += units
        self.lab.systemctl(1, "start", *([] if block else ["--no-block"]), *units)

    def running(self, unit: str, comm: str) -> None:
        """Wait until the unit's main process is `comm` (its shell has made its checks)."""
        from connfix.lab import hosts

        init = self.lab.core.init_pid("app1")

        def now() -> str:
            pid = self.state(unit).main_pid
            try:
                return hosts.file_in(init, f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                return ""

        retry(lambda: now() == comm)

    def state(self, unit: str) -> UnitState:
        (props,) = parse_show(self.lab.systemctl(1, "show", unit))
        return UnitState.from_show(props)

    def cleanup(self) -> None:
        if self.units:
            self.lab.systemctl(1, "stop", "--no-block", *self.units, check=False)
            self.lab.systemctl(1, "kill", "--signal=SIGKILL", *self.units, check=False)
            self.lab.systemctl(1, "reset-failed", check=False)
        for path in self.files:
            self.lab.remove_file(1, path)
        self.lab.systemctl(1, "daemon-reload")


@pytest.fixture
def host(clean_lab: Lab) -> Iterator[Host]:
    handle = Host(clean_lab)
    handle.sudoers(RULE)
    try:
        yield handle
    finally:
        handle.cleanup()


def inventory(lab: Lab, tmp_path: Path, unit: str, **service: Any) -> Path:
    ssh = service.pop("ssh", {})

    def change(env: dict[str, Any]) -> None:
        env["service"].pop("health_check", None)
        env["service"].update(unit=unit, **service)
        env["hosts"][0]["db_address"] = lab.paths.host_address(99)  # holds no sessions
        env["ssh"].update(ssh)

    tmp_path.mkdir(parents=True, exist_ok=True)
    return lab.inventory_with(tmp_path, change)


def roll(lab: Lab, tmp_path: Path, inv: Path, *args: str) -> Any:
    return connfix_run("restart", inv, tmp_path / "incidents", "--hosts", "app1", "--yes", *args)


# ---------------------------------------------------------------- the parser, on real output


def test_parser_reads_real_systemctl_output_by_name(clean_lab: Lab, lab_env: Any) -> None:
    """Real systemd answers in its own property order; connfix reads it by name, and agrees
    with `systemctl show -p X --value` asked one property at a time."""
    from connfix.hosts import remote

    conn = remote.Remote(lab_env.hosts[0], lab_env.ssh)
    try:
        asked = ("LoadState", "ActiveState", "MainPID")
        positional = conn.run(
            "systemctl show " + " ".join(f"-p {p}" for p in asked) + " --value labapp.service"
        )
        assert positional.ok
        # the order the stand-in answered in, and the real one does not
        assert positional.stdout.split() != ["loaded", "active", positional.stdout.split()[0]]
        shown = conn.run(show_command(["labapp.service", "nosuch.service"]))
        assert shown.ok, shown.describe()
        app, missing = (UnitState.from_show(b) for b in parse_show(shown.stdout))
        for prop, value in (
            ("LoadState", app.load_state),
            ("ActiveState", app.active_state),
            ("MainPID", str(app.main_pid)),
            ("InvocationID", app.invocation_id),
            ("Type", app.type),
        ):
            one = conn.run(f"systemctl show -p {prop} --value labapp.service")
            assert one.stdout.strip() == value, prop
        assert (app.load_state, app.active_state, app.type) == ("loaded", "active", "notify")
        assert app.main_pid == clean_lab.core.app_request(1, "/status")["pid"]
        assert app.start_timeout == 30.0 and len(app.invocation_id) == 32
        assert (missing.id, missing.load_state, missing.active_state) == (
            "nosuch.service",
            "not-found",
            "inactive",
        )
        assert missing.verdict() == "service nosuch.service not found (LoadState=not-found)"
    finally:
        conn.close()


# ---------------------------------------------------------------- every unit type restarts

TYPES = {
    "simple": "[Service]\nExecStart=/bin/sleep infinity\n",
    "exec": "[Service]\nType=exec\nExecStart=/bin/sleep infinity\n",
    "notify": (
        "[Service]\nType=notify\nNotifyAccess=all\n"
        "ExecStart=/bin/sh -c 'systemd-notify --ready; exec sleep infinity'\n"
    ),
    "forking": (
        "[Service]\nType=forking\nPIDFile=/run/cfxtest-forking.pid\n"
        "ExecStart=/bin/sh -c 'sleep infinity & echo $! > /run/cfxtest-forking.pid'\n"
    ),
    "oneshot": "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
}


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_each_unit_type_restarts_and_passes_the_gates(
    host: Host, clean_lab: Lab, tmp_path: Path, kind: str
) -> None:
    unit = f"cfxtest-{kind}.service"
    host.install(unit, TYPES[kind])
    host.start(unit)
    before = host.state(unit)
    app_before = clean_lab.show(1)["InvocationID"]
    others = clean_lab.main_pids()
    result = roll(clean_lab, tmp_path, inventory(clean_lab, tmp_path, unit), "--settle", "1s")
    assert result.exit_code == 0, result.output
    (done,) = of(events(tmp_path / "incidents"), "host_done")
    (entry,) = done["units"]
    after = host.state(unit)
    assert entry["type"] == kind == after.type
    assert entry["old_invocation_id"] == before.invocation_id != after.invocation_id
    assert entry["new_invocation_id"] == after.invocation_id
    assert after.active_state == "active"
    if kind == "oneshot":  # no main pid before or after, restarted all the same
        assert entry["old_main_pid"] == entry["new_main_pid"] == 0
    else:
        assert entry["new_main_pid"] == after.main_pid not in (0, before.main_pid)
    assert ("settle" in done["gates"]) == (kind in ("simple", "exec"))
    # nothing else moved: the app on app1, and the other hosts
    assert clean_lab.show(1)["InvocationID"] == app_before
    assert clean_lab.main_pids() == others


# ---------------------------------------------------------------- a slow Type=notify start

SLOW = (
    "[Service]\nType=notify\nNotifyAccess=all\nTimeoutStartSec={timeout}\n"
    "ExecStart=/bin/sh -c 'sleep 3; systemd-notify --ready; exec sleep infinity'\n"
)


@pytest.mark.parametrize("timeout", ["20s", "infinity"])
def test_a_start_slower_than_the_ssh_command_timeout_is_not_a_failure(
    host: Host, clean_lab: Lab, tmp_path: Path, timeout: str
) -> None:
    """ssh.command_timeout 1s, a notify service ready after 3s: with a start timeout the
    restart command is given that long; with none (infinity) the command times out and
    connfix follows the unit's state instead. Either way: restarted, not failed."""
    unit = "cfxtest-slow.service"
    host.install(unit, SLOW.format(timeout=timeout))
    host.start(unit)
    before = host.state(unit)
    inv = inventory(clean_lab, tmp_path, unit, ssh={"command_timeout": "1s"})
    result = roll(clean_lab, tmp_path, inv)
    assert result.exit_code == 0, result.output
    (done,) = of(events(tmp_path / "incidents"), "host_done")
    after = host.state(unit)
    assert after.started_since(before) and after.active_state == "active"
    assert done["units"][0]["new_invocation_id"] == after.invocation_id
    still_running = "the restart command is still running after" in result.output
    assert still_running == (timeout == "infinity")
    assert done["gates"]["restart"] + done["gates"]["active"] >= 2.5


# ---------------------------------------------------------------- unit states at preflight

BROKEN = "[Service]\nExecStart=/bin/sh -c 'test ! -e /run/cfxtest-broken && exec sleep infinity'\n"


def _refused(result: Any, tmp_path: Path) -> str:
    assert result.exit_code == 3, result.output
    assert "preflight failed, nothing was restarted" in result.output
    assert not of(events(tmp_path / "incidents"), "host_start")
    return str(result.output)


def test_failed_unit_is_refused_unless_included_then_restarting_fixes_it(
    host: Host, clean_lab: Lab, tmp_path: Path
) -> None:
    unit = "cfxtest-broken.service"
    host.install(unit, BROKEN)
    host.flag("/run/cfxtest-broken")
    host.start(unit)
    retry(lambda: host.state(unit).active_state == "failed")
    failed = host.state(unit)
    inv = inventory(clean_lab, tmp_path, unit)
    output = _refused(roll(clean_lab, tmp_path, inv), tmp_path)
    assert f"app1: service {unit} has failed (failed/failed, Result=exit-code)" in output
    assert "restarting it may be the fix: rerun with --include-failed" in output
    assert host.state(unit).invocation_id == failed.invocation_id  # not touched

    clean_lab.remove_file(1, "/run/cfxtest-broken")  # the cause is gone: a restart fixes it
    result = roll(clean_lab, tmp_path / "second", inv, "--include-failed", "--settle", "1s")
    assert result.exit_code == 0, result.output
    after = host.state(unit)
    assert after.active_state == "active" and after.started_since(failed)


def test_crash_loop_is_refused_as_a_crash_loop(host: Host, clean_lab: Lab, tmp_path: Path) -> None:
    unit = "cfxtest-loop.service"
    host.install(
        unit,
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/false\n"
        "Restart=always\nRestartSec=3s\n",
    )
    host.start(unit, block=False)
    # at its first failure NRestarts is still 0: it waits for its first restart, not "0 times"
    first = host.state(unit)
    if first.auto_restarting and first.restarts == 0:
        assert "waits for its first automatic restart" in first.verdict()
        assert "Restart=always in 3s" in first.verdict()
    retry(lambda: host.state(unit).sub_state == "auto-restart" and host.state(unit).restarts > 0)
    output = _refused(roll(clean_lab, tmp_path, inventory(clean_lab, tmp_path, unit)), tmp_path)
    assert f"service {unit} is in a crash loop (activating/auto-restart, restarted" in output
    assert "restarted 0 time(s)" not in output
    assert "rerun with --include-failed" in output


def test_a_crash_looping_simple_unit_caught_while_active_is_refused(
    host: Host, clean_lab: Lab, tmp_path: Path
) -> None:
    """A Type=simple unit that runs 0.8 s, crashes, and is restarted after 0.3 s reads
    `active` most of the time: caught in that window, the preflight watches it (NRestarts
    > 0), sees systemd restart it again, and refuses it as a crash loop. A stable unit
    with NRestarts > 0 passes, with a warning."""
    unit = "cfxtest-flap.service"
    host.install(
        unit,
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nType=simple\n"
        "ExecStart=/bin/sh -c 'sleep 0.8; exit 1'\nRestart=always\nRestartSec=300ms\n",
    )
    host.start(unit)
    retry(lambda: host.state(unit).restarts >= 1 and host.state(unit).active_state == "active")
    output = _refused(roll(clean_lab, tmp_path, inventory(clean_lab, tmp_path, unit)), tmp_path)
    assert f"service {unit} is in a crash loop: it read active between two crashes" in output
    assert "rerun with --include-failed" in output


def test_a_unit_restarted_by_systemd_once_then_stable_passes_with_a_warning(
    host: Host, clean_lab: Lab, tmp_path: Path
) -> None:
    unit = "cfxtest-once.service"
    host.install(
        unit,
        "[Service]\nType=simple\nExecStart=/bin/sh -c"
        " 'if [ -e /run/cfxtest-crashed ]; then exec sleep infinity; fi;"
        " touch /run/cfxtest-crashed; exit 1'\nRestart=on-failure\nRestartSec=200ms\n",
    )
    host.files.append("/run/cfxtest-crashed")
    host.start(unit, block=False)
    retry(lambda: host.state(unit).restarts == 1 and host.state(unit).sub_state == "running")
    result = connfix_run(
        "restart",
        inventory(clean_lab, tmp_path, unit),
        tmp_path / "incidents",
        "--hosts",
        "app1",
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    plan = next(e for e in of(events(tmp_path / "incidents"), "plan") if e.get("details"))
    (check,) = plan["details"]["preflight"]
    assert check["ok"] and "NRestarts=1 (systemd restarted it by itself" in check["detail"]
    assert "NRestarts=1" in result.output


def test_inactive_activating_and_reloading_units_are_refused(
    host: Host, clean_lab: Lab, tmp_path: Path
) -> None:
    host.install("cfxtest-stopped.service", TYPES["simple"])  # never started: inactive
    host.install(  # never says it is ready: stays activating
        "cfxtest-starting.service",
        "[Service]\nType=notify\nTimeoutStartSec=60s\nExecStart=/bin/sleep infinity\n",
    )
    host.install(
        "cfxtest-reloading.service",
        "[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/sleep 30\n",
    )
    host.start("cfxtest-starting.service", block=False)
    host.start("cfxtest-reloading.service")
    clean_lab.systemctl(1, "reload", "--no-block", "cfxtest-reloading.service")
    retry(lambda: host.state("cfxtest-reloading.service").active_state == "reloading")
    retry(lambda: host.state("cfxtest-starting.service").active_state == "activating")
    expected = {
        "cfxtest-stopped.service": "is inactive (inactive/dead), not active (stopped, not failed",
        "cfxtest-starting.service": "is activating (activating/start), not settled: wait for it",
        "cfxtest-reloading.service": "is reloading (reloading/reload), not settled: wait",
    }
    for number, (unit, words) in enumerate(expected.items()):
        before = host.state(unit)
        directory = tmp_path / str(number)
        output = _refused(
            roll(clean_lab, directory, inventory(clean_lab, directory, unit)), directory
        )
        assert f"app1: service {unit} {words}" in output, output
        assert host.state(unit).invocation_id == before.invocation_id


def test_inventory_check_says_a_failed_unit_but_counts_it_present(
    host: Host, clean_lab: Lab, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from connfix.cli import cli

    unit = "cfxtest-broken.service"
    host.install(unit, BROKEN)
    host.flag("/run/cfxtest-broken")
    host.start(unit)
    retry(lambda: host.state(unit).active_state == "failed")
    inv = inventory(clean_lab, tmp_path, unit)
    result = CliRunner().invoke(cli, ["inventory", "check", "lab", "-i", str(inv)])
    row = next(line for line in result.output.splitlines() if line.startswith("│ app1 "))
    assert "has failed (failed/failed" in row and "│ ok " in row  # present, and said
    missing = inventory(clean_lab, tmp_path / "m", "cfxtest-nosuch.service")
    result = CliRunner().invoke(cli, ["inventory", "check", "lab", "-i", str(missing)])
    assert result.exit_code != 0
    assert "service cfxtest-nosuch.service not found (LoadState=not-found)" in result.output


# ---------------------------------------------------------------- several units per host

TEMPLATE = "[Service]\nExecStart=/bin/sleep infinity\n"


@pytest.mark.parametrize("how", ["pattern", "list"])
def test_template_instances_are_each_restarted_and_gated(
    host: Host, clean_lab: Lab, tmp_path: Path, how: str
) -> None:
    host.install("cfxtest@.service", TEMPLATE)
    instances = [f"cfxtest@{i}.service" for i in range(1, 5)]
    host.start(*instances)
    host.install("cfxtest-other@.service", TEMPLATE)
    host.start("cfxtest-other@1.service")  # not the service's: never restarted
    before = {u: host.state(u) for u in [*instances, "cfxtest-other@1.service"]}
    if how == "pattern":
        inv = inventory(clean_lab, tmp_path, "cfxtest@*.service")
    else:
        inv = inventory(clean_lab, tmp_path, instances[0], units=instances[1:])
    result = roll(clean_lab, tmp_path, inv, "--settle", "500ms")
    assert result.exit_code == 0, result.output
    (done,) = of(events(tmp_path / "incidents"), "host_done")
    assert [u["unit"] for u in done["units"]] == instances
    for unit in instances:
        assert host.state(unit).started_since(before[unit])
        assert f"host 1/1 app1 {unit}: restarting (sudo -n systemctl restart {unit})" in (
            result.output
        )
    other = host.state("cfxtest-other@1.service")
    assert other.invocation_id == before["cfxtest-other@1.service"].invocation_id


def test_a_pattern_that_matches_nothing_is_refused(
    host: Host, clean_lab: Lab, tmp_path: Path
) -> None:
    inv = inventory(clean_lab, tmp_path, "cfxtest-none@*.service")
    output = _refused(roll(clean_lab, tmp_path, inv), tmp_path)
    assert "app1: no unit on this host matches 'cfxtest-none@*.service'" in output


# ---------------------------------------------------------------- failing after "success"

DIES = (
    "[Service]\n"
    "ExecStart=/bin/sh -c 'if [ -e /run/cfxtest-die ]; then sleep 1; exit 1; fi;"
    " exec sleep infinity'\n"
)


def dies_when_restarted(host: Host, unit: str) -> None:
    """Start the DIES unit past its check, then arm it: only a restarted one will die."""
    host.install(unit, DIES)
    host.start(unit)
    host.running(unit, "sleep")
    host.flag("/run/cfxtest-die")


def test_restart_exits_0_then_the_unit_fails_a_second_later_settle_gate(
    host: Host, clean_lab: Lab, tmp_path: Path
) -> None:
    unit = "cfxtest-dies.service"
    dies_when_restarted(host, unit)
    result = roll(clean_lab, tmp_path, inventory(clean_lab, tmp_path, unit), "--settle", "3s")
    assert result.exit_code == 1, result.output
    (failed,) = of(events(tmp_path / "incidents"), "host_failed")
    assert failed["gate"] == "settle"
    assert f"within 3s of its start: service {unit} has failed" in failed["detail"]
    assert failed["gates"]["restart"] < 1  # systemctl restart itself said nothing
    assert "| app1 | FAILED at settle |" in assert_complete(tmp_path / "incidents", "halted")


def test_a_unit_that_fails_during_the_later_gates_is_caught_before_the_next_host(
    host: Host, clean_lab: Lab, tmp_path: Path
) -> None:
    """No settle wait, but the health check takes 2s: the unit has died by the end, and
    the still-active check catches it."""
    unit = "cfxtest-dies.service"
    dies_when_restarted(host, unit)
    inv = inventory(clean_lab, tmp_path, unit, health_check="sleep 2")
    result = roll(clean_lab, tmp_path, inv, "--settle", "0s")
    assert result.exit_code == 1, result.output
    (failed,) = of(events(tmp_path / "incidents"), "host_failed")
    assert failed["gate"] == "still_active"
    assert f"after the gates: service {unit} has failed" in failed["detail"]


def test_a_unit_at_its_start_limit_fails_the_restart_with_systemds_words(
    host: Host, clean_lab: Lab, tmp_path: Path
) -> None:
    """Restarted too often (StartLimitBurst): systemd refuses the start; connfix halts at
    the restart gate with what systemctl and the unit say."""
    unit = "cfxtest-limited.service"
    host.install(
        unit,
        "[Unit]\nStartLimitIntervalSec=60s\nStartLimitBurst=1\n"
        "[Service]\nType=notify\nNotifyAccess=all\n"
        "ExecStart=/bin/sh -c 'systemd-notify --ready; exec sleep infinity'\n",
    )
    host.start(unit)
    result = roll(clean_lab, tmp_path, inventory(clean_lab, tmp_path, unit))
    assert result.exit_code == 1, result.output
    (failed,) = of(events(tmp_path / "incidents"), "host_failed")
    assert failed["gate"] == "restart"
    assert "start of the service was attempted too often" in failed["output_tail"]
    assert (
        f"service {unit} has failed (failed/failed, Result=start-limit-hit)" in (failed["detail"])
    )


# ---------------------------------------------------------------- sudo's permission probe


def test_probe_runs_as_the_commands_target_user_on_real_sudo(
    host: Host, clean_lab: Lab, tmp_path: Path
) -> None:
    """deploy may run the command as labapp only: the probe must ask as labapp. Dry runs:
    the preflight's verdict is what is tested (systemctl as labapp could not restart)."""
    unit = "cfxtest-simple.service"
    host.install(unit, TYPES["simple"])
    host.start(unit)
    # only as labapp: a probe that dropped -u would ask as root and be told no
    host.sudoers(
        "deploy ALL=(labapp) NOPASSWD: /usr/bin/systemctl restart cfxtest-simple.service\n"
    )
    for index, command in enumerate(
        [
            "sudo -n -u labapp systemctl restart {unit}",
            "sudo -n --user=labapp systemctl restart {unit}",
            "sudo -nulabapp systemctl restart {unit}",
            "sudo --user labapp -n -C 3 systemctl restart {unit}",
        ]
    ):
        directory = tmp_path / str(index)
        inv = inventory(clean_lab, directory, unit, restart_command=command)
        result = connfix_run(
            "restart", inv, directory / "incidents", "--hosts", "app1", "--dry-run"
        )
        assert result.exit_code == 0, (command, result.output)
        plan = of(events(directory / "incidents"), "plan")[-1]
        (check,) = plan["details"]["preflight"]
        assert check["permitted"] is True, command
    # as root, the same rule does not allow it: not permitted, and said
    as_root = "sudo -n -u root systemctl restart {unit}"
    inv = inventory(clean_lab, tmp_path / "root", unit, restart_command=as_root)
    result = connfix_run(
        "restart", inv, tmp_path / "root" / "incidents", "--hosts", "app1", "--yes"
    )
    output = _refused(result, tmp_path / "root")
    assert "the restart command is not permitted: sudo -n -l -u root -- systemctl restart" in output


def test_listpw_always_is_said_as_cannot_check_and_the_roll_goes_on(
    host: Host, clean_lab: Lab, tmp_path: Path
) -> None:
    unit = "cfxtest-simple.service"
    host.install(unit, TYPES["simple"])
    host.start(unit)
    before = host.state(unit)
    host.sudoers(RULE + "Defaults:deploy listpw=always\n")
    result = roll(clean_lab, tmp_path, inventory(clean_lab, tmp_path, unit), "--settle", "500ms")
    assert result.exit_code == 0, result.output
    plan = of(events(tmp_path / "incidents"), "plan")[-1]
    (check,) = plan["details"]["preflight"]
    assert check["permitted"] is None and check["ok"]
    assert "cannot check without a password" in check["detail"]
    assert "app1: cannot check without a password" in result.output
    assert host.state(unit).started_since(before)


def test_the_lab_deploy_user_may_restart_the_app_and_nothing_else(
    clean_lab: Lab, lab_env: Any
) -> None:
    """The production default on a real host: `sudo -n systemctl restart UNIT`, permitted by
    a sudoers rule for exactly that command, for a user who is not root."""
    from connfix.hosts import remote

    conn = remote.Remote(lab_env.hosts[1], lab_env.ssh)
    try:
        assert conn.run("id -un").stdout.strip() == "deploy"
        assert conn.run("sudo -n -l -- systemctl restart labapp.service").ok
        for other in ("systemctl stop labapp.service", "systemctl restart ssh.service", "id"):
            denied = conn.run(f"sudo -n {other}")
            assert denied.exit_code == 1, other
            assert "password is required" in denied.stderr
        assert json.loads(conn.run("curl -fsS http://127.0.0.1:8080/health").stdout)["ok"]
        assert shlex.split(lab_env.service.restart_argv()) == [
            "sudo",
            "-n",
            "systemctl",
            "restart",
            "labapp.service",
        ]
    finally:
        conn.close()
