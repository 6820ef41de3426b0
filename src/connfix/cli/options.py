"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def inventory_option(fn: F) -> F:
    """Add --inventory PATH (else $CONNFIX_INVENTORY, ./inventory.yaml, the lab's)."""
    return click.option(
        "--inventory",
        "-i",
        "inventory_path",
        metavar="PATH",
        help="Inventory file (default: $CONNFIX_INVENTORY, then ./inventory.yaml; the lab's"
        " inventory for environment 'lab').",
    )(fn)
