"""The lab's HA shape, for `connfix lab up --ha`: one etcd and two PostgreSQL nodes under
Patroni, from Debian's `patroni` and `etcd-server` packages, with streaming replication.

The nodes listen on the lab's database address (and loopback), each on its own port:
pg1 on the lab's usual port (it bootstraps the cluster and starts as the primary), pg2
on that port + 100. Patroni's REST API answers on 28008 + lab id (pg1) and 28108 + lab
id (pg2); etcd serves its v3 API on 23790 + lab id (Patroni's `etcd3:` section; etcd 3.4
serves no v2). What was learned doing it on this kind of machine (../shared
HA-AND-CHARTS.md): Patroni and initdb refuse root, so Patroni runs as `postgres`
(setpriv, so the pid recorded is Patroni's own); `wal_retrieve_retry_interval` 500ms so
a new replica streams at once; `max_connections` is one value for the whole cluster
(Patroni passes it on the command line from the DCS); stop replicas first, then the
leader, then etcd, each by the pid recorded when it was started.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from connfix import LabError
from connfix.lab import paths
from connfix.lab.paths import lab_dir
from connfix.lab.shell import alive, kill_all

if TYPE_CHECKING:
    from connfix.lab.state import LabState

# the processes this one started, kept so they are reaped when `stop` ends them (a
# process started by an earlier `lab up` is its init's to reap)
_STARTED: dict[int, subprocess.Popen[bytes]] = {}

NODES = ("pg1", "pg2")
# Patroni 3.0.2 takes a max_connections below 25 as invalid and starts PostgreSQL with
# its default, 100 (patroni/postgresql/config.py: `lambda v: int(v) >= 25`)
MIN_MAX_CONNECTIONS = 25
MAX_LAG_BYTES = 1048576  # the lab's maximum_lag_on_failover
SCOPE = "connfix-lab"
PATRONI = "/usr/bin/patroni"
PATRONICTL = "/usr/bin/patronictl"
ETCD = "/usr/bin/etcd"


def unavailable() -> str | None:
    """Why the HA lab cannot be built here, or None."""
    missing = [p for p in (PATRONI, PATRONICTL, ETCD) if not Path(p).is_file()]
    if missing:
        return (
            f"the HA lab needs Debian's patroni and etcd-server ({', '.join(missing)} missing):"
            " apt-get install -y patroni etcd-server etcd-client"
        )
    return None


def node_port(name: str) -> int:
    """The PostgreSQL port of a node."""
    return paths.pg_port() + 100 * NODES.index(name)


def rest_port(name: str) -> int:
    """The Patroni REST API port of a node."""
    return 28008 + paths.lab_id() + 100 * NODES.index(name)


def etcd_ports() -> tuple[int, int]:
    """etcd's client and peer ports."""
    return 23790 + paths.lab_id(), 23890 + paths.lab_id()


def rest_url(name: str) -> str:
    """The REST API of a node, on the lab's database address."""
    return f"http://{paths.db_address()}:{rest_port(name)}"


def node_dir(name: str) -> Path:
    """Where a node keeps its config, data, socket and log (pg1: the lab's `pg`)."""
    return lab_dir() / ("pg" if name == NODES[0] else name)


def socket_dir(name: str) -> Path:
    """The node's Unix socket directory."""
    return node_dir(name) / "run"


def _config(name: str, pg_bin: Path, max_connections: int, reserved: int, major: int) -> str:
    """A node's Patroni configuration (YAML written as JSON, which YAML reads)."""
    client, _ = etcd_ports()
    address = paths.db_address()
    parameters: dict[str, Any] = {
        "max_connections": max_connections,
        "wal_retrieve_retry_interval": "500ms",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "on",  # pg_rewind needs it
        "wal_log_hints": "on",
    }
    local: dict[str, Any] = {"unix_socket_directories": str(socket_dir(name))}
    if major >= 16:
        local["reserved_connections"] = reserved
    config = {
        "scope": SCOPE,
        "name": name,
        "restapi": {
            "listen": f"{address}:{rest_port(name)}",
            "connect_address": f"{address}:{rest_port(name)}",
        },
        "etcd3": {"hosts": f"127.0.0.1:{client}"},
        "bootstrap": {
            "dcs": {
                "ttl": 15,
                "loop_wait": 2,
                "retry_timeout": 5,
                "maximum_lag_on_failover": MAX_LAG_BYTES,
                "postgresql": {"use_pg_rewind": True, "parameters": parameters},
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, {"auth": "trust"}],
        },
        "postgresql": {
            "listen": f"127.0.0.1,{address}:{node_port(name)}",
            "connect_address": f"{address}:{node_port(name)}",
            "data_dir": str(node_dir(name) / "data"),
            "bin_dir": str(pg_bin),
            "pgpass": str(node_dir(name) / "patroni.pgpass"),
            "pg_hba": [
                "local all all trust",
                # the cluster's own: Patroni (as postgres, over localhost), replication and
                # pg_rewind between the nodes on the lab address; never the apps' way in
                "host all postgres 127.0.0.1/32 trust",
                f"host all postgres {address}/32 trust",
                f"host all rewinder {address}/32 trust",
                f"host replication replicator {address}/32 trust",
                "host all all 127.0.0.1/32 scram-sha-256",
                f"host all all {paths.subnet()}.0/24 scram-sha-256",
            ],
            "authentication": {
                "superuser": {"username": "postgres", "password": secrets.token_urlsafe(12)},
                "replication": {"username": "replicator", "password": secrets.token_urlsafe(12)},
                "rewind": {"username": "rewinder", "password": secrets.token_urlsafe(12)},
            },
            "parameters": local,
        },
    }
    return json.dumps(config, indent=2) + "\n"


def _get(url: str, timeout: float = 1.0) -> tuple[int, Any]:
    """GET a Patroni URL: its status and JSON body (status 0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def cluster() -> dict[str, Any]:
    """Patroni's /cluster, from the first node that answers."""
    for name in NODES:
        status, body = _get(f"{rest_url(name)}/cluster")
        if status == 200 and isinstance(body, dict):
            return body
    raise LabError("no Patroni node of the lab answers /cluster")


def is_primary(name: str) -> bool:
    """Tell whether Patroni says this node is the primary now (GET /primary is 200)."""
    return _get(f"{rest_url(name)}/primary")[0] == 200


def leader() -> str:
    """The name of the cluster's leader now."""
    for member in cluster().get("members", []):
        if member.get("role") == "leader":
            return str(member["name"])
    raise LabError("the lab's Patroni cluster has no leader")


def _wait(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise LabError(f"the HA lab: {what} did not happen within {timeout:.0f}s")


def start(state: LabState, pg_bin: Path, max_connections: int, reserved: int, major: int) -> None:
    """Start etcd, then pg1 (it bootstraps and leads), then pg2 (a replica of it); return
    once pg2 streams and /cluster shows both running with no lag. Every pid is recorded
    in the lab's state as it starts."""
    client, peer = etcd_ports()
    etcd_dir = lab_dir() / "etcd"
    etcd_dir.mkdir(mode=0o700, exist_ok=True)
    with (lab_dir() / "etcd.log").open("ab") as log:
        etcd = subprocess.Popen(
            [
                ETCD,
                "--name",
                SCOPE,
                "--data-dir",
                str(etcd_dir / "data"),
                "--listen-client-urls",
                f"http://127.0.0.1:{client}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{client}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"{SCOPE}=http://127.0.0.1:{peer}",
                "--initial-cluster-state",
                "new",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    _STARTED[etcd.pid] = etcd
    state.etcd_pid = etcd.pid
    state.save()
    _wait(lambda: _get(f"http://127.0.0.1:{client}/health")[0] == 200, "etcd healthy", 30)
    for name in NODES:
        base = node_dir(name)
        base.mkdir(mode=0o755, exist_ok=True)
        socket_dir(name).mkdir(mode=0o755, exist_ok=True)
        (base / "patroni.yml").write_text(_config(name, pg_bin, max_connections, reserved, major))
        (base / "patroni.yml").chmod(0o600)
        for path in (base, socket_dir(name), base / "patroni.yml"):
            shutil.chown(path, "postgres", "postgres")
        with (base / "patroni.log").open("ab") as log:
            shutil.chown(base / "patroni.log", "postgres", "postgres")
            node = subprocess.Popen(
                [
                    "setpriv",
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    PATRONI,
                    str(base / "patroni.yml"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={"HOME": "/var/lib/postgresql", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            )
        _STARTED[node.pid] = node
        state.patroni_pids[name] = node.pid
        state.save()
        if name == NODES[0]:
            _wait(lambda: is_primary(NODES[0]), "pg1 primary", 120)
        else:
            _wait(_streaming, "pg2 streaming from pg1", 120)
    _wait(_all_running, "both members running in /cluster", 120)
    state.pg_bin = str(pg_bin)
    state.pg_data = str(node_dir(NODES[0]) / "data")


def superuser_dsn(name: str) -> str:
    """The node's bootstrap superuser over its socket (trust: the lab's own tooling)."""
    return f"host={socket_dir(name)} port={node_port(name)} dbname=postgres user=postgres"


def _streaming() -> bool:
    import psycopg

    try:
        with psycopg.connect(superuser_dsn(NODES[0]), connect_timeout=2) as conn:
            rows = conn.execute(
                "SELECT state FROM pg_stat_replication WHERE application_name = %s",
                (NODES[1],),
            ).fetchall()
    except psycopg.Error:
        return False
    return [r[0] for r in rows] == ["streaming"]


def _all_running() -> bool:
    try:
        members = cluster().get("members", [])
    except LabError:
        return False
    running = all(m.get("state") in ("running", "streaming") for m in members)
    # streaming and caught up to within what Patroni would fail over with (its
    # maximum_lag_on_failover): exactly 0 may take a while on a loaded machine
    replica = any(
        m.get("role") in ("replica", "sync_standby")
        and isinstance(m.get("lag"), int)
        and m["lag"] <= MAX_LAG_BYTES
        for m in members
    )
    return len(members) == len(NODES) and running and replica


def _patronictl(*args: str, node: str | None = None) -> str:
    """Run Debian's patronictl as postgres against the lab's cluster; return its output."""
    config = node_dir(node or leader()) / "patroni.yml"
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            PATRONICTL,
            "-c",
            str(config),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HOME": "/var/lib/postgresql", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        check=False,
    )
    if result.returncode != 0:
        raise LabError(f"patronictl {args[0]} failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def switchover(candidate: str | None = None) -> tuple[str, str]:
    """`patronictl switchover` (a real one): return (old leader, new leader) once the new
    one answers /primary."""
    old = leader()
    new = candidate or next(n for n in NODES if n != old)
    _patronictl("switchover", "--leader", old, "--candidate", new, "--force", node=old)
    _wait(lambda: is_primary(new), f"{new} primary", 60)
    return old, new


def leave_standby_behind(value: int) -> tuple[str, int]:
    """A cluster restarted halfway, for real: Patroni paused (maintenance mode: it would
    otherwise resume the standby's replay, which shuts it down, and restart it with the
    new value), max_connections raised to `value` with `patronictl edit-config`, the
    leader alone restarted. The replica keeps its old value, its WAL replay paused at the
    primary's parameter change (PostgreSQL will not replay it with fewer slots); Patroni
    lists it pending restart. Return (the leader, the value before)."""
    first = leader()
    was = _max_connections(first)
    if was is None:
        raise LabError(f"{first} does not answer")
    _patronictl("pause", "--wait")
    _set_max_connections(value)
    _restart(first, value)
    return first, was


def catch_up(was: int) -> None:
    """Undo leave_standby_behind the way Patroni itself would: resumed, it resumes the
    standby's replay, PostgreSQL stops the standby (too few slots for the primary's
    change) and Patroni starts it again with the raised setting; then the setting back
    to `was`, the leader and the replicas restarted with it."""
    first = leader()
    raised = _max_connections(first) or was
    replicas = [n for n in NODES if n != first]
    _patronictl("resume", "--wait")
    for name in replicas:
        _wait(lambda n=name: _max_connections(n) == raised, f"{name} back with {raised}", 90)
    _wait(_all_running, "every member running again", 60)
    _set_max_connections(was)
    _restart(first, was)
    # a standby restarted replays from its last restartpoint: one before the raised
    # setting's record would meet it again with fewer slots, and stop. A checkpoint on
    # the primary, replayed, then one on the standby moves its restartpoint past it.
    lsn = _sql(first, "CHECKPOINT; SELECT pg_current_wal_lsn()::text")
    for name in replicas:
        _wait(
            lambda n=name: _sql(n, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t",
            f"{name} replayed the primary's checkpoint",
            60,
        )
        _sql(name, "CHECKPOINT")
        _restart(name, was)
    _wait(_all_running, "every member running again", 60)


def _sql(name: str, statements: str) -> str | None:
    """Run statements on a node as the bootstrap superuser; the last one's first value
    (None when the node does not answer)."""
    import psycopg

    try:
        with psycopg.connect(superuser_dsn(name), autocommit=True, connect_timeout=2) as conn:
            result = None
            for statement in statements.split("; "):
                cur = conn.execute(statement)
                row = cur.fetchone() if cur.description else None
                result = None if row is None else str(row[0])
            return {"True": "t", "False": "f"}.get(result or "", result)
    except psycopg.Error:
        return None


def _set_max_connections(value: int) -> None:
    _patronictl("edit-config", "--set", f"postgresql.parameters.max_connections={value}",
                "--force")  # fmt: skip


def _restart(name: str, value: int) -> None:
    """`patronictl restart` of one member, until it answers with `value`."""
    _patronictl("restart", SCOPE, name, "--force")
    _wait(lambda: _max_connections(name) == value, f"{name} restarted", 60)


def _max_connections(name: str) -> int | None:
    import psycopg

    try:
        with psycopg.connect(superuser_dsn(name), autocommit=True, connect_timeout=2) as conn:
            row = conn.execute("SHOW max_connections").fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


def stop(state: LabState) -> list[str]:
    """Stop what `start` started, by pid: the replicas, then the leader, then etcd. A
    cluster left in maintenance mode (a test that paused it and failed) is resumed
    first: a paused Patroni leaves its PostgreSQL running when it stops; a server still
    running in a node's data directory afterwards is stopped by that directory."""
    from connfix.lab import postgres as lab_pg

    stopped = []
    pids = state.patroni_pids
    try:
        first = leader()
    except LabError:
        first = ""
    if first and cluster().get("pause"):
        with contextlib.suppress(LabError, subprocess.TimeoutExpired):
            _patronictl("resume", "--wait")
    order = sorted(pids, key=lambda n: n == first)  # replicas first, the leader last
    for name in order:
        pid = pids[name]
        if alive(pid):
            kill_all([pid], grace=20)  # SIGTERM: Patroni stops its PostgreSQL (fast)
            stopped.append(f"Patroni {name} (pid {pid})")
    for name in NODES:
        left = lab_pg.orphaned_postmasters(node_dir(name) / "data")
        if left:
            kill_all(left, grace=10)
            stopped.append(f"PostgreSQL {name} (pid {', '.join(map(str, left))})")
    if state.etcd_pid and alive(state.etcd_pid):
        kill_all([state.etcd_pid], grace=10)
        stopped.append(f"etcd (pid {state.etcd_pid})")
    for pid in [*pids.values(), state.etcd_pid]:
        proc = _STARTED.pop(pid, None)
        if proc is not None:
            proc.wait(timeout=10)
    return stopped
