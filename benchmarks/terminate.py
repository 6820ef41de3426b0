"""Benchmark: terminate 1,000 idle backends and confirm they are gone.

Opens 1,000 idle sessions on a lab PostgreSQL, runs a whole `connfix terminate` process
on them (one re-checked statement per pid, exits confirmed in pg_stat_activity), and
prints its wall time next to a naive set-based psql one-liner (no re-check, no
confirmation) and the per-pid cost of pg_terminate_backend(pid, timeout). Needs root;
builds lab 5 and removes it unless --keep.

    .venv/bin/python benchmarks/terminate.py [--sessions 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ["CONNFIX_LAB_ID"] = "5"
os.environ.pop("CONNFIX_LAB_DIR", None)

import psycopg

from connfix.lab import lab

APP = "bench-idle"


def open_idle(count: int) -> list[psycopg.Connection[Any]]:
    def one(_: int) -> psycopg.Connection[Any]:
        return psycopg.connect(lab.dsn("app"), autocommit=True, application_name=APP)

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(count)))


def count_idle(admin: psycopg.Connection[Any]) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APP,)
    ).fetchone()
    return int(row[0]) if row else -1


def close_all(conns: list[psycopg.Connection[Any]]) -> None:
    for conn in conns:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    lab.down()
    lab.up(hosts=1, max_connections=args.sessions + 100, pool_size=1)
    connfix = Path(sys.executable).with_name("connfix")
    try:
        admin = psycopg.connect(lab.bootstrap_dsn(), autocommit=True)
        started = time.perf_counter()
        conns = open_idle(args.sessions)
        print(f"opened {count_idle(admin)} idle sessions ({time.perf_counter() - started:.1f}s)")
        time.sleep(0.5)
        with tempfile.TemporaryDirectory() as incidents:
            inventory = Path(incidents) / "inventory.yaml"  # the app's own pool is protected
            inventory.write_text(
                (lab.lab_dir() / "inventory.yaml")
                .read_text()
                .replace("applications: []", "applications: [labapp]")
            )
            started = time.perf_counter()
            proc = subprocess.run(
                [
                    str(connfix),
                    "terminate",
                    "lab",
                    "-i",
                    str(inventory),
                    "--state",
                    "idle",
                    "--older-than",
                    "100ms",
                    "--max",
                    str(args.sessions),
                    "--max-fraction",
                    "1",
                    "--yes",
                    "--incidents-dir",
                    incidents,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                sys.exit(f"connfix terminate failed ({proc.returncode}):\n{proc.stderr}")
            (journal,) = Path(incidents).glob("*/journal.jsonl")
            evs = [json.loads(line) for line in journal.read_text().splitlines()]
        step = next(e for e in evs if e["event"] == "step_end" and e["step"] == "terminate")
        left = count_idle(admin)
        print(
            f"\nconnfix terminate (whole process): {wall:.3f} s wall;"
            f" the terminate step itself {step['seconds']:.3f} s"
        )
        print(f"  {step['summary']}")
        print(f"  idle sessions left afterwards: {left}")
        close_all(conns)

        conns = open_idle(args.sessions)
        time.sleep(0.5)
        started = time.perf_counter()
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (APP,),
        )
        while count_idle(admin):
            time.sleep(0.005)
        naive = time.perf_counter() - started
        print(
            f"naive set-based statement, then waiting until gone: {naive:.3f} s"
            " (no re-check, one permission error would abort all)"
        )
        close_all(conns)

        conns = open_idle(20)
        costs = []
        for conn in conns:
            started = time.perf_counter()
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (conn.info.backend_pid,))
            costs.append(time.perf_counter() - started)
        per_pid = statistics.median(costs)
        print(
            f"pg_terminate_backend(pid, 5000), one pid at a time: median {per_pid * 1000:.0f}"
            f" ms per pid → about {per_pid * args.sessions:.0f} s for {args.sessions}"
        )
        close_all(conns)
        print("target: connfix under 2 s for 1,000")
        admin.close()
    finally:
        if not args.keep:
            lab.down()


if __name__ == "__main__":
    main()
