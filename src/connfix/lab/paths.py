"""Where the lab keeps its files, and the names and addresses it uses.

Several labs can live side by side, one per CONNFIX_LAB_ID (0-9): the test suite uses
its own, so it never touches an operator's rehearsal lab.
"""

from __future__ import annotations

import os
from pathlib import Path

from connfix import LabInputError

UNIT = "labapp.service"
APPLICATION_NAME = "labapp"
APP_PORT = 8080
DATABASE = "appdb"


def lab_id() -> int:
    """Return the lab's number from $CONNFIX_LAB_ID (default 0)."""
    raw = os.environ.get("CONNFIX_LAB_ID", "0")
    if not raw.isdigit() or not 0 <= int(raw) <= 9:
        raise LabInputError(f"CONNFIX_LAB_ID must be a digit 0-9, not {raw!r}")
    return int(raw)


def lab_dir() -> Path:
    """Return the lab's directory ($CONNFIX_LAB_DIR, default /tmp/connfix-lab[-ID])."""
    default = "/tmp/connfix-lab" + (f"-{lab_id()}" if lab_id() else "")
    return Path(os.environ.get("CONNFIX_LAB_DIR", default))


def subnet() -> str:
    """Return the first three octets of the lab's private /24."""
    return f"10.231.{lab_id()}"


def db_address() -> str:
    """Return the database's address on the lab's bridge."""
    return f"{subnet()}.1"


def pg_port() -> int:
    """Return the lab PostgreSQL's port."""
    return 54320 + lab_id()


def pgbouncer_port() -> int:
    """Return the port of the lab's PgBouncer (on the database's lab address)."""
    return 64320 + lab_id()


def bridge() -> str:
    """Return the name of the lab's bridge."""
    return f"cfx{lab_id()}br"


def host_name(index: int) -> str:
    """Return the name of the lab's host number `index` (1-based)."""
    return f"app{index}"


def host_address(index: int) -> str:
    """Return the address of the lab's host number `index` (1-based)."""
    return f"{subnet()}.{10 + index}"


def namespace(index: int) -> str:
    """Return the network namespace of the lab's host number `index`."""
    return f"cfx{lab_id()}-app{index}"


def veth(index: int) -> tuple[str, str]:
    """Return the root-side and namespace-side names of host `index`'s veth pair."""
    return f"cfx{lab_id()}v{index}", f"cfx{lab_id()}p{index}"


def host_dir(name: str) -> Path:
    """Return the directory of one lab host."""
    return lab_dir() / "hosts" / name
