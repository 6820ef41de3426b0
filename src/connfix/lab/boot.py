"""Boot one lab host: a real systemd as PID 1 of its own PID, mount and UTS namespaces,
inside the host's network namespace, on an overlay of `/` whose writes land in a tmpfs.

Run by `connfix lab up` as `python -m connfix.lab.boot SPEC.json` (root). The process:

1. joins the host's cgroup subtree in every hierarchy (made by the lab beforehand), so the
   host's systemd can never touch a cgroup the lab did not make;
2. joins the host's network namespace and unshares mount, PID and UTS namespaces;
3. forks: the child is PID 1 of the new PID namespace, the parent prints its pid and exits;
4. the child makes every mount private, mounts a tmpfs, an overlay (lower `/`, upper and
   work dirs on that tmpfs), copies the host's seed files in, mounts its own `/proc`, a
   read-only `/sys` with the cgroup hierarchies, a `/dev` of its own, tmpfs `/run` and
   `/tmp`, binds the Python runtime read-only, creates the host's users, then chroots and
   execs `/lib/systemd/systemd --system`.

Safety (see the lab notes): the booting systemd never sees the real root filesystem (its
tmpfiles would empty the real /tmp), `/proc/sys` and `/sys` are read-only (its sysctl
and module loading would change the machine), and the units that must not run on a lab
host are masked in the seed.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from connfix.lab import cgroups

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SYSTEMD = "/lib/systemd/systemd"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _sh(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {(proc.stderr or proc.stdout).strip()}")


def _mount(*args: str) -> None:
    _sh("mount", *args)


def _bind(source: str, target: Path, readonly: bool = False) -> None:
    _mount("--bind", source, str(target))
    if readonly:
        _mount("-o", "remount,bind,ro", str(target))


def _enter(spec: dict[str, Any]) -> None:
    """Join the cgroups and the network namespace; unshare mount, PID and UTS."""
    for procs in spec["cgroups"]:
        Path(procs).write_text(f"{os.getpid()}\n")
    libc = _libc()
    fd = os.open(f"/run/netns/{spec['namespace']}", os.O_RDONLY)
    try:
        _check(libc.setns(fd, CLONE_NEWNET), "setns")
    finally:
        os.close(fd)
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS), "unshare")


def _root(spec: dict[str, Any]) -> Path:
    """Mount the host's tmpfs and overlay; return the merged root."""
    _mount("--make-rprivate", "/")
    scratch = Path(spec["scratch"])
    _mount("-t", "tmpfs", "-o", f"mode=0755,size={spec['tmpfs_size']}", "connfix-lab", str(scratch))
    for sub in ("upper", "work", "root"):
        (scratch / sub).mkdir()
    root = scratch / "root"
    _mount(
        "-t",
        "overlay",
        "-o",
        f"lowerdir=/,upperdir={scratch / 'upper'},workdir={scratch / 'work'}",
        "connfix-lab",
        str(root),
    )
    return root


def _api_filesystems(root: Path) -> None:
    _mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", str(root / "proc"))
    _bind(str(root / "proc" / "sys"), root / "proc" / "sys", readonly=True)
    if (root / "proc" / "sysrq-trigger").exists():
        _bind(str(root / "proc" / "sysrq-trigger"), root / "proc" / "sysrq-trigger", readonly=True)
    _mount("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", str(root / "sys"))
    # A tmpfs of the host's own for /sys/fs/cgroup, with each hierarchy bound into it:
    # systemd makes directories and symlinks there and remounts it read-only, which on
    # the machine's own tmpfs would change the machine.
    cgroot = root / "sys" / "fs" / "cgroup"
    hierarchies = cgroups.hierarchies()
    if hierarchies == [Path("/sys/fs/cgroup")]:  # the unified hierarchy alone
        _bind("/sys/fs/cgroup", cgroot)
    else:
        _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev,noexec,size=1m", "cg", str(cgroot))
        for hierarchy in hierarchies:
            target = cgroot / hierarchy.name
            target.mkdir()
            _bind(str(hierarchy), target)
    dev = root / "dev"
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,size=1m", "dev", str(dev))
    for name in DEVICES:
        (dev / name).touch()
        _bind(f"/dev/{name}", dev / name)
    (dev / "console").touch()
    _bind("/dev/null", dev / "console")
    (dev / "pts").mkdir()
    _mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=620", "devpts", str(dev / "pts"))
    (dev / "ptmx").symlink_to("pts/ptmx")
    (dev / "shm").mkdir()
    _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "shm", str(dev / "shm"))
    for link, pointee in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        (dev / link).symlink_to(pointee)
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev,size=64m", "run", str(root / "run"))
    _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev,size=64m", "tmp", str(root / "tmp"))


def _seed(root: Path, spec: dict[str, Any]) -> None:
    """Copy the host's own files in, make its users, give them their files."""
    shutil.copytree(spec["seed"], root, symlinks=True, dirs_exist_ok=True)
    for user in spec["users"]:
        _sh(
            "useradd",
            "--root",
            str(root),
            "--create-home",
            "--shell",
            "/bin/bash",
            "--uid",
            str(user["uid"]),
            "--user-group",
            user["name"],
        )
        # not locked: sshd refuses a key login to a locked account
        _sh("usermod", "--root", str(root), "--password", "*", user["name"])
    for path, owner, mode in spec["owned"]:
        target = root / path.lstrip("/")
        _sh("chroot", str(root), "chown", "-R", owner, path)
        target.chmod(int(mode, 8))
    for directory in spec["traversable"]:
        target = root / directory.lstrip("/")
        target.chmod(target.stat().st_mode | 0o001)
    for path in spec["runtime"]:  # the lab app's Python, where the overlay cannot show it
        target = root / path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        _bind(path, target, readonly=True)


def _boot(spec: dict[str, Any]) -> None:
    """PID 1 of the new namespaces: build the root, then become systemd."""
    root = _root(spec)
    _api_filesystems(root)
    _seed(root, spec)
    os.chroot(root)
    os.chdir("/")
    env = {
        "container": "connfix-lab",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
    }
    os.execve(SYSTEMD, [SYSTEMD, "--system", "--log-target=journal-or-kmsg"], env)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    _enter(spec)
    pid = os.fork()
    if pid:
        print(pid, flush=True)  # the host's PID 1, as the machine sees it
        return 0
    try:
        os.setsid()
        log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        _boot(spec)
    except BaseException as exc:
        print(f"connfix lab boot failed: {exc}", file=sys.stderr, flush=True)
        os._exit(1)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
