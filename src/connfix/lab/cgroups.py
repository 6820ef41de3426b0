"""Each lab host's own cgroup subtree, in every mounted hierarchy.

A host's systemd treats the cgroup it starts in as its root and creates init.scope,
system.slice and user.slice below it. The lab makes `connfix-lab[-ID]/HOST` in every
hierarchy before the host boots and moves the boot process into it, so hosts cannot
collide with each other or with anything else, and `lab down` removes exactly those
directories (deepest first, once their processes are gone)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from connfix.lab import paths

ROOT = Path("/sys/fs/cgroup")


def hierarchies() -> list[Path]:
    """Return the cgroup hierarchies mounted under /sys/fs/cgroup (v1 and v2)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        mount_point = left.split()[4]
        fstype = right.split()[0] if right else ""
        if fstype in ("cgroup", "cgroup2") and mount_point.startswith(str(ROOT)):
            found.append(Path(mount_point))
    return found


def lab_name() -> str:
    """Return the name of this lab's directory in each hierarchy."""
    return "connfix-lab" + (f"-{paths.lab_id()}" if paths.lab_id() else "")


def host_dirs(host: str) -> list[Path]:
    """Return a host's cgroup directory in every hierarchy."""
    return [h / lab_name() / host for h in hierarchies()]


def make(host: str) -> list[Path]:
    """Make a host's cgroup in every hierarchy; return the directories made, parents first."""
    made = []
    for hierarchy in hierarchies():
        parent = hierarchy / lab_name()
        for directory in (parent, parent / host):
            if directory.exists():
                continue
            directory.mkdir()
            made.append(directory)
            if (hierarchy / "cpuset.cpus").exists():  # cgroup v1 cpuset: empty until set
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (directory / knob).write_text((directory.parent / knob).read_text())
    return made


def procs_files(host: str) -> list[str]:
    """Return the cgroup.procs files a process writes its pid to, to join the host."""
    return [str(d / "cgroup.procs") for d in host_dirs(host)]


def pids(directories: list[Path]) -> set[int]:
    """Return every pid in these cgroups and below them."""
    found: set[int] = set()
    for top in directories:
        if not top.is_dir():
            continue
        for dirpath, _, filenames in os.walk(top):
            if "cgroup.procs" in filenames:
                with contextlib.suppress(OSError):
                    text = Path(dirpath, "cgroup.procs").read_text()
                    found.update(int(p) for p in text.split())
    return found


def remove(directories: list[Path], timeout: float = 10) -> list[str]:
    """Remove these cgroups and what was made below them, deepest first; return them.

    A cgroup can only go once its processes are gone; the kernel takes a moment after
    the last one exits, so this retries for up to `timeout` seconds."""
    removed: list[str] = []
    deadline = time.monotonic() + timeout
    for top in sorted(directories, key=lambda p: len(p.parts), reverse=True):
        if not top.is_dir():
            continue
        below = sorted(
            (Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True
        )
        for directory in below:
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        removed.append(str(top))
    return removed


def found_by_name() -> list[Path]:
    """Return this lab's directory in every hierarchy, for a lab whose state is gone."""
    return [h / lab_name() for h in hierarchies() if (h / lab_name()).is_dir()]


def memory_bytes(host: str) -> int | None:
    """Return the memory a host uses, as its memory cgroup counts it (its processes and
    its tmpfs overlay), or None where no memory controller is mounted."""
    for hierarchy in hierarchies():
        directory = hierarchy / lab_name() / host
        for name in ("memory.usage_in_bytes", "memory.current"):  # cgroup v1, v2
            path = directory / name
            if path.exists():
                with contextlib.suppress(OSError, ValueError):
                    return int(path.read_text())
    return None
