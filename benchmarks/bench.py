"""`make bench`: every benchmark, one after the other, then one table.

    .venv/bin/python benchmarks/bench.py            # all of them (under 15 minutes)
    .venv/bin/python benchmarks/bench.py --quick    # a 2-minute subset

Each benchmark builds its own lab (number 5) and removes it; each is also a script of
its own with more detail (`benchmarks/diagnose.py --help`). Needs root.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def postgres_version() -> str:
    from connfix.lab import postgres

    try:
        out = subprocess.run(
            [str(postgres.resolve_postgres(None) / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return out.split()[2] if len(out.split()) > 2 else out.strip()
    except Exception:  # the table still prints
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 2-minute subset")
    args = parser.parse_args()
    import diagnose
    import healthy
    import startup
    import terminate

    started = time.perf_counter()
    rows: list[common.Row] = []
    rows += startup.measure(rounds=9 if args.quick else 15)
    if args.quick:
        rows += healthy.measure(rounds=1)
        rows += diagnose.measure(runs=5)
        rows += terminate.measure(rounds=1)
    else:
        import fanout
        import restart
        import scale
        import server_log

        rows += healthy.measure(rounds=3)
        rows += diagnose.measure(runs=9)
        rows += terminate.measure(rounds=3)
        rows += restart.measure(host_count=8, rounds=3)
        rows += scale.measure()
        rows += fanout.measure(rounds=3)
        rows += server_log.measure(megabytes=200, rounds=3)
    print()
    print(common.table(rows, postgres_version(), started))
    sys.exit(0 if all(r.passed for r in rows) else 1)


if __name__ == "__main__":
    main()
