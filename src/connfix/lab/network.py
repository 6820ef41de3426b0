"""The lab's network: a bridge holding the database's address, and one network namespace
per host joined to it by a veth pair."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from connfix.lab import paths
from connfix.lab.shell import run

if TYPE_CHECKING:
    from connfix.lab.state import LabState


def build(state: LabState, hosts: int) -> None:
    """Make the bridge and each host's namespace, recording each as it is made."""
    run(["ip", "link", "add", paths.bridge(), "type", "bridge"])
    state.bridge = paths.bridge()
    state.save()
    run(["ip", "addr", "add", f"{paths.db_address()}/24", "dev", paths.bridge()])
    run(["ip", "link", "set", paths.bridge(), "up"])
    for index in range(1, hosts + 1):
        ns = paths.namespace(index)
        veth, peer = paths.veth(index)
        run(["ip", "netns", "add", ns])
        state.namespaces.append(ns)
        state.save()
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
        state.links.append(veth)
        state.save()
        run(["ip", "link", "set", peer, "netns", ns])
        run(["ip", "-n", ns, "link", "set", peer, "name", "eth0"])
        run(["ip", "-n", ns, "addr", "add", f"{paths.host_address(index)}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "link", "set", veth, "master", paths.bridge()])
        run(["ip", "link", "set", veth, "up"])


def namespace_pids(ns: str) -> list[int]:
    """Return the pids running in one of the lab's namespaces."""
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _exists(link: str) -> bool:
    return run(["ip", "link", "show", link], check=False).returncode == 0


def remove(bridge: str | None, links: list[str], namespaces: list[str]) -> list[str]:
    """Delete these links, namespaces and the bridge; return what was removed."""
    removed = []
    for link in links:
        if _exists(link):
            run(["ip", "link", "del", link], check=False)
            removed.append(f"link {link}")
    for ns in namespaces:
        if Path("/run/netns", ns).exists():
            run(["ip", "netns", "del", ns], check=False)
            removed.append(f"namespace {ns}")
    if bridge and _exists(bridge):
        run(["ip", "link", "del", bridge], check=False)
        removed.append(f"bridge {bridge}")
    return removed


def found_by_name() -> tuple[str | None, list[str], list[str]]:
    """Return this lab's bridge, veth links and namespaces as named on the machine, for
    a lab whose state is gone. Only names of this lab's own form are returned."""
    lab = paths.lab_id()
    bridge = paths.bridge() if _exists(paths.bridge()) else None
    links_out = run(["ip", "-o", "link", "show"], check=False).stdout
    link_re = re.compile(rf"^\d+: (cfx{lab}v\d+)[@:]")
    links = sorted({m.group(1) for line in links_out.splitlines() if (m := link_re.match(line))})
    ns_re = re.compile(rf"^cfx{lab}-app\d+$")
    netns = Path("/run/netns")
    namespaces = (
        sorted(p.name for p in netns.iterdir() if ns_re.match(p.name)) if netns.is_dir() else []
    )
    return bridge, links, namespaces
