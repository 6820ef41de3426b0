"""What the lab made, recorded as it is made, so `lab down` removes exactly that."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from connfix import LabError
from connfix.lab.paths import lab_dir


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
    cgroups: list[str] = field(default_factory=list)  # directories made, parents first
    init_pids: dict[str, int] = field(default_factory=dict)  # each host's systemd
    pg_started: bool = False
    pg_major: int = 0
    reserved_connections: int = 0
    pgbouncer_hosts: int = 0  # the first N hosts reach the database through PgBouncer
    pgbouncer_pid: int = 0
    pgbouncer_version: str = ""  # 1.18 (Debian's), 1.24, 1.25 (built from source)
    ha: bool = False  # two nodes under Patroni (lab/patroni.py) instead of one server
    standby_hosts: int = 0  # with ha: the last N hosts' apps use the standby (pg2)
    etcd_pid: int = 0
    patroni_pids: dict[str, int] = field(default_factory=dict)  # node name → Patroni's pid
    platform: str = ""  # a managed service emulated (lab/managed.py): rds, aurora, cloudsql
    platform_pid: int = 0  # its agent, holding the platform's own sessions
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
