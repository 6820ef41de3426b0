"""Fan-out: the restart preflight of 200 hosts, as one whole connfix process.

200 lightweight SSH endpoints, not 200 booted systemds: lab 5 is built with one real
host (its own systemd, sshd, sudo, labapp.service), then 200 more addresses are put on
that host's interface and served by extra sshd processes started inside the host (16
listen addresses each, OpenSSH's limit per sshd). Every endpoint is therefore a real
sshd with PAM, the real sudo and the real systemd of the host: what connfix reads there
is what it reads on any host. An inventory environment `fanout` lists the 200 as hosts.

Measured, each a whole process: `connfix restart fanout --dry-run` (a diagnosis with
every host's health check over SSH, then the preflight of all 200 — SSH, host key,
`systemctl show`, the sudo probe — on the same connections) with its peak RSS, and as
the anchor in the same run OpenSSH's `ssh` started once per host at the same time (what
pssh does), each logging in and running the preflight's two commands. Targets: ≤ 3 s,
≤ 150 MB. Needs root; removes the lab unless --keep.

    .venv/bin/python benchmarks/fanout.py [--hosts 200] [--rounds 3] [--keep]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yaml
from common import Row, Usage, connfix_bin, openssh_fanout, usage

from connfix.lab import hosts as lab_hosts
from connfix.lab import lab, paths
from connfix.lab.state import LabState

FANOUT_S, RSS_MB = 3.0, 150
FIRST = 40  # fan-out addresses: .40 up; the lab's own hosts are .11 up
PER_SSHD = 16  # OpenSSH's MAX_LISTEN_SOCKS
SSHD_CONFIG = """\
# connfix benchmark: fan-out endpoints {first}..{last} of lab host app1
{listen}
HostKey {host_key}
PidFile /run/sshd-fanout-{n}.pid
UsePAM yes
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys/%u
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UseDNS no
MaxSessions 50
MaxStartups 300:30:400
"""


def endpoints(count: int) -> list[str]:
    return [f"{paths.subnet()}.{FIRST + i}" for i in range(count)]


def serve(addresses: list[str]) -> None:
    """Put the addresses on app1's interface and start sshd processes for them inside app1
    (its PID namespace: they end with the host when the lab goes down)."""
    state = LabState.load()
    if state is None or "app1" not in state.init_pids:
        sys.exit("the lab has no app1")
    pid = state.init_pids["app1"]
    ns = paths.namespace(1)
    batch = "".join(f"addr add {a}/24 dev eth0\n" for a in addresses)
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True)
    for n, start in enumerate(range(0, len(addresses), PER_SSHD)):
        group = addresses[start : start + PER_SSHD]
        config = f"/etc/ssh/fanout-{n}.conf"
        lab_hosts.file_in(pid, config).write_text(
            SSHD_CONFIG.format(
                first=group[0],
                last=group[-1],
                listen="\n".join(f"ListenAddress {a}" for a in group),
                host_key=lab_hosts.HOST_KEY,
                n=n,
            )
        )
        lab_hosts.enter(pid, ["/usr/sbin/sshd", "-f", config])


def inventory(addresses: list[str], directory: Path) -> Path:
    """The lab's inventory with one more environment, `fanout`: the 200 endpoints as hosts;
    and their known_hosts lines (app1's host key under each address)."""
    source = paths.lab_dir() / "inventory.yaml"
    data = yaml.safe_load(source.read_text())
    env = json.loads(json.dumps(data["environments"]["lab"]))
    key = (paths.host_dir("app1") / "ssh_host_ed25519_key.pub").read_text().split()
    known = directory / "known_hosts"
    known.write_text("".join(f"{a} {key[0]} {key[1]}\n" for a in addresses))
    env["ssh"]["known_hosts_file"] = str(known)
    env["description"] = f"{len(addresses)} SSH endpoints on lab host app1"
    env["hosts"] = [
        {"name": f"fan{i + 1}", "ssh_address": a, "db_address": a} for i, a in enumerate(addresses)
    ]
    data["environments"] = {"fanout": env}
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def preflight_seconds(incidents: Path) -> tuple[float, float]:
    """(the diagnosis step with its SSH health checks, the preflight), from the newest
    run's journal: step start to its plan or diagnosis."""
    journal = max(incidents.glob("*/journal.jsonl"), key=lambda p: p.stat().st_mtime)
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    starts = [e for e in events if e["event"] == "step_start"]
    ends = [e for e in events if e["event"] == "step_end"]

    def seconds(a: dict[str, str], b: dict[str, str]) -> float:
        from datetime import datetime

        return (datetime.fromisoformat(b["ts"]) - datetime.fromisoformat(a["ts"])).total_seconds()

    return seconds(starts[0], ends[0]), seconds(starts[1], ends[1])


def measure(host_count: int = 200, rounds: int = 3, keep: bool = False) -> list[Row]:
    lab.down()
    built = time.perf_counter()
    lab.up(hosts=1, max_connections=20, pool_size=2)
    addresses = endpoints(host_count)
    serve(addresses)
    print(
        f"lab: 1 host, {host_count} SSH endpoints on it"
        f" ({time.perf_counter() - built:.1f}s to build)",
        flush=True,
    )
    ssh = paths.lab_dir() / "ssh"
    runs: list[Usage] = []
    anchors: list[float] = []
    parts: list[tuple[float, float]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            inv = inventory(addresses, directory)
            known = str(directory / "known_hosts")
            argv = [
                *connfix_bin(),
                "restart",
                "fanout",
                "--dry-run",
                "--inventory",
                str(inv),
                "--incidents-dir",
                str(directory / "incidents"),
            ]
            for _ in range(rounds):
                runs.append(usage(argv))
                parts.append(preflight_seconds(directory / "incidents"))
                anchors.append(
                    openssh_fanout(
                        addresses,
                        lab_hosts.DEPLOY_USER,
                        str(ssh / "id_ed25519"),
                        known,
                        "systemctl show labapp.service -p Id,LoadState,ActiveState,SubState"
                        " && sudo -n -l systemctl restart labapp.service",
                    )
                )
                run = runs[-1]
                print(
                    f"  connfix {run.seconds:.2f} s (diagnosis with health checks"
                    f" {parts[-1][0]:.2f} s, preflight {parts[-1][1]:.2f} s),"
                    f" peak RSS {run.rss_mb:.0f} MB, CPU {run.own_cpu:.2f} s of its own and"
                    f" {run.machine_cpu - run.own_cpu:.2f} s elsewhere (the endpoints' sshd,"
                    f" PAM, sudo, systemd); OpenSSH fan-out {anchors[-1]:.2f} s",
                    flush=True,
                )
    finally:
        if not keep:
            lab.down()
    seconds = statistics.median(r.seconds for r in runs)
    rss = max(r.rss_mb for r in runs)
    cores = os.cpu_count() or 1
    # what the endpoints' side alone keeps every core busy for: a floor on this machine,
    # where the 200 "hosts" share its cores (on a real fleet each has its own)
    server = statistics.median((r.machine_cpu - r.own_cpu) / cores for r in runs)
    own = statistics.median(r.own_cpu for r in runs)
    anchor = statistics.median(anchors)
    health = statistics.median(p[0] for p in parts)
    pre = statistics.median(p[1] for p in parts)
    return [
        Row(
            f"fan-out preflight of {host_count} sshd endpoints (restart --dry-run, whole process)",
            seconds,
            "s",
            f"≤ {FANOUT_S:.0f} s",
            seconds <= FANOUT_S,
            f"OpenSSH `ssh` ×{host_count} at once",
            anchor,
            f"median of {rounds}; first SSH login + health check of every host {health:.2f} s,"
            f" the preflight on the same connections {pre:.2f} s. connfix's own CPU"
            f" {own:.2f} s; the endpoints' side (sshd, PAM, sudo, systemd, all on this"
            f" machine's {cores} cores) keeps every core busy for {server:.2f} s: that is"
            " the floor here, whatever the client does",
        ),
        Row(
            f"peak RSS, fan-out preflight of {host_count} hosts",
            rss,
            "MB",
            f"≤ {RSS_MB} MB",
            rss <= RSS_MB,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    for row in measure(args.hosts, args.rounds, args.keep):
        print(row)


if __name__ == "__main__":
    main()
