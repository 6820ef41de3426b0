"""Build, inspect, leak into and remove the incident lab.

Everything `up` makes is recorded in state.json as it is made, so `down` removes exactly
that (and a half-built lab too). A lab whose state directory is gone is found by its own
names (namespaces, links, cgroups, the data directory on its server's command line),
never by a broad match.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from connfix import LabError, LabInputError
from connfix.config import files
from connfix.lab import cgroups, managed, network, paths
from connfix.lab import hosts as lab_hosts
from connfix.lab import patroni as lab_patroni
from connfix.lab import pgbouncer as lab_bouncer
from connfix.lab import postgres as lab_pg
from connfix.lab.managed import EMULATED
from connfix.lab.paths import APP_PORT, APPLICATION_NAME, UNIT, lab_dir
from connfix.lab.postgres import bootstrap_dsn, dsn, passfile
from connfix.lab.shell import alive, kill_all, run
from connfix.lab.state import LabState

__all__ = [
    "LabError",
    "LabState",
    "bootstrap_dsn",
    "dsn",
    "passfile",
]

REQUIRED_TOOLS = {
    "ip": "iproute2",
    "ssh-keygen": "openssh-client",
    "sudo": "sudo",
    "curl": "curl",
    "runuser": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
    "useradd": "passwd",
}
REQUIRED_FILES = {"/usr/sbin/sshd": "openssh-server", "/lib/systemd/systemd": "systemd"}


def check_prerequisites() -> None:
    """Check root and the Debian packages the lab uses."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (namespaces, cgroups, systemd hosts): run it as root")
    missing = {pkg for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)}
    missing |= {pkg for path, pkg in REQUIRED_FILES.items() if not Path(path).is_file()}
    if missing:
        raise LabError(
            "the lab needs Debian packages that are not installed: "
            + ", ".join(sorted(missing))
            + f"\n  install them with: apt-get install -y {' '.join(sorted(missing))}"
        )
    if not cgroups.hierarchies():
        raise LabError("no cgroup hierarchy is mounted under /sys/fs/cgroup")


def _keygen(path: Path, comment: str) -> None:
    if not path.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _known_hosts(hosts: int) -> None:
    lines = []
    for index in range(1, hosts + 1):
        pub = (paths.host_dir(paths.host_name(index)) / "ssh_host_ed25519_key.pub").read_text()
        keytype, blob = pub.split()[:2]
        lines.append(f"{paths.host_address(index)} {keytype} {blob}\n")
    (lab_dir() / "ssh" / "known_hosts").write_text("".join(lines))


def app_request(index: int, path: str, method: str = "GET", timeout: float = 5) -> Any:
    """Call a lab app's HTTP endpoint from the root namespace; return its JSON."""
    url = f"http://{paths.host_address(index)}:{APP_PORT}{path}"
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()
        raise LabError(f"{url}: HTTP {exc.code} {body}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise LabError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def _wait_healthy(hosts: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for index in range(1, hosts + 1):
        while True:
            try:
                app_request(index, "/health", timeout=2)
                break
            except LabError as exc:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"the app on {paths.host_name(index)} did not become healthy: {exc}"
                    ) from None
                time.sleep(0.05)


def write_inventory(
    hosts_count: int,
    pool_size: int,
    pg_major: int,
    max_overflow: int = 0,
    pgbouncer_hosts: int = 0,
    ha: bool = False,
) -> Path:
    """Write the inventory of environment `lab`, checked against the inventory's records."""
    import yaml

    from connfix.config.inventory import Inventory

    ssh_dir = lab_dir() / "ssh"
    database: dict[str, Any] = {
        "dsn": dsn("connfix"),
        "admin_dsn": dsn("connfix_admin", "127.0.0.1"),
        "admin_dsn_env": "CONNFIX_LAB_ADMIN_DSN",
        "connect_timeout": "3s",
        "statement_timeout": "5s",
    }
    if pg_major >= 16:
        database["reserved_dsn"] = dsn("connfix_reserved")
    if ha:  # the nodes are found through Patroni: any member's REST API answers
        database["patroni"] = {"urls": [lab_patroni.rest_url(n) for n in lab_patroni.NODES]}
    env = {
        "description": f"connfix incident lab ({hosts_count} hosts)",
        "database": database,
        "service": {
            "unit": UNIT,
            "pool_size": pool_size,
            "max_overflow": max_overflow,
            "application_name": APPLICATION_NAME,
            "user": "app",
            "restart_command": "sudo -n systemctl restart {unit}",
            "health_check": f"curl -fsS --max-time 2 http://127.0.0.1:{APP_PORT}/health",
            "health_timeout": "30s",
        },
        "ssh": {
            "user": lab_hosts.DEPLOY_USER,
            "port": 22,
            "identity_file": str(ssh_dir / "id_ed25519"),
            "known_hosts_file": str(ssh_dir / "known_hosts"),
            "connect_timeout": "5s",
            "command_timeout": "60s",
        },
        "hosts": [
            {
                "name": paths.host_name(i),
                "ssh_address": paths.host_address(i),
                "db_address": paths.host_address(i),
            }
            for i in range(1, hosts_count + 1)
        ],
        "thresholds": {"warning": 0.8, "critical": 0.95, "buffer": 2},
    }
    if pgbouncer_hosts:
        env["pgbouncers"] = [
            {
                "name": lab_bouncer.NAME,
                "admin_dsn": (
                    f"host={paths.db_address()} port={paths.pgbouncer_port()} dbname=pgbouncer"
                    f" user=connfix passfile={passfile()}"
                ),
            }
        ]
    data = {"version": 1, "environments": {"lab": env}}
    Inventory.validate(data)  # what connfix writes, connfix reads
    text = (
        "# Written by `connfix lab up`: the incident lab's environment. Passwords are in\n"
        "# the lab's passfile, never here. An admin DSN in $CONNFIX_LAB_ADMIN_DSN takes\n"
        "# precedence over admin_dsn.\n" + yaml.safe_dump(data, sort_keys=False)
    )
    path = lab_dir() / "inventory.yaml"
    path.write_text(text)
    return path


@dataclass(frozen=True)
class UpResult:
    """What `lab up` did."""

    already_up: bool
    hosts: int
    max_connections: int
    pool_size: int
    inventory: Path
    seconds: float
    pg_major: int = 0
    reserved_connections: int = 0
    pgbouncer_hosts: int = 0
    pgbouncer_version: str = ""


SUPERUSER_RESERVED = 3  # PostgreSQL's default superuser_reserved_connections
HEADROOM = 11  # free slots above the hosts' pools: room for a leak to fill (20 with 3×3)


def default_max_connections(hosts: int, pool_size: int) -> int:
    """Return 20, or more when the hosts' pools and some headroom need it."""
    return max(20, hosts * pool_size + HEADROOM)


def _checked_flags(
    hosts: int,
    max_connections: int | None,
    pool_size: int,
    boot_seconds: float,
    traffic_seconds: float,
    max_overflow: int,
    pgbouncer_hosts: int,
    pgbouncer_version: str,
    ha: bool,
    standby_hosts: int,
) -> int:
    """Refuse a flag the lab cannot build (nothing is built yet); return max_connections,
    the default filled in."""
    if not 1 <= hosts <= 200:
        raise LabInputError("--hosts must be between 1 and 200")
    if not 1 <= pool_size <= 1000:
        raise LabInputError("--pool-size must be between 1 and 1000")
    if not 0 <= max_overflow <= 1000:
        raise LabInputError("--max-overflow must be between 0 and 1000")
    if ha and max_connections is not None and max_connections < lab_patroni.MIN_MAX_CONNECTIONS:
        raise LabInputError(
            f"--max-connections {max_connections}: Patroni starts PostgreSQL with 100 instead"
            f" of a value below {lab_patroni.MIN_MAX_CONNECTIONS}; give"
            f" {lab_patroni.MIN_MAX_CONNECTIONS} or more with --ha"
        )
    if max_connections is None:
        max_connections = default_max_connections(hosts, pool_size)
        if ha:
            max_connections = max(max_connections, lab_patroni.MIN_MAX_CONNECTIONS)
    if not 5 <= max_connections <= 10_000:
        raise LabInputError("--max-connections must be between 5 and 10000")
    if not 0 <= boot_seconds <= 60:
        raise LabInputError("--app-boot must be between 0s and 60s")
    if not 0 <= pgbouncer_hosts <= hosts:
        raise LabInputError(f"--pgbouncer-hosts must be between 0 and --hosts ({hosts})")
    if pgbouncer_version not in lab_bouncer.VERSIONS:
        raise LabInputError(
            f"--pgbouncer-version must be one of {', '.join(lab_bouncer.VERSIONS)},"
            f" not {pgbouncer_version!r}"
        )
    if not (traffic_seconds == 0 or 0.1 <= traffic_seconds <= 600):
        raise LabInputError("--app-traffic must be 0 (none) or between 100ms and 10m")
    if standby_hosts and not ha:
        raise LabInputError("--standby-hosts needs --ha (a standby to read from)")
    if not 0 <= standby_hosts <= hosts:
        raise LabInputError(f"--standby-hosts must be between 0 and --hosts ({hosts})")
    if ha and pgbouncer_hosts:
        raise LabInputError("--ha and --pgbouncer cannot be combined in the lab yet")
    return max_connections


# Over 80 lines: the checks that need the server's version, the idempotent answer when
# the same lab is up, then the build in order (network, PostgreSQL or the HA cluster,
# PgBouncer, hosts, inventory), each stage a call; split further it would only pass
# state along.
def up(
    hosts: int,
    max_connections: int | None,
    pool_size: int,
    boot_seconds: float = 0.5,
    postgres: str | None = None,
    reserved_connections: int = 2,
    traffic_seconds: float = 1.0,
    max_overflow: int = 2,
    pgbouncer_hosts: int = 0,
    pgbouncer_version: str = lab_bouncer.DEFAULT_VERSION,
    ha: bool = False,
    standby_hosts: int = 0,
) -> UpResult:
    """Build the lab, or confirm the one that is up matches; idempotent. With
    pgbouncer_hosts, the first that many hosts reach the database through the lab's
    PgBouncer (all of them: a fleet behind a pooler; some: a migration), of
    `pgbouncer_version` (1.18: Debian's; 1.24, 1.25: built from their release sources)."""
    started = time.monotonic()
    max_connections = _checked_flags(
        hosts,
        max_connections,
        pool_size,
        boot_seconds,
        traffic_seconds,
        max_overflow,
        pgbouncer_hosts,
        pgbouncer_version,
        ha,
        standby_hosts,
    )
    check_prerequisites()
    if ha and lab_patroni.unavailable():
        raise LabError(str(lab_patroni.unavailable()))
    if pgbouncer_hosts:
        why = lab_bouncer.unavailable(pgbouncer_version)
        if why:
            raise LabError(why)
    pg_bin = lab_pg.resolve_postgres(postgres)
    major = lab_pg.pg_major(pg_bin)
    if not 0 <= reserved_connections <= max_connections // 2:
        raise LabInputError("--reserved-connections must be between 0 and half of max_connections")
    usable = max_connections - SUPERUSER_RESERVED - (reserved_connections if major >= 16 else 0)
    if hosts * pool_size + 2 > usable:
        raise LabInputError(
            f"{hosts} hosts × pool size {pool_size} = {hosts * pool_size} connections do not"
            f" fit in max_connections {max_connections} ({usable} for ordinary roles, and"
            f" connfix needs 2); use --max-connections {hosts * pool_size + HEADROOM}"
            " or more"
        )
    state = LabState.load()
    if state is None or not state.complete:
        lab_hosts.check_inotify(hosts)
    if state is not None:
        if state.complete and not problems(state):
            version = pgbouncer_version if pgbouncer_hosts else ""
            wanted = (hosts, max_connections, pool_size, major, pgbouncer_hosts, version, ha)
            have = (
                state.hosts,
                state.max_connections,
                state.pool_size,
                state.pg_major,
                state.pgbouncer_hosts,
                state.pgbouncer_version if state.pgbouncer_hosts else "",
                state.ha,
            )
            if wanted != have:
                raise LabError(
                    f"the lab is already up with {state.hosts} hosts, max_connections"
                    f" {state.max_connections}, pool size {state.pool_size}, PostgreSQL"
                    f" {state.pg_major}, {state.pgbouncer_hosts} host(s) behind PgBouncer"
                    + (f" {state.pgbouncer_version}" if state.pgbouncer_hosts else "")
                    + (", two nodes under Patroni" if state.ha else "")
                    + ";"
                    " run `connfix lab down` first to build a different one"
                )
            return UpResult(
                True,
                hosts,
                max_connections,
                pool_size,
                lab_dir() / "inventory.yaml",
                time.monotonic() - started,
                state.pg_major,
                state.reserved_connections,
                state.pgbouncer_hosts,
                state.pgbouncer_version,
            )
        down()  # half-built or broken: start over from nothing
    root = lab_dir()
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    state = LabState(
        hosts=hosts,
        max_connections=max_connections,
        pool_size=pool_size,
        pg_major=major,
        reserved_connections=reserved_connections if major >= 16 else 0,
        pgbouncer_hosts=pgbouncer_hosts,
        pgbouncer_version=pgbouncer_version if pgbouncer_hosts else "",
        ha=ha,
        standby_hosts=standby_hosts,
    )
    state.save()
    (root / "ssh").mkdir(mode=0o700, exist_ok=True)
    _keygen(root / "ssh" / "id_ed25519", "connfix-lab-client")
    network.build(state, hosts)
    if ha:
        _start_ha(state, pg_bin, max_connections, reserved_connections, major)
    else:
        lab_pg.start(state, pg_bin, max_connections, reserved_connections)
    if pgbouncer_hosts:
        _start_pgbouncer(state, pool_size, max_overflow)
    app = lab_hosts.AppConfig(pool_size, max_overflow, boot_seconds, traffic_seconds)
    _boot_hosts(state, hosts, app)
    _known_hosts(hosts)
    _wait_healthy(hosts)
    inventory = write_inventory(hosts, pool_size, major, max_overflow, pgbouncer_hosts, ha)
    state.complete = True
    state.save()
    return UpResult(
        False,
        hosts,
        max_connections,
        pool_size,
        inventory,
        time.monotonic() - started,
        major,
        state.reserved_connections,
        pgbouncer_hosts,
        state.pgbouncer_version,
    )


def _start_ha(
    state: LabState, pg_bin: Path, max_connections: int, reserved: int, major: int
) -> None:
    """The HA shape: etcd and two nodes under Patroni, then the lab's roles created on the
    primary (they replicate to the standby)."""
    lab_patroni.start(state, pg_bin, max_connections, reserved, major)
    state.pg_started = False  # Patroni runs the servers: `lab down` stops Patroni
    state.save()
    primary = lab_patroni.NODES[0]
    lab_pg.bootstrap(
        lab_patroni.superuser_dsn(primary),
        [lab_patroni.node_port(n) for n in lab_patroni.NODES],
        major,
    )


def _start_pgbouncer(state: LabState, pool_size: int, max_overflow: int) -> None:
    """Start the lab's PgBouncer with the SCRAM verifiers of the roles it serves; the
    lab's passfile gets lines for its port."""
    with psycopg.connect(lab_pg.bootstrap_dsn(), autocommit=True) as conn:
        verifiers = {
            str(role): str(secret)
            for role, secret in conn.execute(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('app', 'connfix')"
            ).fetchall()
        }
    lines = passfile().read_text().splitlines()
    port = str(paths.pg_port())
    extra = [
        ":".join([f[0], str(paths.pgbouncer_port()), *f[2:]])
        for f in (line.split(":") for line in lines)
        if f[1] == port and f[3] in verifiers
    ]
    files.write_private(passfile(), "\n".join(lines + extra) + "\n")
    executable = lab_bouncer.binary(state.pgbouncer_version)  # built once, if it must be
    state.pgbouncer_pid = lab_bouncer.start(
        verifiers, state.pgbouncer_hosts, state.pool_size, max_overflow, executable
    )
    state.save()


def use_pgbouncer(version: str) -> int:
    """Put another PgBouncer version in front of the running lab, on the same
    configuration, address and port (its clients reconnect: a pooled connection that
    died is replaced by the app's pool); return the new pid. The lab's PgBouncer is
    stopped by its recorded pid."""
    state = LabState.load()
    if state is None or not state.complete or not state.pgbouncer_hosts:
        raise LabError("no lab with a PgBouncer is up (connfix lab up --pgbouncer)")
    executable = lab_bouncer.binary(version)
    lab_bouncer.stop(state.pgbouncer_pid)
    state.pgbouncer_pid = 0
    state.save()
    state.pgbouncer_pid = lab_bouncer.launch(lab_bouncer.directory(), executable)
    state.pgbouncer_version = version
    state.save()
    return state.pgbouncer_pid


def _boot_hosts(state: LabState, count: int, app: lab_hosts.AppConfig) -> None:
    """Boot every host's systemd, in parallel; wait until each has booted cleanly."""
    app_line = next(
        line for line in passfile().read_text().splitlines() if line.split(":")[3] == "app"
    )
    for index in range(1, count + 1):
        name = paths.host_name(index)
        state.cgroups.extend(str(d) for d in cgroups.make(name))
        state.save()
        pooled = index <= state.pgbouncer_hosts
        port = paths.pgbouncer_port() if pooled else paths.pg_port()
        if state.ha and index > count - state.standby_hosts:
            port = lab_patroni.node_port(lab_patroni.NODES[1])  # reads from the standby
        fields = app_line.split(":")
        line = ":".join([fields[0], str(port), *fields[2:]])
        spec = lab_hosts.seed(index, app, port, line + "\n", pooled)
        state.init_pids[name] = lab_hosts.boot(index, spec)
        state.save()
    with ThreadPoolExecutor(max_workers=min(16, count)) as pool:
        list(pool.map(lambda n: lab_hosts.wait_running(n, state.init_pids[n]), state.init_pids))


def init_pid(name: str) -> int:
    """Return the pid of a running lab host's systemd; refuse if the host is not up."""
    state, _ = _up_host(name)
    pid = state.init_pids.get(name)
    if pid is None or not alive(pid):
        raise LabError(f"lab host {name} is not running (its systemd is gone)")
    return pid


def down() -> list[str]:
    """Remove exactly what the lab made; return what was removed.

    With no state (its directory was removed, or `up` died before writing it), the lab
    is found by its own names: its cgroup directories (every process in them is one of
    its hosts'), its namespaces, links and bridge, and a server whose data directory is
    the lab's."""
    if os.geteuid() != 0:
        raise LabError("lab down needs root, as lab up does (namespaces, cgroups, hosts)")
    state = LabState.load()
    root = lab_dir()
    removed: list[str] = []
    if state is None:
        cg_dirs = cgroups.found_by_name()
        bridge, links, namespaces = network.found_by_name()
        postmasters = lab_pg.orphaned_postmasters(root / "pg" / "data")
    else:
        cg_dirs = [Path(d) for d in state.cgroups]
        bridge, links, namespaces = state.bridge, state.links, state.namespaces
        postmasters = []
    host_pids = sorted(cgroups.pids(cg_dirs))
    if state is not None:  # a host booting when `up` died may not be in its cgroup yet
        host_pids += [p for p in state.init_pids.values() if alive(p) and p not in host_pids]
    if host_pids:
        lab_hosts.stop(host_pids)
        removed.append(f"{len(host_pids)} host process(es)")
    if state is not None and state.ha:  # while its address (on the lab bridge) still exists
        removed += lab_patroni.stop(state)
    for ns in namespaces:  # anything else still inside a host's network namespace
        pids = network.namespace_pids(ns)
        if pids:
            kill_all(pids)
            removed.append(f"{len(pids)} process(es) in {ns}")
    if cg_dirs:
        removed += [f"cgroup {d}" for d in cgroups.remove(cg_dirs)]
    removed += network.remove(bridge, links, namespaces)
    platform = state.platform if state is not None else ""
    if state is not None and managed.stop(state):  # the emulated platform's agent
        removed.append(f"the {platform} platform agent")
    if state is not None and lab_bouncer.stop(state.pgbouncer_pid):
        removed.append(f"PgBouncer (pid {state.pgbouncer_pid})")
    if state is not None and lab_pg.stop(state):
        removed.append("PostgreSQL")
    if postmasters:
        kill_all(postmasters, grace=10)
        removed.append(f"PostgreSQL (pid {', '.join(map(str, postmasters))})")
    removed += _remove_own_files(root)
    return removed


LAB_FILES = (
    "hosts",
    "pg",
    "pg2",
    "etcd",
    "etcd.log",
    "pgbouncer",
    "ssh",
    "inventory.yaml",
    *(f"inventory-{platform}.yaml" for platform in EMULATED),
    "platform-agent.log",
    "pgpass",
    "state.json",
    "state.tmp",
)


def _remove_own_files(root: Path) -> list[str]:
    """Remove what the lab writes in its directory, and the directory once empty; never
    anything else in it (CONNFIX_LAB_DIR may point at a directory that is not the lab's)."""
    removed = []
    for name in LAB_FILES:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(str(path))
    if root.is_dir():
        try:
            root.rmdir()
            removed.append(str(root))
        except OSError:
            removed.append(f"{root} kept: it holds files the lab did not make")
    return removed


def problems(state: LabState) -> list[str]:
    """Return what is wrong with a lab that should be up."""
    found = []
    if not Path(state.pg_data, "postmaster.pid").exists():
        found.append("PostgreSQL is not running")
    if state.pgbouncer_hosts and not alive(state.pgbouncer_pid):
        found.append("PgBouncer is not running")
    if state.ha:
        found += [
            f"Patroni {name} is not running"
            for name, pid in state.patroni_pids.items()
            if not alive(pid)
        ]
        if not alive(state.etcd_pid):
            found.append("etcd is not running")
    for ns in state.namespaces:
        if not Path("/run/netns", ns).exists():
            found.append(f"namespace {ns} is missing")
    for index in range(1, state.hosts + 1):
        name = paths.host_name(index)
        pid = state.init_pids.get(name)
        if pid is None or not alive(pid):
            found.append(f"host {name} is not running (its systemd is gone)")
    return found


def _up_host(name: str) -> tuple[LabState, int]:
    """Return the lab's state and the index of its host `name`; refuse if either is not."""
    state = LabState.load()
    if state is None or not state.complete:
        raise LabError("the lab is not up (run `connfix lab up`)")
    names = [paths.host_name(i) for i in range(1, state.hosts + 1)]
    if name not in names:
        raise LabInputError(f"no lab host {name!r} (hosts: {', '.join(names)})")
    return state, names.index(name) + 1


def traffic(host: str, every: float) -> float:
    """Make one lab host's app serve traffic every `every` seconds from now on (0: a
    quiet app, whose pool sits idle); return what it took."""
    _, index = _up_host(host)
    if not (every == 0 or 0.1 <= every <= 600):
        raise LabInputError("the traffic interval must be 0s (none) or between 100ms and 10m")
    return float(app_request(index, f"/traffic?every={every}", "POST")["traffic_seconds"])


def leak(host: str, count: int, idle_in_transaction: bool, from_pool: bool = False) -> list[int]:
    """Make one lab host's app leak `count` connections: opened outside its pool and never
    closed, or (from_pool) checked out of its pool and never returned; left idle, or
    idle in transaction."""
    _, index = _up_host(host)
    if not 1 <= count <= 10_000:
        raise LabInputError("--count must be between 1 and 10000")
    mode = "idle_in_transaction" if idle_in_transaction else "idle"
    if from_pool:
        mode = "checkout_in_transaction" if idle_in_transaction else "checkout"
    result = app_request(index, f"/leak?count={count}&mode={mode}", "POST", timeout=60)
    return [int(p) for p in result["leaked"]]


def burst(host: str, count: int, seconds: float) -> list[int]:
    """Make one lab host's app serve `count` concurrent requests, each holding a pooled
    connection for `seconds`: a legitimate burst into max_overflow."""
    _, index = _up_host(host)
    if not 1 <= count <= 1000:
        raise LabInputError("--count must be between 1 and 1000")
    if not 0 < seconds <= 3600:
        raise LabInputError("--duration must be between 1ms and 1h")
    result = app_request(index, f"/burst?count={count}&seconds={seconds}", "POST", timeout=60)
    return [int(p) for p in result["burst"]]


def systemctl(name: str, *args: str, check: bool = True) -> str:
    """Run `systemctl ARGS` on a lab host (as root, inside it); return its output."""
    return lab_hosts.systemctl(init_pid(name), *args, check=check).stdout
