"""A small `systemctl` for the lab's hosts: manages the one app process via a pidfile.

Run as `systemctl VERB [UNIT] [-p PROP] [--value]` by a wrapper on each host's PATH.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_GRACE_S = 3.0
START_TIMEOUT_S = 30.0


def _host_dir() -> Path:
    return Path(os.environ["CONNFIX_LAB_DIR"]) / "hosts" / os.environ["CONNFIX_LAB_HOST"]


def _config() -> dict[str, object]:
    data: dict[str, object] = json.loads((_host_dir() / "app.json").read_text())
    return data


def alive(pid: int) -> bool:
    """Tell whether pid runs; a zombie counts as gone (PID 1 may reap it late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def main_pid() -> int:
    """Return the app's pid, or 0 when it is not running."""
    try:
        pid = int((_host_dir() / "app.pid").read_text().strip())
    except (OSError, ValueError):
        return 0
    return pid if alive(pid) else 0


def start() -> int:
    if main_pid():
        return 0
    host = _host_dir()
    if (host / "fail-start").exists():
        print("Job for labapp.service failed (lab fault injected).", file=sys.stderr)
        return 1
    ready = host / "app.ready"
    ready.unlink(missing_ok=True)
    log = (host / "app.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "connfix.lab.app", str(host / "app.json")],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        close_fds=True,
    )
    (host / "app.pid").write_text(f"{proc.pid}\n")
    # Like a Type=notify unit: `start` returns once the app says it is ready (its pool is
    # connected and it serves HTTP), or fails if it dies first.
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().strip() == str(proc.pid):
            return 0
        if proc.poll() is not None:
            print(
                "Job for labapp.service failed because the control process exited with"
                f" error code (status {proc.returncode}); see app.log.",
                file=sys.stderr,
            )
            (host / "app.pid").unlink(missing_ok=True)
            return 1
        time.sleep(0.01)
    print("Job for labapp.service timed out waiting for the app to be ready.", file=sys.stderr)
    return 1


def stop() -> int:
    pid = main_pid()
    if not pid:
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.02)
    (_host_dir() / "app.pid").unlink(missing_ok=True)
    return 0


def main(argv: list[str]) -> int:
    props: list[str] = []
    value_only = False
    words: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("-p", "--property"):
            props.extend(next(args, "").split(","))
        elif arg.startswith("--property="):
            props.extend(arg.split("=", 1)[1].split(","))
        elif arg == "--value":
            value_only = True
        elif arg.startswith("-"):
            continue
        else:
            words.append(arg)
    if not words:
        print("usage: systemctl start|stop|restart|is-active|show|status|cat UNIT", file=sys.stderr)
        return 2
    verb, units = words[0], words[1:]
    unit = str(_config()["unit"])
    known = all(u in (unit, unit.removesuffix(".service")) for u in units)
    if verb == "show":
        pid = main_pid() if known else 0
        values = {
            "LoadState": "loaded" if known else "not-found",
            "ActiveState": "active" if pid else "inactive",
            "SubState": "running" if pid else "dead",
            "MainPID": str(pid),
            "Id": units[0] if units else unit,
        }
        for prop in props or list(values):
            print(values.get(prop, "") if value_only else f"{prop}={values.get(prop, '')}")
        return 0
    if not units:
        print(f"Too few arguments for {verb}.", file=sys.stderr)
        return 1
    if not known:
        print(f"Unit {units[0]} could not be found.", file=sys.stderr)
        return 4 if verb in ("status", "cat") else (3 if verb == "is-active" else 5)
    if verb == "is-active":
        active = bool(main_pid())
        print("active" if active else "inactive")
        return 0 if active else 3
    if verb == "start":
        return start()
    if verb == "stop":
        return stop()
    if verb == "restart":
        stop()
        return start()
    if verb == "status":
        pid = main_pid()
        state = "active (running)" if pid else "inactive (dead)"
        print(f"* {unit} - connfix lab app\n   Active: {state}")
        if pid:
            print(f" Main PID: {pid}")
        return 0 if pid else 3
    if verb == "cat":
        print(f"# {unit} (connfix lab stand-in)\n[Service]")
        print(f"ExecStart={sys.executable} -m connfix.lab.app")
        return 0
    print(f"Unknown command verb {verb}.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
