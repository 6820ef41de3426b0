"""Where the lab keeps its files, and the names and addresses it uses."""

from __future__ import annotations

import os
from pathlib import Path

UNIT = "labapp.service"
APPLICATION_NAME = "labapp"
APP_PORT = 8080
PG_PORT = 54329
SUBNET = "10.231.0"
DB_ADDRESS = f"{SUBNET}.1"
BRIDGE = "cfxbr0"
DATABASE = "appdb"


def lab_dir() -> Path:
    """Return the lab's directory ($CONNFIX_LAB_DIR, default /tmp/connfix-lab)."""
    return Path(os.environ.get("CONNFIX_LAB_DIR", "/tmp/connfix-lab"))


def host_name(index: int) -> str:
    """Return the name of the lab's host number `index` (1-based)."""
    return f"app{index}"


def host_address(index: int) -> str:
    """Return the address of the lab's host number `index` (1-based)."""
    return f"{SUBNET}.{10 + index}"


def namespace(index: int) -> str:
    """Return the network namespace of the lab's host number `index`."""
    return f"cfx-app{index}"


def host_dir(name: str) -> Path:
    """Return the directory of one lab host."""
    return lab_dir() / "hosts" / name
