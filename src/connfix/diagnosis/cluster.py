"""Environments of several database nodes: a primary and hot standbys, listed in the
inventory (`database.nodes`) or found through Patroni's REST API (`database.patroni`:
GET /cluster gives the members, their roles and lag, and the leader).

Each node is diagnosed on its own, in parallel, through its own DSN and ways in: its role
(`primary` or `standby`, from pg_is_in_recovery(); Patroni's word beside it), its own
limits (a standby has its own max_connections), who holds its slots, its suspects and
severity. The environment's severity is the worst node's.
"""

from __future__ import annotations

import json
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connfix.config.inventory import Environment, Node
    from connfix.diagnosis.model import Diagnosis

SEVERITY_ORDER = ("ok", "warning", "critical")


@dataclass(frozen=True)
class Member:
    """One node of the environment, as listed or as Patroni reports it."""

    node: Node
    ha_role: str | None = None  # Patroni's: leader, replica, sync_standby, standby_leader
    state: str | None = None  # Patroni's: running, streaming, stopped, …
    lag: int | str | None = None  # bytes behind the leader ("unknown" while restarting)


@dataclass(frozen=True)
class Topology:
    """Every node of an environment, and where the list came from."""

    members: list[Member]
    source: str  # "inventory", or the Patroni URL that answered
    notes: list[str] = field(default_factory=list)  # e.g. Patroni did not answer


class PatroniUnavailable(Exception):
    """No Patroni URL of the environment answered GET /cluster."""


def patroni_cluster(urls: list[str], timeout: float) -> tuple[str, dict[str, Any]]:
    """GET /cluster from the first URL that answers; return (url, body). Redirects are not
    followed; a body that is not Patroni's is refused."""
    from connfix.config import http

    errors = []
    for url in urls:
        try:
            with http.opener().open(f"{url}/cluster", timeout=timeout) as response:
                body = json.loads(response.read(1_000_000))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
            continue
        if isinstance(body, dict) and isinstance(body.get("members"), list):
            return url, body
        errors.append(f"{url}: not Patroni's /cluster")
    raise PatroniUnavailable("; ".join(errors) or "no URL")


def topology(env: Environment) -> Topology:
    """The environment's nodes: from Patroni when it is configured (members not listed get
    the database's DSN pointed at their host and port), else the listed nodes."""
    from connfix.config.inventory import Node

    db = env.database
    listed = [Member(n) for n in db.nodes]
    if db.patroni is None:
        return Topology(listed, "inventory")
    try:
        url, body = patroni_cluster(db.patroni.urls, db.patroni.timeout)
    except PatroniUnavailable as exc:
        note = f"Patroni did not answer ({exc}): the nodes the inventory lists are diagnosed"
        if not listed:
            listed = [Member(Node(name="primary", dsn=db.dsn))]
            note = f"Patroni did not answer ({exc}): only database.dsn is diagnosed"
        return Topology(listed, "inventory", [note])
    members = []
    for m in body["members"]:
        if not isinstance(m, dict) or "name" not in m or "host" not in m or "port" not in m:
            continue
        node = db.node_at(str(m["name"]), str(m["host"]), int(m["port"]))
        members.append(Member(node, m.get("role"), m.get("state"), m.get("lag")))
    return Topology(members, url)


def worst(severities: list[str]) -> str:
    """The worst of several severities."""
    return max(severities, key=SEVERITY_ORDER.index, default="ok")


def diagnose_node(environment: str, env: Environment, member: Member) -> Diagnosis:
    """Diagnose one node through its own DSN and ways in."""
    from connfix.diagnosis.analysis import diagnose

    node_env = env.replace(database=env.database.of_node(member.node))
    d = diagnose(environment, node_env)
    return replace(d, node=member.node.name, ha_role=member.ha_role)


@dataclass(frozen=True)
class ClusterDiagnosis:
    """Every node's diagnosis, and the nodes that could not be diagnosed (and why)."""

    topology: Topology
    nodes: list[Diagnosis]
    unreachable: dict[str, str]  # node name → why

    @property
    def severities(self) -> dict[str, str]:
        """Each node's severity, `unreachable` for a node that could not be diagnosed."""
        found = {d.node or "?": d.severity for d in self.nodes}
        return found | {name: "unreachable" for name in self.unreachable}

    @property
    def severity(self) -> str:
        """The worst node's; a node that cannot be reached is critical."""
        return worst([d.severity for d in self.nodes] + ["critical"] * len(self.unreachable))


def diagnose_all(environment: str, env: Environment) -> ClusterDiagnosis:
    """Every node diagnosed in parallel, each through its own DSN and ways in."""
    from connfix import ConnfixError

    topo = topology(env)

    def one(member: Member) -> Diagnosis | str:
        try:
            return diagnose_node(environment, env, member)
        except ConnfixError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(topo.members)))) as pool:
        found = list(pool.map(one, topo.members))
    nodes = [d for d in found if not isinstance(d, str)]
    unreachable = {
        m.node.name: d for m, d in zip(topo.members, found, strict=True) if isinstance(d, str)
    }
    return ClusterDiagnosis(topo, nodes, unreachable)
