"""Benchmark: `connfix diagnose lab --json` on a lab holding 1,000 client backends.

Prints the median wall time of the whole connfix process next to the Python floor (a
fresh interpreter that imports psycopg, connects and runs the same two queries: what any
Python tool pays), psql running the same queries, `python -c pass`, and `connfix
--help`. Needs root (it builds its own lab, number 5, and removes it at the end unless
--keep).

    .venv/bin/python benchmarks/diagnose.py [--runs 9] [--keep]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, run_measured

from connfix.db import pg
from connfix.lab import lab

HOSTS, POOL, MAX_CONNECTIONS = 4, 250, 1100


def connfix_bin() -> list[str]:
    script = Path(sys.executable).with_name("connfix")
    return [str(script)] if script.exists() else [sys.executable, "-m", "connfix"]


def timed(argv: list[str], runs: int, ok: tuple[int, ...] = (0,)) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        times.append(time.perf_counter() - started)
        if proc.returncode not in ok:
            sys.exit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()}")
    return times


TARGET_S = 0.25
TARGET_RATIO = 1.3  # × the Python floor
FLOOR = """
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
for path in sys.argv[2:]:
    conn.execute(open(path).read()).fetchall()
"""
# the floor with the command line's library imported (click; no connfix code)
STACK_FLOOR = "import click\n" + FLOOR


def measure(runs: int = 9, keep: bool = False) -> list[Row]:
    lab.down()
    started = time.perf_counter()
    lab.up(hosts=HOSTS, max_connections=MAX_CONNECTIONS, pool_size=POOL, traffic_seconds=5.0)
    print(
        f"lab up: {HOSTS} hosts × pool {POOL}, max_connections {MAX_CONNECTIONS}"
        f" ({time.perf_counter() - started:.1f}s)"
    )
    try:
        with pg.Session(pg.connect(lab.bootstrap_dsn()), "admin", None) as session:
            count = session.conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).fetchone()
        print(f"client backends: {count[0] if count else '?'}")
        queries = resources.files("connfix.db").joinpath("queries")
        psql = [
            "psql",
            "-X",
            "-q",
            "-A",
            "-t",
            "-d",
            lab.dsn("connfix"),
            "-f",
            str(queries / "activity.sql"),
            "-f",
            str(queries / "connection_limits.sql"),
        ]
        connfix = [*connfix_bin(), "diagnose", "lab", "--json"]
        floor = [
            sys.executable,
            "-c",
            FLOOR,
            lab.dsn("connfix"),
            str(queries / "activity.sql"),
            str(queries / "connection_limits.sql"),
        ]
        stack_floor = [sys.executable, "-c", STACK_FLOOR, *floor[3:]]
        rounds: dict[str, list[float]] = {
            "connfix diagnose --json": [],
            "python floor": [],
            "floor + click": [],
            "psql, same queries": [],
            "python -c pass": [],
            "connfix --help": [],
        }
        cpu: dict[str, list[float]] = {"connfix": [], "floor": []}
        # interleaved, so all see the same machine
        for _ in range(runs):
            for name, argv, ok in (
                ("connfix", connfix, (0, 1)),
                ("floor", floor, (0,)),
            ):
                wall, used, code, _, err = run_measured(argv)
                if code not in ok:
                    sys.exit(f"{' '.join(argv)} failed ({code}): {err}")
                rounds["connfix diagnose --json" if name == "connfix" else "python floor"].append(
                    wall
                )
                cpu[name].append(used)
            rounds["floor + click"] += timed(stack_floor, 1)
            rounds["psql, same queries"] += timed(psql, 1)
            rounds["python -c pass"] += timed([sys.executable, "-c", "pass"], 1)
            rounds["connfix --help"] += timed([*connfix_bin(), "--help"], 1)
        medians = {name: statistics.median(values) for name, values in rounds.items()}
        print(f"\nmedian of {runs} runs, interleaved:")
        for name, value in medians.items():
            print(f"  {name:26s} {value:6.3f} s")
        ratio = medians["connfix diagnose --json"] / medians["python floor"]
        print(f"  ratio connfix / floor      {ratio:6.2f}×")
        print(
            f"  own CPU: connfix {statistics.median(cpu['connfix']):.3f} s,"
            f" the floor {statistics.median(cpu['floor']):.3f} s"
        )
        print(f"target: diagnose ≤ {TARGET_RATIO}× the Python floor and ≤ {TARGET_S} s")
    finally:
        if not keep:
            lab.down()
    value, floor_s = medians["connfix diagnose --json"], medians["python floor"]
    return [
        Row(
            f"diagnose --json, {count[0] if count else '?'} client backends (whole process)",
            value,
            "s",
            f"≤ {TARGET_RATIO}× floor and ≤ {TARGET_S} s",
            value <= TARGET_RATIO * floor_s and value <= TARGET_S,
            "python: import psycopg, connect, the same queries",
            floor_s,
            f"psql, same queries {medians['psql, same queries']:.3f} s; python -c pass"
            f" {medians['python -c pass']:.3f} s; connfix --help {medians['connfix --help']:.3f} s;"
            f" own CPU: connfix {statistics.median(cpu['connfix']):.3f} s, the floor"
            f" {statistics.median(cpu['floor']):.3f} s; the floor with click imported"
            f" (no connfix code) {medians['floor + click']:.3f} s ="
            f" {medians['floor + click'] / floor_s:.2f}× the floor",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args()
    measure(args.runs, args.keep)


if __name__ == "__main__":
    main()
