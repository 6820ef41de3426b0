"""The lab's app hosts: each boots a real systemd in its own namespaces (see boot.py).

Inside every host: `ssh.service` is its sshd (Debian's unit and config, plus a drop-in
with the host's address and key), a non-root `deploy` user logs in with the lab's key
and may run exactly `sudo -n systemctl restart labapp.service`, and the app is the real
unit `labapp.service` (Type=notify, run as its own user, Restart=on-failure) with an HTTP
/health that needs the database. Commands reach a host from the machine through
`nsenter` into its namespaces; files through /proc/PID/root.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from connfix import LabError
from connfix.lab import cgroups, paths
from connfix.lab.paths import APP_PORT, APPLICATION_NAME, UNIT, lab_dir
from connfix.lab.shell import alive, kill_all, run

DEPLOY_USER = "deploy"
APP_USER = "labapp"
USERS = ({"name": DEPLOY_USER, "uid": 2001}, {"name": APP_USER, "uid": 2002})
FAULTS_DIR = "/etc/labapp/faults"
CLIENTS_PGPASS = "/etc/labclients/pgpass"
HOST_KEY = "/etc/ssh/connfix_lab_host_ed25519_key"
TMPFS_SIZE = "512m"
BOOT_TIMEOUT_S = 60.0
# Units Debian enables (or starts on demand) that must not run on a lab host: servers
# the machine runs itself, consoles, timers, and anything that would change the
# machine's kernel, clock or filesystems.
MASKED = (
    "postgresql.service",
    "postgresql@.service",
    "pgbouncer.service",
    "pgbouncer.socket",
    "prometheus.service",
    "prometheus-alertmanager.service",
    "prometheus-node-exporter.service",
    "prometheus-postgres-exporter.service",
    # the HA shape's etcd and Patroni run beside the lab's database, never on an app host
    "etcd.service",
    "patroni.service",
    "patroni@.service",
    "cron.service",
    "getty@.service",
    "getty.target",
    "console-getty.service",
    "container-getty@.service",
    "serial-getty@.service",
    "systemd-timesyncd.service",
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "modprobe@.service",
    "kmod-static-nodes.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "systemd-pstore.service",
    "systemd-remount-fs.service",
    "systemd-fsck-root.service",
    "systemd-random-seed.service",
    "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
    "systemd-repart.service",
    "systemd-quotacheck.service",
    "quotaon.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "fstrim.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "man-db.timer",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "systemd-journald-audit.socket",
    "ssh.socket",
    "rescue-ssh.target",
    # no console and no one to ask: and each holds an inotify instance (see below)
    "systemd-ask-password-console.path",
    "systemd-ask-password-wall.path",
)
# inotify instances a booted host holds as root (its systemd and logind); the machine
# allows fs.inotify.max_user_instances per user (128 by default), for every lab at once
INOTIFY_PER_HOST = 4


@dataclass(frozen=True)
class AppConfig:
    """How the lab app behaves on every host."""

    pool_size: int
    max_overflow: int
    boot_seconds: float
    traffic_seconds: float


def app_unit(python: str) -> str:
    """Return the lab app's unit file."""
    return f"""\
[Unit]
Description=connfix lab app: a pooled PostgreSQL client with an HTTP health check
After=network.target
# the test suite restarts the app far more often than any fleet would: systemd's default
# start limit (5 starts in 10s) would stop it; a real unit keeps the default
StartLimitIntervalSec=10s
StartLimitBurst=1000

[Service]
Type=notify
User={APP_USER}
Group={APP_USER}
Environment=PYTHONDONTWRITEBYTECODE=1
ExecStart={python} -m connfix.lab.app /etc/labapp/app.json
Restart=on-failure
RestartSec=1s
# where the app counts its failed starts (the fail-start fault `times=N`)
RuntimeDirectory=labapp
RuntimeDirectoryPreserve=yes
TimeoutStartSec=30s
TimeoutStopSec=10s

[Install]
WantedBy=multi-user.target
"""


def _write(root: Path, path: str, text: str, mode: int = 0o644) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)
    return target


def runtime_paths() -> tuple[list[str], list[str]]:
    """Return what the app's Python needs that the host's overlay does not show (to
    bind read-only), and the directories on its way that others cannot traverse.

    The overlay shows the root filesystem only: a virtual environment under /tmp (the
    host has its own) or on another mount must be bound in."""
    import connfix

    root_dev = os.stat("/").st_dev
    wanted = {
        Path(sys.prefix),
        Path(os.path.realpath(sys.executable)).parent.parent,
        Path(connfix.__file__).resolve().parent.parent,
    }
    binds, traverse = set(), set()
    hidden = (Path("/tmp"), Path("/run"), Path("/dev"), Path("/proc"), Path("/sys"))
    for path in wanted:
        if any(path == h or h in path.parents for h in hidden) or os.stat(path).st_dev != root_dev:
            binds.add(str(path))
        for parent in [path, *path.parents]:
            if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
                traverse.add(str(parent))
    # a bound directory inside another is bound with it
    kept = [b for b in sorted(binds) if not any(Path(o) in Path(b).parents for o in binds)]
    return kept, sorted(traverse)


# Over 80 lines: the host's own files (hostname, masked units, the app's unit and
# config, its passfile, SSH host key and authorized keys, …) written in one place, each a
# few lines; the boot spec at the end names them.
def seed(
    index: int, app: AppConfig, pg_port: int, app_password_line: str, pooled: bool = False
) -> Path:
    """Write host `index`'s own files and its boot spec; return the spec's path. A pooled
    host's app reaches the database through the lab's PgBouncer (`pg_port` is its)."""
    name = paths.host_name(index)
    hdir = paths.host_dir(name)
    root = hdir / "seed"
    if root.exists():
        shutil.rmtree(root)
    (hdir / "scratch").mkdir(parents=True, exist_ok=True)
    _write(root, "/etc/hostname", f"{name}\n")
    _write(root, "/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost\n")
    _write(root, "/etc/machine-id", secrets.token_hex(16) + "\n", 0o444)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in MASKED:
        (units / unit).symlink_to("/dev/null")
    _write(root, f"/etc/systemd/system/{UNIT}", app_unit(sys.executable))
    wants = units / "multi-user.target.wants"
    wants.mkdir()
    (wants / UNIT).symlink_to(f"/etc/systemd/system/{UNIT}")
    config = {
        "host": name,
        "dsn": (
            f"host={paths.db_address()} port={pg_port} dbname={paths.DATABASE} user=app"
            " passfile=/etc/labapp/pgpass"
        ),
        "pool_size": app.pool_size,
        "max_overflow": app.max_overflow,
        "application_name": APPLICATION_NAME,
        "http_port": APP_PORT,
        "faults_dir": FAULTS_DIR,
        "boot_seconds": app.boot_seconds,
        "traffic_seconds": app.traffic_seconds,
        # behind transaction pooling, statements must not be prepared server-side
        # (PgBouncer < 1.21 cannot carry them from one server connection to another)
        "pooled": pooled,
    }
    _write(root, "/etc/labapp/app.json", json.dumps(config, indent=2) + "\n", 0o640)
    _write(root, "/etc/labapp/pgpass", app_password_line, 0o600)
    # clients that are no service's, run by the deploy user: pgbench, psql, a job
    _write(root, CLIENTS_PGPASS, app_password_line, 0o600)
    _write(root, "/etc/labclients/sleep.sql", "SELECT pg_sleep(0.2);\n")
    (root / FAULTS_DIR.lstrip("/")).mkdir(parents=True)
    key = root / HOST_KEY.lstrip("/")
    key.parent.mkdir(parents=True, exist_ok=True)
    run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"connfix-lab-{name}", "-f", str(key)]
    )
    (hdir / "ssh_host_ed25519_key.pub").write_text(Path(f"{key}.pub").read_text())
    client_pub = (lab_dir() / "ssh" / "id_ed25519.pub").read_text()
    _write(root, f"/etc/ssh/authorized_keys/{DEPLOY_USER}", client_pub)
    _write(
        root,
        "/etc/ssh/sshd_config.d/connfix-lab.conf",
        f"# connfix lab host {name}\n"
        f"ListenAddress {paths.host_address(index)}\n"
        f"HostKey {HOST_KEY}\n"
        "AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys/%u\n"
        "PasswordAuthentication no\nPermitRootLogin no\nUseDNS no\n"
        "MaxSessions 50\nMaxStartups 100:30:200\n",
    )
    _write(
        root,
        "/etc/sudoers.d/connfix-lab",
        f"# the deploy user may restart the app and read its last log lines, nothing else\n"
        f"{DEPLOY_USER} ALL=(root) NOPASSWD: /usr/bin/systemctl restart {UNIT}\n"
        f"{DEPLOY_USER} ALL=(root) NOPASSWD: /usr/bin/journalctl -u {UNIT} -n 20"
        " --no-pager -o short-iso\n",
        0o440,
    )
    binds, traverse = runtime_paths()
    spec = {
        "namespace": paths.namespace(index),
        "cgroups": cgroups.procs_files(name),
        "scratch": str(hdir / "scratch"),
        "tmpfs_size": TMPFS_SIZE,
        "seed": str(root),
        "users": list(USERS),
        "owned": [
            ["/etc/labapp", f"root:{APP_USER}", "0750"],
            ["/etc/labapp/pgpass", f"{APP_USER}:{APP_USER}", "0600"],
            [CLIENTS_PGPASS, f"{DEPLOY_USER}:{DEPLOY_USER}", "0600"],
        ],
        "traversable": traverse,
        "runtime": binds,
        "log": str(hdir / "boot.log"),
    }
    path = hdir / "boot.json"
    path.write_text(json.dumps(spec, indent=2))
    return path


def inotify_instances(uid: int = 0) -> int:
    """Return how many inotify instances the processes of a user hold on the machine."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) == "anon_inode:inotify":
                    count += 1
        except OSError:
            continue
    return count


def check_inotify(hosts: int) -> None:
    """Refuse, before anything is built, a lab the machine's inotify limit cannot boot.

    Every host's systemd needs a few inotify instances, counted against root's
    fs.inotify.max_user_instances: past it, a host boots with failed units. The lab does
    not change the machine's limit; it says how."""
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    used = inotify_instances()
    needed = hosts * INOTIFY_PER_HOST
    suggested = max(512, 2 * (used + needed))
    if used + needed > limit:
        raise LabError(
            f"{hosts} hosts need about {needed} inotify instances (their systemd), and"
            f" root already holds {used} of fs.inotify.max_user_instances={limit}: raise"
            f" it first, e.g. `sysctl -w fs.inotify.max_user_instances={suggested}`"
            " (the lab does not change the machine's settings)"
        )


def boot(index: int, spec: Path) -> int:
    """Start host `index`'s systemd; return its pid as the machine sees it."""
    proc = run([sys.executable, "-m", "connfix.lab.boot", str(spec)], timeout=30)
    pid = proc.stdout.strip()
    if not pid.isdigit():
        raise LabError(f"{paths.host_name(index)} did not boot: {proc.stdout} {proc.stderr}")
    return int(pid)


def enter(
    pid: int, argv: list[str], *, check: bool = True, timeout: float = 60, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command inside a host (all of its namespaces and its root)."""
    prefix = ["nsenter", "-t", str(pid), "-m", "-p", "-u", "-n", "-r", "-w"]
    if user:
        prefix += ["runuser", "-u", user, "--"]
    return run([*prefix, *argv], check=check, timeout=timeout)


def systemctl(pid: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the host's own systemctl."""
    return enter(pid, ["systemctl", *args], check=check)


def wait_running(name: str, pid: int, timeout: float = BOOT_TIMEOUT_S) -> None:
    """Wait until the host's systemd has finished booting with no failed unit."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive(pid):
            log = paths.host_dir(name) / "boot.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise LabError(f"{name}: its systemd exited while booting: {tail.strip()}")
        proc = enter(pid, ["systemctl", "is-system-running"], check=False, timeout=10)
        state = proc.stdout.strip()
        if state == "running":
            return
        if state == "degraded":
            failed = systemctl(pid, "--failed", "--plain", "--no-legend", check=False).stdout
            raise LabError(f"{name}: booted with failed units: {failed.strip()}")
        if time.monotonic() > deadline:
            raise LabError(f"{name}: not booted after {timeout:.0f}s (state {state or '?'})")
        time.sleep(0.05)


def file_in(pid: int, path: str) -> Path:
    """Return the path of a file inside a host, as the machine reaches it."""
    return Path(f"/proc/{pid}/root") / path.lstrip("/")


def stop(pids: list[int]) -> None:
    """Stop hosts: killing a host's PID 1 ends every process of its PID namespace."""
    kill_all(pids, grace=0)
