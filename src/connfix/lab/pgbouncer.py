"""The lab's PgBouncer (Debian's), in front of the lab database for some or all hosts.

It stands for a customer's pooler, configured as one often is: transaction pooling,
room for every pooled host's pool, SCRAM with the roles' verifiers in its userlist, its
server connections over loopback (the database sees them from 127.0.0.1), its listener
on the database's lab address, where the hosts reach it. It runs as `postgres`
(PgBouncer refuses root), its pid is recorded, and `lab down` stops it by that pid.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from connfix.errors import LabError
from connfix.lab import paths
from connfix.lab.paths import lab_dir
from connfix.lab.shell import alive, kill_all, run

BINARY = "/usr/sbin/pgbouncer"
NAME = "lab"  # its name in the inventory's pgbouncers


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


def start(verifiers: dict[str, str], pooled_hosts: int, pool_size: int, max_overflow: int) -> int:
    """Write the config and the userlist (the roles' SCRAM verifiers), start PgBouncer;
    return its pid."""
    if not Path(BINARY).exists():
        raise LabError(f"{BINARY} is missing: apt-get install pgbouncer")
    d = directory()
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o700)
    (d / "pgbouncer.ini").write_text(ini(pooled_hosts, pool_size, max_overflow))
    users = "".join(f'"{role}" "{secret}"\n' for role, secret in sorted(verifiers.items()))
    userlist = d / "userlist.txt"
    userlist.write_text(users)
    userlist.chmod(0o600)
    return launch(d)


def launch(d: Path) -> int:
    """Start PgBouncer from d/pgbouncer.ini (its pidfile and log in d, as the lab's and
    `connfix pool`'s configs put them), as `postgres`, which must own d; return its pid
    once it runs."""
    for path in (d, *d.iterdir()):
        shutil.chown(path, "postgres", "postgres")
    run(["runuser", "-u", "postgres", "--", BINARY, "-d", str(d / "pgbouncer.ini")])
    pidfile = d / "pgbouncer.pid"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = pidfile.read_text().strip() if pidfile.exists() else ""
        if text.isdigit() and alive(int(text)):
            return int(text)
        time.sleep(0.02)
    log = d / "pgbouncer.log"
    tail = log.read_text()[-1500:] if log.exists() else ""
    raise LabError(f"PgBouncer did not start: {tail.strip()}")


def stop(pid: int) -> bool:
    """Stop the lab's PgBouncer by its recorded pid; True if it was running."""
    if not pid or not alive(pid):
        return False
    kill_all([pid], grace=5)
    return True
