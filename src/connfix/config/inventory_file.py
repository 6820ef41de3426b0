"""An inventory file: finding it (`InventorySearch`), reading it with file:line errors,
and the checks that span fields (`connfix.config.inventory` holds the models)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from connfix import InventoryError
from connfix.config.inventory import LAB_ENVIRONMENT, NAME_RE, Environment, Inventory
from connfix.config.records import Invalid, validate_cached
from connfix.config.yamlfile import (
    Located,
    PathT,
    YamlError,
    describe_at,
    describe_validation,
    load_file,
)


class LoadedInventory:
    """An inventory with its source, so errors can point into the file."""

    def __init__(self, path: Path, inventory: Inventory, located: Located) -> None:
        self.path = path
        self.inventory = inventory
        self.located = located

    def environment(self, name: str) -> Environment:
        """Return one environment or raise InventoryError naming the ones that exist."""
        env = self.inventory.environments.get(name)
        if env is None:
            known = ", ".join(sorted(self.inventory.environments)) or "none"
            raise InventoryError(
                f"{self.path}:{self.located.line_of(('environments',))}: no environment"
                f" {name!r} in the inventory (environments: {known})"
            )
        return env


def _error_at(path: Path, located: Located, loc: PathT, message: str) -> InventoryError:
    return InventoryError(describe_at(path, located, loc, message))


def _check_services(path: Path, located: Located, env_name: str, env: Environment) -> None:
    """Several services: each named, once; given instead of `service`; hosts name them."""
    where: PathT = ("environments", env_name)
    raw = located.data["environments"][env_name] if isinstance(located.data, dict) else {}
    if env.services and isinstance(raw, dict) and "service" in raw:
        raise _error_at(path, located, (*where, "service"), "give either service (one) or services")
    names: dict[str, int] = {}
    for index, service in enumerate(env.services):
        if service.name is None:
            raise _error_at(
                path,
                located,
                (*where, "services", index),
                "a service in a list of services needs a name",
            )
        if service.name in names:
            raise _error_at(
                path,
                located,
                (*where, "services", index, "name"),
                f"duplicate service {service.name!r} (also services[{names[service.name]}])",
            )
        names[service.name] = index
    known = {s.label for s in env.all_services()}
    for index, host in enumerate(env.hosts):
        for position, name in enumerate(host.services or []):
            if name not in known:
                raise _error_at(
                    path,
                    located,
                    (*where, "hosts", index, "services", position),
                    f"no service {name!r} in this environment"
                    f" (services: {', '.join(sorted(known))})",
                )


def parse_inventory(path: Path, located: Located) -> Inventory:
    """Validate a loaded document; raise one InventoryError naming file, line and field."""
    if not isinstance(located.data, dict):
        raise InventoryError(
            f"{path}:1: the inventory must be a mapping with an 'environments' key"
        )
    try:
        inventory = validate_cached(Inventory, located.data)
    except Invalid as exc:
        hint = "check the spelling; inventory.example.yaml lists every field"
        raise InventoryError(describe_validation(path, located, exc.errors, hint)) from None
    for env_name, env in inventory.environments.items():
        if not NAME_RE.match(env_name):
            raise _error_at(
                path,
                located,
                ("environments", env_name),
                "environment names use letters, digits and ._- only",
            )
        _check_services(path, located, env_name, env)
        seen: dict[str, int] = {}
        addresses: dict[str, int] = {}
        for index, host in enumerate(env.hosts):
            if host.name in seen:
                raise _error_at(
                    path,
                    located,
                    ("environments", env_name, "hosts", index, "name"),
                    f"duplicate host {host.name!r} (also hosts[{seen[host.name]}])",
                )
            seen[host.name] = index
            addr = host.client_addr
            if addr is not None:
                if addr in addresses:
                    raise _error_at(
                        path,
                        located,
                        ("environments", env_name, "hosts", index, "db_address"),
                        f"address {addr} is already hosts[{addresses[addr]}]: PostgreSQL"
                        " could not tell the two hosts apart",
                    )
                addresses[addr] = index
    return inventory


def load_inventory(path: Path) -> LoadedInventory:
    """Load and validate an inventory file."""
    try:
        located = load_file(path)
    except YamlError as exc:
        raise InventoryError(f"{path}:{exc.line}: {exc.message}") from None
    return LoadedInventory(path, parse_inventory(path, located), located)


def _must_be_file(path: Path, source: str) -> None:
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file (a FIFO, a device?)"
        raise InventoryError(f"{path}: is {kind}, not an inventory file (from {source})")
    if not path.is_file():
        raise InventoryError(f"{path}: no such inventory file (from {source})")


@dataclass(frozen=True)
class InventorySearch:
    """Where an inventory is looked for when --inventory is not given: the variable
    CONNFIX_INVENTORY, ./inventory.yaml in the working directory, then (for the `lab`
    environment) the lab's. Passed in: the CLI builds it from the process once
    (cli.options.inventory_search)."""

    from_env: str | None
    cwd: Path
    lab_inventory: Path


def find_inventory(explicit: str | None, environment: str | None, search: InventorySearch) -> Path:
    """Find the inventory: --inventory, $CONNFIX_INVENTORY, ./inventory.yaml, the lab's."""
    from connfix.config.files import expand

    if explicit:
        path = expand(explicit)
        _must_be_file(path, "--inventory")
        return path
    if search.from_env:
        path = expand(search.from_env)
        _must_be_file(path, "CONNFIX_INVENTORY")
        return path
    local = search.cwd / "inventory.yaml"
    if local.is_file():
        return local
    if environment == LAB_ENVIRONMENT:
        lab = search.lab_inventory
        if lab.is_file():
            return lab
        raise InventoryError(
            f"no inventory for environment 'lab': {lab} does not exist; run `connfix lab up`"
        )
    raise InventoryError(
        "no inventory found: pass --inventory PATH, set CONNFIX_INVENTORY, or create"
        " ./inventory.yaml (inventory.example.yaml shows every field)"
    )


def resolve_environment(
    explicit: str | None, name: str, search: InventorySearch
) -> tuple[LoadedInventory, Environment]:
    """Find, load and validate the inventory, and return the named environment."""
    path = find_inventory(explicit, name, search)
    loaded = load_inventory(path)
    implicit = not explicit and not search.from_env
    if implicit and name == LAB_ENVIRONMENT and name not in loaded.inventory.environments:
        lab = search.lab_inventory
        if lab.is_file():
            loaded = load_inventory(lab)
    return loaded, loaded.environment(name)
