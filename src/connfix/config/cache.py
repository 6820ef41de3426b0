"""connfix's cache on this machine: what is computed the same way at every start and
costs more to compute than to load (the report template compiled by Jinja, the parse of
each YAML document read: connfix.config.yamlfile).

`$XDG_CACHE_HOME/connfix/KIND`, else `~/.cache/connfix/KIND`, made private (0700) on
first use. A cache holds code this process will run, so it is used only when every
directory from the cache's base down is this user's own and writable by no one else;
otherwise, or when it cannot be made, there is no cache (the work is done as if the
cache did not exist). `CONNFIX_NO_CACHE=1` turns it off."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def directory(kind: str) -> Path | None:
    """The cache directory for `kind`, ready to use; None when there is to be none."""
    if os.environ.get("CONNFIX_NO_CACHE", "") not in ("", "0"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or ""
    if not os.path.isabs(base):  # the spec: a relative path is to be ignored
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    root = Path(base)
    where = root / "connfix" / kind
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        where.parent.mkdir(mode=0o700, exist_ok=True)
        where.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return None
    for folder in (root, root / "connfix", where):
        if not _private(folder):
            return None
    return where


def _private(folder: Path) -> bool:
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
