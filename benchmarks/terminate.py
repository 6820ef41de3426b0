"""Benchmark: terminate 1,000 idle backends and confirm they are gone.

Opens 1,000 idle sessions on a lab PostgreSQL, runs a whole `connfix terminate` process
on them (one re-checked statement per pid, exits confirmed in pg_stat_activity), and
prints its wall time next to the naive set-based statement sent on an open session (no
re-check, then polled until the sessions are gone) and next to a bare Python process
doing just that (import psycopg, connect, the statement, the poll): what Python allows.
Needs root; builds lab 5 and removes it unless --keep.

    .venv/bin/python benchmarks/terminate.py [--sessions 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg
from common import TERMINATE_NEEDS as NEEDS
from common import Row, imports_alone, run_measured, timed

from connfix.lab import lab

APP = "bench-idle"


def open_idle(count: int) -> list[psycopg.Connection[Any]]:
    def one(_: int) -> psycopg.Connection[Any]:
        return psycopg.connect(lab.dsn("app"), autocommit=True, application_name=APP)

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(count)))


# the naive way: every session of the app signalled in one statement, then counted
NAIVE = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
COUNT = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"


def count_idle(admin: psycopg.Connection[Any]) -> int:
    row = admin.execute(COUNT, (APP,)).fetchone()
    return int(row[0]) if row else -1


def close_all(conns: list[psycopg.Connection[Any]]) -> None:
    for conn in conns:
        conn.close()


TARGET_RATIO = 1.3  # × the naive set-based statement


def _ts(event: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def connfix_terminate(
    sessions: int, incidents: str, inventory: Path
) -> tuple[float, dict[str, Any]]:
    """One whole `connfix terminate` process; its wall time and its terminate step (with
    the process's own CPU and the time it took to journal run_start)."""
    spawned = time.time()
    connfix = Path(sys.executable).with_name("connfix")
    wall, cpu, code, _, err = run_measured(
        [
            str(connfix), "terminate", "lab", "-i", str(inventory), "--state", "idle",
            "--older-than", "100ms", "--max", str(sessions), "--max-fraction", "1", "--yes",
            "--incidents-dir", incidents,
        ]
    )  # fmt: skip
    if code != 0:
        sys.exit(f"connfix terminate failed ({code}):\n{err}")
    journal = max(Path(incidents).glob("*/journal.jsonl"), key=lambda p: p.stat().st_mtime)
    evs = [json.loads(line) for line in journal.read_text().splitlines()]
    step = next(e for e in evs if e["event"] == "step_end" and e["step"] == "terminate")
    run_start = next(e for e in evs if e["event"] == "run_start")
    plan = next(e for e in evs if e["event"] == "plan" and e["step"] == "terminate")
    last_exit = max(_ts(e) for e in evs if e["event"] == "operation")
    return wall, {
        **step,
        "cpu": cpu,
        "started": _ts(run_start) - spawned,
        "planned": _ts(plan) - spawned,  # start-up, the diagnosis, the plan
        "ended": last_exit - _ts(plan),  # the plan to the last exit confirmed
    }


def naive_terminate(admin: psycopg.Connection[Any]) -> float:
    started = time.perf_counter()
    admin.execute(NAIVE, (APP,))
    while count_idle(admin):
        time.sleep(0.005)
    return time.perf_counter() - started


BARE = f"""
import sys, time
import psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as admin:
    admin.execute({NAIVE!r}, (sys.argv[2],))
    while admin.execute({COUNT!r}, (sys.argv[2],)).fetchone()[0]:
        time.sleep(0.005)
"""


def bare_terminate() -> float:
    """The naive statement and its poll from a bare Python process, whole: its start-up,
    psycopg's import and the connection included."""
    return timed([sys.executable, "-c", BARE, lab.bootstrap_dsn(), APP])


def measure(sessions: int = 1000, keep: bool = False, rounds: int = 3) -> list[Row]:
    lab.down()
    lab.up(hosts=1, max_connections=sessions + 100, pool_size=1)
    try:
        admin = psycopg.connect(lab.bootstrap_dsn(), autocommit=True)
        walls, naives, steps, libraries, bare = [], [], [], [], []
        with tempfile.TemporaryDirectory() as incidents:
            inventory = Path(incidents) / "inventory.yaml"  # the app's own pool is protected
            inventory.write_text(
                (lab.lab_dir() / "inventory.yaml")
                .read_text()
                .replace("applications: []", "applications: [labapp]")
            )
            for _ in range(rounds):  # interleaved: both see the same machine
                conns = open_idle(sessions)
                time.sleep(0.5)
                wall, step = connfix_terminate(sessions, incidents, inventory)
                walls.append(wall)
                steps.append(step)
                left = count_idle(admin)
                close_all(conns)
                conns = open_idle(sessions)
                time.sleep(0.5)
                naives.append(naive_terminate(admin))
                close_all(conns)
                conns = open_idle(sessions)
                time.sleep(0.5)
                bare.append(bare_terminate())
                close_all(conns)
                libraries.append(imports_alone(NEEDS))
        wall, naive = statistics.median(walls), statistics.median(naives)
        print(
            f"\nconnfix terminate (whole process), median of {rounds}: {wall:.3f} s;"
            f" the terminate step itself {statistics.median(s['seconds'] for s in steps):.3f} s"
        )
        print(f"  {steps[-1]['summary']}")
        planned = statistics.median(s["planned"] for s in steps)
        ended = statistics.median(s["ended"] for s in steps)
        print(
            f"  from the process's start to the plan {planned:.3f} s;"
            f" from the plan to the last exit confirmed {ended:.3f} s"
        )
        print(f"  idle sessions left afterwards: {left}")
        print(
            f"naive set-based statement, then waiting until gone: {naive:.3f} s"
            " (no re-check, one permission error would abort all)"
        )
        imported = statistics.median(libraries)
        python = statistics.median(bare)
        print(
            f"a bare Python process doing the naive statement (import psycopg, connect, the"
            f" statement, poll until gone): {python:.3f} s = {python / naive:.2f}× the naive"
            f" statement; connfix {wall / python:.2f}× it"
        )
        print(
            f"a bare python importing what terminate needs ({', '.join(NEEDS)}):"
            f" {imported:.3f} s; the naive statement + that = {(naive + imported) / naive:.2f}×"
        )
        print(f"target: connfix ≤ {TARGET_RATIO}× the naive statement")
        admin.close()
    finally:
        if not keep:
            lab.down()
    return [
        Row(
            f"terminate {sessions} idle sessions, confirmed gone (whole process)",
            wall,
            "s",
            f"≤ {TARGET_RATIO}× the naive statement",
            wall <= TARGET_RATIO * naive,
            "naive set-based statement",
            naive,
            f"a bare Python process doing the naive statement (import psycopg, connect, the"
            f" statement, poll until gone) {python:.3f} s = {python / naive:.2f}× it, connfix"
            f" {wall / python:.2f}× that; "
            f"the terminate step itself {statistics.median(s['seconds'] for s in steps):.3f} s"
            f" (signals re-checked per pid, exits confirmed), of which from the plan to the"
            f" last exit confirmed {ended:.3f} s (the naive statement from an open session:"
            f" {naive:.3f} s); from the process's start to the plan {planned:.3f} s;"
            f" a bare python importing the libraries terminate needs ({', '.join(NEEDS)})"
            f" {imported:.3f} s, so the naive statement + those imports alone ="
            f" {(naive + imported) / naive:.2f}× it; start-up to run_start"
            f" {statistics.median(s['started'] for s in steps):.3f} s; connfix's own CPU"
            f" {statistics.median(s['cpu'] for s in steps):.3f} s",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    measure(args.sessions, args.keep)


if __name__ == "__main__":
    main()
