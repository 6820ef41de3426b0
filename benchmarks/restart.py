"""Benchmark: a rolling restart of the lab's hosts, three ways, side by side.

After one untimed warm-up run of each, in each round, interleaved: the floor (the sum of
the bare `systemctl restart` times, measured on each host), `connfix restart`, a plain
`ssh` loop doing the same restart and health commands, `ansible-playbook` with
`serial: 1` doing the same (with Ansible's defaults, and with pipelining on), and a bare
Python roll (bare_roll.py: the same libraries and commands, nothing else) whose fixed
cost is the floor of connfix's. Prints medians and ratios, and connfix's per-host and
fixed cost from its journal. Needs root; builds lab 5 (8 hosts) and removes it unless
--keep. ansible-core is installed from PyPI into benchmarks/.ansible-venv, for this
benchmark only.

    .venv/bin/python benchmarks/restart.py [--hosts 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HOST_RUN_NEEDS as NEEDS
from common import Row, bare_spec, connfix_bin, imports_alone, run_measured, usage

from connfix.lab import hosts, lab, paths

HERE = Path(__file__).resolve().parent
ANSIBLE_VENV = HERE / ".ansible-venv"
UNIT = "labapp.service"
RESTART = f"sudo -n systemctl restart {UNIT}"
HEALTH = "curl -fsS --max-time 2 http://127.0.0.1:8080/health"


def ansible_playbook() -> Path:
    exe = ANSIBLE_VENV / "bin" / "ansible-playbook"
    if not exe.exists():
        print("installing ansible-core into benchmarks/.ansible-venv (once) …", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(ANSIBLE_VENV)], check=True)
        subprocess.run(
            [str(ANSIBLE_VENV / "bin" / "pip"), "install", "-q", "ansible-core"], check=True
        )
    return exe


def ssh_base() -> list[str]:
    ssh = lab.lab_dir() / "ssh"
    return [
        "ssh",
        "-o",
        "GSSAPIAuthentication=no",
        "-o",
        "BatchMode=yes",
        "-o",
        f"UserKnownHostsFile={ssh / 'known_hosts'}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-i",
        str(ssh / "id_ed25519"),
        "-l",
        hosts.DEPLOY_USER,
    ]


def floor(addresses: list[str]) -> float:
    """Sum of the bare restart times, each measured on its host."""
    total_ns = 0
    script = f"s=$(date +%s%N); {RESTART} >/dev/null; e=$(date +%s%N); echo $((e - s))"
    for address in addresses:
        out = subprocess.run(
            [*ssh_base(), address, script], capture_output=True, text=True, check=True
        ).stdout
        total_ns += int(out.strip())
        wait_healthy(address)
    return total_ns / 1e9


def wait_healthy(address: str) -> None:
    subprocess.run(
        [*ssh_base(), address, f"until {HEALTH} >/dev/null 2>&1; do sleep 0.05; done"], check=True
    )


def ssh_loop(addresses: list[str]) -> float:
    started = time.perf_counter()
    for address in addresses:
        subprocess.run(
            [
                *ssh_base(),
                address,
                f"{RESTART} && until {HEALTH} >/dev/null 2>&1; do sleep 0.1; done",
            ],
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - started


CONNFIX_SPLIT: list[tuple[float, float]] = []  # per round: (gates per host, outside the hosts)
# per round, from the journal's timestamps: where the fixed cost goes
PHASES: dict[str, list[float]] = {
    "start-up (to run_start; the SSH stack, logins begun)": [],
    "first diagnosis (health checks)": [],
    "preflight and plan": [],
    "final diagnosis, report, exit": [],
}


def _ts(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["ts"]).replace("Z", "+00:00")).timestamp()


def connfix_roll(workdir: Path) -> float:
    exe = Path(sys.executable).with_name("connfix")
    incidents = workdir / "incidents"
    before = set(incidents.iterdir()) if incidents.is_dir() else set()
    wall = time.time()
    started = time.perf_counter()
    proc = subprocess.run(
        [str(exe), "restart", "lab", "--yes", "--incidents-dir", str(incidents)],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"connfix restart failed ({proc.returncode}):\n{proc.stderr}")
    (incident,) = set(incidents.iterdir()) - before
    events = [json.loads(line) for line in (incident / "journal.jsonl").read_text().splitlines()]
    done = [event for event in events if event["event"] == "host_done"]
    gates = sum(d["seconds"] - d["gates"]["restart"] for d in done) / len(done)
    CONNFIX_SPLIT.append((gates, elapsed - sum(d["seconds"] for d in done)))
    first = {}
    for event in events:
        first.setdefault(event["event"], event)
    diagnosed = _ts(first["step_end"])
    PHASES["start-up (to run_start; the SSH stack, logins begun)"].append(
        _ts(first["run_start"]) - wall
    )
    PHASES["first diagnosis (health checks)"].append(diagnosed - _ts(first["run_start"]))
    PHASES["preflight and plan"].append(_ts(first["host_start"]) - diagnosed)
    PHASES["final diagnosis, report, exit"].append(wall + elapsed - _ts(done[-1]))
    return elapsed


BARE_PHASES: dict[str, list[float]] = {}


def bare_roll(spec: Path) -> float:
    """A bare Python roll, whole process: its fixed cost (its wall time but the seconds
    it spent host by host)."""
    elapsed, _, code, stdout, stderr = run_measured(
        [sys.executable, str(HERE / "bare_roll.py"), str(spec)]
    )
    if code != 0:
        sys.exit(f"bare_roll.py failed ({code}):\n{stderr[-2000:]}")
    out = json.loads(stdout)
    for name, value in out["since_start"].items():
        BARE_PHASES.setdefault(f"{name} done at", []).append(value)
    BARE_PHASES.setdefault("then the final diagnosis", []).append(out["final_diagnosis"])
    return elapsed - float(out["per_host"])


def import_ssh() -> float:
    """A fresh interpreter importing what any Python tool needs to reach a host over
    SSH as connfix does (fabric, which brings paramiko and invoke)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import fabric"], check=True)
    return time.perf_counter() - started


def bare_python() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def write_ansible(
    workdir: Path, addresses: list[str], pipelining: bool
) -> tuple[Path, Path, dict[str, str]]:
    ssh = lab.lab_dir() / "ssh"
    inventory = workdir / "hosts.ini"
    inventory.write_text(
        "[app]\n"
        + "".join(f"{paths.host_name(i)} ansible_host={a}\n" for i, a in enumerate(addresses, 1))
    )
    playbook = workdir / "roll.yml"
    playbook.write_text(f"""\
- hosts: app
  serial: 1
  gather_facts: false
  tasks:
    - name: restart
      ansible.builtin.command: {RESTART}
    - name: health
      ansible.builtin.command: {HEALTH}
      register: health
      until: health.rc == 0
      retries: 100
      delay: 0.1
""")
    env = {
        **os.environ,
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_PIPELINING": "True" if pipelining else "False",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(workdir / "cp"),
        "ANSIBLE_SSH_ARGS": (
            f"-o ControlMaster=auto -o ControlPersist=60s"
            f" -o GSSAPIAuthentication=no"
            f" -o UserKnownHostsFile={ssh / 'known_hosts'}"
        ),
        "ANSIBLE_PRIVATE_KEY_FILE": str(ssh / "id_ed25519"),
        "ANSIBLE_REMOTE_USER": hosts.DEPLOY_USER,
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
        "ANSIBLE_LOCAL_TEMP": str(workdir / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    return inventory, playbook, env


def ansible_roll(exe: Path, inventory: Path, playbook: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [str(exe), "-i", str(inventory), str(playbook)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"ansible-playbook failed ({proc.returncode}):\n{proc.stdout[-2000:]}")
    return elapsed


def close_masters(control_dir: Path) -> None:
    """Stop the SSH control masters Ansible left (ControlPersist), by their sockets."""
    if not control_dir.is_dir():
        return
    for sock in control_dir.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "lab-host"],
            capture_output=True,
            check=False,
        )


TARGET_FIXED_S = 0.5  # connfix's fixed cost: everything but the hosts' own restarts
TARGET_PER_HOST_S = 0.040  # connfix's own time per host, in its gates
TARGET_ANSIBLE = 1.4  # Ansible's defaults ≥ 1.4× connfix


def measure(host_count: int = 8, rounds: int = 3, keep: bool = False) -> list[Row]:
    args = argparse.Namespace(hosts=host_count, rounds=rounds, keep=keep)
    exe = ansible_playbook()
    lab.down()
    lab.up(hosts=args.hosts, max_connections=3 * args.hosts + 20, pool_size=3)
    addresses = [paths.host_address(i) for i in range(1, args.hosts + 1)]
    workdir = Path(tempfile.mkdtemp(prefix="connfix-bench-"))
    inventory, playbook, env = write_ansible(workdir, addresses, pipelining=False)
    _, _, env_pipelining = write_ansible(workdir, addresses, pipelining=True)
    results: dict[str, list[float]] = {
        "floor (sum of bare restarts)": [],
        "connfix restart": [],
        "plain ssh loop": [],
        "ansible serial: 1 (defaults)": [],
        "ansible serial: 1 + pipelining": [],
    }
    try:
        # one untimed run of each first: Ansible's first run sets up its remote temp
        # directories and compiles its modules; connfix's first run warms its imports
        floor(addresses)
        connfix_roll(workdir)
        ssh_loop(addresses)
        ansible_roll(exe, inventory, playbook, env)
        ansible_roll(exe, inventory, playbook, env_pipelining)
        spec = bare_spec(
            workdir, "bare-roll", addresses=addresses, unit=UNIT, restart=RESTART,
            health=HEALTH, pool=3,
        )  # fmt: skip
        bare_roll(spec)
        BARE_PHASES.clear()
        CONNFIX_SPLIT.clear()
        for phase in PHASES.values():
            phase.clear()
        imports: list[float] = []
        libraries: list[float] = []
        bare: list[float] = []
        for number in range(1, args.rounds + 1):
            imports.append(import_ssh() - bare_python())
            libraries.append(imports_alone(NEEDS))
            results["floor (sum of bare restarts)"].append(floor(addresses))
            results["connfix restart"].append(connfix_roll(workdir))
            bare.append(bare_roll(spec))
            results["plain ssh loop"].append(ssh_loop(addresses))
            results["ansible serial: 1 (defaults)"].append(
                ansible_roll(exe, inventory, playbook, env)
            )
            results["ansible serial: 1 + pipelining"].append(
                ansible_roll(exe, inventory, playbook, env_pipelining)
            )
            print(
                f"round {number}: "
                + ", ".join(f"{k.split(' (')[0]} {v[-1]:.2f}s" for k, v in results.items())
                + f"; fixed cost: connfix {CONNFIX_SPLIT[-1][1]:.3f}s, bare Python {bare[-1]:.3f}s",
                flush=True,
            )
        # the fixed phases alone (start-up, first diagnosis, preflight, report: a dry
        # run), whole process: its own CPU, and every core's meanwhile
        dry = [
            usage([*connfix_bin(), "restart", "lab", "--dry-run", "--incidents-dir", str(workdir)])
            for _ in range(3)
        ]
    finally:
        close_masters(workdir / "cp")
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep:
            lab.down()
    medians = {k: statistics.median(v) for k, v in results.items()}
    base = medians["floor (sum of bare restarts)"]
    print(f"\n{args.hosts} hosts, median of {args.rounds} interleaved rounds:")
    for name, value in medians.items():
        print(f"  {name:32s} {value:6.2f} s   {value / base:5.2f}× the floor")
    for name in ("ansible serial: 1 (defaults)", "ansible serial: 1 + pipelining"):
        print(f"  {name} / connfix: {medians[name] / medians['connfix restart']:.2f}×")
    gates = statistics.median(g for g, _ in CONNFIX_SPLIT)
    outside = statistics.median(o for _, o in CONNFIX_SPLIT)
    print(
        f"connfix (from its journal): {gates * 1000:.0f} ms per host in its gates after the"
        f" restart command, {outside:.2f} s outside the hosts (start-up, preflight, report)"
    )
    phases = {name: statistics.median(values) for name, values in PHASES.items()}
    ssh_import = statistics.median(imports)
    print("connfix's fixed cost by phase (journal timestamps, medians):")
    for name, value in phases.items():
        print(f"  {name:46s} {value:6.3f} s")
    print(f"  of which importing fabric/paramiko (import fabric - pass) {ssh_import:.3f} s")
    imported = statistics.median(libraries)
    print(f"  a bare python importing what a roll needs ({', '.join(NEEDS)}) {imported:.3f} s")
    print(
        f"targets: connfix's fixed cost ≤ {TARGET_FIXED_S} s and ≤"
        f" {TARGET_PER_HOST_S * 1000:.0f} ms per host, Ansible's defaults ≥ {TARGET_ANSIBLE}×"
        " connfix"
    )
    connfix = medians["connfix restart"]
    ansible = medians["ansible serial: 1 (defaults)"]
    dry_wall = statistics.median(u.seconds for u in dry)
    dry_cpu = statistics.median(u.own_cpu for u in dry)
    dry_hosts = statistics.median(u.machine_cpu - u.own_cpu for u in dry)
    floor_fixed = statistics.median(bare)
    bare_phases = ", ".join(
        f"{name} {statistics.median(values):.3f} s" for name, values in BARE_PHASES.items()
    )
    print(
        f"a bare Python roll (bare_roll.py: psycopg and fabric, the same commands, nothing"
        f" else): fixed cost {floor_fixed:.3f} s ({bare_phases}); connfix's"
        f" {outside:.3f} s = {outside / floor_fixed:.2f}× it"
    )
    print(
        f"a dry run (the fixed phases alone): {dry_wall:.3f} s; connfix's own CPU"
        f" {dry_cpu:.3f} s, the hosts' side {dry_hosts:.3f} s of CPU on the same 2 cores"
    )
    split = (
        f"a bare Python roll with connfix's libraries and the same commands on the hosts, and"
        f" nothing else (no journal, report, terminal, inventory, lock or re-checks:"
        f" benchmarks/bare_roll.py), has a fixed cost of {floor_fixed:.3f} s ({bare_phases}),"
        f" measured in the same rounds"
        + (f", over the {TARGET_FIXED_S} s target itself;" if floor_fixed > TARGET_FIXED_S else ";")
        + f" connfix's fixed cost {outside:.2f} s (start-up, preflight, report),"
        f" {gates * 1000:.0f} ms"
        f" per host in its gates; by phase: "
        + ", ".join(f"{name} {value:.3f} s" for name, value in phases.items())
        + f"; importing fabric/paramiko alone {ssh_import:.3f} s (in the start-up), a bare"
        f" python importing every library a roll needs ({', '.join(NEEDS)}) {imported:.3f} s;"
        + f" a dry run (the fixed phases alone, median of 3) {dry_wall:.3f} s: connfix's"
        f" own CPU {dry_cpu:.3f} s, the hosts' side (sshd, PAM, logind, sudo, the health"
        f" checks' curl and app, on the same 2 cores) {dry_hosts:.3f} s of CPU, so"
        f" (CPU of both) / 2 cores = {(dry_cpu + dry_hosts) / 2:.3f} s at best;"
        f" Ansible's defaults {ansible:.2f} s are {ansible / base:.2f}× the sum of bare restarts"
    )
    return [
        Row(
            f"rolling restart, {args.hosts} real-systemd hosts: connfix's fixed cost"
            " (everything but the hosts' own restarts)",
            outside,
            "s",
            f"≤ {TARGET_FIXED_S} s, ≤ {TARGET_PER_HOST_S * 1000:.0f} ms per host",
            outside <= TARGET_FIXED_S and gates <= TARGET_PER_HOST_S,
            "a bare Python roll's fixed cost (the same libraries and commands, nothing else)",
            floor_fixed,
            f"the whole roll {connfix:.3f} s, the sum of bare systemctl restarts {base:.3f} s; "
            + split,
        ),
        Row(
            f"rolling restart, {args.hosts} hosts, vs ansible-playbook serial: 1",
            connfix,
            "s",
            f"Ansible's defaults ≥ {TARGET_ANSIBLE}× connfix",
            ansible / connfix >= TARGET_ANSIBLE,
            "ansible-playbook, defaults",
            ansible,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    measure(args.hosts, args.rounds, args.keep)


if __name__ == "__main__":
    main()
