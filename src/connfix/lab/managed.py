"""A managed service's role model, emulated on the lab's real PostgreSQL: what connfix
meets on Amazon RDS/Aurora or Cloud SQL, short of the provider's patched server.

`emulate(platform)` on a running lab (one server, not --ha):

- the platform's own superuser (rdsadmin, cloudsqladmin) exists and holds sessions: a
  process of the lab's, recorded by pid, keeps two idle connections open over the
  socket and opens them again when they are ended (as the provider's agent would);
- the customer's administrator role (rds_superuser, cloudsqlsuperuser) with its
  documented grants, and a login member of it, `master` (the provider's master user);
- RDS/Aurora (PostgreSQL 16+): rds_superuser may use the reserved_connections slots,
  standing in for rds.rds_superuser_reserved_connections (which only RDS's server has);
  Cloud SQL: none, so a full server has no way in for the customer;
- an inventory (inventory-PLATFORM.yaml) that gives connfix no superuser: `database.dsn`
  is the lab's connfix role (pg_read_all_stats and pg_signal_backend only), the way in
  for a full server is `master` where the platform has one, `database.platform` is set.

What is not emulated: the provider's refusal wording and its extra reserve setting
(RDS), Azure's 15 reserved slots (a platform setting no role reproduces), anything of
the provider's control plane. docs/reliability.md says the same.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from connfix import LabError, LabInputError
from connfix.config import files
from connfix.config.platforms import PLATFORMS, SELF_MANAGED
from connfix.lab import paths
from connfix.lab.paths import lab_dir
from connfix.lab.postgres import bootstrap_dsn, dsn, passfile
from connfix.lab.shell import alive, kill_all
from connfix.lab.state import LabState

EMULATED = ("rds", "aurora", "cloudsql")
MASTER = "master"  # the provider's master user: a member of its administrator role
AGENT_SESSIONS = 2
# the agents this process started, reaped when stopped (one an earlier `connfix lab
# platform` started is its init's to reap)
_STARTED: dict[int, subprocess.Popen[bytes]] = {}
# the platform agent: holds its sessions idle, opens them again when they are ended
_AGENT = """
import select, sys, time
import psycopg
dsn, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
while True:
    try:
        conns = [psycopg.connect(dsn, autocommit=True, application_name=name)
                 for _ in range(count)]
    except psycopg.Error:
        time.sleep(0.5)
        continue
    select.select([c.pgconn.socket for c in conns], [], [])
    for c in conns:
        c.close()
    time.sleep(0.2)
"""
# what each administrator role is granted, as the providers document it
_GRANTS = {
    "rds_superuser": ["pg_monitor", "pg_signal_backend", "pg_use_reserved_connections"],
    "cloudsqlsuperuser": ["pg_monitor"],
}


def inventory_path(platform: str) -> Path:
    return lab_dir() / f"inventory-{platform}.yaml"


def emulate(platform: str) -> Path:
    """Emulate `platform` on the running lab (or, self-managed, stop emulating); return
    the inventory written for it."""
    state = LabState.load()
    if state is None or not state.complete:
        raise LabError("no lab is up (connfix lab up)")
    if platform == SELF_MANAGED:
        stop(state)
        return lab_dir() / "inventory.yaml"
    if platform not in EMULATED:
        raise LabInputError(
            f"the lab emulates {', '.join(EMULATED)} (and self-managed to stop), not"
            f" {platform!r}: Azure's 15 reserved slots are a platform setting no role"
            " reproduces"
        )
    if state.ha or state.pgbouncer_hosts:
        raise LabInputError("the lab emulates a managed service on one server: not with --ha"
                            " or --pgbouncer")  # fmt: skip
    reserve = platform in ("rds", "aurora")
    if reserve and (state.pg_major < 16 or not state.reserved_connections):
        raise LabInputError(
            f"{platform} is emulated with reserved_connections for rds_superuser: it needs"
            " a lab on PostgreSQL 16+ (connfix lab up --postgres 18) with"
            " --reserved-connections 1 or more"
        )
    stop(state)
    profile = PLATFORMS[platform]
    agent, admin = profile.roles[0], profile.admin_role or ""
    password = secrets.token_urlsafe(18)
    _roles(agent, admin, password)
    lines = [
        line for line in passfile().read_text().splitlines() if line.split(":")[3:4] != [MASTER]
    ]
    lines.append(f"*:{paths.pg_port()}:*:{MASTER}:{password}")
    files.write_private(passfile(), "\n".join(lines) + "\n")
    with (lab_dir() / "platform-agent.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _AGENT, _socket_dsn(agent), agent, str(AGENT_SESSIONS)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _STARTED[process.pid] = process
    state.platform, state.platform_pid = platform, process.pid
    state.save()
    return _write_inventory(platform, reserve)


def stop(state: LabState) -> bool:
    """Stop the platform agent (by its recorded pid); return whether one ran."""
    pid, state.platform_pid, state.platform = state.platform_pid, 0, ""
    state.save()
    ran = bool(pid) and alive(pid)
    if ran:
        kill_all([pid])
    process = _STARTED.pop(pid, None)
    if process is not None:  # started by this process: reaped here
        process.wait(timeout=10)
    return ran


def _socket_dsn(user: str) -> str:
    return (
        f"host={lab_dir() / 'pg' / 'run'} port={paths.pg_port()} dbname={paths.DATABASE}"
        f" user={user}"
    )


def _roles(agent: str, admin: str, password: str) -> None:
    """The platform's superuser, the administrator role and its grants, and `master`
    (created once; the password renewed)."""
    with psycopg.connect(bootstrap_dsn(), autocommit=True) as conn:
        have = {r for (r,) in conn.execute("SELECT rolname::text FROM pg_roles").fetchall()}
        if agent not in have:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(agent)))
        if admin not in have:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(admin)))
        for granted in _GRANTS[admin]:
            conn.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(granted), sql.Identifier(admin))
            )
        if MASTER not in have:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(MASTER)))
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(admin), sql.Identifier(MASTER))
        )
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(MASTER), sql.Literal(password)
            )
        )


def _write_inventory(platform: str, reserve: bool) -> Path:
    """The lab's inventory, with no superuser in it: the platform set, the way in the
    platform's master user where it has one."""
    import yaml

    from connfix.config.inventory import Inventory

    data: dict[str, Any] = yaml.safe_load((lab_dir() / "inventory.yaml").read_text())
    database = data["environments"]["lab"]["database"]
    for key in ("admin_dsn", "admin_dsn_env", "admin_password_env", "reserved_dsn"):
        database.pop(key, None)
    database["platform"] = platform
    if reserve:
        database["reserved_dsn"] = dsn(MASTER)
    Inventory.validate(data)
    path = inventory_path(platform)
    path.write_text(
        f"# Written by `connfix lab platform {platform}`: the lab's environment as a managed"
        " service sees it\n# (no superuser for connfix; the platform's agent holds its own"
        " sessions).\n" + yaml.safe_dump(data, sort_keys=False)
    )
    return path
