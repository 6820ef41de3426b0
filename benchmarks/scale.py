"""Scale: a 24-host lab holding 1,000 client backends, triaged end to end.

Builds lab 5 (24 hosts × pool 40, one host leaking 40 more: 1,000 client backends),
then times, each as a whole connfix process, with its peak RSS (GNU time's "Maximum
resident set size"): diagnose, the parallel preflight of all 24 hosts (a dry-run
restart), the triage end to end, and a rolling restart of all 24 hosts. Target: every
connfix process under 150 MB. Needs root; removes the lab unless --keep.

    .venv/bin/python benchmarks/scale.py [--hosts 24] [--pool 40]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psycopg
from common import Row, Usage, connfix_bin, openssh_fanout, usage

from connfix.lab import hosts as lab_hosts
from connfix.lab import lab, paths


def run(args: list[str], incidents: Path) -> tuple[float, int, int]:
    """Run one connfix process; return (seconds, peak RSS in MB, exit status)."""
    exe = str(Path(sys.executable).with_name("connfix"))
    argv = ["/usr/bin/time", "-v", exe, *args]
    if args[0] in ("triage", "restart"):
        argv += ["--incidents-dir", str(incidents)]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(match.group(1)) // 1024 if match else -1
    return elapsed, rss, proc.returncode


def client_backends() -> int:
    with psycopg.connect(lab.bootstrap_dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else -1


PREFLIGHT_S, RSS_MB = 1.0, 100


def measure(host_count: int = 24, pool: int = 40, keep: bool = False) -> list[Row]:
    args = argparse.Namespace(hosts=host_count, pool=pool, keep=keep)
    if not Path("/usr/bin/time").exists():
        sys.exit("needs GNU time (apt-get install -y time)")
    lab.down()
    started = time.perf_counter()
    leak = 1000 - args.hosts * args.pool
    lab.up(hosts=args.hosts, max_connections=1300, pool_size=args.pool, traffic_seconds=5.0)
    if leak > 0:
        lab.leak("app7", leak, idle_in_transaction=False)
    print(
        f"lab: {args.hosts} hosts × pool {args.pool}, app7 leaking {max(leak, 0)};"
        f" {client_backends()} client backends ({time.perf_counter() - started:.1f}s to build)"
    )
    rows = []
    again: list[Usage] = []
    anchors: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            incidents = Path(tmp)
            for label, cmd in (
                ("diagnose --json", ["diagnose", "lab", "--json"]),
                ("preflight of all hosts (restart --dry-run)", ["restart", "lab", "--dry-run"]),
                ("triage --yes, end to end", ["triage", "lab", "--yes"]),
                (f"rolling restart of all {args.hosts} hosts", ["restart", "lab", "--yes"]),
            ):
                seconds, rss, status = run(cmd, incidents)
                rows.append((label, seconds, rss, status))
                print(
                    f"  {label:45s} {seconds:6.2f} s  peak RSS {rss:4d} MB  exit {status}",
                    flush=True,
                )
            # the preflight again, 3 times, each beside its anchor: OpenSSH's `ssh` to
            # every host at once
            argv = [*connfix_bin(), "restart", "lab", "--dry-run"]
            ssh = paths.lab_dir() / "ssh"
            for _ in range(3):
                again.append(usage([*argv, "--incidents-dir", str(incidents)]))
                anchors.append(
                    openssh_fanout(
                        [paths.host_address(i) for i in range(1, args.hosts + 1)],
                        lab_hosts.DEPLOY_USER,
                        str(ssh / "id_ed25519"),
                        str(ssh / "known_hosts"),
                        "systemctl show labapp.service -p Id,LoadState,ActiveState,SubState"
                        " && sudo -n -l systemctl restart labapp.service",
                    )
                )
                last = again[-1]
                print(
                    f"  preflight again {last.seconds:.2f} s, CPU {last.own_cpu:.2f} s of its"
                    f" own, {last.machine_cpu - last.own_cpu:.2f} s elsewhere;"
                    f" OpenSSH fan-out {anchors[-1]:.2f} s",
                    flush=True,
                )
        print(f"client backends afterwards: {client_backends()}")
        worst = max(r[2] for r in rows)
        print(f"largest peak RSS: {worst} MB (target: ≤ {RSS_MB} MB)")
    finally:
        if not args.keep:
            lab.down()
    preflight = statistics.median(u.seconds for u in again)
    anchor = statistics.median(anchors)
    own = statistics.median(u.own_cpu for u in again)
    cores = os.cpu_count() or 1
    server = statistics.median((u.machine_cpu - u.own_cpu) / cores for u in again)
    worst_row = max(rows, key=lambda r: r[2])
    return [
        Row(
            f"preflight of {args.hosts} real-systemd hosts (restart --dry-run, whole process)",
            preflight,
            "s",
            f"≤ {PREFLIGHT_S:.0f} s",
            preflight <= PREFLIGHT_S,
            f"OpenSSH `ssh` ×{args.hosts} at once",
            anchor,
            f"median of 3 after the roll; connfix's own CPU {own:.2f} s; the hosts' side (booted"
            f" systemds, sshd, PAM, sudo, the health checks, on this machine's {cores} cores)"
            f" keeps every core busy for {server:.2f} s",
        ),
        Row(
            f"peak RSS of every command, {args.hosts} hosts, 1,000 backends",
            worst,
            "MB",
            f"≤ {RSS_MB} MB",
            worst <= RSS_MB,
            f"largest: {worst_row[0]}",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, default=24)
    parser.add_argument("--pool", type=int, default=40)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    measure(args.hosts, args.pool, args.keep)


if __name__ == "__main__":
    main()
