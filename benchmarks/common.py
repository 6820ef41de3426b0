"""What every benchmark shares: a result row, the machine, and the table `make bench`
prints."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Every benchmark builds lab 5, beside an operator's lab (0) and the test suite's (7–9).
os.environ["CONNFIX_LAB_ID"] = "5"
os.environ.pop("CONNFIX_LAB_DIR", None)


@dataclass(frozen=True)
class Row:
    """One measure: connfix's figure, the floor or anchor measured in the same run, the
    target and whether it was met."""

    measure: str
    value: float
    unit: str  # "s" or "MB"
    target: str  # as the issue states it
    passed: bool
    anchor_name: str = ""
    anchor: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.anchor is None or not self.anchor:
            return None
        return self.value / self.anchor


def connfix_bin() -> list[str]:
    script = Path(sys.executable).with_name("connfix")
    return [str(script)] if script.exists() else [sys.executable, "-m", "connfix"]


def timed(
    argv: Sequence[str], ok: tuple[int, ...] = (0,), env: dict[str, str] | None = None
) -> float:
    """Run a whole process; return its wall time; stop the benchmark if it fails."""
    started = time.perf_counter()
    proc = subprocess.run(
        list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False, env=env
    )
    elapsed = time.perf_counter() - started
    if proc.returncode not in ok:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return elapsed


# a library as a command needs it: "rich" stands for rich.console
_IMPORTS = {"rich": "import rich.console"}
# what a command truly needs before its first real work: terminate (it writes a report),
# and a run that reaches hosts (a triage, a roll) — the SSH stack too
TERMINATE_NEEDS = ["click", "psycopg", "rich", "jinja2.sandbox"]
HOST_RUN_NEEDS = [*TERMINATE_NEEDS, "fabric"]


def floor_code(needs: Sequence[str]) -> str:
    """A bare python's program that imports only these libraries, nothing of connfix."""
    return "\n".join(_IMPORTS.get(m, f"import {m}") for m in needs)


def imports_alone(needs: Sequence[str]) -> float:
    """A bare python importing only the libraries a command needs, whole process: what
    any Python tool built on them pays before its first real work."""
    return timed([sys.executable, "-c", floor_code(needs)])


def bare_spec(folder: Path, name: str, **fields: object) -> Path:
    """A bare program's spec (bare_roll.py, bare_triage.py) as a JSON file in `folder`:
    how it reaches lab 5 as connfix does — the admin way into the database, the deploy
    user's key and known_hosts, the app's sessions — and `fields`."""
    from connfix.lab import hosts, lab

    ssh = lab.lab_dir() / "ssh"
    spec = folder / f"{name}.json"
    common = {
        "dsn": lab.dsn("connfix_admin", "127.0.0.1"),
        "user": hosts.DEPLOY_USER,
        "key": str(ssh / "id_ed25519"),
        "known_hosts": str(ssh / "known_hosts"),
        "app": "labapp",
    }
    spec.write_text(json.dumps(common | fields))
    return spec


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot, all cores (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """One whole process: wall time, peak RSS, its own CPU and the machine's meanwhile."""

    seconds: float
    rss_mb: float
    own_cpu: float  # user + system seconds of the process and its children
    machine_cpu: float  # busy seconds of every core while it ran, every process


def usage(argv: Sequence[str], ok: tuple[int, ...] = (0,)) -> Usage:
    """Run a whole process and measure it (see Usage); stop the benchmark if it fails."""
    busy = machine_busy()
    ran = _run(argv)
    machine = machine_busy() - busy
    if ran.code not in ok:
        sys.exit(f"{' '.join(argv)} failed ({ran.code}): {ran.err[-2000:]}")
    return Usage(ran.seconds, ran.rss_mb, ran.cpu, machine)


@dataclass(frozen=True)
class _Ran:
    seconds: float
    rss_mb: float  # peak, from wait4
    cpu: float  # user + system seconds, from wait4
    code: int
    out: str
    err: str


def _run(argv: Sequence[str]) -> _Ran:
    """Run a whole process to its end, its output read while it runs (a full pipe would
    stop it), its resources from wait4."""
    import threading

    started = time.perf_counter()
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    chunks: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda n=name, f=pipe: chunks.__setitem__(n, f.read()))
        for name, pipe in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for reader in readers:
        reader.start()
    _, status, ru = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    for reader in readers:
        reader.join()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return _Ran(
        elapsed,
        ru.ru_maxrss / 1024,
        ru.ru_utime + ru.ru_stime,
        proc.returncode,
        chunks.get("out", b"").decode(errors="replace"),
        chunks.get("err", b"").decode(errors="replace"),
    )


def run_measured(argv: Sequence[str]) -> tuple[float, float, int, str, str]:
    """Run a whole process to its end: (wall seconds, its own CPU seconds, exit status,
    stdout, stderr)."""
    ran = _run(argv)
    return ran.seconds, ran.cpu, ran.code, ran.out, ran.err


def interleaved(ways: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Run each way once per round, interleaved (all see the same machine); medians."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            times[name].append(way())
    return {name: statistics.median(values) for name, values in times.items()}


def machine() -> str:
    """Cores, memory, kernel, Python — and the PostgreSQL the lab ran (set by a bench)."""
    try:
        kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
        memory = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = "?"
    return (
        f"{os.cpu_count()} cores, {memory} memory, Linux {platform.release()},"
        f" Python {platform.python_version()}"
    )


def self_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(rows: list[Row], postgres: str, started: float) -> str:
    """The one table `make bench` prints (Markdown, pasted as is into the README)."""
    lines = [
        "| measure | connfix | floor / anchor | ratio | target | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        anchor = f"{r.anchor:.3f} {r.unit} ({r.anchor_name})" if r.anchor is not None else "—"
        if r.anchor is None and r.anchor_name:
            anchor = r.anchor_name
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "—"
        figure = f"{r.value:.3f} {r.unit}" if r.unit == "s" else f"{r.value:.0f} {r.unit}"
        result = "pass" if r.passed else "**FAIL**"
        lines.append(f"| {r.measure} | {figure} | {anchor} | {ratio} | {r.target} | {result} |")
    notes = [f"- {r.measure}: {r.note}" for r in rows if r.note]
    head = (
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, {machine()}, PostgreSQL {postgres};"
        f" all of it in {time.perf_counter() - started:.0f} s"
    )
    return "\n".join([head, "", *lines, *(["", *notes] if notes else [])])


def openssh_fanout(
    addresses: Sequence[str], user: str, identity: str, known_hosts: str, command: str
) -> float:
    """The anchor for a fan-out: OpenSSH's own `ssh`, one process per host, all started at
    once (what `pssh` or `xargs -P` does), each logging in and running `command`. Returns
    the wall time until the last one exits; stops the benchmark if any fails."""
    base = [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-i",
        identity,
        "-l",
        user,
    ]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*base, address, command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for address in addresses
    ]
    failed = [(p, p.wait()) for p in procs]
    elapsed = time.perf_counter() - started
    bad = [(p, code) for p, code in failed if code != 0]
    if bad:
        err = bad[0][0].stderr.read().decode() if bad[0][0].stderr else ""
        sys.exit(f"ssh fan-out: {len(bad)} of {len(procs)} failed: {err[-500:]}")
    for p in procs:
        if p.stderr:
            p.stderr.close()
    return elapsed
