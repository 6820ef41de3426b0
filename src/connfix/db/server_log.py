"""Refused connection attempts, counted from PostgreSQL's own log: the lines
`FATAL:  sorry, too many clients already` and `FATAL:  remaining connection slots are
reserved for …` between two instants.

Two ways to the log: through SQL — `pg_ls_logdir()` (pg_monitor) and `pg_read_file()`
on the files of the log directory (EXECUTE on it, or pg_read_server_files), the
matching done by the server so no other line of the log ever leaves it — or the files
themselves where connfix runs (`database.log_files`, a glob). Only each matching line's
time and kind are kept: a log holds queries, names and sometimes secrets, and none of
it goes into the journal or the report. stderr, csvlog and jsonlog lines are read; a
line's time is its `%m`/`%t` prefix (log_line_prefix must start with one of them)."""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connfix.db.pg import Session

# English server messages (lc_messages): what a refused connection attempt logs
PATTERN = r"(sorry, too many clients already|remaining connection slots are reserved)"
KINDS = {"sorry, too many clients": "too many clients", "remaining connection": "reserved slots"}
LINE_PATTERN = f"^([^\\n]*{PATTERN}[^\\n]*)$"  # a whole line holding PATTERN
MAX_FILE_BYTES = 512 * 1024 * 1024  # a log file larger than this is not read (said so)
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


def through_sql(session: Session, since: datetime, until: datetime) -> Refusals:
    """Count through SQL: the log directory's files modified since `since`, each
    filtered by the server; `unknown` with the reason when the role may not."""
    import psycopg

    found = Refusals("the server's log directory (pg_ls_logdir, pg_read_file)", since, until)
    try:
        with session.conn.transaction():
            zone = session.conn.execute("SELECT current_setting('log_timezone')").fetchone()
            listed = session.conn.execute(
                "SELECT name, size FROM pg_ls_logdir()"
                " WHERE modification >= %s ORDER BY modification",
                (since,),
            ).fetchall()
            tz = zone_of(zone[0] if zone else None)
            for name, size in listed:
                if size > MAX_FILE_BYTES:
                    found.skipped.append(f"{name}: {size} bytes, over {MAX_FILE_BYTES}")
                    continue
                # one newline-sensitive scan of the file for its matching lines (the file
                # split into a row per line, each row matched, took 7× as long)
                rows = session.conn.execute(
                    "SELECT m[1] FROM regexp_matches(pg_read_file("
                    "current_setting('log_directory') || '/' || %s), %s, 'gn') AS m",
                    (name, LINE_PATTERN),
                ).fetchall()
                found.files.append(str(name))
                for (line,) in rows:
                    found.add(line, tz)
    except psycopg.errors.InsufficientPrivilege as exc:
        found.unknown = (
            f"the server refused to show its log ({exc.diag.message_primary}): grant"
            " connfix's role pg_monitor and EXECUTE on pg_read_file(text), or give"
            " database.log_files"
        )
    except psycopg.Error as exc:
        found.unknown = f"the server's log could not be read: {exc.diag.message_primary or exc}"
    if not found.unknown and not found.files:
        found.unknown = (
            "no log file in the server's log directory was written since then"
            " (logging_collector off? give database.log_files)"
        )
    return found


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
            if file.stat().st_size > MAX_FILE_BYTES:
                found.skipped.append(f"{path}: over {MAX_FILE_BYTES} bytes")
                continue
            if datetime.fromtimestamp(file.stat().st_mtime, UTC) < since:
                continue
            with file.open("r", encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    if "FATAL" in line or line.startswith("{"):
                        found.add(line, zone)
            found.files.append(path)
        except OSError as exc:
            found.skipped.append(f"{path}: {exc.strerror or exc}")
    if not found.files and not found.unknown:
        found.unknown = "no log file matching database.log_files was written since then"
    return found
