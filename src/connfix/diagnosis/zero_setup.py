"""Zero-setup: diagnose (and terminate) from a connection string alone, before any
inventory exists — what a responder has at 3 a.m.

The DSN is `--dsn`, or libpq's own `PG*` variables and `service=` files. Without an
inventory connfix knows no hosts, pools or services: each client address is a "host"
(named by reverse DNS when that answers within half a second in all), and a leak
suspect is told by share and age instead of by pool size:

- an address holding at least SHARE_MIN_SESSIONS sessions and at least SHARE of the
  client backends, some of them idle for over thresholds.idle_suspect_age (10m);
- any session idle in transaction for over idle_in_transaction_suspect_age (1m).

The output says what an inventory would add, and `--write-inventory PATH` writes a
starter inventory from what was seen.
"""

from __future__ import annotations

import os
import re
import socket
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connfix.config.inventory import Environment
    from connfix.diagnosis.model import Diagnosis, HostUsage

PG_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")
SHARE = 0.3
SHARE_MIN_SESSIONS = 5
DNS_BUDGET_S = 0.5
WHAT_AN_INVENTORY_ADDS = (
    "no inventory: hosts are client addresses, pools are unknown (leak suspects by share"
    " and age, not by pool size). An inventory adds: each host's pool size and overflow"
    " (a leak told from a busy pool), the services and which sessions are theirs, SSH to"
    " restart a leaking host with health gates, health checks, thresholds and protected"
    " users. Start one with --write-inventory PATH"
)


def from_environment() -> bool:
    """Tell whether libpq's PG* variables name a server (zero-setup without --dsn)."""
    return any(os.environ.get(v) for v in PG_VARIABLES)


def environment_for(dsn: str | None, platform: str = "self-managed") -> Environment:
    """An environment with only a database: zero-setup. `dsn` None: libpq's PG*
    variables (or a service file) say where; `platform` who runs the server."""
    from connfix.config.inventory import Environment
    from connfix.config.records import validate_cached

    env = validate_cached(
        Environment,
        {
            "database": {"dsn": dsn or "connect_timeout=5", "platform": platform},
            "service": {"unit": "unknown.service", "pool_size": 1},
            "hosts": [{"name": "unknown", "ssh_address": "127.0.0.1"}],
        },
    )
    return env.as_zero_setup()


def label(dsn: str | None) -> str:
    """How the environment is named in output and journals: user@host:port/dbname."""
    from connfix.config.dsn import describe_dsn

    return describe_dsn(dsn or "")


_RESOLVED: dict[str, str | None] = {}  # per process: a --watch refresh asks again


def resolve(addresses: list[str], budget: float = DNS_BUDGET_S) -> dict[str, str]:
    """Reverse DNS names of the addresses that answer within `budget` seconds in all
    (each address asked once per process; one that did not answer in time is asked
    again next time)."""
    ask = [a for a in addresses if a not in _RESOLVED]
    if ask:
        pool = ThreadPoolExecutor(max_workers=min(16, len(ask)))
        futures = {pool.submit(socket.gethostbyaddr, a): a for a in ask}
        done, _ = wait(futures, timeout=budget)
        pool.shutdown(wait=False, cancel_futures=True)
        for future in done:
            addr = futures[future]
            try:
                name: str | None = future.result()[0]
            except (OSError, UnicodeError):  # a PTR record that is not UTF-8: no name
                name = None
            _RESOLVED[addr] = name if name and name != addr else None
    return {a: n for a in addresses if (n := _RESOLVED.get(a))}


def suspects_by_share(d: Diagnosis, env: Environment, names: dict[str, str]) -> Diagnosis:
    """Name each address row and judge it by share and age (see the module's doc)."""
    from connfix.diagnosis.model import CONNFIX, NOT_IN_INVENTORY

    old_age = env.thresholds.idle_suspect_age
    iit_age = env.thresholds.idle_in_transaction_suspect_age
    others = sum(u.count for u in d.by_host if u.host != CONNFIX and not u.pgbouncer)
    stuck_by_addr: dict[str | None, int] = {}
    for s in d.idle_in_transaction:
        if (s.xact_seconds or 0) >= iit_age:
            stuck_by_addr[s.client_addr] = stuck_by_addr.get(s.client_addr, 0) + 1
    rows: list[HostUsage] = []
    for u in d.by_host:
        if u.host != NOT_IN_INVENTORY or u.client_addr is None:
            rows.append(u)
            continue
        name = names.get(u.client_addr, u.client_addr)
        reasons = []
        share = u.count / others if others else 0.0
        old = u.idle if (u.oldest_idle_seconds or 0) >= old_age else 0
        if u.count >= SHARE_MIN_SESSIONS and share >= SHARE and old:
            reasons.append(
                f"holds {u.count} of {others} connections ({share:.0%}), idle up to"
                f" {u.oldest_idle_seconds or 0:.0f}s (over {old_age:.0f}s)"
            )
        if stuck_by_addr.get(u.client_addr):
            reasons.append(
                f"{stuck_by_addr[u.client_addr]} idle in transaction for over {iit_age:.0f}s"
            )
        rows.append(replace(u, host=name, suspect=bool(reasons), reasons=reasons))
    rows.sort(key=lambda u: (not u.suspect, -u.count, u.host))
    suspects = [u.host for u in rows if u.suspect]
    severity, reasons = d.severity, list(d.severity_reasons)
    if suspects:
        reasons.append(f"leak suspect(s) by share and age: {', '.join(suspects)}")
        if severity == "ok":
            severity = "warning"
    named: dict[str | None, str] = {u.client_addr: u.host for u in rows if u.client_addr}
    return replace(
        d,
        by_host=rows,
        suspects=suspects,
        severity=severity,
        severity_reasons=reasons,
        zero_setup=True,
        notes=[*d.notes, WHAT_AN_INVENTORY_ADDS],
        idle_in_transaction=[
            replace(s, host=named.get(s.client_addr, s.host)) for s in d.idle_in_transaction
        ],
    )


def _host_name(addr: str, names: dict[str, str], taken: set[str]) -> str:
    from connfix.config.inventory import NAME_RE

    base = names.get(addr, "").split(".")[0]
    if not base or not NAME_RE.match(base):
        base = "host-" + re.sub(r"[^A-Za-z0-9]", "-", addr).strip("-")
    name, n = base[:60], 2
    while name in taken:
        name, n = f"{base[:56]}-{n}", n + 1
    taken.add(name)
    return name


def starter_inventory(d: Diagnosis, dsn: str | None, names: dict[str, str], name: str) -> str:
    """A starter inventory (YAML) from one zero-setup diagnosis: the database as given
    (never a password), one host per client address seen, the service as far as the
    sessions show it; what connfix could not see is marked CHANGE-ME."""
    import yaml

    from connfix.config import redact
    from connfix.config.dsn import make_dsn, parse_dsn
    from connfix.diagnosis.model import CONNFIX, LOCAL

    parts = {k: v for k, v in parse_dsn(dsn or "").items() if k not in redact.SECRET_KEYWORDS}
    for var, key in (("PGHOST", "host"), ("PGPORT", "port"), ("PGDATABASE", "dbname")):
        if os.environ.get(var) and key not in parts:
            parts[key] = os.environ[var]
    if os.environ.get("PGUSER") and "user" not in parts:
        parts["user"] = os.environ["PGUSER"]
    db_dsn = make_dsn({k: v for k, v in parts.items() if k != "connect_timeout"})
    rows = [u for u in d.by_host if u.client_addr and u.host not in (CONNFIX, LOCAL)]
    rows = [u for u in rows if not u.pgbouncer]
    taken: set[str] = set()
    hosts = [
        {
            "name": _host_name(u.client_addr or "", names, taken),
            "ssh_address": u.client_addr,
            "db_address": u.client_addr,
        }
        for u in sorted(rows, key=lambda u: u.client_addr or "")
    ]
    apps = [a for a in d.by_application if a and a != "connfix"]
    users = [u for u in d.by_user if u]
    service: dict[str, Any] = {
        "unit": "CHANGE-ME.service",
        "pool_size": max((u.count for u in rows), default=1) or 1,
    }
    if apps:
        service["application_name"] = apps[0]
    if users:
        service["user"] = users[0]
    data = {
        "version": 1,
        "environments": {
            name: {
                "database": {"dsn": db_dsn or "CHANGE-ME"}
                | ({"platform": d.platform} if d.platform != "self-managed" else {}),
                "service": service,
                "hosts": hosts or [{"name": "CHANGE-ME", "ssh_address": "127.0.0.1"}],
            }
        },
    }
    dropped = _valid_or_dropped(data, name, service)  # what is written is a valid inventory
    seen = ", ".join(f"{u.client_addr} {u.count}" for u in rows) or "none"
    head = (
        f"# Written by `connfix diagnose --write-inventory` at"
        f" {datetime.now(UTC).isoformat(timespec='seconds')} from what it saw on"
        f" {label(dsn)}.\n"
        "# connfix could not see: the service's unit and real pool size (pool_size is the\n"
        "# most connections one host held), how to restart it (restart_command), its\n"
        "# health_check, nor how to reach each host over SSH (ssh: user, keys). Fill those\n"
        f"# in, then: connfix inventory check {name} -i THIS_FILE\n"
        f"# connections seen per address: {seen}\n" + "".join(f"# {line}\n" for line in dropped)
    )
    return head + yaml.safe_dump(data, sort_keys=False)


def _valid_or_dropped(data: dict[str, Any], name: str, service: dict[str, Any]) -> list[str]:
    """Validate the starter inventory; a name seen in the sessions that an inventory
    cannot hold (an application_name or role with a control character, say) is left out
    and said (as comments); anything else invalid is an input error, never a traceback."""
    from connfix import InputError
    from connfix.config.inventory import Inventory
    from connfix.config.records import Invalid
    from connfix.config.text import defang

    dropped: list[str] = []
    while True:
        try:
            Inventory.validate(data)
            return dropped
        except Invalid as exc:
            errors = exc.errors
        optional = {("environments", name, "service", k) for k in ("application_name", "user")}
        bad = [e for e in errors if tuple(e["loc"]) in optional]
        if not bad or len(bad) != len(errors):
            why = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {str(e['msg']).removeprefix('Value error, ')}"
                for e in errors
            )
            raise InputError(f"--write-inventory: what connfix saw cannot be written: {why}")
        for e in bad:
            key = str(e["loc"][-1])
            value = service.pop(key)
            dropped.append(
                f"{key} seen: {defang(repr(value))}, which an inventory cannot hold"
                f" ({str(e['msg']).removeprefix('Value error, ')}): set {key} yourself"
            )
