"""Benchmark: time to healthy on the standard lab incident.

The lab's three real-systemd hosts; app2 leaks past its pool until PostgreSQL refuses
ordinary connections. Measured, interleaved, on a fresh incident each time:

- `connfix triage lab --yes`, from the process starting to it exiting healthy;
- the floor a perfect operator could reach: one diagnosis query (psql, the admin way
  in, the same query connfix runs) plus app2's bare `systemctl restart` until its pool
  is back in pg_stat_activity;
- a bare Python triage (bare_triage.py: connfix's libraries, the same query, one SSH
  login and the restart command, nothing else): what Python allows.

Prints the medians, the ratio, and where connfix's time went, read from its journal
(start-up and imports, connecting, each step, the preflight and the host's gates, the
report). Needs root; builds lab 5 and removes it unless --keep.

    .venv/bin/python benchmarks/healthy.py [--rounds 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg
from common import HOST_RUN_NEEDS as NEEDS
from common import Row, bare_spec, connfix_bin, imports_alone, run_measured

from connfix.lab import lab, paths

HOSTS, POOL, LEAKER, INDEX = 3, 3, "app2", 2
TARGET = 1.5
CPU = "connfix's own CPU (user + system, all of the run)"


def app_sessions(admin: psycopg.Connection[Any], address: str) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE client_addr = %s::inet"
        " AND application_name = 'labapp'",
        (address,),
    ).fetchone()
    return int(row[0]) if row else -1


def incident(admin: psycopg.Connection[Any]) -> int:
    """Make app2 leak until the ordinary slots are gone; return how many it leaked."""
    lab.app_request(INDEX, "/health")  # up and serving
    row = admin.execute(
        "SELECT current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int"
        " - coalesce(current_setting('reserved_connections', true)::int, 0)"
        " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
    ).fetchone()
    free = int(row[0]) if row else 0
    leaked = max(1, free)  # every ordinary slot (the admin session counts, as any other)
    lab.leak(LEAKER, leaked, idle_in_transaction=False)
    try:  # the proof: an ordinary connection is refused
        psycopg.connect(lab.dsn("app"), connect_timeout=3).close()
    except psycopg.OperationalError:
        return leaked
    raise SystemExit("the incident did not fill the server: an ordinary connection got in")


def pool_back(admin: psycopg.Connection[Any], address: str, deadline: float = 60) -> None:
    ends = time.monotonic() + deadline
    while app_sessions(admin, address) != POOL:
        if time.monotonic() > ends:
            raise SystemExit(f"{LEAKER}'s pool did not come back within {deadline}s")
        time.sleep(0.005)


def floor_once(admin: psycopg.Connection[Any], address: str) -> float:
    """One diagnosis query, then the bare restart until the pool is back."""
    activity = resources.files("connfix.db").joinpath("queries", "activity.sql")
    admin_dsn = lab.dsn("connfix_admin", "127.0.0.1")
    started = time.perf_counter()
    subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-d", admin_dsn, "-f", str(activity)],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    lab.systemctl(LEAKER, "restart", "labapp.service")
    pool_back(admin, address)
    return time.perf_counter() - started


def bare_once(admin: psycopg.Connection[Any], address: str, spec: Path) -> float:
    """A bare Python triage, whole process, until the pool is back."""
    elapsed, _, code, stdout, stderr = run_measured(
        [sys.executable, str(Path(__file__).with_name("bare_triage.py")), str(spec)]
    )
    if code != 0 or json.loads(stdout)["restarted"] != address:
        raise SystemExit(f"bare_triage.py failed ({code}):\n{stderr[-3000:]}")
    pool_back(admin, address, 10)
    return elapsed


def connfix_once(admin: psycopg.Connection[Any], address: str) -> tuple[float, dict[str, float]]:
    """`connfix triage lab --yes`, whole process; and where its time went (its own CPU
    among it)."""
    with tempfile.TemporaryDirectory() as incidents:
        spawned = time.time()
        wall, cpu, code, _, err = run_measured(
            [*connfix_bin(), "triage", "lab", "--yes", "--incidents-dir", incidents]
        )
        exited = spawned + wall
        if code != 0:
            raise SystemExit(f"connfix triage failed ({code}):\n{err[-3000:]}")
        (journal,) = Path(incidents).glob("*/journal.jsonl")
        events = [json.loads(line) for line in journal.read_text().splitlines()]
    pool_back(admin, address, 10)  # it exited healthy: the pool is already back
    parts = breakdown(events, spawned, exited)
    parts[CPU] = cpu
    return wall, parts


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def breakdown(events: list[dict[str, Any]], spawned: float, exited: float) -> dict[str, float]:
    """Where the time of one run went, from its journal."""
    parts: dict[str, float] = {}
    first, last = events[0], events[-1]
    parts["start-up, imports, inventory, runbook"] = _ts(first) - spawned
    connected = next(e for e in events if e["event"] in ("connected", "lock_acquired"))
    lock = next((e for e in events if e["event"] == "lock_acquired"), connected)
    parts["connect and lock"] = _ts(lock) - _ts(first)
    for end in (e for e in events if e["event"] == "step_end" and "seconds" in e):
        name = f"step {end['step']}"
        parts[name] = parts.get(name, 0) + end["seconds"]
    rolls = [e for e in events if e["event"] == "step_start" and e["action"] == "rolling_restart"]
    starts = [e for e in events if e["event"] == "host_start"]
    if rolls and starts:
        parts["  of which: preflight and plan"] = _ts(starts[0]) - _ts(rolls[0])
    for done in (e for e in events if e["event"] == "host_done"):
        for gate, seconds in done["gates"].items():
            parts[f"  of which: {done['host']} gate {gate}"] = seconds
    parts["report, exit"] = exited - _ts(last)
    accounted = sum(v for k, v in parts.items() if not k.startswith("  "))
    parts["between steps (conditions, journal)"] = (exited - spawned) - accounted
    return parts


def measure(rounds: int = 3, keep: bool = False) -> list[Row]:
    lab.down()
    lab.up(hosts=HOSTS, max_connections=None, pool_size=POOL)  # as `connfix lab up`
    address = paths.host_address(INDEX)
    folder = Path(tempfile.mkdtemp(prefix="connfix-bench-"))
    try:
        admin = psycopg.connect(lab.bootstrap_dsn(), autocommit=True)
        spec = bare_spec(
            folder, "bare-triage", pool=POOL, restart="sudo -n systemctl restart labapp.service",
            query=str(resources.files("connfix.db").joinpath("queries", "activity.sql")),
        )  # fmt: skip
        # warm-up, untimed: caches, the deploy user's first login on the host
        incident(admin)
        connfix_once(admin, address)
        incident(admin)
        bare_once(admin, address, spec)
        connfix_times, floor_times, parts, libraries, bare = [], [], [], [], []
        for _ in range(rounds):
            leaked = incident(admin)
            wall, where = connfix_once(admin, address)
            connfix_times.append(wall)
            parts.append(where)
            incident(admin)
            floor_times.append(floor_once(admin, address))
            incident(admin)
            bare.append(bare_once(admin, address, spec))
            libraries.append(imports_alone(NEEDS))
        admin.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if not keep:
            lab.down()
    connfix, floor = statistics.median(connfix_times), statistics.median(floor_times)
    print(f"\ntime to healthy, {HOSTS} hosts, {LEAKER} leaked {leaked} sessions (server full):")
    print(f"  connfix triage --yes     {connfix:6.3f} s   (runs: {_list(connfix_times)})")
    print(f"  floor                    {floor:6.3f} s   (runs: {_list(floor_times)})")
    python = statistics.median(bare)
    print(f"  ratio                    {connfix / floor:6.2f}×   target ≤ {TARGET}×")
    print(
        f"  a bare Python triage     {python:6.3f} s   (runs: {_list(bare)}):"
        f" {python / floor:.2f}× the floor; connfix {connfix / python:.2f}× it"
    )
    print("  where connfix's time went (median over the rounds):")
    medians = {key: statistics.median(p.get(key, 0.0) for p in parts) for key in parts[0]}
    for key, value in medians.items():
        print(f"    {key:48s} {value:6.3f} s")
    waited = medians["  of which: app2 gate restart"]
    cpu = medians[CPU]
    imported = statistics.median(libraries)
    print(
        f"  a bare python importing what a triage needs ({', '.join(NEEDS)}):"
        f" {imported:.3f} s; the floor + that = {(floor + imported) / floor:.2f}× the floor"
    )
    return [
        Row(
            "time to healthy, standard lab incident (triage --yes)",
            connfix,
            "s",
            f"≤ {TARGET}× floor",
            connfix / floor <= TARGET,
            "diagnosis query + bare restart until the pool is back",
            floor,
            f"a bare Python triage (connfix's libraries, the same query, one SSH login and the"
            f" restart command, nothing else: benchmarks/bare_triage.py) {python:.3f} s ="
            f" {python / floor:.2f}× the floor, connfix {connfix / python:.2f}× it;"
            f" connfix's own CPU {cpu:.3f} s (start-up to run_start, the SSH stack's import"
            f" and the hosts' logins begun in it,"
            f" {medians['start-up, imports, inventory, runbook']:.3f} s; first diagnosis, the"
            f" health checks on those logins, {medians['step diagnose']:.3f} s; the roll's"
            f" preflight and plan {medians.get('  of which: preflight and plan', 0):.3f} s);"
            f" the restart itself {waited:.3f} s: even with every other wait hidden,"
            f" restart + CPU = {waited + cpu:.3f} s = {(waited + cpu) / floor:.2f}× the floor;"
            f" a bare python importing the libraries a triage needs ({', '.join(NEEDS)})"
            f" {imported:.3f} s, so the floor + those imports alone ="
            f" {(floor + imported) / floor:.2f}× the floor",
        )
    ]


def _list(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave lab 5 up afterwards")
    args = parser.parse_args()
    measure(args.rounds, args.keep)


if __name__ == "__main__":
    main()
