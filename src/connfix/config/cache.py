"""connfix's cache on this machine: what is computed the same way at every start and
costs more to compute than to load (the report template compiled by Jinja, the parse of
each YAML document read: connfix.config.yamlfile, the records validated from each:
connfix.config.records, the runbook conditions found valid: connfix.engine.expressions,
the code Python generates for dataclasses: connfix.config.generated).

`$XDG_CACHE_HOME/connfix/KIND`, else `~/.cache/connfix/KIND`, made private (0700) on
first use. A cache holds code this process will run, so it is used only when every
directory from the cache's base down is this user's own and writable by no one else;
otherwise, or when it cannot be made, there is no cache (the work is done as if the
cache did not exist). `CONNFIX_NO_CACHE=1` turns it off.

Paths here are strings, handled with os.path: every command reads the cache, and
pathlib's import is 4.5 ms of a short command's start-up (`runbook validate`)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable


def directory(kind: str) -> str | None:
    """The cache directory for `kind`, ready to use; None when there is to be none."""
    if os.environ.get("CONNFIX_NO_CACHE", "") not in ("", "0"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or ""
    if not os.path.isabs(base):  # the spec: a relative path is to be ignored
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    mine = os.path.join(base, "connfix")
    where = os.path.join(mine, kind)
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
        for folder in (mine, where):
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)
    except OSError:
        return None
    for folder in (base, mine, where):
        if not _private(folder):
            return None
    return where


def _private(folder: str) -> bool:
    """A directory (not a link to one) of this user's that no one else may write in."""
    try:
        info = os.lstat(folder)
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.geteuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def entry(kind: str, depends: bytes | None, key: bytes) -> str | None:
    """The file of one entry of `kind`: named by a hash of what it depends on (a
    `signature`) and of its input; None when there is no cache or the dependencies
    could not be told."""
    from connfix.config.digest import sha256_hex

    folder = directory(kind)
    if folder is None or depends is None:
        return None
    return os.path.join(folder, f"{sha256_hex(depends + key)}.marshal")


def read(where: str) -> bytes:
    """An entry's bytes (OSError when there is none yet)."""
    with open(where, "rb") as file:
        return file.read()


def signature(sources: Iterable[str]) -> bytes | None:
    """What an entry depends on besides its input: these files, by path, size and
    modification time (as Python's own .pyc are checked); None when one cannot be read."""
    said = b""
    try:
        for source in sources:
            info = os.stat(source)
            said += f"{source}\0{info.st_size}\0{info.st_mtime_ns}\0".encode()
    except (OSError, ValueError):
        return None
    return said


def store(where: str, blob: bytes, keep: int) -> None:
    """Write an entry atomically (private to this user), then keep only the newest
    `keep` entries of its directory. A full disk or a race with another connfix: no
    entry this time."""
    stem, suffix = os.path.splitext(where)
    temporary = f"{stem}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(blob)
        os.replace(temporary, where)
        with os.scandir(os.path.dirname(where)) as found:
            entries = [(e.stat().st_mtime, e.path) for e in found if e.name.endswith(suffix)]
        for _, old in sorted(entries)[:-keep]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
