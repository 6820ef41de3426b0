"""The incident lab: real PostgreSQL, real sshd per namespace, real apps; and `down`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from connfix.lab import cgroups, paths
from connfix.lab import lab as core
from connfix.lab.status import status as lab_status
from tests.helpers import LAB_HOSTS, LAB_POOL_SIZE, Lab, retry


def test_each_host_holds_its_pool_from_its_own_address(clean_lab: Lab) -> None:
    backends = [b for b in clean_lab.client_backends() if b["application_name"] == "labapp"]
    by_addr = Counter(b["client_addr"] for b in backends)
    assert by_addr == {paths.host_address(i): LAB_POOL_SIZE for i in range(1, LAB_HOSTS + 1)}


def test_status_matches_pg_stat_activity(clean_lab: Lab) -> None:
    clean_lab.core.leak("app2", 2, idle_in_transaction=False)
    clean_lab.core.leak("app3", 1, idle_in_transaction=True)
    status = lab_status()
    assert status.up and not status.problems
    assert status.server_version.startswith(str(clean_lab.version))
    backends = clean_lab.client_backends()
    by_addr = Counter(b["client_addr"] for b in backends)
    for host in status.hosts:
        assert host.backends == by_addr[host.address]
        assert host.pool == LAB_POOL_SIZE
    app2, app3 = status.hosts[1], status.hosts[2]
    assert (app2.backends, app2.leaked, app2.idle) == (5, 2, 5)
    assert (app3.backends, app3.leaked, app3.idle_in_transaction) == (4, 1, 1)
    states = Counter(b["state"] for b in backends if b["client_addr"] == app3.address)
    assert states["idle in transaction"] == 1


def test_leak_of_an_unknown_host_is_refused(lab: Lab) -> None:
    with pytest.raises(core.LabError, match="no lab host 'app9'"):
        core.leak("app9", 1, idle_in_transaction=False)


def test_sudo_systemctl_restart_over_ssh_gives_a_new_main_pid(clean_lab: Lab, lab_env: Any) -> None:
    from connfix.hosts import remote

    conn = remote.Remote(lab_env.hosts[0], lab_env.ssh)
    try:
        before = conn.run("systemctl show -p MainPID --value labapp.service")
        assert before.ok and int(before.stdout) > 0
        restarted = conn.run(lab_env.service.restart_argv())
        assert restarted.ok, restarted.describe()
        after = conn.run("systemctl show -p MainPID --value labapp.service")
        assert int(after.stdout) not in (0, int(before.stdout))
        health = lab_env.service.health_check
        retry(lambda: conn.run(health).ok)
        assert conn.run("systemctl is-active labapp.service").stdout.strip() == "active"
    finally:
        conn.close()


def test_a_host_runs_only_its_own_services(lab: Lab, lab_env: Any) -> None:
    """A lab host boots the machine's own systemd configuration: every service a package
    enabled there (etcd, Patroni, a PostgreSQL, ...) would run on each host too, taking
    CPU from the lab's measurements, unless masked. What runs is what an app host runs."""
    from connfix.hosts import remote

    conn = remote.Remote(lab_env.hosts[0], lab_env.ssh)
    try:
        shown = conn.run("systemctl list-units --type=service --state=running --no-legend --plain")
        assert shown.ok, shown.describe()
    finally:
        conn.close()
    running = {line.split()[0] for line in shown.stdout.splitlines() if line.strip()}
    assert running == {
        "dbus.service",
        "labapp.service",
        "ssh.service",
        "systemd-journald.service",
        "systemd-logind.service",
        "user@2001.service",  # the deploy user's manager, for this very login
    }


def test_up_refuses_a_different_shape_while_up(lab: Lab) -> None:
    with pytest.raises(core.LabError, match="already up with 3 hosts"):
        core.up(hosts=5, max_connections=20, pool_size=3)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _machine() -> dict[str, Any]:
    """What of the machine a lab must leave as it found it: /tmp's entries, every cgroup
    directory (all hierarchies), the cgroup tmpfs, the mounts, the processes."""
    cgroup_dirs = set()
    for hierarchy in cgroups.hierarchies():
        for dirpath, dirnames, _ in os.walk(hierarchy):
            # the suite's own lab lives on (its hosts make and remove session scopes)
            dirnames[:] = [d for d in dirnames if d != "connfix-lab-7"]
            cgroup_dirs.add(dirpath)
    return {
        "tmp": set(os.listdir("/tmp")),
        "cgroup_dirs": cgroup_dirs,
        "cgroup_root": sorted(os.listdir("/sys/fs/cgroup")),
        "mounts": Path("/proc/self/mounts").read_text(),
        "pids": {int(p) for p in os.listdir("/proc") if p.isdigit() and _alive(int(p))},
        "hostname": socket.gethostname(),
    }


def _lab8_pids() -> list[int]:
    state = core.LabState.load()
    assert state is not None
    pg_pid = int(Path(state.pg_data, "postmaster.pid").read_text().split()[0])
    pids = [pg_pid, *state.init_pids.values()]
    pids += cgroups.pids([Path(d) for d in state.cgroups])
    return pids


def test_down_leaves_nothing(monkeypatch: pytest.MonkeyPatch, lab: Lab) -> None:
    """A second, small lab (id 8) beside the suite's: up, up again, down; the machine is
    as before: /tmp, the cgroup hierarchies, the mounts, the processes."""
    monkeypatch.setenv("CONNFIX_LAB_ID", "8")
    core.down()
    before = _machine()
    first = core.up(hosts=2, max_connections=10, pool_size=2)
    assert not first.already_up
    assert core.up(hosts=2, max_connections=10, pool_size=2).already_up  # idempotent
    state = core.LabState.load()
    assert state is not None
    pids = _lab8_pids()
    assert len(set(pids)) >= 1 + 2 * 5  # postgres; per host systemd, journald, sshd, app…
    during = _machine()
    assert during["tmp"] >= before["tmp"]  # a booted host's systemd emptied no real /tmp
    assert during["cgroup_root"] == before["cgroup_root"]
    assert during["hostname"] == before["hostname"]
    made = during["cgroup_dirs"] - before["cgroup_dirs"]
    assert made and all("/connfix-lab-8" in d for d in made)  # only under the lab's own
    lab_dir = paths.lab_dir()

    core.down()

    assert not any(_alive(pid) for pid in pids)
    after = _machine()
    assert after["tmp"] == before["tmp"]
    assert after["cgroup_dirs"] == before["cgroup_dirs"]
    assert after["cgroup_root"] == before["cgroup_root"]
    assert after["mounts"] == before["mounts"]
    assert not (after["pids"] - before["pids"]) & set(pids)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "cfx8-" not in listed
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "cfx8" not in links
    assert not lab_dir.exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", 54328)) != 0
    assert core.down() == []  # nothing left to remove
    # the suite's own lab is untouched
    monkeypatch.setenv("CONNFIX_LAB_ID", "7")
    assert lab_status().up
    assert os.path.isdir(lab.paths.lab_dir())


@pytest.mark.lab  # needs root
def test_down_finds_a_lab_whose_state_directory_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lab's directory removed by hand: `down` finds the rest by the lab's own names."""
    monkeypatch.setenv("CONNFIX_LAB_ID", "8")
    core.down()
    before = _machine()
    core.up(hosts=1, max_connections=10, pool_size=1)
    pids = _lab8_pids()
    shutil.rmtree(paths.lab_dir())
    removed = core.down()
    assert "namespace cfx8-app1" in removed
    assert any(r.startswith("PostgreSQL (pid") for r in removed)
    assert any("host process(es)" in r for r in removed)
    assert not any(_alive(pid) for pid in pids)
    after = _machine()
    assert after["cgroup_dirs"] == before["cgroup_dirs"]
    assert "cfx8" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert not Path("/run/netns/cfx8-app1").exists()
    assert core.down() == []


@pytest.mark.lab  # needs root
@pytest.mark.parametrize("where", ["postgres", "hosts"])
def test_down_after_a_half_built_lab(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A lab whose `up` failed midway (before PostgreSQL, or after the hosts booted) is
    removed by `down` all the same."""
    monkeypatch.setenv("CONNFIX_LAB_ID", "8")
    core.down()
    before = _machine()
    if where == "postgres":
        monkeypatch.setattr(core.lab_pg, "start", _boom)
    else:
        monkeypatch.setattr(core, "_known_hosts", _boom)
    with pytest.raises(core.LabError, match="injected"):
        core.up(hosts=1, max_connections=10, pool_size=1)
    assert Path("/run/netns/cfx8-app1").exists()
    state = core.LabState.load()
    assert state is not None
    booted = list(state.init_pids.values())
    assert bool(booted) == (where == "hosts")
    removed = core.down()
    assert "namespace cfx8-app1" in removed
    assert not Path("/run/netns/cfx8-app1").exists()
    assert not any(_alive(pid) for pid in booted)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "cfx8" not in links
    assert _machine()["cgroup_dirs"] == before["cgroup_dirs"]


def _boom(*args: object) -> None:
    raise core.LabError("injected failure")


@pytest.mark.lab  # needs root
def test_prerequisites_name_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "REQUIRED_FILES", {"/nonexistent/sshd": "openssh-server"})
    with pytest.raises(core.LabError, match="apt-get install -y openssh-server"):
        core.check_prerequisites()


@pytest.mark.lab  # needs root
def test_up_refuses_pools_that_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hosts' pools must fit in max_connections: refused before anything is built."""
    monkeypatch.setenv("CONNFIX_LAB_ID", "8")
    core.down()
    with pytest.raises(core.LabError, match=r"8 hosts × pool size 3 = 24 connections do not fit"):
        core.up(hosts=8, max_connections=20, pool_size=3)
    assert not Path("/run/netns/cfx8-app1").exists()
    assert core.LabState.load() is None
