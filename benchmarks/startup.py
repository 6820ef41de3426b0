"""Benchmark: each command's start-up, against what Python itself and the imports that
command truly needs cost, measured side by side.

A command's start-up is its whole process, stopped at its first real work: diagnose and
terminate given a DSN whose port refuses at once (connfix has imported and validated
everything it needs by then; the first of the rounds fills connfix's cache, as a user's
first command does), `runbook validate` on the shipped runbook, `report` on a
journal of a run refused at connect. The floor for each is a fresh interpreter importing only the
third-party modules the command truly needs (listed in its row's note); the target is
≤ 2× `python -c pass` + those imports, i.e. the floor plus one more `python -c pass`.
For rich the floor imports rich.console.
Needs no lab and no root.

    .venv/bin/python benchmarks/startup.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TERMINATE_NEEDS, Row, connfix_bin, floor_code, interleaved, timed

ROOT = Path(__file__).resolve().parent.parent
REFUSED = "host=127.0.0.1 port=1 connect_timeout=1 dbname=app user=connfix"

# command → (argv after `connfix`, exit statuses it ends with, what it truly needs).
# "rich" stands for rich.console. None needs pydantic once its inputs are in connfix's
# cache: an inventory or runbook validated before is built from there (the first of the
# interleaved rounds fills it, as a user's first command does).
COMMANDS = {
    "diagnose --json": (
        ["diagnose", "--dsn", REFUSED, "--json"],
        (3,),
        # no pydantic: after the first round its environment comes from connfix's cache
        ["click", "psycopg"],
    ),
    "terminate --dry-run": (
        ["terminate", "--dsn", REFUSED, "--dry-run", "--incidents-dir", "INCIDENTS"],
        (3,),
        TERMINATE_NEEDS,
    ),
    "runbook validate": (
        [
            "runbook",
            "validate",
            str(ROOT / "src/connfix/engine/runbooks/too-many-connections.yaml"),
        ],
        (0,),
        # no YAML, no pydantic, no Jinja: after the first round its parse, its records
        # and its expressions found valid come from connfix's cache
        ["click", "rich"],
    ),
    "report": (["report", "JOURNAL"], (0,), ["click", "jinja2.sandbox"]),
}


def refused_journal(folder: Path) -> Path:
    """An incident directory whose journal is a run refused at connect (a shape every run
    can leave), for `connfix report`."""
    incident = folder / "20261204T000000Z-bench"
    incident.mkdir(parents=True)
    events = [
        {
            "event": "run_start",
            "environment": "bench",
            "operator": "bench",
            "hostname": "bench",
            "connfix_version": "0.1.0",
            "runbook": {
                "name": "too-many-connections",
                "source": "connfix:runbooks/too-many-connections.yaml",
                "sha256": "0" * 64,
                "shadows": None,
                "healthy": "severity == 'ok'",
                "steps": ["diagnose"],
            },
            "inventory": "inventory.yaml",
            "flags": {"dry_run": True, "yes": False, "interactive": False, "mode": "triage"},
            "pid": 1,
            "resumed_from": None,
            "resume_done": {},
        },
        {"event": "error", "phase": "connect", "message": "connection refused"},
        {"event": "run_end", "status": "unreachable", "exit_status": 3, "message": "refused"},
    ]
    lines = [
        json.dumps({"ts": f"2026-12-04T00:00:0{i}.000Z", "seq": i, **e})
        for i, e in enumerate(events)
    ]
    (incident / "journal.jsonl").write_text("\n".join(lines) + "\n")
    return incident


def _stderr(flag: str, argv: list[str], ok: tuple[int, ...]) -> str:
    """Run python with one diagnostic flag; return what it wrote on stderr."""
    proc = subprocess.run([sys.executable, flag, *argv], capture_output=True, text=True)
    if proc.returncode not in ok:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stderr


def _self_times(argv: list[str], ok: tuple[int, ...]) -> dict[str, int]:
    """Each module a process imports, with its own import time (µs, -X importtime)."""
    times: dict[str, int] = {}
    for line in _stderr("-Ximporttime", argv, ok).splitlines():
        parts = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[0].strip().isdigit():
            times[parts[2].strip()] = int(parts[0])
    return times


def _loaded(argv: list[str], ok: tuple[int, ...]) -> set[str]:
    """Every module a process imports (python -v), those importlib.import_module loads
    among them: -X importtime times only the import statement's, so connfix's lazy
    command and action modules are missing from _self_times."""
    return {
        line.split("'")[1]
        for line in _stderr("-v", argv, ok).splitlines()
        if line.startswith("import '") and line.count("'") >= 2
    }


def beyond_floor(argv: list[str], ok: tuple[int, ...], needs: list[str]) -> str:
    """What a command imports that its floor does not, by each module's own import time
    in one more run (its inputs cached): connfix's modules, and the others (the largest
    named); and the modules importlib.import_module loaded, which -X importtime does not
    time (counted from python -v in one more run)."""
    script = argv[0] if argv[0].endswith("connfix") else None
    command = [script, *argv[1:]] if script else ["-m", "connfix", *argv[3:]]
    mine = _self_times(command, ok)
    floor = _self_times(["-c", floor_code(needs)], (0,))
    extra = {m: t for m, t in mine.items() if m not in floor}
    own = sum(t for m, t in extra.items() if m.split(".")[0] == "connfix")
    others = sorted(
        ((t, m) for m, t in extra.items() if m.split(".")[0] != "connfix"), reverse=True
    )
    named = ", ".join(f"{m} {t / 1000:.1f}" for t, m in others[:4])
    untimed = sorted(_loaded(command, ok) - set(mine) - _loaded(["-c", floor_code(needs)], (0,)))
    unseen = (
        f"; not timed by it, loaded through importlib.import_module: {len(untimed)}"
        f" module{'s' if len(untimed) > 1 else ''}"
        f" ({', '.join(untimed)})"
        if untimed
        else ""
    )
    return (
        f"imported beyond the floor's (-X importtime, one more run): connfix's own modules"
        f" {own / 1000:.1f} ms, the others {sum(t for t, _ in others) / 1000:.1f} ms"
        f" ({named} ms){unseen}"
    )


def measure(rounds: int = 15) -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp:
        journal = refused_journal(Path(tmp) / "incidents")
        python = [sys.executable, "-c", "pass"]
        ways = {"python -c pass": lambda: timed(python)}
        argvs = {
            name: [
                *connfix_bin(),
                *[a.replace("INCIDENTS", tmp).replace("JOURNAL", str(journal)) for a in args],
            ]
            for name, (args, _, _) in COMMANDS.items()
        }
        for name, (_, ok, needs) in COMMANDS.items():
            imports = [sys.executable, "-c", floor_code(needs)]
            ways[name] = lambda argv=argvs[name], ok=ok: timed(argv, ok=ok)
            ways[f"{name} floor"] = lambda imports=imports: timed(imports)
        medians = interleaved(ways, rounds)
        beyond = {
            name: beyond_floor(argvs[name], ok, needs) for name, (_, ok, needs) in COMMANDS.items()
        }
    bare = medians["python -c pass"]
    print(f"\nstart-up, median of {rounds} interleaved rounds (python -c pass {bare:.3f} s):")
    rows = []
    for name, (_, _, needs) in COMMANDS.items():
        value, floor = medians[name], medians[f"{name} floor"]
        target = floor + bare  # 2 × python -c pass + the imports it needs
        print(f"  {name:22s} {value:6.3f} s   floor {floor:6.3f} s   target ≤ {target:6.3f} s")
        print(f"    {beyond[name]}")
        rows.append(
            Row(
                f"start-up: connfix {name} (whole process, to its first real work)",
                value,
                "s",
                "≤ 2× python -c pass + the imports it needs",
                value <= target,
                f"python: import {', '.join(needs)}",
                floor,
                f"python -c pass {bare:.3f} s; target ≤ {target:.3f} s; {beyond[name]}",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    measure(args.rounds)


if __name__ == "__main__":
    main()
