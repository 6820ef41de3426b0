"""Reading and writing files the way an incident tool must: never through a symlink at
the final path component, never hanging on a FIFO or a device, secrets 0600, created
directories 0700 whatever the umask, `~` expanded."""

from __future__ import annotations

import contextlib
import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

MAX_READ_BYTES = 10_000_000


class FileRefused(OSError):
    """A path that is not a regular file where one is expected, or already exists. The
    message is the reason alone: callers name the path as they know it."""


def expand(path: str | Path) -> Path:
    """Expand a leading `~` (configured paths, flags, environment variables)."""
    from pathlib import Path  # imported here: read_text serves commands that need none

    return Path(os.path.expanduser(str(path)))


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def read_text(path: str | Path, limit: int = MAX_READ_BYTES) -> str:
    """Read a regular file as UTF-8; refuse at once anything else (no FIFO can hang it)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileRefused(f"it is {_kind(mode)}, not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileRefused(f"it is larger than {limit:,} bytes")
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8")


def make_dir(path: Path) -> None:
    """Create a directory (and its missing parents) 0700, whatever the umask."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        with contextlib.suppress(OSError):
            os.chmod(created, 0o700)


def write_private(path: Path, text: str, overwrite: bool = True) -> None:
    """Write a file 0600 through a temporary file renamed into place: a symlink at the
    path is replaced, never followed; a FIFO, a device or a directory there is refused;
    with overwrite=False, an existing file is refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not overwrite:
            raise FileRefused("it already exists (--force to overwrite it)")
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise FileRefused(f"it is {_kind(mode)}, not a regular file")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
