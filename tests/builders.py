"""Objects built in memory for tests: environments, diagnoses, backends, PgBouncer state,
an inventory's text, SSH keys and certificates."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from connfix.config.inventory import Environment
from connfix.db.pg import ServerInfo
from connfix.db.pgbouncer_console import (
    BouncerClient,
    BouncerState,
)
from connfix.diagnosis.analysis import analyse
from connfix.diagnosis.model import (
    Backend,
)

NOW = time.time()
NAME = "10.231.7.11"  # the host the SSH keys and certificates are for


def env(**thresholds: Any) -> Environment:
    return Environment.validate(
        {
            "database": {"dsn": "host=db dbname=app user=connfix"},
            "service": {"unit": "app.service", "pool_size": 4},
            "hosts": [
                {"name": "web1", "ssh_address": "10.0.0.1"},
                {"name": "web2", "ssh_address": "10.0.0.2"},
                {
                    "name": "web3",
                    "ssh_address": "web3.internal",
                    "db_address": "10.0.0.3",
                    "pool_size": 6,
                },
            ],
            "thresholds": {"buffer": 2, **thresholds},
        }
    )


def info(
    max_connections: int = 20, su: int = 3, reserved: int = 0, version: int = 150004
) -> ServerInfo:
    return ServerInfo(
        "connfix", False, True, True, "15.4", version, max_connections, su, reserved, 1, "app"
    )


def backend(
    pid: int,
    addr: str | None,
    state: str | None = "idle",
    *,
    idle: float = 1,
    xact: float | None = None,
    visible: bool = True,
    user: str = "app",
    blocked_by: list[int] | None = None,
) -> Backend:
    return Backend(
        pid,
        user,
        "web",
        addr if visible else None,
        "app",
        state if visible else None,
        visible,
        None,
        None,
        idle if visible else None,
        xact if visible else None,
        None,
        blocked_by,
        "SELECT 1",
    )


def environment(**extra: Any) -> Environment:
    return Environment.validate(
        {
            "database": {"dsn": "host=db dbname=app user=connfix"},
            "service": {
                "unit": "app.service",
                "pool_size": 3,
                "max_overflow": 2,
                "application_name": "web",
            },
            "hosts": [{"name": f"web{i}", "ssh_address": f"10.0.0.{i}"} for i in range(1, 4)],
            "thresholds": {"buffer": 2},
            "pgbouncers": [{"name": "pgb", "admin_dsn": "host=pgb dbname=pgbouncer"}],
            **extra,
        }
    )


def client(
    n: int,
    addr: str,
    link: str = "",
    idle: float = 120,
    state: str = "active",
    connected: float = 600,
) -> Any:
    return BouncerClient(
        "app",
        "app",
        state,
        addr,
        40000 + n,
        "web",
        NOW - connected,
        NOW - idle,
        f"c{n}",
        link,
        id=n,
    )


def state(clients: list[Any], servers: list[Any], version: str = "PgBouncer 1.24.1") -> Any:
    return BouncerState(
        "pgb", "connfix@pgb:6432/pgbouncer", version, [], servers, clients, read_at=NOW
    )


def diagnosis(env: Environment, backends: list[Any], bouncer: Any) -> Any:
    info = ServerInfo("connfix", False, True, True, "x", 150004, 20, 3, 0, 1, "app")
    return analyse("prod", env, info, backends, [], bouncers=[bouncer])


GOOD = """\
version: 1
environments:
  prod:
    database:
      dsn: "host=db1 port=5432 dbname=app user=connfix"
    service:
      unit: webapp.service
      pool_size: 20
    hosts:
      - name: web1
        ssh_address: 10.0.0.11
      - name: web2
        ssh_address: 10.0.0.12
"""


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)])
    return path


def sign(
    tmp: Path,
    ca: Path,
    host_pub: Path,
    *options: str,
    principals: str | None = NAME,
    validity: str = "-5m:+1h",
    key_id: str = "app1",
    host: bool = True,
) -> Path:
    """Sign a host key with `ssh-keygen -s`; return the -cert.pub file."""
    copy = tmp / f"signed-{len(list(tmp.iterdir()))}.pub"
    copy.write_text(host_pub.read_text())
    args = ["ssh-keygen", "-q", "-s", str(ca), "-I", key_id, "-V", validity, *options]
    args += ["-h"] if host else []
    args += ["-n", principals] if principals is not None else []
    subprocess.run([*args, str(copy)], check=True, capture_output=True)
    return copy.with_name(copy.stem + "-cert.pub")


def pub(path: Path) -> str:
    return Path(f"{path}.pub").read_text().strip()
