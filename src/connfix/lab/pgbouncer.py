"""The lab's PgBouncer, in front of the lab database for some or all hosts: Debian's
1.18, or 1.24 / 1.25 built from their upstream release sources.

It stands for a customer's pooler, configured as one often is: transaction pooling,
room for every pooled host's pool, SCRAM with the roles' verifiers in its userlist, its
server connections over loopback (the database sees them from 127.0.0.1), its listener
on the database's lab address, where the hosts reach it. It runs as `postgres`
(PgBouncer refuses root), its pid is recorded, and `lab down` stops it by that pid.

Why three versions: what connfix reads and sends changed between them — KILL_CLIENT came
with 1.24.0, and since 1.25.0 a client idle in the pool says `idle`, not `active`. The
newer ones are built once from the release tarballs (checked by their sha256) into a
cache directory, about 10-30 s each, with Debian's build packages only (setup installs
them); the source folder is $CONNFIX_VENDOR_DIR, by default `../shared/vendor` beside
the checkout.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from connfix import LabError, LabInputError
from connfix.lab import paths
from connfix.lab.paths import lab_dir
from connfix.lab.shell import alive, kill_all, run

DEBIAN_BINARY = "/usr/sbin/pgbouncer"
NAME = "lab"  # its name in the inventory's pgbouncers
DEFAULT_VERSION = "1.18"
# version → (release, the release tarball's sha256), as in the vendor folder's README
RELEASES: dict[str, tuple[str, str]] = {
    "1.24": ("1.24.1", "348beeffaef69a3c29d543fbc3010b2cab56e8d53f8849a7f47cf8d0bc7702e8"),
    "1.25": ("1.25.2", "8c33f6d7b150e2c5ddb4400fa85cc49a039e9d0c590912ab90e8c6af1833ddc6"),
}
VERSIONS = (DEFAULT_VERSION, *RELEASES)  # what `lab up --pgbouncer-version` takes
BUILD_PACKAGES = "libevent-dev libssl-dev pkg-config autoconf automake libtool make gcc"


def vendor_dir() -> Path:
    """Where the release tarballs are: $CONNFIX_VENDOR_DIR, or ../shared/vendor beside
    the checkout connfix runs from."""
    if os.environ.get("CONNFIX_VENDOR_DIR"):
        return Path(os.environ["CONNFIX_VENDOR_DIR"])
    return Path(__file__).resolve().parents[3].parent / "shared" / "vendor"


def cache_dir() -> Path:
    """Where built PgBouncers are kept between labs ($CONNFIX_CACHE_DIR, default
    /var/cache/connfix): outside the lab's directory, which `lab down` removes, and
    readable by `postgres`, which runs them."""
    return Path(os.environ.get("CONNFIX_CACHE_DIR", "/var/cache/connfix"))


def unavailable(version: str) -> str | None:
    """Why `version` cannot be had on this machine (None: it can)."""
    if version == DEFAULT_VERSION:
        if Path(DEBIAN_BINARY).exists():
            return None
        return f"{DEBIAN_BINARY} is missing: apt-get install pgbouncer"
    if version not in RELEASES:
        return f"--pgbouncer-version must be one of {', '.join(VERSIONS)}, not {version!r}"
    release, _ = RELEASES[version]
    if (cache_dir() / f"pgbouncer-{release}" / "pgbouncer").exists():
        return None
    tarball = vendor_dir() / f"pgbouncer-{release}-src.tar.gz"
    if not tarball.exists():
        return (
            f"PgBouncer {release} is built from its release sources, and {tarball} is"
            " not here (set CONNFIX_VENDOR_DIR to the folder that holds"
            f" pgbouncer-{release}-src.tar.gz)"
        )
    return None


def binary(version: str) -> str:
    """The pgbouncer binary of `version`: Debian's 1.18, or a newer one built (once)
    from its release tarball."""
    why = unavailable(version)
    if why:
        raise (LabInputError if version not in VERSIONS else LabError)(why)
    if version == DEFAULT_VERSION:
        return DEBIAN_BINARY
    release, sha256 = RELEASES[version]
    target = cache_dir() / f"pgbouncer-{release}"
    built = target / "pgbouncer"
    if built.exists():
        return str(built)
    cache_dir().mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(cache_dir() / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another lab or test building the same one
        if not built.exists():
            _build(release, sha256, target)
    return str(built)


def _build(release: str, sha256: str, target: Path) -> None:
    """Check the tarball's sha256, build `pgbouncer` only (no man pages: no pandoc),
    and keep the binary alone in `target`."""
    tarball = vendor_dir() / f"pgbouncer-{release}-src.tar.gz"
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != sha256:
        raise LabError(f"{tarball}: sha256 {digest}, expected {sha256}: not the release")
    missing = [
        t
        for t in ("autoconf", "automake", "libtoolize", "make", "gcc", "pkg-config")
        if shutil.which(t) is None
    ]
    if missing or not Path("/usr/include/event2/event.h").exists():
        raise LabError(
            f"building PgBouncer {release} needs Debian's {BUILD_PACKAGES}"
            " (scripts/setup.sh installs them)"
        )
    with tempfile.TemporaryDirectory(prefix="pgbouncer-build-", dir=cache_dir()) as scratch:
        subprocess.run(["tar", "xzf", str(tarball), "-C", scratch], check=True)
        (source,) = Path(scratch).iterdir()
        steps = [
            ["./autogen.sh"],
            ["./configure", "--without-cares"],
            ["make", f"-j{os.cpu_count() or 1}", "pgbouncer"],
        ]
        for step in steps:
            done = subprocess.run(step, cwd=source, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = (done.stdout + done.stderr).strip()[-1500:]
                raise LabError(f"building PgBouncer {release}: {' '.join(step)} failed:\n{tail}")
        staged = Path(scratch) / "out"
        staged.mkdir(mode=0o755)
        shutil.copy2(source / "pgbouncer", staged / "pgbouncer")
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    target.chmod(0o755)


def version_of(path: str) -> str:
    """`pgbouncer --version`'s first line, e.g. `PgBouncer 1.25.2`."""
    done = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return (done.stdout.splitlines() or ["?"])[0].strip()


def directory() -> Path:
    return lab_dir() / "pgbouncer"


def ini(pooled_hosts: int, pool_size: int, max_overflow: int) -> str:
    """The lab PgBouncer's configuration."""
    room = max(1, pooled_hosts * (pool_size + max_overflow))
    d = directory()
    return f"""\
;; connfix lab: the PgBouncer {pooled_hosts} host(s) reach the database through
[databases]
{paths.DATABASE} = host=127.0.0.1 port={paths.pg_port()} dbname={paths.DATABASE}

[pgbouncer]
listen_addr = {paths.db_address()}
listen_port = {paths.pgbouncer_port()}
unix_socket_dir = {d}
pidfile = {d}/pgbouncer.pid
logfile = {d}/pgbouncer.log
auth_type = scram-sha-256
auth_file = {d}/userlist.txt
admin_users = connfix
stats_users = connfix
pool_mode = transaction
max_client_conn = 1000
default_pool_size = {room}
max_db_connections = {room}
server_idle_timeout = 600
ignore_startup_parameters = extra_float_digits,options
"""


def start(
    verifiers: dict[str, str],
    pooled_hosts: int,
    pool_size: int,
    max_overflow: int,
    executable: str = DEBIAN_BINARY,
) -> int:
    """Write the config and the userlist (the roles' SCRAM verifiers), start PgBouncer
    (`executable`); return its pid."""
    d = directory()
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o700)
    (d / "pgbouncer.ini").write_text(ini(pooled_hosts, pool_size, max_overflow))
    users = "".join(f'"{role}" "{secret}"\n' for role, secret in sorted(verifiers.items()))
    userlist = d / "userlist.txt"
    userlist.write_text(users)
    userlist.chmod(0o600)
    return launch(d, executable)


def launch(d: Path, executable: str = DEBIAN_BINARY) -> int:
    """Start PgBouncer from d/pgbouncer.ini (its pidfile and log in d, as the lab's and
    `connfix pool`'s configs put them), as `postgres`, which must own d; return its pid
    once it runs."""
    for path in (d, *d.iterdir()):
        shutil.chown(path, "postgres", "postgres")
    pidfile = d / "pgbouncer.pid"
    pidfile.unlink(missing_ok=True)  # a stopped one's: never taken for the new one's
    run(["runuser", "-u", "postgres", "--", executable, "-d", str(d / "pgbouncer.ini")])
    deadline = time.monotonic() + 10
    listener = _listener(d / "pgbouncer.ini")
    while time.monotonic() < deadline:
        text = pidfile.read_text().strip() if pidfile.exists() else ""
        if text.isdigit() and alive(int(text)) and _accepts(listener):
            return int(text)
        time.sleep(0.02)
    log = d / "pgbouncer.log"
    tail = log.read_text()[-1500:] if log.exists() else ""
    raise LabError(f"PgBouncer did not start: {tail.strip()}")


def _listener(config: Path) -> tuple[str, int] | None:
    """The TCP address and port a PgBouncer configuration listens on, if it says."""
    text = config.read_text()
    addr = re.search(r"(?m)^\s*listen_addr\s*=\s*([^,\s]+)", text)
    port = re.search(r"(?m)^\s*listen_port\s*=\s*(\d+)", text)
    if not addr or not port or addr.group(1) == "*":
        return None
    return addr.group(1), int(port.group(1))


def _accepts(listener: tuple[str, int] | None) -> bool:
    """Whether PgBouncer accepts connections yet (its pidfile comes before its socket)."""
    if listener is None:
        return True
    try:
        with socket.create_connection(listener, timeout=0.5):
            return True
    except OSError:
        return False


def stop(pid: int) -> bool:
    """Stop the lab's PgBouncer by its recorded pid; True if it was running."""
    if not pid or not alive(pid):
        return False
    kill_all([pid], grace=5)
    return True
