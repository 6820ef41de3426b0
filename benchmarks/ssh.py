"""Benchmark: one SSH connection to a lab host, opened and used for two commands.

Side by side, interleaved: connfix's connection (its own TCP socket: TCP_NODELAY from the
first packet, TCP_QUICKACK after each read on Linux) and the same connection on the plain
socket paramiko would open. Prints the medians of connect + authenticate, the first
command and the second command, and their ratios. Needs root; builds lab 5 (1 host) and
removes it unless --keep.

    .venv/bin/python benchmarks/ssh.py [--runs 15] [--keep]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ["CONNFIX_LAB_ID"] = "5"
os.environ.pop("CONNFIX_LAB_DIR", None)

from connfix.config.inventory_file import InventorySearch, resolve_environment
from connfix.hosts import remote
from connfix.lab import lab, paths

PHASES = ("connect + authenticate", "first command", "second command")


def plain_socket(host: str, port: int, timeout: float) -> socket.socket:
    """What paramiko does when given no socket: connect, nothing else."""
    return socket.create_connection((host, port), timeout=timeout)


def once(open_socket: Callable[[str, int, float], socket.socket]) -> list[float]:
    search = InventorySearch(None, Path.cwd(), paths.lab_dir() / "inventory.yaml")
    _, env = resolve_environment(None, "lab", search)
    saved = remote.prompt_ack_socket
    remote.prompt_ack_socket = open_socket
    conn = remote.Remote(env.hosts[0], env.ssh)
    try:
        started = time.perf_counter()
        conn.open()
        opened = time.perf_counter()
        first = conn.run("true")
        mid = time.perf_counter()
        second = conn.run("true")
        done = time.perf_counter()
        if not (first.ok and second.ok):
            raise SystemExit(first.describe() + "\n" + second.describe())
        return [opened - started, mid - opened, done - mid]
    finally:
        conn.close()
        remote.prompt_ack_socket = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    lab.down()
    lab.up(hosts=1, max_connections=20, pool_size=1)
    ways = {"connfix (prompt ACKs)": remote.prompt_ack_socket, "plain socket": plain_socket}
    results: dict[str, list[list[float]]] = {name: [] for name in ways}
    try:
        for _ in range(args.runs):
            for name, way in ways.items():
                results[name].append(once(way))
    finally:
        if not args.keep:
            lab.down()
    print(f"one SSH connection to a lab host, median of {args.runs} interleaved runs (ms):")
    print(f"  {'':24s}" + "".join(f"{p:>24s}" for p in (*PHASES, "total")))
    medians = {}
    for name, runs in results.items():
        columns = [statistics.median(r[i] for r in runs) for i in range(3)]
        columns.append(statistics.median(sum(r) for r in runs))
        medians[name] = columns
        print(f"  {name:24s}" + "".join(f"{c * 1000:24.1f}" for c in columns))
    fast, slow = medians["connfix (prompt ACKs)"], medians["plain socket"]
    print(
        "  plain / connfix: "
        + ", ".join(
            f"{p} {s / f:.1f}×" for p, s, f in zip((*PHASES, "total"), slow, fast, strict=True)
        )
    )


if __name__ == "__main__":
    main()
