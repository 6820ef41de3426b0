"""A bare Python roll: the least a Python tool built on connfix's libraries does to roll
the lab's hosts, for the restart benchmark's floor of a roll's fixed cost.

With the same libraries as connfix (psycopg, fabric/paramiko) and the same commands on
the hosts, nothing else: the diagnosis query and every host's health check at once (one
SSH login per host, host keys checked), the preflight's two read-only commands on every
host at once, then host by host the restart, the unit active as a new invocation, the
health check passing, the host's pool back in pg_stat_activity and the unit still the
same invocation; last the diagnosis query and the health checks again. No journal, no
report, no terminal, no inventory or runbook, no lock, no re-checks. Prints one JSON
line: the seconds spent host by host (the part connfix's fixed cost leaves out), when
each phase before the roll ended (from the interpreter's first line), and how long the
final diagnosis took.

    python benchmarks/bare_roll.py SPEC.json

SPEC: {"dsn", "addresses", "user", "key", "known_hosts", "unit", "restart", "health",
"pool", "app"}.
"""

import json
import socket
import sys
import time

START = time.perf_counter()
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from fabric import Connection  # noqa: E402
from paramiko import RejectPolicy  # noqa: E402

ACTIVITY = "SELECT pid, usename, application_name, client_addr, state FROM pg_stat_activity"
BACKENDS = (
    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
    " AND client_addr = %s::inet AND application_name = %s"
)
SHOW = "systemctl show -p Id,ActiveState,SubState,MainPID,InvocationID,NRestarts "


def run(conn: Connection, command: str) -> tuple[int, str]:
    """One command on an open connection: its exit status and output."""
    _, out, _ = conn.client.exec_command(command)
    text = out.read().decode()
    return out.channel.recv_exit_status(), text


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


class PromptAckSocket(socket.socket):
    """What any tool making short SSH exchanges needs, as connfix.hosts.remote's
    _PromptAckSocket does (written out here: importing connfix's would load connfix into
    the program that stands for none of it): no Nagle, and no delayed ACKs (TCP_QUICKACK
    after each read). Without them each command waits about 40 ms on the lab for an
    ACK."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


def prompt_ack_socket(address: str) -> socket.socket:
    sock = PromptAckSocket(fileno=socket.create_connection((address, 22), timeout=5).detach())
    sock.settimeout(5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def login(address: str, spec: dict[str, str]) -> Connection:
    """One SSH login, as connfix logs in: the key given, the host key checked against
    the known_hosts file, an unknown one refused, on a socket without Nagle or delayed
    ACKs."""
    conn = Connection(
        address,
        user=spec["user"],
        connect_timeout=5,
        connect_kwargs={
            "key_filename": spec["key"],
            "look_for_keys": False,
            "allow_agent": False,
            "sock": prompt_ack_socket(address),
        },
    )
    conn.client.load_host_keys(spec["known_hosts"])
    conn.client.set_missing_host_key_policy(RejectPolicy())
    conn.open()
    return conn


def need(passed: bool, what: str) -> None:
    """Stop the roll, as any tool would, when a host or the database says no."""
    if not passed:
        sys.exit(f"bare roll stopped: {what}")


def main() -> None:
    with open(sys.argv[1]) as file:
        spec = json.load(file)

    def pids(address: str) -> set[int]:
        return {row[0] for row in db.execute(BACKENDS, (address, spec["app"]))}

    def health(conn: Connection) -> bool:
        return run(conn, spec["health"])[0] == 0

    unit = spec["unit"]
    with ThreadPoolExecutor(16) as pool:
        # the first diagnosis: the database and every host's health, at once; the logins
        # begin as soon as the SSH stack is imported, psycopg's import and the database
        # meanwhile
        logins = pool.map(lambda address: login(address, spec), spec["addresses"])
        import psycopg

        db = psycopg.connect(spec["dsn"], autocommit=True)
        db.execute(ACTIVITY).fetchall()
        marks = {"imports and database": time.perf_counter() - START}
        conns = list(logins)
        need(all(pool.map(health, conns)), "a health check failed")
        marks["first diagnosis"] = time.perf_counter() - START
        # the preflight: the unit's state and the restart permitted, every host at once
        probe = f"sudo -n -l -- systemctl restart {unit}"
        shown = pool.map(lambda c: props(run(c, SHOW + unit)[1]), conns)
        allowed = pool.map(lambda c: run(c, probe)[0] == 0, conns)
        before = list(shown)
        need(all(allowed), "the restart command is not permitted")
        need(all(s["ActiveState"] == "active" for s in before), "a unit is not active")
        marks["preflight"] = time.perf_counter() - START
        per_host = 0.0
        for conn, old in zip(conns, before, strict=True):
            started = time.perf_counter()
            old_pids = pids(conn.host)
            need(run(conn, spec["restart"])[0] == 0, f"the restart failed on {conn.host}")
            while True:  # active as a new invocation
                now = props(run(conn, SHOW + unit)[1])
                if now["ActiveState"] == "active" and now["InvocationID"] != old["InvocationID"]:
                    break
                time.sleep(0.05)
            while not health(conn):
                time.sleep(0.05)
            while True:  # its old sessions gone, its pool back
                new = pids(conn.host)
                if not new & old_pids and len(new) >= spec["pool"]:
                    break
                time.sleep(0.02)
            again = props(run(conn, SHOW + unit)[1])
            need(again["InvocationID"] == now["InvocationID"], f"{unit} restarted again")
            per_host += time.perf_counter() - started
        rolled = time.perf_counter()
        # the final diagnosis
        db.execute(ACTIVITY).fetchall()
        need(all(pool.map(health, conns)), "a health check failed after the roll")
    for conn in conns:
        conn.close()
    db.close()
    final = time.perf_counter() - rolled
    print(json.dumps({"per_host": per_host, "since_start": marks, "final_diagnosis": final}))


if __name__ == "__main__":
    main()
