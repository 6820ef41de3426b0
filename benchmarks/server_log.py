"""Benchmark: the refusals of a run's window counted in a large server log, at a run's end.

Writes a day of a busy server's log (200 MB by default, refusals all along it) into the
lab server's log directory and counts the last hour's refused connection attempts
through SQL, as every run's end does (connfix.db.server_log.through_sql), next to the
whole-file statement it replaced (pg_read_file and one scan of the whole file), each on
a fresh session; prints the wall times and each server backend's peak memory (VmHWM).
The two counts must be equal, and equal to a plain reading of the files. Needs root;
builds lab 5 and removes it unless --keep.

    .venv/bin/python benchmarks/server_log.py [--megabytes 200] [--keep]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg
from common import Row

from connfix.db import server_log
from connfix.db.pg import Session
from connfix.lab import lab

TARGET = 0.25  # s, the window's count at a run's end: this round's own guard


def write_day(path: Path, megabytes: int) -> None:
    """A day of log ending now, ~100 bytes a line, a refusal every 997 lines."""
    count = megabytes * 10_000
    began = datetime.now(UTC) - timedelta(hours=24)
    with path.open("wb") as out:
        for block in range(0, count, 10_000):
            lines = []
            for i in range(block, block + 10_000):
                when = began + timedelta(seconds=86_400 * i / count)
                what = (
                    "sorry, too many clients already"
                    if i % 997 == 0
                    else "terminating connection due to administrator command"
                )
                lines.append(f"{when:%Y-%m-%d %H:%M:%S}.{when.microsecond // 1000:03d} UTC"
                             f" [{i}] FATAL:  {what}\n")  # fmt: skip
            out.write("".join(lines).encode())


def peak_kb(pid: int) -> int | None:
    """A server backend's peak resident memory, from /proc (the lab's server is local)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def on_fresh_session(work: Any) -> tuple[float, Any, int | None]:
    """Run work(conn) on a new session; its wall time, result and backend's peak memory."""
    with psycopg.connect(lab.bootstrap_dsn(), autocommit=True) as conn:
        pid = conn.info.backend_pid
        started = time.perf_counter()
        try:
            result = work(conn)
        except psycopg.Error as exc:
            result = exc
        elapsed = time.perf_counter() - started
        return elapsed, result, peak_kb(pid)


def measure(megabytes: int = 200, rounds: int = 3, keep: bool = False) -> list[Row]:
    lab.down()
    lab.up(hosts=1, max_connections=None, pool_size=1)
    path: Path | None = None
    try:
        with psycopg.connect(lab.bootstrap_dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_setting('data_directory'), current_setting('log_directory')"
            ).fetchone()
        assert row is not None
        directory = Path(row[0]) / row[1]
        path = directory / "postgresql-day.log"
        write_day(path, megabytes)
        owner = directory.stat()
        os.chown(path, owner.st_uid, owner.st_gid)
        since, until = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC)
        plain = sum(
            1
            for file in directory.iterdir()
            for line in file.read_text(errors="replace").splitlines()
            if server_log._MATCH.search(line)
            and since <= (server_log.line_time(line, UTC) or since - timedelta(1)) <= until
        )
        ours, whole, ours_kb, whole_kb = [], [], [], []
        counted, whole_result = None, None
        for _ in range(rounds):
            took, found, kb = on_fresh_session(
                lambda conn: server_log.through_sql(Session(conn, "primary", None), since, until)
            )
            ours.append(took)
            ours_kb.append(kb or 0)
            counted = found

            def whole_file(conn: psycopg.Connection[Any]) -> int:
                total = 0
                for (name,) in conn.execute("SELECT name FROM pg_ls_logdir()").fetchall():
                    params = {"name": name, "pattern": server_log.LINE_PATTERN}
                    for (line,) in conn.execute(server_log._SCAN_WHOLE, params):
                        when = server_log.line_time(line, UTC)
                        total += when is not None and since <= when <= until
                return total

            took, whole_result, kb = on_fresh_session(whole_file)
            whole.append(took)
            whole_kb.append(kb or 0)
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
        if not keep:
            lab.down()
    assert counted is not None and counted.unknown is None, counted
    if counted.refused != plain:
        sys.exit(f"connfix counted {counted.refused} refusals, a plain reading {plain}")
    ok_whole = not isinstance(whole_result, Exception)
    if ok_whole and whole_result != plain:
        sys.exit(f"the whole-file statement counted {whole_result}, a plain reading {plain}")
    value, anchor = statistics.median(ours), statistics.median(whole)
    said_whole = (
        f"{anchor:.3f} s, its backend's peak {statistics.median(whole_kb) / 1024:.0f} MB"
        if ok_whole
        else f"failed after {anchor:.3f} s ({str(whole_result).strip()})"
    )
    print(
        f"\nthe last hour's refusals in a day of log ({megabytes} MB), {plain} counted,"
        f" median of {rounds}:\n"
        f"  connfix (the window, 8 MB pieces)   {value:.3f} s, its backend's peak"
        f" {statistics.median(ours_kb) / 1024:.0f} MB\n"
        f"  the whole file, one statement       {said_whole}\n"
        f"  target: connfix ≤ {TARGET} s"
    )
    return [
        Row(
            f"refusals of a run's last hour in a {megabytes} MB day of server log (the run's end)",
            value,
            "s",
            f"≤ {TARGET} s (this round's guard)",
            value <= TARGET,
            "the whole file read and scanned by the server in one statement",
            anchor if ok_whole else None,
            f"{plain} refusals, the same count as a plain reading of the files; connfix's"
            f" server backend peaked at {statistics.median(ours_kb) / 1024:.0f} MB; the"
            f" whole-file statement {said_whole}",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    measure(args.megabytes, args.rounds, args.keep)


if __name__ == "__main__":
    main()
