"""Refused connection attempts, counted from PostgreSQL's own log: the lines
`FATAL:  sorry, too many clients already` and `FATAL:  remaining connection slots are
reserved for …` between two instants.

Two ways to the log: through SQL — `pg_ls_logdir()` (pg_monitor) lists the log
directory's files and `pg_read_binary_file(text, bigint, bigint)` (EXECUTE on it) reads
each from where the window begins (a binary search on its lines' times: only those
times leave the server), a bounded piece at a time, the matching done by the server so
no other line of the log ever leaves it (without that grant, `pg_read_file(text)`
reads a file whole, up to WHOLE_FILE_BYTES) — or the files themselves where connfix
runs (`database.log_files`, a glob), read from the window on as well. A large log costs
a run's end what its window holds, not the file's size, and never puts more than a
piece of it in the server's memory. Only each matching line's
time and kind are kept: a log holds queries, names and sometimes secrets, and none of
it goes into the journal or the report. stderr, csvlog and jsonlog lines are read; a
line's time is its `%m`/`%t` prefix (log_line_prefix must start with one of them)."""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from connfix.db.pg import Session

# English server messages (lc_messages): what a refused connection attempt logs
PATTERN = r"(sorry, too many clients already|remaining connection slots are reserved)"
KINDS = {"sorry, too many clients": "too many clients", "remaining connection": "reserved slots"}
LINE_PATTERN = f"^([^\\n]*{PATTERN}[^\\n]*)$"  # a whole line holding PATTERN
MAX_FILE_BYTES = 512 * 1024 * 1024  # more of a file than this in the window: not read (said so)
# through SQL, the server holds one piece of the log at a time: this many bytes at most
# (plus the rest of a line), as text and as the matcher's wide characters, ~5× that
CHUNK_BYTES = 8 * 1024 * 1024
PROBE_BYTES = 64 * 1024  # one probe for where a line starts and the time of a line
SLACK = timedelta(minutes=5)  # log lines written this much out of order still counted
# without pg_read_binary_file, a file is read whole (pg_read_file(text)) up to this size
WHOLE_FILE_BYTES = 16 * 1024 * 1024
_STAMP = re.compile(
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)(?: ([A-Za-z]{1,6}|[+-]\d\d(?::?\d\d)?))?"
)
_MATCH = re.compile(PATTERN)


@dataclass
class Refusals:
    """What the log says of refused attempts in a window (or why it could not say)."""

    source: str
    since: datetime
    until: datetime
    refused: int = 0
    first: datetime | None = None
    last: datetime | None = None
    by_kind: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    undated: int = 0  # matching lines whose time could not be read
    unknown: str | None = None  # why nothing could be counted
    skipped: list[str] = field(default_factory=list)  # files not read, and why

    def fields(self) -> dict[str, Any]:
        def iso(when: datetime | None) -> str | None:
            return when.isoformat(timespec="milliseconds") if when else None

        return {
            "source": self.source,
            "since": iso(self.since),
            "until": iso(self.until),
            "refused": None if self.unknown else self.refused,
            "first": iso(self.first),
            "last": iso(self.last),
            "by_kind": self.by_kind,
            "files": self.files,
            "undated": self.undated,
            "unknown": self.unknown,
            "skipped": self.skipped,
        }

    def add(self, line: str, zone: tzinfo) -> None:
        """Count one matching line when its time is in the window."""
        found = _MATCH.search(line)
        if found is None:
            return
        when = line_time(line, zone)
        if when is None:
            self.undated += 1
            return
        if not self.since <= when <= self.until:
            return
        kind = next(v for k, v in KINDS.items() if found.group(1).startswith(k))
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        self.refused += 1
        self.first = when if self.first is None else min(self.first, when)
        self.last = when if self.last is None else max(self.last, when)


def line_time(line: str, zone: tzinfo) -> datetime | None:
    """A log line's time: jsonlog's `timestamp`, else the stamp the line starts with."""
    text = line
    if line.startswith("{"):
        try:
            text = str(json.loads(line).get("timestamp", ""))
        except ValueError:
            return None
    stamp = _STAMP.match(text)
    if stamp is None:
        return None
    when = datetime.fromisoformat(stamp.group(1))
    name = stamp.group(2)
    if name is None:
        return when.replace(tzinfo=zone)
    if name[0] in "+-":
        digits = name[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        sign = 1 if name[0] == "+" else -1
        return when.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
    if name in ("UTC", "GMT", "Z"):
        return when.replace(tzinfo=UTC)
    return when.replace(tzinfo=zone)  # an abbreviation: the server's log_timezone


def zone_of(name: str | None) -> tzinfo:
    """The server's log_timezone as a tzinfo (UTC when unknown)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def window_start(
    probe: Callable[[int], tuple[int | None, datetime | None]], size: int, since: datetime
) -> int:
    """Where to begin reading a log file of `size` bytes so that every line from `since`
    on is read: a line start whose line is older than `since` less SLACK (lines are
    written a little out of order), found by a binary search on the lines' times.
    `probe(offset)` reads PROBE_BYTES from `offset`: where the first line after it
    starts and the time of the first line in it that has one (None when there is none:
    in the middle of a long line, the probes go on past it). 0 when the file begins
    inside the window or its times cannot be read; about 17 probes for 512 MB."""
    cutoff = since - SLACK
    low, high, start = 0, size, 0  # the line at `start` is older than the cutoff

    def first_time(offset: int) -> tuple[int | None, datetime | None]:
        line, when = probe(offset)
        at = offset
        while when is None and at + PROBE_BYTES < high:  # a long line, or no time in it
            at += PROBE_BYTES - 1  # a line starting just after the probe's last byte too
            found, when = probe(at)
            line = line if line is not None else found
        return line, when

    while high - low > PROBE_BYTES:
        middle = (low + high) // 2
        line, when = first_time(middle)
        if line is None or when is None or when >= cutoff:
            high = middle
        else:
            low, start = middle, line
    return start


def _read_from(
    probe: Callable[[int], tuple[int | None, datetime | None]],
    name: str,
    size: int,
    since: datetime,
    found: Refusals,
) -> int | None:
    """Where one file is read from: its window's start (a file of one piece from its
    beginning); None when more than MAX_FILE_BYTES of it are in the window (said in
    `found`)."""
    start = window_start(probe, size, since) if size > CHUNK_BYTES else 0
    if size - start > MAX_FILE_BYTES:
        found.skipped.append(
            f"{name}: {size - start} bytes from the window's start, over {MAX_FILE_BYTES}"
        )
        return None
    return start


_READ_BINARY = "pg_read_binary_file(text, bigint, bigint)"
_PROBE = (
    "SELECT position('\\x0a'::bytea IN p),"
    " substring(encode(substring(p FROM position('\\x0a'::bytea IN p) + 1), 'escape')"
    " FROM %(stamp)s::text)"
    " FROM pg_read_binary_file(current_setting('log_directory') || '/' || %(name)s,"
    " %(offset)s, %(length)s) AS f(p)"
)
# the bytes as text: a piece cut anywhere is still text (encode's escapes for bytes
# over 127), matched line by line; only the matching lines leave the server
_SCAN = (
    "SELECT m[1] FROM pg_read_binary_file(current_setting('log_directory') || '/' ||"
    " %(name)s, %(offset)s, %(length)s) AS f(b),"
    " regexp_matches(encode(b, 'escape'), %(pattern)s, 'gn') AS m"
)
_SCAN_WHOLE = (
    "SELECT m[1] FROM regexp_matches(pg_read_file("
    "current_setting('log_directory') || '/' || %(name)s), %(pattern)s, 'gn') AS m"
)
# a line's time as the server finds it at the start of a line (stderr, csvlog) or as
# jsonlog's first member: only the time leaves the server, never the line
_LINE_STAMP = (
    r'(?n)^(?:\{"timestamp":")?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?'
    r"(?: (?:[A-Za-z]{1,6}|[+-]\d\d(?::?\d\d)?))?)"
)
_ESCAPED = re.compile(rb"\\(\\|[0-7]{3})")  # encode's \\ and \ooo


def _unescaped(line: str) -> str:
    """A line as encode(…, 'escape') gave it, back to its text."""
    raw = _ESCAPED.sub(
        lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1), 8)]),
        line.encode("ascii", "replace"),
    )
    return raw.decode("utf-8", "replace")


def through_sql(session: Session, since: datetime, until: datetime) -> Refusals:
    """Count through SQL: the log directory's files modified since `since`, each read
    by the server from where the window begins (window_start) in pieces of CHUNK_BYTES
    ending at a line's end, and filtered there; `unknown` with the reason when the role
    may not. Without EXECUTE on pg_read_binary_file(text, bigint, bigint), a file is
    read whole with pg_read_file(text), up to WHOLE_FILE_BYTES."""
    import psycopg

    found = Refusals("the server's log directory (pg_ls_logdir, read by the server)", since, until)
    conn = session.conn
    try:
        with conn.transaction():
            zone, in_pieces = conn.execute(
                "SELECT current_setting('log_timezone'), has_function_privilege(%s, 'EXECUTE')",
                (_READ_BINARY,),
            ).fetchone() or (None, False)
            listed = conn.execute(
                "SELECT name, size FROM pg_ls_logdir()"
                " WHERE modification >= %s ORDER BY modification",
                (since,),
            ).fetchall()
            tz = zone_of(zone)
            for name, size in listed:
                if in_pieces:
                    lines = _in_pieces(conn, name, size, since, tz, found)
                elif size > WHOLE_FILE_BYTES:
                    found.skipped.append(
                        f"{name}: {size} bytes; without EXECUTE on {_READ_BINARY}, which"
                        f" reads the window in pieces, a file is read whole up to"
                        f" {WHOLE_FILE_BYTES} bytes"
                    )
                    continue
                else:
                    params = {"name": name, "pattern": LINE_PATTERN}
                    lines = [row[0] for row in conn.execute(_SCAN_WHOLE, params)]
                if lines is None:
                    continue
                found.files.append(str(name))
                for line in lines:
                    found.add(line, tz)
    except psycopg.errors.InsufficientPrivilege as exc:
        found.unknown = (
            f"the server refused to show its log ({exc.diag.message_primary}): grant"
            f" connfix's role pg_monitor and EXECUTE on {_READ_BINARY} (or on"
            " pg_read_file(text), for files up to"
            f" {WHOLE_FILE_BYTES // (1024 * 1024)} MB), or give database.log_files"
        )
    except psycopg.Error as exc:
        found.unknown = f"the server's log could not be read: {exc.diag.message_primary or exc}"
    if not found.unknown and not found.files:
        found.unknown = (
            "no log file in the server's log directory was written since then"
            " (logging_collector off? give database.log_files)"
        )
    return found


def _in_pieces(
    conn: Any, name: str, size: int, since: datetime, zone: tzinfo, found: Refusals
) -> list[str] | None:
    """The matching lines of one file from where the window begins, each piece of at
    most CHUNK_BYTES (plus the rest of its last line) scanned by the server: what it
    holds at once stays bounded whatever the file's size. None: skipped (said why)."""

    def probe(offset: int) -> tuple[int | None, datetime | None]:
        row = conn.execute(
            _PROBE, {"name": name, "offset": offset, "length": PROBE_BYTES, "stamp": _LINE_STAMP}
        ).fetchone()
        newline, stamp = row if row else (0, None)
        if not newline:
            return None, None
        return offset + newline, line_time(stamp, zone) if stamp else None

    start = _read_from(probe, name, size, since, found)
    if start is None:
        return None
    lines: list[str] = []
    while start < size:
        end = min(start + CHUNK_BYTES, size)
        while end < size:  # on to the end of the line the piece would cut
            line, _ = probe(end)
            if line is not None:
                end = min(line, size)
                break
            end = min(end + PROBE_BYTES, size)
        params = {"name": name, "offset": start, "length": end - start, "pattern": LINE_PATTERN}
        lines += [_unescaped(row[0]) for row in conn.execute(_SCAN, params)]
        start = end
    return lines


def _local_probe(
    raw: BinaryIO, zone: tzinfo
) -> Callable[[int], tuple[int | None, datetime | None]]:
    """window_start's probe on a file read where connfix runs."""

    def probe(offset: int) -> tuple[int | None, datetime | None]:
        raw.seek(offset)
        piece = raw.read(PROBE_BYTES)
        newline = piece.find(b"\n")
        if newline < 0:
            return None, None
        for line in piece[newline + 1 :].split(b"\n")[:-1]:  # whole lines only
            when = line_time(line.decode("utf-8", "replace"), zone)
            if when is not None:
                return offset + newline + 1, when
        return offset + newline + 1, None

    return probe


def from_files(pattern: str, since: datetime, until: datetime, zone: tzinfo = UTC) -> Refusals:
    """Count in the log files a glob names, read where connfix runs."""
    found = Refusals(f"the log files {pattern}", since, until)
    paths = sorted(glob.glob(str(Path(pattern).expanduser())))
    if not paths:
        found.unknown = f"no file matches database.log_files ({pattern})"
        return found
    for path in paths:
        file = Path(path)
        try:
            status = file.stat()
            if datetime.fromtimestamp(status.st_mtime, UTC) < since:
                continue
            with file.open("rb") as raw:
                start = _read_from(_local_probe(raw, zone), path, status.st_size, since, found)
                if start is None:
                    continue
                raw.seek(start)
                for line in raw:
                    if b"FATAL" in line or line.startswith(b"{"):
                        found.add(line.decode("utf-8", "replace"), zone)
            found.files.append(path)
        except OSError as exc:
            found.skipped.append(f"{path}: {exc.strerror or exc}")
    if not found.files and not found.unknown:
        found.unknown = "no log file matching database.log_files was written since then"
    return found
